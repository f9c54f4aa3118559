//! Supervising servers without pidfds (kernels before 5.3, and valgrind, which does not know
//! `pidfd_open`): `ServerHandle` then waits on a pipe that a watcher thread closes once
//! `waitid(WNOWAIT)` saw the server exit. This binary forces that fallback for every handle and
//! checks the same lifecycle guarantees as with pidfds: calls, exit detection, signals, the
//! stop escalation, reaping, and no descriptor left open.

use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use fdserver::{Builder, Error, Server, ServerHandle, Shutdown, Signal};
use fdserver_tests::{
    is_unreaped_child, open_fds, poll_readable, serial, watchdog, Probe, ProbeState, SECS,
};

fn fallback() -> std::sync::MutexGuard<'static, ()> {
    let guard = serial();
    fdserver::__private::force_exit_watch_thread(true);
    guard
}

/// Whether `fd` is a pipe (the fallback's exit descriptor) rather than a pidfd.
fn is_pipe(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero stat is a valid out-value; fstat on a live descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    st.st_mode & libc::S_IFMT == libc::S_IFIFO
}

fn start() -> ServerHandle {
    Builder::new()
        .stop_timeouts(Duration::from_millis(200), Duration::from_millis(200))
        .start_handle(&mut Probe::default())
        .expect("start")
}

#[test]
fn calls_and_a_graceful_stop_leave_no_descriptor_and_no_zombie() {
    let _s = fallback();
    let _wd = watchdog("no_pidfd_graceful", SECS(30));
    let before = open_fds();
    for i in 0..20 {
        let mut s = start();
        let pid = s.pid();
        assert!(
            !poll_readable(s.pidfd(), Some(Duration::ZERO)),
            "the exit descriptor is readable while the server runs"
        );
        assert!(is_pipe(s.pidfd()), "the fallback is not in use");
        assert_eq!(s.call(["echo", &i.to_string()]).unwrap(), [i.to_string()]);
        let st = s.stop().unwrap();
        assert_eq!((st.how, st.status.code()), (Shutdown::Graceful, Some(0)));
        assert!(!is_unreaped_child(pid));
    }
    // The watcher threads close their pipe ends before they end; the handles closed theirs.
    assert_eq!(open_fds(), before);
}

#[test]
fn a_server_that_dies_is_seen_at_once_and_reported_with_its_status() {
    let _s = fallback();
    let _wd = watchdog("no_pidfd_server_dies", SECS(30));
    let mut s = start();
    let pid = s.pid();
    let err = s.call(["exit", "7"]).unwrap_err();
    assert!(
        matches!(&err, Error::ServerExited(st) if st.code() == Some(7)),
        "{err:?}"
    );
    assert!(poll_readable(s.pidfd(), Some(Duration::ZERO)));
    let st = s.stop().unwrap();
    assert_eq!(
        (st.how, st.status.code()),
        (Shutdown::AlreadyExited, Some(7))
    );
    assert!(!is_unreaped_child(pid));
}

#[test]
fn signals_reach_the_server_and_stop_escalates_to_sigkill() {
    let _s = fallback();
    let _wd = watchdog("no_pidfd_signals", SECS(30));

    // SIGTERM through the handle ends the loop cleanly.
    let s = start();
    let pid = s.pid();
    s.signal(Signal::SIGTERM).unwrap();
    assert!(poll_readable(s.pidfd(), Some(SECS(20))), "SIGTERM ended it");
    let st = s.stop().unwrap();
    assert_eq!(
        (st.how, st.status.code()),
        (Shutdown::AlreadyExited, Some(0))
    );
    assert!(!is_unreaped_child(pid));

    // A server that ignores SIGTERM and never reads is killed.
    let mut s = start();
    let pid = s.pid();
    assert_eq!(s.call(["hang"]).unwrap(), Vec::<String>::new());
    let st = s.stop().unwrap();
    assert_eq!(st.how, Shutdown::Killed, "{st}");
    assert_eq!(st.status.signal(), Some(libc::SIGKILL));
    assert!(!is_unreaped_child(pid));
}

#[test]
fn a_dropped_handle_still_stops_and_reaps_its_server() {
    let _s = fallback();
    let _wd = watchdog("no_pidfd_drop", SECS(30));
    // The reaper that finishes dropped handles' stops keeps an eventfd: start it first.
    drop(start());
    assert!(fdserver::__private::wait_background_stops(SECS(20)));
    let before = open_fds();
    let s = start();
    let pid = s.pid();
    drop(s);
    assert!(fdserver::__private::wait_background_stops(SECS(20)));
    assert!(!is_unreaped_child(pid));
    assert_eq!(open_fds(), before);
}

#[test]
fn initialize_failure_is_reported_and_the_child_reaped() {
    let _s = fallback();
    let _wd = watchdog("no_pidfd_init_failure", SECS(30));
    let before = open_fds();
    let err = Probe(ProbeState {
        fail_init: Some("no database"),
        ..Default::default()
    })
    .start()
    .unwrap_err();
    assert!(err.to_string().contains("no database"), "{err}");
    assert_eq!(open_fds(), before);
}

#[test]
fn the_exit_descriptor_can_be_waited_on_in_an_event_loop() {
    let _s = fallback();
    let _wd = watchdog("no_pidfd_event_loop", SECS(30));
    let mut s = start();
    s.channel().write_array(["exit", "3"]).unwrap();
    assert!(poll_readable(s.pidfd().as_fd(), Some(SECS(20))));
    assert_eq!(s.try_wait().unwrap().and_then(|st| st.code()), Some(3));
}

#[test]
fn an_unrelated_fork_holding_the_watcher_pipe_does_not_delay_stop() {
    let _s = fallback();
    let _wd = watchdog("no_pidfd_fork_holds_pipe", SECS(30));
    let mut s = start();
    let pid = s.pid();
    // A plain fork of this process (a daemonising library, a prefork worker) holds a copy of
    // every descriptor, the watcher's pipe included, until we release it.
    // (It closes its copy of our end of the server's socket, so that the server still sees our
    // close as end of stream.)
    use std::os::fd::AsRawFd;
    let channel_fd = s.channel().as_raw_fd();
    let (release_r, release_w) = fdserver_tests::pipe();
    let release_w_fd = release_w.as_raw_fd();
    // SAFETY: the child only calls prctl, close, read and _exit (async-signal-safe) and never
    // returns.
    let holder = unsafe { libc::fork() };
    assert!(holder >= 0);
    if holder == 0 {
        // SAFETY: as above.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            libc::close(channel_fd);
            libc::close(release_w_fd); // else its own copy would keep the release pipe open
            let mut b = 0u8;
            libc::read(release_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            libc::_exit(0);
        }
    }
    drop(release_r);
    assert_eq!(s.call(["echo", "x"]).unwrap(), ["x"]);
    // The server exits on the close; stop must see that now, not when the holder exits.
    let st = s.stop().unwrap();
    assert_eq!((st.how, st.status.code()), (Shutdown::Graceful, Some(0)));
    assert!(!is_unreaped_child(pid));
    drop(release_w);
    assert_eq!(fdserver_tests::wait_child(holder).code(), Some(0));
}
