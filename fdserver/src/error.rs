//! Errors: one type, [`Error`], for everything a channel, a server or a client can report.

use std::fmt;
use std::io;
use std::process::ExitStatus;
use std::str::Utf8Error;
use std::time::Duration;

/// Everything that can go wrong talking to a server or a peer.
///
/// Errors that leave the channel mid-message (a time-out after part of a message was read, an
/// oversized scalar, a malformed stream), and a call that timed out with its reply still to
/// come, also mark it *broken*; every later operation on it then returns [`Error::Broken`],
/// whose [`BrokenCause`] says which.
///
/// # How errors print
///
/// `Display` says everything the error knows, including the text of an error it wraps
/// (`server error: failed: disk full`, `I/O error: Broken pipe (os error 32)`). `source()`
/// therefore never returns the wrapped error itself, only that error's own source if it has one
/// (as `std::io::Error` does for the error it carries). So `{}` alone prints the whole message,
/// and printers that walk the `source()` chain (`anyhow`'s `{:#}` and `{:?}`, `eyre`, `tracing`)
/// print each cause once. Match on the variant to inspect a wrapped error.
///
/// ```
/// use std::error::Error as _;
/// use fdserver::{Error, RemoteError};
///
/// let err = Error::from(RemoteError::failed("disk full"));
/// assert_eq!(err.to_string(), "server error: failed: disk full");
/// assert!(err.source().is_none()); // nothing left to print: a chain printer stops here
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error.
    Io(io::Error),
    /// The peer closed the connection where a message, a scalar or a descriptor was required.
    Disconnected,
    /// The server process has exited; carries how it ended (`exit status: 1`, `signal: 9`, ...).
    ServerExited(ExitStatus),
    /// The bytes on the wire do not follow the MessageChannel format.
    Protocol(ProtocolError),
    /// A deadline passed: a call's deadline ([`Builder::timeout`], 30 s by default), a raw
    /// channel operation's ([`Channel::set_timeout`]), or the start deadline
    /// ([`Builder::start_timeout`]). Its message names what was waiting, how long, and which
    /// setting gave the deadline: `call "hello": read of a reply timed out after 250ms (the
    /// call's deadline: Builder::timeout or set_timeout, None to wait without one); the late
    /// reply breaks this connection: start a new server (a Pool replaces it by itself)`.
    ///
    /// [`Builder::timeout`]: crate::Builder::timeout
    /// [`Channel::set_timeout`]: crate::Channel::set_timeout
    /// [`Builder::start_timeout`]: crate::Builder::start_timeout
    #[non_exhaustive]
    TimedOut {
        /// What was waiting.
        operation: Operation,
        /// The message name of the call it was part of, where known: set by
        /// [`ServerHandle::call`](crate::ServerHandle::call) and the typed client methods of
        /// `#[fdserver]` servers.
        message: Option<String>,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The channel can no longer be used: an earlier error left it out of step with its peer.
    /// `cause` says how; either way, stop the server and start a new one (a
    /// [`Pool`](crate::Pool) replaces it by itself).
    #[non_exhaustive]
    Broken {
        /// What broke it.
        cause: BrokenCause,
    },
    /// An element to write contains a NUL byte; nothing was written.
    ElementContainsNul {
        /// Index of the offending element in the message.
        index: usize,
    },
    /// The message body would exceed 65535 bytes; nothing was written.
    MessageTooLarge {
        /// The body length the message would have had.
        len: usize,
    },
    /// A scalar is longer than the channel's limit ([`Channel::set_max_scalar_size`]).
    ///
    /// [`Channel::set_max_scalar_size`]: crate::Channel::set_max_scalar_size
    ScalarTooLarge {
        /// The announced length.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// A message has fewer elements than the reader needed.
    MissingElement {
        /// Index of the element that was asked for.
        index: usize,
        /// How many elements the message has.
        len: usize,
    },
    /// An element is not valid UTF-8 where a string was required.
    InvalidUtf8 {
        /// Index of the offending element in the message.
        index: usize,
        /// What was wrong with it.
        error: Utf8Error,
    },
    /// The server answered with an error reply.
    Remote(RemoteError),
    /// A server's sandbox could not be set up: its description was refused before the fork, or
    /// a layer failed in the server, which then exited (see [`sandbox`](crate::sandbox)).
    #[cfg(feature = "sandbox")]
    Sandbox(crate::sandbox::SandboxError),
    /// A [`Pool`](crate::Pool) could not give a call a server: none was free in time, or the
    /// pool gave up restarting one.
    Pool(crate::pool::PoolError),
    /// A typed call's argument could not be encoded for the wire (a string or a list item
    /// containing a NUL byte, a scalar over the format's 4 GiB − 1 bytes, a value `serde_json`
    /// refuses); nothing was sent.
    Encode {
        /// The message name of the call.
        message: String,
        /// Which value: ``parameter `name` ``.
        value: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// Whether this error means the other side is gone (EOF, reset, broken pipe, exited).
    pub fn is_disconnect(&self) -> bool {
        match self {
            Error::Disconnected | Error::ServerExited(_) => true,
            Error::Protocol(ProtocolError::UnexpectedEof) => true,
            Error::Io(e) => matches!(
                e.raw_os_error(),
                Some(libc::EPIPE) | Some(libc::ECONNRESET) | Some(libc::ENOTCONN)
            ),
            _ => false,
        }
    }

    /// Whether the server (or peer) this error came from must be replaced: its connection can no
    /// longer carry calls, because the server is gone ([`Disconnected`](Error::Disconnected),
    /// [`ServerExited`](Error::ServerExited)), the stream is out of step or may be
    /// ([`Broken`](Error::Broken), [`TimedOut`](Error::TimedOut): the late reply would answer
    /// the next call; [`Protocol`](Error::Protocol), an [`Io`](Error::Io) error on the socket,
    /// a [`ScalarTooLarge`](Error::ScalarTooLarge) scalar), or it never started (a failed
    /// start: `initialize` and `sandbox` error replies, `Error::Sandbox`). A remote error
    /// of kind `protocol` counts too (the server may have closed the connection after it).
    ///
    /// `false` for errors after which the same server keeps serving: an error reply from the
    /// handler or about the request (`failed`, `io`, `bad_arguments`, `unknown_message`,
    /// `panicked` before any reply, your own [`WireError`](crate::WireError) codes), and
    /// errors raised before anything was sent ([`Encode`](Error::Encode),
    /// [`ElementContainsNul`](Error::ElementContainsNul),
    /// [`MessageTooLarge`](Error::MessageTooLarge)), a [`Pool`](Error::Pool)'s own errors,
    /// or errors while decoding a reply that arrived
    /// whole ([`MissingElement`](Error::MissingElement), [`InvalidUtf8`](Error::InvalidUtf8)).
    /// When in doubt it says `true`: replacing a server costs a start, reusing a broken one
    /// would answer a call with another's reply.
    ///
    /// ```
    /// use fdserver::{Error, RemoteError};
    /// assert!(Error::Disconnected.needs_restart());
    /// assert!(!Error::from(RemoteError::failed("disk full")).needs_restart());
    /// ```
    pub fn needs_restart(&self) -> bool {
        match self {
            Error::Io(_)
            | Error::Disconnected
            | Error::ServerExited(_)
            | Error::Protocol(_)
            | Error::TimedOut { .. }
            | Error::Broken { .. }
            | Error::ScalarTooLarge { .. } => true,
            Error::ElementContainsNul { .. }
            | Error::MessageTooLarge { .. }
            | Error::MissingElement { .. }
            | Error::InvalidUtf8 { .. }
            | Error::Encode { .. }
            | Error::Pool(_) => false,
            Error::Remote(r) => matches!(
                r.kind(),
                RemoteErrorKind::Protocol | RemoteErrorKind::Initialize | RemoteErrorKind::Sandbox
            ),
            #[cfg(feature = "sandbox")]
            Error::Sandbox(_) => true,
        }
    }

    /// A time-out of `operation` after `timeout`, not yet tied to a call.
    pub(crate) fn timed_out(operation: Operation, timeout: Duration) -> Error {
        Error::TimedOut {
            operation,
            message: None,
            timeout,
        }
    }

    /// Names the call (its message name) a time-out happened in, unless already named.
    pub(crate) fn in_call(mut self, name: &[u8]) -> Error {
        if let Error::TimedOut {
            message: message @ None,
            ..
        } = &mut self
        {
            *message = Some(String::from_utf8_lossy(name).into_owned());
        }
        self
    }

    /// The remote error, if the server replied with one.
    pub fn as_remote(&self) -> Option<&RemoteError> {
        match self {
            Error::Remote(r) => Some(r),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(e) => write!(f, "I/O error: {e}"),
            Error::Disconnected => {
                f.write_str("the peer closed the connection (it exited or dropped its end)")
            }
            Error::ServerExited(s) => write!(
                f,
                "server exited ({s}); if it failed, its stderr says why (a panic prints its \
                 message there); start a new server (a Pool replaces it by itself)"
            ),
            Error::Protocol(p) => write!(f, "protocol error: {p}"),
            Error::TimedOut {
                operation,
                message,
                timeout,
            } => {
                if let Some(message) = message {
                    write!(f, "call {message:?}: ")?;
                }
                write!(f, "{operation} timed out after {timeout:?}")?;
                match (operation, message) {
                    (Operation::Start, _) => f.write_str(
                        " (the start deadline: Builder::start_timeout, None to wait as long as \
                         initialize_server takes)",
                    ),
                    (_, Some(_)) => f.write_str(
                        " (the call's deadline: Builder::timeout or set_timeout, None to wait \
                         without one); the late reply breaks this connection: start a new \
                         server (a Pool replaces it by itself)",
                    ),
                    (_, None) => f.write_str(
                        " (the channel's deadline: Channel::set_timeout, None to wait without one)",
                    ),
                }
            }
            Error::Broken { cause } => write!(
                f,
                "{cause}; the connection cannot carry calls any more: stop this server and start \
                 a new one (a Pool replaces it by itself)"
            ),
            Error::ElementContainsNul { index } => {
                write!(f, "element {index} contains a NUL byte, which the wire format cannot carry")
            }
            Error::MessageTooLarge { len } => write!(
                f,
                "message body of {len} bytes exceeds the 65535-byte limit (send large data as a scalar)"
            ),
            // The wire format's own limit (a `u32` length) is met only by a write.
            Error::ScalarTooLarge { len, max } if *max >= u64::from(u32::MAX) => write!(
                f,
                "scalar of {len} bytes exceeds the limit of {max} bytes (the wire format's \
                 largest; send the data in several scalars)"
            ),
            Error::ScalarTooLarge { len, max } => write!(
                f,
                "scalar of {len} bytes exceeds the limit of {max} bytes (raise it with \
                 Builder::max_scalar_size or Channel::set_max_scalar_size)"
            ),
            Error::MissingElement { index, len } => {
                write!(
                    f,
                    "element {index} is missing from a message of {len} element{}: the peer \
                     sent fewer values than expected",
                    if *len == 1 { "" } else { "s" }
                )
            }
            Error::InvalidUtf8 { index, error } => {
                write!(f, "element {index} is not valid UTF-8: {error}")
            }
            Error::Remote(r) => write!(f, "server error: {r}"),
            #[cfg(feature = "sandbox")]
            Error::Sandbox(s) => write!(f, "{s}"),
            Error::Encode {
                message,
                value,
                reason,
            } => write!(f, "call {message:?}: {value} cannot be sent: {reason}"),
            Error::Pool(p) => write!(f, "{p}"),
        }
    }
}

impl std::error::Error for Error {
    /// Not the wrapped error, whose text `Display` already includes, but its own source.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => e.source(),
            Error::Protocol(p) => p.source(),
            Error::InvalidUtf8 { error, .. } => error.source(),
            Error::Remote(r) => r.source(),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

impl From<RemoteError> for Error {
    fn from(e: RemoteError) -> Self {
        Error::Remote(e)
    }
}

impl From<Error> for io::Error {
    /// The `io::Error` a caller of `?` in an `io::Result` function wants: an [`Error::Io`] as it
    /// is; an error reply of kind [`io`](RemoteErrorKind::Io) (a handler's `io::Error`) rebuilt
    /// with the server's [`kind()`](io::Error::kind) and
    /// [`raw_os_error()`](io::Error::raw_os_error) (see [`RemoteError::to_io_error`]); time-outs
    /// as `TimedOut`, a dead server as `UnexpectedEof`, the rest as `Other`.
    fn from(e: Error) -> Self {
        match e {
            Error::Io(e) => e,
            Error::Remote(r) if r.kind == RemoteErrorKind::Io => r
                .to_io_error()
                .unwrap_or_else(|| io::Error::other(Error::Remote(r))),
            Error::TimedOut { .. } => io::Error::new(io::ErrorKind::TimedOut, e),
            Error::Disconnected | Error::ServerExited(_) => {
                io::Error::new(io::ErrorKind::UnexpectedEof, e)
            }
            other => io::Error::other(other),
        }
    }
}

/// What broke a channel ([`Error::Broken`]).
///
/// ```
/// use fdserver::{BrokenCause, Error};
/// # use fdserver::{Context, Message, RemoteError, Server, ServerHandle};
/// # struct Slow;
/// # impl Server for Slow {
/// #     type Client = ServerHandle;
/// #     fn handle(&mut self, ctx: &mut Context<'_>, _: Message<'_>) -> Result<(), RemoteError> {
/// #         std::thread::sleep(std::time::Duration::from_millis(300));
/// #         ctx.reply(["done"])?;
/// #         Ok(())
/// #     }
/// # }
/// let mut server = fdserver::Builder::new()
///     .timeout(Some(std::time::Duration::from_millis(50)))
///     .start_handle(&mut Slow)?;
/// assert!(matches!(server.call(["slow"]), Err(Error::TimedOut { .. })));
/// let e = server.call(["next"]).unwrap_err();
/// assert!(matches!(&e, Error::Broken { cause: BrokenCause::LateReply { call: Some(c) }, .. } if c == "slow"));
/// assert!(e.to_string().contains("stop this server and start a new one"));
/// # Ok::<(), fdserver::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokenCause {
    /// A call gave up before its reply arrived (it timed out): the reply may still come, and
    /// the next call would read it as its own.
    LateReply {
        /// The message name of the call that gave up, where known.
        call: Option<String>,
    },
    /// An earlier error stopped part-way through a message (a read or write cut off, a scalar
    /// over the limit, data where a descriptor was due, a descriptor the kernel refused after
    /// the request went out, an async write dropped half-way), so the two sides no longer agree
    /// where a message begins.
    MidMessage,
}

impl fmt::Display for BrokenCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokenCause::LateReply { call } => {
                f.write_str("the channel is out of step: an earlier call")?;
                if let Some(call) = call {
                    write!(f, " ({call:?})")?;
                }
                f.write_str(
                    " timed out before its reply arrived, and that late reply would answer the \
                     next call",
                )
            }
            BrokenCause::MidMessage => f.write_str(
                "the channel is broken: an earlier error stopped part-way through a message, so \
                 the two sides no longer agree where a message begins",
            ),
        }
    }
}

/// What was waiting when a deadline passed ([`Error::TimedOut`]).
///
/// ```
/// assert_eq!(fdserver::Operation::ReadScalar.to_string(), "read of a scalar message");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Reading an array message.
    ReadArray,
    /// Reading a reply (`["ok", ...]` or `["error", ...]`) and the descriptor that may come
    /// with it.
    ReadReply,
    /// Reading a scalar message.
    ReadScalar,
    /// Receiving a file descriptor.
    ReceiveFd,
    /// Writing an array message (a request, a reply, an error reply).
    WriteArray,
    /// Writing a scalar message.
    WriteScalar,
    /// Sending a file descriptor.
    SendFd,
    /// Waiting for a forked server to finish `initialize_server` and say it is ready.
    Start,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::ReadArray => "read of an array message",
            Operation::ReadReply => "read of a reply",
            Operation::ReadScalar => "read of a scalar message",
            Operation::ReceiveFd => "receive of a file descriptor",
            Operation::WriteArray => "write of an array message",
            Operation::WriteScalar => "write of a scalar message",
            Operation::SendFd => "send of a file descriptor",
            Operation::Start => "start of the server (waiting for its initialize_server)",
        })
    }
}

/// A violation of the wire format.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The stream ended in the middle of a message.
    UnexpectedEof,
    /// An array body did not end with a NUL byte (Passenger silently dropped such trailing bytes;
    /// fdserver refuses the message).
    MissingTerminator,
    /// A file descriptor arrived where a message was expected; it was closed.
    UnexpectedFd,
    /// A descriptor was expected but plain data arrived.
    ExpectedFd,
    /// More descriptors arrived than fit (`MSG_CTRUNC`), or more than one where one was expected;
    /// all of them were closed.
    TooManyFds,
    /// A reply did not start with `ok` or `error`, or did not have the shape the caller expected.
    BadReply(String),
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnexpectedEof => f.write_str("connection closed in the middle of a message"),
            ProtocolError::MissingTerminator => {
                f.write_str("array message body does not end with a NUL byte")
            }
            ProtocolError::UnexpectedFd => {
                f.write_str("a file descriptor arrived where a message was expected (it was closed)")
            }
            ProtocolError::ExpectedFd => {
                f.write_str("expected a file descriptor but plain data arrived")
            }
            ProtocolError::TooManyFds => f.write_str(
                "more file descriptors arrived than expected (control message truncated; all were closed)",
            ),
            ProtocolError::BadReply(s) => write!(f, "malformed reply: {s}"),
        }
    }
}

impl std::error::Error for ProtocolError {}

/// What kind of failure a server reported. On the wire this is the second element of an error
/// reply (see the crate docs, "Replies and errors").
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemoteErrorKind {
    /// `unknown_message`: no handler for that message name. The server keeps serving.
    UnknownMessage,
    /// `bad_arguments`: wrong number of arguments, or one could not be parsed. The server keeps serving.
    BadArguments,
    /// `failed`: the handler returned an error. The server keeps serving.
    Failed,
    /// `panicked`: the handler panicked. The server keeps serving if the panic happened before it
    /// wrote any part of its reply; otherwise it closes the connection and exits.
    Panicked,
    /// `protocol`: the request itself was malformed (see [`ProtocolError`]).
    Protocol,
    /// `initialize`: the server's `initialize_server` failed; it exits.
    Initialize,
    /// `sandbox`: the server's sandbox could not be applied; it exits. The message starts with
    /// the layer's name (`landlock: ...`).
    Sandbox,
    /// `io`: the handler returned an `std::io::Error`. The reply carries its kind and OS error
    /// number (`["error", "io", text, kind, errno]`, see [`RemoteError::io`]), and
    /// [`RemoteError::to_io_error`] rebuilds it. The server keeps serving.
    Io,
    /// Any other kind string, kept verbatim: the code of a handler's own error type (see
    /// [`WireError`](crate::WireError)), or what another peer sent.
    Other(String),
}

impl RemoteErrorKind {
    /// The kind as it travels on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            RemoteErrorKind::UnknownMessage => "unknown_message",
            RemoteErrorKind::BadArguments => "bad_arguments",
            RemoteErrorKind::Failed => "failed",
            RemoteErrorKind::Panicked => "panicked",
            RemoteErrorKind::Protocol => "protocol",
            RemoteErrorKind::Initialize => "initialize",
            RemoteErrorKind::Sandbox => "sandbox",
            RemoteErrorKind::Io => "io",
            RemoteErrorKind::Other(s) => s,
        }
    }

    /// Parses a wire kind string.
    pub fn from_wire(s: &str) -> Self {
        match s {
            "unknown_message" => RemoteErrorKind::UnknownMessage,
            "bad_arguments" => RemoteErrorKind::BadArguments,
            "failed" => RemoteErrorKind::Failed,
            "panicked" => RemoteErrorKind::Panicked,
            "protocol" => RemoteErrorKind::Protocol,
            "initialize" => RemoteErrorKind::Initialize,
            "sandbox" => RemoteErrorKind::Sandbox,
            "io" => RemoteErrorKind::Io,
            other => RemoteErrorKind::Other(other.to_owned()),
        }
    }
}

/// An error reply from a server: `["error", kind, text, details...]` on the wire.
///
/// `kind` says what failed (see [`RemoteErrorKind`]), `text` is for people, and the optional
/// `details` are the values a program needs to rebuild a structured error: the kind and OS error
/// number of an `io::Error` (kind `io`), or the fields of a handler's own error type (see
/// [`WireError`](crate::WireError)). A peer that knows only `["error", kind, text]` reads the
/// first three elements and ignores the rest.
///
/// Handlers return it to report a failure to the client:
///
/// ```
/// use fdserver::{RemoteError, RemoteErrorKind};
/// let e = RemoteError::failed("disk full");
/// assert_eq!(e.kind(), &RemoteErrorKind::Failed);
/// assert_eq!(e.to_string(), "failed: disk full");
///
/// let e = RemoteError::new(RemoteErrorKind::Other("quota".into()), "over quota by 5 MiB")
///     .with_details(["5242880"]);
/// assert_eq!(e.details(), [b"5242880".to_vec()]);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteError {
    kind: RemoteErrorKind,
    message: String,
    details: Vec<Vec<u8>>,
}

/// Shows each detail as text (`["not_found", "2"]`), not as a list of byte values; one that is
/// not UTF-8 as a byte string (`b"\xff"`).
impl fmt::Debug for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Detail<'a>(&'a [u8]);
        impl fmt::Debug for Detail<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match std::str::from_utf8(self.0) {
                    Ok(s) => fmt::Debug::fmt(s, f),
                    Err(_) => write!(f, "b\"{}\"", self.0.escape_ascii()),
                }
            }
        }
        let details: Vec<Detail<'_>> = self.details.iter().map(|d| Detail(d)).collect();
        f.debug_struct("RemoteError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("details", &details)
            .finish()
    }
}

impl RemoteError {
    /// An error of any kind.
    pub fn new(kind: RemoteErrorKind, message: impl Into<String>) -> Self {
        RemoteError {
            kind,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// The same error with these details (the elements after the text on the wire; none may
    /// contain a NUL byte, see [`Channel::write_error`](crate::Channel::write_error)).
    pub fn with_details<I, T>(mut self, details: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<Vec<u8>>,
    {
        self.details = details.into_iter().map(Into::into).collect();
        self
    }

    /// The handler failed (kind `failed`).
    pub fn failed(message: impl fmt::Display) -> Self {
        Self::new(RemoteErrorKind::Failed, message.to_string())
    }

    /// The arguments were wrong (kind `bad_arguments`).
    pub fn bad_arguments(message: impl fmt::Display) -> Self {
        Self::new(RemoteErrorKind::BadArguments, message.to_string())
    }

    /// No handler for `name` (kind `unknown_message`).
    pub fn unknown_message(name: &[u8]) -> Self {
        Self::new(
            RemoteErrorKind::UnknownMessage,
            format!("unknown message {:?}", String::from_utf8_lossy(name)),
        )
    }

    /// An `io::Error`, faithfully: `["error", "io", text, kind, errno]`, where `text` is the
    /// error's `Display`, `kind` its [`io::ErrorKind`] in snake case (`not_found`,
    /// `permission_denied`, ...; see [`crate::args`] for the list) and `errno` its
    /// [`raw_os_error`](io::Error::raw_os_error) in decimal, or empty when it has none.
    ///
    /// ```
    /// use std::io;
    /// let e = fdserver::RemoteError::io(&io::Error::from_raw_os_error(libc::EACCES));
    /// assert_eq!(e.to_string(), "io: Permission denied (os error 13)");
    /// assert_eq!(e.details(), [b"permission_denied".to_vec(), b"13".to_vec()]);
    /// let back = e.to_io_error().unwrap();
    /// assert_eq!((back.kind(), back.raw_os_error()), (io::ErrorKind::PermissionDenied, Some(13)));
    /// ```
    pub fn io(error: &io::Error) -> Self {
        let errno = error
            .raw_os_error()
            .map(|n| n.to_string())
            .unwrap_or_default();
        Self::new(RemoteErrorKind::Io, error.to_string())
            .with_details([crate::io_kind::name(error.kind()).to_owned(), errno])
    }

    /// For an error of kind [`io`](RemoteErrorKind::Io): the `io::Error` it describes, with the
    /// same [`kind()`](io::Error::kind) and [`raw_os_error()`](io::Error::raw_os_error) as the
    /// server's. With an OS error number it is `io::Error::from_raw_os_error(errno)` (whose text
    /// is the server's text); without one, an error of the same kind carrying the server's text.
    /// `None` for other kinds, and for an `io` reply whose details are malformed.
    pub fn to_io_error(&self) -> Option<io::Error> {
        if self.kind != RemoteErrorKind::Io {
            return None;
        }
        let kind = std::str::from_utf8(self.details.first()?).ok()?;
        let errno = std::str::from_utf8(self.details.get(1)?).ok()?;
        if !errno.is_empty() {
            return errno.parse().ok().map(io::Error::from_raw_os_error);
        }
        Some(io::Error::new(
            crate::io_kind::from_name(kind),
            self.message.clone(),
        ))
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> &RemoteErrorKind {
        &self.kind
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The elements after the text (empty for most kinds; see the type's docs).
    pub fn details(&self) -> &[Vec<u8>] {
        &self.details
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for RemoteError {}

impl From<Error> for RemoteError {
    /// Lets handlers use `?` on channel operations: the failure reaches the client as `failed`,
    /// except a missing or non-UTF-8 element of the request, which is `bad_arguments`, and an
    /// [`Error::Io`], which is [`RemoteError::io`].
    fn from(e: Error) -> Self {
        match e {
            Error::Remote(r) => r,
            // Reading the request's own elements: the client sent bad arguments.
            e @ (Error::MissingElement { .. } | Error::InvalidUtf8 { .. }) => {
                RemoteError::bad_arguments(e)
            }
            Error::Io(e) => RemoteError::io(&e),
            other => RemoteError::failed(other),
        }
    }
}

impl From<io::Error> for RemoteError {
    /// [`RemoteError::io`]: the client gets the kind and OS error number back.
    fn from(e: io::Error) -> Self {
        RemoteError::io(&e)
    }
}
