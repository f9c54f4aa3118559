//! Issue 13, items 5 and 6, pools (review of issue 13, findings 4, 5, 11 and 13): a restart done
//! by a call is bounded by the checkout deadline; servers retired for cancelled or timed-out
//! calls do not pile up (a pool of `n` runs at most `2n` processes); the status says why a
//! server was replaced; a pool can be stopped and awaited. Sync and async pools alike.
//!
//! The process counts look at this process's children whose name is a `Lingerer`'s (a forked
//! server's name is its forking thread's, `fdserver Lingerer`, cut to 15 bytes), so that the
//! servers of other test binaries' helpers do not count; the tests here run one at a time
//! (`serial()`), and the counting ones first wait for the earlier tests' servers to be stopped.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fdserver::{Builder, Error, Operation, Pool, PoolError, PoolOptions, ServerState, Shutdown};
use fdserver_tests::{child_pids, pipe, serial, wait_pid_gone, watchdog, SECS};

/// A server whose `initialize` blocks on a pipe when told to, and whose handler can block.
#[derive(Clone)]
struct Lingerer {
    /// `initialize` waits for a byte on this descriptor (`-1`: it does not).
    init_gate: i32,
}

#[fdserver::fdserver]
impl Lingerer {
    #[fdserver(initialize)]
    fn init(&mut self) {
        if self.init_gate >= 0 {
            let mut b = [0u8];
            // SAFETY: a read of one byte into a local buffer.
            unsafe { libc::read(self.init_gate, b.as_mut_ptr().cast(), 1) };
        }
    }

    fn pid_of(&self, ctx: &mut fdserver::Context<'_>) -> u32 {
        ctx.pid()
    }

    /// Blocks until a byte can be read from `fd`.
    fn block_on(&self, fd: i32) {
        let mut b = [0u8];
        // SAFETY: a read of one byte into a local buffer.
        unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
    }

    fn die(&self) {
        std::process::exit(3);
    }
}

/// Live `Lingerer` servers (and unreaped ones) of this process.
fn lingerers() -> usize {
    child_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim_end() == "fdserver Linger")
        })
        .count()
}

/// The factory of a pool whose later starts (after the first `size`) hang in `initialize` until
/// the gate's write end is closed, once `slow` is set.
fn slow_restarts(gate: i32, slow: Arc<AtomicBool>) -> impl FnMut() -> Lingerer + Send + 'static {
    move || Lingerer {
        init_gate: if slow.load(Ordering::SeqCst) {
            gate
        } else {
            -1
        },
    }
}

/// Finding 4, blocking pool: a call that restarts a server waits for its `initialize` no longer
/// than its checkout deadline, then fails with the start's time-out.
#[test]
fn a_blocking_pool_restart_is_bounded_by_the_checkout_deadline() {
    let _s = serial();
    let _wd = watchdog("pool_restart_bounded", SECS(30));
    let (rd, wr) = pipe();
    let slow = Arc::new(AtomicBool::new(false));
    let pool = LingererPool::from(
        Pool::start_with(
            PoolOptions::new(1)
                .builder(Builder::new().keep_fd(&rd))
                .checkout_timeout(Some(Duration::from_millis(300))),
            slow_restarts(rd.as_raw_fd(), slow.clone()),
        )
        .unwrap(),
    );
    let first = pool.pid_of().unwrap();
    slow.store(true, Ordering::SeqCst);
    // SAFETY: kill with integers; `first` is the pool's server, our unreaped child.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    assert!(wait_pid_gone(first, SECS(10)));
    let e = pool.pid_of().unwrap_err();
    assert!(
        matches!(
            e,
            Error::TimedOut {
                operation: Operation::Start,
                ..
            }
        ),
        "{e}"
    );
    let status = &pool.status()[0];
    assert_eq!(status.state, ServerState::Down);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("timed out")),
        "{status:?}"
    );
    drop(wr);
}

/// Finding 11: the status says what made the pool replace a server.
#[test]
fn the_status_says_why_a_server_was_replaced() {
    let _s = serial();
    let _wd = watchdog("pool_last_error", SECS(30));
    let pool = LingererPool::start(PoolOptions::new(1), Lingerer { init_gate: -1 }).unwrap();
    let e = pool.die().unwrap_err();
    assert!(matches!(e, Error::ServerExited(_)), "{e}");
    let why = pool.status()[0].last_error.clone().unwrap();
    assert!(why.contains("server exited (exit status: 3)"), "{why}");
}

/// Finding 13: `stop` ends every server, waits for each, and closes the pool.
#[test]
fn a_blocking_pool_stops_every_server_and_waits() {
    let _s = serial();
    let _wd = watchdog("pool_stop", SECS(30));
    let pool = LingererPool::start(PoolOptions::new(2), Lingerer { init_gate: -1 }).unwrap();
    let pids: Vec<u32> = pool.status().iter().map(|s| s.pid.unwrap()).collect();
    let clone = pool.clone();
    let stopped = pool.stop();
    assert_eq!(stopped.len(), 2);
    for s in &stopped {
        assert_eq!(s.as_ref().unwrap().how, Shutdown::Graceful);
    }
    for pid in pids {
        assert!(!fdserver_tests::process_exists(pid), "{pid} still there");
    }
    let e = clone.pid_of().unwrap_err();
    assert!(matches!(e, Error::Pool(PoolError::Stopped)), "{e}");
}

/// Finding 5, blocking pool: calls that time out retire their servers, which are killed at once
/// and counted until reaped: never more than twice the pool's size alive.
#[test]
fn timed_out_pool_calls_do_not_pile_up_servers() {
    let _s = serial();
    let _wd = watchdog("pool_timeouts_bounded", SECS(60));
    assert!(fdserver::__private::wait_background_stops(SECS(30)));
    assert_eq!(lingerers(), 0, "servers of earlier tests are still running");
    let (rd, wr) = pipe();
    let pool = LingererPool::start(
        PoolOptions::new(2).builder(
            Builder::new()
                .keep_fd(&rd)
                .timeout(Some(Duration::from_millis(20))),
        ),
        Lingerer { init_gate: -1 },
    )
    .unwrap();
    let mut most = 0;
    for _ in 0..40 {
        let e = pool.block_on(rd.as_raw_fd()).unwrap_err();
        assert!(matches!(e, Error::TimedOut { .. }), "{e}");
        most = most.max(lingerers());
    }
    assert!(
        most >= 1,
        "the count sees no server: the name filter is wrong"
    );
    assert!(most <= 4, "{most} servers alive for a pool of 2");
    drop(wr);
}

#[cfg(feature = "async")]
// `serial()`'s guard is held across awaits on purpose: it keeps the other tests of this binary
// (other threads) from forking `Lingerer`s while these count them; each test runs alone on its
// own current-thread runtime, so nothing on that runtime waits for the lock.
#[allow(clippy::await_holding_lock)]
mod tokio_pools {
    use super::*;

    /// Finding 4, async pool.
    #[tokio::test(flavor = "current_thread")]
    async fn an_async_pool_restart_is_bounded_by_the_checkout_deadline() {
        let _s = serial();
        let _wd = watchdog("async_pool_restart_bounded", SECS(30));
        let (rd, wr) = pipe();
        let slow = Arc::new(AtomicBool::new(false));
        let pool = LingererAsyncPool::from(
            fdserver::AsyncPool::start_with(
                PoolOptions::new(1)
                    .builder(Builder::new().keep_fd(&rd))
                    .checkout_timeout(Some(Duration::from_millis(300))),
                slow_restarts(rd.as_raw_fd(), slow.clone()),
            )
            .await
            .unwrap(),
        );
        let first = pool.pid_of().await.unwrap();
        slow.store(true, Ordering::SeqCst);
        // SAFETY: as above.
        unsafe { libc::kill(first as i32, libc::SIGKILL) };
        assert!(wait_pid_gone(first, SECS(10)));
        let e = pool.pid_of().await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::TimedOut {
                    operation: Operation::Start,
                    ..
                }
            ),
            "{e}"
        );
        drop(wr);
    }

    /// Finding 5: calls cancelled as fast as they can be, on a pool of 2 whose handler never
    /// returns: never more than 4 servers alive, and every call still gets a server in turn.
    #[tokio::test(flavor = "current_thread")]
    async fn cancelled_pool_calls_do_not_pile_up_servers() {
        let _s = serial();
        let _wd = watchdog("async_pool_cancels_bounded", SECS(60));
        assert!(fdserver::__private::wait_background_stops(SECS(30)));
        assert_eq!(lingerers(), 0, "servers of earlier tests are still running");
        let (rd, wr) = pipe();
        let pool = LingererAsyncPool::start(
            PoolOptions::new(2).builder(Builder::new().keep_fd(&rd)),
            Lingerer { init_gate: -1 },
        )
        .await
        .unwrap();
        let mut most = 0;
        let mut cancelled = 0;
        for _ in 0..100 {
            if tokio::time::timeout(Duration::from_millis(1), pool.block_on(rd.as_raw_fd()))
                .await
                .is_err()
            {
                cancelled += 1;
            }
            most = most.max(lingerers());
        }
        assert!(cancelled > 50, "only {cancelled} calls were cancelled");
        assert!(
            most >= 1,
            "the count sees no server: the name filter is wrong"
        );
        assert!(most <= 4, "{most} servers alive for a pool of 2");
        let restarts: u64 = pool.status().iter().map(|s| s.restarts).sum();
        assert!(restarts > 0);
        drop(wr);
    }

    /// Finding 13, async: `stop().await`.
    #[tokio::test(flavor = "current_thread")]
    async fn an_async_pool_stops_every_server_and_waits() {
        let _s = serial();
        let _wd = watchdog("async_pool_stop", SECS(30));
        let pool = LingererAsyncPool::start(PoolOptions::new(2), Lingerer { init_gate: -1 })
            .await
            .unwrap();
        let pids: Vec<u32> = pool.status().iter().map(|s| s.pid.unwrap()).collect();
        let stopped = fdserver::AsyncPool::stop(&pool).await;
        assert_eq!(stopped.len(), 2);
        for s in &stopped {
            assert_eq!(s.as_ref().unwrap().how, Shutdown::Graceful);
        }
        for pid in pids {
            assert!(!fdserver_tests::process_exists(pid), "{pid} still there");
        }
        let e = pool.pid_of().await.unwrap_err();
        assert!(matches!(e, Error::Pool(PoolError::Stopped)), "{e}");
    }

    /// Finding 11, async.
    #[tokio::test(flavor = "current_thread")]
    async fn the_async_status_says_why_a_server_was_replaced() {
        let _s = serial();
        let _wd = watchdog("async_pool_last_error", SECS(30));
        let pool = LingererAsyncPool::start(PoolOptions::new(1), Lingerer { init_gate: -1 })
            .await
            .unwrap();
        let e = pool.die().await.unwrap_err();
        assert!(matches!(e, Error::ServerExited(_)), "{e}");
        let why = pool.status()[0].last_error.clone().unwrap();
        assert!(why.contains("server exited (exit status: 3)"), "{why}");
    }
}
