//! Signals in a forked server (issue 2, "Server lifecycle" / Acceptance): SIGTERM and SIGINT run
//! `finalize_server`, declared handlers (SIGUSR1, and SIGHUP: Passenger's bug) run on the loop
//! with `&mut self`, undeclared SIGHUP is ignored, other dispositions are reset to default, and
//! `EINTR` never surfaces.
//!
//! Every observation goes through a pipe the server writes to (kept with `Builder::keep_fd`), or a
//! following call: no sleeps.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fdserver::{
    Builder, Context, Error, Message, RemoteError, Server, ServerHandle, Shutdown, Signal,
};
use fdserver_tests::{pipe, probe_handle, read_n, watchdog, Probe, ProbeState, SECS};

/// Declares a probe server type whose `SIGNALS` are `$sigs`; `$quit` says whether its signal
/// handler also ends the loop.
macro_rules! signal_server {
    ($name:ident, [$($sig:ident),*], quit = $quit:expr) => {
        #[derive(Default)]
        struct $name(ProbeState);
        impl Server for $name {
            type Client = ServerHandle;
            const SIGNALS: &'static [Signal] = &[$(Signal::$sig),*];
            fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
                probe_handle(&mut self.0, ctx, msg)
            }
            fn handle_signal(&mut self, ctx: &mut Context<'_>, signal: Signal) {
                self.0.on_signal(signal);
                if $quit {
                    ctx.quit();
                }
            }
            fn finalize_server(&mut self) {
                self.0.on_finalize();
            }
        }
    };
}

signal_server!(Usr1Server, [SIGUSR1], quit = false);
signal_server!(HupServer, [SIGHUP], quit = false);
signal_server!(TermServer, [SIGTERM], quit = false);
signal_server!(QuitOnUsr1, [SIGUSR1], quit = true);

/// Starts `server` with a report pipe kept open in it; returns the handle and the read end.
fn start_reporting<S: Server>(make: impl FnOnce(ProbeState) -> S) -> (ServerHandle, OwnedFd) {
    let (r, w) = pipe();
    let mut server = make(ProbeState {
        report: Some(w.as_raw_fd()),
        ..Default::default()
    });
    let handle = Builder::new()
        .keep_fd(&w)
        .start_handle(&mut server)
        .expect("start");
    (handle, r)
}

fn report(r: &OwnedFd, expected: &str) {
    let got = read_n(r.as_fd(), expected.len());
    assert_eq!(String::from_utf8_lossy(&got), expected);
}

fn count(s: &mut ServerHandle) -> u32 {
    s.call(["count"]).unwrap()[0].parse().unwrap()
}

/// Writes several requests in a single `write`, so that all of them are in the server's socket
/// buffer at once.
fn write_at_once(s: &mut ServerHandle, requests: &[&[&str]]) {
    let mut bytes = Vec::new();
    for r in requests {
        fdserver::wire::encode_array(&mut bytes, r.iter()).unwrap();
    }
    let mut raw = UnixStream::from(s.channel().as_fd().try_clone_to_owned().unwrap());
    raw.write_all(&bytes).unwrap();
}

fn assert_clean_exit(s: ServerHandle) {
    let st = s.stop().unwrap();
    assert!(
        matches!(st.how, Shutdown::AlreadyExited | Shutdown::Graceful),
        "{st}"
    );
    assert_eq!(st.status.code(), Some(0), "{st}");
}

#[test]
fn sigterm_ends_the_loop_and_runs_finalize_server() {
    let _wd = watchdog("sigterm_runs_finalize_server", SECS(30));
    let (mut s, r) = start_reporting(Probe);
    assert_eq!(s.call(["echo", "up"]).unwrap(), ["up"]);
    s.signal(Signal::SIGTERM).unwrap();
    report(&r, "F");
    assert_clean_exit(s);
}

#[test]
fn sigint_ends_the_loop_and_runs_finalize_server() {
    let _wd = watchdog("sigint_runs_finalize_server", SECS(30));
    let (s, r) = start_reporting(Probe);
    s.signal(Signal::SIGINT).unwrap();
    report(&r, "F");
    assert_clean_exit(s);
}

#[test]
fn declared_sigusr1_handler_runs_on_the_loop_with_mut_self() {
    let _wd = watchdog("declared_sigusr1_handler", SECS(30));
    let (mut s, r) = start_reporting(Usr1Server);
    assert_eq!(count(&mut s), 0);
    for n in 1..=3 {
        s.signal(Signal::SIGUSR1).unwrap();
        report(&r, &format!("S{};", libc::SIGUSR1));
        // The handler mutated the server's state; the next handler sees it.
        assert_eq!(count(&mut s), n);
    }
    // SIGUSR1 did not kill it (the default action would have).
    assert_eq!(s.call(["echo", "alive"]).unwrap(), ["alive"]);
    assert_clean_exit(s);
    report(&r, "F");
}

#[test]
fn declared_sighup_handler_runs_passengers_bug_fixed() {
    let _wd = watchdog("declared_sighup_handler", SECS(30));
    let (mut s, r) = start_reporting(HupServer);
    s.signal(Signal::SIGHUP).unwrap();
    report(&r, &format!("S{};", libc::SIGHUP));
    assert_eq!(count(&mut s), 1);
    assert_clean_exit(s);
}

#[test]
fn undeclared_sighup_is_ignored() {
    let _wd = watchdog("undeclared_sighup_is_ignored", SECS(30));
    let (mut s, r) = start_reporting(Probe);
    // SIGHUP is not blocked in the server, so an ignored one is discarded when sent; had it
    // its default action, the server would be dead before the call below.
    for _ in 0..3 {
        s.signal(Signal::SIGHUP).unwrap();
        assert_eq!(s.call(["echo", "still here"]).unwrap(), ["still here"]);
    }
    assert_eq!(s.try_wait().unwrap(), None);
    assert_eq!(count(&mut s), 0);
    assert_clean_exit(s);
    report(&r, "F");
}

#[test]
fn declared_sigterm_handler_wins_over_the_default() {
    let _wd = watchdog("declared_sigterm_handler", SECS(30));
    let (mut s, r) = start_reporting(TermServer);
    s.signal(Signal::SIGTERM).unwrap();
    report(&r, &format!("S{};", libc::SIGTERM));
    assert_eq!(s.call(["echo", "kept serving"]).unwrap(), ["kept serving"]);
    assert_clean_exit(s);
    report(&r, "F");
}

#[test]
fn signal_handler_can_quit_the_loop() {
    let _wd = watchdog("signal_handler_can_quit", SECS(30));
    let (s, r) = start_reporting(QuitOnUsr1);
    s.signal(Signal::SIGUSR1).unwrap();
    report(&r, &format!("S{};F", libc::SIGUSR1));
    assert_clean_exit(s);
}

#[test]
fn other_dispositions_are_reset_to_default_in_the_server() {
    let _wd = watchdog("dispositions_reset", SECS(30));
    // The parent ignores SIGUSR2; the server must not inherit that (SIG_IGN survives fork).
    // SAFETY: changing SIGUSR2's disposition in this test process; nothing here uses SIGUSR2.
    let old = unsafe { libc::signal(libc::SIGUSR2, libc::SIG_IGN) };
    let started = Probe::default().start();
    // SAFETY: restores the disposition saved above.
    unsafe { libc::signal(libc::SIGUSR2, old) };
    let mut s = started.unwrap();
    s.signal(Signal::SIGUSR2).unwrap();
    let err = s.call(["echo"]).unwrap_err();
    assert!(
        matches!(err, Error::ServerExited(st) if st.signal() == Some(libc::SIGUSR2)),
        "{err:?}"
    );
}

#[test]
fn a_signal_during_a_handler_is_handled_once_the_handler_returns() {
    let _wd = watchdog("signal_during_a_handler", SECS(30));
    let (mut s, r) = start_reporting(Usr1Server);
    // The handler now blocks reading the next message from the channel.
    assert_eq!(s.call(["wait_for_next"]).unwrap(), ["waiting"]);
    s.signal(Signal::SIGUSR1).unwrap();
    // Never in signal context, never in the middle of the handler: the handler's read is not
    // interrupted, and it finishes normally once "go" arrives.
    s.channel().write_array(["go"]).unwrap();
    report(&r, &format!("S{};", libc::SIGUSR1));
    assert_eq!(count(&mut s), 1);
    assert_clean_exit(s);
}

#[test]
fn a_signal_that_arrived_during_a_handler_is_handled_before_the_next_message() {
    let _wd = watchdog("signal_before_next_message", SECS(30));
    let (mut s, r) = start_reporting(Usr1Server);
    assert_eq!(s.call(["wait_for_next"]).unwrap(), ["waiting"]);
    s.signal(Signal::SIGUSR1).unwrap();
    // "go" ends the blocked handler; "count" is already queued behind it. The signal arrived
    // before "count" was sent, so its handler must run first.
    write_at_once(&mut s, &[&["go"], &["count"]]);
    let mut buf = fdserver::MessageBuf::new();
    let reply = s
        .channel()
        .read_reply(&mut buf)
        .unwrap()
        .to_strings()
        .unwrap();
    assert_eq!(
        reply,
        ["ok", "1"],
        "count was answered before the pending SIGUSR1 ran"
    );
    report(&r, &format!("S{};", libc::SIGUSR1));
    assert_clean_exit(s);
}

#[test]
fn a_sigterm_that_arrived_during_a_handler_ends_the_loop_before_the_next_message() {
    let _wd = watchdog("sigterm_before_next_message", SECS(30));
    let (mut s, r) = start_reporting(Probe);
    assert_eq!(s.call(["wait_for_next"]).unwrap(), ["waiting"]);
    s.signal(Signal::SIGTERM).unwrap();
    // The handler's read is cut short by SIGTERM (issue 10, item 7), so the server may be gone
    // before these arrive (EPIPE); either way the echo must not be served.
    let mut bytes = Vec::new();
    for req in [&["go"][..], &["echo", "after SIGTERM"]] {
        fdserver::wire::encode_array(&mut bytes, req.iter()).unwrap();
    }
    let mut raw = UnixStream::from(s.channel().as_fd().try_clone_to_owned().unwrap());
    let _ = raw.write_all(&bytes);
    let mut buf = fdserver::MessageBuf::new();
    let r1 = s.channel().read_reply(&mut buf).map(|m| m.to_vec());
    assert!(
        r1.is_err(),
        "a request queued after SIGTERM was served: {r1:?}"
    );
    report(&r, "F");
    assert_clean_exit(s);
}

#[test]
fn signals_while_calling_never_surface_as_eintr() {
    let _wd = watchdog("signals_never_surface_as_eintr", SECS(30));
    extern "C" fn nothing(_: libc::c_int) {}
    // A handler without SA_RESTART makes every blocking syscall of the target thread fail with
    // EINTR; SIGURG is otherwise ignored, so stray deliveries are harmless.
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask.
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = nothing as *const () as usize;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGURG, &act, std::ptr::null_mut());
    }
    // SAFETY: pthread_self cannot fail.
    let me = unsafe { libc::pthread_self() };
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let spammer = std::thread::spawn(move || {
        let mut sent = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            // SAFETY: `me` is the test thread, alive until it sets `stop` and joins us.
            unsafe { libc::pthread_kill(me, libc::SIGURG) };
            sent += 1;
            std::thread::yield_now();
        }
        sent
    });
    let (mut s, r) = start_reporting(Usr1Server);
    let big = vec![9u8; 1 << 20];
    for i in 0..300 {
        assert_eq!(s.call(["echo", &i.to_string()]).unwrap(), [i.to_string()]);
        if i % 30 == 0 {
            s.signal(Signal::SIGUSR1).unwrap();
            report(&r, &format!("S{};", libc::SIGUSR1));
            let back = s
                .with_channel(|ch| {
                    ch.write_array(["scalar_echo"])?;
                    ch.write_scalar(&big)?;
                    let mut buf = fdserver::MessageBuf::new();
                    ch.read_reply(&mut buf)?;
                    ch.read_scalar()
                })
                .unwrap();
            assert_eq!(back.as_deref(), Some(&big[..]));
        }
    }
    assert_eq!(count(&mut s), 10);
    stop.store(true, Ordering::Relaxed);
    let sent = spammer.join().unwrap();
    assert!(sent > 0);
    assert_clean_exit(s);
}

#[test]
fn a_handler_writing_to_a_closed_pipe_gets_an_error_not_sigpipe() {
    let _wd = watchdog("handler_sigpipe", SECS(30));
    let mut s = Probe::default().start().unwrap();
    let (r, w) = pipe();
    drop(r); // nobody will ever read this pipe
    let res = s.with_channel(|ch| {
        ch.write_array(["fd_write", "into the void"])?;
        ch.send_fd(&w)?;
        let mut buf = fdserver::MessageBuf::new();
        ch.read_reply(&mut buf).map(|m| m.to_vec())
    });
    // Rust code expects EPIPE (std ignores SIGPIPE before main): the handler's `?` turns it
    // into an `io` reply carrying EPIPE, and the server keeps serving.
    let err = res.unwrap_err();
    assert_eq!(
        err.as_remote().map(|r| r.kind().clone()),
        Some(fdserver::RemoteErrorKind::Io),
        "{err:?}"
    );
    assert_eq!(std::io::Error::from(err).raw_os_error(), Some(libc::EPIPE));
    assert_eq!(s.call(["echo", "alive"]).unwrap(), ["alive"]);
    assert_clean_exit(s);
}

/// Declares SIGUSR1 and starts a thread in `initialize_server` that lives as long as the server
/// and leaves every signal unblocked; `helper_tid` answers that thread's id.
#[derive(Default)]
struct ThreadedUsr1 {
    probe: ProbeState,
    helper_tid: Option<libc::pid_t>,
}

impl Server for ThreadedUsr1 {
    type Client = ServerHandle;
    const SIGNALS: &'static [Signal] = &[Signal::SIGUSR1];
    fn initialize_server(&mut self) -> Result<(), fdserver::BoxError> {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: gettid cannot fail.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            loop {
                std::thread::park();
            }
        });
        self.helper_tid = Some(tid_rx.recv()?);
        Ok(())
    }
    fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
        if msg.name() == b"helper_tid" {
            ctx.reply([self.helper_tid.unwrap_or(0).to_string()])?;
            return Ok(());
        }
        probe_handle(&mut self.probe, ctx, msg)
    }
    fn handle_signal(&mut self, _ctx: &mut Context<'_>, signal: Signal) {
        self.probe.on_signal(signal);
    }
}

/// Sends `sig` to thread `tid` of the server only.
fn tgkill(s: &ServerHandle, tid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: tgkill with a pid and tid of a live child process's thread; no pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            s.pid() as libc::c_long,
            tid as libc::c_long,
            sig as libc::c_long,
        )
    };
    assert_eq!(rc, 0, "tgkill: {}", std::io::Error::last_os_error());
}

#[test]
fn a_signal_taken_by_another_thread_of_the_server_still_wakes_the_loop() {
    let _wd = watchdog("signal_taken_by_another_thread", SECS(30));
    let (mut s, r) = start_reporting(|probe| ThreadedUsr1 {
        probe,
        helper_tid: None,
    });
    let tid: libc::pid_t = s.call(["helper_tid"]).unwrap()[0].parse().unwrap();
    assert_ne!(tid, 0);
    // The loop now waits in poll with no message coming. Deliver SIGUSR1 to the helper thread
    // only: its recording handler runs there and must wake the loop, which then runs the
    // server's handler without any further message.
    tgkill(&s, tid, libc::SIGUSR1);
    report(&r, &format!("S{};", libc::SIGUSR1));
    assert_eq!(count(&mut s), 1, "handled exactly once");
    assert_clean_exit(s);
}

#[test]
fn every_signal_to_an_idle_server_is_handled_without_a_message() {
    // Each signal lands at a different point of the loop (just before, during or just after its
    // wait): a lost wake-up would leave the handler unrun and the report unread, and the
    // watchdog would fail the test.
    let _wd = watchdog("every_signal_to_an_idle_server", SECS(60));
    let (mut s, r) = start_reporting(Usr1Server);
    for _ in 0..500 {
        s.signal(Signal::SIGUSR1).unwrap();
        report(&r, &format!("S{};", libc::SIGUSR1));
    }
    assert_eq!(count(&mut s), 500);
    assert_clean_exit(s);
}

#[test]
fn a_signal_taken_by_another_thread_is_handled_exactly_once_while_the_loop_is_busy() {
    // The other thread forwards the signal to the loop's thread and records nothing itself:
    // recording it there too let a busy loop handle it, and then the forwarded copy, twice.
    let _wd = watchdog("signal_by_another_thread_once", SECS(60));
    let (mut s, r) = start_reporting(|probe| ThreadedUsr1 {
        probe,
        helper_tid: None,
    });
    let tid: libc::pid_t = s.call(["helper_tid"]).unwrap()[0].parse().unwrap();
    const SIGNALS: u32 = 600;
    const QUEUED: usize = 16;
    let echo: &[&str] = &["echo", "busy"];
    let mut buf = fdserver::MessageBuf::new();
    for _ in 0..SIGNALS {
        // Requests already queued keep the loop going while the signal is forwarded.
        write_at_once(&mut s, &[echo; QUEUED]);
        tgkill(&s, tid, libc::SIGUSR1);
        for _ in 0..QUEUED {
            s.channel().read_reply(&mut buf).unwrap();
        }
        // Keep the loop busy with calls until this signal's handler has reported.
        while !fdserver_tests::poll_readable(r.as_fd(), Some(std::time::Duration::ZERO)) {
            assert_eq!(s.call(["echo", "busy"]).unwrap(), ["busy"]);
        }
        report(&r, &format!("S{};", libc::SIGUSR1));
    }
    assert_eq!(count(&mut s), SIGNALS);
    assert_clean_exit(s);
}

// ---------------------------------------------------------------------------------------------
// Issue 10, item 7: SIGTERM and SIGINT end the loop in every state
// ---------------------------------------------------------------------------------------------

/// Waits (up to 10 s, on its pidfd) for the server to exit after a terminating signal; if it
/// does not, kills it so that the test fails instead of leaving it behind.
fn expect_exit_after_signal(s: ServerHandle, r: &OwnedFd, what: &str) {
    let exited = fdserver_tests::poll_readable(s.pidfd(), Some(SECS(10)));
    if !exited {
        s.signal(Signal::SIGKILL).unwrap();
    }
    assert!(exited, "{what}: the server ignored SIGTERM");
    report(r, "F"); // finalize_server ran
    assert_clean_exit(s);
}

/// Bytes this end of a UNIX socket has sent that the peer has not read yet (`SIOCOUTQ`).
fn unread_by_peer(fd: std::os::fd::BorrowedFd<'_>) -> libc::c_int {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int through a valid pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(r, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
    n
}

/// The loop has read the first bytes of a message and waits for the rest when SIGTERM comes.
/// Before the fix its blocking `recvmsg` was restarted after the signal was recorded (the
/// handler is `SA_RESTART`), and the server waited for the rest of the message for good.
#[test]
fn sigterm_ends_the_loop_in_the_middle_of_a_message() {
    let _wd = watchdog("sigterm_mid_frame", SECS(30));
    let (mut s, r) = start_reporting(Probe);
    assert_eq!(s.call(["echo", "up"]).unwrap(), ["up"]);
    // A header announcing 16 bytes, and 3 of them.
    let sock = s.channel().as_fd().try_clone_to_owned().unwrap();
    let part = b"\x00\x10ech";
    // SAFETY: a write from a live buffer to our own socket.
    assert_eq!(
        unsafe { libc::write(sock.as_raw_fd(), part.as_ptr().cast(), 5) },
        5
    );
    // Once the server has read all five bytes it is in the middle of the message.
    while unread_by_peer(sock.as_fd()) != 0 {
        std::thread::yield_now();
    }
    s.signal(Signal::SIGTERM).unwrap();
    expect_exit_after_signal(s, &r, "mid-message");
}

/// A handler blocked reading the channel (the probe's `wait_for_next`) when SIGTERM comes.
#[test]
fn sigterm_ends_the_loop_while_a_handler_waits_on_the_channel() {
    let _wd = watchdog("sigterm_handler_reading", SECS(30));
    let (mut s, r) = start_reporting(Probe);
    assert_eq!(s.call(["wait_for_next"]).unwrap(), ["waiting"]);
    s.signal(Signal::SIGTERM).unwrap();
    expect_exit_after_signal(s, &r, "handler reading");
}

/// A reply blocked because the client does not read it (4 MiB back, more than the socket
/// holds) when SIGTERM comes. Before the fix the blocking `sendmsg` went on waiting.
#[test]
fn sigterm_ends_the_loop_while_a_reply_is_blocked_on_a_client_that_does_not_read() {
    let _wd = watchdog("sigterm_reply_blocked", SECS(30));
    let (mut s, r) = start_reporting(Probe);
    let big = vec![7u8; 4 << 20];
    s.channel().write_array(["scalar_echo"]).unwrap();
    s.channel().write_scalar(&big).unwrap(); // returns once the server has read it all
                                             // The reply has begun to arrive; the rest fills the socket and blocks the server.
    assert!(fdserver_tests::poll_readable(
        s.channel().as_fd(),
        Some(SECS(10))
    ));
    s.signal(Signal::SIGTERM).unwrap();
    expect_exit_after_signal(s, &r, "reply blocked");
}

/// The same mid-message case with `serve` in this process: the loop returns
/// `LoopEnd::Signal(SIGTERM)` after `finalize_server`.
#[test]
fn sigterm_ends_serve_in_the_middle_of_a_message() {
    let _s = fdserver_tests::serial(); // the in-process loop is one per process
    let _wd = watchdog("serve_sigterm_mid_frame", SECS(30));
    let (mut peer, theirs) = fdserver::Channel::pair().unwrap();
    let (rep_r, rep_w) = pipe();
    let rep = rep_w.as_raw_fd();
    let t = std::thread::spawn(move || {
        let mut p = Probe(ProbeState {
            report: Some(rep),
            ..Default::default()
        });
        let end = fdserver::serve(&mut p, theirs);
        drop(rep_w);
        end
    });
    peer.write_array(["echo", "up"]).unwrap();
    assert_eq!(peer.read_strings().unwrap().unwrap(), ["ok", "up"]);
    let part = b"\x00\x10ech";
    // SAFETY: a write from a live buffer to our own socket.
    assert_eq!(
        unsafe { libc::write(peer.as_raw_fd(), part.as_ptr().cast(), 5) },
        5
    );
    while unread_by_peer(peer.as_fd()) != 0 {
        std::thread::yield_now();
    }
    // The loop runs (it has read those bytes), so SIGTERM goes to its recording handler.
    // SAFETY: kill on our own process.
    unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    let end = t.join().unwrap().unwrap();
    assert_eq!(end, fdserver::LoopEnd::Signal(Signal::SIGTERM));
    report(&rep_r, "F");
}

// ---------------------------------------------------------------------------------------------
// Issue 10, item 5: a server is not part of its parent's terminal job
// ---------------------------------------------------------------------------------------------

/// A server that touches its standard input, a terminal in these tests: `read_tty` reads a byte
/// from fd 0, `write_tty` writes one; both answer `ok <n>` or `errno <e>`. `pgid` answers its
/// process group.
struct TtyProbe;

impl Server for TtyProbe {
    type Client = ServerHandle;

    fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
        let mut byte = [b'x'];
        // SAFETY: read/write of one byte on fd 0 with a live buffer; getpgrp cannot fail.
        let r = unsafe {
            match msg.name() {
                b"read_tty" => libc::read(0, byte.as_mut_ptr().cast(), 1),
                b"write_tty" => libc::write(0, byte.as_ptr().cast(), 1),
                b"pgid" => libc::getpgrp() as isize,
                other => return Err(RemoteError::unknown_message(other)),
            }
        };
        let text = if r < 0 {
            format!(
                "errno {}",
                std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
            )
        } else {
            format!("ok {r}")
        };
        ctx.reply([text])?;
        Ok(())
    }
}

/// "Ctrl-C" (SIGINT to the parent's process group) in a program that handles SIGINT itself
/// leaves its servers running; a server started with `same_process_group(true)` gets it and
/// ends its loop. Before the fix every server was in the parent's group and ended.
#[test]
fn ctrl_c_to_the_parents_group_does_not_reach_its_servers_unless_asked() {
    let _wd = watchdog("ctrl_c_group", SECS(60));
    let pid = fdserver_tests::fork_child(&[], || {
        // An interactive program: its own job, SIGINT handled (here: ignored) by itself.
        // SAFETY: setpgid/signal with integer arguments, in this single-threaded child.
        unsafe {
            if libc::setpgid(0, 0) != 0 {
                return 1;
            }
            libc::signal(libc::SIGINT, libc::SIG_IGN);
        }
        let Ok(mut own) = Builder::new().start_handle(&mut TtyProbe) else {
            return 2;
        };
        let Ok(mut shared) = Builder::new()
            .same_process_group(true)
            .start_handle(&mut TtyProbe)
        else {
            return 3;
        };
        // SAFETY: getpgrp cannot fail.
        let mine = unsafe { libc::getpgrp() };
        if own.call(["pgid"]).ok() != Some(vec![format!("ok {}", own.pid())]) {
            return 4;
        }
        if shared.call(["pgid"]).ok() != Some(vec![format!("ok {mine}")]) {
            return 5;
        }
        // SAFETY: SIGINT to our own process group, as the terminal's Ctrl-C does.
        unsafe { libc::kill(0, libc::SIGINT) };
        // The server in our group ends its loop (exit 0).
        if !fdserver_tests::poll_readable(shared.pidfd(), Some(SECS(20))) {
            return 6;
        }
        match shared.stop() {
            Ok(st) if st.status.code() == Some(0) => {}
            _ => return 7,
        }
        // The one in its own group serves on.
        if own.call(["pgid"]).is_err() {
            return 8;
        }
        match own.stop() {
            Ok(st) if st.status.success() => 0,
            _ => 9,
        }
    });
    assert_eq!(fdserver_tests::wait_child(pid).code(), Some(0));
}

/// A server outside the terminal's foreground job reads from the terminal: `EIO`, not a stop
/// by SIGTTIN; and it may write to it with `tostop` set (SIGTTOU ignored). Before the fix (a
/// server in its own group with SIGTTIN at its default) the read stopped the server for good.
#[test]
fn a_server_outside_the_foreground_job_gets_eio_from_the_terminal_instead_of_stopping() {
    let _wd = watchdog("tty_background_server", SECS(60));
    let pid = fdserver_tests::fork_child(&[], || {
        // SAFETY: terminal set-up in this single-threaded child: a new session whose
        // controlling terminal is a fresh pty (its master kept open), as stdin.
        unsafe {
            if libc::setsid() < 0 {
                return 1;
            }
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            if master < 0 || libc::grantpt(master) != 0 || libc::unlockpt(master) != 0 {
                return 2;
            }
            let mut name = [0 as libc::c_char; 128];
            if libc::ptsname_r(master, name.as_mut_ptr(), name.len()) != 0 {
                return 3;
            }
            // A session leader's first terminal becomes its controlling terminal; its group
            // is the foreground job.
            let slave = libc::open(name.as_ptr(), libc::O_RDWR);
            if slave < 0 || libc::dup2(slave, 0) < 0 {
                return 4;
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return 5;
            }
            t.c_lflag |= libc::TOSTOP;
            if libc::tcsetattr(0, libc::TCSANOW, &t) != 0 {
                return 6;
            }
        }
        let Ok(mut s) = Builder::new()
            .timeout(Some(SECS(5)))
            .stop_timeouts(
                std::time::Duration::from_millis(100),
                std::time::Duration::from_millis(100),
            )
            .start_handle(&mut TtyProbe)
        else {
            return 7;
        };
        let read = s.call(["read_tty"]);
        let write = s.call(["write_tty"]);
        let _ = s.stop();
        if read.ok() != Some(vec![format!("errno {}", libc::EIO)]) {
            return 8;
        }
        if write.ok() != Some(vec!["ok 1".to_string()]) {
            return 9;
        }
        0
    });
    assert_eq!(fdserver_tests::wait_child(pid).code(), Some(0));
}
