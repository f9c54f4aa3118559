//! [`AsyncPool`]: the pool for tokio tasks, on the same state machine as [`Pool`](crate::Pool).

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::handle::AsyncServerHandle;
use crate::error::Error;
use crate::pool::{CallFailure, Core, PoolError, PoolOptions, Retirement, ServerStatus, Step};
use crate::server::Server;

/// The client of a server fdserver started, for tokio: an [`AsyncServerHandle`], or the async
/// typed client `#[fdserver]` generates (`MyServerAsyncClient`). What an [`AsyncPool`] keeps.
pub trait AsyncClient: From<AsyncServerHandle> + Send + 'static {
    /// The handle of the server.
    fn handle(&self) -> &AsyncServerHandle;
    /// The handle of the server, mutably.
    fn handle_mut(&mut self) -> &mut AsyncServerHandle;
}

impl AsyncClient for AsyncServerHandle {
    fn handle(&self) -> &AsyncServerHandle {
        self
    }

    fn handle_mut(&mut self) -> &mut AsyncServerHandle {
        self
    }
}

type StartFuture<C> = Pin<Box<dyn Future<Output = Result<C, Error>> + Send>>;
/// Forks a server (at once) and returns the wait for its `initialize`, bounded by the deadline.
type AsyncStarter<C> = Box<dyn FnMut(Option<Instant>) -> StartFuture<C> + Send>;

/// A pool of servers that tokio tasks share: [`Pool`](crate::Pool)'s behaviour (a call gets an
/// idle server, waits with a bound when all are busy, a failed server is replaced on the next
/// use that needs it, under the [`RestartPolicy`](crate::RestartPolicy)), with every wait
/// through the runtime, except the fork itself: starts and restarts fork inline (see
/// [`Builder::start_async`](crate::Builder::start_async) for what that costs) and wait for
/// the server's `initialize` asynchronously, up to the checkout deadline (see
/// [`PoolOptions::checkout_timeout`](crate::PoolOptions::checkout_timeout)).
///
/// `Clone`, `Send` and `Sync`. `#[fdserver]` servers get a typed one, `MyServerAsyncPool`, whose
/// methods are the handlers' (`pool.hello("Joe", "Dalton").await`). Every future here may be
/// dropped at any `.await`: a checkout dropped while it waits takes nothing; one dropped while
/// it starts a server leaves that server to be stopped in the background and its place to the
/// next call; a call dropped while its server works has that server replaced: the server is
/// killed at once (nobody will read its reply) and a new one started for the next call that
/// needs it. Retired servers are counted until they are reaped, and while there are as many
/// as the pool's size no replacement starts (callers wait, up to their checkout deadline), so a
/// pool of `n` never runs more than `2n` processes however fast its calls are cancelled.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), fdserver::Error> {
/// use fdserver::{AsyncPool, Context, Message, PoolOptions, RemoteError, Server, ServerHandle};
///
/// struct Echo;
/// impl Server for Echo {
///     type Client = ServerHandle;
///     fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
///         ctx.reply(msg.args())?;
///         Ok(())
///     }
/// }
///
/// let pool: AsyncPool<fdserver::AsyncServerHandle> = AsyncPool::start(PoolOptions::new(2), Echo).await?;
/// let mut server = pool.get().await?;
/// assert_eq!(server.call(["echo", "hi"]).await?, ["hi"]);
/// # Ok(())
/// # }
/// ```
pub struct AsyncPool<C> {
    shared: Arc<Shared<C>>,
}

struct Shared<C> {
    core: Mutex<Core<C>>,
    changed: Notify,
    /// Checkouts (and stops) waiting on `changed`: a give-back with nobody waiting wakes
    /// nobody, and takes no lock of `Notify`'s.
    waiting: AtomicUsize,
    starter: tokio::sync::Mutex<AsyncStarter<C>>,
    checkout_timeout: Option<Duration>,
}

impl<C> Shared<C> {
    /// Wakes the waiting checkouts, if any. (A waiter counts itself before it looks at the
    /// state, and every change is made before this is called, so none is missed.)
    fn wake(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core<C>> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts a waiting checkout while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<C> Clone for AsyncPool<C> {
    fn clone(&self) -> Self {
        AsyncPool {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C> fmt::Debug for AsyncPool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncPool").finish_non_exhaustive()
    }
}

impl<C: AsyncClient> AsyncPool<C> {
    /// Starts a pool of `options.size()` servers, each forked from `server` (kept by the pool;
    /// see [`Pool::start`](crate::Pool::start)). Fails with the first start that fails.
    pub async fn start<S>(options: PoolOptions, mut server: S) -> Result<AsyncPool<C>, Error>
    where
        S: Server + Send + 'static,
    {
        let builder = options.builder_ref().clone();
        Self::with_starter(
            options,
            Box::new(move |deadline| {
                let start = builder
                    .clone()
                    .bounded_start(deadline)
                    .start_async(&mut server);
                Box::pin(async move { start.await.map(C::from) })
            }),
        )
        .await
    }

    /// Starts a pool whose servers are each built by `factory` (for every start and restart).
    pub async fn start_with<S, F>(
        options: PoolOptions,
        mut factory: F,
    ) -> Result<AsyncPool<C>, Error>
    where
        S: Server,
        F: FnMut() -> S + Send + 'static,
    {
        let builder = options.builder_ref().clone();
        Self::with_starter(
            options,
            Box::new(move |deadline| {
                let start = builder
                    .clone()
                    .bounded_start(deadline)
                    .start_async(&mut factory());
                Box::pin(async move { start.await.map(C::from) })
            }),
        )
        .await
    }

    async fn with_starter(
        options: PoolOptions,
        mut starter: AsyncStarter<C>,
    ) -> Result<AsyncPool<C>, Error> {
        let mut core = Core::new(options.size(), options.restart_policy());
        let now = Instant::now();
        for i in 0..options.size() {
            core.begin_start(i);
            let client = starter(None).await?;
            core.started(i, Ok(client.handle().pid()), now);
            core.checkin(i, Ok(client), false, now);
        }
        Ok(AsyncPool {
            shared: Arc::new(Shared {
                core: Mutex::new(core),
                changed: Notify::new(),
                waiting: AtomicUsize::new(0),
                starter: tokio::sync::Mutex::new(starter),
                checkout_timeout: options.checkout_timeout_value(),
            }),
        })
    }

    /// An idle server for this task's exclusive use until the returned guard is dropped (see
    /// [`Pool::get`](crate::Pool::get)); waits through the runtime.
    pub async fn get(&self) -> Result<AsyncPooled<C>, Error> {
        let start = Instant::now();
        let deadline = self.shared.checkout_timeout.map(|t| start + t);
        let mut waiter: Option<(Waiting<'_>, Pin<Box<tokio::sync::futures::Notified<'_>>>)> = None;
        loop {
            let step = self.lock().checkout(Instant::now());
            match step {
                Step::Take(i, mut client) => {
                    // No `.await` from here to the guard: a dropped future cannot lose it.
                    match still_alive(&mut client) {
                        Ok(()) => return Ok(self.guard(i, client)),
                        Err(why) => {
                            let mut core = self.lock();
                            core.checkin(i, Err(why), false, Instant::now());
                            core.retiree_started();
                            drop(core);
                            retire(&self.shared, client, false);
                            self.shared.wake();
                        }
                    }
                }
                Step::Start(i) => {
                    // Should this future be dropped while it waits for the starter's lock, the
                    // slot goes back to the next caller.
                    let abandon = Abandon {
                        shared: &self.shared,
                        index: Some(i),
                    };
                    // Only the fork holds the starter's lock.
                    let start = {
                        let mut starter = self.shared.starter.lock().await;
                        (starter)(deadline)
                    };
                    abandon.disarm();
                    // The wait for `initialize` (bounded by this checkout's deadline) runs in a
                    // task of its own: should this future be dropped meanwhile, the start goes
                    // on and the new server joins the pool (idle), rather than be stopped
                    // uncounted while its replacement forks.
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let shared = Arc::clone(&self.shared);
                    tokio::spawn(async move {
                        let r = start.await;
                        shared.lock().started(
                            i,
                            r.as_ref().map(|c| c.handle().pid()),
                            Instant::now(),
                        );
                        let r = r.map(|client| Handoff {
                            shared: Arc::clone(&shared),
                            index: i,
                            client: Some(client),
                        });
                        // Dropped unread (the checkout is gone), the handoff checks the server
                        // in.
                        let _ = tx.send(r);
                        shared.wake();
                    });
                    return match rx.await {
                        Ok(Ok(mut handoff)) => {
                            let client = handoff.client.take().expect("handed over once");
                            Ok(self.guard(i, client))
                        }
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err(Error::Io(std::io::Error::other(
                            "the task starting a pool server ended without a result (its runtime \
                             is shutting down)",
                        ))),
                    };
                }
                Step::Wait(retry_at) => {
                    // Counted and registered, then the state is looked at again, so no
                    // give-back in between is missed (and one with nobody waiting wakes nobody).
                    let Some((_, notified)) = &mut waiter else {
                        let mut notified = Box::pin(self.shared.changed.notified());
                        notified.as_mut().enable();
                        waiter = Some((Waiting::new(&self.shared.waiting), notified));
                        continue;
                    };
                    let now = Instant::now();
                    if deadline.is_some_and(|d| now >= d) {
                        return Err(Error::Pool(PoolError::Timeout {
                            waited: now - start,
                            size: self.lock().size(),
                        }));
                    }
                    let until = match (deadline, retry_at) {
                        (Some(d), Some(r)) => Some(d.min(r)),
                        (d, r) => d.or(r),
                    };
                    match until {
                        None => notified.await,
                        Some(until) => {
                            let _ = tokio::time::timeout_at(until.into(), notified).await;
                        }
                    }
                    waiter = None;
                }
                Step::Fail(e) => return Err(e),
            }
        }
    }

    /// Each server's pid, state, calls and restarts.
    pub fn status(&self) -> Vec<ServerStatus> {
        self.lock().status()
    }

    /// The number of servers.
    pub fn size(&self) -> usize {
        self.lock().size()
    }

    /// Gives the servers the pool gave up on another chance (see
    /// [`Pool::revive`](crate::Pool::revive)).
    pub fn revive(&self) {
        self.lock().revive(Instant::now());
        self.shared.wake();
    }

    /// Stops every server of the pool and awaits their ends (see
    /// [`Pool::stop`](crate::Pool::stop)): waits (up to the checkout deadline) for busy
    /// servers to be given back, then stops the idle ones all at once, through the runtime
    /// (fdserver's reaper drives each escalation; no runtime thread blocks). Returns each
    /// server's outcome; the pool is closed afterwards ([`PoolError::Stopped`]).
    ///
    /// ```
    /// # use fdserver::{AsyncPool, AsyncServerHandle, Context, Message, PoolOptions, RemoteError, Server, ServerHandle, Shutdown};
    /// # struct Echo;
    /// # impl Server for Echo {
    /// #     type Client = ServerHandle;
    /// #     fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
    /// #         ctx.reply(msg.args())?; Ok(())
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fdserver::Error> {
    /// let pool: AsyncPool<AsyncServerHandle> = AsyncPool::start(PoolOptions::new(2), Echo).await?;
    /// let stopped = pool.stop().await;
    /// assert_eq!(stopped.len(), 2);
    /// assert!(stopped.iter().all(|s| s.as_ref().unwrap().how == Shutdown::Graceful));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn stop(&self) -> Vec<Result<crate::Stopped, Error>> {
        let start = Instant::now();
        let deadline = self.shared.checkout_timeout.map(|t| start + t);
        self.lock().close();
        self.shared.wake();
        loop {
            let _waiting = Waiting::new(&self.shared.waiting);
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.lock().any_busy() || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            match deadline {
                None => notified.await,
                Some(d) => {
                    let _ = tokio::time::timeout_at(d.into(), notified).await;
                }
            }
        }
        let idle = self.lock().take_idle();
        let mut stops = Vec::with_capacity(idle.len());
        for mut client in idle {
            let (tx, rx) = tokio::sync::oneshot::channel();
            client.handle_mut().stop_then(Box::new(move |outcome| {
                let _ = tx.send(outcome);
            }));
            stops.push(rx);
        }
        let mut out = Vec::with_capacity(stops.len());
        for rx in stops {
            out.push(rx.await.unwrap_or_else(|_| {
                Err(Error::Io(std::io::Error::other(
                    "fdserver's reaper thread ended before the stop",
                )))
            }));
        }
        out
    }

    /// For the typed pool's methods: after a call on `guard` returned `r`, whether to run it
    /// again (on another server): only for an idempotent handler, once, after an error that
    /// needs a restart. Such an error retires the server either way.
    #[doc(hidden)]
    pub fn __retry<T, E: CallFailure>(
        guard: &mut AsyncPooled<C>,
        r: &Result<T, E>,
        idempotent: bool,
        retried: &mut bool,
    ) -> bool {
        match r {
            Err(e) if e.needs_restart() => {
                guard.retired = Some(Retirement::after(e));
                if idempotent && !*retried {
                    *retried = true;
                    return true;
                }
                false
            }
            _ => false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core<C>> {
        self.shared.lock()
    }

    fn guard(&self, index: usize, client: C) -> AsyncPooled<C> {
        AsyncPooled {
            shared: Arc::clone(&self.shared),
            index,
            client: Some(client),
            retired: None,
        }
    }
}

/// Puts a slot back when the start that reserved it is dropped part-way.
struct Abandon<'a, C> {
    shared: &'a Arc<Shared<C>>,
    index: Option<usize>,
}

impl<C> Abandon<'_, C> {
    fn disarm(mut self) {
        self.index = None;
    }
}

impl<C> Drop for Abandon<'_, C> {
    fn drop(&mut self) {
        if let Some(i) = self.index {
            self.shared.lock().start_abandoned(i, Instant::now());
            self.shared.wake();
        }
    }
}

/// A server a start task hands to its checkout: checked in (idle) if the checkout is gone.
struct Handoff<C> {
    shared: Arc<Shared<C>>,
    index: usize,
    client: Option<C>,
}

impl<C> Drop for Handoff<C> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            self.shared
                .lock()
                .checkin(self.index, Ok(client), false, Instant::now());
            self.shared.wake();
        }
    }
}

/// Hands a retired server (counted by `retiree_started`) to the reaper, which ends it and then
/// uncounts it and wakes the waiting checkouts (at once if it had already exited).
fn retire<C: AsyncClient>(shared: &Arc<Shared<C>>, mut client: C, kill: bool) {
    let shared = Arc::clone(shared);
    client.handle_mut().retire(
        kill,
        Box::new(move |_| {
            shared.lock().retiree_gone();
            shared.wake();
        }),
    );
}

/// Whether an idle server is still alive (one `waitpid(WNOHANG)`, no waiting).
fn still_alive<C: AsyncClient>(client: &mut C) -> Result<(), String> {
    let h = client.handle_mut();
    match h.try_wait() {
        Ok(None) => usable(h).map_err(|r| r.why),
        Ok(Some(status)) => Err(format!("server exited ({status})")),
        Err(e) => Err(e.to_string()),
    }
}

fn usable(h: &mut AsyncServerHandle) -> Result<(), Retirement> {
    let c = h.channel();
    let (why, kill) = if c.pending.is_some() {
        // A call was dropped while its server worked on it: rather than make the next caller
        // wait for that abandoned reply, the server is replaced (as after a time-out), and
        // killed at once: nobody will read what it is computing.
        ("a call on it was cancelled before its reply came", true)
    } else if c.is_broken() {
        ("connection broken by an earlier error", true)
    } else if c.peer_gone() {
        ("the server closed the connection", false)
    } else {
        return Ok(());
    };
    Err(Retirement {
        why: why.into(),
        kill,
    })
}

/// A server checked out of an [`AsyncPool`] (see [`AsyncPool::get`]): derefs to its client.
/// Dropping it gives the server back, or has it replaced if its connection broke, its server
/// exited, or [`retire`](Self::retire) was called.
pub struct AsyncPooled<C: AsyncClient> {
    shared: Arc<Shared<C>>,
    index: usize,
    client: Option<C>,
    retired: Option<Retirement>,
}

impl<C: AsyncClient> AsyncPooled<C> {
    /// Has the server replaced instead of given back (see
    /// [`Pooled::retire`](crate::Pooled::retire)).
    pub fn retire(&mut self) {
        self.retired.get_or_insert_with(|| Retirement {
            why: "retired by its caller".into(),
            kill: false,
        });
    }

    /// [`retire`](Self::retire) after `error` (see
    /// [`Pooled::retire_after`](crate::Pooled::retire_after)).
    pub fn retire_after(&mut self, error: &Error) {
        self.retired = Some(Retirement::after(error));
    }

    /// Its place in the pool.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl<C: AsyncClient> Deref for AsyncPooled<C> {
    type Target = C;
    fn deref(&self) -> &C {
        self.client.as_ref().expect("present until dropped")
    }
}

impl<C: AsyncClient> DerefMut for AsyncPooled<C> {
    fn deref_mut(&mut self) -> &mut C {
        self.client.as_mut().expect("present until dropped")
    }
}

impl<C: AsyncClient> Drop for AsyncPooled<C> {
    fn drop(&mut self) {
        let mut client = self.client.take().expect("present until dropped");
        let verdict = match self.retired.take() {
            Some(r) => Err(r),
            None => usable(client.handle_mut()),
        };
        let mut core = self.shared.lock();
        let verdict = match verdict {
            Ok(()) if core.is_closed() => Err(Retirement {
                why: "the pool was stopped".into(),
                kill: false,
            }),
            v => v,
        };
        let dead = match verdict {
            Ok(()) => {
                core.checkin(self.index, Ok(client), true, Instant::now());
                None
            }
            Err(r) => {
                core.checkin(self.index, Err(r.why), true, Instant::now());
                core.retiree_started();
                Some((client, r.kill))
            }
        };
        drop(core);
        if let Some((client, kill)) = dead {
            retire(&self.shared, client, kill);
        }
        self.shared.wake();
    }
}

impl<C: AsyncClient + fmt::Debug> fmt::Debug for AsyncPooled<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncPooled")
            .field("index", &self.index)
            .field("client", &self.client)
            .finish()
    }
}
