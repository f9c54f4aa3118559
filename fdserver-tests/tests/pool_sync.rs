//! Issue 13, item 5: pools with supervision, from threads. Callers share the pool (`Clone`,
//! `&self`); a call goes to an idle server and waits (with a bound) when all are busy; a server
//! that died, timed out or broke its connection is replaced on the next use, under the restart
//! policy; the caller whose call was in flight gets the error, unless the handler is marked
//! idempotent; `status()` reports each server's pid, calls and restarts.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fdserver::{Builder, Error, Pool, PoolError, PoolOptions, RestartPolicy, ServerState};
use fdserver_tests::{pipe, wait_pid_gone, watchdog, SECS};

/// The pool tests' server.
#[derive(Default, Clone)]
struct Worker {
    /// `initialize` fails (for the restart policy).
    fail_init: bool,
}

#[fdserver::fdserver]
impl Worker {
    #[fdserver(initialize)]
    fn init(&mut self) -> Result<(), String> {
        if self.fail_init {
            return Err("configured to fail".into());
        }
        Ok(())
    }

    /// The server's pid.
    fn pid_of(&self, ctx: &mut fdserver::Context<'_>) -> u32 {
        ctx.pid()
    }

    /// Blocks until one byte can be read from descriptor `fd` (a pipe kept by the pool's
    /// builder), then returns the server's pid: a server the test keeps busy.
    fn block_on(&self, fd: i32, ctx: &mut fdserver::Context<'_>) -> u32 {
        let mut b = [0u8];
        // SAFETY: a read of one byte into a local buffer.
        unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        ctx.pid()
    }

    /// Exits at once (no reply) if this is server `pid`, else returns this server's pid.
    #[fdserver(idempotent)]
    fn die_if_idempotent(&self, pid: u32, ctx: &mut fdserver::Context<'_>) -> u32 {
        if ctx.pid() == pid {
            std::process::exit(9);
        }
        ctx.pid()
    }

    /// The tag back, with the server's pid: a reply that names its own call.
    fn tag(&self, tag: u64, ctx: &mut fdserver::Context<'_>) -> (u64, u32) {
        (tag, ctx.pid())
    }

    /// The same, not marked idempotent.
    fn die_if(&self, pid: u32, ctx: &mut fdserver::Context<'_>) -> u32 {
        if ctx.pid() == pid {
            std::process::exit(9);
        }
        ctx.pid()
    }
}

fn pids(pool: &WorkerPool) -> Vec<Option<u32>> {
    pool.status().iter().map(|s| s.pid).collect()
}

#[test]
fn threads_share_a_pool_and_status_reports_each_server() {
    let _wd = watchdog("pool_threads_share", SECS(60));
    let pool = WorkerPool::start(PoolOptions::new(3), Worker::default()).unwrap();
    let status = pool.status();
    assert_eq!(status.len(), 3);
    assert!(status
        .iter()
        .all(|s| s.state == ServerState::Idle && s.pid.is_some()));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let pool = pool.clone();
            std::thread::spawn(move || (0..50).map(|_| pool.pid_of().unwrap()).collect::<Vec<_>>())
        })
        .collect();
    let served: Vec<u32> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert_eq!(served.len(), 300);
    let known: Vec<u32> = pids(&pool).into_iter().flatten().collect();
    assert!(
        served.iter().all(|p| known.contains(p)),
        "a call went elsewhere"
    );
    let status = pool.status();
    assert_eq!(status.iter().map(|s| s.calls).sum::<u64>(), 300);
    assert!(status.iter().all(|s| s.restarts == 0));
}

#[test]
fn a_call_waits_for_a_free_server_up_to_the_checkout_deadline() {
    let _wd = watchdog("pool_checkout_deadline", SECS(60));
    let bounded = WorkerPool::start(
        PoolOptions::new(2).checkout_timeout(Some(Duration::from_millis(200))),
        Worker::default(),
    )
    .unwrap();
    // Both servers busy (checked out here).
    let guards = (
        fdserver::Pool::get(&bounded).unwrap(),
        fdserver::Pool::get(&bounded).unwrap(),
    );
    let e = bounded.pid_of().unwrap_err();
    assert!(
        matches!(e, Error::Pool(PoolError::Timeout { size: 2, .. })),
        "{e}"
    );
    assert!(!e.needs_restart());
    drop(guards);
    assert!(bounded.pid_of().is_ok());

    // Without a deadline a caller waits, and gets the first server given back.
    let patient_pool = WorkerPool::start(
        PoolOptions::new(2).checkout_timeout(None),
        Worker::default(),
    )
    .unwrap();
    let first = fdserver::Pool::get(&patient_pool).unwrap();
    let second = fdserver::Pool::get(&patient_pool).unwrap();
    let patient = {
        let pool = patient_pool.clone();
        std::thread::spawn(move || {
            let mut guard = fdserver::Pool::get(&pool).unwrap();
            (guard.index(), guard.pid_of().unwrap())
        })
    };
    let freed = second.index();
    drop(second);
    let (index, _) = patient.join().unwrap();
    assert_eq!(index, freed);
    drop(first);
}

#[test]
fn a_server_killed_between_calls_is_replaced_before_a_caller_gets_it() {
    let _wd = watchdog("pool_killed_idle", SECS(60));
    let pool = WorkerPool::start(PoolOptions::new(1), Worker::default()).unwrap();
    let first = pool.pid_of().unwrap();
    // SAFETY: kill with integer arguments; `first` is our unreaped child, the pool's server.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    assert!(wait_pid_gone(first, SECS(10)));
    let second = pool.pid_of().expect("the pool restarts it for this call");
    assert_ne!(first, second);
    let s = &pool.status()[0];
    assert_eq!((s.pid, s.restarts, s.calls), (Some(second), 1, 2));
}

#[test]
fn a_call_in_flight_when_its_server_dies_gets_the_error_unless_idempotent() {
    let _wd = watchdog("pool_in_flight", SECS(60));
    let pool = WorkerPool::start(PoolOptions::new(2), Worker::default()).unwrap();
    // The pool hands out the first idle server: server 0.
    let target = pool.status()[0].pid.unwrap();
    let e = pool.die_if(target).unwrap_err();
    assert!(matches!(e, Error::ServerExited(_)), "{e}");
    assert!(e.needs_restart());
    // Replaced on the next use that needs it: while server 1 is idle, calls go there; with
    // server 1 taken, the next call restarts server 0.
    assert_eq!(pool.status()[0].state, ServerState::Down);
    let replaced = pool.status()[1].pid.unwrap();
    assert_eq!(pool.pid_of().unwrap(), replaced);
    let held = fdserver::Pool::get(&pool).unwrap();
    assert_eq!(held.index(), 1);
    let mut restarted = fdserver::Pool::get(&pool).unwrap();
    assert_eq!(restarted.index(), 0);
    let again = restarted.pid_of().unwrap();
    drop((held, restarted));
    assert_eq!(pool.status()[0].restarts, 1);
    assert_ne!(again, target);
    // Idempotent: the same failure is retried once, on another server, and succeeds.
    let target = pool.status()[0].pid.unwrap();
    let served_by = pool.die_if_idempotent(target).unwrap();
    assert_ne!(served_by, target);
    assert!(served_by == replaced || pool.status().iter().any(|s| s.pid == Some(served_by)));
}

#[test]
fn a_call_that_times_out_replaces_its_server() {
    let _wd = watchdog("pool_timeout", SECS(60));
    let (rd, wr) = pipe();
    let pool = WorkerPool::start(
        PoolOptions::new(1).builder(
            Builder::new()
                .keep_fd(&rd)
                .timeout(Some(Duration::from_millis(200))),
        ),
        Worker::default(),
    )
    .unwrap();
    let first = pool.status()[0].pid.unwrap();
    let e = pool.block_on(rd.as_raw_fd()).unwrap_err();
    assert!(matches!(e, Error::TimedOut { .. }), "{e}");
    let second = pool.pid_of().unwrap();
    assert_ne!(first, second, "a timed-out server must not serve again");
    drop(wr);
}

#[test]
fn restarts_back_off_and_stop_at_the_cap_with_an_error() {
    let _wd = watchdog("pool_restart_cap", SECS(60));
    let starts = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&starts);
    // The first server starts; every later one fails in `initialize`.
    let pool: WorkerPool = Pool::start_with(
        PoolOptions::new(1).restart(RestartPolicy {
            min_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            max_failures: Some(3),
        }),
        move || Worker {
            fail_init: counter.fetch_add(1, Ordering::SeqCst) > 0,
        },
    )
    .unwrap()
    .into();
    let first = pool.pid_of().unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    assert!(wait_pid_gone(first, SECS(10)));
    // Each call that needs the server tries a restart (after the back-off) and gets its error.
    let mut seen = Vec::new();
    loop {
        match pool.pid_of() {
            Err(Error::Pool(PoolError::RestartsExhausted {
                index,
                failures,
                last_error,
            })) => {
                assert_eq!((index, failures), (0, 3));
                assert!(last_error.contains("configured to fail"), "{last_error}");
                break;
            }
            Err(e) => seen.push(e.to_string()),
            Ok(pid) => panic!("served by {pid}"),
        }
    }
    assert!(
        seen.iter().all(|e| e.contains("configured to fail")),
        "{seen:?}"
    );
    assert_eq!(pool.status()[0].state, ServerState::Failed);
    // Given up: calls fail at once, without starting anything.
    let before = starts.load(Ordering::SeqCst);
    assert!(matches!(
        pool.pid_of(),
        Err(Error::Pool(PoolError::RestartsExhausted { .. }))
    ));
    assert_eq!(starts.load(Ordering::SeqCst), before);
    // Revived: the next call tries again.
    pool.revive();
    assert!(pool.pid_of().is_err());
    assert_eq!(starts.load(Ordering::SeqCst), before + 1);
}

#[test]
fn a_hand_written_server_pools_its_server_handles() {
    let _wd = watchdog("pool_handles", SECS(60));
    let pool = Pool::start(PoolOptions::new(2), fdserver_tests::Probe::default()).unwrap();
    assert_eq!(
        pool.call(|h| h.call(["echo", "a", "b"])).unwrap(),
        ["a", "b"]
    );
    // A failing call that the pool cannot know the server survived: retire it by hand.
    let mut guard = pool.get().unwrap();
    let index = guard.index();
    let pid = guard.pid();
    assert!(guard.call(["exit", "3"]).is_err());
    drop(guard);
    assert_eq!(pool.status()[index].state, ServerState::Down);
    assert!(wait_pid_gone(pid, SECS(10)));
}

/// The soak of the issue: two threads make `calls` calls through a pool of 2 servers, and every
/// 100th call SIGKILLs one of the pool's servers (busy or idle). Every call succeeds with its
/// own reply (its tag back) or returns an error to its caller; none hangs (watchdog, and the
/// default call deadline); no zombie is left once the pool is gone.
fn kill_soak(calls: u64) {
    let pool = WorkerPool::start(PoolOptions::new(2), Worker::default()).unwrap();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut all_pids = std::collections::BTreeSet::new();
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (pool, next) = (pool.clone(), Arc::clone(&next));
            std::thread::spawn(move || {
                let (mut ok, mut failed, mut pids) = (0u64, 0u64, Vec::new());
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= calls {
                        return (ok, failed, pids);
                    }
                    if n % 100 == 99 {
                        let victim = pool.status()[(n / 100 % 2) as usize].pid;
                        if let Some(pid) = victim {
                            // SAFETY: kill with integers; `pid` is a pool server, our
                            // unreaped child (the pool has not seen it die yet, or it is a
                            // zombie until the reaper reaps it).
                            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                        }
                    }
                    let tag = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    match pool.tag(tag) {
                        Ok((back, pid)) => {
                            assert_eq!(back, tag, "call {n} got another call's reply");
                            pids.push(pid);
                            ok += 1;
                        }
                        Err(e) => {
                            assert!(e.needs_restart(), "call {n}: {e}");
                            assert!(
                                !matches!(e, Error::TimedOut { .. }),
                                "call {n} hung until its deadline: {e}"
                            );
                            failed += 1;
                        }
                    }
                }
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for t in threads {
        let (o, f, pids) = t.join().unwrap();
        ok += o;
        failed += f;
        all_pids.extend(pids);
    }
    assert_eq!(ok + failed, calls);
    let restarts: u64 = pool.status().iter().map(|s| s.restarts).sum();
    assert!(
        restarts >= calls / 100 / 2,
        "{restarts} restarts for {} kills",
        calls / 100
    );
    eprintln!(
        "kill soak: {calls} calls, {ok} ok, {failed} errors, {restarts} restarts, {} servers",
        all_pids.len()
    );
    drop(pool);
    assert!(fdserver::__private::wait_background_stops(SECS(60)));
    for pid in all_pids {
        assert!(
            !fdserver_tests::is_unreaped_child(pid),
            "server {pid} left unreaped"
        );
    }
}

/// The acceptance soak at its full size (10,000 calls, under a second): part of the normal
/// suite, so CI runs it.
#[test]
fn pool_survives_a_kill_every_100_calls() {
    let _wd = watchdog("pool_kill_soak", SECS(300));
    kill_soak(10_000);
}
