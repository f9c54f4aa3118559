//! Issue 13's rows: fdserver against itself.
//!
//! * `13a`: a typed call from async code (`client.hello(..).await` on a current-thread tokio
//!   runtime) against the same typed call from a thread (feature `async`).
//! * `13p1`, `13p2`, `13p4`: the throughput of N threads calling through a pool of N servers
//!   (N = 1, 2, 4), against the same N threads calling through a pool of 1. Each sample is the
//!   wall time of `k` calls split evenly between the N threads (each thread calls
//!   `pool.hello(..)` in a loop, the pool picking an idle server for each call); the row's
//!   ratio is time per call, pool of N over pool of 1, so the throughput the extra servers buy
//!   is its inverse (`13p1` compares a pool of 1 with itself: the noise). The target,
//!   "a pool of 2 gives at least 1.6x one server's throughput", is `13p2`, unpinned.
//! * `13t1`, `13t2`, `13t4`: the same with N tokio tasks on an N-worker runtime (2 for N = 1)
//!   and the async pool (feature `async`).
//! * `13r`: a crashed pool member, from its SIGKILL to the next successful call on it (the pool
//!   notices at the checkout, restarts it, and the call runs), against a plain start and first
//!   call of the same server. `13ra`: the same for the async pool (feature `async`), against a
//!   plain `start_async` and first call.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use fdserver::PoolOptions;

use super::{guarded, pairs, Cfg, Mode, Row};

/// The rows' server: the seed's `hello`.
pub struct Greet;

#[fdserver::fdserver]
impl Greet {
    fn hello(&mut self, first_name: &str, last_name: &str) -> (String, u32) {
        (
            format!("Hello {first_name} {last_name}, how are you?"),
            1234,
        )
    }
}

/// `--trace async-call|sync-call <n>`: row 13a's sides alone, `n` calls (for strace and
/// `perf stat`). Returns `false` for another target.
pub fn trace(what: &str, n: u64) -> bool {
    match what {
        #[cfg(feature = "async")]
        "async-call" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let mut c = Greet.start_async().await.expect("start");
                for _ in 0..n {
                    std::hint::black_box(c.hello("Joe", "Dalton").await.expect("hello"));
                }
                c.stop().await.expect("stop");
            });
            true
        }
        "sync-call" => {
            let mut c = Greet.start().expect("start");
            for _ in 0..n {
                hello(&mut c);
            }
            c.stop().expect("stop");
            true
        }
        _ => false,
    }
}

/// Runs every issue 13 row the filter wants, in every mode.
pub fn rows(cfg: &Cfg, modes: &[Mode], want: &dyn Fn(&str) -> bool, rows: &mut Vec<Row>) {
    for &m in modes {
        if want("13a") {
            guarded(cfg, "13a async vs sync call", m, || {
                rows.push(async_call(cfg, m))
            });
        }
    }
    for n in [1, 2, 4] {
        let id = format!("13p{n}");
        for &m in modes {
            if want(&id) {
                guarded(cfg, &id, m, || rows.push(pool_threads(cfg, m, &id, n)));
            }
        }
    }
    for n in [1, 2, 4] {
        let id = format!("13t{n}");
        for &m in modes {
            if want(&id) {
                guarded(cfg, &id, m, || rows.push(pool_tasks(cfg, m, &id, n)));
            }
        }
    }
    for &m in modes {
        if want("13r") {
            guarded(cfg, "13r pool restart", m, || rows.push(restart(cfg, m)));
        }
    }
    for &m in modes {
        if want("13ra") {
            guarded(cfg, "13ra async pool restart", m, || {
                rows.push(async_restart(cfg, m))
            });
        }
    }
}

fn hello(c: &mut GreetClient) {
    let (greeting, n) = c.hello("Joe", "Dalton").expect("hello");
    debug_assert_eq!(n, 1234);
    std::hint::black_box(greeting);
}

#[cfg(feature = "async")]
fn async_call(cfg: &Cfg, m: Mode) -> Row {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut async_client = rt.block_on(Greet.start_async()).expect("start async");
    let mut sync_client = Greet.start().expect("start");
    m.settle();
    let p = pairs(
        cfg,
        1 << 20,
        &mut |k| {
            rt.block_on(async {
                let t = Instant::now();
                for _ in 0..k {
                    let r = async_client.hello("Joe", "Dalton").await.expect("hello");
                    std::hint::black_box(r);
                }
                t.elapsed()
            })
        },
        &mut |k| super::timed(k, || hello(&mut sync_client)),
        cfg.pairs,
    );
    rt.block_on(async_client.stop()).expect("stop");
    sync_client.stop().expect("stop");
    Row {
        id: "13a".into(),
        what: "async typed call vs sync typed call".into(),
        pin: m.pin,
        result: Ok(p),
        target: Some((1.3, "<=1.30x")),
        extra: "current-thread runtime; raw column = the blocking client".into(),
    }
}

#[cfg(not(feature = "async"))]
fn async_call(_: &Cfg, m: Mode) -> Row {
    super::unavailable(
        "13a",
        "async typed call vs sync typed call",
        &m,
        "run with --features async",
    )
}

/// The shares of `calls` calls for `n` callers.
fn shares(calls: u64, n: usize) -> Vec<u64> {
    let n = n as u64;
    (0..n)
        .map(|i| calls / n + u64::from(i < calls % n))
        .collect()
}

/// `calls` calls split between `n` threads calling the pool `pool`; the time they took.
fn threads(pool: &GreetPool, n: usize, calls: u64) -> Duration {
    let t = Instant::now();
    std::thread::scope(|s| {
        for share in shares(calls, n) {
            s.spawn(move || {
                for _ in 0..share {
                    std::hint::black_box(pool.hello("Joe", "Dalton").expect("hello"));
                }
            });
        }
    });
    t.elapsed()
}

fn pool_threads(cfg: &Cfg, m: Mode, id: &str, n: usize) -> Row {
    let one = GreetPool::start(PoolOptions::new(1), Greet).expect("pool of 1");
    let many = GreetPool::start(PoolOptions::new(n), Greet).expect("pool");
    m.settle();
    let p = pairs(
        cfg,
        1 << 20,
        &mut |k| threads(&many, n, k),
        &mut |k| threads(&one, n, k),
        cfg.pairs,
    );
    Row {
        id: id.into(),
        what: format!("{n} threads: pool of {n} vs pool of 1 (per call)"),
        pin: m.pin,
        result: Ok(p),
        target: (n == 2 && m.pin == "no").then_some((0.625, "thr>=1.6x")),
        extra: "raw column = pool of 1; throughput gain = 1/ratio".into(),
    }
}

#[cfg(feature = "async")]
fn pool_tasks(cfg: &Cfg, m: Mode, id: &str, n: usize) -> Row {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(n.max(2))
        .enable_all()
        .build()
        .expect("runtime");
    let one: GreetAsyncPool = rt
        .block_on(GreetAsyncPool::start(PoolOptions::new(1), Greet))
        .expect("pool of 1");
    let many: GreetAsyncPool = rt
        .block_on(GreetAsyncPool::start(PoolOptions::new(n), Greet))
        .expect("pool");
    m.settle();
    let tasks = |pool: &GreetAsyncPool, calls: u64| -> Duration {
        rt.block_on(async {
            let t = Instant::now();
            let tasks: Vec<_> = shares(calls, n)
                .into_iter()
                .map(|share| {
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        for _ in 0..share {
                            std::hint::black_box(pool.hello("Joe", "Dalton").await.expect("hello"));
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
            t.elapsed()
        })
    };
    let p = pairs(
        cfg,
        1 << 20,
        &mut |k| tasks(&many, k),
        &mut |k| tasks(&one, k),
        cfg.pairs,
    );
    Row {
        id: id.into(),
        what: format!("{n} tasks: async pool of {n} vs of 1 (per call)"),
        pin: m.pin,
        result: Ok(p),
        target: (n == 2 && m.pin == "no").then_some((0.625, "thr>=1.6x")),
        extra: format!(
            "{} runtime workers; raw column = pool of 1; throughput gain = 1/ratio",
            n.max(2)
        ),
    }
}

#[cfg(not(feature = "async"))]
fn pool_tasks(_: &Cfg, m: Mode, id: &str, n: usize) -> Row {
    super::unavailable(
        id,
        &format!("{n} tasks: async pool of {n} vs of 1 (per call)"),
        &m,
        "run with --features async",
    )
}

/// Waits until process `pid` has exited (through a pidfd).
fn wait_exited(pid: u32) {
    // SAFETY: pidfd_open with integer arguments returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return; // already gone
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    assert!(fdserver_tests::poll_readable(
        fd.as_fd(),
        Some(Duration::from_secs(10))
    ));
}

fn restart(cfg: &Cfg, m: Mode) -> Row {
    let pool = GreetPool::start(PoolOptions::new(1), Greet).expect("pool");
    m.settle();
    let p = pairs(
        cfg,
        10_000,
        &mut |k| {
            let mut total = Duration::ZERO;
            for _ in 0..k {
                let pid = pool.status()[0].pid.expect("running");
                let t = Instant::now();
                // SAFETY: kill with integers; `pid` is the pool's server, our unreaped child.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                wait_exited(pid);
                std::hint::black_box(pool.hello("Joe", "Dalton").expect("hello after restart"));
                total += t.elapsed();
            }
            total
        },
        &mut |k| {
            let mut total = Duration::ZERO;
            for _ in 0..k {
                let t = Instant::now();
                let mut c = Greet.start().expect("start");
                hello(&mut c);
                total += t.elapsed();
                c.stop().expect("stop");
            }
            total
        },
        cfg.pairs,
    );
    Row {
        id: "13r".into(),
        what: "pool: SIGKILL to next good call vs start+call".into(),
        pin: m.pin,
        result: Ok(p),
        target: None,
        extra: "A includes waiting for the death (pidfd) and the pool's waitpid".into(),
    }
}

#[cfg(feature = "async")]
fn async_restart(cfg: &Cfg, m: Mode) -> Row {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pool: GreetAsyncPool = rt
        .block_on(GreetAsyncPool::start(PoolOptions::new(1), Greet))
        .expect("pool");
    m.settle();
    let p = pairs(
        cfg,
        10_000,
        &mut |k| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..k {
                    let pid = pool.status()[0].pid.expect("running");
                    let t = Instant::now();
                    // SAFETY: kill with integers; `pid` is the pool's server, our unreaped child.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                    wait_exited(pid);
                    let r = pool.hello("Joe", "Dalton").await;
                    std::hint::black_box(r.expect("hello after restart"));
                    total += t.elapsed();
                }
                total
            })
        },
        &mut |k| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..k {
                    let t = Instant::now();
                    let mut c = Greet.start_async().await.expect("start");
                    std::hint::black_box(c.hello("Joe", "Dalton").await.expect("hello"));
                    total += t.elapsed();
                    c.stop().await.expect("stop");
                }
                total
            })
        },
        cfg.pairs,
    );
    Row {
        id: "13ra".into(),
        what: "async pool: SIGKILL to next good call vs start_async+call".into(),
        pin: m.pin,
        result: Ok(p),
        target: None,
        extra: "current-thread runtime; A includes waiting for the death (pidfd)".into(),
    }
}

#[cfg(not(feature = "async"))]
fn async_restart(_: &Cfg, m: Mode) -> Row {
    super::unavailable(
        "13ra",
        "async pool: SIGKILL to next good call vs start_async+call",
        &m,
        "run with --features async",
    )
}
