//! Issue 13, item 4: stopping never blocks. Dropping a client returns at once; the escalation
//! (close, SIGTERM, SIGKILL, reap) is finished by fdserver's reaper thread, one for every server
//! of the process; a program that drops many clients and exits at once leaves no zombie and no
//! server running past its schedule.
//!
//! Every test here takes `serial()`: they count this process's children, and one makes this
//! process a child subreaper.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use fdserver::{Builder, ServerHandle};
use fdserver_tests::{
    child_pids, fork_child, is_unreaped_child, pipe, process_exists, serial, wait_child,
    wait_pid_gone, watchdog, Probe, SECS,
};

fn start_probe(after_close: Duration, after_term: Duration) -> ServerHandle {
    Builder::new()
        .stop_timeouts(after_close, after_term)
        .start_handle(&mut Probe::default())
        .expect("start")
}

/// A dropped client's server is stopped in the background: `drop` returns while a server
/// that ignores the hang-up and SIGTERM is still running, and the reaper later kills and reaps
/// it on the schedule.
#[test]
fn dropping_a_client_returns_before_its_server_is_stopped() {
    let _s = serial();
    let _wd = watchdog("drop_returns_at_once", SECS(60));
    let mut stuck = start_probe(SECS(2), SECS(2));
    assert!(stuck.call(["hang"]).is_ok());
    let pid = stuck.pid();
    drop(stuck);
    // It cannot have ended yet: it ignores SIGTERM, and SIGKILL is due in 4 s. Had `drop`
    // waited, it would be gone (reaped) by now.
    assert!(process_exists(pid), "drop waited for the server");
    assert!(is_unreaped_child(pid));
    assert!(
        wait_pid_gone(pid, SECS(20)),
        "the server outlived its schedule"
    );
    assert!(fdserver::__private::wait_background_stops(SECS(20)));
    assert!(!is_unreaped_child(pid), "the reaper did not reap it");
}

/// Many dropped clients at once, servers that exit at the hang-up and servers stuck in a
/// handler alike: all are reaped, by the one reaper.
#[test]
fn many_dropped_clients_are_all_reaped() {
    let _s = serial();
    let _wd = watchdog("many_dropped_clients", SECS(120));
    let clients: Vec<ServerHandle> = (0..40)
        .map(|i| {
            let mut c = start_probe(Duration::from_millis(100), Duration::from_millis(100));
            if i % 2 == 0 {
                assert!(c.call(["hang"]).is_ok());
            }
            c
        })
        .collect();
    let pids: Vec<u32> = clients.iter().map(ServerHandle::pid).collect();
    let threads_before = thread_count();
    drop(clients);
    assert!(fdserver::__private::wait_background_stops(SECS(60)));
    for pid in pids {
        assert!(!is_unreaped_child(pid), "server {pid} left unreaped");
    }
    // One reaper thread for all of them, not one per server.
    assert!(thread_count() <= threads_before + 1, "a thread per stop?");
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// The guarantee at exit: a program that drops a thousand clients and exits at once leaves no
/// zombie, and no server running past its schedule. The servers still in their grace periods
/// are orphaned when it exits; each ends itself (its hang-up watch), and whoever adopts it
/// reaps it: here this test process, made a child subreaper.
#[test]
fn a_thousand_dropped_clients_then_exit_leave_no_zombie() {
    let _s = serial();
    let _wd = watchdog("thousand_dropped_then_exit", SECS(180));
    // SAFETY: prctl with integer arguments; makes this process adopt its orphaned
    // descendants.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
    let (rd, wr) = pipe();
    let helper = fork_child(&[wr.as_raw_fd()], || {
        // SAFETY: the write end is ours in the child (kept by fork_child).
        let mut out = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(wr.as_raw_fd()) });
        let mut clients = Vec::with_capacity(1000);
        for i in 0..1000 {
            let Ok(mut c) = Builder::new()
                .stop_timeouts(Duration::from_millis(500), Duration::from_millis(500))
                .start_handle(&mut Probe::default())
            else {
                return 1;
            };
            // One in four is stuck in a handler that ignores SIGTERM.
            if i % 4 == 0 && c.call(["hang"]).is_err() {
                return 2;
            }
            if writeln!(out, "{}", c.pid()).is_err() {
                return 3;
            }
            clients.push(c);
        }
        drop(clients);
        drop(out);
        0 // and exit at once: `_exit`, with stops still in the reaper's hands
    });
    drop(wr);
    let mut text = String::new();
    std::fs::File::from(rd).read_to_string(&mut text).unwrap();
    assert!(wait_child(helper).success(), "helper failed");
    let pids: Vec<u32> = text.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(pids.len(), 1000);
    // Each one is gone, or ends within its schedule (0.5 s + 0.5 s; generous slack for a busy
    // machine), and is then reaped here.
    for &pid in &pids {
        assert!(
            wait_pid_gone(pid, SECS(60)),
            "server {pid} outlived its schedule"
        );
    }
    // Reap the adopted ones; nothing else of ours remains.
    for pid in child_pids() {
        if pids.contains(&pid) {
            wait_child(pid as libc::pid_t);
        }
    }
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) };
    let left: Vec<u32> = child_pids()
        .into_iter()
        .filter(|p| pids.contains(p))
        .collect();
    assert!(left.is_empty(), "servers left: {left:?}");
    for pid in pids {
        assert!(!process_exists(pid) || !is_unreaped_child(pid));
    }
}
