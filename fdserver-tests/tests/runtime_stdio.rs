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

// ---------------------------------------------------------------------------------------------
// Issue 10, items 1 and 2: std's stdio locks across the fork
// ---------------------------------------------------------------------------------------------

/// A server whose threads print: `initialize_server` starts one that prints 50 lines and then
/// reports on a channel (`wait_thread` waits for that report, up to 10 s); `join_printer` starts
/// one that prints a line and joins it.
struct Printers {
    done: Option<std::sync::mpsc::Receiver<()>>,
}

impl fdserver::Server for Printers {
    type Client = ServerHandle;

    fn initialize_server(&mut self) -> Result<(), fdserver::BoxError> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for i in 0..50 {
                // `println!` would go to the test harness's capture, which threads inherit: write
                // to the process's stdout, through the same lock.
                let _ = writeln!(std::io::stdout(), "initialize thread line {i}");
            }
            let _ = tx.send(());
        });
        self.done = Some(rx);
        Ok(())
    }

    fn handle(
        &mut self,
        ctx: &mut fdserver::Context<'_>,
        msg: fdserver::Message<'_>,
    ) -> Result<(), fdserver::RemoteError> {
        match msg.name() {
            b"wait_thread" => {
                let rx = self.done.as_ref().expect("initialized");
                rx.recv_timeout(Duration::from_secs(10))
                    .map_err(|e| fdserver::RemoteError::failed(format!("printing thread: {e}")))?;
                ctx.reply(["done"])?;
            }
            b"join_printer" => {
                std::thread::spawn(|| writeln!(std::io::stdout(), "a handler's thread prints"))
                    .join()
                    .map_err(|_| fdserver::RemoteError::failed("the printing thread panicked"))??;
                ctx.reply(["joined"])?;
            }
            other => return Err(fdserver::RemoteError::unknown_message(other)),
        }
        Ok(())
    }
}

/// Item 1: threads of a forked server print. Before the fix the server's main thread kept std's
/// stdout lock from the fork on, so the first `println!` of any other thread blocked forever:
/// `wait_thread` failed after 10 s and `join_printer` hung (ended here by the client's deadline).
#[test]
fn threads_of_a_server_print_and_a_handler_can_join_a_printing_thread() {
    let _s = serial();
    let _wd = watchdog("threads_of_a_server_print", SECS(60));
    let (code, out) = with_stdout_captured(|| {
        let started = Builder::new()
            .timeout(Some(SECS(20)))
            .start_handle(&mut Printers { done: None });
        let Ok(mut s) = started else {
            return 1;
        };
        match s.call(["wait_thread"]) {
            Ok(r) if r == ["done"] => {}
            _ => return 2,
        }
        match s.call(["join_printer"]) {
            Ok(r) if r == ["joined"] => {}
            _ => return 3,
        }
        match s.stop() {
            Ok(st) if st.how == Shutdown::Graceful => 0,
            _ => 4,
        }
    });
    assert_eq!(code, Some(0), "stdout was {out:?}");
    for i in 0..50 {
        assert!(
            out.contains(&format!("initialize thread line {i}\n")),
            "{out:?}"
        );
    }
    assert_eq!(
        out.matches("a handler's thread prints\n").count(),
        1,
        "{out:?}"
    );
}

/// Item 2: `start` does not flush stdout, so a full stdout pipe (nobody reading) does not block
/// it; the parent's unflushed partial line is not written by the server either (which would
/// block the server's exit on the same pipe). Before the fix `start` blocked in that flush.
#[test]
fn start_does_not_block_on_a_full_stdout_pipe() {
    let _s = serial();
    let _wd = watchdog("start_full_stdout_pipe", SECS(60));
    let (r, w) = pipe();
    let w_raw = w.as_raw_fd();
    let pid = fork_child(&[w_raw], move || {
        // SAFETY: dup2 onto fd 1 replaces this child's stdout with the pipe; both are open.
        if unsafe { libc::dup2(w_raw, 1) } < 0 {
            return 90;
        }
        // SAFETY: the pipe is now also fd 1; this number is ours and no longer needed.
        unsafe { libc::close(w_raw) };
        // Fill the pipe (nobody reads it until this process has exited).
        // SAFETY: fd 1 is the pipe opened above.
        let one = unsafe { std::os::fd::BorrowedFd::borrow_raw(1) };
        fdserver_tests::set_nonblocking(one, true);
        let block = [b'.'; 4096];
        // SAFETY: writes from a live buffer to fd 1, until the pipe is full (EAGAIN).
        while unsafe { libc::write(1, block.as_ptr().cast(), block.len()) } > 0 {}
        fdserver_tests::set_nonblocking(one, false);
        // Stays in std's stdout buffer (no newline): a flush would block for good.
        if std::io::stdout()
            .write_all(b"unflushed partial line")
            .is_err()
        {
            return 91;
        }
        let Ok(mut s) = start_plain() else {
            return 1;
        };
        if s.call(["echo", "x"]).ok() != Some(vec!["x".to_string()]) {
            return 2;
        }
        match s.stop() {
            Ok(st) if st.how == Shutdown::Graceful => 0,
            _ => 3,
        }
        // `_exit` without flushing: the partial line stays unwritten.
    });
    drop(w);
    let exited = fdserver_tests::wait_pid_gone(pid as u32, SECS(20));
    if !exited {
        // SAFETY: `pid` is our unreaped child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let status = wait_child(pid);
    drop(r);
    assert!(
        exited,
        "start (or the server's exit) blocked on the full stdout pipe"
    );
    assert_eq!(status.code(), Some(0), "{status}");
}

/// Item 2, the other side of the trade-off (crate docs, "Fork safety"): `start` waits while
/// another thread holds std's stdout lock (it must, so that the server gets the lock unlocked),
/// and forks as soon as the lock is released.
#[test]
fn start_waits_for_a_thread_that_holds_the_stdout_lock_and_then_forks() {
    use std::sync::mpsc::channel;
    let _s = serial();
    let _wd = watchdog("start_waits_for_stdout_lock", SECS(60));
    let (held_tx, held_rx) = channel();
    let (release_tx, release_rx) = channel::<()>();
    let holder = std::thread::spawn(move || {
        let lock = std::io::stdout().lock();
        held_tx.send(()).unwrap();
        let _ = release_rx.recv();
        drop(lock);
    });
    held_rx.recv().unwrap();
    let (tid_tx, tid_rx) = channel();
    let (done_tx, done_rx) = channel();
    let starter = std::thread::spawn(move || {
        // SAFETY: gettid cannot fail.
        tid_tx.send(unsafe { libc::gettid() }).unwrap();
        let s = start_plain();
        let _ = done_tx.send(());
        s
    });
    let tid = tid_rx.recv().unwrap();
    // Wait until the starting thread sleeps on a futex: the stdout lock.
    let syscall = format!("/proc/self/task/{tid}/syscall");
    while !std::fs::read_to_string(&syscall)
        .unwrap()
        .starts_with(&format!("{} ", libc::SYS_futex))
    {
        std::thread::yield_now();
    }
    assert!(
        done_rx.try_recv().is_err(),
        "start returned while the lock was held"
    );
    assert!(
        fdserver_tests::child_pids().is_empty(),
        "start forked while another thread held stdout's lock"
    );
    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let mut s = starter
        .join()
        .unwrap()
        .expect("start once the lock is free");
    assert_eq!(s.call(["echo", "after"]).unwrap(), ["after"]);
    assert_eq!(s.stop().unwrap().how, Shutdown::Graceful);
}
