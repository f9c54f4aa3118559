//! Stopping a server: the escalation (close, SIGTERM, SIGKILL, reap) as a state machine, driven
//! either by the caller ([`ServerHandle::stop`](crate::ServerHandle::stop), which blocks) or by
//! the *reaper*, one thread of fdserver's own that finishes every stop nobody waits for: a
//! dropped client, an async `stop`, a pool's retired server.
//!
//! The reaper is started on first use (from a raw `pthread_create` thread, so it carries no test
//! harness output capture), with every signal blocked, and serves every server of the process:
//! one `poll` over their exit descriptors (pidfds) and a wake-up `eventfd`, with the nearest
//! deadline as its time-out. Handing it a server costs a lock, a push and an `eventfd` write.
//! Where the system has no pidfds, each exit descriptor is the pipe of a per-server watcher
//! thread (see `sys::ExitWatch`), so that fallback keeps a thread per server.
//!
//! At exit the reaper dies with the process: servers still in their grace periods are not
//! waited for. They are not left as zombies (an orphan is reparented to init, or to the nearest
//! subreaper, which reaps it), and a forked server ends itself on the same schedule (its hang-up
//! watch saw the connection end when its client went).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Instant;

use crate::client::{Shutdown, StopOptions, Stopped};
use crate::error::Error;
use crate::sys;

/// Where a stop is: which signal comes next, and when.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// The connection is closed; SIGTERM at `until`.
    Closed { until: Instant },
    /// SIGTERM was sent; SIGKILL at `until`.
    Termed { until: Instant },
    /// SIGKILL was sent (or could not be: then the server's hang-up watch ends it); no deadline.
    Killed,
}

/// One server being stopped: its connection already closed.
pub(crate) struct Escalation {
    pid: libc::pid_t,
    exit: sys::ExitWatch,
    grace: StopOptions,
    graceful_until: Instant,
    phase: Phase,
}

impl Escalation {
    /// A stop whose connection was closed at `closed_at`.
    pub(crate) fn new(
        pid: libc::pid_t,
        exit: sys::ExitWatch,
        grace: StopOptions,
        closed_at: Instant,
    ) -> Escalation {
        let graceful_until = closed_at + grace.after_close;
        Escalation {
            pid,
            exit,
            grace,
            graceful_until,
            phase: Phase::Closed {
                until: graceful_until,
            },
        }
    }

    /// When the next signal is due (`None`: only the exit is awaited).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Closed { until } | Phase::Termed { until } => Some(until),
            Phase::Killed => None,
        }
    }

    /// Readable once the server has exited.
    pub(crate) fn exit_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.exit.fd()
    }

    /// The deadline passed: sends the next signal. A SIGTERM that fails (`EPERM`: this process
    /// may no longer signal the server) is left to the server's hang-up watch, which sends the
    /// same; a failing SIGKILL too, after a SIGCONT (allowed within a session) that wakes a
    /// stopped server.
    pub(crate) fn escalate(&mut self, now: Instant) {
        match self.phase {
            Phase::Closed { .. } => {
                let _ = self.exit.kill(libc::SIGTERM);
                self.phase = Phase::Termed {
                    until: now.max(self.graceful_until) + self.grace.after_term,
                };
            }
            Phase::Termed { .. } => self.kill_now(),
            Phase::Killed => {}
        }
    }

    /// SIGKILL at once (a failed start, or the last step of a stop).
    pub(crate) fn kill_now(&mut self) {
        if self.exit.kill(libc::SIGKILL).is_err() {
            let _ = self.exit.kill(libc::SIGCONT);
        }
        self.phase = Phase::Killed;
    }

    /// The server has exited (its exit descriptor is readable): reaps it and says how it ended.
    pub(crate) fn finish(self) -> Result<Stopped, Error> {
        let raw = sys::reap(self.pid).map_err(Error::Io)?;
        let status = ExitStatus::from_raw(raw);
        let how = match self.phase {
            // Seen only after the deadline (the waiting thread ran late): not graceful.
            Phase::Closed { .. } if Instant::now() <= self.graceful_until => Shutdown::Graceful,
            _ => how_it_ended(status),
        };
        let stopped = Stopped {
            status,
            how,
            grace: self.grace,
        };
        crate::trace::stopped(self.pid as u32, &stopped);
        Ok(stopped)
    }

    /// Drives the stop to its end on this thread, waiting on the exit descriptor.
    pub(crate) fn run_blocking(mut self) -> Result<Stopped, Error> {
        loop {
            if sys::wait_fd(self.exit.fd(), libc::POLLIN, self.deadline())? {
                return self.finish();
            }
            self.escalate(Instant::now());
        }
    }
}

/// How a server that did not exit within the first grace period ended: by SIGKILL (from `stop`
/// or its own hang-up watch), or otherwise (after SIGTERM).
pub(crate) fn how_it_ended(status: ExitStatus) -> Shutdown {
    if status.signal() == Some(libc::SIGKILL) {
        Shutdown::Killed
    } else {
        Shutdown::Terminated
    }
}

/// What to do with the outcome of a background stop (an async `stop` awaits it).
pub(crate) type OnDone = Box<dyn FnOnce(Result<Stopped, Error>) + Send>;

/// A stop in the reaper's hands.
struct Pending {
    escalation: Escalation,
    on_done: Option<OnDone>,
}

/// The reaper of one process.
struct Reaper {
    /// The process it belongs to (a forked child inherits the pointer, not the thread).
    pid: u32,
    /// Stops handed over and not yet taken by the thread.
    incoming: Mutex<Vec<Pending>>,
    /// Written to wake the thread.
    wake: OwnedFd,
    /// How many stops it has not finished, and a condition variable signalled when that drops
    /// to zero (for tests: [`wait_settled`]).
    unfinished: Mutex<usize>,
    settled: Condvar,
}

static REAPER: AtomicPtr<Reaper> = AtomicPtr::new(ptr::null_mut());

/// Hands `escalation` to the reaper, which finishes it in the background and then calls
/// `on_done`. Returns it back if the reaper cannot be started (no thread or no descriptor left):
/// the caller must then finish it itself.
pub(crate) fn stop_in_background(
    escalation: Escalation,
    on_done: Option<OnDone>,
) -> Result<(), Box<(Escalation, Option<OnDone>)>> {
    let Some(reaper) = reaper() else {
        return Err(Box::new((escalation, on_done)));
    };
    *reaper.unfinished.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    reaper
        .incoming
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Pending {
            escalation,
            on_done,
        });
    sys::write_raw(reaper.wake.as_raw_fd(), &1u64.to_ne_bytes());
    Ok(())
}

/// This process's reaper, started if need be; `None` if it cannot be.
///
/// Lock-free, so that a process forked while another thread was starting one is not left a
/// lock held by a thread it does not have: two threads that race to start the first reaper both
/// start one, and the loser's stays idle (one parked thread, once per process at most).
fn reaper() -> Option<&'static Reaper> {
    let pid = sys::getpid();
    let current = REAPER.load(Ordering::Acquire);
    // SAFETY: reapers are leaked, never freed.
    if let Some(r) = unsafe { current.as_ref() } {
        if r.pid == pid {
            return Some(r);
        }
    }
    let wake = sys::eventfd().ok()?;
    let reaper: &'static Reaper = Box::leak(Box::new(Reaper {
        pid,
        incoming: Mutex::new(Vec::new()),
        wake,
        unfinished: Mutex::new(0),
        settled: Condvar::new(),
    }));
    let old_mask = sys::set_sigmask(&sys::sigset(true));
    let spawned = crate::fork_thread::spawn_uncaptured(move || {
        std::thread::Builder::new()
            .name("fdserver reaper".into())
            .stack_size(256 * 1024)
            .spawn(move || run(reaper))
            .map(drop)
    });
    sys::set_sigmask(&old_mask);
    spawned.ok()?;
    let mine = reaper as *const Reaper as *mut Reaper;
    match REAPER.compare_exchange(current, mine, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Some(reaper),
        // Another thread installed one first: use it (if it is this process's).
        // SAFETY: as above.
        Err(other) => match unsafe { other.as_ref() } {
            Some(r) if r.pid == pid => Some(r),
            _ => None,
        },
    }
}

/// Waits until the reaper has finished every stop handed to it, or `timeout` passes. Returns
/// whether it has (for tests, through `__private`).
pub(crate) fn wait_settled(timeout: std::time::Duration) -> bool {
    let current = REAPER.load(Ordering::Acquire);
    // SAFETY: reapers are leaked, never freed.
    let Some(reaper) = (unsafe { current.as_ref() }).filter(|r| r.pid == sys::getpid()) else {
        return true;
    };
    let deadline = Instant::now() + timeout;
    let mut unfinished = reaper.unfinished.lock().unwrap_or_else(|p| p.into_inner());
    while *unfinished > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        unfinished = reaper
            .settled
            .wait_timeout(unfinished, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    true
}

/// The reaper's loop.
fn run(reaper: &'static Reaper) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    let mut exited: Vec<bool> = Vec::new();
    loop {
        pending.append(&mut reaper.incoming.lock().unwrap_or_else(|p| p.into_inner()));
        // Deadlines first: they may send signals whose effect the poll then sees.
        let now = Instant::now();
        for p in &mut pending {
            if p.escalation.deadline().is_some_and(|d| d <= now) {
                p.escalation.escalate(now);
            }
        }
        pfds.clear();
        pfds.push(libc::pollfd {
            fd: reaper.wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        pfds.extend(pending.iter().map(|p| libc::pollfd {
            fd: p.escalation.exit_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }));
        let next = pending.iter().filter_map(|p| p.escalation.deadline()).min();
        let timeout = match next {
            None => -1,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                // Round up, so as not to wake just before the deadline and spin.
                .saturating_add(1)
                .min(i32::MAX as u128) as libc::c_int,
        };
        // SAFETY: `pfds` is a valid array of pollfd of the given length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout) };
        if r < 0 {
            continue; // EINTR (every signal is blocked here, but be safe)
        }
        if pfds[0].revents != 0 {
            let mut buf = [0u8; 8];
            // SAFETY: an eventfd read of 8 bytes into a local buffer (non-blocking: it only
            // resets the counter).
            unsafe { libc::read(reaper.wake.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
        }
        // Exited servers: reap them and report. From the end, so that `swap_remove` only moves
        // entries already looked at.
        exited.clear();
        exited.extend(pfds[1..].iter().map(|p| p.revents != 0));
        for i in (0..pending.len()).rev() {
            if exited[i] {
                let p = pending.swap_remove(i);
                let outcome = p.escalation.finish();
                if let Some(on_done) = p.on_done {
                    on_done(outcome);
                }
                let mut unfinished = reaper.unfinished.lock().unwrap_or_else(|p| p.into_inner());
                *unfinished -= 1;
                if *unfinished == 0 {
                    reaper.settled.notify_all();
                }
            }
        }
    }
}

const _: () = {
    const fn is_send<T: Send>() {}
    is_send::<Pending>();
};
