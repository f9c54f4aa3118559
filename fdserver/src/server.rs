//! The server side: the [`Server`] trait, the forked child, and the message loop.

use std::fmt;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use crate::channel::Channel;
use crate::client::{ServerHandle, StopOptions};
use crate::error::{Error, RemoteError, RemoteErrorKind};
use crate::sys;
use crate::wire::{Message, MessageBuf};

/// A signal a server can handle (re-exported from `nix`).
pub use nix::sys::signal::Signal;

/// Boxed error returned by lifecycle hooks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A server: something that answers messages in a forked child (see [`Server::start`]) or in the
/// current process (see [`serve`]).
///
/// Most servers are written with the `#[fdserver]` attribute, which implements this trait.
/// Written by hand, a server matches on the message name:
///
/// ```
/// use fdserver::{Context, Message, RemoteError, Server, ServerHandle};
///
/// struct Hello;
///
/// impl Server for Hello {
///     type Client = ServerHandle;
///
///     fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
///         match msg.name() {
///             b"hello" if msg.len() == 3 => {
///                 let reply = format!("Hello {} {}, how are you?", msg.str(1)?, msg.str(2)?);
///                 ctx.reply([reply.as_str(), "1234"])?;
///                 Ok(())
///             }
///             b"hello" => Err(RemoteError::bad_arguments("hello takes 2 arguments")),
///             other => Err(RemoteError::unknown_message(other)),
///         }
///     }
/// }
///
/// let mut server = Hello.start()?;
/// assert_eq!(server.call(["hello", "Joe", "Dalton"])?, ["Hello Joe Dalton, how are you?", "1234"]);
/// let stopped = server.stop()?;
/// assert!(stopped.status.success());
/// # Ok::<(), fdserver::Error>(())
/// ```
pub trait Server: Sized {
    /// What [`start`](Server::start) returns: [`ServerHandle`] for hand-written servers, the
    /// generated typed client for `#[fdserver]` servers.
    type Client: From<ServerHandle>;

    /// Signals this server handles with [`handle_signal`](Server::handle_signal). They are
    /// delivered on the server loop, between messages, never in signal context.
    ///
    /// Without a declared handler, SIGTERM and SIGINT end the loop cleanly (`finalize_server`
    /// runs, exit status 0) and SIGHUP is ignored; every other signal has its default action.
    const SIGNALS: &'static [Signal] = &[];

    /// Answers one message. Write the reply with [`Context::reply`] (or any raw channel
    /// operation); return `Err` to send an error reply `["error", kind, message]` instead.
    /// A message that needs no answer may simply return `Ok(())` without writing.
    fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError>;

    /// Runs on the server loop when one of [`SIGNALS`](Server::SIGNALS) arrives.
    fn handle_signal(&mut self, ctx: &mut Context<'_>, signal: Signal) {
        let _ = (ctx, signal);
    }

    /// Runs in the parent, just before `fork` (Passenger's `before_fork`).
    fn before_fork(&mut self) {}

    /// Runs in the server before the loop (Passenger's `initialize_server`). Open files, reseed
    /// random number generators and start threads here, not before the fork. An error is
    /// reported to [`start`](Server::start), and the server exits with status 1.
    fn initialize_server(&mut self) -> Result<(), BoxError> {
        Ok(())
    }

    /// Runs in the server after the loop, however it ended: end of stream, [`Context::quit`],
    /// SIGTERM or SIGINT (Passenger's `finalize_server`).
    fn finalize_server(&mut self) {}

    /// Forks a server child connected to this process and returns its client once
    /// `initialize_server` has succeeded. See [`Builder`] for options.
    fn start(&mut self) -> Result<Self::Client, Error> {
        Builder::new().start(self)
    }
}

/// What a handler can do besides reading its message: reply, end the loop, use the raw channel.
pub struct Context<'a> {
    channel: &'a mut Channel,
    quit: bool,
}

impl<'a> Context<'a> {
    fn new(channel: &'a mut Channel) -> Self {
        Context {
            channel,
            quit: false,
        }
    }

    /// Writes the success reply `["ok", values...]`.
    pub fn reply<I, T>(&mut self, values: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.channel.write_ok(values)
    }

    /// The raw channel, to send scalars and descriptors after a reply, or to read more from the
    /// client (Passenger handlers got the client socket the same way).
    pub fn channel(&mut self) -> &mut Channel {
        self.channel
    }

    /// Ends the loop once the current handler returns (Passenger's `quit_main`).
    pub fn quit(&mut self) {
        self.quit = true;
    }

    /// Whether [`quit`](Self::quit) was called.
    pub fn quitting(&self) -> bool {
        self.quit
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        sys::getpid()
    }
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("channel", &self.channel.as_raw_fd())
            .field("quit", &self.quit)
            .finish()
    }
}

/// How a server loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoopEnd {
    /// The client closed the connection.
    Disconnected,
    /// A handler called [`Context::quit`].
    Quit,
    /// SIGTERM or SIGINT arrived (and the server declared no handler for it).
    Signal(Signal),
    /// A handler panicked after it had begun writing its reply, so the stream could not be
    /// resynchronised; the connection was closed.
    PanickedMidReply,
    /// The channel failed (an I/O error or a stream that cannot be resynchronised).
    ChannelFailed(String),
}

impl LoopEnd {
    /// The exit status a forked server uses for this ending.
    pub fn exit_code(&self) -> i32 {
        match self {
            LoopEnd::Disconnected | LoopEnd::Quit | LoopEnd::Signal(_) => 0,
            LoopEnd::PanickedMidReply => 101,
            LoopEnd::ChannelFailed(_) => 1,
        }
    }
}

/// Options for starting a server.
///
/// ```
/// use std::time::Duration;
/// # use fdserver::{Context, Message, RemoteError, Server, ServerHandle};
/// # struct Echo;
/// # impl Server for Echo {
/// #     type Client = ServerHandle;
/// #     fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
/// #         ctx.reply(msg.args())?; Ok(())
/// #     }
/// # }
/// let server = fdserver::Builder::new()
///     .timeout(Some(Duration::from_secs(5)))               // per read/write on the client side
///     .stop_timeouts(Duration::from_secs(1), Duration::from_secs(1))
///     .start(&mut Echo)?;
/// assert!(server.pid() > 0);
/// # Ok::<(), fdserver::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct Builder {
    keep_fds: Vec<RawFd>,
    stop: StopOptions,
    timeout: Option<Duration>,
    start_timeout: Option<Duration>,
    max_scalar: Option<u64>,
}

impl Builder {
    /// Default options: no deadlines, stop grace periods of 3 s + 3 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `fd` open (under the same number) in the server; every other inherited descriptor
    /// but 0, 1, 2 and the server's socket is closed.
    pub fn keep_fd(mut self, fd: &impl AsFd) -> Self {
        self.keep_fds.push(fd.as_fd().as_raw_fd());
        self
    }

    /// How long [`ServerHandle::stop`] waits after closing the connection before SIGTERM, and
    /// after SIGTERM before SIGKILL (defaults: 3 s and 3 s, as Passenger).
    pub fn stop_timeouts(mut self, after_close: Duration, after_term: Duration) -> Self {
        self.stop = StopOptions {
            after_close,
            after_term,
        };
        self
    }

    /// A deadline for each read and write on the client's channel (default: none).
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long [`start`](Self::start) waits for `initialize_server` (default: forever). On
    /// time-out the child is killed and reaped and `start` fails with [`Error::TimedOut`].
    pub fn start_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// Largest scalar each side accepts (default [`DEFAULT_MAX_SCALAR`](crate::DEFAULT_MAX_SCALAR)).
    pub fn max_scalar_size(mut self, max: u64) -> Self {
        self.max_scalar = Some(max);
        self
    }

    /// Forks the server and returns its typed client.
    pub fn start<S: Server>(self, server: &mut S) -> Result<S::Client, Error> {
        self.start_handle(server).map(S::Client::from)
    }

    /// Forks the server and returns the untyped handle.
    ///
    /// Fails with `InvalidInput` if this process ignores SIGCHLD (`SIG_IGN` or `SA_NOCLDWAIT`):
    /// the kernel would then reap the server itself, and neither `stop` nor a failing call could
    /// learn how it ended. Restore SIGCHLD's default disposition first.
    pub fn start_handle<S: Server>(mut self, server: &mut S) -> Result<ServerHandle, Error> {
        if sys::children_autoreaped() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "SIGCHLD is ignored in this process (SIG_IGN or SA_NOCLDWAIT), so the kernel would \
                 reap the server and its exit status would be lost; restore SIGCHLD's default \
                 disposition before starting servers",
            )));
        }
        server.before_fork();

        // Everything the child needs is prepared here, in the parent: after the fork the child
        // must not allocate or take a lock before its loop (see the crate docs on fork safety).
        // The child's end first: the lower descriptor number, so that closing everything above
        // the descriptors it keeps usually takes a single `close_range`, which also closes
        // the parent's end there.
        let (child_end, parent_end) = Channel::pair()?;
        let mut child = child_end;
        // Enough for the "ready" message and typical replies; larger ones grow the buffer inside
        // the loop, where allocating is the user's domain (see the crate docs on fork safety).
        child.reserve_write(4096);
        if let Some(max) = self.max_scalar {
            child.set_max_scalar_size(max);
        }
        let mut buf = MessageBuf::with_capacity(4096);
        self.keep_fds.push(child.as_raw_fd());
        self.keep_fds.sort_unstable();
        self.keep_fds.dedup();
        let plan = SignalPlan::new(S::SIGNALS);

        // Hold the standard streams' locks across the fork: a lock another thread held at that
        // moment would stay locked forever in the child, which flushes stdout and stderr at
        // exit (and prints panic messages). The locks are reentrant and the child's only thread
        // is their owner, so it can still use them.
        let mut stdio_locks = (std::io::stdout().lock(), std::io::stderr().lock());
        // Empty stdout's buffer first: the child flushes it at exit, and would otherwise write
        // the parent's pending output a second time.
        let _ = stdio_locks.0.flush();
        let all = sys::sigset(true);
        let old_mask = sys::set_sigmask(&all);
        // SAFETY: the child branch below only makes async-signal-safe calls (close, sigaction,
        // close_range, pthread_sigmask) before handing control to the user's server, and never
        // returns: it ends in `_exit`.
        let pid = unsafe { sys::fork() };
        if !matches!(pid, Ok(0)) {
            drop(stdio_locks);
        }
        match pid {
            Ok(0) => {
                // Child. Never returns. The parent's end is closed with every other descriptor
                // not kept (`close_fds_except` in `child_main`); its `Channel` is never dropped
                // here (we `_exit`).
                std::mem::forget(parent_end);
                child_main(server, child, &mut buf, &self.keep_fds, &plan)
            }
            Ok(pid) => {
                sys::set_sigmask(&old_mask);
                drop(child);
                drop(buf);
                let mut channel = parent_end;
                channel.set_timeout(self.timeout);
                if let Some(max) = self.max_scalar {
                    channel.set_max_scalar_size(max);
                }
                let mut handle = ServerHandle::new(pid, channel, self.stop)?;
                handle.await_ready(self.start_timeout)?;
                Ok(handle)
            }
            Err(e) => {
                sys::set_sigmask(&old_mask);
                Err(Error::Io(e))
            }
        }
    }
}

/// Which signals the server loop owns, computed before the fork.
struct SignalPlan {
    /// Bit n: the server declared a handler for signal n.
    declared: u64,
    /// Bit n: the child sets signal n itself after resetting the others (SIGHUP, SIGPIPE and
    /// the caught ones).
    preset: u64,
    /// The highest signal number (asked of the C library in the parent).
    sigmax: libc::c_int,
    /// Signals the loop catches (declared + SIGTERM + SIGINT), with a flag handler.
    caught: libc::sigset_t,
    /// The signal mask the loop runs with: `caught` unblocked.
    run_mask: libc::sigset_t,
}

impl SignalPlan {
    fn new(signals: &[Signal]) -> Self {
        let mut declared = 0u64;
        let mut caught = sys::sigset(false);
        for s in signals {
            let n = *s as i32;
            declared |= 1 << n;
            sys::sigset_add(&mut caught, n);
        }
        sys::sigset_add(&mut caught, libc::SIGTERM);
        sys::sigset_add(&mut caught, libc::SIGINT);
        let preset = declared
            | 1 << libc::SIGHUP
            | 1 << libc::SIGPIPE
            | 1 << libc::SIGTERM
            | 1 << libc::SIGINT;
        SignalPlan {
            declared,
            preset,
            sigmax: sys::sigmax(),
            caught,
            run_mask: sys::sigset(false),
        }
    }

    fn declares(&self, sig: i32) -> bool {
        self.declared & (1 << sig) != 0
    }

    fn each_caught(&self, mut f: impl FnMut(i32)) {
        for sig in 1..64 {
            // SAFETY: `caught` is an initialised sigset; sigismember only reads it.
            if unsafe { libc::sigismember(&self.caught, sig) } == 1 {
                f(sig);
            }
        }
    }
}

/// The forked child, from just after `fork` to `_exit`.
fn child_main<S: Server>(
    server: &mut S,
    mut channel: Channel,
    buf: &mut MessageBuf,
    keep: &[RawFd],
    plan: &SignalPlan,
) -> ! {
    // 1. Signals: every disposition back to default, SIGHUP ignored unless the server handles
    //    it (Passenger ignored it after installing the user's handlers, so theirs never ran).
    sys::reset_signal_dispositions(plan.sigmax, plan.preset);
    if !plan.declares(libc::SIGHUP) {
        let _ = sys::set_disposition(libc::SIGHUP, sys::Disposition::Ignore);
    }
    // As in every Rust program (std ignores it before `main`): writing to a closed pipe or
    // socket is an EPIPE error for the handler, not death by SIGPIPE.
    if !plan.declares(libc::SIGPIPE) {
        let _ = sys::set_disposition(libc::SIGPIPE, sys::Disposition::Ignore);
    }
    // 2. Descriptors: only 0, 1, 2, our socket and what the caller asked to keep.
    sys::close_fds_except(keep);
    // 3. Our signals go to a flag handler that wakes this thread's loop; then nothing is
    //    blocked any more (everything was, across the fork).
    plan.each_caught(|sig| {
        let _ = sys::set_disposition(sig, sys::Disposition::Flag);
    });
    sys::take_pending();
    sys::set_loop_thread(true);
    sys::set_sigmask(&plan.run_mask);

    // From here on the user's code runs.
    let code = match catch_unwind(AssertUnwindSafe(|| server.initialize_server())) {
        Ok(Ok(())) => {
            if channel.write_array(["ready"]).is_err() {
                // The parent is gone already.
                finish(server, 0)
            }
            let end = run_loop(server, &mut channel, buf, plan);
            drop(channel);
            end.exit_code()
        }
        Ok(Err(e)) => {
            let _ = channel.write_error(&RemoteError::new(
                RemoteErrorKind::Initialize,
                e.to_string(),
            ));
            1
        }
        Err(panic) => {
            let _ = channel.write_error(&RemoteError::new(
                RemoteErrorKind::Initialize,
                format!("initialize_server panicked: {}", panic_message(&*panic)),
            ));
            101
        }
    };
    finish(server, code)
}

fn finish<S: Server>(server: &mut S, code: i32) -> ! {
    let code = match catch_unwind(AssertUnwindSafe(|| server.finalize_server())) {
        Ok(()) => code,
        Err(_) => 101,
    };
    // `_exit` skips std's own flush of stdout at exit. (Stderr is unbuffered: nothing to do.)
    let _ = std::io::stdout().flush();
    sys::exit_now(code)
}

/// Serves `server` on `channel` in the current process until the peer disconnects, a handler
/// quits, or SIGTERM/SIGINT arrives (Passenger's `start_synchronously`). Runs
/// `initialize_server` before and `finalize_server` after the loop.
///
/// Use it to serve on a socket inherited from another program, e.g. fd 3:
///
/// ```no_run
/// # use fdserver::{Channel, Context, Message, RemoteError, Server, ServerHandle};
/// # struct MyServer;
/// # impl Server for MyServer {
/// #     type Client = ServerHandle;
/// #     fn handle(&mut self, _: &mut Context<'_>, m: Message<'_>) -> Result<(), RemoteError> {
/// #         Err(RemoteError::unknown_message(m.name()))
/// #     }
/// # }
/// // SAFETY: fd 3 was handed to us by our parent and nothing else owns it.
/// let channel = unsafe { Channel::from_inherited_fd(3)? };
/// let end = fdserver::serve(&mut MyServer, channel)?;
/// std::process::exit(end.exit_code());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// The signals the loop catches (SIGTERM, SIGINT and the server's [`Server::SIGNALS`]) get a
/// recording handler and are unblocked in the calling thread while it serves; their previous
/// dispositions and the thread's signal mask are restored afterwards. One that another thread
/// of the process receives is forwarded to the serving thread. No descriptor is closed and no
/// other disposition is touched: this is your process.
///
/// One loop serves at a time in a process: a second `serve` while one runs (in another thread)
/// fails at once with an [`Error::Io`] saying so. Fork a server per channel with
/// [`Server::start`] instead.
///
/// Unlike a forked server, no `["ready"]` message is sent: the peer may be any MessageChannel
/// client. The socket may be non-blocking.
pub fn serve<S: Server>(server: &mut S, mut channel: Channel) -> Result<LoopEnd, Error> {
    // Signals reach one loop per process (their flags and the loop's wait are process-wide).
    if !sys::claim_loop_thread() {
        return Err(Error::Io(std::io::Error::other(
            "another fdserver server loop is already running in this process: serve() runs one \
             at a time (start() forks a process per server)",
        )));
    }
    // From here on, whatever happens (errors, a panic in a hook), the guard gives the loop
    // thread up and restores the caller's signal mask and dispositions.
    let mut guard = ServeGuard {
        saved: Vec::new(),
        old_mask: None,
    };
    let plan = SignalPlan::new(S::SIGNALS);
    let mut failed = None;
    plan.each_caught(
        |sig| match sys::set_disposition(sig, sys::Disposition::Flag) {
            Ok(old) => guard.saved.push((sig, old)),
            Err(e) => failed = Some(e),
        },
    );
    if let Some(e) = failed {
        return Err(Error::Io(e));
    }
    sys::take_pending();
    let old_mask = sys::get_sigmask();
    guard.old_mask = Some(old_mask);
    // Our signals are delivered to the flag handler even if the caller had blocked them.
    let mut run_mask = old_mask;
    plan.each_caught(|sig| sys::sigset_del(&mut run_mask, sig));
    let plan = SignalPlan { run_mask, ..plan };
    sys::set_sigmask(&plan.run_mask);

    match server.initialize_server() {
        Ok(()) => {
            let mut buf = MessageBuf::with_max_capacity();
            let end = run_loop(server, &mut channel, &mut buf, &plan);
            server.finalize_server();
            Ok(end)
        }
        Err(e) => Err(Error::Remote(RemoteError::new(
            RemoteErrorKind::Initialize,
            e.to_string(),
        ))),
    }
}

/// What [`serve`] undoes when it returns or unwinds: the loop thread it claimed, the signal
/// mask and the dispositions it changed.
struct ServeGuard {
    saved: Vec<(i32, sys::SavedAction)>,
    old_mask: Option<libc::sigset_t>,
}

impl Drop for ServeGuard {
    fn drop(&mut self) {
        sys::set_loop_thread(false);
        if let Some(mask) = &self.old_mask {
            sys::set_sigmask(mask);
        }
        sys::take_pending();
        for (sig, old) in &self.saved {
            sys::restore_disposition(*sig, old);
        }
    }
}

/// The server loop: wait for a message or a signal, dispatch, repeat.
fn run_loop<S: Server>(
    server: &mut S,
    channel: &mut Channel,
    buf: &mut MessageBuf,
    plan: &SignalPlan,
) -> LoopEnd {
    sys::set_wait_socket(channel.as_fd());
    loop {
        // Arm the wait before looking at the flags: a signal landing between the check and the
        // wait then makes the wait return at once (see `sys::arm_wait`).
        sys::arm_wait();
        let pending = sys::take_pending();
        if pending != 0 {
            for sig in 1..64 {
                if pending & (1 << sig) == 0 {
                    continue;
                }
                if plan.declares(sig) {
                    let Ok(signal) = Signal::try_from(sig) else {
                        continue;
                    };
                    let mut ctx = Context::new(channel);
                    let r = catch_unwind(AssertUnwindSafe(|| {
                        server.handle_signal(&mut ctx, signal);
                        ctx.quit
                    }));
                    if matches!(r, Ok(true)) {
                        return LoopEnd::Quit;
                    }
                } else if sig == libc::SIGTERM || sig == libc::SIGINT {
                    return LoopEnd::Signal(Signal::try_from(sig).unwrap_or(Signal::SIGTERM));
                }
            }
            // Signal handlers may take long; look again before the next message.
            continue;
        }

        match sys::wait_readable_or_signal() {
            // A signal delivered as `poll` returned (or while the last handler ran) goes
            // before the message waiting on the socket.
            Ok(true) if sys::signals_pending() => continue,
            Ok(true) => {}
            Ok(false) => continue, // a signal: handled at the top of the loop
            Err(e) => return LoopEnd::ChannelFailed(e.to_string()),
        }

        match channel.read_into(buf) {
            Ok(true) => {}
            Ok(false) => return LoopEnd::Disconnected,
            Err(e) if e.is_disconnect() => return LoopEnd::Disconnected,
            Err(e) if !channel.is_broken() && !matches!(e, Error::TimedOut) => {
                // A malformed but complete frame: say so, and keep serving.
                let err = RemoteError::new(RemoteErrorKind::Protocol, e.to_string());
                if let Err(e) = channel.write_error(&err) {
                    return end_for(e);
                }
                continue;
            }
            Err(Error::TimedOut) => continue,
            Err(e) => return LoopEnd::ChannelFailed(e.to_string()),
        }

        let writes_before = channel.writes();
        let msg = buf.message();
        let mut ctx = Context::new(channel);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let r = server.handle(&mut ctx, msg);
            (r, ctx.quit)
        }));
        let quit = match outcome {
            Ok((Ok(()), quit)) => quit,
            Ok((Err(err), quit)) => {
                if channel.peer_gone() {
                    return LoopEnd::Disconnected;
                }
                if channel.is_broken() {
                    return LoopEnd::ChannelFailed(err.to_string());
                }
                if let Err(e) = channel.write_error(&err) {
                    return end_for(e);
                }
                quit
            }
            Err(panic) => {
                if channel.writes() != writes_before || channel.is_broken() {
                    return LoopEnd::PanickedMidReply;
                }
                let err = RemoteError::new(
                    RemoteErrorKind::Panicked,
                    format!(
                        "handler for {:?} panicked: {}",
                        String::from_utf8_lossy(buf.message().name()),
                        panic_message(&*panic)
                    ),
                );
                if let Err(e) = channel.write_error(&err) {
                    return end_for(e);
                }
                false
            }
        };
        if quit {
            return LoopEnd::Quit;
        }
        if channel.peer_gone() {
            return LoopEnd::Disconnected;
        }
        if channel.is_broken() {
            return LoopEnd::ChannelFailed("channel broken by a handler".into());
        }
    }
}

fn end_for(e: Error) -> LoopEnd {
    if e.is_disconnect() {
        LoopEnd::Disconnected
    } else {
        LoopEnd::ChannelFailed(e.to_string())
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
