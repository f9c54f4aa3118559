//! Issue 13, item 5 (async): the async pool shared by tasks, its supervision, and what
//! cancellation does to it; the kill-every-100-calls soak with tasks.
#![cfg(feature = "async")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fdserver::{Error, PoolError, PoolOptions, ServerState};
use fdserver_tests::{wait_pid_gone, watchdog, SECS};

#[derive(Default)]
struct Worker;

#[fdserver::fdserver]
impl Worker {
    fn tag(&self, tag: u64, ctx: &mut fdserver::Context<'_>) -> (u64, u32) {
        (tag, ctx.pid())
    }

    /// Blocks until a byte can be read from `fd` (a pipe the test holds, kept by the builder).
    fn block_on(&self, fd: i32) {
        let mut b = [0u8];
        // SAFETY: a read of one byte into a local buffer.
        unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
    }

    #[fdserver(idempotent)]
    fn die_if_idempotent(&self, pid: u32, ctx: &mut fdserver::Context<'_>) -> u32 {
        if ctx.pid() == pid {
            std::process::exit(9);
        }
        ctx.pid()
    }

    fn die_if(&self, pid: u32, ctx: &mut fdserver::Context<'_>) -> u32 {
        if ctx.pid() == pid {
            std::process::exit(9);
        }
        ctx.pid()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_share_an_async_pool() {
    let _wd = watchdog("async_pool_tasks", SECS(60));
    let pool = WorkerAsyncPool::start(PoolOptions::new(2), Worker)
        .await
        .unwrap();
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let pool = pool.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    let tag = t * 1000 + i;
                    let (back, _) = pool.tag(tag).await.unwrap();
                    assert_eq!(back, tag);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let status = pool.status();
    assert_eq!(status.iter().map(|s| s.calls).sum::<u64>(), 400);
    assert!(status.iter().all(|s| s.pid.is_some() && s.restarts == 0));
}

#[tokio::test(flavor = "current_thread")]
async fn the_async_checkout_waits_with_a_bound() {
    let _wd = watchdog("async_pool_bound", SECS(60));
    let pool = WorkerAsyncPool::start(
        PoolOptions::new(1).checkout_timeout(Some(Duration::from_millis(100))),
        Worker,
    )
    .await
    .unwrap();
    let held = fdserver::AsyncPool::get(&pool).await.unwrap();
    let e = pool.tag(1).await.unwrap_err();
    assert!(
        matches!(e, Error::Pool(PoolError::Timeout { size: 1, .. })),
        "{e}"
    );
    drop(held);
    assert_eq!(pool.tag(2).await.unwrap().0, 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_dead_server_is_replaced_and_only_idempotent_calls_are_retried() {
    let _wd = watchdog("async_pool_dead", SECS(60));
    let pool = WorkerAsyncPool::start(PoolOptions::new(2), Worker)
        .await
        .unwrap();
    let target = pool.status()[0].pid.unwrap();
    let e = pool.die_if(target).await.unwrap_err();
    assert!(matches!(e, Error::ServerExited(_)), "{e}");
    assert_eq!(pool.status()[0].state, ServerState::Down);
    // Killed between calls: replaced before a caller gets it.
    let other = pool.status()[1].pid.unwrap();
    // SAFETY: kill with integers; `other` is a pool server, our unreaped child.
    unsafe { libc::kill(other as i32, libc::SIGKILL) };
    assert!(wait_pid_gone(other, SECS(10)));
    let (_, served_by) = pool.tag(7).await.unwrap();
    assert_ne!(served_by, other);
    assert_ne!(served_by, target);
    // Idempotent: retried on another server.
    let first_idle = pool
        .status()
        .iter()
        .find(|s| s.state == ServerState::Idle)
        .and_then(|s| s.pid)
        .unwrap();
    let r = pool.die_if_idempotent(first_idle).await.unwrap();
    assert_ne!(r, first_idle);
}

/// A call cancelled while its server works: the server is replaced, not handed to the next
/// caller with an abandoned reply to wait for.
#[tokio::test(flavor = "current_thread")]
async fn a_cancelled_call_retires_its_server() {
    let _wd = watchdog("async_pool_cancel", SECS(60));
    let (rd, wr) = fdserver_tests::pipe();
    let pool = WorkerAsyncPool::start(
        PoolOptions::new(1).builder(fdserver::Builder::new().keep_fd(&rd)),
        Worker,
    )
    .await
    .unwrap();
    let busy = pool.status()[0].pid.unwrap();
    use std::os::fd::AsRawFd;
    let cut = tokio::time::timeout(Duration::ZERO, pool.block_on(rd.as_raw_fd())).await;
    assert!(cut.is_err(), "the call should still be waiting");
    assert_eq!(pool.status()[0].state, ServerState::Down);
    let (_, served_by) = pool.tag(1).await.unwrap();
    assert_ne!(served_by, busy);
    assert!(
        wait_pid_gone(busy, SECS(20)),
        "the retired server was not stopped"
    );
    drop(wr);
}

/// A checkout dropped while it starts a server: the start goes on (in a task of its own) and
/// the new server joins the pool, where the next call finds it.
#[tokio::test(flavor = "current_thread")]
async fn a_checkout_dropped_while_it_starts_a_server_gives_the_place_back() {
    let _wd = watchdog("async_pool_start_cancel", SECS(60));
    let pool = WorkerAsyncPool::start(PoolOptions::new(1), Worker)
        .await
        .unwrap();
    let first = pool.status()[0].pid.unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    assert!(wait_pid_gone(first, SECS(10)));
    // The checkout finds the server dead and starts a new one: the start forks at once and
    // then waits for the server's "ready", where it is dropped.
    let _ = tokio::time::timeout(Duration::ZERO, pool.tag(1)).await;
    let (back, pid) = pool.tag(2).await.unwrap();
    assert_eq!(back, 2);
    assert_ne!(pid, first);
    let status = &pool.status()[0];
    assert_eq!(status.restarts, 1, "{status:?}");
    assert_eq!(status.state, ServerState::Idle);
}

/// The soak of the issue, with tasks: every 100th call SIGKILLs a server of the pool (busy or
/// idle); every call gets its own reply or an error, none hangs, no zombie after.
async fn kill_soak(calls: u64) {
    let pool = WorkerAsyncPool::start(PoolOptions::new(2), Worker)
        .await
        .unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (pool, next) = (pool.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                let (mut ok, mut failed, mut pids) = (0u64, 0u64, Vec::new());
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= calls {
                        return (ok, failed, pids);
                    }
                    if n % 100 == 99 {
                        if let Some(pid) = pool.status()[(n / 100 % 2) as usize].pid {
                            // SAFETY: kill with integers; a pool server, our child.
                            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                        }
                    }
                    let tag = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    match pool.tag(tag).await {
                        Ok((back, pid)) => {
                            assert_eq!(back, tag, "call {n} got another call's reply");
                            pids.push(pid);
                            ok += 1;
                        }
                        Err(e) => {
                            assert!(e.needs_restart(), "call {n}: {e}");
                            assert!(!matches!(e, Error::TimedOut { .. }), "call {n}: {e}");
                            failed += 1;
                        }
                    }
                }
            })
        })
        .collect();
    let (mut ok, mut failed, mut all) = (0, 0, std::collections::BTreeSet::new());
    for t in tasks {
        let (o, f, pids) = t.await.unwrap();
        ok += o;
        failed += f;
        all.extend(pids);
    }
    assert_eq!(ok + failed, calls);
    let restarts: u64 = pool.status().iter().map(|s| s.restarts).sum();
    eprintln!("async kill soak: {calls} calls, {ok} ok, {failed} errors, {restarts} restarts");
    drop(pool);
    assert!(fdserver::__private::wait_background_stops(SECS(60)));
    for pid in all {
        assert!(
            !fdserver_tests::is_unreaped_child(pid),
            "server {pid} left unreaped"
        );
    }
}

/// The acceptance soak at its full size (10,000 calls, under a second): part of the normal
/// suite, so CI runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_pool_survives_a_kill_every_100_calls() {
    let _wd = watchdog("async_kill_soak", SECS(300));
    kill_soak(10_000).await;
}
