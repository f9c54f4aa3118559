//! The review of issues 11 and 12 (findings 1, 3, 6, 7 and 8): a warm command must be
//! indistinguishable from a cold one apart from speed. When the client's context is one a worker
//! cannot take on (a sandbox: namespaces, capabilities, Landlock, `no_new_privs`, a limiting
//! cgroup; a tracer; an injected library; a background job of its terminal; descriptors it
//! cannot have under their numbers), the command runs in-process, as with `FDSERVER_PRELOAD=0`,
//! and `FDSERVER_PRELOAD_VERBOSE` says why. A server more confined than a command (started by
//! a command under lower limits) is replaced by one that command starts.
//!
//! Each test compares with the `FDSERVER_PRELOAD=0` run, or checks the effect of the context
//! (a file the sandbox hides, a file it may not create, a library it preloads).

mod preload_common;

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
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

/// Asserts that `out` (run with `FDSERVER_PRELOAD_VERBOSE=1`) ran in-process, for a reason that
/// mentions `why`.
fn assert_in_process(out: &Out, why: &str) {
    assert!(
        out.stderr.contains("running in-process, not preloaded (") && out.stderr.contains(why),
        "in-process because of {why:?}: {out:?}"
    );
}

fn verbose(c: &mut Command) {
    c.env("FDSERVER_PRELOAD_VERBOSE", "1");
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// Finding 1. A client in its own mount namespace (a bwrap- or firejail-style view that hides a
/// directory) sees its own view, warm as cold: the worker, in the server's namespace, would see
/// the hidden file.
#[test]
fn a_client_in_another_mount_namespace_runs_in_process() {
    let _wd = wd("a_client_in_another_mount_namespace_runs_in_process");
    if !as_root("a_client_in_another_mount_namespace_runs_in_process") {
        return;
    }
    let pl = Pl::new("mntns");
    let hide = pl.path("hide");
    std::fs::create_dir(&hide).unwrap();
    std::fs::write(hide.join("secret"), "").unwrap();
    pl.ok(&["echo", "warm"]);
    let hide_c = cstr(&hide);
    let secret = hide.join("secret");
    let out = same(
        "a mount namespace hiding a directory",
        pl.both(&["exists", secret.to_str().unwrap()], |c| {
            verbose(c);
            let hide_c = hide_c.clone();
            // SAFETY: unshare and mount are async-signal-safe; the strings are prepared.
            unsafe {
                c.pre_exec(move || {
                    if libc::unshare(libc::CLONE_NEWNS) != 0
                        || libc::mount(
                            c"none".as_ptr(),
                            c"/".as_ptr(),
                            std::ptr::null(),
                            libc::MS_REC | libc::MS_PRIVATE,
                            std::ptr::null(),
                        ) != 0
                        || libc::mount(
                            c"none".as_ptr(),
                            hide_c.as_ptr(),
                            c"tmpfs".as_ptr(),
                            0,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }),
    );
    assert_eq!(out.stdout, "false\n", "the namespace hides the file");
    assert_in_process(&out, "mnt namespace");
}

/// Finding 1. A root client whose bounding set lacks `CAP_DAC_OVERRIDE` and
/// `CAP_DAC_READ_SEARCH` (`setpriv --bounding-set`) cannot look into a `000` directory, warm as
/// cold.
#[test]
fn a_client_with_fewer_capabilities_runs_in_process() {
    let _wd = wd("a_client_with_fewer_capabilities_runs_in_process");
    if !as_root("a_client_with_fewer_capabilities_runs_in_process") {
        return;
    }
    let pl = Pl::new("caps");
    let locked = pl.path("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::write(locked.join("f"), "").unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    pl.ok(&["echo", "warm"]);
    let f = locked.join("f");
    let out = same(
        "capabilities dropped from the bounding set",
        pl.both(&["exists", f.to_str().unwrap()], |c| {
            verbose(c);
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                c.pre_exec(|| {
                    // CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH (linux/capability.h).
                    for cap in [1, 2] {
                        if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }),
    );
    assert_eq!(out.stdout, "false\n", "the capabilities are gone");
    assert_in_process(&out, "");
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).unwrap();
}

/// Finding 1. A client with other groups (`sg`, `newgrp`, `setpriv --groups`, a group removed
/// since the server started) has them in its command, warm as cold: a worker would have the
/// template's. Other supplementary groups and another effective gid, each on its own.
#[test]
fn a_client_with_other_groups_runs_in_process() {
    let _wd = wd("a_client_with_other_groups_runs_in_process");
    if !as_root("a_client_with_other_groups_runs_in_process") {
        return;
    }
    let pl = Pl::new("groups");
    let with_groups = |groups: &'static [libc::gid_t]| {
        move |c: &mut Command| {
            verbose(c);
            // A process whose effective gid is not its real one runs in the loader's secure
            // mode, which drops LD_LIBRARY_PATH (set by cargo): that alone would make the
            // command below run in-process. Nothing here has it.
            c.env_remove("LD_LIBRARY_PATH");
            // SAFETY: setgroups is async-signal-safe; the list is static.
            unsafe {
                c.pre_exec(move || {
                    if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    };
    // The server (and its template) start with groups 4242 and 4244; the command has only 4242,
    // as after `setpriv --groups` or a group removed since the server started.
    let mut first = pl.cmd(["echo", "warm"]);
    with_groups(&[4242, 4244])(&mut first);
    let first = output(first, RUN_LIMIT);
    assert!(first.status.success(), "{first:?}");
    let out = same(
        "other supplementary groups",
        pl.both(&["ids"], with_groups(&[4242])),
    );
    assert!(out.stdout.contains("groups [4242]\n"), "{out:?}");
    assert_in_process(&out, "supplementary groups");
    let out = same(
        "another effective gid",
        pl.both(&["ids"], |c| {
            verbose(c);
            c.env_remove("LD_LIBRARY_PATH");
            // SAFETY: setgroups and setegid are async-signal-safe; the list is on the stack.
            unsafe {
                c.pre_exec(|| {
                    let groups: [libc::gid_t; 2] = [4242, 4244];
                    if libc::setgroups(2, groups.as_ptr()) != 0 || libc::setegid(4243) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }),
    );
    assert!(out.stdout.contains("egid 4243"), "{out:?}");
    assert_in_process(&out, "group ids");
}

/// A Landlock domain that forbids creating regular files, applied before exec: with
/// `no_new_privs` (as an unprivileged process must), or without (root may).
fn landlocked(nnp: bool) -> impl Fn(&mut Command) {
    move |c: &mut Command| {
        verbose(c);
        // SAFETY: raw syscalls and prctl with valid arguments; async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                const MAKE_REG: u64 = 1 << 8;
                let handled: u64 = MAKE_REG;
                let fd = libc::syscall(
                    libc::SYS_landlock_create_ruleset,
                    &handled as *const u64,
                    std::mem::size_of::<u64>(),
                    0u32,
                );
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if nnp && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd as i32);
                Ok(())
            });
        }
    }
}

/// Whether the kernel offers Landlock (its ABI version, asked with a null ruleset).
fn landlock_available(test: &str) -> bool {
    const VERSION: u32 = 1;
    // SAFETY: the documented ABI query: null attributes, size 0, the version flag.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            VERSION,
        )
    };
    if abi < 1 {
        eprintln!("{test}: skipped: this kernel has no Landlock");
    }
    abi >= 1
}

/// Finding 1. A Landlocked client may not create a file, warm as cold: the worker, outside the
/// domain, created it ("mode 644"). With `no_new_privs`, the template sees it from the kernel;
/// without (root), the client sees that it may not inspect the server (`kcmp`).
#[test]
fn a_landlocked_client_runs_in_process() {
    let _wd = wd("a_landlocked_client_runs_in_process");
    if !landlock_available("a_landlocked_client_runs_in_process") {
        return;
    }
    let pl = Pl::new("landlock");
    pl.ok(&["echo", "warm"]); // the counter file exists: the in-process preload appends to it
    let root = as_root("a_landlocked_client_runs_in_process (without no_new_privs)");
    for nnp in [true, false] {
        if !nnp && !root {
            continue;
        }
        for preload in ["1", "0"] {
            let file = pl.path(&format!("made-{nnp}-{preload}"));
            let mut c = pl.cmd(["create", file.to_str().unwrap()]);
            c.env("FDSERVER_PRELOAD", preload);
            landlocked(nnp)(&mut c);
            let out = output(c, RUN_LIMIT);
            assert!(
                !file.exists(),
                "created outside the sandbox (no_new_privs {nnp}, preload {preload}): {out:?}"
            );
            assert_eq!(out.status.code(), Some(101), "the create panics: {out:?}");
            if preload == "1" {
                assert_in_process(&out, "");
            }
        }
    }
}

/// Finding 1. `no_new_privs` marks a process that may be sandboxed (Landlock and seccomp need it
/// when unprivileged): the command runs in-process.
#[test]
fn a_client_with_no_new_privs_runs_in_process() {
    let _wd = wd("a_client_with_no_new_privs_runs_in_process");
    let pl = Pl::new("nnp");
    pl.ok(&["echo", "warm"]);
    let out = same(
        "no_new_privs",
        pl.both(&["attrs"], |c| {
            verbose(c);
            // SAFETY: prctl is async-signal-safe.
            unsafe {
                c.pre_exec(|| {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    Ok(())
                });
            }
        }),
    );
    assert!(out.stdout.contains("nnp 1"), "{out:?}");
    assert_in_process(&out, "no_new_privs");
}

/// Finding 1, with finding 4's fix: a template starts with the environment of the command that
/// needs it, so a confined client (here `no_new_privs`) of a key without a template would choose
/// what an unconfined template loads and runs (`LD_LIBRARY_PATH`, the application's
/// configuration). The server starts no template for it: the command runs in-process, and the
/// key's template is started later by an unconfined command, with that one's environment.
#[test]
fn a_confined_client_starts_no_template() {
    let _wd = wd("a_confined_client_starts_no_template");
    let pl = Pl::new("nnpnew");
    pl.ok(&["echo", "warm"]);
    let mut c = pl.cmd(["preload-conf"]);
    c.env("APP_ENV", "other")
        .env("APP_CONF", "chosen-by-the-sandbox");
    verbose(&mut c);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            Ok(())
        });
    }
    let out = output(c, RUN_LIMIT);
    assert!(out.status.success(), "{out:?}");
    assert_in_process(&out, "no_new_privs");
    assert_eq!(pl.server().template("other"), None, "no template for it");
    assert!(
        pl.log().contains("not started for a confined client"),
        "{}",
        pl.log()
    );
    let mut c = pl.cmd(["preload-conf"]);
    c.env("APP_ENV", "other").env("APP_CONF", "its-own");
    let out = output(c, RUN_LIMIT);
    assert!(out.stdout.contains("\"its-own\""), "{out:?}");
    assert!(pl.server().template("other").is_some());
}

/// A new cgroup (pids controller) under this process's own: `pids.max` as given. `None` (with a
/// skip line) where none can be made.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn new(test: &str, tag: &str, max: &str) -> Option<Cgroup> {
        let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let base = text.lines().find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (_, ctrl, path) = (it.next()?, it.next()?, it.next()?);
            if ctrl.split(',').any(|c| c == "pids") {
                Some(PathBuf::from("/sys/fs/cgroup/pids").join(path.trim_start_matches('/')))
            } else if ctrl.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
                Some(PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/')))
            } else {
                None
            }
        });
        let dir = base?.join(format!("pl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        if let Err(e) = std::fs::create_dir(&dir) {
            eprintln!(
                "{test}: skipped: cannot make a cgroup at {}: {e}",
                dir.display()
            );
            return None;
        }
        let cg = Cgroup { dir };
        if let Err(e) = std::fs::write(cg.dir.join("pids.max"), max) {
            eprintln!("{test}: skipped: cannot set pids.max: {e}");
            return None;
        }
        Some(cg)
    }

    /// Moves the command's process into this cgroup before it runs.
    fn enter(&self, c: &mut Command) {
        let procs = cstr(&self.dir.join("cgroup.procs"));
        // SAFETY: open, write and close are async-signal-safe; the path is prepared.
        unsafe {
            c.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(fd);
                Ok(())
            });
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Finding 1. A client in a cgroup that limits it (`pids.max`), which the template is not in,
/// runs in-process; one in a cgroup that limits nothing (another terminal's scope, say) runs
/// warm.
#[test]
fn a_client_in_a_limiting_cgroup_runs_in_process() {
    let test = "a_client_in_a_limiting_cgroup_runs_in_process";
    let _wd = wd(test);
    if !as_root(test) {
        return;
    }
    let pl = Pl::new("cgroup");
    let warm = pl.ok(&["template"]);
    let Some(limited) = Cgroup::new(test, "lim", "1000") else {
        return;
    };
    let mut c = pl.cmd(["template"]);
    verbose(&mut c);
    limited.enter(&mut c);
    let out = output(c, RUN_LIMIT);
    assert!(out.status.success(), "{out:?}");
    assert_ne!(out.stdout, warm, "not the template's preload: {out:?}");
    assert_in_process(&out, "pids.max: 1000");

    let Some(free) = Cgroup::new(test, "free", "max") else {
        return;
    };
    let mut c = pl.cmd(["template"]);
    free.enter(&mut c);
    let out = output(c, RUN_LIMIT);
    assert_eq!(out.stdout, warm, "warm, from the template: {out:?}");
}

/// Finding 7. A traced client (`strace -f`) runs the command itself, so the tracer sees it (a
/// worker would not be traced), and starts no server: `strace -f` would wait for it.
#[test]
fn a_traced_client_runs_in_process() {
    let _wd = wd("a_traced_client_runs_in_process");
    if !Path::new("/usr/bin/strace").exists() {
        eprintln!("a_traced_client_runs_in_process: skipped: no /usr/bin/strace");
        return;
    }
    let pl = Pl::new("traced");
    let trace = pl.path("trace");
    let mut c = pl.command("/usr/bin/strace");
    c.args(["-f", "-qq", "-e", "trace=write", "-o"])
        .arg(&trace)
        .args([APP, "echo", "traced-hi"]);
    let out = output(c, RUN_LIMIT);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, "traced-hi\n");
    let traced = std::fs::read_to_string(&trace).unwrap();
    assert!(
        traced.contains("traced-hi"),
        "the tracer saw the command's write: {traced}"
    );
    assert_eq!(pl.status(), None, "no server was started under the tracer");
}

/// A library the test application does not load by itself.
fn spare_library() -> Option<PathBuf> {
    [
        "/lib/x86_64-linux-gnu/libanl.so.1",
        "/lib64/libanl.so.1",
        "/usr/lib/libanl.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Finding 7. `LD_PRELOAD` loads its library into the command's process, warm as cold (a
/// worker, forked from a template started without it, did not have it); a different
/// `LD_LIBRARY_PATH` than the template's runs in-process too.
#[test]
fn loader_variables_run_the_command_in_process() {
    let _wd = wd("loader_variables_run_the_command_in_process");
    let Some(lib) = spare_library() else {
        eprintln!("loader_variables_run_the_command_in_process: skipped: no libanl.so.1");
        return;
    };
    let pl = Pl::new("ldpre");
    pl.ok(&["echo", "warm"]);
    let out = same(
        "LD_PRELOAD",
        pl.both(&["mapped", "libanl"], |c| {
            verbose(c);
            c.env("LD_PRELOAD", &lib);
        }),
    );
    assert_eq!(out.stdout, "true\n", "the library is loaded: {out:?}");
    assert_in_process(&out, "LD_PRELOAD is set");

    let path = match std::env::var_os("LD_LIBRARY_PATH") {
        Some(p) => format!("/nonexistent:{}", p.to_string_lossy()),
        None => "/nonexistent".to_owned(),
    };
    let mut c = pl.cmd(["echo", "lib"]);
    verbose(&mut c);
    c.env("LD_LIBRARY_PATH", &path);
    let out = output(c, RUN_LIMIT);
    assert_eq!(out.stdout, "lib\n");
    assert_in_process(&out, "LD_LIBRARY_PATH");
}

/// Finding 6. A background job that reads its terminal is stopped (SIGTTIN), warm as cold, and
/// `fg` resumes it: the shell's keyboard input is not taken by a worker outside the terminal's
/// session.
#[test]
fn a_background_job_reading_its_terminal_is_stopped() {
    let _wd = wd("a_background_job_reading_its_terminal_is_stopped");
    let pl = Pl::new("bgtty");
    pl.ok(&["echo", "warm"]);
    let (master, slave) = pty(80, 24);
    let mut shell = spawn_shell_on_pty(
        &pl,
        r#""$0" readline & echo "bg $!"; read line; echo "shell got $line"; fg %1; echo done"#,
        &slave,
        &[],
    );
    drop(slave);
    let mut acc = String::new();
    read_until(master.as_fd(), &mut acc, "bg ");
    read_until(master.as_fd(), &mut acc, "\n");
    let pid: u32 = acc
        .split("bg ")
        .nth(1)
        .and_then(|r| r.lines().next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("the job's pid: {acc:?}"));
    assert!(
        wait_until(|| state(pid) == Some('T')),
        "the background job stops when it reads the terminal: state {:?}",
        state(pid)
    );
    write_master(&master, b"typed\n");
    read_until(master.as_fd(), &mut acc, "shell got typed");
    write_master(&master, b"for the job\n");
    read_until(master.as_fd(), &mut acc, "done");
    assert!(
        acc.contains("read \"for the job\""),
        "the job read its line once in the foreground: {acc:?}"
    );
    assert!(shell.wait().unwrap().success());
}

fn write_master(master: &std::os::fd::OwnedFd, data: &[u8]) {
    // SAFETY: write(2) of a valid buffer.
    let n = unsafe { libc::write(master.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    assert_eq!(n, data.len() as isize);
}

/// The `fds` lines of descriptors above 2 (each run's stdout and stderr are pipes of its own).
fn inherited(out: &Out) -> Vec<String> {
    out.stdout
        .lines()
        .filter(|l| {
            l.split(' ')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n > 2)
        })
        .map(str::to_owned)
        .collect()
}

/// Finding 8. More than 64 inherited descriptors (a command forwards at most 64): the command
/// runs in-process and has every one, warm as cold (the worker had the first 64).
#[test]
fn more_inherited_descriptors_than_a_command_forwards_run_in_process() {
    let _wd = wd("more_inherited_descriptors_than_a_command_forwards_run_in_process");
    let pl = Pl::new("manyfds");
    pl.ok(&["echo", "warm"]);
    let (_r, w) = fdserver_tests::pipe();
    let raw = w.as_raw_fd();
    let (warm, cold) = pl.both(&["fds"], move |c| {
        verbose(c);
        // SAFETY: fcntl, dup2 and close are async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                let copy = libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 200);
                if copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                for fd in 3..=80 {
                    if libc::dup2(copy, fd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                libc::close(copy);
                Ok(())
            });
        }
    });
    assert_eq!(inherited(&warm), inherited(&cold), "{warm:?}\nvs {cold:?}");
    let out = warm;
    let pipes = out
        .stdout
        .lines()
        .filter(|l| {
            l.split(' ')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| (3..=80).contains(&n))
                && l.contains("-> pipe:")
        })
        .count();
    assert_eq!(pipes, 78, "every descriptor: {out:?}");
    assert_in_process(&out, "inherited 78 descriptors");
}

/// Findings 3 and 8. A descriptor number the preload keeps open (the template's) cannot be the
/// caller's in a worker: the worker hands the command back, which runs in-process with the
/// caller's descriptor under that number (the worker used to keep the template's).
#[test]
fn a_descriptor_number_the_template_keeps_is_the_callers_in_process() {
    let _wd = wd("a_descriptor_number_the_template_keeps_is_the_callers_in_process");
    let mut pl = Pl::new("keptfd");
    pl.set("APP_KEEP_FD", "1");
    let kept = pl.ok(&["kept-fd"]);
    let n: i32 = kept
        .trim()
        .strip_prefix("Some(")
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the kept descriptor: {kept:?}"));
    let (_r, w) = fdserver_tests::pipe();
    let raw = w.as_raw_fd();
    let (warm, cold) = pl.both(&["fds"], move |c| {
        verbose(c);
        // SAFETY: fcntl, dup2 and close are async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                let copy = libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 200);
                if copy < 0 || libc::dup2(copy, n) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(copy);
                Ok(())
            });
        }
    });
    assert_eq!(inherited(&warm), inherited(&cold), "{warm:?}\nvs {cold:?}");
    let out = warm;
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with(&format!("{n} -> pipe:"))),
        "fd {n} is the caller's pipe: {out:?}"
    );
    assert_in_process(&out, "could not take on its descriptors");
}

/// Runs as another user (uid 65534), with a preloader directory of its own: the tests of a
/// server started under lower limits need an unprivileged server (root may raise any limit).
struct Nobody {
    dir: PathBuf,
    /// A copy of the test application that uid 65534 may execute: the build's own may sit
    /// under a directory only root can traverse (a clone in `/root` or a `mktemp -d`).
    app: PathBuf,
}

const NOBODY: u32 = 65534;

impl Nobody {
    fn new(pl: &Pl) -> Nobody {
        // Traversable by the other user, as /tmp is.
        std::fs::set_permissions(&pl.dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        let dir = pl.path("nobody");
        std::fs::create_dir(&dir).unwrap();
        let c = cstr(&dir);
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), NOBODY, NOBODY) }, 0);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        // Written by a `cp` process, never through a descriptor of this one (which another test
        // thread's fork could inherit, making every exec of the copy fail with ETXTBSY until that
        // child's own exec).
        let app = pl.path("app-for-nobody");
        let st = Command::new("cp").arg(APP).arg(&app).status().unwrap();
        assert!(st.success(), "cp {APP} {}", app.display());
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).unwrap();
        Nobody { dir, app }
    }

    /// The test application as uid 65534, after `setup` (run as root: limits, nice).
    fn cmd(&self, pl: &Pl, args: &[&str], setup: fn() -> std::io::Result<()>) -> Command {
        let mut c = pl.command(&self.app);
        c.args(args);
        c.env("FDSERVER_PRELOAD_DIR", &self.dir)
            .env("APP_COUNTER", self.dir.join("counter"))
            .current_dir(&self.dir);
        // SAFETY: setrlimit, setpriority and the credential calls are async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                setup()?;
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(NOBODY) != 0
                    || libc::setuid(NOBODY) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }

    fn stop(&self, pl: &Pl) {
        let mut c = self.cmd(pl, &["--preloader", "stop"], || Ok(()));
        c.stdout(std::process::Stdio::null());
        let _ = output(c, RUN_LIMIT);
    }
}

fn unrestricted() -> std::io::Result<()> {
    Ok(())
}

/// `ulimit -Hn 300` and `nice -n 5`.
fn restricted() -> std::io::Result<()> {
    let l = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 300,
    };
    // SAFETY: async-signal-safe calls with valid arguments.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0
            || libc::setpriority(libc::PRIO_PROCESS, 0, 5) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Finding 3. A server started by a command under a lower hard limit and a higher nice value
/// (which its unprivileged workers cannot undo) is replaced by the next command that is not
/// under them; the first command goes on running in its template; and a later restricted
/// command runs warm in the new server (its worker takes the restrictions on).
#[test]
fn a_server_started_under_lower_limits_is_replaced() {
    let _wd = wd("a_server_started_under_lower_limits_is_replaced");
    if !as_root("a_server_started_under_lower_limits_is_replaced") {
        return;
    }
    let pl = Pl::new("lowlim");
    let nobody = Nobody::new(&pl);
    struct Stop<'a>(&'a Nobody, &'a Pl);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.stop(self.1);
        }
    }
    let _stop = Stop(&nobody, &pl);

    let mut first = Running::spawn(nobody.cmd(&pl, &["wait"], restricted));
    let first_worker = first.expect_pid("ready");

    let run = |setup: fn() -> std::io::Result<()>, preload: &str| {
        let mut c = nobody.cmd(&pl, &["attrs"], setup);
        c.env("FDSERVER_PRELOAD", preload)
            .env("FDSERVER_PRELOAD_VERBOSE", "1");
        output(c, RUN_LIMIT)
    };
    let out = same(
        "unrestricted",
        (run(unrestricted, "1"), run(unrestricted, "0")),
    );
    assert!(
        out.stderr.contains("replacing the preloader server")
            && out.stderr.contains("RLIMIT_NOFILE")
            && out.stderr.contains("nice 5"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("running preloaded"),
        "then warm: {out:?}"
    );
    assert!(
        alive(first_worker) && first.running(),
        "the first command still runs"
    );

    let out = same(
        "restricted, later",
        (run(restricted, "1"), run(restricted, "0")),
    );
    assert!(
        out.stderr.contains("running preloaded") && !out.stderr.contains("replacing"),
        "warm in the new server: {out:?}"
    );
    first.signal(libc::SIGINT);
    assert_eq!(signal_of(&first.wait()), Some(libc::SIGINT));
}

/// Finding 3. A server started by a command with `no_new_privs` (which nothing can clear) is
/// replaced by the next command without it (as root: the template-side check).
#[test]
fn a_server_started_with_no_new_privs_is_replaced() {
    let _wd = wd("a_server_started_with_no_new_privs_is_replaced");
    let pl = Pl::new("nnprep");
    let mut c = pl.cmd(["echo", "first"]);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            Ok(())
        });
    }
    assert_eq!(output(c, RUN_LIMIT).stdout, "first\n");
    let first = pl.server().server;
    let out = same(
        "without no_new_privs",
        pl.both(&["attrs"], |c| {
            verbose(c);
        }),
    );
    assert!(out.stdout.contains("nnp 0"), "{out:?}");
    assert!(
        out.stderr.contains("replacing the preloader server"),
        "{out:?}"
    );
    assert_ne!(pl.server().server, first, "a new server");
}

/// Finding 3. The server does not keep the soft limits of the command that started it: they go
/// up to the hard limits (so a command's `ulimit -t` or `ulimit -Sn 200` does not end or starve
/// the server), while that command's worker still has them.
#[test]
fn the_server_starts_with_its_soft_limits_raised() {
    let _wd = wd("the_server_starts_with_its_soft_limits_raised");
    let pl = Pl::new("softlim");
    let soft = |c: &mut Command| {
        // SAFETY: getrlimit and setrlimit are async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                for (r, v) in [(libc::RLIMIT_NOFILE, 200), (libc::RLIMIT_CPU, 3000)] {
                    let mut l: libc::rlimit = std::mem::zeroed();
                    libc::getrlimit(r, &mut l);
                    l.rlim_cur = v;
                    if libc::setrlimit(r, &l) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    };
    let (warm, cold) = pl.both(&["attrs"], soft);
    let out = same("soft limits", (warm, cold));
    assert!(
        out.stdout.contains("rlimit 7 200 ") && out.stdout.contains("rlimit 0 3000 "),
        "{out:?}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", pl.server().server)).unwrap();
    let line = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap()
    };
    let cpu = line("Max cpu time");
    assert_eq!(
        cpu[3], cpu[4],
        "soft CPU limit raised to the hard one: {limits}"
    );
    let files = line("Max open files");
    assert_ne!(files[3], "200", "soft descriptor limit raised: {limits}");
}
