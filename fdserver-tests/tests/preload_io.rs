//! What reaches the worker (argv, env, cwd, stdin) and what comes back (exit codes, signals,
//! output through pipes that must close), plus nested calls and descriptor hygiene.

mod preload_common;

use std::ffi::OsStr;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Stdio;

use preload_common::*;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Arguments arrive exactly: empty ones, spaces, non-UTF-8 bytes, many of them.
#[test]
fn argv_reaches_the_worker() {
    let _wd = wd("argv_reaches_the_worker");
    let pl = Pl::new("argv");
    let out = pl.ok(&["args", "", "a b", "  ", "x=y", "--flag", "é"]);
    assert_eq!(out, "[]\n[a b]\n[  ]\n[x=y]\n[--flag]\n[é]\n");
    assert_eq!(pl.ok(&["args"]), "", "no arguments");

    let raw: [&[u8]; 3] = [b"\xff\xfe", b"a\x80b", b""];
    let mut cmd = pl.cmd(["hexargs"]);
    cmd.args(raw.iter().map(|b| OsStr::from_bytes(b)));
    let out = output(cmd, RUN_LIMIT);
    assert!(out.status.success(), "{out:?}");
    let want: String = raw.iter().map(|b| format!("{}\n", hex(b))).collect();
    assert_eq!(out.stdout, want);

    // More than the 64 KiB of an array message, in total and in one argument.
    let big: Vec<String> = (0..300)
        .map(|i| format!("{i}-{}", "z".repeat(500)))
        .collect();
    let mut cmd = pl.cmd(["args"]);
    cmd.args(&big).arg("y".repeat(100_000));
    let out = output(cmd, RUN_LIMIT);
    assert!(out.status.success(), "{out:?}");
    let mut want: String = big.iter().map(|a| format!("[{a}]\n")).collect();
    want.push_str(&format!("[{}]\n", "y".repeat(100_000)));
    assert!(out.stdout == want, "large argv intact");
}

/// The worker's environment is exactly the client's: its values (odd ones too), variables the
/// server's environment has but the client's lacks are absent, large values arrive whole.
#[test]
fn env_reaches_the_worker() {
    let _wd = wd("env_reaches_the_worker");
    let pl = Pl::new("env");
    // Cold start with a variable the server inherits.
    let mut first = pl.cmd(["env", "ONLY_FIRST"]);
    first.env("ONLY_FIRST", "server has it");
    let out = output(first, RUN_LIMIT);
    assert_eq!(out.stdout, "server has it\n", "{out:?}");

    assert_eq!(
        pl.ok(&["env", "ONLY_FIRST"]),
        "<unset>\n",
        "not the server's env"
    );
    let run_env = |k: &str, v: &OsStr| {
        let mut c = pl.cmd(["hexenv", k]);
        c.env(k, v);
        let out = output(c, RUN_LIMIT);
        assert!(out.status.success(), "{out:?}");
        out.stdout
    };
    for v in [
        &b"hello world"[..],
        b"",
        b"a=b=c",
        b"line\nbreak",
        b"\xff\x80 not utf-8",
    ] {
        assert_eq!(
            run_env("MY_VAR", OsStr::from_bytes(v)),
            format!("{}\n", hex(v))
        );
    }
    let big = "v".repeat(120_000); // one string is limited to 128 KiB by execve
    assert_eq!(
        run_env("BIG", OsStr::new(&big)),
        format!("{}\n", hex(big.as_bytes()))
    );
    // A variable removed from the client's environment is absent.
    let mut c = pl.cmd(["env", "HOME"]);
    c.env_remove("HOME");
    assert_eq!(output(c, RUN_LIMIT).stdout, "<unset>\n");
}

/// The worker starts in the client's working directory (Spring forgets it).
#[test]
fn cwd_reaches_the_worker() {
    let _wd = wd("cwd_reaches_the_worker");
    let pl = Pl::new("cwd");
    let a = pl.path("dir with spaces");
    let b = pl.path("other");
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    for dir in [&a, &b, &a] {
        let mut c = pl.cmd(["cwd"]);
        c.current_dir(dir);
        let out = output(c, RUN_LIMIT);
        assert_eq!(out.stdout, format!("{}\n", dir.display()), "{out:?}");
    }
}

/// A working directory whose name is not UTF-8 (legal on Linux) reaches the worker too.
#[test]
fn non_utf8_cwd_reaches_the_worker() {
    let _wd = wd("non_utf8_cwd_reaches_the_worker");
    let pl = Pl::new("cwd8");
    let mut name = pl.dir.clone().into_os_string().into_vec();
    name.extend_from_slice(b"/caf\xe9");
    let dir = std::path::PathBuf::from(std::ffi::OsString::from_vec(name));
    std::fs::create_dir(&dir).unwrap();
    pl.ok(&["echo", "warm"]);
    let mut c = pl.cmd(["hexcwd"]);
    c.current_dir(&dir);
    let out = output(c, RUN_LIMIT);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        out.stdout,
        format!("{}\n", hex(dir.as_os_str().as_bytes())),
        "the worker runs in the non-UTF-8 directory"
    );
    assert!(
        pl.log().is_empty() || !pl.log().contains("bad request"),
        "{}",
        pl.log()
    );
}

/// Exit codes pass through unchanged; a worker killed by a signal makes the client die by the
/// same signal; a panicking worker exits 101.
#[test]
fn exit_codes_and_signals_are_reported_faithfully() {
    let _wd = wd("exit_codes_and_signals_are_reported_faithfully");
    let pl = Pl::new("exit");
    for code in [0, 7, 1, 255] {
        let out = pl.run(&["exit", &code.to_string()]);
        assert_eq!(out.status.code(), Some(code), "{out:?}");
    }
    for sig in [libc::SIGTERM, libc::SIGKILL, libc::SIGINT, libc::SIGUSR1] {
        let out = pl.run(&["kill", &sig.to_string()]);
        assert_eq!(
            out.status.signal(),
            Some(sig),
            "worker killed by {sig}: {out:?}"
        );
        assert_eq!(out.status.code(), None);
    }
    let out = pl.run(&["panic"]);
    assert_eq!(out.status.code(), Some(101), "{out:?}");
    assert!(out.stderr.contains("worker panicked on purpose"), "{out:?}");
    let out = pl.run(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(64));
    // Through a shell: 128 + n.
    let out = pl.sh(r#""$0" kill 15; echo "rc $?""#);
    assert_eq!(out.stdout, "rc 143\n");
    assert_eq!(zombies_under(pl.server().server), Vec::<u32>::new());
}

/// `cmd | head -1` and `cmd | cat` terminate, cold and warm, on success and error paths: no
/// process keeps the client's stdout open.
#[test]
fn pipes_terminate() {
    let _wd = wd("pipes_terminate");
    let pl = Pl::new("pipes");
    // Cold start through `head -1`: the worker gets EPIPE (SIGPIPE is ignored, as in any Rust
    // program) and `lines` exits 3 on a failed write; the client with it.
    let out = pl.sh(r#"{ "$0" lines 100000; echo "client $?" >&2; } | head -1"#);
    assert_eq!(out.stdout, "line 0\n", "{out:?}");
    assert!(out.stderr.contains("client 3"), "EPIPE reported: {out:?}");
    // Warm.
    let out = pl.sh(r#"{ "$0" lines 100000; echo "client $?" >&2; } | head -1"#);
    assert_eq!(out.stdout, "line 0\n");
    assert!(out.stderr.contains("client 3"), "{out:?}");

    let out = pl.sh(r#""$0" echo hi | cat"#);
    assert_eq!(out.stdout, "hi\n");
    let out = pl.sh(r#""$0" lines 3 | cat"#);
    assert_eq!(out.stdout, "line 0\nline 1\nline 2\n");
    // Error paths.
    let out = pl.sh(r#"{ "$0" fail-after-lines 3; echo "client $?" >&2; } | cat"#);
    assert_eq!(out.stdout, "line 0\nline 1\nline 2\n");
    assert!(out.stderr.contains("failing") && out.stderr.contains("client 5"));
    let out = pl.sh(r#"{ "$0" fail-after-lines 3; echo "client $?" >&2; } | head -1"#);
    assert_eq!(out.stdout, "line 0\n");
    let out = pl.sh(r#"{ "$0" exit 7; echo "client $?" >&2; } | cat"#);
    assert!(out.stdout.is_empty() && out.stderr.contains("client 7"));
    let out = pl.sh(r#"{ "$0" panic; echo "client $?" >&2; } 2>&1 | cat"#);
    assert!(out.stdout.contains("client 101"), "{out:?}");
    let out = pl.sh(r#"{ "$0" kill 9; echo "client $?" >&2; } | cat"#);
    assert!(out.stderr.contains("client 137"), "{out:?}");
    // stderr through a pipe too.
    let out = pl.sh(r#""$0" fail-after-lines 1 2>&1 >/dev/null | cat"#);
    assert_eq!(out.stdout, "failing\n");
}

/// Piped stdin reaches the worker, and end of stream propagates.
#[test]
fn stdin_reaches_the_worker_and_eof_propagates() {
    let _wd = wd("stdin_reaches_the_worker_and_eof_propagates");
    let pl = Pl::new("stdin");
    let data = fdserver_tests::pseudo_random_bytes(7, 300_000);
    let mut cmd = pl.cmd(["cat"]);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let d2 = data.clone();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&d2).unwrap();
        // Dropping closes it: the worker must see end of stream.
    });
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut v).unwrap();
        v
    });
    writer.join().unwrap();
    assert!(
        fdserver_tests::wait_pid_gone(child.id(), RUN_LIMIT),
        "cat never saw end of stream"
    );
    assert!(child.wait().unwrap().success());
    let got = reader.join().unwrap();
    let mut want = data.clone();
    want.extend_from_slice(format!("<eof after {} bytes>\n", data.len()).as_bytes());
    assert!(got == want, "stdin arrived intact ({} bytes)", got.len());

    // Through a shell pipeline, and from /dev/null.
    let out = pl.sh(r#"printf 'a\nb\n' | "$0" cat"#);
    assert_eq!(out.stdout, "a\nb\n<eof after 4 bytes>\n");
    assert_eq!(pl.ok(&["cat"]), "<eof after 0 bytes>\n");
}

/// A worker that runs the client again (a nested command) is served.
#[test]
fn worker_calling_the_client_again_is_served() {
    let _wd = wd("worker_calling_the_client_again_is_served");
    let pl = Pl::new("call");
    assert_eq!(pl.ok(&["call", "echo", "hi"]), "inner: hi\n");
    let out = pl.run(&["call", "exit", "9"]);
    assert_eq!(out.status.code(), Some(9), "{out:?}");
    assert_eq!(
        pl.ok(&["call", "call", "echo", "deep"]),
        "inner: inner: deep\n"
    );
    assert_eq!(pl.preloads(), vec!["dev"], "all on one template");
}

/// A worker holds only its descriptors 0, 1, 2: not the template's channel, not the server's
/// socket, not another client's connection (a second client runs meanwhile). The numbers the
/// template inherited from the server are held by tombstones, which hold no file (issue 10,
/// item 9).
#[test]
fn worker_holds_only_its_stdio() {
    let _wd = wd("worker_holds_only_its_stdio");
    let pl = Pl::new("fds");
    let mut other = Running::spawn(pl.cmd(["wait"]));
    other.expect_pid("ready");
    let out = pl.ok(&["fds"]);
    let fds: Vec<&str> = out
        .lines()
        .filter(|l| !l.ends_with(" -> /dev/null (tombstone)"))
        .map(|l| l.split_once(" -> ").expect("`fd -> target`").0)
        .collect();
    assert_eq!(fds, vec!["0", "1", "2"], "worker descriptors:\n{out}");
    other.signal(libc::SIGTERM);
    assert_eq!(other.wait().signal(), Some(libc::SIGTERM));
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Neither the server nor the template keeps descriptors of finished commands (whatever way
/// they ended); nor do zombies pile up.
#[test]
fn no_descriptor_leak_across_commands() {
    let _wd = wd("no_descriptor_leak_across_commands");
    let pl = Pl::new("leak");
    pl.ok(&["echo", "warm"]);
    let st = pl.server();
    let tpid = st.template("dev").unwrap();
    let (s0, t0) = (fd_count(st.server), fd_count(tpid));
    for _ in 0..3 {
        pl.ok(&["echo", "x"]);
        pl.run(&["exit", "3"]);
        pl.run(&["kill", "9"]);
        pl.run(&["panic"]);
        pl.sh(r#""$0" lines 100000 | head -1"#);
        let c = Running::spawn(pl.cmd(["wait"]));
        c.expect_pid("ready");
        c.signal(libc::SIGKILL);
        drop(c);
    }
    // The template has handled every SIGCHLD once this ends.
    pl.ok(&["echo", "last"]);
    // The server closes a connection in its own thread right after handing it on, so a count
    // may include one in flight (the baseline too): wait for it to settle at or below the
    // baseline (a leak would add a descriptor per command, 19 here).
    let settled = |pid: u32, base: usize| {
        let deadline = std::time::Instant::now() + RUN_LIMIT;
        while fd_count(pid) > base && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        fd_count(pid)
    };
    let s1 = settled(st.server, s0);
    assert!(s1 <= s0, "server descriptors: {s0} before, {s1} after");
    let t1 = settled(tpid, t0);
    assert!(t1 <= t0, "template descriptors: {t0} before, {t1} after");
    assert_eq!(zombies_under(st.server), Vec::<u32>::new());
    assert_eq!(pl.server().template("dev"), Some(tpid));
}

/// Many clients at once, each with its own pipes, arguments and working directory: every one
/// gets exactly its own output and status (no descriptor crosses between clients).
#[test]
fn concurrent_clients_get_their_own_io() {
    let _wd = wd("concurrent_clients_get_their_own_io");
    let pl = Pl::new("many");
    pl.ok(&["echo", "warm"]);
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let mut c = pl.cmd(["fail-after-lines", &i.to_string()]);
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            (i, c.spawn().unwrap())
        })
        .collect();
    for (i, child) in clients {
        assert!(
            fdserver_tests::wait_pid_gone(child.id(), RUN_LIMIT),
            "client {i} hung"
        );
        let out = child.wait_with_output().unwrap();
        let want: String = (0..i).map(|n| format!("line {n}\n")).collect();
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "client {i}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "failing\n");
        assert_eq!(out.status.code(), Some(5));
    }
    assert_eq!(pl.preloads(), vec!["dev"]);
}

/// The server outlives the client that starts it, and its templates are started by `exec`:
/// neither may keep a descriptor that client inherited (here a pipe whose reader waits for its
/// end, as `make`'s or a shell's would), or the reader waits as long as the server lives.
#[test]
fn the_server_keeps_nothing_its_first_client_inherited() {
    let _wd = wd("the_server_keeps_nothing_its_first_client_inherited");
    let pl = Pl::new("inherit");
    // Close-on-exec (so that no other test's child gets it); dup2 in the child clears that.
    let (r, w) = fdserver_tests::pipe();
    let raw = w.as_raw_fd();
    let mut c = pl.cmd(["echo", "first"]);
    // SAFETY: fcntl, dup2 and close are async-signal-safe; the write end becomes fd 9, without
    // close-on-exec. Through a copy: the pipe's own number may be 9, and `dup2` of a descriptor
    // onto itself keeps its close-on-exec flag (the test would then prove nothing).
    unsafe {
        c.pre_exec(move || {
            let copy = libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 100);
            if copy < 0 || libc::dup2(copy, 9) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(copy);
            Ok(())
        });
    }
    let out = output(c, RUN_LIMIT);
    assert_eq!(out.stdout, "first\n");
    drop(w);
    assert!(
        read_to_eof(r, RUN_LIMIT).is_some(),
        "the server or its template still holds the pipe the first client inherited"
    );
    assert_eq!(pl.ok(&["echo", "warm"]), "warm\n");
}
