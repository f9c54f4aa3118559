//! Pools of servers with supervision: [`Pool`], its options and its status.
//!
//! The state machine (which server a call gets, when a dead one is restarted, when to give up)
//! is [`Core`], shared by the thread-blocking [`Pool`] and the async pool (feature `tokio`),
//! which differ only in how they wait.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::client::ServerHandle;
use crate::error::Error;
use crate::server::Server;
use crate::start::Builder;
use crate::wire_error::CallError;

/// The client of a server fdserver started: a [`ServerHandle`], or the typed client
/// `#[fdserver]` generates (`MyServerClient`), which holds one. What a [`Pool`] keeps.
///
/// ```
/// use fdserver::{Client, ServerHandle};
/// fn pid_of(client: &impl Client) -> u32 {
///     client.handle().pid()
/// }
/// # struct Greeter;
/// # #[fdserver::fdserver]
/// # impl Greeter { fn hi(&self) {} }
/// let client = Greeter.start()?;
/// assert!(pid_of(&client) > 0);
/// # Ok::<(), fdserver::Error>(())
/// ```
pub trait Client: From<ServerHandle> {
    /// The handle of the server.
    fn handle(&self) -> &ServerHandle;
    /// The handle of the server, mutably.
    fn handle_mut(&mut self) -> &mut ServerHandle;
}

impl Client for ServerHandle {
    fn handle(&self) -> &ServerHandle {
        self
    }

    fn handle_mut(&mut self) -> &mut ServerHandle {
        self
    }
}

/// An error a call can fail with, which tells whether its server must be replaced:
/// [`Error`] and [`CallError`]. [`Pool::call`] uses it.
pub trait CallFailure: From<Error> {
    /// See [`Error::needs_restart`].
    fn needs_restart(&self) -> bool;

    /// The fdserver error inside, if any (what a pool records when it retires the server).
    #[doc(hidden)]
    fn __as_error(&self) -> Option<&Error> {
        None
    }
}

impl CallFailure for Error {
    fn needs_restart(&self) -> bool {
        Error::needs_restart(self)
    }

    fn __as_error(&self) -> Option<&Error> {
        Some(self)
    }
}

impl<E> CallFailure for CallError<E> {
    fn needs_restart(&self) -> bool {
        CallError::needs_restart(self)
    }

    fn __as_error(&self) -> Option<&Error> {
        match self {
            CallError::Fdserver(e) => Some(e),
            CallError::Handler(_) => None,
        }
    }
}

/// Why a checked-out server is replaced instead of given back, and how it is stopped.
#[derive(Debug, Clone)]
pub(crate) struct Retirement {
    /// What the pool's status shows as its last error.
    pub(crate) why: String,
    /// SIGKILL at once: its call was abandoned (timed out or cancelled) while it worked on it,
    /// so nothing it does from here is of use; else the short retirement schedule.
    pub(crate) kill: bool,
}

impl Retirement {
    /// The retirement after a call failed with `e`.
    pub(crate) fn after<E: CallFailure>(e: &E) -> Retirement {
        match e.__as_error() {
            Some(e) => Retirement {
                why: e.to_string(),
                kill: matches!(e, Error::TimedOut { .. } | Error::Broken { .. }),
            },
            None => Retirement {
                why: "retired after a call failed".into(),
                kill: false,
            },
        }
    }
}

/// A pool's failures that are not a server's: no server free in time, a server that cannot be
/// restarted. In [`Error::Pool`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolError {
    /// Every server stayed busy (or down) for the whole checkout deadline.
    Timeout {
        /// How long the call waited.
        waited: Duration,
        /// How many servers the pool has.
        size: usize,
    },
    /// A server failed to start, or died before serving a call, this many times in a row: the
    /// pool gave up on it (see [`RestartPolicy::max_failures`]; [`Pool::revive`] tries again).
    /// Calls get this only when no other server of the pool can take them.
    RestartsExhausted {
        /// Which server (its index in [`Pool::status`]).
        index: usize,
        /// How many times in a row it failed.
        failures: u32,
        /// The last failure.
        last_error: String,
    },
    /// The pool was stopped ([`Pool::stop`], `AsyncPool::stop`).
    Stopped,
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Timeout { waited, size } => write!(
                f,
                "pool: no server of {size} was free within {waited:?} (all busy or restarting; \
                 raise PoolOptions::checkout_timeout or the pool's size)"
            ),
            PoolError::RestartsExhausted {
                index,
                failures,
                last_error,
            } => write!(
                f,
                "pool: server {index} failed {failures} times in a row, so the pool stopped \
                 restarting it (last failure: {last_error}); Pool::revive tries again"
            ),
            PoolError::Stopped => f.write_str(
                "pool: stopped (its stop() was called), so it has no servers; start a new pool",
            ),
        }
    }
}

/// When a pool restarts a server that died, and when it gives up.
///
/// A server that served at least one call since it started is restarted on the next use,
/// at once. One that fails again before serving a call (or fails to start) is restarted after
/// a back-off, doubling from `min_backoff` up to `max_backoff`; after `max_failures` such
/// failures in a row the pool gives up on it ([`PoolError::RestartsExhausted`]).
///
/// ```
/// use std::time::Duration;
/// let policy = fdserver::RestartPolicy::default();
/// assert_eq!(policy.min_backoff, Duration::from_millis(10));
/// assert_eq!(policy.max_backoff, Duration::from_secs(5));
/// assert_eq!(policy.max_failures, Some(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The back-off after a first failure in a row (default 10 ms).
    pub min_backoff: Duration,
    /// The longest back-off (default 5 s).
    pub max_backoff: Duration,
    /// Failures in a row after which the server is given up (default 5; `None`: never).
    pub max_failures: Option<u32>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(5),
            max_failures: Some(5),
        }
    }
}

impl RestartPolicy {
    /// The wait before restarting after `failures` failures in a row.
    fn backoff(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        self.min_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// How a pool is built: its size, how each server starts, how long a call waits for a free
/// server, the restart policy.
///
/// ```
/// use std::time::Duration;
/// use fdserver::{Builder, PoolOptions, RestartPolicy};
/// let options = PoolOptions::new(4)
///     .builder(Builder::new().timeout(Some(Duration::from_secs(5))))
///     .checkout_timeout(Some(Duration::from_secs(1)))
///     .restart(RestartPolicy { max_failures: None, ..RestartPolicy::default() });
/// assert_eq!(options.size(), 4);
/// ```
#[derive(Debug, Clone)]
pub struct PoolOptions {
    size: usize,
    builder: Builder,
    checkout_timeout: Option<Duration>,
    restart: RestartPolicy,
}

impl PoolOptions {
    /// `size` servers (at least one), each started with `Builder::new()`; a call waits up to
    /// [`DEFAULT_CALL_TIMEOUT`](crate::DEFAULT_CALL_TIMEOUT) for a free server; the default
    /// [`RestartPolicy`].
    pub fn new(size: usize) -> Self {
        PoolOptions {
            size: size.max(1),
            builder: Builder::new(),
            checkout_timeout: Some(crate::DEFAULT_CALL_TIMEOUT),
            restart: RestartPolicy::default(),
        }
    }

    /// How each server is started (and restarted): deadlines, descriptors to keep, a sandbox...
    pub fn builder(mut self, builder: Builder) -> Self {
        self.builder = builder;
        self
    }

    /// How long a call waits for a free server before failing with [`PoolError::Timeout`]
    /// (`None`: as long as it takes). It also bounds a restart: a call that restarts a dead
    /// server waits for the new server's `initialize` until this deadline (or the builder's
    /// [`start_timeout`](crate::Builder::start_timeout), if shorter), then fails with
    /// [`Error::TimedOut`] (operation `Start`) and the server goes down for its back-off. With
    /// neither set, a pool's start waits up to [`DEFAULT_CALL_TIMEOUT`](crate::DEFAULT_CALL_TIMEOUT):
    /// a pool's start is never unbounded.
    pub fn checkout_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.checkout_timeout = timeout;
        self
    }

    /// When dead servers are restarted, and when the pool gives up on one.
    pub fn restart(mut self, policy: RestartPolicy) -> Self {
        self.restart = policy;
        self
    }

    /// The number of servers.
    pub fn size(&self) -> usize {
        self.size
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn builder_ref(&self) -> &Builder {
        &self.builder
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn restart_policy(&self) -> RestartPolicy {
        self.restart
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn checkout_timeout_value(&self) -> Option<Duration> {
        self.checkout_timeout
    }
}

/// What a server of a pool is doing, in [`ServerStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerState {
    /// Running, waiting for a call.
    Idle,
    /// Running a call.
    Busy,
    /// Being started (or restarted).
    Starting,
    /// Dead or unusable; restarted on the next use that needs it (after its back-off).
    Down,
    /// Given up on after too many failures in a row ([`PoolError::RestartsExhausted`]).
    Failed,
}

/// One server of a pool, as [`Pool::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStatus {
    /// Its place in the pool (stable across restarts).
    pub index: usize,
    /// The pid of its current process (`None` while down or starting).
    pub pid: Option<u32>,
    /// What it is doing.
    pub state: ServerState,
    /// How many calls (checkouts) its processes served, over all restarts.
    pub calls: u64,
    /// How many times it was restarted.
    pub restarts: u64,
    /// Failures in a row (restarts that did not lead to a served call).
    pub failures: u32,
    /// What made it go down last, if it did.
    pub last_error: Option<String>,
}

/// What a checkout should do next.
pub(crate) enum Step<C> {
    /// Use this idle server (check it is alive first).
    Take(usize, C),
    /// Start this server (its slot is reserved), then use it.
    Start(usize),
    /// Wait for a server to come back, or until this time (a back-off ends).
    Wait(Option<Instant>),
    /// Give up.
    Fail(Error),
}

enum SlotState<C> {
    Idle(C),
    Busy,
    Starting,
    Down { retry_at: Instant },
    Failed,
}

struct Slot<C> {
    state: SlotState<C>,
    pid: Option<u32>,
    calls: u64,
    restarts: u64,
    /// Calls served by the current process.
    calls_this_life: u64,
    /// Whether the slot ever had a process (its next start is then a restart).
    started_once: bool,
    failures: u32,
    last_error: Option<String>,
}

/// The pool's state machine, behind the pool's lock.
pub(crate) struct Core<C> {
    slots: Vec<Slot<C>>,
    restart: RestartPolicy,
    /// Retired servers not yet reaped. While there are as many as the pool has places, no
    /// replacement is started (callers wait for a retiree to end): a pool of `n` never runs
    /// more than `2n` processes, however fast its calls are cancelled or time out.
    retiring: usize,
    /// Stopped: checkouts fail, servers given back are retired.
    closed: bool,
}

impl<C> Core<C> {
    pub(crate) fn new(size: usize, restart: RestartPolicy) -> Self {
        let now = Instant::now();
        Core {
            slots: (0..size)
                .map(|_| Slot {
                    state: SlotState::Down { retry_at: now },
                    pid: None,
                    calls: 0,
                    restarts: 0,
                    calls_this_life: 0,
                    started_once: false,
                    failures: 0,
                    last_error: None,
                })
                .collect(),
            restart,
            retiring: 0,
            closed: false,
        }
    }

    /// Closes the pool (its `stop`): checkouts fail from now on.
    pub(crate) fn close(&mut self) {
        self.closed = true;
    }

    /// Whether the pool was stopped.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether a server is checked out or starting.
    pub(crate) fn any_busy(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s.state, SlotState::Busy | SlotState::Starting))
    }

    /// Takes every idle server out (for `stop`), in pool order; their slots go down.
    pub(crate) fn take_idle(&mut self) -> Vec<C> {
        let now = Instant::now();
        self.slots
            .iter_mut()
            .filter_map(|s| {
                match std::mem::replace(&mut s.state, SlotState::Down { retry_at: now }) {
                    SlotState::Idle(c) => {
                        s.pid = None;
                        Some(c)
                    }
                    other => {
                        s.state = other;
                        None
                    }
                }
            })
            .collect()
    }

    /// A retired server was handed to the reaper (counted until it is reaped).
    pub(crate) fn retiree_started(&mut self) {
        self.retiring += 1;
    }

    /// A retired server was reaped.
    pub(crate) fn retiree_gone(&mut self) {
        self.retiring = self.retiring.saturating_sub(1);
    }

    pub(crate) fn size(&self) -> usize {
        self.slots.len()
    }

    /// The next step of a checkout at `now`.
    pub(crate) fn checkout(&mut self, now: Instant) -> Step<C> {
        if self.closed {
            return Step::Fail(Error::Pool(PoolError::Stopped));
        }
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| matches!(s.state, SlotState::Idle(_)))
        {
            let SlotState::Idle(c) = std::mem::replace(&mut self.slots[i].state, SlotState::Busy)
            else {
                unreachable!()
            };
            return Step::Take(i, c);
        }
        // Too many retired servers still running: wait for one to end before starting more.
        let held_back = self.retiring >= self.slots.len();
        if !held_back {
            if let Some(i) = self
                .slots
                .iter()
                .position(|s| matches!(s.state, SlotState::Down { retry_at } if retry_at <= now))
            {
                self.slots[i].state = SlotState::Starting;
                return Step::Start(i);
            }
        }
        let busy = self.retiring > 0
            || self
                .slots
                .iter()
                .any(|s| matches!(s.state, SlotState::Busy | SlotState::Starting));
        let next_retry = self
            .slots
            .iter()
            .filter_map(|s| match s.state {
                // Due but held back: woken when a retiree ends, not by the clock.
                SlotState::Down { retry_at } if held_back && retry_at <= now => None,
                SlotState::Down { retry_at } => Some(retry_at),
                _ => None,
            })
            .min();
        let waiting_for_retirees = held_back
            && self
                .slots
                .iter()
                .any(|s| matches!(s.state, SlotState::Down { .. }));
        if !busy && next_retry.is_none() && !waiting_for_retirees {
            // Every server is given up on.
            let (index, slot) = self
                .slots
                .iter()
                .enumerate()
                .max_by_key(|(_, s)| s.failures)
                .expect("a pool has servers");
            return Step::Fail(Error::Pool(PoolError::RestartsExhausted {
                index,
                failures: slot.failures,
                last_error: slot.last_error.clone().unwrap_or_default(),
            }));
        }
        Step::Wait(next_retry)
    }

    /// Reserves slot `i` for a start (a new pool's first starts).
    pub(crate) fn begin_start(&mut self, i: usize) {
        self.slots[i].state = SlotState::Starting;
    }

    /// The start of slot `i` (reserved by `Step::Start`) ended: the new server's pid (its
    /// client is busy for its caller), or the error (the slot goes down, or is given up on).
    pub(crate) fn started(&mut self, i: usize, r: Result<u32, &Error>, now: Instant) {
        let slot = &mut self.slots[i];
        match r {
            Ok(pid) => {
                if slot.started_once {
                    slot.restarts += 1;
                    crate::trace::pool_restarted(i, pid, slot.restarts, slot.last_error.as_deref());
                }
                slot.started_once = true;
                slot.pid = Some(pid);
                slot.calls_this_life = 0;
                slot.state = SlotState::Busy;
            }
            Err(e) => {
                slot.pid = None;
                slot.last_error = Some(e.to_string());
                self.down(i, true, now);
            }
        }
    }

    /// Slot `i`'s server is unusable (`failed`: it failed before serving a call, or failed
    /// to start): down, or given up on.
    fn down(&mut self, i: usize, failed: bool, now: Instant) {
        let slot = &mut self.slots[i];
        slot.pid = None;
        slot.failures = if failed { slot.failures + 1 } else { 0 };
        slot.state = match self.restart.max_failures {
            Some(max) if slot.failures >= max => {
                crate::trace::pool_gave_up(i, slot.failures, slot.last_error.as_deref());
                SlotState::Failed
            }
            _ => SlotState::Down {
                retry_at: now + self.restart.backoff(slot.failures),
            },
        };
    }

    /// A checked-out server comes back: usable (`Some`, after a call that succeeded or not),
    /// or not (`None`, with what went wrong).
    pub(crate) fn checkin(
        &mut self,
        i: usize,
        client: Result<C, String>,
        served: bool,
        now: Instant,
    ) {
        let slot = &mut self.slots[i];
        if served {
            slot.calls += 1;
            slot.calls_this_life += 1;
        }
        match client {
            Ok(c) => {
                if served {
                    slot.failures = 0;
                }
                slot.state = SlotState::Idle(c);
            }
            Err(why) => {
                slot.last_error = Some(why);
                let failed = slot.calls_this_life == 0;
                // The client is dropped by the caller, outside the lock (its server is stopped
                // in the background).
                self.down(i, failed, now);
            }
        }
    }

    /// A start of slot `i` was abandoned (its future dropped): the slot is down again, to be
    /// started by the next call that needs it.
    #[cfg(feature = "tokio")]
    pub(crate) fn start_abandoned(&mut self, i: usize, now: Instant) {
        if matches!(self.slots[i].state, SlotState::Starting) {
            self.slots[i].state = SlotState::Down { retry_at: now };
        }
    }

    /// Every server given up on gets another chance.
    pub(crate) fn revive(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if matches!(slot.state, SlotState::Failed) {
                slot.failures = 0;
                slot.state = SlotState::Down { retry_at: now };
            }
        }
    }

    pub(crate) fn status(&self) -> Vec<ServerStatus> {
        self.slots
            .iter()
            .enumerate()
            .map(|(index, s)| ServerStatus {
                index,
                pid: s.pid,
                state: match s.state {
                    SlotState::Idle(_) => ServerState::Idle,
                    SlotState::Busy => ServerState::Busy,
                    SlotState::Starting => ServerState::Starting,
                    SlotState::Down { .. } => ServerState::Down,
                    SlotState::Failed => ServerState::Failed,
                },
                calls: s.calls,
                restarts: s.restarts,
                failures: s.failures,
                last_error: s.last_error.clone(),
            })
            .collect()
    }
}

/// Whether a client coming back from a call is still usable: its connection is not broken,
/// and its server not known to have exited. Makes no system call.
pub(crate) fn still_usable<C: Client>(client: &C) -> Result<(), String> {
    client.handle().unusable_reason().map_or(Ok(()), Err)
}

/// Whether an idle server is still alive (one `waitpid(WNOHANG)`): a server killed between
/// calls is restarted before a caller gets it.
pub(crate) fn still_alive<C: Client>(client: &mut C) -> Result<(), String> {
    match client.handle_mut().try_wait() {
        Ok(None) => still_usable(client),
        Ok(Some(status)) => Err(format!("server exited ({status})")),
        Err(e) => Err(e.to_string()),
    }
}

/// Forks servers for a pool (the wait for `initialize` is the caller's, outside the starter's
/// lock), each start bounded by the given deadline (see `Builder::bounded_start`).
pub(crate) type Starter =
    Box<dyn FnMut(Option<Instant>) -> Result<crate::start::Forked, Error> + Send>;

/// Called (on the reaper thread, or at once) when a retired server has been reaped.
pub(crate) type RetireeGone = Arc<dyn Fn() + Send + Sync>;

/// A pool of servers that callers on many threads share: each call goes to an idle server,
/// waits (up to a deadline) when all are busy, and a server that died, timed out or broke its
/// connection is replaced on the next use that needs it (a call that finds no other server
/// idle restarts it), under a [`RestartPolicy`]. An idle server is checked before a caller
/// gets it (one `waitpid`), so one killed between calls is replaced without a caller seeing
/// an error.
///
/// `Pool` is `Clone` (a shared handle) and `Send + Sync`: no external `Mutex`. A call that was
/// in flight when its server failed gets the error ([`Error::needs_restart`]); nothing is
/// retried silently, except by [`call_idempotent`](Self::call_idempotent) (and the typed pool's
/// methods for handlers marked `#[fdserver(idempotent)]`), which retry once on another server.
///
/// `#[fdserver]` servers get a typed pool, `MyServerPool`, whose methods are the handlers'
/// (`pool.hello("Joe", "Dalton")`); `Pool` itself serves any client, e.g. a hand-written
/// server's [`ServerHandle`]:
///
/// ```
/// use fdserver::{Context, Message, Pool, PoolOptions, RemoteError, Server, ServerHandle};
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
/// let pool = Pool::start(PoolOptions::new(2), Echo)?;
/// let threads: Vec<_> = (0..4)
///     .map(|i| {
///         let pool = pool.clone();
///         std::thread::spawn(move || pool.call(|server| server.call(["echo", &i.to_string()])))
///     })
///     .collect();
/// for (i, t) in threads.into_iter().enumerate() {
///     assert_eq!(t.join().unwrap()?, [i.to_string()]);
/// }
/// let status = pool.status();
/// assert_eq!(status.len(), 2);
/// assert_eq!(status.iter().map(|s| s.calls).sum::<u64>(), 4);
/// # Ok::<(), fdserver::Error>(())
/// ```
pub struct Pool<C> {
    shared: Arc<Shared<C>>,
}

struct Shared<C> {
    core: Mutex<Core<C>>,
    changed: Condvar,
    /// Callers waiting on `changed` (so that giving a server back wakes nobody, with no system
    /// call, when nobody waits).
    waiting: std::sync::atomic::AtomicUsize,
    starter: Mutex<Starter>,
    checkout_timeout: Option<Duration>,
    retiree_gone: RetireeGone,
}

impl<C> Shared<C> {
    /// Wakes the waiting callers, if any.
    fn wake(&self) {
        if self.waiting.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.changed.notify_all();
        }
    }
}

impl<C> Clone for Pool<C> {
    fn clone(&self) -> Self {
        Pool {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C> fmt::Debug for Pool<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").finish_non_exhaustive()
    }
}

impl<C: Client + Send + 'static> Pool<C> {
    /// Starts a pool of `options.size()` servers, each forked from `server` (the value is kept
    /// by the pool, and each start, restarts included, forks a copy of it as it is then).
    /// Fails with the first start that fails (the servers already started are stopped).
    pub fn start<S>(options: PoolOptions, mut server: S) -> Result<Pool<C>, Error>
    where
        S: Server<Client = C> + Send + 'static,
    {
        let builder = options.builder.clone();
        Self::with_starter(
            options,
            Box::new(move |deadline| {
                builder
                    .clone()
                    .bounded_start(deadline)
                    .fork_server(&mut server)
            }),
        )
    }

    /// Starts a pool whose servers are each built by `factory` (called for every start and
    /// restart), e.g. to give each its own configuration.
    pub fn start_with<S, F>(options: PoolOptions, mut factory: F) -> Result<Pool<C>, Error>
    where
        S: Server<Client = C>,
        F: FnMut() -> S + Send + 'static,
    {
        let builder = options.builder.clone();
        Self::with_starter(
            options,
            Box::new(move |deadline| {
                builder
                    .clone()
                    .bounded_start(deadline)
                    .fork_server(&mut factory())
            }),
        )
    }

    fn with_starter(options: PoolOptions, mut starter: Starter) -> Result<Pool<C>, Error> {
        let now = Instant::now();
        let mut core = Core::new(options.size, options.restart);
        for i in 0..options.size {
            core.begin_start(i);
            let client = C::from(starter(None)?.ready()?);
            core.started(i, Ok(client.handle().pid()), now);
            core.checkin(i, Ok(client), false, now);
        }
        Ok(Pool {
            shared: Arc::new_cyclic(|weak: &std::sync::Weak<Shared<C>>| {
                let weak = weak.clone();
                Shared {
                    core: Mutex::new(core),
                    changed: Condvar::new(),
                    waiting: std::sync::atomic::AtomicUsize::new(0),
                    starter: Mutex::new(starter),
                    checkout_timeout: options.checkout_timeout,
                    retiree_gone: Arc::new(move || {
                        if let Some(shared) = weak.upgrade() {
                            // Under the lock, so a caller about to wait sees it or is woken.
                            shared
                                .core
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .retiree_gone();
                            shared.wake();
                        }
                    }),
                }
            }),
        })
    }

    /// An idle server for this thread's exclusive use until the returned guard is dropped
    /// (which gives the server back, or has it replaced if its connection broke). Waits while
    /// every server is busy, up to the checkout deadline; restarts a dead server if one is due.
    ///
    /// When the call restarts a dead server and that start fails, it returns the start's error
    /// (the server stays down for its back-off).
    ///
    /// Prefer [`call`](Self::call), which also retires a server whose call failed with an
    /// error that [needs a restart](Error::needs_restart); after such an error on a guard, call
    /// [`Pooled::retire`].
    pub fn get(&self) -> Result<Pooled<C>, Error> {
        let start = Instant::now();
        let deadline = self.shared.checkout_timeout.map(|t| start + t);
        loop {
            let mut core = self.lock();
            let step = core.checkout(Instant::now());
            match step {
                Step::Take(i, mut client) => {
                    drop(core);
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
                    drop(core);
                    // Only the fork holds the starter's lock (it needs the server value); the
                    // wait for `initialize` does not, so servers restart side by side. The
                    // wait ends with the checkout's deadline (see `PoolOptions`).
                    let forked =
                        (self
                            .shared
                            .starter
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()))(deadline);
                    let r = forked.and_then(|f| f.ready()).map(C::from);
                    self.lock()
                        .started(i, r.as_ref().map(|c| c.handle().pid()), Instant::now());
                    self.shared.wake();
                    return r.map(|client| self.guard(i, client));
                }
                Step::Wait(retry_at) => {
                    let now = Instant::now();
                    if deadline.is_some_and(|d| now >= d) {
                        return Err(Error::Pool(PoolError::Timeout {
                            waited: now - start,
                            size: core.size(),
                        }));
                    }
                    let until = match (deadline, retry_at) {
                        (Some(d), Some(r)) => Some(d.min(r)),
                        (d, r) => d.or(r),
                    };
                    // Counted while the lock is held: a give-back, which takes the lock, sees
                    // the count before it notifies.
                    self.shared
                        .waiting
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let core = match until {
                        None => self
                            .shared
                            .changed
                            .wait(core)
                            .unwrap_or_else(|p| p.into_inner()),
                        Some(until) => {
                            self.shared
                                .changed
                                .wait_timeout(core, until.saturating_duration_since(now))
                                .unwrap_or_else(|p| p.into_inner())
                                .0
                        }
                    };
                    self.shared
                        .waiting
                        .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    drop(core);
                }
                Step::Fail(e) => return Err(e),
            }
        }
    }

    /// Runs `f` on an idle server (see [`get`](Self::get)) and gives the server back; if the
    /// call failed with an error that [needs a restart](Error::needs_restart), the server is
    /// replaced on the next use, and the error is returned (never retried).
    ///
    /// `f` returns `Result<T, Error>` (a [`ServerHandle`] call) or `Result<T, CallError<E>>`
    /// (a typed client method of a `typed_errors` server).
    pub fn call<T, E: CallFailure>(&self, f: impl FnMut(&mut C) -> Result<T, E>) -> Result<T, E> {
        self.call_retrying(false, f)
    }

    /// [`call`](Self::call), for a call that may be repeated: if it fails with an error that
    /// needs a restart (its server died, it timed out), it is run once more on another server
    /// (a restarted one if need be), and that second outcome is returned.
    pub fn call_idempotent<T, E: CallFailure>(
        &self,
        f: impl FnMut(&mut C) -> Result<T, E>,
    ) -> Result<T, E> {
        self.call_retrying(true, f)
    }

    #[doc(hidden)]
    pub fn call_retrying<T, E: CallFailure>(
        &self,
        idempotent: bool,
        mut f: impl FnMut(&mut C) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut retried = false;
        loop {
            let mut guard = self.get()?;
            let r = f(&mut guard);
            match &r {
                Err(e) if e.needs_restart() => {
                    guard.retired = Some(Retirement::after(e));
                    drop(guard);
                    if idempotent && !retried {
                        retried = true;
                        continue;
                    }
                }
                _ => drop(guard),
            }
            return r;
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

    /// Gives the servers the pool gave up on ([`ServerState::Failed`]) another chance: they are
    /// restarted on the next use.
    pub fn revive(&self) {
        self.lock().revive(Instant::now());
        self.shared.wake();
    }

    /// Stops every server of the pool and waits until each has exited and been reaped: waits
    /// (up to the checkout deadline, as a call would) for busy servers to be given back, then
    /// stops the idle ones (each with [`ServerHandle::stop`]'s schedule, all at once: their
    /// connections are closed together, so they run `finalize_server` side by side). Returns
    /// each server's outcome, in pool order (servers that were down have none). The pool is
    /// closed afterwards: calls on its clones fail with [`PoolError::Stopped`].
    ///
    /// ```
    /// # use fdserver::{Context, Message, Pool, PoolOptions, RemoteError, Server, ServerHandle, Shutdown};
    /// # struct Echo;
    /// # impl Server for Echo {
    /// #     type Client = ServerHandle;
    /// #     fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
    /// #         ctx.reply(msg.args())?; Ok(())
    /// #     }
    /// # }
    /// let pool = Pool::start(PoolOptions::new(2), Echo)?;
    /// assert_eq!(pool.call(|s| s.call(["echo", "hi"]))?, ["hi"]);
    /// let stopped = pool.stop();
    /// assert_eq!(stopped.len(), 2);
    /// assert!(stopped.iter().all(|s| s.as_ref().unwrap().how == Shutdown::Graceful));
    /// # Ok::<(), fdserver::Error>(())
    /// ```
    pub fn stop(&self) -> Vec<Result<crate::Stopped, Error>> {
        let start = Instant::now();
        let deadline = self.shared.checkout_timeout.map(|t| start + t);
        let mut core = self.lock();
        core.close();
        // Busy servers come back (or their callers' deadlines pass).
        while core.any_busy() {
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break;
            }
            self.shared
                .waiting
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            core = match deadline {
                None => self
                    .shared
                    .changed
                    .wait(core)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    self.shared
                        .changed
                        .wait_timeout(core, d.saturating_duration_since(now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
            self.shared
                .waiting
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        let idle = core.take_idle();
        drop(core);
        self.shared.wake();
        // Every connection is closed first, then each stop is waited for.
        let escalations: Vec<_> = idle
            .into_iter()
            .map(|mut c| c.handle_mut().begin_stop())
            .collect();
        escalations
            .into_iter()
            .map(|e| match e {
                Ok(Ok(stopped)) => Ok(stopped),
                Ok(Err(escalation)) => escalation.run_blocking(),
                Err(e) => Err(e),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Core<C>> {
        self.shared.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn guard(&self, index: usize, client: C) -> Pooled<C> {
        Pooled {
            shared: Arc::clone(&self.shared),
            index,
            client: Some(client),
            retired: None,
        }
    }
}

/// A server checked out of a [`Pool`] (see [`Pool::get`]): derefs to its client. Dropping it
/// gives the server back to the pool, or has it replaced if its connection broke, its server
/// exited, or [`retire`](Self::retire) was called.
pub struct Pooled<C: Client> {
    shared: Arc<Shared<C>>,
    index: usize,
    client: Option<C>,
    retired: Option<Retirement>,
}

impl<C: Client> Pooled<C> {
    /// Has the server replaced instead of given back: after a call failed with an error that
    /// [needs a restart](Error::needs_restart) (not every such error breaks the connection, so
    /// the pool could not tell). Prefer [`retire_after`](Self::retire_after), which records
    /// the error.
    pub fn retire(&mut self) {
        self.retired.get_or_insert_with(|| Retirement {
            why: "retired by its caller".to_string(),
            kill: false,
        });
    }

    /// [`retire`](Self::retire) after `error`: the pool's [`ServerStatus::last_error`] shows
    /// it, and a server whose call timed out is killed at once (it may still be working on a
    /// reply nobody will read) instead of being given the stop schedule.
    pub fn retire_after(&mut self, error: &Error) {
        self.retired = Some(Retirement::after(error));
    }

    /// Its place in the pool ([`ServerStatus::index`]).
    pub fn index(&self) -> usize {
        self.index
    }
}

impl<C: Client> Deref for Pooled<C> {
    type Target = C;
    fn deref(&self) -> &C {
        self.client.as_ref().expect("present until dropped")
    }
}

impl<C: Client> DerefMut for Pooled<C> {
    fn deref_mut(&mut self) -> &mut C {
        self.client.as_mut().expect("present until dropped")
    }
}

impl<C: Client> Drop for Pooled<C> {
    fn drop(&mut self) {
        let client = self.client.take().expect("present until dropped");
        let mut core = self.shared.core.lock().unwrap_or_else(|p| p.into_inner());
        let verdict = match self.retired.take() {
            Some(r) => Err(r),
            None if core.is_closed() => Err(Retirement {
                why: "the pool was stopped".into(),
                kill: false,
            }),
            None => still_usable(&client).map_err(|why| Retirement { why, kill: false }),
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

/// Hands a retired server (counted by `retiree_started`) to the reaper, which ends it and then
/// uncounts it (at once if it had already exited).
fn retire<C: Client>(shared: &Shared<C>, mut client: C, kill: bool) {
    let gone = Arc::clone(&shared.retiree_gone);
    client.handle_mut().retire(kill, Box::new(move |_| gone()));
}

impl<C: Client + fmt::Debug> fmt::Debug for Pooled<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled")
            .field("index", &self.index)
            .field("client", &self.client)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::RestartPolicy;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RestartPolicy::default();
        assert_eq!(p.backoff(0), Duration::ZERO);
        assert_eq!(p.backoff(1), Duration::from_millis(10));
        assert_eq!(p.backoff(2), Duration::from_millis(20));
        assert_eq!(p.backoff(10), Duration::from_secs(5));
        assert_eq!(p.backoff(100), Duration::from_secs(5));
    }
}
