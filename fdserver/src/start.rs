//! Starting a server: [`Builder`], the fork, and the child's path from `fork` to `_exit`.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::channel::Channel;
use crate::client::{ServerHandle, StopOptions};
use crate::error::{Error, RemoteError, RemoteErrorKind};
use crate::server::{LoopEnd, Server};
use crate::server_loop::{panic_message, run_loop, SignalPlan};
use crate::sys;
use crate::wire::MessageBuf;

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
///     .timeout(Some(Duration::from_secs(5)))               // each call, as a whole
///     .stop_timeouts(Duration::from_secs(1), Duration::from_secs(1))
///     .start(&mut Echo)?;
/// assert!(server.pid() > 0);
/// # Ok::<(), fdserver::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Builder {
    keep_fds: Vec<RawFd>,
    stop: StopOptions,
    timeout: Option<Duration>,
    start_timeout: Option<Duration>,
    max_scalar: Option<u64>,
    same_process_group: bool,
    /// `seqpacket(false)`: a `SOCK_STREAM` pair.
    stream: bool,
    fork_on_calling_thread: bool,
    #[cfg(feature = "sandbox")]
    sandbox: Option<crate::sandbox::Sandbox>,
}

/// The deadline every call of a started server gets unless told otherwise (30 s): a call as a
/// whole (writing the request, reading the reply and each scalar or descriptor after it,
/// however slowly the bytes come) gives up after this long with [`Error::TimedOut`], and the
/// client is then broken ([`Error::needs_restart`]). The same for the blocking and the async
/// clients, typed or raw ([`ServerHandle::call`](crate::ServerHandle::call)). Set with [`Builder::timeout`] or [`Spawn::timeout`]
/// (`None` disables it), or per client with `set_timeout`.
///
/// [`Spawn::timeout`]: crate::Spawn::timeout
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Builder {
    fn default() -> Self {
        Builder {
            keep_fds: Vec::new(),
            stop: StopOptions::default(),
            timeout: Some(DEFAULT_CALL_TIMEOUT),
            start_timeout: None,
            max_scalar: None,
            same_process_group: false,
            stream: false,
            fork_on_calling_thread: false,
            #[cfg(feature = "sandbox")]
            sandbox: None,
        }
    }
}

impl Builder {
    /// Default options: calls time out after [`DEFAULT_CALL_TIMEOUT`] (30 s), `start` waits
    /// for `initialize_server` as long as it takes, stop grace periods of 3 s + 3 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps `fd` open (under the same number) in the server. Every other inherited descriptor
    /// but 0, 1, 2 and the server's socket is released there, its number held by a tombstone
    /// on which every operation fails with `EBADF` (see the crate docs, "Descriptors").
    pub fn keep_fd(mut self, fd: &impl AsFd) -> Self {
        self.keep_fds.push(fd.as_fd().as_raw_fd());
        self
    }

    /// How long [`ServerHandle::stop`] waits after closing the connection before SIGTERM, and
    /// after SIGTERM before SIGKILL (defaults: 3 s and 3 s, as Passenger).
    ///
    /// The server keeps the same schedule itself once its client is gone, whoever closed the
    /// connection (`stop`, a dropped handle, a parent that exited or was SIGKILLed): a thread of
    /// the server (its *hang-up watch*) sends it SIGTERM `after_close` after the hang-up and
    /// SIGKILL `after_term` later, unless it has exited by then. So a server stuck in a handler
    /// never outlives its client by more than `after_close + after_term`, even when nobody can
    /// signal it (a parent that dropped privileges), and these periods also bound
    /// `finalize_server` once the client has gone. [`ServerHandle::stop_with`] can shorten
    /// the schedule for one stop, not lengthen the server's own.
    pub fn stop_timeouts(mut self, after_close: Duration, after_term: Duration) -> Self {
        self.stop = StopOptions {
            after_close,
            after_term,
        };
        self
    }

    /// The deadline of each call of the client, for the whole call (default
    /// [`DEFAULT_CALL_TIMEOUT`], 30 s); the channel's own operations get it each. A blocking
    /// call may end up to 2 ms past it (its first receive keeps the channel's deadline, so that
    /// a fast call changes no socket time-out). `None` disables it: a call then waits for its
    /// server as long as it takes, e.g. for handlers that legitimately run for minutes, or a
    /// raw channel that waits for events. A call that times out breaks the client
    /// ([`Error::needs_restart`]): the late reply would otherwise answer the next call.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use fdserver::{Context, Message, RemoteError, Server, ServerHandle};
    /// # struct Echo;
    /// # impl Server for Echo {
    /// #     type Client = ServerHandle;
    /// #     fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
    /// #         ctx.reply(msg.args())?; Ok(())
    /// #     }
    /// # }
    /// let mut server = fdserver::Builder::new().start_handle(&mut Echo)?;
    /// assert_eq!(server.channel().read_timeout(), Some(fdserver::DEFAULT_CALL_TIMEOUT));
    /// let mut patient = fdserver::Builder::new().timeout(None).start_handle(&mut Echo)?;
    /// assert_eq!(patient.channel().read_timeout(), None);
    /// # Ok::<(), fdserver::Error>(())
    /// ```
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

    /// Largest scalar each side accepts unasked (default
    /// [`DEFAULT_MAX_SCALAR`](crate::DEFAULT_MAX_SCALAR)): the server in a request, the client
    /// in raw reads of its channel. A call reads the reply it asked for at any size (see
    /// [`args`](crate::args#large-results)).
    pub fn max_scalar_size(mut self, max: u64) -> Self {
        self.max_scalar = Some(max);
        self
    }

    /// Keeps the server in this process's process group (`true`), instead of a group of its own
    /// (the default).
    ///
    /// By default a server leads a process group of its own, in the same session, so that the
    /// signals a terminal sends to the foreground job (Ctrl-C's SIGINT, Ctrl-\'s SIGQUIT, Ctrl-Z's
    /// SIGTSTP, SIGWINCH) and a `kill` of the parent's group reach the parent only: an
    /// interactive program that handles Ctrl-C itself keeps its servers. Such a server is not in
    /// the terminal's foreground job, so it ignores SIGTTIN and SIGTTOU (unless it declares
    /// them): reading from the terminal fails with `EIO` instead of stopping the server, and it
    /// may write to the terminal even with `stty tostop`. Signals meant for the parent's job that
    /// reach the server during `start`, before it has left the group, are discarded.
    ///
    /// With `true`, the server is part of the parent's job, as Passenger's servers were: Ctrl-C
    /// sends it SIGINT too (which ends its loop unless it declares a handler), Ctrl-Z stops it
    /// with the job, and its terminal access follows the job's (a background job's read stops
    /// it).
    ///
    /// ```
    /// # use fdserver::{Context, Message, RemoteError, Server, ServerHandle};
    /// # struct Echo;
    /// # impl Server for Echo {
    /// #     type Client = ServerHandle;
    /// #     fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
    /// #         ctx.reply(msg.args())?; Ok(())
    /// #     }
    /// # }
    /// let own = fdserver::Builder::new().start_handle(&mut Echo)?;
    /// let shared = fdserver::Builder::new().same_process_group(true).start_handle(&mut Echo)?;
    /// // SAFETY: getpgid and getpgrp only query process groups.
    /// unsafe {
    ///     assert_eq!(libc::getpgid(own.pid() as i32), own.pid() as i32);
    ///     assert_eq!(libc::getpgid(shared.pid() as i32), libc::getpgrp());
    /// }
    /// # Ok::<(), fdserver::Error>(())
    /// ```
    pub fn same_process_group(mut self, yes: bool) -> Self {
        self.same_process_group = yes;
        self
    }

    /// Whether the server's socket is a `SOCK_SEQPACKET` pair (`true`, the default, where the
    /// system allows it; else a `SOCK_STREAM` one) or a `SOCK_STREAM` pair (`false`).
    ///
    /// Either way the client and the server speak the same wire format (Passenger's
    /// `MessageChannel`), and both read ahead (one `recvmsg` per message). A `SOCK_SEQPACKET`
    /// socket keeps the boundary of each write, which lets a call wait in `recvmsg` without a
    /// `poll` and pass a reply and its descriptor in one record: calls are faster (see
    /// BENCHMARKS.md). What changes is visible only to code that takes the raw socket out of the
    /// channel ([`Channel::as_fd`](crate::Channel::as_fd),
    /// [`Channel::into_parts`](crate::Channel::into_parts)): a `recvmsg` on it takes one whole
    /// record (a shorter buffer loses the rest), and a write sends one record of at most 248 KiB
    /// (a longer one fails with `EMSGSIZE`). Choose `false` if you hand that socket to a program
    /// that reads it as a stream.
    ///
    /// ```
    /// # use fdserver::{Context, Message, RemoteError, Server, ServerHandle};
    /// # struct Echo;
    /// # impl Server for Echo {
    /// #     type Client = ServerHandle;
    /// #     fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
    /// #         ctx.reply(msg.args())?; Ok(())
    /// #     }
    /// # }
    /// let mut server = fdserver::Builder::new().seqpacket(false).start_handle(&mut Echo)?;
    /// assert!(!server.channel().is_seqpacket());
    /// assert_eq!(server.call(["echo", "hi"])?, ["hi"]);
    /// # Ok::<(), fdserver::Error>(())
    /// ```
    pub fn seqpacket(mut self, yes: bool) -> Self {
        self.stream = !yes;
        self
    }

    /// Forks the server from the thread that calls [`start`](Self::start) (`true`), instead of
    /// from a thread of fdserver's own (the default).
    ///
    /// By default every server is forked from a *fork thread* (one per server type, started on
    /// first use, parked between starts): the server's only thread is a copy of it, with fresh
    /// thread-locals. So a server started from a tokio worker, inside `block_on`, from a
    /// `spawn_blocking` task or a rayon pool starts with no runtime context of its parent's, and
    /// can build and use runtimes of its own (see the crate docs, "Threads and async"). This
    /// costs two thread wake-ups per start (BENCHMARKS.md, row 4f).
    ///
    /// With `true` the server is a copy of the calling thread, thread-locals included. Use it
    /// only from a thread that entered no runtime or thread pool, to save those wake-ups, or to
    /// keep a `stdout().lock()` or `stderr().lock()` guard of the calling thread usable in the
    /// server (the server then owns the copy; forked from the fork thread it finds the lock
    /// held by a thread it does not have).
    ///
    /// A server inherits the confinement of the thread it is forked from. The fork thread has
    /// that of the thread that first started a server of its type; a caller whose
    /// `no_new_privs` flag or seccomp mode differs from it is forked on its own thread anyway.
    /// A thread that confined itself alone in a way the kernel does not show (a second seccomp
    /// filter, a Landlock domain applied to one thread) should use `true`, or confine the
    /// whole process before it starts servers.
    ///
    /// ```
    /// # use fdserver::{Context, Message, RemoteError, Server, ServerHandle};
    /// # struct Echo;
    /// # impl Server for Echo {
    /// #     type Client = ServerHandle;
    /// #     fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
    /// #         ctx.reply(msg.args())?; Ok(())
    /// #     }
    /// # }
    /// let mut server = fdserver::Builder::new()
    ///     .fork_on_calling_thread(true)
    ///     .start_handle(&mut Echo)?;
    /// assert_eq!(server.call(["echo", "hi"])?, ["hi"]);
    /// # Ok::<(), fdserver::Error>(())
    /// ```
    pub fn fork_on_calling_thread(mut self, yes: bool) -> Self {
        self.fork_on_calling_thread = yes;
        self
    }

    /// Runs the server in `sandbox` (feature `sandbox`): prepared here, applied in the server
    /// after `initialize_server` and before the first message (see [`sandbox`](crate::sandbox)).
    /// `start` fails if the server declares a sandbox of its own too.
    #[cfg(feature = "sandbox")]
    pub fn sandbox(mut self, sandbox: crate::sandbox::Sandbox) -> Self {
        self.sandbox = Some(sandbox);
        self
    }

    /// Forks the server and returns its typed client.
    pub fn start<S: Server>(self, server: &mut S) -> Result<S::Client, Error> {
        self.start_handle(server).map(S::Client::from)
    }

    /// A pool's start (or restart): its wait for `initialize_server` ends by `deadline` (what
    /// is left of the checkout of the call that restarts it) and by this builder's
    /// `start_timeout`, and is never unbounded ([`DEFAULT_CALL_TIMEOUT`] when neither is set).
    pub(crate) fn bounded_start(mut self, deadline: Option<std::time::Instant>) -> Self {
        let left = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
        self.start_timeout = match (self.start_timeout, left) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b).or(Some(DEFAULT_CALL_TIMEOUT)),
        };
        self
    }

    /// Forks the server and returns the untyped handle.
    ///
    /// Fails with `InvalidInput` if this process ignores SIGCHLD (`SIG_IGN` or `SA_NOCLDWAIT`):
    /// the kernel would then reap the server itself, and neither `stop` nor a failing call could
    /// learn how it ended. Restore SIGCHLD's default disposition first.
    pub fn start_handle<S: Server>(self, server: &mut S) -> Result<ServerHandle, Error> {
        self.fork_server(server)?.ready()
    }

    /// Forks the server and returns, for a tokio runtime, its [`AsyncServerHandle`] once its
    /// `initialize_server` has succeeded (feature `tokio`). `MyServer.start_async()` is the
    /// same for an `#[fdserver]` server and returns its async client.
    ///
    /// The fork happens when this is called, blocking the calling thread until the fork thread
    /// has forked (see [`fork_on_calling_thread`](Self::fork_on_calling_thread)): it needs
    /// `server`, which the returned future does not borrow. Its cost grows with the parent's
    /// memory, as the kernel copies its page tables: it takes about 0.4 ms for a small process
    /// and about 100 ms for one with 1 GiB of touched memory on the machine in BENCHMARKS.md
    /// (see its "Start cost against heap size"). For a parent that large, start from a
    /// blocking-pool thread so the runtime thread stays free:
    /// `tokio::task::spawn_blocking(move || builder.start_async(&mut server))` forks there, and
    /// its join handle's output is the future to await for `initialize`. The wait for `initialize_server`, which may
    /// take as long as the server's initialisation does, is the returned future's: it waits
    /// through the runtime, with [`start_timeout`](Self::start_timeout). The future does not
    /// borrow `server` (it is `Send + 'static` whatever the server type). Call it inside a tokio
    /// runtime with its I/O driver.
    ///
    /// [`AsyncServerHandle`]: crate::AsyncServerHandle
    ///
    /// ```
    /// # use fdserver::{Context, Message, RemoteError, Server, ServerHandle};
    /// # struct Echo;
    /// # impl Server for Echo {
    /// #     type Client = ServerHandle;
    /// #     fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
    /// #         ctx.reply(msg.args())?; Ok(())
    /// #     }
    /// # }
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), fdserver::Error> {
    /// let mut server = fdserver::Builder::new().start_async(&mut Echo).await?;
    /// assert_eq!(server.call(["echo", "hi"]).await?, ["hi"]);
    /// server.stop().await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tokio")]
    pub fn start_async<S: Server>(
        self,
        server: &mut S,
    ) -> impl std::future::Future<Output = Result<crate::AsyncServerHandle, Error>> + Send + 'static
    {
        let forked = self.fork_server(server);
        async move { forked?.ready_async().await }
    }

    /// Everything of a start up to the fork; the wait for `["ready"]` is the caller's.
    pub(crate) fn fork_server<S: Server>(mut self, server: &mut S) -> Result<Forked, Error> {
        if sys::children_autoreaped() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "SIGCHLD is ignored in this process (SIG_IGN or SA_NOCLDWAIT), so the kernel would \
                 reap the server and its exit status would be lost; restore SIGCHLD's default \
                 disposition before starting servers",
            )));
        }
        server.before_fork();
        // The sandbox, if any, is checked and prepared here, before the fork; it takes effect in
        // the child after `initialize_server`.
        #[cfg(feature = "sandbox")]
        let sandbox = crate::sandbox::choose(self.sandbox.as_ref(), server.sandbox())?;
        #[cfg(feature = "sandbox")]
        self.keep_fds.extend(sandbox.iter().flat_map(|p| p.fds()));
        #[cfg(not(feature = "sandbox"))]
        let sandbox = ();

        // Everything the child needs is prepared here, in the parent: after the fork the child
        // must not allocate or take a lock before its loop (see the crate docs on fork safety).
        // Both ends are ours: they read ahead (see `channel::read_ahead`); their buffers are
        // allocated here, before the fork.
        let (child_end, parent_end) = Channel::owned_pair(!self.stream)?;
        let mut child = child_end;
        // Enough for the "ready" message and typical replies; larger ones grow the buffer inside
        // the loop, where allocating is the user's domain (see the crate docs on fork safety).
        child.reserve_write(4096);
        if let Some(max) = self.max_scalar {
            child.set_max_scalar_size(max);
        }
        let buf = MessageBuf::with_capacity(4096);
        self.keep_fds.push(child.socket().as_raw_fd());
        self.keep_fds.sort_unstable();
        self.keep_fds.dedup();
        let keep_fds = &self.keep_fds;
        let plan = SignalPlan::new(S::SIGNALS);
        sys::HangupWatch::prepare();

        // std's stdout and stderr are reentrant locks. One that another thread holds at the fork
        // would stay locked forever in the child (its owner does not exist there), and every
        // print, panic message and the final flush of stdout would block for good. So this
        // thread takes both across the fork, waiting for a print in progress elsewhere (see
        // the crate docs, "Fork safety"), and the child releases them at once: there their
        // owner is the child's only thread. Stdout is not flushed here: its buffer may hold a
        // partial line that a full pipe would block on; the child drops its copy instead.
        let stdio = (std::io::stdout().lock(), std::io::stderr().lock());
        let own_group = !self.same_process_group;
        let watch = hangup_watch_enabled().then_some(sys::HangupWatch {
            after_close: self.stop.after_close,
            after_term: self.stop.after_term,
        });
        // What the child takes with it, moved out of this frame in the child (see below).
        let mut for_child = Some(ChildArgs {
            channel: child,
            buf,
            fds: None,
            plan,
            setup: ChildSetup { own_group, watch },
            sandbox,
            stdio,
        });
        let server_ptr: *mut S = server;
        let mut forked = None;
        let mut fork_job = || {
            // Listed here, as late as possible: a descriptor another thread opens after the
            // listing is closed in the child, and one that a library opens for itself at that
            // moment (tokio's signal channel, created with a first runtime) would be missed.
            if let Some(args) = &mut for_child {
                args.fds = Some(InheritedFds::new(keep_fds));
            }
            let all = sys::sigset(true);
            let old_mask = sys::set_sigmask(&all);
            // SAFETY: before handing control to the user's server, the child branch below
            // makes only async-signal-safe calls (setpgid, sigaction, open, dup3, close_range,
            // fcntl, socketpair, pthread_sigmask; std's flush of its stdout buffer into a closed
            // descriptor and its reentrant unlock, on locks taken for this fork), plus one
            // `pthread_create` (the hang-up watch), which glibc supports in a forked child; and
            // it never returns: it ends in `_exit`.
            let pid = unsafe { sys::fork() };
            if let Ok(0) = pid {
                // Child. Never returns. Everything it uses is first moved out of the caller's
                // frame onto this thread's stack: the caller's thread does not exist here, and
                // glibc hands its stack to the next thread the server creates (it reclaims the
                // stacks of a forked process's missing threads), which would overwrite the
                // server value under the loop. Nothing in the caller's frame is used after
                // this, and nothing there is dropped (the child ends in `_exit`).
                let args = for_child.take().expect("taken once");
                // SAFETY: a bitwise move of the server value: the caller's copy is never used
                // nor dropped in this process (the parent keeps its own, untouched).
                let mut server = unsafe { std::ptr::read(server_ptr) };
                child_start(&mut server, args)
            }
            sys::set_sigmask(&old_mask);
            forked = Some(pid);
        };
        // Forked from a thread of fdserver's own (see `fork_thread`), unless asked otherwise:
        // the server must not inherit the calling thread's thread-locals (an async runtime's
        // context). The job's parent side only forks and records the result while this thread
        // waits; its child side runs where it is the only thread, so that the values it takes
        // from this thread (the server value, the stdio guards) are used by one thread only.
        // A caller confined otherwise than the fork thread forks itself (see `fork_thread`).
        let ran = if self.fork_on_calling_thread {
            fork_job();
            Ok(())
        } else {
            match crate::fork_thread::run_on_fork_thread(std::any::type_name::<S>(), &mut fork_job)
            {
                Ok(true) => Ok(()),
                Ok(false) => {
                    fork_job();
                    Ok(())
                }
                Err(e) => Err(e),
            }
        };
        let ChildArgs {
            channel: child,
            buf,
            stdio,
            sandbox,
            ..
        } = for_child.expect("the parent keeps them");
        #[cfg(not(feature = "sandbox"))]
        let () = sandbox;
        drop(stdio);
        let pid = match (ran, forked) {
            (Ok(()), Some(Ok(pid))) => pid,
            (Ok(()), Some(Err(e))) | (Err(e), _) => return Err(Error::Io(e)),
            (Ok(()), None) => unreachable!("the fork job ran"),
        };
        drop(child);
        drop(buf);
        let mut channel = parent_end;
        channel.set_timeout(self.timeout);
        if let Some(max) = self.max_scalar {
            channel.set_max_scalar_size(max);
        }
        let handle = ServerHandle::new(pid, channel, self.stop)?;
        Ok(Forked {
            handle,
            start_timeout: self.start_timeout,
            server: std::any::type_name::<S>(),
            #[cfg(feature = "sandbox")]
            sandbox,
        })
    }
}

/// A server just forked, before its `["ready"]`.
pub(crate) struct Forked {
    handle: ServerHandle,
    start_timeout: Option<Duration>,
    /// The server's type, for traces.
    server: &'static str,
    #[cfg(feature = "sandbox")]
    sandbox: SandboxStage,
}

impl Forked {
    /// Waits (blocking) for `["ready"]`.
    pub(crate) fn ready(self) -> Result<ServerHandle, Error> {
        let Forked {
            mut handle,
            start_timeout,
            server,
            #[cfg(feature = "sandbox")]
            sandbox,
        } = self;
        let ready = handle.await_ready(start_timeout);
        #[cfg(feature = "sandbox")]
        let ready = ready.map_err(crate::sandbox::ready_error);
        if let Err(e) = ready {
            crate::trace::start_failed(server, &e);
            return Err(e);
        }
        #[cfg(feature = "sandbox")]
        {
            handle.sandbox = sandbox.map(|p| Box::new(p.into_report()));
        }
        crate::trace::started(handle.pid(), server);
        Ok(handle)
    }

    /// Waits for `["ready"]` through the tokio runtime.
    #[cfg(feature = "tokio")]
    async fn ready_async(self) -> Result<crate::AsyncServerHandle, Error> {
        let Forked {
            handle,
            start_timeout,
            server,
            #[cfg(feature = "sandbox")]
            sandbox,
        } = self;
        #[cfg(feature = "sandbox")]
        let mut handle = handle;
        #[cfg(feature = "sandbox")]
        {
            handle.sandbox = sandbox.map(|p| Box::new(p.into_report()));
        }
        let mut handle = crate::AsyncServerHandle::new(handle)?;
        let ready = handle.await_ready(start_timeout).await;
        #[cfg(feature = "sandbox")]
        let ready = ready.map_err(crate::sandbox::ready_error);
        if let Err(e) = ready {
            crate::trace::start_failed(server, &e);
            return Err(e);
        }
        crate::trace::started(handle.pid(), server);
        Ok(handle)
    }
}

/// What a forked server does with the descriptors it inherits, decided in the parent.
///
/// Every inherited descriptor but 0, 1, 2, the server's socket and those given to
/// [`Builder::keep_fd`] is released in the child: a leaked socket end there would keep its peer
/// from ever seeing end of stream. But the server value, copied by `fork`, may own some of them
/// (a `File` opened before `start`); closing them would let the child's next `open` reuse the
/// number, and that value would then read and write another file through safe code. So each
/// one is replaced by a *tombstone* (`dup3` of an `O_PATH` descriptor of `/dev/null`): the file
/// is released all the same, the number stays taken, and every operation through it fails with
/// `EBADF`. Descriptors opened by other threads after this list was made cannot belong to the
/// server value (it is borrowed by `start`): they are simply closed.
struct InheritedFds {
    /// Open in the parent when listed, not kept: tombstoned in the child.
    tombs: Vec<RawFd>,
    /// In-process channels (both ends inherited, non-blocking): recreated in the child.
    channels: Vec<sys::InProcess>,
    /// `keep`, `tombs` and the channels' descriptors, sorted: what the final `close_range`
    /// sweep spares.
    spare: Vec<RawFd>,
    /// `keep` and the channels' descriptors, sorted: what it spares with no tombstone.
    spare_untombed: Vec<RawFd>,
}

impl InheritedFds {
    fn new(keep: &[RawFd]) -> Self {
        let mut tombs = Vec::new();
        let mut channels = Vec::new();
        if tombstones_enabled() {
            sys::list_open_fds(&mut tombs);
            tombs.retain(|&fd| fd > 2 && keep.binary_search(&fd).is_err());
            // An event loop's wake-up channel (tokio's signal self-pipe, a waker pipe) whose
            // both ends the parent holds: the server gets a private one at the same numbers, so
            // that a runtime it builds finds a working channel there, not a tombstone (nor the
            // parent's channel, whose wake-ups the two processes would steal from each other).
            let kinds: Vec<sys::FdKind> = tombs.iter().filter_map(|&fd| sys::fd_kind(fd)).collect();
            sys::in_process_channels(&kinds, &mut channels);
            let paired: Vec<RawFd> = channels.iter().flat_map(sys::InProcess::fds).collect();
            tombs.retain(|fd| !paired.contains(fd));
        }
        let mut spare: Vec<RawFd> = keep
            .iter()
            .chain(&tombs)
            .copied()
            .chain(channels.iter().flat_map(sys::InProcess::fds))
            .collect();
        spare.sort_unstable();
        spare.dedup();
        let mut spare_untombed: Vec<RawFd> = keep
            .iter()
            .copied()
            .chain(channels.iter().flat_map(sys::InProcess::fds))
            .collect();
        spare_untombed.sort_unstable();
        spare_untombed.dedup();
        InheritedFds {
            tombs,
            channels,
            spare,
            spare_untombed,
        }
    }

    /// In the child: recreates the in-process channels, tombstones, then closes everything
    /// else above 2 that is not kept. Async-signal-safe. Without `/dev/null` (an unusual
    /// chroot), falls back to closing.
    fn apply(&self) {
        let tomb = (!self.tombs.is_empty() || !self.channels.is_empty())
            .then(sys::open_tombstone)
            .flatten();
        for channel in &self.channels {
            if channel.recreate().is_err() {
                // No descriptor left for a new channel: the numbers become tombstones (or, with
                // no tombstone either, are closed by the sweep below).
                for fd in channel.fds() {
                    match tomb {
                        Some(tomb) => sys::tombstone(tomb, fd),
                        None => sys::close_raw(fd),
                    }
                }
            }
        }
        let Some(tomb) = tomb else {
            // Keep the recreated channels; close the rest.
            sys::close_fds_except(&self.spare_untombed);
            return;
        };
        for &fd in &self.tombs {
            sys::tombstone(tomb, fd);
        }
        // Also closes `tomb` itself, unless its number was in the list (closed by another
        // thread after the listing, so that the tombstone now sits there as it should).
        sys::close_fds_except(&self.spare);
        if tomb <= 2 {
            sys::close_raw(tomb);
        }
    }
}

/// The signals a terminal sends to its foreground job (and SIGTTIN/SIGTTOU, sent to background
/// jobs that touch it): discarded in a server that leaves the parent's process group.
const JOB_SIGNALS: [libc::c_int; 7] = [
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGWINCH,
    libc::SIGHUP,
];

/// What the child does besides serving: leave the parent's process group, and the hang-up
/// watch it starts (`None` only when the bench turns it off).
struct ChildSetup {
    own_group: bool,
    watch: Option<sys::HangupWatch>,
}

/// What the child takes from the parent's `start`.
struct ChildArgs<'a> {
    channel: Channel,
    buf: MessageBuf,
    /// Listed by the fork job just before the fork.
    fds: Option<InheritedFds>,
    plan: SignalPlan,
    setup: ChildSetup,
    sandbox: SandboxStage,
    stdio: (std::io::StdoutLock<'a>, std::io::StderrLock<'a>),
}

/// The child's first steps: releases the stdio locks taken for the fork, then `child_main`.
fn child_start<S: Server>(server: &mut S, args: ChildArgs<'_>) -> ! {
    let ChildArgs {
        channel,
        mut buf,
        fds,
        plan,
        setup,
        mut sandbox,
        stdio: (mut out, err),
    } = args;
    // The parent's pending partial line is in this copy of stdout's buffer; the parent writes
    // it. Empty the copy without writing it (std counts `EBADF` on stdout as written), or the
    // server's own first flush would repeat it. Then unlock both: their owner (the thread that
    // took them for the fork) does not exist here; unlocking a std lock from another thread is
    // a counter decrement and a futex store.
    sys::with_stdout_closed(|| {
        let _ = out.flush();
    });
    drop(out);
    drop(err);
    let fds = fds.expect("listed before the fork");
    child_main(server, channel, &mut buf, &fds, &plan, setup, &mut sandbox)
}

/// The forked child, from just after `fork` to `_exit`.
fn child_main<S: Server>(
    server: &mut S,
    mut channel: Channel,
    buf: &mut MessageBuf,
    fds: &InheritedFds,
    plan: &SignalPlan,
    setup: ChildSetup,
    sandbox: &mut SandboxStage,
) -> ! {
    let ChildSetup { own_group, watch } = setup;
    // 0. A process group of its own (see `Builder::same_process_group`). A signal the terminal
    //    sent to the parent's job before that is pending here (everything is blocked): meant for
    //    the parent, it is discarded (setting a signal to "ignore" drops its pending instances).
    //    SIGTTIN and SIGTTOU stay ignored: outside the foreground job, a read from the terminal
    //    fails with EIO instead of stopping the server.
    let mut preset = plan.preset;
    if own_group {
        let _ = sys::new_process_group();
        for sig in JOB_SIGNALS {
            let _ = sys::set_disposition(sig, sys::Disposition::Ignore);
        }
        for sig in [libc::SIGTTIN, libc::SIGTTOU] {
            if !plan.declares(sig) {
                preset |= 1 << sig; // left ignored by the reset below
            }
        }
    }
    // 1. Signals: every disposition back to default, SIGHUP ignored unless the server handles
    //    it (Passenger ignored it after installing the user's handlers, so theirs never ran).
    sys::reset_signal_dispositions(plan.sigmax, preset);
    if !plan.declares(libc::SIGHUP) {
        let _ = sys::set_disposition(libc::SIGHUP, sys::Disposition::Ignore);
    }
    // As in every Rust program (std ignores it before `main`): writing to a closed pipe or
    // socket is an EPIPE error for the handler, not death by SIGPIPE.
    if !plan.declares(libc::SIGPIPE) {
        let _ = sys::set_disposition(libc::SIGPIPE, sys::Disposition::Ignore);
    }
    // 2. Descriptors: only 0, 1, 2, our socket and what the caller asked to keep stay usable.
    fds.apply();
    // 2b. The hang-up watch: once the client is gone (closed, exited, SIGKILLed), this process
    //     ends on `stop`'s schedule even if a handler never returns and nobody can signal it.
    //     Its thread starts while every signal is blocked, and keeps them blocked. A server
    //     with a sandbox starts it later, inside the sandbox (whose per-thread layers need a
    //     single thread, and which the watch must not escape): see `apply_sandbox`.
    let watch_now = if sandbox_is_active(sandbox) {
        None
    } else {
        watch
    };
    if let Err(e) = watch_now.map_or(Ok(()), |w| w.start(channel.socket(), false)) {
        let _ = channel.write_error(&RemoteError::new(
            RemoteErrorKind::Initialize,
            format!("the server cannot start its hang-up watch thread: {e}"),
        ));
        sys::exit_now(1)
    }
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
            // The sandbox takes effect here: after initialize_server, which could still open
            // what the server needs, and before the first message.
            let sock = channel.socket().as_raw_fd();
            let start_watch = || match watch {
                // SAFETY: `sock` is this server's socket, open until `_exit`.
                Some(w) => w.start(unsafe { std::os::fd::BorrowedFd::borrow_raw(sock) }, true),
                None => Ok(()),
            };
            if let Err(e) = apply_sandbox(sandbox, start_watch) {
                let _ = channel.write_error(&e);
                finish(server, 1)
            }
            match channel.write_array(["ready"]) {
                Ok(()) => {}
                // The parent is gone already.
                Err(Error::Disconnected) => finish(server, 0),
                // Something in the server refuses the runtime its socket (a filter of its
                // own, its sandbox): fail, saying why where `start` can read it.
                Err(e) => {
                    ready_unsent(channel.socket().as_raw_fd(), &e);
                    finish(server, 1)
                }
            }
            let end = run_loop(server, &mut channel, buf, plan);
            report_failed_end::<S>(&end);
            // The client sees end of stream now, but the socket stays open until `_exit`:
            // the hang-up watch still waits on it (its descriptor number must not be reused),
            // and bounds `finalize_server` once the client is gone.
            sys::shutdown(channel.socket(), libc::SHUT_WR);
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

/// The prepared sandbox the child applies (nothing without the `sandbox` feature).
#[cfg(feature = "sandbox")]
type SandboxStage = Option<crate::sandbox::Prepared>;
#[cfg(not(feature = "sandbox"))]
type SandboxStage = ();

/// Applies the sandbox, if any; `start_watch` starts the hang-up watch inside it, after its
/// per-thread layers and before seccomp (which covers every thread).
#[cfg(feature = "sandbox")]
fn apply_sandbox(
    sandbox: &mut SandboxStage,
    start_watch: impl FnOnce() -> std::io::Result<()>,
) -> Result<(), RemoteError> {
    crate::sandbox::apply_in_child(sandbox, start_watch)
}

#[cfg(not(feature = "sandbox"))]
fn apply_sandbox(
    _: &mut SandboxStage,
    _: impl FnOnce() -> std::io::Result<()>,
) -> Result<(), RemoteError> {
    Ok(())
}

/// Whether a sandbox will be applied (the hang-up watch then starts inside it).
#[cfg(feature = "sandbox")]
fn sandbox_is_active(sandbox: &SandboxStage) -> bool {
    crate::sandbox::is_active(sandbox)
}

#[cfg(not(feature = "sandbox"))]
fn sandbox_is_active(_: &SandboxStage) -> bool {
    false
}

/// Tells the parent that `["ready"]` could not be sent (and why): as an `initialize` error
/// reply written with plain `write`, which a filter that refused `sendmsg` may still allow, or
/// else on stderr.
fn ready_unsent(sock: RawFd, e: &Error) {
    let text = format!(
        "the server (pid {}) could not send its \"ready\" message after initialize_server and \
         its sandbox: {e}; something in the server refuses fdserver's runtime a system call it \
         needs (a seccomp filter installed in initialize_server? Seccomp::RUNTIME lists the \
         runtime's calls)",
        std::process::id()
    );
    let mut frame = Vec::new();
    let kind = RemoteErrorKind::Initialize;
    let sent = crate::wire::encode_array(&mut frame, ["error", kind.as_str(), &text]).is_ok()
        && sys::write_raw(sock, &frame);
    if !sent {
        sys::write_raw(2, format!("fdserver: {text}\n").as_bytes());
    }
}

/// Writes why the loop closed the connection, for a loop that failed (a handler's `Err` or
/// panic after it had begun its reply, a stream that cannot be resynchronised), to the server's
/// stderr: its client only sees the connection end and the exit status, and nobody else learns
/// the handler's error text. Once, prefixed with the server's type and pid.
fn report_failed_end<S: Server>(end: &LoopEnd) {
    let why = match end {
        LoopEnd::ChannelFailed(why) => why.as_str(),
        LoopEnd::PanickedMidReply => {
            "a handler panicked after it had begun its reply (its panic message is above); the \
             connection was closed"
        }
        LoopEnd::Disconnected | LoopEnd::Quit | LoopEnd::Signal(_) => return,
    };
    let line = format!(
        "fdserver {} (pid {}): {why}\n",
        std::any::type_name::<S>(),
        std::process::id()
    );
    sys::write_raw(2, line.as_bytes());
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

/// Turns the runtime's costlier protections off, for `benches/compare.rs` alone, which measures
/// what they cost (see `__private::bench_hardening`).
static NO_HANGUP_WATCH: AtomicBool = AtomicBool::new(false);
static NO_TOMBSTONES: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_bench_hardening(hangup_watch: bool, tombstones: bool) {
    NO_HANGUP_WATCH.store(!hangup_watch, Ordering::SeqCst);
    NO_TOMBSTONES.store(!tombstones, Ordering::SeqCst);
}

fn tombstones_enabled() -> bool {
    !NO_TOMBSTONES.load(Ordering::Relaxed)
}

fn hangup_watch_enabled() -> bool {
    !NO_HANGUP_WATCH.load(Ordering::Relaxed)
}
