//! Who may talk to the server: another uid is refused (SO_PEERCRED), and the private directory
//! must be private.

mod preload_common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;

use fdserver_tests::{fork_child, pipe, wait_child};
use preload_common::*;

const NOBODY: libc::uid_t = 65534;

/// A process of another uid that reaches the socket is refused with an error of kind
/// `permission` and the connection is closed; the server keeps serving its owner.
///
/// The socket is `0600` in a `0700` directory, so another uid cannot even reach it. To get past
/// the file permissions and reach the server's own check, the test (root) makes the socket
/// `0666`, opens it `O_PATH`, and a forked child becomes uid 65534 (dumpable again, so that it
/// may use `/proc/self/fd`) and connects through `/proc/self/fd/N`, which skips the directory.
#[test]
fn other_uid_is_refused() {
    let _wd = wd("other_uid_is_refused");
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to act as another uid");
        return;
    }
    let pl = Pl::new("uid");
    pl.ok(&["echo", "start"]);
    let server = pl.server().server;
    let sock = pl.files().sock;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600,
        "the socket is private"
    );
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let path = std::ffi::CString::new(sock.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: open(2) with a valid path; the result is checked and owned below.
    let opath = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    assert!(
        opath >= 0,
        "O_PATH open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor owned by nobody else.
    let opath = unsafe { OwnedFd::from_raw_fd(opath) };

    // Everything the child needs is prepared before the fork.
    let proc_path = format!("/proc/self/fd/{}", opath.as_raw_fd());
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(proc_path.bytes()) {
        *d = s as libc::c_char;
    }
    let (r, w) = pipe();
    let (opath_raw, w_raw) = (opath.as_raw_fd(), w.as_raw_fd());
    let child = fork_child(&[opath_raw, w_raw], move || {
        let report = |data: &[u8]| {
            // SAFETY: write(2) of a valid buffer to our report pipe.
            unsafe { libc::write(w_raw, data.as_ptr().cast(), data.len()) };
        };
        // SAFETY: credential and socket calls in a single-threaded child; buffers are local.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
                || libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) != 0
            {
                report(b"E:setuid");
                return 2;
            }
            let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            let tv = libc::timeval {
                tv_sec: 10,
                tv_usec: 0,
            };
            libc::setsockopt(
                s,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            if libc::connect(
                s,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            ) != 0
            {
                let e = *libc::__errno_location();
                report(format!("E:connect errno {e}").as_bytes());
                return 3;
            }
            report(b"C:");
            // Everything the server sends until it closes.
            let mut buf = [0u8; 4096];
            loop {
                let n = libc::read(s, buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    if n < 0 {
                        report(b"\nE:read failed (no close from the server)");
                        return 4;
                    }
                    return 0;
                }
                report(&buf[..n as usize]);
            }
        }
    });
    drop(w);
    drop(opath);
    let got = read_to_eof(r, RUN_LIMIT).expect("the child's report");
    let status = wait_child(child);
    assert!(
        got.starts_with(b"C:"),
        "the other uid should reach the server: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        status.code(),
        Some(0),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let body = &got[2..];
    assert!(body.len() >= 2, "a reply before the close: {body:?}");
    let len = u16::from_be_bytes([body[0], body[1]]) as usize;
    assert_eq!(body.len(), 2 + len, "exactly one message, then the close");
    let mut buf = fdserver::MessageBuf::new();
    let msg = buf.decode_body(&body[2..]).unwrap();
    let parts = msg.to_strings().unwrap();
    assert_eq!(parts[0], "error", "{parts:?}");
    assert_eq!(parts[1], "permission", "{parts:?}");
    assert!(parts[2].contains("65534"), "{parts:?}");
    assert!(
        !parts.iter().any(|p| p.contains("fdserver-preload/")),
        "no greeting for a stranger: {parts:?}"
    );

    assert_eq!(pl.ok(&["echo", "owner"]), "owner\n");
    assert_eq!(pl.server().server, server);
    assert!(
        pl.log().contains("refused a connection from uid 65534"),
        "{}",
        pl.log()
    );
}

/// Whether the test may act as another uid; prints why it skips otherwise.
fn as_root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("{test}: skipped: needs root, to act as another user (uid {NOBODY})");
    }
    root
}

fn chown(path: &std::path::Path, uid: u32, follow: bool) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    let r = unsafe {
        if follow {
            libc::chown(c.as_ptr(), uid, uid)
        } else {
            libc::lchown(c.as_ptr(), uid, uid)
        }
    };
    assert_eq!(
        r,
        0,
        "chown {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Asserts that `out` is the in-process run of `echo <word>` (through the test app's preload,
/// which counts), with exactly one line on stderr, which says why and how to fix it.
fn assert_ran_in_process(pl: &Pl, out: &Out, word: &str, why: &str) {
    assert!(out.status.success(), "the command still runs: {out:?}");
    assert_eq!(out.stdout, format!("{word}\n"));
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr: {:?}", out.stderr);
    assert!(
        lines[0].contains(why)
            && lines[0].contains("without the preloader")
            && lines[0].contains("FDSERVER_PRELOAD_DIR"),
        "says why and how to fix it: {:?}",
        lines[0]
    );
    assert!(
        pl.preloads().len() == 1,
        "preloaded in-process: {:?}",
        pl.preloads()
    );
}

/// A directory another user created first under the default name (`fdserver-preload-<uid>` in
/// the temporary directory) does not lock the user out: the command runs in-process, with one
/// line saying why and what to do.
#[test]
fn squatted_default_directory_runs_the_command_in_process() {
    let _wd = wd("squatted_default_directory_runs_the_command_in_process");
    if !as_root("squatted_default_directory_runs_the_command_in_process") {
        return;
    }
    let mut pl = Pl::new("squat");
    let tmp = pl.default_dir_in();
    let squat = tmp.join("fdserver-preload-0");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&squat)
        .unwrap();
    chown(&squat, NOBODY, true);
    let out = pl.run(&["echo", "hi"]);
    assert_ran_in_process(&pl, &out, "hi", "belongs to uid 65534");
    assert_eq!(
        std::fs::read_dir(&squat).unwrap().count(),
        0,
        "nothing was put in the other user's directory"
    );
}

/// Another user's symbolic link under the default name, pointing at a directory that passes
/// every check (ours, `0700`) where the attacker listens (the state a link swapped at the right
/// moment gives, with `fs.protected_symlinks=0`): the client does not follow it, so the fake
/// server never gets a connection (nor the command's argv, environment or descriptors).
#[test]
fn symlinked_default_directory_is_not_followed() {
    let _wd = wd("symlinked_default_directory_is_not_followed");
    if !as_root("symlinked_default_directory_is_not_followed") {
        return;
    }
    let mut pl = Pl::new("symlink");
    let tmp = pl.default_dir_in();
    let target = pl.path("target");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&target)
        .unwrap();
    let link = tmp.join("fdserver-preload-0");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    chown(&link, NOBODY, false);
    // The socket's name as the client computes it.
    let sock = target.join(pl.files().sock.file_name().unwrap());
    let mut fake = FakeServer::start(&sock, Some(NOBODY), vec![vec![Step::ReadToEnd]]);

    pl.set("APP_SECRET", "s3cret");
    let out = pl.run(&["echo", "hi"]);
    assert_ran_in_process(&pl, &out, "hi", "symbolic link");
    // Ends the acceptor's wait for a connection: had the client connected, it would have
    // been served first.
    drop(std::os::unix::net::UnixStream::connect(&sock).unwrap());
    assert_eq!(
        fake.reports(),
        vec!["bytes 0"],
        "the only connection the fake server got is the test's own"
    );
}

/// A server of another uid listening on the socket (here the test makes one in our own
/// directory) gets nothing: the client checks `SO_PEERCRED` before it sends a byte, and runs
/// the command in-process.
#[test]
fn server_of_another_uid_gets_nothing() {
    let _wd = wd("server_of_another_uid_gets_nothing");
    if !as_root("server_of_another_uid_gets_nothing") {
        return;
    }
    let mut pl = Pl::new("peer");
    // A greeting the client would accept from its own server.
    let hello = real_greeting(&pl);
    let mut fake = FakeServer::start(
        &pl.files().sock,
        Some(NOBODY),
        vec![vec![Step::Send(hello), Step::ReadToEnd]],
    );
    pl.set("APP_SECRET", "s3cret");
    let _ = std::fs::remove_file(pl.path("counter"));
    let out = pl.run(&["echo", "hi"]);
    assert_ran_in_process(&pl, &out, "hi", "runs as uid 65534");
    assert_eq!(fake.reports(), vec!["bytes 0"], "not a byte was sent to it");
}

/// Worker pids from the server are checked before anything is signalled: `0` (which would be
/// the client's own process group) ends the command with an error, and nothing is killed.
#[test]
fn impossible_worker_pid_is_refused() {
    let _wd = wd("impossible_worker_pid_is_refused");
    let pl = Pl::new("pid0");
    let hello = real_greeting(&pl);
    let _ = std::fs::remove_file(pl.path("counter"));
    let mut fake = FakeServer::start(
        &pl.files().sock,
        None,
        vec![vec![
            Step::Send(hello),
            Step::ReadCommand,
            Step::Send(vec!["pid".into(), "0".into()]),
        ]],
    );
    let out = pl.run(&["echo", "hi"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an error, not a signal: {out:?}"
    );
    assert!(
        out.stderr.contains("impossible worker pid 0"),
        "clear error: {:?}",
        out.stderr
    );
    assert_eq!(fake.reports()[0], "msg run|dev| +"); // no proof asked, none sent
    assert!(
        alive(std::process::id()),
        "(and this test's process group was not signalled)"
    );
}

/// A connection that ends after the worker's pid: the client ends the worker's group only
/// through the pidfd the worker sent, so a process that now has the worker's number (here an
/// innocent process group leader) is never signalled, whether the pidfd came (its process
/// long gone) or not.
#[test]
fn a_recycled_worker_pid_is_never_signalled() {
    let _wd = wd("a_recycled_worker_pid_is_never_signalled");
    let pl = Pl::new("recycle");
    let hello = real_greeting(&pl);
    let mut innocent = std::process::Command::new("sleep")
        .arg("600")
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = innocent.id().to_string();
    let conn = |pid_msg: Step| {
        vec![
            Step::Send(hello.clone()),
            Step::ReadCommand,
            pid_msg,
            // The connection ends here, before the worker's status.
        ]
    };
    let mut fake = FakeServer::start(
        &pl.files().sock,
        None,
        vec![
            conn(Step::SendWithDeadPidfd(vec![
                "pid".into(),
                pid.clone(),
                "fd".into(),
            ])),
            conn(Step::Send(vec!["pid".into(), pid.clone()])),
        ],
    );
    let outs: Vec<Out> = (0..2).map(|_| pl.run(&["echo", "hi"])).collect();
    assert!(
        innocent.try_wait().unwrap().is_none(),
        "the process now numbered like the worker was signalled"
    );
    for out in outs {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            out.stderr.contains("ended while the command ran")
                && out.stderr.contains("the command was ended"),
            "{out:?}"
        );
    }
    assert_eq!(fake.reports().len(), 2);
    innocent.kill().unwrap();
    innocent.wait().unwrap();
}

/// The directory's path may be longer than a UNIX socket address (108 bytes): the socket is
/// reached through the open directory (`/proc/self/fd/N/<name>`).
#[test]
fn long_directory_path_works() {
    let _wd = wd("long_directory_path_works");
    let mut pl = Pl::new("long");
    let deep = pl.path(&"d".repeat(150));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&deep)
        .unwrap();
    pl.set("FDSERVER_PRELOAD_DIR", &deep);
    assert_eq!(pl.ok(&["echo", "hi"]), "hi\n");
    assert_eq!(pl.ok(&["echo", "again"]), "again\n");
    assert_eq!(pl.preloads().len(), 1, "the second command was warm");
    pl.stop();
}

/// A preloader directory that others can enter is not used: the command runs in-process, with
/// one line saying why and what to do.
#[test]
fn non_private_directory_runs_the_command_in_process() {
    let _wd = wd("non_private_directory_runs_the_command_in_process");
    let pl = Pl::new("mode");
    std::fs::set_permissions(&pl.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = pl.run(&["echo", "hi"]);
    assert_ran_in_process(&pl, &out, "hi", "0700");
    assert!(!pl.files().sock.exists(), "no server in a public directory");
    std::fs::set_permissions(&pl.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(pl.ok(&["echo", "hi"]), "hi\n");
}

/// Review finding 14: a relative `FDSERVER_PRELOAD_DIR` would be another directory (and
/// another server) in every working directory: the command runs in-process with one line
/// saying why, and nothing is created there.
#[test]
fn a_relative_directory_runs_the_command_in_process() {
    let _wd = wd("a_relative_directory_runs_the_command_in_process");
    let mut pl = Pl::new("reldir");
    pl.set("FDSERVER_PRELOAD_DIR", "relative-dir");
    let mut c = pl.cmd(["echo", "here"]);
    c.current_dir(&pl.dir);
    let out = output(c, RUN_LIMIT);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, "here\n");
    assert!(
        out.stderr.contains("relative-dir is not an absolute path")
            && out.stderr.contains("without the preloader"),
        "{out:?}"
    );
    assert!(!pl.path("relative-dir").exists(), "nothing created");
    // (So that the test's own clean-up, run elsewhere, uses the test's directory.)
    pl.set("FDSERVER_PRELOAD_DIR", pl.dir.clone());
}
