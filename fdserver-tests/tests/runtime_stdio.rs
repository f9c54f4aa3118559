//! Standard output across the fork: a server's own output reaches stdout when it exits, and
//! output the parent had buffered but not yet flushed at the moment of `start` is not written a
//! second time by the server (the classic `printf`-before-`fork` duplication).
//!
//! Each of those runs in a forked child whose fd 1 is a pipe, so that what reaches "stdout" can be
//! read back. And servers started while other threads hold the stdout/stderr locks still exit.
//!
//! Servers are started with the plain `Builder::start_handle` (no test-side workaround). Every
//! test takes `serial()`; the harness prints only between tests.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

use std::time::Duration;

use fdserver::{Builder, ServerHandle, Shutdown};
use fdserver_tests::{fork_child, pipe, serial, wait_child, watchdog, BusyThreads, Probe, SECS};

fn start_plain() -> Result<ServerHandle, fdserver::Error> {
    Builder::new().start_handle(&mut Probe::default())
}

/// Runs `f` in a forked child whose stdout is a pipe; returns its exit code and everything it
/// (and its servers) wrote to stdout.
fn with_stdout_captured(f: impl FnOnce() -> i32) -> (Option<i32>, String) {
    let (r, w): (OwnedFd, OwnedFd) = pipe();
    let w_raw = w.as_raw_fd();
    let pid = fork_child(&[w_raw], move || {
        // SAFETY: dup2 onto fd 1 replaces this child's stdout with the pipe; both are open.
        if unsafe { libc::dup2(w_raw, 1) } < 0 {
            return 90;
        }
        // SAFETY: the pipe is now also fd 1; this number is ours and no longer needed.
        unsafe { libc::close(w_raw) };
        f()
    });
    drop(w);
    let mut out = String::new();
    std::fs::File::from(r).read_to_string(&mut out).unwrap();
    (wait_child(pid).code(), out)
}

#[test]
fn a_servers_own_output_is_flushed_when_it_exits() {
    let _s = serial();
    let _wd = watchdog("server_output_flushed", SECS(30));
    let (code, out) = with_stdout_captured(|| {
        let Ok(mut s) = start_plain() else {
            return 1;
        };
        // Unflushed (no newline) in the server's stdout buffer when its loop ends.
        if s.call(["print", "from the server"]).is_err() {
            return 2;
        }
        match s.stop() {
            Ok(st) if st.how == Shutdown::Graceful => 0,
            _ => 3,
        }
    });
    assert_eq!(code, Some(0));
    assert_eq!(out, "from the server");
}

#[test]
fn output_buffered_by_the_parent_before_start_is_not_written_twice() {
    let _s = serial();
    let _wd = watchdog("parent_output_not_duplicated", SECS(30));
    let (code, out) = with_stdout_captured(|| {
        let mut stdout = std::io::stdout();
        // Line-buffered: without a newline it stays in the buffer across the fork.
        if stdout.write_all(b"[parent]").is_err() {
            return 1;
        }
        let Ok(mut s) = start_plain() else {
            return 2;
        };
        if s.call(["print", "[server]"]).is_err() {
            return 3;
        }
        if s.stop().is_err() {
            return 4;
        }
        let _ = stdout.flush();
        0
    });
    assert_eq!(code, Some(0));
    assert_eq!(out.matches("[parent]").count(), 1, "stdout was {out:?}");
    assert_eq!(out.matches("[server]").count(), 1, "stdout was {out:?}");
}

#[test]
fn servers_exit_cleanly_while_other_threads_hold_the_stdout_and_stderr_locks() {
    let _s = serial();
    let _wd = watchdog("fork_safety_real_stdio", SECS(60));
    let busy = BusyThreads::start(8, true);
    for i in 0..200 {
        let mut s = Builder::new()
            .stop_timeouts(SECS(5), Duration::from_millis(200))
            .start_handle(&mut Probe::default())
            .unwrap_or_else(|e| panic!("start {i}: {e}"));
        let n = i.to_string();
        assert_eq!(s.call(["echo", &n]).unwrap(), [n]);
        let st = s.stop().unwrap();
        assert_eq!(st.how, Shutdown::Graceful, "server {i}: {st}");
    }
    assert!(busy.work() > 0);
}
