//! The server side: the [`Server`] trait, what a handler gets ([`Context`]) and how a loop ends ([`LoopEnd`]).

use std::fmt;
use std::os::fd::AsRawFd;

use crate::channel::Channel;
use crate::client::ServerHandle;
use crate::error::{Error, RemoteError};
use crate::signal::Signal;
use crate::start::Builder;
use crate::sys;
use crate::wire::Message;

/// Boxed error returned by lifecycle hooks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A server: something that answers messages in a forked child (see [`Server::start`]) or in the
/// current process (see [`serve`](crate::serve)).
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
    ///
    /// An `Err` returned after the handler has begun writing its reply (a failure while sending
    /// the scalars or descriptors that follow `["ok", ...]`) cannot become an error reply: the
    /// client would read it as the answer to its next request. The server then closes the
    /// connection and exits with status 1 ([`LoopEnd::ChannelFailed`]).
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

    /// The sandbox the server runs in (feature `sandbox`): applied in the server after
    /// `initialize_server` and before the first message; `None` (the default) for none. Called
    /// in the parent, before the fork. See [`sandbox`](crate::sandbox).
    #[cfg(feature = "sandbox")]
    fn sandbox(&self) -> Option<crate::sandbox::Sandbox> {
        None
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
    pub(crate) fn new(channel: &'a mut Channel) -> Self {
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
            .field("channel", &self.channel.socket().as_raw_fd())
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
    /// The channel failed (an I/O error or a stream that cannot be resynchronised, e.g. a
    /// handler returned `Err` after it had begun its reply); the connection was closed.
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
