//! fdserver inside a tokio service (feature `async` of this crate, fdserver's `tokio`):
//!
//! ```text
//! cargo run -p fdserver-examples --features async --example async_service
//! ```
//!
//! A helper server started from async code, called with `.await`, a call cut short by a
//! time-out (the client stays usable), a pool shared by tasks, and a crashed server the pool
//! replaces by itself.

use std::collections::BTreeSet;
use std::error::Error;
use std::time::Duration;

use fdserver::PoolOptions;

/// The helper: in a real service, whatever should not run in the service's own process (a
/// parser of untrusted input, a library that is not thread-safe, a crash-prone codec).
#[derive(Default)]
struct Helper;

#[fdserver::fdserver]
impl Helper {
    fn hello(&mut self, first_name: &str, last_name: &str) -> String {
        format!("Hello {first_name} {last_name}, how are you?")
    }

    /// Work that takes a while (safe to repeat, so marked idempotent: a pool runs it once more
    /// on another server if its server dies meanwhile).
    #[fdserver(idempotent)]
    fn slow(&mut self, millis: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(millis));
        millis
    }

    /// Which server answered, after `work_ms` of work (safe to repeat: marked idempotent).
    #[fdserver(idempotent)]
    fn whoami(&self, work_ms: u64, ctx: &mut fdserver::Context<'_>) -> u32 {
        std::thread::sleep(Duration::from_millis(work_ms));
        ctx.pid()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // One server, its async client: the handlers' own signatures, awaited.
    let mut helper = Helper.start_async().await?;
    println!("{}", helper.hello("Joe", "Dalton").await?);

    // A call cut short (here by a time-out; `select!` and dropped tasks do the same): the
    // client stays usable, and the next call gets its own reply (after the abandoned one).
    match tokio::time::timeout(Duration::from_millis(20), helper.slow(300)).await {
        Ok(_) => println!("the slow call finished in time"),
        Err(_) => println!("the slow call was cut short"),
    }
    println!("{}", helper.hello("still", "answering").await?);
    let stopped = helper.stop().await?; // never blocks the runtime
    println!("stopped: {stopped}");

    // A pool shared by tasks: each call goes to an idle server.
    let pool = HelperAsyncPool::start(PoolOptions::new(2), Helper).await?;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut pids = Vec::new();
                for _ in 0..4 {
                    pids.push(pool.whoami(5).await?);
                }
                Ok::<_, fdserver::Error>(pids)
            })
        })
        .collect();
    let mut servers = BTreeSet::new();
    for t in tasks {
        servers.extend(t.await??);
    }
    println!("8 tasks x 4 calls, answered by {} servers", servers.len());

    // A server crashes: the pool replaces it on the next use that needs it. Both servers are
    // needed at once here, so the dead one is restarted; a call that meets it dead is run
    // again (it is idempotent), on the restarted server.
    let victim = pool.status()[0].pid.expect("running");
    // SAFETY: kill with integer arguments; `victim` is one of the pool's servers.
    unsafe { libc::kill(victim as libc::pid_t, libc::SIGKILL) };
    let (a, b) = tokio::join!(pool.slow(50), pool.slow(50));
    println!("after the crash: {} and {} ms", a?, b?);
    let restarts: u64 = pool.status().iter().map(|s| s.restarts).sum();
    println!("restarts: {restarts}");
    Ok(())
}
