//! Preloader recovery: stale files, a killed server, protocol version mismatch, a wedged server,
//! failed and crashing preloads, clients that vanish mid-handshake or mid-command.

mod preload_common;

use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::ExitStatusExt;

use fdserver::Channel;
use fdserver_tests::{pipe, poll_readable};
use preload_common::*;

/// Stale files from a crashed server (a socket nobody listens on, a pidfile nobody locks, naming
/// a live unrelated process): `status` reports no server, the next command starts one, and the
/// innocent process named in the pidfile is left alone.
#[test]
fn stale_socket_and_pidfile_are_replaced() {
    let _wd = wd("stale_socket_and_pidfile_are_replaced");
    let pl = Pl::new("stale");
    let files = pl.files();
    let mut innocent = sleeper();
    drop(UnixListener::bind(&files.sock).unwrap()); // the file stays, nobody listens
    std::fs::write(&files.pid, format!("{}\n", innocent.id())).unwrap();

    assert_eq!(pl.status(), None, "stale files are not a server");
    // `status` cleaned up; recreate them for the run and for `stop`.
    drop(UnixListener::bind(&files.sock).unwrap());
    std::fs::write(&files.pid, format!("{}\n", innocent.id())).unwrap();
    assert!(pl.stop().contains("no preloader server was running"));
    assert!(
        !files.sock.exists() && !files.pid.exists(),
        "stop removed them"
    );

    drop(UnixListener::bind(&files.sock).unwrap());
    std::fs::write(&files.pid, format!("{}\n", innocent.id())).unwrap();
    assert_eq!(pl.ok(&["echo", "fresh"]), "fresh\n");
    let st = pl.server();
    assert_eq!(
        std::fs::read_to_string(&files.pid).unwrap().trim(),
        st.server.to_string()
    );
    assert!(
        innocent.try_wait().unwrap().is_none(),
        "the process named by the stale pidfile was not signalled"
    );
    innocent.kill().unwrap();
    innocent.wait().unwrap();
}

/// A server killed with SIGKILL leaves its socket and pidfile behind; its template exits (no
/// orphan), and the next command starts a new server.
#[test]
fn killed_server_is_replaced_and_its_template_exits() {
    let _wd = wd("killed_server_is_replaced_and_its_template_exits");
    let pl = Pl::new("kill9");
    pl.ok(&["echo", "x"]);
    let st = pl.server();
    let tpid = st.template("dev").unwrap();
    // SAFETY: kill(2) on the test's own server.
    assert_eq!(unsafe { libc::kill(st.server as i32, libc::SIGKILL) }, 0);
    assert_gone(st.server, "killed server");
    assert_gone(tpid, "template of the killed server (orphaned template)");
    assert!(pl.files().sock.exists(), "the socket file is stale now");

    assert_eq!(pl.ok(&["echo", "back"]), "back\n");
    let st2 = pl.server();
    assert_ne!(st2.server, st.server);
    assert_eq!(pl.preloads(), vec!["dev", "dev"]);
}

/// A server killed while a command runs: the template finishes that worker (the client still
/// gets its signals relayed and its exit status), then exits; the next command starts afresh.
#[test]
fn server_killed_mid_command_lets_the_command_finish() {
    let _wd = wd("server_killed_mid_command_lets_the_command_finish");
    let pl = Pl::new("skill");
    let mut c = Running::spawn(pl.cmd(["wait"]));
    let wpid = c.expect_pid("ready");
    let st = pl.server();
    let tpid = st.template("dev").unwrap();
    // SAFETY: kill(2) on the test's own server.
    assert_eq!(unsafe { libc::kill(st.server as i32, libc::SIGKILL) }, 0);
    assert_gone(st.server, "killed server");
    assert!(
        c.running() && alive(wpid),
        "the running command is not cut short"
    );
    c.signal(libc::SIGINT);
    assert_eq!(
        c.wait().signal(),
        Some(libc::SIGINT),
        "status still reported"
    );
    assert_gone(wpid, "worker");
    assert_gone(tpid, "template of the dead server, after its last worker");
    assert_eq!(pl.ok(&["echo", "again"]), "again\n");
}

/// A server of another version is told to stop and SIGTERMed (the process that listens on the
/// socket, as the kernel names it: not the pid its greeting claims, here an innocent process);
/// the client starts a real server and runs the command.
#[test]
fn version_mismatch_restarts_the_server() {
    let _wd = wd("version_mismatch_restarts_the_server");
    let pl = Pl::new("vers");
    let mut innocent = sleeper();
    let greeting = vec![
        "fdserver-preload".to_owned(),
        "fdserver-preload/0".to_owned(),
        innocent.id().to_string(),
    ];
    let mut fake = FakeServer::start(
        &pl.files().sock,
        None,
        vec![vec![Step::Send(greeting), Step::Read]],
    );

    assert_eq!(pl.ok(&["echo", "hi"]), "hi\n");
    assert_eq!(
        fake.reports(),
        vec!["msg stop"],
        "the old server was asked to stop"
    );
    let status = fake.wait_listener();
    assert_eq!(status.signal(), Some(libc::SIGTERM), "and then SIGTERMed");
    assert!(
        innocent.try_wait().unwrap().is_none(),
        "the pid in the greeting was not signalled"
    );
    let st = pl.server();
    assert_eq!(st.version, fdserver::preload::PROTOCOL_VERSION);
    assert_eq!(pl.preloads(), vec!["dev"]);
    innocent.kill().unwrap();
    innocent.wait().unwrap();
}

/// If the server still speaks another version after the restart, the client gives up with a
/// clear error instead of looping (it restarts once). Here the fake's acceptor outlives its
/// listener (the process the first client SIGTERMs) and greets the second connection too; the
/// test holds the pidfile's lock, so the client cannot start a real server in its place.
#[test]
fn version_mismatch_restarts_only_once() {
    let _wd = wd("version_mismatch_restarts_only_once");
    let pl = Pl::new("vers1");
    let files = pl.files();
    let pidfile = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&files.pid)
        .unwrap();
    // SAFETY: flock on an open descriptor.
    assert_eq!(
        unsafe { libc::flock(pidfile.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let greeting = vec![
        "fdserver-preload".to_owned(),
        "fdserver-preload/0".to_owned(),
        "1".to_owned(),
    ];
    let conn = vec![Step::Send(greeting), Step::Read];
    let mut fake = FakeServer::start(&files.sock, None, vec![conn.clone(), conn]);

    let out = pl.run(&["echo", "hi"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("even after a restart"),
        "clear error: {:?}",
        out.stderr
    );
    assert_eq!(
        fake.reports(),
        vec!["msg stop", "eof"],
        "one stop request, then the client gave up"
    );
    assert_eq!(fake.wait_listener().signal(), Some(libc::SIGTERM));
    assert!(pl.preloads().is_empty(), "no real server was started");
    drop(pidfile);
    std::fs::remove_file(&files.sock).unwrap();
    std::fs::remove_file(&files.pid).unwrap();
}

/// A server that accepts but never greets (wedged, or at its connection limit) does not fail
/// the command: after the handshake timeout (10 s by default, 300 ms here) the command runs
/// in-process, after one line on stderr saying why (review finding 11: it used to fail with
/// that error).
#[test]
fn wedged_server_runs_the_command_in_process() {
    let _wd = wd("wedged_server_runs_the_command_in_process");
    let mut pl = Pl::new("wedge");
    pl.set("APP_HANDSHAKE_TIMEOUT_MS", "300");
    let listener = UnixListener::bind(pl.files().sock).unwrap();
    let out = pl.run(&["echo", "hi"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, "hi\n");
    assert!(
        out.stderr.contains("did not answer")
            && out.stderr.contains("wedged")
            && out
                .stderr
                .contains("running this command without the preloader"),
        "says why: {:?}",
        out.stderr
    );
    assert_eq!(pl.preloads(), ["dev"], "preloaded in-process");
    drop(listener);
    std::fs::remove_file(pl.files().sock).unwrap();
}

/// A failing preload gives the client the preload's error (non-zero exit, on stderr) and is
/// retried by the next command, which succeeds once the cause is gone. The server survives.
#[test]
fn failed_preload_reports_and_recovers() {
    let _wd = wd("failed_preload_reports_and_recovers");
    let mut pl = Pl::new("fail");
    let flag = pl.path("fail-flag");
    std::fs::write(&flag, "").unwrap();
    pl.set("APP_FAIL_IF", &flag);

    let mut server = None;
    for _ in 0..2 {
        let out = pl.run(&["echo", "hi"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.is_empty());
        assert!(
            out.stderr.contains("preload refused"),
            "the preload's own message: {:?}",
            out.stderr
        );
        let st = pl.server();
        assert_eq!(
            st.template("dev"),
            None,
            "no template after a failed preload"
        );
        assert!(server.is_none_or(|s| s == st.server), "same server");
        server = Some(st.server);
    }
    // Pipes end on the error path too.
    let out = pl.sh(r#""$0" echo hi | cat; echo "rc $?""#);
    assert_eq!(out.stdout, "rc 0\n", "{out:?}");

    std::fs::remove_file(&flag).unwrap();
    assert_eq!(pl.ok(&["echo", "recovered"]), "recovered\n");
    assert_eq!(pl.preloads(), vec!["dev"]);
    assert_eq!(pl.server().server, server.unwrap());
}

/// A template that crashes (abort) during its preload, while the request carries more than
/// 64 KiB of arguments and 64 KiB of environment: the client gets a clear error and a non-zero
/// exit, not a hang; a later command (cause removed) works.
#[test]
fn template_crash_at_preload_with_large_request_does_not_hang() {
    let _wd = wd("template_crash_at_preload_with_large_request_does_not_hang");
    let mut pl = Pl::new("crash");
    let flag = pl.path("crash-flag");
    std::fs::write(&flag, "").unwrap();
    pl.set("APP_CRASH_IF", &flag);
    pl.set("BIG_ENV", "e".repeat(100_000));
    let big_args: Vec<String> = (0..10)
        .map(|i| format!("{i}{}", "a".repeat(10_000)))
        .collect();

    let mut cmd = pl.cmd(["args"]);
    cmd.args(&big_args);
    let out = output(cmd, RUN_LIMIT);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("preload"),
        "the error names the preload: {:?}",
        out.stderr
    );
    let server = pl.server().server;

    std::fs::remove_file(&flag).unwrap();
    let mut cmd = pl.cmd(["args"]);
    cmd.args(&big_args);
    let out = output(cmd, RUN_LIMIT);
    assert!(out.status.success(), "{out:?}");
    let want: String = big_args.iter().map(|a| format!("[{a}]\n")).collect();
    assert!(out.stdout == want, "the large argv arrived intact");
    assert_eq!(pl.server().server, server, "the server survived the crash");
    assert_eq!(zombies_under(server), Vec::<u32>::new());
}

/// A hand-made client: connects, reads the greeting and the proof it names (see `proof`).
fn raw_connect(pl: &Pl) -> (Channel, Vec<u8>) {
    let mut ch = Channel::new(UnixStream::connect(pl.files().sock).unwrap());
    ch.set_timeout(Some(RUN_LIMIT));
    let hello = ch.read_strings().unwrap().unwrap();
    assert_eq!(hello[0], "fdserver-preload");
    let proof = proof(ch.as_fd(), &hello).expect("read the server's proof");
    (ch, proof)
}

/// Sends a whole `run` request for `args` with stdin /dev/null, stdout/stderr `out` and working
/// directory `/`, as a client in another language would: `["run", key]`, then a `u32`
/// little-endian length and the body (argv with a program name, environment, no process
/// attributes), the first byte carrying the four descriptors. The environment has the loader
/// variables of the test's own (`LD_LIBRARY_PATH` from cargo), as the template has them: with
/// others, a worker would not be what a fresh run is, and the command is handed back.
fn raw_run((ch, proof): &mut (Channel, Vec<u8>), args: &[&str], out: &OwnedFd) {
    ch.write_array([b"run".as_slice(), b"dev", proof]).unwrap();
    let mut argv = b"preload-app\0".to_vec();
    for a in args {
        argv.extend_from_slice(a.as_bytes());
        argv.push(0);
    }
    let mut env = b"PATH=/usr/bin:/bin\0".to_vec();
    for (k, v) in std::env::vars_os() {
        let k = k.as_encoded_bytes();
        if k.starts_with(b"LD_") || k == b"GLIBC_TUNABLES" || k.starts_with(b"MALLOC_") {
            env.extend_from_slice(k);
            env.push(b'=');
            env.extend_from_slice(v.as_encoded_bytes());
            env.push(0);
        }
    }
    let mut body = Vec::new();
    body.extend_from_slice(&(argv.len() as u32).to_le_bytes());
    body.extend_from_slice(&argv);
    body.extend_from_slice(&(env.len() as u32).to_le_bytes());
    body.extend_from_slice(&env);
    let mut req = (body.len() as u32).to_le_bytes().to_vec();
    req.extend_from_slice(&body);
    let null = std::fs::File::open("/dev/null").unwrap();
    let root = std::fs::File::open("/").unwrap();
    fdserver_tests::send_with_fds(
        ch.as_fd(),
        &req,
        &[
            null.as_raw_fd(),
            out.as_raw_fd(),
            out.as_raw_fd(),
            root.as_raw_fd(),
        ],
    );
}

/// Issue 16 (hand-off paths): the server reads a client's first message exactly and hands the
/// connection on (to the template, then the worker) with the rest of the request still in it. A
/// client that sends its whole command at once (the `run` message, then the body with its
/// descriptors, in two writes made before the server reads) has both waiting in the socket when
/// the server reads: a server that read ahead would take the body and its descriptors with the
/// first message, and the command would never run. The server is stopped (`SIGSTOP`) while the
/// client writes, so that both writes are there when it reads.
#[test]
fn the_connection_is_handed_on_with_the_rest_of_the_request_in_it() {
    let _wd = wd("the_connection_is_handed_on_with_the_rest_of_the_request_in_it");
    let pl = Pl::new("handon");
    pl.ok(&["echo", "warm"]);
    let server = pl.server().server as libc::pid_t;
    let (r, w) = pipe();
    let mut conn = raw_connect(&pl);
    // SAFETY: signals to this test's own preloader server, a child of its own commands.
    assert_eq!(unsafe { libc::kill(server, libc::SIGSTOP) }, 0);
    raw_run(&mut conn, &["echo", "whole"], &w);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(server, libc::SIGCONT) }, 0);
    drop(w);
    let (ch, _) = &mut conn;
    let msg = ch.read_strings().unwrap().unwrap();
    assert_eq!(msg[0], "pid", "{msg:?}");
    let out = read_to_eof(r, RUN_LIMIT).expect("the worker finishes");
    assert_eq!(String::from_utf8_lossy(&out), "whole\n");
}

/// Clients that disconnect at every step of the handshake, or hold a half-sent request open,
/// leave the server serving; a worker whose client vanished is killed (the output pipe it was
/// given reaches end of stream), so nothing is orphaned.
#[test]
fn clients_vanishing_mid_handshake_leave_the_server_serving() {
    let _wd = wd("clients_vanishing_mid_handshake_leave_the_server_serving");
    let pl = Pl::new("vanish");
    pl.ok(&["echo", "warm"]);
    let server = pl.server().server;
    let tpid = pl.server().template("dev").unwrap();

    // Connect and leave before the greeting is read.
    drop(UnixStream::connect(pl.files().sock).unwrap());
    // Leave after the greeting.
    drop(raw_connect(&pl));
    // Leave after the first message of a request.
    let (mut ch, proof) = raw_connect(&pl);
    ch.write_array([b"run".as_slice(), b"dev", &proof]).unwrap();
    drop(ch);
    // Leave halfway through the request's length.
    let (mut ch, proof) = raw_connect(&pl);
    ch.write_array([b"run".as_slice(), b"dev", &proof]).unwrap();
    ch.write_scalar(b"").unwrap(); // 4 bytes of 0: a length, without its descriptors
    drop(ch);
    // Garbage instead of a request.
    let (mut ch, _) = raw_connect(&pl);
    ch.write_array(["bogus"]).unwrap();
    let reply = ch.read_strings().unwrap();
    assert_eq!(reply.as_ref().map(|r| r[0].as_str()), Some("error"));
    drop(ch);

    // A half-sent request held open does not hold up other clients.
    let (mut held, proof) = raw_connect(&pl);
    held.write_array([b"run".as_slice(), b"dev", &proof])
        .unwrap();
    assert_eq!(pl.ok(&["echo", "still serving"]), "still serving\n");

    // Whole request, pid read, then leave while the worker runs.
    let (r, w) = pipe();
    let mut ch = raw_connect(&pl);
    raw_run(&mut ch, &["wait"], &w);
    drop(w);
    let msg = ch.0.read_strings().unwrap().unwrap();
    assert_eq!(msg[0], "pid", "{msg:?}");
    let wpid: u32 = msg[1].parse().unwrap();
    // Wait for the worker to be running its command ("ready" on its stdout) before leaving.
    assert!(poll_readable(r.as_fd(), Some(RUN_LIMIT)));
    drop(ch);
    assert_gone(wpid, "worker of a client that left mid-command");
    assert!(
        read_to_eof(r, RUN_LIMIT).is_some(),
        "nobody holds its stdout"
    );

    drop(held);
    assert_eq!(pl.ok(&["echo", "after"]), "after\n");
    let st = pl.server();
    assert_eq!(st.server, server, "same server throughout");
    assert_eq!(st.template("dev"), Some(tpid), "same template throughout");
    assert_eq!(zombies_under(server), Vec::<u32>::new());
}

/// A client that sends a whole request and leaves before reading its worker's pid: the worker
/// must be killed (the output pipe it was given reaches end of stream).
#[test]
fn client_leaving_before_the_pid_leaves_no_worker() {
    let _wd = wd("client_leaving_before_the_pid_leaves_no_worker");
    let pl = Pl::new("vanpid");
    pl.ok(&["echo", "warm"]);
    let (r, w) = pipe();
    let mut ch = raw_connect(&pl);
    raw_run(&mut ch, &["wait"], &w);
    drop(ch);
    drop(w);
    let printed = read_to_eof(r, RUN_LIMIT)
        .expect("the worker of a vanished client still holds its stdout: orphaned worker");
    if let Some(pid) = String::from_utf8_lossy(&printed)
        .trim()
        .strip_prefix("ready ")
    {
        assert_gone(pid.parse().unwrap(), "worker of a vanished client");
    }

    assert_eq!(pl.ok(&["echo", "after"]), "after\n");
}

/// A real client SIGKILLed mid-command: its worker is killed (no orphan), the server serves on.
#[test]
fn client_killed_mid_command_takes_its_worker() {
    let _wd = wd("client_killed_mid_command_takes_its_worker");
    let pl = Pl::new("ckill");
    let mut c = Running::spawn(pl.cmd(["wait", "child"]));
    let (cpid, wpid) = c.expect_two("child", "ready");
    c.signal(libc::SIGKILL);
    assert_eq!(c.wait().signal(), Some(libc::SIGKILL));
    assert_gone(wpid, "worker of a killed client");
    assert_gone(cpid, "child of the worker of a killed client");
    assert_eq!(pl.ok(&["echo", "next"]), "next\n");
    assert_eq!(zombies_under(pl.server().server), Vec::<u32>::new());
}

/// A real client SIGKILLed while its request waits for a preloading template (before it knows
/// its worker): once the preload ends, no worker keeps its stdout; the next command works.
#[test]
fn client_killed_while_waiting_for_preload_leaves_no_worker() {
    let _wd = wd("client_killed_while_waiting_for_preload_leaves_no_worker");
    let mut pl = Pl::new("ckpre");
    let mut gate = Gate::new(&mut pl, "dev");
    let (r, w) = pipe();
    let mut cmd = pl.cmd(["wait"]);
    cmd.stdout(std::process::Stdio::from(w));
    let mut client = cmd.spawn().unwrap();
    drop(cmd); // drops our copy of the write end
    gate.wait_started();
    client.kill().unwrap();
    assert_eq!(client.wait().unwrap().signal(), Some(libc::SIGKILL));
    gate.release();
    let printed = read_to_eof(r, RUN_LIMIT)
        .expect("a worker still holds the killed client's stdout: orphaned worker");
    if let Some(pid) = String::from_utf8_lossy(&printed)
        .trim()
        .strip_prefix("ready ")
    {
        assert_gone(pid.parse().unwrap(), "worker of the killed client");
    }
    assert_eq!(pl.ok(&["echo", "next"]), "next\n");
}

/// A server that cannot start (here: its socket's name is taken by a directory) gives the client
/// a clear error pointing at the log, not a hang.
#[test]
fn server_that_cannot_start_gives_a_clear_error() {
    let _wd = wd("server_that_cannot_start_gives_a_clear_error");
    let pl = Pl::new("nostart");
    std::fs::create_dir(pl.files().sock).unwrap();
    let out = pl.run(&["echo", "hi"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        out.stderr.contains("failed to start") && out.stderr.contains(".log"),
        "clear error naming the log: {:?}",
        out.stderr
    );
    std::fs::remove_dir(pl.files().sock).unwrap();
}

/// The template dies (SIGKILL) while a command runs: the client cannot learn the worker's
/// status any more and fails with a clear error; it must not leave the worker (and its
/// children) running detached, holding the client's terminal or pipes.
#[test]
fn template_killed_mid_command_leaves_no_worker() {
    let _wd = wd("template_killed_mid_command_leaves_no_worker");
    let pl = Pl::new("tkill");
    let mut c = Running::spawn(pl.cmd(["wait", "child"]));
    let (cpid, wpid) = c.expect_two("child", "ready");
    let tpid = pl.server().template("dev").unwrap();
    // SAFETY: kill(2) on the test's own template.
    assert_eq!(unsafe { libc::kill(tpid as i32, libc::SIGKILL) }, 0);
    let status = c.wait();
    assert_eq!(status.code(), Some(1), "an error exit: {status:?}");
    let worker_gone = fdserver_tests::wait_pid_gone(wpid, RUN_LIMIT);
    let child_gone = fdserver_tests::wait_pid_gone(cpid, RUN_LIMIT);
    if !worker_gone || !child_gone {
        // Clean up what the preloader left behind (it holds our stderr), then fail.
        // SAFETY: kill(2) on processes this test started.
        unsafe {
            libc::kill(-(wpid as i32), libc::SIGKILL);
            libc::kill(cpid as i32, libc::SIGKILL);
        }
        panic!("worker {wpid} (gone: {worker_gone}) or its child {cpid} (gone: {child_gone}) survived its template");
    }
    assert_eq!(pl.ok(&["echo", "again"]), "again\n");
}

/// A server that refuses a command and hangs up while the client is still sending it (a failed
/// preload answered at once): the client reports the server's reason, not its own failed send.
#[test]
fn a_refusal_that_arrives_while_the_client_still_sends_is_reported() {
    let _wd = wd("refusal_while_sending");
    let mut pl = Pl::new("refuse");
    // An environment far larger than a socket buffer: the client is still writing it when the
    // server hangs up.
    let big = "x".repeat(100_000);
    for i in 0..12 {
        pl.set(&format!("APP_BIG_{i}"), &big);
    }
    // Greeted as a real server of this build would (else the client would stop it).
    let hello = real_greeting(&pl);
    let listener = UnixListener::bind(pl.files().sock).unwrap();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut ch = Channel::from(conn);
        ch.write_array(&hello).unwrap();
        let first = ch.read_array().unwrap().unwrap();
        assert_eq!(first[0], b"run");
        ch.write_error(&fdserver::RemoteError::new(
            fdserver::RemoteErrorKind::Other("preload".into()),
            "preload refused on purpose",
        ))
        .unwrap();
        // Dropped here, with the client's environment unread.
    });
    let out = pl.run(&["echo", "hi"]);
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("preload refused on purpose"),
        "the server's reason: {:?}",
        out.stderr
    );
    std::fs::remove_file(pl.files().sock).unwrap();
}

/// A client that sends its first message and then stalls is given up on (the request has one
/// budget, 3 s in all): it gets a clear error, and the next command of that key runs.
#[test]
fn a_stalled_client_holds_its_template_only_briefly() {
    let _wd = wd("stalled_client");
    let pl = Pl::new("stall");
    assert_eq!(pl.ok(&["echo", "warm"]), "warm\n");

    let mut staller = Channel::from(UnixStream::connect(pl.files().sock).unwrap());
    staller.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let greeting = staller.read_strings().unwrap().unwrap();
    assert_eq!(greeting[0], "fdserver-preload");
    let proof = proof(staller.as_fd(), &greeting).unwrap();
    staller
        .write_array([b"run".as_slice(), b"dev", &proof])
        .unwrap();
    // ... and nothing more: no arguments, no environment, no descriptors.

    // The next command of the key runs once the template has given up on the stalled one
    // (the bound itself, 3 s, is a timing: see the module docs and the session notes).
    assert_eq!(pl.ok(&["echo", "after"]), "after\n");
    let reply = staller.read_strings().unwrap().unwrap();
    assert_eq!(reply[0], "error", "{reply:?}");
    assert!(
        reply.iter().any(|e| e.contains("incomplete command")),
        "{reply:?}"
    );
}

/// Review finding 9: a template that dies while a command runs: the client's message names
/// the template (key, pid, how it ended), says the command was ended and what to do; the log
/// says how the template ended too.
#[test]
fn a_template_dying_mid_command_is_named_in_the_message() {
    let _wd = wd("a_template_dying_mid_command_is_named_in_the_message");
    let pl = Pl::new("tdied");
    let mut c = pl.cmd(["wait"]);
    c.stderr(std::process::Stdio::piped());
    let mut c = Running::spawn(c);
    c.expect_pid("ready");
    let tpid = pl.server().template("dev").unwrap();
    // SAFETY: kill(2) on the test's own template.
    assert_eq!(unsafe { libc::kill(tpid as i32, libc::SIGKILL) }, 0);
    let status = c.wait();
    assert_eq!(status.code(), Some(1), "{status:?}");
    let mut err = String::new();
    std::io::Read::read_to_string(&mut c.child.stderr.take().unwrap(), &mut err).unwrap();
    for part in [
        "template for \"dev\"".to_owned(),
        format!("(pid {tpid}, killed by signal 9 (SIGKILL))"),
        "the command was ended".to_owned(),
        "Run it again".to_owned(),
    ] {
        assert!(err.contains(&part), "{part:?} in {err:?}");
    }
    assert_eq!(pl.ok(&["echo", "again"]), "again\n");
    assert!(
        pl.log()
            .contains(&format!("(pid {tpid}) died (killed by signal 9 (SIGKILL))")),
        "{}",
        pl.log()
    );
}

/// Review finding 10: commands queued behind a preload that misses its deadline get its error
/// (one deadline in all), instead of starting a second preload and waiting a second deadline.
#[test]
fn commands_queued_behind_a_timed_out_preload_get_its_error() {
    let _wd = wd("commands_queued_behind_a_timed_out_preload_get_its_error");
    let mut pl = Pl::new("queued");
    pl.set("APP_PRELOAD_TIMEOUT_MS", "1500");
    let mut gate = Gate::new(&mut pl, "dev");
    let mut first = Running::spawn(pl.cmd(["echo", "first"]));
    gate.wait_started(); // and never released
    let mut queued = pl.cmd(["echo", "queued"]);
    queued.stderr(std::process::Stdio::piped());
    let mut queued = Running::spawn(queued);
    assert!(
        wait_for_server_connections(&pl, |n| n == 2),
        "the second command waits for the preload"
    );
    assert_eq!(first.wait().code(), Some(1));
    assert_eq!(queued.wait().code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut queued.child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("did not finish preloading within 1.5s"),
        "{err:?}"
    );
    assert_eq!(gate.try_started(), None, "no second preload");
    let log = pl.log();
    assert_eq!(
        log.matches("did not finish preloading").count(),
        1,
        "one preload timed out: {log}"
    );
}

/// Re-review N5: a template that dies while idle is reaped and logged at once (the server polls
/// its pidfd): no zombie stays under the server, `status` does not show it as running, and the
/// next command starts a new one.
#[test]
fn a_template_dying_while_idle_is_reaped_and_logged_at_once() {
    let _wd = wd("a_template_dying_while_idle_is_reaped_and_logged_at_once");
    let pl = Pl::new("idledeath");
    pl.ok(&["echo", "warm"]);
    let server = pl.server().server;
    let tpid = pl.server().template("dev").unwrap();
    // SAFETY: kill(2) on the test's own template.
    assert_eq!(unsafe { libc::kill(tpid as i32, libc::SIGKILL) }, 0);
    let line = format!("template \"dev\" (pid {tpid}) died (killed by signal 9 (SIGKILL))");
    assert!(wait_until(|| pl.log().contains(&line)), "{}", pl.log());
    assert!(
        wait_until(|| zombies_under(server).is_empty()),
        "the dead template is reaped: {:?}",
        zombies_under(server)
    );
    assert_eq!(pl.server().template("dev"), None, "not shown as running");
    assert_eq!(pl.ok(&["echo", "again"]), "again\n");
    assert_ne!(pl.server().template("dev"), Some(tpid));
}

/// Issue 11, re-review: commands racing `--preloader stop` and `restart` all succeed: a
/// connection reset before the worker exists, and a server stopped between its "ready" and the
/// client's connect, are retried like any other end before the command started.
#[test]
fn commands_racing_stop_and_restart_all_succeed() {
    let _wd = wd("commands_racing_stop_and_restart_all_succeed");
    let pl = Pl::new("racestop");
    pl.ok(&["echo", "warm"]);
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let racer = s.spawn(|| {
            let mut rounds = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) && rounds < 400 {
                // Their own outcome is not the point (a restart may lose a race too).
                let _ = pl.run(&["--preloader", "restart"]);
                let _ = pl.run(&["--preloader", "stop"]);
                rounds += 1;
            }
            rounds
        });
        let mut failed = Vec::new();
        for i in 0..120 {
            let word = format!("ok{i}");
            let out = pl.run(&["echo", &word]);
            if out.status.code() != Some(0) || out.stdout != format!("{word}\n") {
                failed.push(out);
            }
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        let rounds = racer.join().unwrap();
        assert!(rounds > 0);
        assert!(
            failed.is_empty(),
            "{} of 120 failed: {failed:#?}",
            failed.len()
        );
    });
}
