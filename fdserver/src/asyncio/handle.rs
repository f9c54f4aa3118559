//! [`AsyncServerHandle`] and [`AsyncConnection`]: a started server driven from a tokio runtime.

use std::fmt;
use std::future::Future;
use std::os::fd::AsFd;
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use super::channel::AsyncChannel;
use crate::client::{ServerHandle, StopOptions, Stopped};
use crate::error::{Error, Operation, ProtocolError};
use crate::reaper;
use crate::signal::Signal;
use crate::sys;
use crate::wire::MessageBuf;

/// How long a call that hit end of stream waits for the server to finish exiting, so that it
/// reports the exit status (as the blocking client does).
const EXIT_SETTLE: Duration = Duration::from_secs(1);

/// What an async typed client (`MyServerAsyncClient<C>`) talks through: an
/// [`AsyncServerHandle`] (a server fdserver started) or a bare [`AsyncChannel`] (any peer).
pub trait AsyncConnection: Send {
    /// The channel.
    fn channel(&mut self) -> &mut AsyncChannel;

    /// Turns a failed call's error into what the caller should see: a time-out breaks the
    /// channel (the reply may still come); an [`AsyncServerHandle`] also turns a dead server's
    /// disconnect into [`Error::ServerExited`] with its status.
    fn call_failed(&mut self, error: Error) -> impl Future<Output = Error> + Send;

    /// The peer's process id, where known (for `tracing` spans).
    #[doc(hidden)]
    fn __pid(&self) -> Option<u32> {
        None
    }
}

impl AsyncConnection for AsyncChannel {
    fn channel(&mut self) -> &mut AsyncChannel {
        self
    }

    async fn call_failed(&mut self, error: Error) -> Error {
        if let Error::TimedOut { message, .. } = &error {
            self.mark_late_reply(message.clone());
        }
        error
    }
}

/// The handle on a server fdserver started, for a tokio runtime: its pid, its
/// [`AsyncChannel`], and how to stop it without blocking the runtime.
///
/// The async counterpart of [`ServerHandle`], with the same guarantees: the server is always
/// reaped; dropping the handle returns at once and the server is stopped in the background
/// (close, SIGTERM, SIGKILL, reap, by fdserver's reaper thread); [`stop`](Self::stop) awaits the
/// same escalation without blocking a runtime thread. Start one with
/// [`Builder::start_async`](crate::Builder::start_async), or `MyServer.start_async()` for a
/// typed client.
pub struct AsyncServerHandle {
    /// The process (its channel taken out: `channel` below is the connection).
    process: ServerHandle,
    channel: Option<AsyncChannel>,
    reply: MessageBuf,
}

impl fmt::Debug for AsyncServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncServerHandle")
            .field("pid", &self.process.pid())
            .finish_non_exhaustive()
    }
}

impl AsyncServerHandle {
    /// Moves a started server's connection onto the current runtime.
    pub(crate) fn new(mut process: ServerHandle) -> Result<AsyncServerHandle, Error> {
        let channel = AsyncChannel::new(process.take_channel())?;
        Ok(AsyncServerHandle {
            process,
            channel: Some(channel),
            reply: MessageBuf::new(),
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The channel to the server, for what the typed methods do not cover.
    pub fn channel(&mut self) -> &mut AsyncChannel {
        self.channel.as_mut().expect("channel present until stop")
    }

    /// Sets the deadline of each call, for the whole call (`None`: wait forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.channel().set_timeout(timeout);
    }

    /// Sends a signal to the server (through its pidfd).
    pub fn signal(&self, signal: Signal) -> Result<(), Error> {
        self.process.signal(signal)
    }

    /// If the server has exited, reaps it and returns its status; never blocks.
    pub fn try_wait(&mut self) -> Result<Option<std::process::ExitStatus>, Error> {
        self.process.try_wait()
    }

    /// A descriptor that becomes readable once the server has exited (see
    /// [`ServerHandle::pidfd`]).
    pub fn pidfd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.process.pidfd()
    }

    /// Sends `request` (`[name, args...]`) and returns the values of the `["ok", values...]`
    /// reply as strings (see [`ServerHandle::call`]).
    ///
    /// Like a typed call, it has one deadline for the whole call (the channel's
    /// [timeout](Self::set_timeout)) and may be dropped at any `.await`: a call dropped after its
    /// request went out leaves its reply due, and the next call on this handle (raw or typed)
    /// reads that reply and drops it before its own, so no call gets another's reply; an
    /// [`AsyncPool`](crate::AsyncPool) replaces a server whose call was dropped. A call dropped
    /// part-way through its request breaks the connection ([`Error::Broken`]).
    pub async fn call<I, T>(&mut self, request: I) -> Result<Vec<String>, Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let mut request = request.into_iter();
        let name = request.next();
        let name_bytes = name.as_ref().map_or(&[][..], AsRef::as_ref).to_vec();
        let elements: Vec<Vec<u8>> = name
            .into_iter()
            .map(|n| n.as_ref().to_vec())
            .chain(request.map(|e| e.as_ref().to_vec()))
            .collect();
        let label = String::from_utf8_lossy(&name_bytes).into_owned();
        let pid = Some(self.pid());
        crate::trace::call_async(&label, pid, async {
            let mut buf = std::mem::take(&mut self.reply);
            let r: Result<Vec<String>, Error> = async {
                let channel = self.channel();
                channel.call_raw(&elements, &mut buf).await?;
                Ok(buf.message().to_strings()?.into_iter().skip(1).collect())
            }
            .await;
            self.reply = buf;
            match r {
                Ok(v) => Ok(v),
                Err(e) => Err(self.call_failed(e.in_call(&name_bytes)).await),
            }
        })
        .await
    }

    /// Stops the server without blocking the runtime: closes the connection, then the same
    /// escalation as [`ServerHandle::stop`] (SIGTERM after the first grace period, SIGKILL
    /// after the second, reap), run by fdserver's reaper thread while this awaits it.
    pub async fn stop(self) -> Result<Stopped, Error> {
        let options = self.process.stop_options();
        self.stop_with(options).await
    }

    /// [`stop`](Self::stop) with other grace periods.
    pub async fn stop_with(mut self, options: StopOptions) -> Result<Stopped, Error> {
        self.process.set_stop_options(options);
        let channel = self.channel.take();
        let escalation = match self.process.begin_stop_then(|| {
            if let Some(channel) = channel {
                sys::shutdown(channel.as_fd(), libc::SHUT_RDWR);
            }
        })? {
            Ok(stopped) => return Ok(stopped),
            Err(escalation) => escalation,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let on_done: reaper::OnDone = Box::new(move |outcome| {
            let _ = tx.send(outcome);
        });
        match reaper::stop_in_background(escalation, Some(on_done)) {
            Ok(()) => rx.await.unwrap_or_else(|_| {
                Err(Error::Io(std::io::Error::other(
                    "fdserver's reaper thread ended before the stop",
                )))
            }),
            // No reaper (no thread left): the escalation runs here, blocking this thread.
            Err(returned) => returned.0.run_blocking(),
        }
    }

    /// A pool retires this server (see `ServerHandle::retire`).
    pub(crate) fn retire(&mut self, kill: bool, on_done: reaper::OnDone) {
        let channel = self.channel.take();
        self.process.retire_then(kill, on_done, || {
            if let Some(channel) = channel {
                sys::shutdown(channel.as_fd(), libc::SHUT_RDWR);
            }
        });
    }

    /// Stops the server in the background on its schedule, then runs `on_done` (a pool's stop).
    pub(crate) fn stop_then(&mut self, on_done: reaper::OnDone) {
        let channel = self.channel.take();
        self.process.stop_then(false, on_done, || {
            if let Some(channel) = channel {
                sys::shutdown(channel.as_fd(), libc::SHUT_RDWR);
            }
        });
    }

    /// Shuts the connection down both ways (the server sees end of stream at once, whoever else
    /// holds a copy of the socket) and drops it.
    fn hang_up(&mut self) {
        if let Some(channel) = self.channel.take() {
            sys::shutdown(channel.as_fd(), libc::SHUT_RDWR);
        }
    }

    /// Waits for `["ready"]` (or the initialisation error) after a fork; on failure the server
    /// is killed and reaped (by the reaper, awaited).
    pub(crate) async fn await_ready(&mut self, timeout: Option<Duration>) -> Result<(), Error> {
        let channel = self.channel();
        let saved = (channel.read_timeout(), channel.write_timeout());
        channel.set_timeout(timeout);
        let mut buf = MessageBuf::new();
        let r = channel.read_array(&mut buf).await;
        let channel = self.channel();
        channel.set_timeout(saved.0);
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
        let err = self.call_failed(result).await;
        // Failed start: the server is killed and reaped before the error is returned.
        self.hang_up();
        if let Ok(Err(mut escalation)) = self.process.begin_stop() {
            escalation.kill_now();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let on_done: reaper::OnDone = Box::new(move |outcome| {
                let _ = tx.send(outcome);
            });
            match reaper::stop_in_background(escalation, Some(on_done)) {
                Ok(()) => {
                    let _ = rx.await;
                }
                Err(returned) => {
                    let _ = returned.0.run_blocking();
                }
            }
        }
        Err(err)
    }

    /// Turns a disconnect into `ServerExited` once the server has exited (awaiting its exit on
    /// the runtime, up to a second); a time-out breaks the channel.
    async fn exited_or(&mut self, e: Error) -> Error {
        if let Error::TimedOut { message, .. } = &e {
            if let Some(c) = &mut self.channel {
                c.mark_late_reply(message.clone());
            }
            return e;
        }
        if !e.is_disconnect() && !matches!(e, Error::Broken { .. }) {
            return e;
        }
        if let Ok(Some(status)) = self.process.try_wait() {
            return Error::ServerExited(status);
        }
        if matches!(e, Error::Broken { .. }) {
            return e;
        }
        let Ok(fd) = self.process.pidfd().try_clone_to_owned() else {
            return e;
        };
        // SAFETY: the AsyncFd owns its duplicate of the exit descriptor (an OwnedFd).
        let Ok(exit) =
            (unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) })
        else {
            return e;
        };
        if tokio::time::timeout(EXIT_SETTLE, exit.readable())
            .await
            .is_ok()
        {
            if let Ok(Some(status)) = self.process.try_wait() {
                return Error::ServerExited(status);
            }
        }
        e
    }
}

impl AsyncConnection for AsyncServerHandle {
    fn channel(&mut self) -> &mut AsyncChannel {
        AsyncServerHandle::channel(self)
    }

    async fn call_failed(&mut self, error: Error) -> Error {
        self.exited_or(error).await
    }

    fn __pid(&self) -> Option<u32> {
        Some(self.pid())
    }
}

impl Drop for AsyncServerHandle {
    /// Returns at once: the connection is shut down here and the server stopped in the
    /// background (see [`ServerHandle`]'s drop).
    fn drop(&mut self) {
        self.hang_up();
        // `process` drops next: it hands the rest of the escalation to the reaper.
    }
}
