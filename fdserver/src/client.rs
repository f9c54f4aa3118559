//! The client side of a forked server: [`ServerHandle`].

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use crate::channel::Channel;
use crate::error::{Error, Operation, ProtocolError};
use crate::reaper::{self, Escalation};
use crate::signal::Signal;
use crate::sys;
use crate::wire::MessageBuf;

/// How long a call that hit end of stream waits for the server process to finish exiting, so
/// that it can report the exit status instead of a bare "disconnected". The kernel closes a dying
/// process's sockets moments before it becomes a zombie; this only covers that gap.
const EXIT_SETTLE: Duration = Duration::from_secs(1);

/// Grace periods for [`ServerHandle::stop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopOptions {
    /// How long to wait for the server to exit after closing its connection, before SIGTERM.
    pub after_close: Duration,
    /// How long to wait after SIGTERM before SIGKILL.
    pub after_term: Duration,
}

impl Default for StopOptions {
    fn default() -> Self {
        StopOptions {
            after_close: Duration::from_secs(3),
            after_term: Duration::from_secs(3),
        }
    }
}

/// What it took to stop a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// It had already exited before `stop` (crash, `quit`, kill).
    AlreadyExited,
    /// It exited by itself once its connection was closed.
    Graceful,
    /// It did not exit within the first grace period, and exited after SIGTERM.
    Terminated,
    /// It exited within neither grace period and was killed with SIGKILL: code of the server (a
    /// handler, a signal handler, a hook) did not return in time. SIGTERM is not ignored, but
    /// acted on only once the running code returns.
    Killed,
}

/// How a server ended: returned by [`ServerHandle::stop`].
///
/// Its `Display` says what happened:
///
/// ```
/// use std::os::unix::process::ExitStatusExt;
/// use std::process::ExitStatus;
/// use fdserver::{Shutdown, StopOptions, Stopped};
///
/// let stopped = Stopped {
///     status: ExitStatus::from_raw(9), // killed by signal 9
///     how: Shutdown::Killed,
///     grace: StopOptions::default(),
/// };
/// assert_eq!(
///     stopped.to_string(),
///     "server did not exit within 3s of its connection closing nor within 3s of SIGTERM \
///      (a handler or hook did not return), so it was killed with SIGKILL (signal: 9 (SIGKILL))"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// The exit status the server was reaped with.
    pub status: ExitStatus,
    /// What `stop` had to do.
    pub how: Shutdown,
    /// The grace periods `stop` gave the server.
    pub grace: StopOptions,
}

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let StopOptions {
            after_close,
            after_term,
        } = self.grace;
        match self.how {
            Shutdown::AlreadyExited => f.write_str("server had already exited")?,
            Shutdown::Graceful => f.write_str("server exited after its connection closed")?,
            Shutdown::Terminated => write!(
                f,
                "server did not exit within {after_close:?} of its connection closing, and \
                 exited after SIGTERM"
            )?,
            Shutdown::Killed => write!(
                f,
                "server did not exit within {after_close:?} of its connection closing nor \
                 within {after_term:?} of SIGTERM (a handler or hook did not return), so it was \
                 killed with SIGKILL"
            )?,
        }
        write!(f, " ({})", self.status)
    }
}

/// The parent's handle on a forked server: its pid, its connection, and how to stop it.
///
/// A handle always refers to a started server ("not started" and "already started" cannot be
/// expressed), and [`stop`](Self::stop) consumes it. Dropping the handle stops the server the same
/// way, but returns at once: it closes the connection, and fdserver's *reaper* (one thread for
/// every server of the process, started on first use) finishes the escalation in the background
/// (SIGTERM, SIGKILL, reap), so dropping a client never blocks, not even a runtime's thread. The
/// server is always reaped: no zombie is left behind. A program that exits while stops are
/// still under way leaves no zombie either: each orphaned server is reaped by whoever adopts it
/// (init, or the nearest child subreaper), and a forked server ends itself on the same schedule
/// once its connection is gone (its hang-up watch, see [`Builder::stop_timeouts`]); a server
/// program started with [`Spawn`](crate::Spawn) has no such watch and ends when it sees the end
/// of its connection, unless a handler keeps it busy.
///
/// [`Builder::stop_timeouts`]: crate::Builder::stop_timeouts
///
/// When the server has died, the next call fails within milliseconds with
/// [`Error::ServerExited`] carrying its exit status, rather than hanging.
pub struct ServerHandle {
    pid: libc::pid_t,
    /// `None` only once `Drop` handed the server to the reaper.
    exit: Option<sys::ExitWatch>,
    channel: Option<Channel>,
    status: Option<ExitStatus>,
    stop: StopOptions,
    reply: MessageBuf,
    /// What the server's sandbox enforces (set by `start`).
    #[cfg(feature = "sandbox")]
    pub(crate) sandbox: Option<Box<crate::sandbox::SandboxReport>>,
}

impl ServerHandle {
    pub(crate) fn new(
        pid: libc::pid_t,
        channel: Channel,
        stop: StopOptions,
    ) -> Result<Self, Error> {
        let exit = match sys::ExitWatch::new(pid) {
            Ok(watch) => watch,
            Err(e) => {
                // Without a way to wait for it we cannot supervise the child: end it now.
                // SAFETY: `pid` is our unreaped child, so the number cannot have been recycled.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = sys::reap(pid);
                return Err(Error::Io(e));
            }
        };
        Ok(ServerHandle {
            pid,
            exit: Some(exit),
            channel: Some(channel),
            status: None,
            stop,
            reply: MessageBuf::new(),
            #[cfg(feature = "sandbox")]
            sandbox: None,
        })
    }

    /// Waits for the child's `["ready"]` (or its initialisation error).
    pub(crate) fn await_ready(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let channel = self.channel.as_mut().expect("channel present until stop");
        let saved = channel.read_timeout();
        channel.set_read_timeout(timeout);
        let buf = &mut self.reply;
        let r = channel.read_into(buf);
        channel.set_read_timeout(saved);
        let result = match r {
            Ok(true) if buf.message().name() == b"ready" => return Ok(()),
            Err(Error::TimedOut { .. }) => {
                Error::timed_out(Operation::Start, timeout.unwrap_or_default())
            }
            Ok(true) => match crate::channel::check_reply(buf.message()) {
                Err(e) => e,
                Ok(()) => Error::Protocol(ProtocolError::BadReply("expected \"ready\"".into())),
            },
            Ok(false) => Error::Disconnected,
            Err(e) => e,
        };
        // Failed start: make sure the child is gone and reaped, then report.
        let err = self.exit_error(result);
        if self.status.is_none() {
            let _ = self.kill_and_reap();
        }
        Err(err)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// A descriptor that becomes readable once the server has exited, e.g. to wait on it in an
    /// event loop: its pidfd, or where the system has none (kernels before 5.3, valgrind) a pipe
    /// that a watcher thread closes when the server exits. Either way the server stays unreaped
    /// until this handle reaps it.
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
    /// let server = Echo.start()?;
    /// use std::os::fd::AsRawFd;
    /// let fd = server.pidfd().as_raw_fd();
    /// let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    /// // SAFETY: one valid pollfd; zero timeout.
    /// assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 0, "still running");
    /// # server.stop()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn pidfd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.watch().fd()
    }

    /// The exit watch (present until `Drop`).
    fn watch(&self) -> &sys::ExitWatch {
        self.exit.as_ref().expect("exit watch present until drop")
    }

    /// The raw channel to the server, for messages, scalars and descriptors the typed API does
    /// not cover. Prefer [`with_channel`](Self::with_channel), which turns a dead server into
    /// [`Error::ServerExited`].
    pub fn channel(&mut self) -> &mut Channel {
        self.channel.as_mut().expect("channel present until stop")
    }

    /// Sets the deadline of each call, for the whole call (request, reply and whatever follows
    /// it); raw operations on [`channel`](Self::channel) get it each. `None`: wait forever.
    /// A call that times out waiting for its reply leaves the reply in flight, so the channel is
    /// then marked broken: stop the server and start a new one.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.channel().set_timeout(timeout);
    }

    /// Runs `f` on the channel; if it fails because the server went away, the error becomes
    /// [`Error::ServerExited`] with the server's exit status. If it times out, the channel is
    /// marked broken, since the reply may still arrive and would be read by the next call. Once the server is known to have
    /// exited, `f` is not run at all.
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
    /// let mut server = Echo.start()?;
    /// let reply = server.with_channel(|ch| {
    ///     ch.write_array(["echo", "a", "b"])?;
    ///     let mut buf = fdserver::MessageBuf::new();
    ///     Ok(ch.read_reply(&mut buf)?.to_strings()?)
    /// })?;
    /// assert_eq!(reply, ["ok", "a", "b"]);
    /// # Ok::<(), fdserver::Error>(())
    /// ```
    pub fn with_channel<R>(
        &mut self,
        f: impl FnOnce(&mut Channel) -> Result<R, Error>,
    ) -> Result<R, Error> {
        if let Some(status) = self.status {
            return Err(Error::ServerExited(status));
        }
        let r = f(self.channel());
        if let Err(Error::TimedOut { message, .. }) = &r {
            // The reply may still come: the next call would read it as its own.
            let call = message.clone();
            self.channel().mark_late_reply(call);
        }
        r.map_err(|e| self.exit_error(e))
    }

    /// Sends `request` (`[name, args...]`) and returns the values of the `["ok", values...]`
    /// reply as strings; an error reply becomes [`Error::Remote`], a time-out an
    /// [`Error::TimedOut`] naming the message.
    pub fn call<I, T>(&mut self, request: I) -> Result<Vec<String>, Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        if let Some(status) = self.status {
            return Err(Error::ServerExited(status));
        }
        let mut buf = std::mem::take(&mut self.reply);
        // The name is kept to name the call in a time-out.
        let mut request = request.into_iter();
        let name = request.next();
        let elements = name
            .iter()
            .map(Either::Left)
            .chain(request.map(Either::Right));
        let label = name.as_ref().map_or("", |n| {
            std::str::from_utf8(n.as_ref()).unwrap_or("<not UTF-8>")
        });
        let pid = Some(self.pid as u32);
        // The span's outcome is what the caller gets (after `exit_error`).
        let r = crate::trace::call(label, pid, || {
            let channel = self.channel.as_mut().expect("channel present until stop");
            // One deadline for the whole call (request and reply), however the reply trickles.
            let clock = crate::__private::CallClock::start(channel);
            let r = clock.arm_or_fail(channel).and_then(|()| {
                channel.write_array(elements)?;
                clock.arm_or_fail(channel)?;
                // The reply this call asked for arrives at any size (an `ok_scalar` body is
                // not held to the limit on what arrives unasked).
                let limit = channel.max_scalar_size();
                channel.set_max_scalar_size(crate::channel::REPLY_MAX_SCALAR);
                let msg = channel.read_reply(&mut buf);
                channel.set_max_scalar_size(limit);
                let strings = msg?.to_strings()?;
                Ok(strings.into_iter().skip(1).collect())
            });
            let r = clock
                .finish(channel, r)
                .map_err(|e| e.in_call(name.as_ref().map_or(&[], AsRef::as_ref)));
            if let Err(Error::TimedOut { message, .. }) = &r {
                channel.mark_late_reply(message.clone());
            }
            r.map_err(|e| self.exit_error(e))
        });
        self.reply = buf;
        r
    }

    /// Sends a signal to the server (through its pidfd, or to its pid, which cannot have been
    /// recycled while the handle has not reaped it).
    pub fn signal(&self, signal: Signal) -> Result<(), Error> {
        if self.status.is_some() {
            return Ok(());
        }
        self.watch().kill(signal as i32).map_err(Error::Io)
    }

    /// Takes the connection out (for the async handle, which drives it on a runtime): from then
    /// on this handle is the process only.
    #[cfg(feature = "tokio")]
    pub(crate) fn take_channel(&mut self) -> Channel {
        self.channel.take().expect("channel present until stop")
    }

    /// The grace periods `stop` gives the server.
    #[cfg(feature = "tokio")]
    pub(crate) fn stop_options(&self) -> StopOptions {
        self.stop
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn set_stop_options(&mut self, options: StopOptions) {
        self.stop = options;
    }

    /// Why this handle can no longer carry calls, if it cannot: its connection is broken or its
    /// peer gone, or its server is known to have exited. Makes no system call.
    pub(crate) fn unusable_reason(&self) -> Option<String> {
        if let Some(status) = self.status {
            return Some(format!("server exited ({status})"));
        }
        match &self.channel {
            None => Some("connection closed".into()),
            Some(c) if c.is_broken() => Some("connection broken by an earlier error".into()),
            Some(c) if c.peer_gone() => Some("the server closed the connection".into()),
            Some(_) => None,
        }
    }

    /// If the server has exited, reaps it and returns its status; never blocks.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, Error> {
        if self.status.is_none() {
            if let Some(raw) = sys::try_reap(self.pid)? {
                self.reaped(raw);
            }
        }
        Ok(self.status)
    }

    /// Records the status of the server, reaped here (not by a stop): traced as stopped.
    fn reaped(&mut self, raw: i32) {
        let status = ExitStatus::from_raw(raw);
        self.status = Some(status);
        crate::trace::stopped(
            self.pid as u32,
            &Stopped {
                status,
                how: Shutdown::AlreadyExited,
                grace: self.stop,
            },
        );
    }

    /// Turns a disconnect into `ServerExited` when the server is (about to be) dead.
    fn exit_error(&mut self, e: Error) -> Error {
        if !e.is_disconnect() && !matches!(e, Error::Broken { .. }) {
            return e;
        }
        if let Some(status) = self.status {
            return Error::ServerExited(status);
        }
        if matches!(e, Error::Broken { .. }) {
            return e;
        }
        match self.wait_exit(Some(Instant::now() + EXIT_SETTLE)) {
            Ok(Some(status)) => Error::ServerExited(status),
            _ => e,
        }
    }

    /// Waits (on [`pidfd`](Self::pidfd), without polling loops) until the server exits or the deadline passes,
    /// and reaps it.
    fn wait_exit(&mut self, deadline: Option<Instant>) -> Result<Option<ExitStatus>, Error> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        if sys::wait_fd(self.watch().fd(), libc::POLLIN, deadline)? {
            let raw = sys::reap(self.pid)?;
            self.reaped(raw);
        }
        Ok(self.status)
    }

    /// Ends the connection and lets the child run on, unsupervised: nothing waits for it, signals
    /// it or reaps it here any more (whoever adopts it when this process exits does). For the
    /// preloader's server, whose templates finish their running commands after it exits.
    pub(crate) fn detach(mut self) {
        self.hang_up();
        // Nothing left to stop: `Drop` stops only a server whose status is unknown.
        self.status = Some(ExitStatus::from_raw(0));
    }

    /// Ends the connection for every copy of our end (`shutdown`, then `close`): the server sees
    /// end of stream, and its hang-up watch starts its own stop schedule.
    fn hang_up(&mut self) {
        if let Some(channel) = self.channel.take() {
            sys::shutdown(channel.socket(), libc::SHUT_RDWR);
        }
    }

    /// SIGKILL and reap. If this process may not signal the server any more (`EPERM` after a
    /// privilege drop), it hangs up instead (SIGCONT first: allowed within a session, it wakes
    /// a stopped server) and waits for the server's hang-up watch, which kills it on its own
    /// schedule.
    fn kill_and_reap(&mut self) -> Result<ExitStatus, Error> {
        if self.watch().kill(libc::SIGKILL).is_err() {
            let _ = self.watch().kill(libc::SIGCONT);
            self.hang_up();
        }
        Ok(self.wait_exit(None)?.expect("waited without deadline"))
    }

    /// Stops the server: ends the connection (the server sees end of stream and exits), waits up
    /// to the first grace period, sends SIGTERM, waits up to the second, sends SIGKILL, and reaps
    /// it. Returns how it ended.
    ///
    /// The connection is shut down, not just closed, so the server sees it end even if another
    /// process holds a copy of this end of the socket.
    ///
    /// `stop` does not return while the server runs. If this process can no longer signal the
    /// server (`EPERM`, e.g. after dropping privileges), it waits instead for the server's own
    /// hang-up watch, which follows the same schedule from the moment the connection ended (see
    /// [`Builder::stop_timeouts`](crate::Builder::stop_timeouts)). It fails only if the server
    /// cannot be waited for or reaped (something else in this process reaped it), and then the
    /// server has already exited: nothing is left behind. [`Stopped::how`] is
    /// [`Shutdown::Graceful`] if the server exited within the first grace period,
    /// [`Shutdown::Killed`] if it ended by SIGKILL, [`Shutdown::Terminated`] otherwise.
    ///
    /// ```
    /// # use fdserver::{Context, Message, RemoteError, Server, ServerHandle, Shutdown};
    /// # struct Echo;
    /// # impl Server for Echo {
    /// #     type Client = ServerHandle;
    /// #     fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
    /// #         ctx.reply(msg.args())?; Ok(())
    /// #     }
    /// # }
    /// let server = Echo.start()?;
    /// let stopped = server.stop()?;
    /// assert_eq!(stopped.how, Shutdown::Graceful);
    /// assert_eq!(stopped.status.code(), Some(0));
    /// # Ok::<(), fdserver::Error>(())
    /// ```
    pub fn stop(mut self) -> Result<Stopped, Error> {
        self.stop_inner()
    }

    /// [`stop`](Self::stop) with other grace periods. The server's own hang-up watch keeps the
    /// periods it was started with, so longer ones here do not give it more time.
    pub fn stop_with(mut self, options: StopOptions) -> Result<Stopped, Error> {
        self.stop = options;
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<Stopped, Error> {
        match self.begin_stop()? {
            Ok(stopped) => Ok(stopped),
            Err(escalation) => escalation.run_blocking(),
        }
    }

    /// The start of every stop: reaps a server that already exited, or closes the connection
    /// and returns the rest of the escalation (SIGTERM, SIGKILL, reap), to be driven by the
    /// caller or by the reaper. The handle keeps no exit watch afterwards unless it already
    /// knew the status.
    pub(crate) fn begin_stop(&mut self) -> Result<Result<Stopped, Escalation>, Error> {
        self.begin_stop_then(|| {})
    }

    /// [`begin_stop`](Self::begin_stop), with `hang_up` run where the connection is closed
    /// (the async handle's connection is not this handle's).
    pub(crate) fn begin_stop_then(
        &mut self,
        hang_up: impl FnOnce(),
    ) -> Result<Result<Stopped, Escalation>, Error> {
        let already = self.status.is_some() || self.try_wait()?.is_some();
        // Deadlines count from before the hang-up: the server's watch starts its own schedule
        // only once it sees the hang-up, so ours always runs out first.
        let closed_at = Instant::now();
        self.hang_up();
        hang_up();
        if already {
            return Ok(Ok(Stopped {
                status: self.status.expect("checked"),
                how: Shutdown::AlreadyExited,
                grace: self.stop,
            }));
        }
        let exit = self.exit.take().expect("exit watch present until stopped");
        Ok(Err(Escalation::new(self.pid, exit, self.stop, closed_at)))
    }
}

/// The grace periods of a server a pool retired without killing it (its connection broke, or it
/// closed it): short, so that retired servers do not linger (each is capped by the builder's).
pub(crate) const RETIRE_GRACE: Duration = Duration::from_millis(250);

impl ServerHandle {
    /// A pool retires this server: hangs up, and has the reaper end it in the background, then
    /// run `on_done` (at once if it had already exited). `kill`: SIGKILL at once (its call was
    /// abandoned, so what it is doing is of no use to anyone); otherwise the stop schedule,
    /// shortened to [`RETIRE_GRACE`] each.
    pub(crate) fn retire(&mut self, kill: bool, on_done: reaper::OnDone) {
        self.retire_then(kill, on_done, || {});
    }

    /// [`retire`](Self::retire), with `hang_up` run where the connection is closed.
    pub(crate) fn retire_then(
        &mut self,
        kill: bool,
        on_done: reaper::OnDone,
        hang_up: impl FnOnce(),
    ) {
        self.stop = StopOptions {
            after_close: self.stop.after_close.min(RETIRE_GRACE),
            after_term: self.stop.after_term.min(RETIRE_GRACE),
        };
        self.stop_then(kill, on_done, hang_up);
    }

    /// Stops the server in the background (its own schedule; `kill`: SIGKILL at once), then
    /// runs `on_done` with the outcome, on the reaper's thread (or here, if it had exited).
    pub(crate) fn stop_then(
        &mut self,
        kill: bool,
        on_done: reaper::OnDone,
        hang_up: impl FnOnce(),
    ) {
        if self.exit.is_none() {
            hang_up();
            on_done(match self.status {
                Some(status) => Ok(Stopped {
                    status,
                    how: Shutdown::AlreadyExited,
                    grace: self.stop,
                }),
                None => Err(Error::Disconnected),
            });
            return;
        }
        match self.begin_stop_then(hang_up) {
            Ok(Ok(stopped)) => on_done(Ok(stopped)),
            Ok(Err(mut escalation)) => {
                if kill {
                    escalation.kill_now();
                }
                if let Err(returned) = reaper::stop_in_background(escalation, Some(on_done)) {
                    let (escalation, on_done) = *returned;
                    let r = escalation.run_blocking();
                    if let Some(on_done) = on_done {
                        on_done(r);
                    }
                }
            }
            Err(e) => {
                self.hang_up();
                on_done(Err(e));
            }
        }
    }
}

impl Drop for ServerHandle {
    /// Returns at once: a server that has not exited gets its connection closed here, and the
    /// rest of the escalation (SIGTERM, SIGKILL, reap) is finished in the background by
    /// fdserver's reaper thread (one for every server of the process). If that thread cannot
    /// be started (no thread or descriptor left), the stop is finished here instead.
    fn drop(&mut self) {
        if self.status.is_some() || self.exit.is_none() {
            return;
        }
        match self.begin_stop() {
            Ok(Ok(_)) => {}
            Ok(Err(escalation)) => {
                if let Err(returned) = reaper::stop_in_background(escalation, None) {
                    let _ = returned.0.run_blocking();
                }
            }
            // `try_wait` failed: something else in this process reaped the server. Nothing is
            // left to stop.
            Err(_) => self.hang_up(),
        }
    }
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("pid", &self.pid)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// One of two element types, as one `AsRef<[u8]>`.
enum Either<A, B> {
    Left(A),
    Right(B),
}

impl<A: AsRef<[u8]>, B: AsRef<[u8]>> AsRef<[u8]> for Either<A, B> {
    fn as_ref(&self) -> &[u8] {
        match self {
            Either::Left(a) => a.as_ref(),
            Either::Right(b) => b.as_ref(),
        }
    }
}
