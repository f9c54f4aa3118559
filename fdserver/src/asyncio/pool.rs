//! [`AsyncPool`]: the pool for tokio tasks, on the same state machine as [`Pool`](crate::Pool).

use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::handle::AsyncServerHandle;
use crate::error::Error;
use crate::pool::{CallFailure, Core, PoolError, PoolOptions, ServerStatus, Step};
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
type AsyncStarter<C> = Box<dyn FnMut() -> StartFuture<C> + Send>;

/// A pool of servers that tokio tasks share: [`Pool`](crate::Pool)'s behaviour (a call gets an
/// idle server, waits with a bound when all are busy, a failed server is replaced on the next
/// use that needs it, under the [`RestartPolicy`](crate::RestartPolicy)), with every wait
/// through the runtime: no blocking call on a runtime thread. Starts and restarts fork inline
/// (a few hundred microseconds) and wait for the server's `initialize` asynchronously.
///
/// `Clone`, `Send` and `Sync`. `#[fdserver]` servers get a typed one, `MyServerAsyncPool`, whose
/// methods are the handlers' (`pool.hello("Joe", "Dalton").await`). Every future here may be
/// dropped at any `.await`: a checkout dropped while it waits takes nothing; one dropped while
/// it starts a server leaves that server to be stopped in the background and its place to the
/// next call; a call dropped while its server works leaves that server to finish the reply,
/// which its next call reads first (see the async client's docs).
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
    starter: tokio::sync::Mutex<AsyncStarter<C>>,
    checkout_timeout: Option<Duration>,
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
            Box::new(move || {
                let start = builder.clone().start_async(&mut server);
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
            Box::new(move || {
                let start = builder.clone().start_async(&mut factory());
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
            let client = starter().await?;
            core.started(i, Ok(client.handle().pid()), now);
            core.checkin(i, Ok(client), false, now);
        }
        Ok(AsyncPool {
            shared: Arc::new(Shared {
                core: Mutex::new(core),
                changed: Notify::new(),
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
        loop {
            // Registered before the state is looked at, so no give-back in between is missed.
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let step = self.lock().checkout(Instant::now());
            match step {
                Step::Take(i, mut client) => {
                    // No `.await` from here to the guard: a dropped future cannot lose it.
                    match still_alive(&mut client) {
                        Ok(()) => return Ok(self.guard(i, client)),
                        Err(why) => {
                            self.lock().checkin(i, Err(why), false, Instant::now());
                            drop(client);
                            self.shared.changed.notify_waiters();
                        }
                    }
                }
                Step::Start(i) => {
                    // Should this future be dropped while the server starts, the slot goes
                    // back to the next caller (and the half-started server is stopped).
                    let abandon = Abandon {
                        shared: &self.shared,
                        index: Some(i),
                    };
                    let r = {
                        let mut starter = self.shared.starter.lock().await;
                        let start = (starter)();
                        drop(starter);
                        start.await
                    };
                    abandon.disarm();
                    self.lock()
                        .started(i, r.as_ref().map(|c| c.handle().pid()), Instant::now());
                    self.shared.changed.notify_waiters();
                    return r.map(|client| self.guard(i, client));
                }
                Step::Wait(retry_at) => {
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
        self.shared.changed.notify_waiters();
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
                guard.retire();
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
        self.shared.core.lock().unwrap_or_else(|p| p.into_inner())
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
            self.shared
                .core
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .start_abandoned(i, Instant::now());
            self.shared.changed.notify_waiters();
        }
    }
}

/// Whether an idle server is still alive (one `waitpid(WNOHANG)`, no waiting).
fn still_alive<C: AsyncClient>(client: &mut C) -> Result<(), String> {
    let h = client.handle_mut();
    match h.try_wait() {
        Ok(None) => usable(h),
        Ok(Some(status)) => Err(format!("server exited ({status})")),
        Err(e) => Err(e.to_string()),
    }
}

fn usable(h: &mut AsyncServerHandle) -> Result<(), String> {
    let c = h.channel();
    if c.pending.is_some() {
        // A call was dropped while its server worked on it: rather than make the next caller
        // wait for that abandoned reply, the server is replaced (as after a time-out).
        Err("a call on it was cancelled before its reply came".into())
    } else if c.is_broken() {
        Err("connection broken by an earlier error".into())
    } else if c.peer_gone() {
        Err("the server closed the connection".into())
    } else {
        Ok(())
    }
}

/// A server checked out of an [`AsyncPool`] (see [`AsyncPool::get`]): derefs to its client.
/// Dropping it gives the server back, or has it replaced if its connection broke, its server
/// exited, or [`retire`](Self::retire) was called.
pub struct AsyncPooled<C: AsyncClient> {
    shared: Arc<Shared<C>>,
    index: usize,
    client: Option<C>,
    retired: Option<String>,
}

impl<C: AsyncClient> AsyncPooled<C> {
    /// Has the server replaced instead of given back (see
    /// [`Pooled::retire`](crate::Pooled::retire)).
    pub fn retire(&mut self) {
        self.retired
            .get_or_insert_with(|| "retired after a call failed".to_string());
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
            Some(why) => Err(why),
            None => usable(client.handle_mut()),
        };
        let mut core = self.shared.core.lock().unwrap_or_else(|p| p.into_inner());
        let dead = match verdict {
            Ok(()) => {
                core.checkin(self.index, Ok(client), true, Instant::now());
                None
            }
            Err(why) => {
                core.checkin(self.index, Err(why), true, Instant::now());
                Some(client)
            }
        };
        drop(core);
        drop(dead); // stopped in the background
        self.shared.changed.notify_waiters();
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
