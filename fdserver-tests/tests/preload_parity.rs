//! Issue 12: a warm command behaves exactly like the same program run without the preloader
//! (`FDSERVER_PRELOAD=0`). Each test runs the same probe both ways and compares; the tty cases
//! (job control, Ctrl-Z, signals before the worker exists) are in `preload_signals.rs`.

mod preload_common;

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;

use preload_common::*;

/// Asserts that the warm and the cold run printed the same and ended the same way.
fn same(what: &str, (warm, cold): (Out, Out)) -> Out {
    assert_eq!(
        (warm.status.code(), warm.status.signal(), &warm.stdout),
        (cold.status.code(), cold.status.signal(), &cold.stdout),
        "{what}: preloaded {warm:?}\nvs in-process {cold:?}"
    );
    warm
}

/// Item 3. `cmd | head -1`: the program gets EPIPE (Rust ignores SIGPIPE before `main`) and
/// exits 3, with and without the preloader. (The worker used to reset SIGPIPE and die of it:
/// exit 141.)
#[test]
fn sigpipe_is_ignored_as_in_a_fresh_rust_main() {
    let _wd = wd("sigpipe_is_ignored_as_in_a_fresh_rust_main");
    let pl = Pl::new("epipe");
    pl.ok(&["echo", "warm"]);
    for preload in ["1", "0"] {
        let out = pl.sh(&format!(
            r#"{{ FDSERVER_PRELOAD={preload} "$0" lines 100000; echo "client $?" >&2; }} | head -1"#
        ));
        assert_eq!(out.stdout, "line 0\n");
        assert!(
            out.stderr.contains("client 3"),
            "FDSERVER_PRELOAD={preload}: EPIPE, not death by SIGPIPE: {out:?}"
        );
    }
}

/// Item 3. The worker's signal dispositions and mask are those of a fresh run: std's handlers
/// and SIGPIPE ignored, and what the caller passes on through exec (an ignored SIGHUP, as under
/// `nohup`; a blocked SIGUSR1).
#[test]
fn signal_state_is_that_of_a_fresh_run() {
    let _wd = wd("signal_state_is_that_of_a_fresh_run");
    let pl = Pl::new("sigst");
    pl.ok(&["echo", "warm"]);
    same("plain", pl.both(&["sigstate"], |_| {}));
    let out = same(
        "SIGHUP ignored, SIGUSR1 blocked by the caller",
        pl.both(&["sigstate"], |c| {
            // SAFETY: signal and sigprocmask are async-signal-safe.
            unsafe {
                c.pre_exec(|| {
                    libc::signal(libc::SIGHUP, libc::SIG_IGN);
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGUSR1);
                    libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                    Ok(())
                });
            }
        }),
    );
    assert!(out.stdout.contains("SigBlk:\t0000000000000200"), "{out:?}");
}

/// Item 4. Panics in `run` name the thread `main`, and the running thread is `main`.
#[test]
fn panics_name_the_main_thread() {
    let _wd = wd("panics_name_the_main_thread");
    let pl = Pl::new("panic");
    pl.ok(&["echo", "warm"]);
    same("thread name", pl.both(&["thread"], |_| {}));
    let (warm, cold) = pl.both(&["panic"], |_| {});
    for (mode, out) in [("preloaded", &warm), ("in-process", &cold)] {
        assert_eq!(out.status.code(), Some(101), "{mode}: {out:?}");
        assert!(
            out.stderr.contains("thread 'main'")
                && out.stderr.contains("worker panicked on purpose"),
            "{mode}: {out:?}"
        );
    }
}

/// Item 5. `run` has the main thread's stack: as large as `RLIMIT_STACK` (8 MiB by default,
/// 64 MiB here when the caller raised it), not a 2 MiB thread stack.
#[test]
fn run_has_the_main_thread_stack() {
    let _wd = wd("run_has_the_main_thread_stack");
    let pl = Pl::new("stack");
    pl.ok(&["echo", "warm"]);
    same("6 MiB of stack", pl.both(&["stack", "6000"], |_| {}));
    same(
        "40 MiB of stack under a 64 MiB limit",
        pl.both(&["stack", "40000"], |c| {
            // SAFETY: setrlimit is async-signal-safe.
            unsafe {
                c.pre_exec(|| {
                    let l = libc::rlimit {
                        rlim_cur: 64 << 20,
                        rlim_max: libc::RLIM_INFINITY,
                    };
                    libc::setrlimit(libc::RLIMIT_STACK, &l);
                    Ok(())
                });
            }
        }),
    );
}

/// Item 6. The working directory goes as a descriptor: a deleted directory, and one whose path
/// is longer than PATH_MAX, work as without the preloader (they used to be refused).
#[test]
fn working_directory_goes_as_a_descriptor() {
    let _wd = wd("working_directory_goes_as_a_descriptor");
    let pl = Pl::new("cwdfd");
    pl.ok(&["echo", "warm"]);
    // Deleted.
    let gone = pl.path("gone");
    std::fs::create_dir(&gone).unwrap();
    let out = same(
        "deleted working directory",
        pl.both(&["echo", "ran"], |c| {
            c.current_dir(&gone);
        }),
    );
    assert_eq!(out.stdout, "ran\n");
    // (Deleted by the first run's pre_exec: both runs then start in a deleted directory.)
    let gone2 = gone.clone();
    let out = same(
        "deleted before the start",
        pl.both(&["exists", "."], move |c| {
            let dir = std::ffi::CString::new(gone2.as_os_str().as_encoded_bytes()).unwrap();
            let _ = std::fs::create_dir(&gone2);
            // SAFETY: chdir and rmdir are async-signal-safe; `dir` lives in the closure.
            unsafe {
                c.pre_exec(move || {
                    libc::chdir(dir.as_ptr());
                    libc::rmdir(dir.as_ptr());
                    Ok(())
                });
            }
        }),
    );
    assert_eq!(
        out.stdout, "true\n",
        "a deleted directory is still there for its users"
    );
    // Longer than PATH_MAX (4096): made and entered step by step, relative.
    let mut deep = pl.path("deep");
    std::fs::create_dir(&deep).unwrap();
    let part = "d".repeat(200);
    for _ in 0..25 {
        deep.push(&part);
    }
    let top = std::ffi::CString::new(pl.path("deep").as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new(part.clone()).unwrap();
    let walk = move |c: &mut Command| {
        let top = top.clone();
        let name = name.clone();
        // SAFETY: chdir and mkdir are async-signal-safe; the strings live in the closure.
        unsafe {
            c.pre_exec(move || {
                if libc::chdir(top.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for _ in 0..25 {
                    libc::mkdir(name.as_ptr(), 0o700);
                    if libc::chdir(name.as_ptr()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    };
    assert!(deep.as_os_str().len() > 4096);
    let out = same(
        "working directory beyond PATH_MAX",
        pl.both(&["echo", "deep"], walk),
    );
    assert_eq!(out.stdout, "deep\n");
}

/// Item 7. The attributes a program inherits through exec are the caller's: umask (`umask
/// 077` makes 0600 files), resource limits, nice value, CPU affinity, and the rest of what
/// `attrs` prints; the process name and arguments too.
#[test]
fn process_attributes_are_the_callers() {
    let _wd = wd("process_attributes_are_the_callers");
    let pl = Pl::new("attrs");
    pl.ok(&["echo", "warm"]);
    let umask = |c: &mut Command| {
        // SAFETY: umask is async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                libc::umask(0o077);
                Ok(())
            });
        }
    };
    let file = pl.path("made");
    let f = file.to_str().unwrap().to_owned();
    let out = same("umask 077", pl.both(&["create", &f], umask));
    assert_eq!(out.stdout, "mode 600\n");
    same("defaults", pl.both(&["attrs"], |_| {}));
    let changed = |c: &mut Command| {
        // SAFETY: setrlimit, setpriority, sched_setaffinity and prctl are async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                let l = libc::rlimit {
                    rlim_cur: 123,
                    rlim_max: 456,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &l);
                let core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &core);
                libc::setpriority(libc::PRIO_PROCESS, 0, 7);
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(0, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
                libc::prctl(libc::PR_SET_TIMERSLACK, 123_000, 0, 0, 0);
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                Ok(())
            });
        }
    };
    let out = same(
        "limits, nice, affinity, timer slack, no_new_privs",
        pl.both(&["attrs"], changed),
    );
    assert!(
        out.stdout.contains("rlimit 7 123 456")
            && out.stdout.contains("nice 7")
            && out.stdout.contains("affinity [0]")
            && out.stdout.contains("nnp 1"),
        "{out:?}"
    );
    // The arguments as std and /proc show them, the environment as /proc shows it, and the
    // process name (a link named otherwise: the name comes from the path run).
    let link = pl.path("pl-link");
    std::os::unix::fs::symlink(APP, &link).unwrap();
    for run in [&link as &dyn AsRef<std::ffi::OsStr>, &APP] {
        let mk = |preload: &str| {
            let mut c = pl.command(run);
            c.args(["self", "x y", ""])
                .env("APP_PROBE", "1")
                .env("FDSERVER_PRELOAD", preload);
            output(c, RUN_LIMIT)
        };
        same("arguments and environment", (mk("1"), mk("0")));
        let mut c = pl.command(run);
        c.arg("attrs");
        let warm = output(c, RUN_LIMIT);
        let mut c = pl.command(run);
        c.arg("attrs").env("FDSERVER_PRELOAD", "0");
        same("process name", (warm, output(c, RUN_LIMIT)));
    }
}

/// Item 11. A command the application runs without preloading (`--version` here) runs in the
/// client, with and without `FDSERVER_PRELOAD=0`, and starts no server.
#[test]
fn commands_without_preload_start_no_server() {
    let _wd = wd("commands_without_preload_start_no_server");
    let pl = Pl::new("nopre");
    let out = same("--version", pl.both(&["--version"], |_| {}));
    assert_eq!(out.stdout, "preload-app 1 (preloaded: false)\n");
    assert_eq!(pl.status(), None, "no server was started");
    assert!(pl.preloads().is_empty(), "nothing was preloaded");
}

/// Item 1. A preload that hangs is killed at its deadline (`Options::preload_timeout`): the
/// waiting command gets an error that names the template and the deadline, and the next
/// command preloads again.
#[test]
fn a_hung_preload_meets_its_deadline() {
    let _wd = wd("a_hung_preload_meets_its_deadline");
    let mut pl = Pl::new("hung");
    pl.set("APP_PRELOAD_TIMEOUT_MS", "500");
    let mut gate = Gate::new(&mut pl, "dev");
    let c = Running::spawn(pl.cmd(["echo", "never"]));
    gate.wait_started(); // and never released
    let mut c = c;
    let status = c.wait();
    assert_eq!(status.code(), Some(1), "{status:?}");
    let log = pl.log();
    assert!(
        log.contains("did not finish preloading within 500ms and was killed"),
        "{log}"
    );
    assert_eq!(pl.server().template("dev"), None, "no template left");
    // The next command preloads again (this time the gate lets it finish).
    let mut next = Running::spawn(pl.cmd(["echo", "next"]));
    gate.wait_started();
    gate.release();
    assert_eq!(next.line().as_deref(), Some("next"));
    assert!(next.wait().success());
}

/// Item 7. A client confined by a seccomp filter (here one that allows everything, which still
/// counts) runs the command in-process: its template has no such filter, and a worker cannot
/// take one on, so running it there would escape the confinement.
#[test]
fn a_seccomp_confined_client_runs_in_process() {
    let _wd = wd("a_seccomp_confined_client_runs_in_process");
    let pl = Pl::new("seccomp");
    let warm = pl.ok(&["template"]);
    let mut c = pl.cmd(["template"]);
    // SAFETY: prctl with a valid, static one-instruction BPF program (return ALLOW); both
    // calls are async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            static ALLOW: [libc::sock_filter; 1] = [libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            }];
            let prog = libc::sock_fprog {
                len: 1,
                filter: ALLOW.as_ptr() as *mut libc::sock_filter,
            };
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.stdout(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    let client = child.id();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("dev {client}"),
        "preloaded by the client itself (in-process), not by the template ({warm})"
    );
}

/// Item 7. Descriptors the caller passed besides 0, 1, 2 (`7>file`, a jobserver's pipe) are
/// the command's too, under the same numbers.
#[test]
fn inherited_descriptors_are_the_commands() {
    let _wd = wd("inherited_descriptors_are_the_commands");
    let pl = Pl::new("xfds");
    pl.ok(&["echo", "warm"]);
    let (_r, w) = fdserver_tests::pipe();
    let raw = std::os::fd::AsRawFd::as_raw_fd(&w);
    let (warm, cold) = pl.both(&["fds"], move |c| {
        // SAFETY: fcntl, dup2 and close are async-signal-safe; fd 7 and 12 become the pipe's
        // write end, without close-on-exec (dup2 clears it), as a shell's `7>&... 12>&...`
        // would. Through a copy: the pipe's own number may be 7 or 12, and `dup2` of a
        // descriptor onto itself keeps its close-on-exec flag.
        unsafe {
            c.pre_exec(move || {
                let copy = libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 100);
                if copy < 0 || libc::dup2(copy, 7) < 0 || libc::dup2(copy, 12) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(copy);
                Ok(())
            });
        }
    });
    // (Whatever else the test process itself inherited is passed on too, the same both ways.)
    let pick = |out: &Out| -> Vec<String> {
        out.stdout
            .lines()
            .filter(|l| l.starts_with("7 ") || l.starts_with("12 "))
            .map(str::to_owned)
            .collect()
    };
    assert!(warm.status.success() && cold.status.success());
    assert_eq!(
        pick(&warm),
        pick(&cold),
        "preloaded {warm:?}\nvs in-process {cold:?}"
    );
    assert_eq!(pick(&warm).len(), 2, "{warm:?}");
    assert!(pick(&warm)[0].starts_with("7 -> pipe:") && pick(&warm)[1].starts_with("12 -> pipe:"));
}

/// Review finding 5: a command that dies by a core-dumping signal leaves its own core (the
/// worker's), not the client's: the client dies by the same signal without dumping (it used to
/// dump too, over the worker's core). The shell then shows no "(core dumped)": documented.
#[test]
fn a_crash_leaves_the_commands_core_not_the_clients() {
    let _wd = wd("a_crash_leaves_the_commands_core_not_the_clients");
    let pl = Pl::new("core");
    pl.ok(&["echo", "warm"]);
    let cwd = pl.path("cores");
    std::fs::create_dir(&cwd).unwrap();
    let mut c = pl.cmd(["kill", "6"]);
    c.current_dir(&cwd);
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            let l = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &l);
            Ok(())
        });
    }
    let out = output(c, RUN_LIMIT);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{out:?}");
    assert!(!out.status.core_dumped(), "the client dumped core: {out:?}");
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    if !pattern.starts_with('|') && !pattern.contains('/') {
        let cores: Vec<_> = std::fs::read_dir(&cwd).unwrap().flatten().collect();
        assert_eq!(cores.len(), 1, "the worker's core, alone: {cores:?}");
    }
}
