//! The server lifecycle (issue 2, "Server lifecycle"): Passenger's AbstractServer test cases
//! against a forked server (`Server::start`), error replies, `stop` and its escalation, server
//! death and client death.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use fdserver::{
    Builder, Context, Error, Message, MessageBuf, RemoteError, RemoteErrorKind, Server,
    ServerHandle, Shutdown, Signal,
};
use fdserver_tests::{
    fork_child, pipe, pseudo_random_bytes, read_n, wait_child, wait_pid_gone, watchdog, Probe,
    ProbeState, SECS,
};

fn start() -> ServerHandle {
    Probe::default().start().expect("start")
}

fn remote_kind(e: &Error) -> &RemoteErrorKind {
    e.as_remote()
        .unwrap_or_else(|| panic!("expected an error reply, got {e:?}"))
        .kind()
}

fn read_to_eof(fd: OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    std::fs::File::from(fd).read_to_end(&mut out).unwrap();
    out
}

fn exited_by_signal(e: &Error, sig: i32) -> bool {
    matches!(e, Error::ServerExited(st) if st.signal() == Some(sig))
}

// ---------------------------------------------------------------------------------------------
// Passenger's cases against a forked server
// ---------------------------------------------------------------------------------------------

#[test]
fn round_trip_with_a_forked_server() {
    let _wd = watchdog("round_trip_with_a_forked_server", SECS(30));
    let mut s = start();
    assert_eq!(
        s.call(["echo", "hello", "world !!"]).unwrap(),
        ["hello", "world !!"]
    );
    let pid = s.call(["pid"]).unwrap();
    assert_eq!(pid, [s.pid().to_string()]);
    // SAFETY: getpid cannot fail.
    assert_ne!(s.pid(), unsafe { libc::getpid() } as u32);
    let st = s.stop().unwrap();
    assert_eq!(st.how, Shutdown::Graceful);
    assert_eq!(st.status.code(), Some(0), "a clean shutdown exits 0");
}

#[test]
fn arrays_with_spaces_only_empty_and_empty_elements_through_a_server() {
    let _wd = watchdog("arrays_through_a_server", SECS(30));
    let mut s = start();
    let cases: &[&[&str]] = &[
        &["hello world", " a b ", "  "],
        &[""],
        &["", ""],
        &["", "foo", "", "bar", ""],
        &[],
    ];
    for case in cases {
        let req: Vec<&str> = std::iter::once("echo")
            .chain(case.iter().copied())
            .collect();
        assert_eq!(s.call(&req).unwrap(), *case);
    }
    s.stop().unwrap();
}

#[test]
fn scalars_empty_and_binary_through_a_server() {
    let _wd = watchdog("scalars_through_a_server", SECS(30));
    let mut s = start();
    let payloads = [
        Vec::new(),
        pseudo_random_bytes(11, 4 << 10),
        pseudo_random_bytes(12, 32 << 10),
        pseudo_random_bytes(13, 7 << 10),
    ];
    for p in &payloads {
        let back = s
            .with_channel(|ch| {
                ch.write_array(["scalar_echo"])?;
                ch.write_scalar(p)?;
                let mut buf = MessageBuf::new();
                ch.read_reply(&mut buf)?;
                ch.read_scalar()
            })
            .unwrap();
        assert_eq!(back.as_ref(), Some(p));
    }
    s.stop().unwrap();
}

#[test]
fn scalar_over_the_servers_maximum_is_refused() {
    let _wd = watchdog("scalar_over_the_servers_maximum", SECS(30));
    let mut s = Builder::new()
        .max_scalar_size(1000)
        .start_handle(&mut Probe::default())
        .unwrap();
    let err = s
        .with_channel(|ch| {
            ch.write_array(["scalar_echo"])?;
            ch.write_scalar(&[0u8; 1001])?;
            let mut buf = MessageBuf::new();
            ch.read_reply(&mut buf)?;
            Ok(())
        })
        .unwrap_err();
    // The server refused the scalar and, its channel broken, said why in one last message
    // (issue 10, item 10: before, the connection just closed), then closed it and exited 1.
    match &err {
        Error::Remote(r) => {
            assert_eq!(r.kind(), &RemoteErrorKind::Protocol, "{r}");
            assert!(r.message().contains("exceeds the limit of 1000"), "{r}");
            assert!(r.message().contains("closes the connection"), "{r}");
        }
        other => panic!("expected the server's last word, got {other:?}"),
    }
    match s.call(["echo", "x"]) {
        Err(Error::ServerExited(st)) => assert_eq!(st.code(), Some(1), "{st}"),
        other => panic!("expected ServerExited(exit 1), got {other:?}"),
    }
    let st = s.stop().unwrap();
    assert_eq!(st.status.code(), Some(1), "broken channel: non-zero exit");
}

#[test]
fn fd_passing_to_and_from_a_server() {
    let _wd = watchdog("fd_passing_to_and_from_a_server", SECS(30));
    let mut s = start();
    // The parent passes a pipe's write end; the server writes into it.
    let (r, w) = pipe();
    s.with_channel(|ch| {
        ch.write_array(["fd_write", "written by the server"])?;
        ch.send_fd(&w)?;
        let mut buf = MessageBuf::new();
        ch.read_reply(&mut buf)?;
        Ok(())
    })
    .unwrap();
    drop(w);
    assert_eq!(read_to_eof(r), b"written by the server");

    // The server passes one back.
    let fd = s
        .with_channel(|ch| {
            ch.write_array(["fd_back", "from the server's pipe"])?;
            let mut buf = MessageBuf::new();
            ch.read_reply(&mut buf)?;
            ch.recv_fd()
        })
        .unwrap()
        .expect("a descriptor");
    assert_eq!(read_to_eof(fd), b"from the server's pipe");
    // And the server still serves.
    assert_eq!(s.call(["echo", "still"]).unwrap(), ["still"]);
    s.stop().unwrap();
}

#[test]
fn a_thousand_calls_of_3k_through_a_server() {
    let _wd = watchdog("a_thousand_calls_of_3k", SECS(30));
    let mut s = start();
    for i in 0..1000 {
        let mut arg = format!("{i}-");
        arg += &"x".repeat(3072 - arg.len());
        let back = s.call(["echo", arg.as_str()]).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0], arg);
    }
    s.stop().unwrap();
}

#[test]
fn mixed_stream_from_a_server_in_order() {
    let _wd = watchdog("mixed_stream_from_a_server", SECS(30));
    let mut s = start();
    let (array, one, fd, two) = s
        .with_channel(|ch| {
            ch.write_array(["mixed"])?;
            let mut buf = MessageBuf::new();
            ch.read_reply(&mut buf)?;
            Ok((
                ch.read_strings()?,
                ch.read_scalar()?,
                ch.recv_fd()?,
                ch.read_scalar()?,
            ))
        })
        .unwrap();
    assert_eq!(array.unwrap(), ["array"]);
    assert_eq!(one.unwrap(), b"one");
    assert_eq!(read_to_eof(fd.unwrap()), b"fd");
    assert_eq!(two.unwrap(), b"two");
    assert_eq!(s.call(["echo", "in sync"]).unwrap(), ["in sync"]);
    s.stop().unwrap();
}

#[test]
fn start_and_stop_many_times() {
    let _wd = watchdog("start_and_stop_many_times", SECS(30));
    let mut pids = Vec::new();
    for i in 0..50 {
        let mut s = start();
        assert_eq!(s.call(["echo", &i.to_string()]).unwrap(), [i.to_string()]);
        pids.push(s.pid());
        if i % 2 == 0 {
            let st = s.stop().unwrap();
            assert_eq!((st.how, st.status.code()), (Shutdown::Graceful, Some(0)));
        } else {
            drop(s);
        }
    }
    pids.sort_unstable();
    pids.dedup();
    assert!(pids.len() > 1, "each start forks a new process");
}

// ---------------------------------------------------------------------------------------------
// Server death
// ---------------------------------------------------------------------------------------------

#[test]
fn server_killed_by_a_signal_makes_the_next_call_fail_with_the_signal() {
    let _wd = watchdog("server_killed_by_a_signal", SECS(30));
    for sig in [Signal::SIGKILL, Signal::SIGUSR2, Signal::SIGALRM] {
        let mut s = start();
        assert_eq!(s.call(["echo", "alive"]).unwrap(), ["alive"]);
        s.signal(sig).unwrap();
        let err = s.call(["echo", "anyone?"]).unwrap_err();
        assert!(exited_by_signal(&err, sig as i32), "{sig:?}: {err:?}");
        assert!(err.to_string().contains("server exited"), "{err}");
        // Every later call says the same, at once.
        let err = s.call(["echo"]).unwrap_err();
        assert!(exited_by_signal(&err, sig as i32), "{err:?}");
        let err = s.with_channel(|ch| ch.write_array(["x"])).unwrap_err();
        assert!(exited_by_signal(&err, sig as i32), "{err:?}");
        let st = s.stop().unwrap();
        assert_eq!(st.how, Shutdown::AlreadyExited);
        assert_eq!(st.status.signal(), Some(sig as i32));
    }
    // Works again after a fresh start.
    let mut s = start();
    assert_eq!(s.call(["echo", "again"]).unwrap(), ["again"]);
    s.stop().unwrap();
}

#[test]
fn server_dying_in_a_call_fails_that_call_with_its_exit_status() {
    let _wd = watchdog("server_dying_in_a_call", SECS(30));
    let mut s = start();
    let err = s.call(["exit", "3"]).unwrap_err();
    match err {
        Error::ServerExited(st) => assert_eq!(st.code(), Some(3)),
        other => panic!("expected ServerExited, got {other:?}"),
    }
    assert_eq!(s.try_wait().unwrap().and_then(|st| st.code()), Some(3));
    assert_eq!(s.stop().unwrap().how, Shutdown::AlreadyExited);
}

#[test]
fn server_death_is_seen_on_the_raw_channel_too() {
    let _wd = watchdog("server_death_on_the_raw_channel", SECS(30));
    let mut s = start();
    s.signal(Signal::SIGKILL).unwrap();
    // Waiting on the pidfd: the death is observable without a call.
    assert!(fdserver_tests::poll_readable(s.pidfd(), Some(SECS(10))));
    let err = s
        .with_channel(|ch| {
            ch.write_array(["echo"])?;
            let mut buf = MessageBuf::new();
            ch.read_reply(&mut buf).map(|_| ())
        })
        .unwrap_err();
    assert!(exited_by_signal(&err, libc::SIGKILL), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Errors from handlers
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_message_is_a_typed_error_and_the_server_keeps_serving() {
    let _wd = watchdog("unknown_message", SECS(30));
    let mut s = start();
    let err = s.call(["no_such_message", "arg"]).unwrap_err();
    assert_eq!(remote_kind(&err), &RemoteErrorKind::UnknownMessage);
    assert!(err.to_string().contains("no_such_message"), "{err}");
    // The empty message has no name: also unknown, not fatal.
    let err = s.call([""; 0]).unwrap_err();
    assert_eq!(remote_kind(&err), &RemoteErrorKind::UnknownMessage);
    assert_eq!(s.call(["echo", "still here"]).unwrap(), ["still here"]);
    assert_eq!(s.stop().unwrap().status.code(), Some(0));
}

#[test]
fn malformed_request_is_a_protocol_error_reply_and_the_server_keeps_serving() {
    let _wd = watchdog("malformed_request", SECS(30));
    let mut s = start();
    let dup = s.channel().as_fd().try_clone_to_owned().unwrap();
    let mut raw = std::os::unix::net::UnixStream::from(dup);
    raw.write_all(b"\x00\x05echo!").unwrap(); // no terminating NUL
    let mut buf = MessageBuf::new();
    let err = s.channel().read_reply(&mut buf).unwrap_err();
    assert_eq!(remote_kind(&err), &RemoteErrorKind::Protocol);
    drop(raw);
    assert_eq!(s.call(["echo", "ok"]).unwrap(), ["ok"]);
    s.stop().unwrap();
}

#[test]
fn handler_error_and_panic_are_typed_errors_and_the_server_keeps_serving() {
    // A server of this test panics: std's panic hook holds a process-wide lock while it prints,
    // and a server forked while a test of this process panics in-process (those hold the same
    // lock) would inherit it held and hang at its own panic.
    let _s = fdserver_tests::serial();
    let _wd = watchdog("handler_error_and_panic", SECS(30));
    let mut s = start();
    let err = s.call(["fail", "disk full"]).unwrap_err();
    assert_eq!(remote_kind(&err), &RemoteErrorKind::Failed);
    assert_eq!(err.as_remote().unwrap().message(), "disk full");
    assert_eq!(s.call(["echo", "1"]).unwrap(), ["1"]);

    let err = s.call(["panic"]).unwrap_err();
    assert_eq!(remote_kind(&err), &RemoteErrorKind::Panicked);
    let text = err.as_remote().unwrap().message();
    assert!(text.contains("probe panics on request"), "{text}");
    assert!(text.contains("panic"), "{text}");
    assert_eq!(s.call(["echo", "2"]).unwrap(), ["2"]);

    // Bad arguments reported by a handler (`?` on a missing element).
    let err = s.call(["fail"]).unwrap_err();
    assert!(err.as_remote().is_some(), "{err:?}");
    assert_eq!(s.call(["echo", "3"]).unwrap(), ["3"]);
    assert_eq!(s.stop().unwrap().status.code(), Some(0));
}

#[test]
fn panic_after_a_partial_reply_ends_the_server_with_101() {
    // A server of this test panics: std's panic hook holds a process-wide lock while it prints,
    // and a server forked while a test of this process panics in-process (those hold the same
    // lock) would inherit it held and hang at its own panic.
    let _s = fdserver_tests::serial();
    let _wd = watchdog("panic_after_a_partial_reply", SECS(30));
    let mut s = start();
    // The reply had already been written when the handler panicked: the client got it, and
    // then the stream cannot be trusted, so the server closes it and exits.
    assert_eq!(s.call(["partial_panic"]).unwrap(), ["partial"]);
    let err = s.call(["echo", "x"]).unwrap_err();
    match err {
        Error::ServerExited(st) => assert_eq!(st.code(), Some(101)),
        other => panic!("expected ServerExited(101), got {other:?}"),
    }
    let st = s.stop().unwrap();
    assert_eq!(st.how, Shutdown::AlreadyExited);
    assert_eq!(st.status.code(), Some(101));
}

/// Issue 10, item 3: a handler that began its reply and then returned `Err` must not produce a
/// second reply. Before the fix the error reply followed the first one, and the next call read
/// it as its own answer (`failed: failed after replying` for an `echo`).
#[test]
fn an_error_after_a_partial_reply_closes_the_connection_instead_of_a_second_reply() {
    let _wd = watchdog("error_after_partial_reply", SECS(30));
    let mut s = start();
    assert_eq!(s.call(["reply_then_fail"]).unwrap(), ["partial"]);
    match s.call(["echo", "mine"]) {
        Err(Error::ServerExited(st)) => assert_eq!(st.code(), Some(1), "{st}"),
        other => panic!("expected ServerExited(exit 1), got {other:?}"),
    }
    let st = s.stop().unwrap();
    assert_eq!(st.how, Shutdown::AlreadyExited);
    assert_eq!(st.status.code(), Some(1));
}

/// Review F6: the handler's error text of an `Err` after a partial reply (and the note after a
/// panic part-way through a reply) reaches the forked server's stderr, once, naming the server
/// type and pid. Before the fix it was printed nowhere: the client only learns "exit status: 1".
#[test]
fn a_failure_after_a_partial_reply_is_written_to_the_servers_stderr() {
    // A server of this test panics: std's panic hook holds a process-wide lock while it prints,
    // and a server forked while a test of this process panics in-process (those hold the same
    // lock) would inherit it held and hang at its own panic.
    let _s = fdserver_tests::serial();
    let _wd = watchdog("failure_after_partial_reply_stderr", SECS(30));
    let (r, w) = pipe();
    let w_raw = w.as_raw_fd();
    let client = fork_child(&[w_raw], move || {
        // SAFETY: dup2 onto fd 2 replaces this child's stderr (and its servers') with the pipe.
        if unsafe { libc::dup2(w_raw, 2) } < 0 {
            return 90;
        }
        // SAFETY: the pipe is now also fd 2; this number is ours and no longer needed.
        unsafe { libc::close(w_raw) };
        let mut pids = String::new();
        for request in ["reply_then_fail", "partial_panic"] {
            let Ok(mut s) = Probe::default().start() else {
                return 1;
            };
            pids.push_str(&format!("pid={};", s.pid()));
            if s.call([request]).is_err() || s.call(["echo", "x"]).is_ok() {
                return 2;
            }
            if s.stop().is_err() {
                return 3;
            }
        }
        // The pids, for the test to look for, after everything the servers wrote.
        fdserver_tests::write_raw(2, pids.as_bytes());
        0
    });
    drop(w);
    let out = String::from_utf8_lossy(&read_to_eof(r)).into_owned();
    assert_eq!(wait_child(client).code(), Some(0), "{out}");
    let pids: Vec<&str> = out
        .split("pid=")
        .skip(1)
        .map(|p| p.trim_end_matches(';'))
        .collect();
    assert_eq!(pids.len(), 2, "{out}");
    let late = format!("fdserver fdserver_tests::Probe (pid {}): ", pids[0]);
    assert_eq!(out.matches(&late).count(), 1, "{out}");
    let line = out.split(&late).nth(1).unwrap().lines().next().unwrap();
    assert!(line.contains("\"reply_then_fail\""), "{line}");
    assert!(line.contains("failed after replying"), "{line}");
    assert!(line.contains("after it had begun its reply"), "{line}");
    let panicked = format!("fdserver fdserver_tests::Probe (pid {}): ", pids[1]);
    assert_eq!(out.matches(&panicked).count(), 1, "{out}");
    assert!(
        out.contains("a handler panicked after it had begun its reply"),
        "{out}"
    );
}

/// The same through `serve`: the loop ends with `ChannelFailed` naming the handler, and the peer
/// sees end of stream right after the first reply.
#[test]
fn serve_ends_with_channel_failed_when_a_handler_fails_after_replying() {
    let _s = fdserver_tests::serial(); // the in-process loop is one per process
    let _wd = watchdog("serve_error_after_partial_reply", SECS(30));
    let (mut peer, theirs) = fdserver::Channel::pair().unwrap();
    let t = std::thread::spawn(move || fdserver::serve(&mut Probe::default(), theirs));
    peer.write_array(["reply_then_fail"]).unwrap();
    let mut buf = MessageBuf::new();
    assert_eq!(
        peer.read_reply(&mut buf).unwrap().to_strings().unwrap(),
        ["ok", "partial"]
    );
    assert!(matches!(
        peer.read_reply(&mut buf),
        Err(Error::Disconnected)
    ));
    match t.join().unwrap().unwrap() {
        fdserver::LoopEnd::ChannelFailed(why) => {
            assert!(why.contains("\"reply_then_fail\""), "{why}");
            assert!(why.contains("failed after replying"), "{why}");
        }
        other => panic!("expected ChannelFailed, got {other:?}"),
    }
}

#[test]
fn initialize_server_error_is_returned_by_start() {
    // A server of this test panics: std's panic hook holds a process-wide lock while it prints,
    // and a server forked while a test of this process panics in-process (those hold the same
    // lock) would inherit it held and hang at its own panic.
    let _s = fdserver_tests::serial();
    let _wd = watchdog("initialize_server_error", SECS(30));
    let mut p = Probe(ProbeState {
        fail_init: Some("no database"),
        ..Default::default()
    });
    let err = p.start().unwrap_err();
    let r = err
        .as_remote()
        .unwrap_or_else(|| panic!("expected Remote, got {err:?}"));
    assert_eq!(r.kind(), &RemoteErrorKind::Initialize);
    assert!(r.message().contains("no database"), "{r}");

    struct PanicsInInit;
    impl Server for PanicsInInit {
        type Client = ServerHandle;
        fn handle(&mut self, _: &mut Context<'_>, _: Message<'_>) -> Result<(), RemoteError> {
            Ok(())
        }
        fn initialize_server(&mut self) -> Result<(), fdserver::BoxError> {
            panic!("init exploded")
        }
    }
    let err = PanicsInInit.start().unwrap_err();
    let r = err.as_remote().expect("Remote");
    assert_eq!(r.kind(), &RemoteErrorKind::Initialize);
    assert!(r.message().contains("init exploded"), "{r}");
}

#[test]
fn before_fork_runs_in_the_parent() {
    let _wd = watchdog("before_fork_runs_in_the_parent", SECS(30));
    struct Hooks {
        before_fork_pid: u32,
    }
    impl Server for Hooks {
        type Client = ServerHandle;
        fn handle(&mut self, ctx: &mut Context<'_>, _: Message<'_>) -> Result<(), RemoteError> {
            ctx.reply([self.before_fork_pid.to_string()])?;
            Ok(())
        }
        fn before_fork(&mut self) {
            // SAFETY: getpid cannot fail.
            self.before_fork_pid = unsafe { libc::getpid() } as u32;
        }
    }
    let mut h = Hooks { before_fork_pid: 0 };
    let mut s = h.start().unwrap();
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() } as u32;
    assert_eq!(
        h.before_fork_pid, me,
        "ran in the parent, on the parent's value"
    );
    assert_eq!(
        s.call(["x"]).unwrap(),
        [me.to_string()],
        "and before the fork"
    );
    s.stop().unwrap();
}

#[test]
fn quit_ends_the_loop_and_stop_reports_a_clean_exit() {
    let _wd = watchdog("quit_ends_the_loop", SECS(30));
    let (r, w) = pipe();
    let mut p = Probe(ProbeState {
        report: Some(w.as_raw_fd()),
        ..Default::default()
    });
    let mut s = Builder::new().keep_fd(&w).start_handle(&mut p).unwrap();
    drop(w);
    assert_eq!(s.call(["quit"]).unwrap(), Vec::<String>::new());
    // finalize_server ran after the loop ended.
    assert_eq!(read_to_eof(r), b"F");
    let st = s.stop().unwrap();
    assert!(
        matches!(st.how, Shutdown::AlreadyExited | Shutdown::Graceful),
        "{st}"
    );
    assert_eq!(st.status.code(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// stop
// ---------------------------------------------------------------------------------------------

#[test]
fn stop_kills_a_server_that_ignores_sigterm_and_never_reads() {
    let _wd = watchdog("stop_kills_a_stuck_server", SECS(30));
    let mut s = Builder::new()
        .stop_timeouts(Duration::from_millis(100), Duration::from_millis(100))
        .start_handle(&mut Probe::default())
        .unwrap();
    assert_eq!(s.call(["hang"]).unwrap(), Vec::<String>::new());
    let pid = s.pid();
    let st = s.stop().unwrap();
    assert_eq!(st.how, Shutdown::Killed, "{st}");
    assert_eq!(st.status.signal(), Some(libc::SIGKILL));
    assert!(!fdserver_tests::is_unreaped_child(pid));
    assert!(st.to_string().contains("SIGKILL"), "{st}");
}

#[test]
fn stop_ends_the_connection_even_when_another_process_holds_a_copy_of_our_end() {
    let _wd = watchdog("stop_shuts_down_every_copy", SECS(30));
    let (r, w) = pipe();
    let mut p = Probe(ProbeState {
        report: Some(w.as_raw_fd()),
        ..Default::default()
    });
    let mut s = Builder::new()
        .keep_fd(&w)
        .stop_timeouts(SECS(20), SECS(20))
        .start_handle(&mut p)
        .unwrap();
    drop(w);
    // Another copy of our end (as a forked worker would hold): `stop` shuts the connection down
    // (issue 10, item 6), so the server sees end of stream anyway and exits by itself.
    let extra = s.channel().as_fd().try_clone_to_owned().unwrap();
    let st = s.stop().unwrap();
    assert_eq!(st.how, Shutdown::Graceful, "{st}");
    assert_eq!(st.status.code(), Some(0));
    assert_eq!(read_to_eof(r), b"F", "finalize_server ran");
    drop(extra);
}

#[test]
fn stop_terminates_a_server_whose_handler_returns_on_sigterm() {
    let _wd = watchdog("stop_terminates", SECS(30));
    let (r, w) = pipe();
    let mut p = Probe(ProbeState {
        report: Some(w.as_raw_fd()),
        ..Default::default()
    });
    let mut s = Builder::new()
        .keep_fd(&w)
        .stop_timeouts(Duration::from_millis(100), SECS(20))
        .start_handle(&mut p)
        .unwrap();
    drop(w);
    // The handler waits in pause(2): closing the connection does not end it, SIGTERM does
    // (pause returns once the signal's recording handler ran), and the loop then ends cleanly.
    assert_eq!(s.call(["pause"]).unwrap(), ["pausing"]);
    let st = s.stop().unwrap();
    assert_eq!(st.how, Shutdown::Terminated, "{st}");
    assert_eq!(st.status.code(), Some(0), "SIGTERM is a clean exit");
    assert_eq!(read_to_eof(r), b"F", "finalize_server ran");
}

#[test]
fn drop_stops_the_server() {
    let _wd = watchdog("drop_stops_the_server", SECS(30));
    let (r, w) = pipe();
    let mut p = Probe(ProbeState {
        report: Some(w.as_raw_fd()),
        ..Default::default()
    });
    let s = Builder::new().keep_fd(&w).start_handle(&mut p).unwrap();
    drop(w);
    let pidfd = s.pidfd().try_clone_to_owned().unwrap();
    drop(s);
    // The drop returns at once (issue 13); the server exits on the hang-up, having run its
    // finalize hook (which writes "F" and then the pipe's end closes), and is reaped by the
    // reaper.
    assert_eq!(read_to_eof(r), b"F");
    assert!(fdserver_tests::poll_readable(pidfd.as_fd(), Some(SECS(20))));
    assert!(fdserver::__private::wait_background_stops(SECS(20)));
}

// ---------------------------------------------------------------------------------------------
// Client death
// ---------------------------------------------------------------------------------------------

#[test]
fn client_death_makes_the_server_exit() {
    let _wd = watchdog("client_death_makes_the_server_exit", SECS(30));
    // An intermediate process starts a server, reports its pid, and is killed without stopping
    // it. The server is not our child: wait for it with a pidfd.
    let (r, w) = pipe();
    let w_raw = w.as_raw_fd();
    let client = fork_child(&[w_raw], move || {
        let Ok(server) = Probe::default().start() else {
            return 1;
        };
        fdserver_tests::write_raw(w_raw, &server.pid().to_le_bytes());
        std::mem::forget(server); // no stop, no drop: the process just dies
                                  // SAFETY: kill/getpid on ourselves: the intermediate client dies by SIGKILL.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        2
    });
    drop(w);
    let pid = u32::from_le_bytes(read_n(r.as_fd(), 4).try_into().unwrap());
    let st = wait_child(client);
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st}");
    assert!(
        wait_pid_gone(pid, SECS(20)),
        "server {pid} outlived its client"
    );
}

#[test]
fn client_death_in_the_middle_of_a_call_makes_the_server_exit() {
    let _wd = watchdog("client_death_mid_call", SECS(30));
    let (r, w) = pipe();
    let w_raw = w.as_raw_fd();
    let client = fork_child(&[w_raw], move || {
        let Ok(mut server) = Probe::default().start() else {
            return 1;
        };
        // The server's handler is now blocked reading the channel for the next message.
        if server.call(["wait_for_next"]).is_err() {
            return 3;
        }
        fdserver_tests::write_raw(w_raw, &server.pid().to_le_bytes());
        std::mem::forget(server);
        0 // _exit(0) without stopping
    });
    drop(w);
    let pid = u32::from_le_bytes(read_n(r.as_fd(), 4).try_into().unwrap());
    assert_eq!(wait_child(client).code(), Some(0));
    assert!(
        wait_pid_gone(pid, SECS(20)),
        "server {pid} outlived its client"
    );
}

/// Reads the little-endian pids a forked test process wrote to `r` (until end of stream).
fn read_pids(r: OwnedFd) -> Vec<u32> {
    read_to_eof(r)
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Waits up to 20 s for each pid to be gone; kills (and reports) those still there, so that a
/// failing test leaves nothing running.
fn assert_all_gone(pids: &[u32], what: &str) {
    let stuck: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&pid| !wait_pid_gone(pid, SECS(20)))
        .collect();
    for &pid in &stuck {
        // SAFETY: kill takes integers; these are servers this test started (root may kill them).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(
        stuck.is_empty(),
        "{what}: servers {stuck:?} outlived their client"
    );
}

/// Issue 10, item 6: the parent is SIGKILLed while its server is stuck in a handler that ignores
/// SIGTERM and never returns. The server's hang-up watch ends it, within the grace periods
/// (here 0.2 s + 0.2 s) of the hang-up. Before the fix it lived forever.
#[test]
fn a_server_stuck_in_a_handler_ends_when_its_parent_is_sigkilled() {
    let _wd = watchdog("stuck_server_parent_killed", SECS(60));
    let (r, w) = pipe();
    let w_raw = w.as_raw_fd();
    let client = fork_child(&[w_raw], move || {
        let Ok(mut server) = Builder::new()
            .stop_timeouts(Duration::from_millis(200), Duration::from_millis(200))
            .start_handle(&mut Probe::default())
        else {
            return 1;
        };
        fdserver_tests::write_raw(w_raw, &server.pid().to_le_bytes());
        if server.call(["hang"]).is_err() {
            return 2;
        }
        std::mem::forget(server);
        // SAFETY: this intermediate client dies by SIGKILL, without stopping its server.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        3
    });
    drop(w);
    let pids = read_pids(r);
    let st = wait_child(client);
    assert_all_gone(&pids, "parent SIGKILLed");
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{st}");
}

/// Issue 10, item 6: after the parent drops privileges it may no longer signal its (root)
/// servers (`EPERM`). `stop` and a drop still end and reap a server stuck in a handler that
/// ignores SIGTERM: the connection's end sets off the server's own hang-up watch. Before the fix
/// `stop` failed with `EPERM`, having consumed the handle, and the server stayed.
#[test]
fn stop_and_drop_after_a_privilege_drop_still_end_and_reap_the_server() {
    let _wd = watchdog("stop_after_privilege_drop", SECS(60));
    let (r, w) = pipe();
    let w_raw = w.as_raw_fd();
    let client = fork_child(&[w_raw], move || {
        let start = || {
            Builder::new()
                .stop_timeouts(Duration::from_millis(200), Duration::from_millis(200))
                .start_handle(&mut Probe::default())
        };
        let (Ok(mut stopped), Ok(mut dropped)) = (start(), start()) else {
            return 1;
        };
        for s in [&stopped, &dropped] {
            fdserver_tests::write_raw(w_raw, &s.pid().to_le_bytes());
        }
        if stopped.call(["hang"]).is_err() || dropped.call(["hang"]).is_err() {
            return 2;
        }
        // SAFETY: raw credential system calls in this single-threaded process.
        unsafe {
            if libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534) != 0
                || libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) != 0
            {
                return 3;
            }
        }
        if stopped.signal(Signal::SIGTERM).is_ok() {
            return 4; // the premise: we may not signal it any more
        }
        let (spid, dpid) = (stopped.pid(), dropped.pid());
        match stopped.stop() {
            Ok(st) if st.how == Shutdown::Killed && st.status.signal() == Some(libc::SIGKILL) => {}
            Ok(_) => return 5,
            Err(_) => return 6,
        }
        drop(dropped);
        // Stopped in the background (issue 13): its hang-up watch kills it, the reaper reaps it.
        if !fdserver::__private::wait_background_stops(Duration::from_secs(20)) {
            return 8;
        }
        if fdserver_tests::is_unreaped_child(spid) || fdserver_tests::is_unreaped_child(dpid) {
            return 7;
        }
        0
    });
    drop(w);
    let pids = read_pids(r);
    let st = wait_child(client);
    assert_all_gone(&pids, "stop after a privilege drop");
    assert_eq!(st.code(), Some(0), "{st}");
}

/// `PR_SET_PDEATHSIG` fires when the *thread* that forked exits: the runtime must not use it, and
/// a server started from a short-lived thread serves on after that thread has ended.
#[test]
fn a_server_started_from_a_short_lived_thread_outlives_the_thread() {
    let _wd = watchdog("server_from_short_lived_thread", SECS(30));
    let mut s = std::thread::spawn(start).join().unwrap();
    assert_eq!(s.call(["echo", "still here"]).unwrap(), ["still here"]);
    assert_eq!(s.stop().unwrap().how, Shutdown::Graceful);
}

// ---------------------------------------------------------------------------------------------
// Deadlines on calls
// ---------------------------------------------------------------------------------------------

#[test]
fn call_timeout_fails_instead_of_hanging_on_a_wedged_server() {
    let _wd = watchdog("call_timeout", SECS(30));
    let mut s = Builder::new()
        .timeout(Some(Duration::from_millis(100)))
        .stop_timeouts(Duration::from_millis(50), Duration::from_millis(50))
        .start_handle(&mut Probe::default())
        .unwrap();
    assert_eq!(s.call(["echo", "quick"]).unwrap(), ["quick"]);
    assert_eq!(s.call(["hang"]).unwrap(), Vec::<String>::new());
    let err = s.call(["echo", "stuck"]).unwrap_err();
    assert!(matches!(err, Error::TimedOut { .. }), "{err:?}");
    assert_eq!(s.stop().unwrap().how, Shutdown::Killed);
}

/// With SIGCHLD ignored the kernel would reap the server itself and its status would be lost:
/// `start` refuses with a clear error instead of failing later with ECHILD; with the default
/// disposition restored, servers work again.
#[test]
fn start_refuses_when_the_parent_ignores_sigchld() {
    let _wd = watchdog("start_refuses_when_the_parent_ignores_sigchld", SECS(30));
    // Ignoring SIGCHLD is process-wide: do it in a (single-threaded) child process.
    let pid = fork_child(&[], || {
        // SAFETY: setting SIGCHLD's disposition in this single-threaded child.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
        match Probe::default().start() {
            Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::InvalidInput => {}
            _ => return 1,
        }
        // SAFETY: as above.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
        let Ok(mut s) = Probe::default().start() else {
            return 2;
        };
        let _ = s.signal(Signal::SIGKILL);
        match s.call(["echo"]) {
            Err(Error::ServerExited(_)) => 0,
            _ => 3,
        }
    });
    let st = wait_child(pid);
    assert_eq!(st.code(), Some(0), "{st}");
}

#[test]
fn a_second_serve_in_the_process_is_refused_while_one_runs() {
    // Caught signals and the loop's wait are process-wide: one in-process loop at a time.
    let _s = fdserver_tests::serial(); // the in-process loop is one per process
    let _wd = watchdog("second_serve_refused", SECS(30));
    let (mut client, server_end) = fdserver::Channel::pair().unwrap();
    let first = std::thread::spawn(move || fdserver::serve(&mut Probe::default(), server_end));
    // Once it answers, the first loop runs.
    client.write_array(["echo", "x"]).unwrap();
    let mut buf = MessageBuf::new();
    assert_eq!(
        client.read_reply(&mut buf).unwrap().to_strings().unwrap(),
        ["ok", "x"]
    );
    let (_c2, s2) = fdserver::Channel::pair().unwrap();
    let err = fdserver::serve(&mut Probe::default(), s2).unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");
    // The refusal did not disturb the running loop.
    client.write_array(["echo", "y"]).unwrap();
    assert_eq!(
        client.read_reply(&mut buf).unwrap().to_strings().unwrap(),
        ["ok", "y"]
    );
    drop(client);
    assert!(matches!(
        first.join().unwrap(),
        Ok(fdserver::LoopEnd::Disconnected)
    ));
    // Once it has ended, a new loop may run.
    let (c3, s3) = fdserver::Channel::pair().unwrap();
    drop(c3);
    assert!(matches!(
        fdserver::serve(&mut Probe::default(), s3),
        Ok(fdserver::LoopEnd::Disconnected)
    ));
}

/// A server whose `initialize_server` panics.
struct PanicsInInit;

impl Server for PanicsInInit {
    type Client = ServerHandle;
    fn initialize_server(&mut self) -> Result<(), fdserver::BoxError> {
        panic!("initialize_server panics on purpose");
    }
    fn handle(&mut self, _: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
        Err(RemoteError::unknown_message(msg.name()))
    }
}

#[test]
fn a_panic_inside_serve_gives_the_process_back_its_loop_and_signals() {
    let _s = fdserver_tests::serial(); // the in-process loop is one per process
    let _wd = watchdog("panic_inside_serve", SECS(30));
    let (_client, server_end) = fdserver::Channel::pair().unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        fdserver::serve(&mut PanicsInInit, server_end)
    }));
    assert!(r.is_err(), "the hook's panic propagates");
    // SIGTERM is back to its default disposition (serve had caught it).
    // SAFETY: querying a disposition with a null new action and a valid out-pointer.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::sigaction(libc::SIGTERM, std::ptr::null(), &mut old) },
        0
    );
    assert_eq!(old.sa_sigaction, libc::SIG_DFL);
    // And a new loop may run.
    let (c2, s2) = fdserver::Channel::pair().unwrap();
    drop(c2);
    assert!(matches!(
        fdserver::serve(&mut Probe::default(), s2),
        Ok(fdserver::LoopEnd::Disconnected)
    ));
}

// ---------------------------------------------------------------------------------------------
// Where the server runs
// ---------------------------------------------------------------------------------------------

/// The CPUs a process or thread (`0`: the calling thread) may run on.
fn affinity_of(pid: libc::pid_t) -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is an empty set; sched_getaffinity fills at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer and size describe `set`.
    let r =
        unsafe { libc::sched_getaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    assert_eq!(
        r,
        0,
        "sched_getaffinity({pid}): {}",
        std::io::Error::last_os_error()
    );
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads one bit of the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect()
}

/// Pins the calling thread to `cpu`.
fn pin_this_thread(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is an empty set; CPU_SET sets one bit of it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the pointer and size describe `set`.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    assert_eq!(
        r,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

/// A server forked by fdserver's fork thread must not escape the confinement of the thread that
/// started it: a thread that set `no_new_privs` and a seccomp filter on itself alone (no
/// `TSYNC`) gets a server with both, though the fork thread of its type was created by an
/// unconfined thread (it then forks on the calling thread).
#[test]
fn a_server_started_by_a_confined_thread_is_as_confined() {
    let _wd = watchdog("a_server_started_by_a_confined_thread", SECS(30));
    fn status_of(pid: u32, field: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    }
    // The fork thread of this server type is created here, by an unconfined thread.
    let first = start();
    assert_eq!(status_of(first.pid(), "Seccomp:"), "0");
    first.stop().unwrap();
    let confined = std::thread::spawn(|| {
        // An allow-everything filter: enough to be seen, harmless to the test process.
        let mut allow = [libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        }];
        let prog = libc::sock_fprog {
            len: 1,
            filter: allow.as_mut_ptr(),
        };
        // SAFETY: prctl on this thread only; `prog` and its filter outlive the call.
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            assert_eq!(
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog
                ),
                0
            );
        }
        start()
    })
    .join()
    .unwrap();
    assert_eq!(status_of(confined.pid(), "NoNewPrivs:"), "1");
    assert_eq!(status_of(confined.pid(), "Seccomp:"), "2");
    confined.stop().unwrap();
    // An unconfined caller still gets an unconfined server.
    let last = start();
    assert_eq!(status_of(last.pid(), "Seccomp:"), "0");
    last.stop().unwrap();
}

/// Issue 16 (found by the benches after issue 13's fork thread): a server is forked by a thread
/// of fdserver's own, but runs where the thread that called `start` may run, as a server forked
/// by that thread would: a caller pinned to one CPU gets its server on that CPU, and the next
/// caller's pinning is followed too (the same fork thread serves both).
#[test]
fn a_server_runs_where_the_thread_that_started_it_may_run() {
    let _wd = watchdog("a_server_runs_where_its_starter_may_run", SECS(30));
    // The fork thread of this server type is created here, by an unpinned thread.
    let first = start();
    let cpus = affinity_of(0);
    assert_eq!(affinity_of(first.pid() as libc::pid_t), cpus);
    first.stop().unwrap();
    for &cpu in [cpus[0], *cpus.last().unwrap()].iter() {
        let server = std::thread::spawn(move || {
            pin_this_thread(cpu);
            start()
        })
        .join()
        .unwrap();
        assert_eq!(
            affinity_of(server.pid() as libc::pid_t),
            [cpu],
            "a server started by a thread pinned to CPU {cpu}"
        );
        server.stop().unwrap();
    }
    // And an unpinned caller gets an unpinned server again.
    let last = start();
    assert_eq!(affinity_of(last.pid() as libc::pid_t), cpus);
    last.stop().unwrap();
}
