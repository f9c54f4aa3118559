//! Typed arguments and results: how the values of an [`#[fdserver]`](crate::fdserver) handler's
//! parameters and return type travel on the wire.
//!
//! A request is an array message `[name, arguments...]`; the reply is `["ok", values...]`. Each
//! parameter and each reply value has a [`Form`]:
//!
//! * [`Form::Inline`]: one element of the array message (strings, numbers, paths, ...).
//! * [`Form::Scalar`]: a scalar message (byte payloads, lists, JSON values: any size).
//! * [`Form::Fd`]: a file descriptor passed with `SCM_RIGHTS` (`File`, `OwnedFd`, sockets).
//!
//! Inline values go into the array, in order; **out-of-band** values (scalars and descriptors)
//! follow the array on the stream, in parameter order (or tuple order for replies). A request
//! for `fn put(&mut self, key: &str, data: &[u8], log: File, n: u32)` is the array
//! `["put", key, n]`, then the scalar `data`, then the descriptor `log`.
//!
//! ## Wire mapping
//!
//! | Rust type (handler side) | Client stub takes | Form | On the wire |
//! |---|---|---|---|
//! | `String`, `&str` | `&str` | inline | the UTF-8 bytes |
//! | `bool` | `bool` | inline | `true` / `false` (`1` / `0` accepted) |
//! | `i8` ... `i128`, `u8` ... `u128`, `isize`, `usize` | same | inline | decimal (`Display` / `FromStr`) |
//! | `f32`, `f64` | same | inline | `Display` (shortest exact round trip), `NaN`, `inf`, `-inf` |
//! | `NonZeroU32` etc., `IpAddr`, `Ipv4Addr`, `Ipv6Addr`, `SocketAddr` | same | inline | `Display` / `FromStr` |
//! | `char` | `char` | inline | the character's UTF-8 bytes |
//! | `PathBuf`, `&Path` | `impl AsRef<Path>` | inline | the path's bytes (need not be UTF-8) |
//! | `OsString`, `&OsStr` | `impl AsRef<OsStr>` | inline | the bytes (need not be UTF-8) |
//! | `Option<T>` (`T` inline) | `Option<T>` (`Option<&str>` for `Option<String>`, ...) | inline | see below |
//! | your type, after [`display_fromstr_arg!`](crate::display_fromstr_arg) | same | inline | `Display` / `FromStr` |
//! | `Vec<u8>`, `&[u8]` | `&[u8]` | scalar | a scalar message with the bytes |
//! | `Vec<T>` (`T` inline, not `u8`; `Vec<&str>` too) | `&[impl AsRef<str>]` for strings, `&[impl AsRef<Path>]` / `&[impl AsRef<OsStr>]` for paths, else `&[T]` | scalar | a **list**: each item's element followed by a NUL byte (`["a", ""]` is `61 00 00`); empty: an empty scalar |
//! | [`Json<T>`](crate::Json) (`T: Serialize + Deserialize`, feature `serde`) | `&T` | scalar | `serde_json`'s encoding of the `T` |
//! | `OwnedFd`, `File`, `UnixStream`, `UnixListener`, `UnixDatagram`, `TcpStream`, `TcpListener`, `UdpSocket` | `impl AsFd` | fd | one descriptor (`SCM_RIGHTS`) |
//! | your `From<OwnedFd> + AsFd` type, after [`fd_arg!`](crate::fd_arg) | same | fd | one descriptor |
//! | return values only: `BorrowedFd<'_>`, `&File`, `&OwnedFd`, `&UnixStream`, ... (a descriptor the server keeps, lent) | the stub returns `OwnedFd`, `File`, `UnixStream`, ... | fd | one descriptor |
//!
//! **Borrowed parameters** (`&str`, `&[u8]`, `&Path`, `&OsStr`, and `Option`s and lists of
//! them) point into the received message for the duration of the call, so taking them costs no
//! allocation: a typed `hello(&str, &str)` allocates only its result. Scalars are read into
//! buffers the server keeps from one message to the next (up to 4 of at most 1 MiB each).
//! Results must be owned.
//!
//! Replies use the same forms (see [`Reply`]): `()` is `["ok"]`, a value `v` is `["ok", v]`, a
//! tuple `(a, b)` is `["ok", a, b]` with out-of-band members after the array.
//!
//! **A descriptor the server keeps** is returned borrowed, tied to `&self`: `BorrowedFd<'_>` or a
//! shared reference to one of the descriptor types above (alone, in a tuple, or in `Result`). The
//! kernel gives the client its own copy; the server's stays open, with no `dup` per call (an owned
//! `File` would have to be a fresh copy, closed once sent). The client stub returns the owned
//! type (`OwnedFd` for `BorrowedFd`):
//!
//! ```
//! use std::fs::File;
//! use std::io::Write;
//! use std::os::fd::{AsFd, BorrowedFd};
//!
//! struct Logs { current: File }
//!
//! #[fdserver::fdserver]
//! impl Logs {
//!     fn current(&self) -> &File {
//!         &self.current
//!     }
//!
//!     fn raw(&self) -> BorrowedFd<'_> {
//!         self.current.as_fd()
//!     }
//! }
//!
//! let mut logs = Logs { current: File::create(std::env::temp_dir().join("fdserver-logs-doc"))? };
//! // A descriptor opened before `start` is kept in the server only if asked (see `Builder::keep_fd`).
//! let mut client = fdserver::Builder::new().keep_fd(&logs.current).start(&mut logs)?;
//! let mut file: File = client.current()?;
//! file.write_all(b"appended through the server's own file\n")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! **`Option<T>`** is one element: `None` is the empty element `""`; `Some(v)` is `v`'s element,
//! except that when that element is empty or starts with the byte `0x01`, a `0x01` byte is put
//! in front of it. So `None`, `Some("")` and `Some("\u{1}x")` all round-trip, and a client in
//! another language sends `""` for "nothing" and a value's plain text for "something". Only inline
//! types can be optional.
//!
//! **Strings** cannot contain NUL bytes (the array format cannot carry them): a typed call
//! with one in a string argument, a list item or a JSON value that cannot be encoded, or a
//! `&[u8]`/`Vec<u8>` argument over 4 GiB − 1 bytes is [`Error::Encode`](crate::Error::Encode),
//! naming the call and the parameter (`call "join": parameter `sep` cannot be sent: ...`), and
//! sends nothing (a raw [`Channel::write_array`](crate::Channel::write_array) says
//! [`Error::ElementContainsNul`](crate::Error::ElementContainsNul) with the element's index). Send arbitrary bytes as `Vec<u8>`. A request's array message (name plus inline
//! values) is at most 65535 bytes: a longer one is refused before anything is sent.
//!
//! ## Large results
//!
//! A result never fails for its size after the handler ran, up to what the wire format can
//! carry: 4 GiB − 1 bytes per scalar (its length is a `u32`; a `Vec<u8>` result longer than that
//! gets an error reply from the server, which keeps serving). A reply whose array would exceed
//! 65535 bytes is sent as the array `["ok_scalar"]` followed by a scalar message holding the
//! whole reply body (`ok`, then each inline value, each followed by NUL, exactly an array body
//! with a `u32` length); out-of-band values follow as usual. The client reads it as the plain
//! `["ok", ...]` reply.
//!
//! The client's scalar limit ([`Builder::max_scalar_size`](crate::Builder::max_scalar_size),
//! [`Channel::set_max_scalar_size`](crate::Channel::set_max_scalar_size), 64 MiB by default)
//! does not apply to the reply of its own call (typed calls and `ServerHandle::call`, sync and
//! async): that reply is what the call asked for, and refusing it would fail the call after
//! the handler's side effects were done and break the channel. The limit bounds what a side
//! reads unasked: a server reading a request's scalars, and raw `Channel::read_scalar` calls.
//! Memory grows with the bytes that actually arrive, never with an announced length alone; a
//! server you do not trust can still make a call hold as much as its result type carries (up
//! to 4 GiB per scalar value), so give such a server (a sandboxed parser) result types that
//! stay small, or read its large data through a raw channel with a limit.
//!
//! So small replies keep the plain form a Passenger peer reads with `channel.read`, and a peer
//! that may get large ones adds one line:
//! `reply = channel.read_scalar.split("\0", -1)[0...-1] if reply == ["ok_scalar"]`.
//! (Making every `String` result a scalar would have cost every call a second read and changed
//! the plain `["ok", "Hello ...", "1234"]` reply Passenger peers read; refusing large results at
//! compile time would have ruled out `String` results.)
//!
//! ## Errors
//!
//! A handler's `Err(e)` becomes the error reply `["error", kind, text, details...]`:
//!
//! | handler returns | kind | text | details | client gets |
//! |---|---|---|---|---|
//! | any `E: Display` | `failed` | `e.to_string()` | none | [`Error::Remote`](crate::Error::Remote) |
//! | `std::io::Error` (`io::Result<T>`; also boxed, or [`Error::Io`](crate::Error::Io)) | `io` | the error's text | its [`io::ErrorKind`](std::io::ErrorKind) in snake case (`not_found`, `permission_denied`, `is_a_directory`...), its OS error number or `""` | `Error::Remote`; `io::Error::from(err)` has the same `kind()` and `raw_os_error()` |
//! | [`RemoteError`] | its kind | its text | its details | `Error::Remote` as sent |
//! | a [`WireError`](crate::WireError) type (`#[derive(fdserver::WireError)]`) | the variant's code (`insufficient_funds`) | `e.to_string()` | each field's element | `Error::Remote`, or in a `typed_errors` server [`CallError::Handler(e)`](crate::CallError) |
//!
//! and the server keeps serving. fdserver's own failures keep their kinds (`bad_arguments`,
//! `unknown_message`, `panicked`, `protocol`) and arrive as
//! [`CallError::Fdserver`](crate::CallError) in a `typed_errors` server.
//!
//! ## Keeping the stream in sync
//!
//! A server always reads every out-of-band item that a message's handler declares, in order,
//! even when the inline arguments are wrong (bad count, unparsable value), before it replies with
//! the error. A client in another language that omits them leaves the server waiting for them,
//! and one that sends extra ones breaks the connection. Messages with an unknown name are answered
//! with `unknown_message` without reading anything further, so do not send out-of-band items
//! with a message the server does not know.
//!
//! The generated code on both sides checks what it can before a call's or a reply's first byte
//! (a `Vec<u8>` longer than a scalar's `u32` length can carry is refused there, and nothing is
//! sent: the channel stays usable). A failure after the first byte (the kernel refusing to pass a
//! descriptor, `ETOOMANYREFS`) leaves the peer waiting for the rest, so it marks the channel
//! broken: a client's later calls fail with [`Error::Broken`](crate::Error::Broken), and a
//! server closes the connection instead of answering twice.
//!
//! ## Your own types
//!
//! ```
//! use std::fmt;
//! use std::str::FromStr;
//!
//! #[derive(Debug, PartialEq)]
//! enum Level { Low, High }
//!
//! impl fmt::Display for Level {
//!     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
//!         f.write_str(match self { Level::Low => "low", Level::High => "high" })
//!     }
//! }
//! impl FromStr for Level {
//!     type Err = String;
//!     fn from_str(s: &str) -> Result<Self, String> {
//!         match s { "low" => Ok(Level::Low), "high" => Ok(Level::High), _ => Err(format!("no level {s:?}")) }
//!     }
//! }
//! fdserver::display_fromstr_arg!(Level);
//!
//! struct Thermostat { level: Level }
//!
//! #[fdserver::fdserver]
//! impl Thermostat {
//!     fn set(&mut self, level: Level) -> Level {
//!         std::mem::replace(&mut self.level, level)
//!     }
//! }
//!
//! let mut client = Thermostat { level: Level::Low }.start()?;
//! assert_eq!(client.set(Level::High)?, Level::Low);
//! assert_eq!(client.set(Level::Low)?, Level::High);
//! // A bad value from a raw client names the message, the parameter and the reason:
//! let err = client.handle_mut().call(["set", "medium"]).unwrap_err();
//! assert_eq!(err.to_string(), r#"server error: bad_arguments: set: parameter `level`: no level "medium" (got "medium")"#);
//! # Ok::<(), fdserver::Error>(())
//! ```
//!
//! Anything else implements [`FromArg`] (to be received) and [`ToArg`] (to be sent) by hand;
//! both must agree on the [`Form`].

use std::borrow::Cow;
use std::ffi::{OsStr, OsString};
use std::fmt::{self, Display};
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::num::{
    NonZeroI128, NonZeroI16, NonZeroI32, NonZeroI64, NonZeroI8, NonZeroIsize, NonZeroU128,
    NonZeroU16, NonZeroU32, NonZeroU64, NonZeroU8, NonZeroUsize,
};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::__private::Decoder;
use crate::error::RemoteError;

/// How a value travels (see the [module docs](self)).
///
/// ```
/// use fdserver::args::{Form, FromArg, ToArg};
/// assert_eq!(<u32 as FromArg>::FORM, Form::Inline);
/// assert_eq!(<Vec<u8> as FromArg>::FORM, Form::Scalar);
/// assert_eq!(<Vec<String> as FromArg>::FORM, Form::Scalar); // a list
/// assert_eq!(<&str as FromArg>::FORM, Form::Inline);
/// assert_eq!(<std::fs::File as ToArg>::FORM, Form::Fd);
/// assert_eq!(<&str as ToArg>::FORM, Form::Inline);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    /// One element of the array message.
    Inline,
    /// A scalar message after the array.
    Scalar,
    /// A file descriptor after the array.
    Fd,
}

/// The byte prefix that marks an escaped `Some` in an `Option<T>` element (see the module docs).
///
/// ```
/// use fdserver::args::{Encoded, FromArg, Received, ToArg};
/// let bytes = |v: Option<&str>| match v.to_arg() {
///     Encoded::Element(e) => e.as_bytes().to_vec(),
///     _ => unreachable!(),
/// };
/// assert_eq!(bytes(None), b"");
/// assert_eq!(bytes(Some("x")), b"x");
/// assert_eq!(bytes(Some("")), b"\x01"); // escaped, so that it differs from None
/// assert_eq!(Option::<String>::from_arg(Received::Element(b"\x01")).unwrap(), Some(String::new()));
/// ```
pub const OPTION_ESCAPE: u8 = 0x01;

/// Why a value could not be decoded. The server wraps it into a `bad_arguments` error that names
/// the message, the parameter and the element that arrived.
///
/// ```
/// let e = fdserver::args::ArgError::new("must be even");
/// assert_eq!(e.to_string(), "must be even");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgError {
    reason: String,
}

impl ArgError {
    /// An error with this reason.
    pub fn new(reason: impl Display) -> Self {
        ArgError {
            reason: reason.to_string(),
        }
    }

    /// The reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for ArgError {}

/// What arrived for one value: input of [`FromArg::from_arg`].
///
/// A scalar arrives as the buffer it was read into: take it ([`scalar`](Self::scalar)) for an
/// owned value, or borrow it ([`scalar_bytes`](Self::scalar_bytes)) for a value that lives as
/// long as the call (`&[u8]` parameters, lists of `&str`).
///
/// ```
/// use fdserver::args::Received;
/// assert_eq!(Received::Element(b"7").parse::<i8>().unwrap(), 7);
/// let mut data = b"data".to_vec();
/// let err = Received::Scalar(&mut data).fd().unwrap_err();
/// assert_eq!(err.reason(), "expected a file descriptor, got a scalar");
/// ```
#[derive(Debug)]
pub enum Received<'a> {
    /// An array element (for [`Form::Inline`] values).
    Element(&'a [u8]),
    /// A scalar message (for [`Form::Scalar`] values), in the buffer it was read into.
    Scalar(&'a mut Vec<u8>),
    /// A descriptor (for [`Form::Fd`] values).
    Fd(OwnedFd),
}

impl<'a> Received<'a> {
    fn mismatch(&self, wanted: &str) -> ArgError {
        let got = match self {
            Received::Element(_) => "an array element",
            Received::Scalar(_) => "a scalar",
            Received::Fd(_) => "a file descriptor",
        };
        ArgError::new(format_args!("expected {wanted}, got {got}"))
    }

    /// The array element.
    pub fn element(self) -> Result<&'a [u8], ArgError> {
        match self {
            Received::Element(e) => Ok(e),
            other => Err(other.mismatch("an array element")),
        }
    }

    /// The array element as UTF-8.
    ///
    /// ```
    /// use fdserver::args::Received;
    /// assert_eq!(Received::Element(b"abc").str().unwrap(), "abc");
    /// assert_eq!(Received::Element(b"\xff").str().unwrap_err().to_string(),
    ///            "invalid utf-8 sequence of 1 bytes from index 0");
    /// ```
    pub fn str(self) -> Result<&'a str, ArgError> {
        std::str::from_utf8(self.element()?).map_err(ArgError::new)
    }

    /// The array element parsed with [`FromStr`]; the parse error's text is the reason.
    ///
    /// ```
    /// use fdserver::args::Received;
    /// assert_eq!(Received::Element(b"42").parse::<u8>().unwrap(), 42);
    /// assert_eq!(Received::Element(b"x").parse::<u8>().unwrap_err().to_string(),
    ///            "invalid digit found in string");
    /// ```
    pub fn parse<T>(self) -> Result<T, ArgError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.str()?.parse().map_err(ArgError::new)
    }

    /// The scalar's bytes, taken out of the buffer they were read into.
    pub fn scalar(self) -> Result<Vec<u8>, ArgError> {
        match self {
            Received::Scalar(s) => Ok(std::mem::take(s)),
            other => Err(other.mismatch("a scalar")),
        }
    }

    /// The scalar's bytes, borrowed for as long as the value decoded from them lives.
    ///
    /// ```
    /// use fdserver::args::Received;
    /// let mut buf = b"abc".to_vec();
    /// assert_eq!(Received::Scalar(&mut buf).scalar_bytes().unwrap(), b"abc");
    /// ```
    pub fn scalar_bytes(self) -> Result<&'a [u8], ArgError> {
        match self {
            Received::Scalar(s) => Ok(s),
            other => Err(other.mismatch("a scalar")),
        }
    }

    /// The descriptor.
    pub fn fd(self) -> Result<OwnedFd, ArgError> {
        match self {
            Received::Fd(fd) => Ok(fd),
            other => Err(other.mismatch("a file descriptor")),
        }
    }
}

const INLINE_CAP: usize = 46;

/// One array element to send: borrowed bytes, or a short formatted value kept without allocating.
///
/// ```
/// use fdserver::args::Element;
/// assert_eq!(Element::bytes(b"abc").as_bytes(), b"abc");
/// assert_eq!(Element::display(-12.5).as_bytes(), b"-12.5");
/// assert_eq!(Element::display("x".repeat(100)).as_bytes().len(), 100);
/// ```
pub struct Element<'a>(Repr<'a>);

enum Repr<'a> {
    Borrowed(&'a [u8]),
    Inline { len: u8, buf: [u8; INLINE_CAP] },
    Owned(Vec<u8>),
}

impl<'a> Element<'a> {
    /// An element holding these bytes.
    pub const fn bytes(bytes: &'a [u8]) -> Self {
        Element(Repr::Borrowed(bytes))
    }

    /// An element holding these bytes.
    pub fn owned(bytes: Vec<u8>) -> Element<'static> {
        Element(Repr::Owned(bytes))
    }

    /// An element holding `value`'s `Display` text (short texts need no allocation).
    pub fn display(value: impl Display) -> Element<'static> {
        let mut w = ElementWriter {
            len: 0,
            buf: [0; INLINE_CAP],
            spill: None,
        };
        fmt::write(&mut w, format_args!("{value}"))
            .expect("a Display implementation returned an error unexpectedly");
        match w.spill {
            Some(v) => Element(Repr::Owned(v)),
            None => Element(Repr::Inline {
                len: w.len as u8,
                buf: w.buf,
            }),
        }
    }

    /// The decimal text of an integer (`-` and its magnitude), as `Display` writes it.
    fn integer(negative: bool, magnitude: u128) -> Element<'static> {
        let mut digits = [0u8; 40];
        let mut i = digits.len();
        if let Ok(mut v) = u64::try_from(magnitude) {
            loop {
                i -= 1;
                digits[i] = b'0' + (v % 10) as u8;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
        } else {
            let mut v = magnitude;
            loop {
                i -= 1;
                digits[i] = b'0' + (v % 10) as u8;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
        }
        if negative {
            i -= 1;
            digits[i] = b'-';
        }
        let len = digits.len() - i;
        let mut buf = [0u8; INLINE_CAP];
        buf[..len].copy_from_slice(&digits[i..]);
        Element(Repr::Inline {
            len: len as u8,
            buf,
        })
    }

    /// The element's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Borrowed(b) => b,
            Repr::Inline { len, buf } => &buf[..*len as usize],
            Repr::Owned(v) => v,
        }
    }

    /// The element with the `Option` escape byte in front.
    fn escaped(self) -> Element<'a> {
        let bytes = self.as_bytes();
        let mut v = Vec::with_capacity(bytes.len() + 1);
        v.push(OPTION_ESCAPE);
        v.extend_from_slice(bytes);
        Element(Repr::Owned(v))
    }
}

impl AsRef<[u8]> for Element<'_> {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for Element<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Element({:?})", String::from_utf8_lossy(self.as_bytes()))
    }
}

struct ElementWriter {
    len: usize,
    buf: [u8; INLINE_CAP],
    spill: Option<Vec<u8>>,
}

impl fmt::Write for ElementWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(v) = &mut self.spill {
            v.extend_from_slice(s.as_bytes());
        } else if self.len + s.len() <= INLINE_CAP {
            self.buf[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
        } else {
            let mut v = Vec::with_capacity(self.len + s.len() + 16);
            v.extend_from_slice(&self.buf[..self.len]);
            v.extend_from_slice(s.as_bytes());
            self.spill = Some(v);
        }
        Ok(())
    }
}

/// One value to send: output of [`ToArg::to_arg`].
///
/// ```
/// use fdserver::args::{Encoded, ToArg};
/// assert!(matches!(42u16.to_arg(), Encoded::Element(e) if e.as_bytes() == b"42"));
/// assert!(matches!(b"bytes".to_vec().to_arg(), Encoded::Scalar(s) if *s == *b"bytes"));
/// let file = std::fs::File::open("/dev/null")?;
/// assert!(matches!(file.to_arg(), Encoded::Fd(_)));
/// // A list item cannot hold a NUL byte: the value cannot be sent, and nothing is.
/// assert!(matches!(vec!["a\0b".to_string()].to_arg(), Encoded::Invalid(_)));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub enum Encoded<'a> {
    /// An array element ([`Form::Inline`]).
    Element(Element<'a>),
    /// A scalar message ([`Form::Scalar`]): borrowed bytes, or bytes built for sending (a
    /// list, a JSON document).
    Scalar(Cow<'a, [u8]>),
    /// A descriptor ([`Form::Fd`]); the sender keeps its own copy.
    Fd(BorrowedFd<'a>),
    /// The value cannot be sent (a list item containing a NUL byte, a serialisation error); the
    /// call or reply fails before anything is written.
    Invalid(ArgError),
}

/// A type a handler can take as a parameter, and a client can receive in a reply.
///
/// Implemented for the types in the [module docs](self); for your own `FromStr + Display` types
/// use [`display_fromstr_arg!`](crate::display_fromstr_arg), for `From<OwnedFd>` types
/// [`fd_arg!`](crate::fd_arg), or implement it by hand (together with [`ToArg`], same [`Form`]):
///
/// ```
/// use fdserver::args::{ArgError, Element, Encoded, Form, FromArg, Received, ToArg};
///
/// /// An even number.
/// #[derive(Debug, PartialEq)]
/// struct Even(u32);
///
/// impl FromArg<'_> for Even {
///     const FORM: Form = Form::Inline;
///     fn from_arg(arg: Received<'_>) -> Result<Self, ArgError> {
///         let n: u32 = arg.parse()?;
///         if n % 2 == 0 { Ok(Even(n)) } else { Err(ArgError::new("must be even")) }
///     }
/// }
///
/// impl ToArg for Even {
///     const FORM: Form = Form::Inline;
///     fn to_arg(&self) -> Encoded<'_> {
///         Encoded::Element(Element::display(self.0))
///     }
/// }
///
/// assert_eq!(Even::from_arg(Received::Element(b"4")).unwrap(), Even(4));
/// assert_eq!(Even::from_arg(Received::Element(b"5")).unwrap_err().reason(), "must be even");
/// ```
///
/// The lifetime `'a` is that of the received message: a handler's `&str`, `&[u8]`, `&Path` and
/// `&OsStr` parameters borrow from it instead of allocating. Owned types implement
/// `FromArg<'a>` for every `'a`; what a client receives must be owned (`for<'a> FromArg<'a>`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be received as an fdserver argument or reply value",
    label = "this type does not implement `fdserver::args::FromArg`",
    note = "supported: String, &str, bool, integers, floats, char, PathBuf, &Path, OsString, &OsStr, Option<T> and Vec<T> of those, Vec<u8> and &[u8] (as a scalar), OwnedFd, File, UnixStream and other descriptors",
    note = "for your own `FromStr + Display` type, add `fdserver::display_fromstr_arg!(YourType);`; for any serde type, wrap it in `fdserver::Json<T>` (feature `serde`) (see the `fdserver::args` docs)"
)]
pub trait FromArg<'a>: Sized {
    /// How the value travels. Must be the same as the [`ToArg::FORM`] of what the peer sends.
    const FORM: Form;

    /// Builds the value from what arrived (always of the variant matching [`FORM`](Self::FORM)).
    fn from_arg(arg: Received<'a>) -> Result<Self, ArgError>;
}

/// A type whose values can be items of a list (`Vec<T>`, which travels as one scalar: each
/// item's element followed by a NUL byte). Implemented for the inline types except `u8`
/// (`Vec<u8>` is a byte payload), for `Option`s of list items, and by
/// [`display_fromstr_arg!`](crate::display_fromstr_arg); implement it (it has no methods) for
/// your own inline [`FromArg`] / [`ToArg`] types.
///
/// ```
/// fn list_item<T: fdserver::args::ListItem>() {}
/// list_item::<String>();
/// list_item::<Option<u32>>();
/// list_item::<&std::path::Path>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an item of an fdserver list (`Vec<{Self}>`)",
    label = "not a list item",
    note = "list items travel inline: strings, numbers, paths, `Option`s of those, `display_fromstr_arg!` types; `Vec<u8>` is a byte payload, not a list",
    note = "for your own inline `FromArg`/`ToArg` type, add `impl fdserver::args::ListItem for YourType {{}}`; for anything else, use `fdserver::Json<Vec<T>>` (feature `serde`)"
)]
pub trait ListItem {}

/// A type a client can send as an argument, and a handler can return in a reply.
///
/// See [`FromArg`] for an example. Client stubs take borrowed forms where handlers take owned
/// ones (`&str` for `String`, `&[u8]` for `Vec<u8>`, `BorrowedFd` for descriptors), so those
/// implement `ToArg` too.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be sent as an fdserver argument or reply value",
    label = "this type does not implement `fdserver::args::ToArg`",
    note = "supported: String, &str, bool, integers, floats, char, PathBuf, &Path, OsString, &OsStr, Option<T> and Vec<T> of those, Vec<u8> and &[u8] (as a scalar), OwnedFd, File, UnixStream and other descriptors",
    note = "for your own `FromStr + Display` type, add `fdserver::display_fromstr_arg!(YourType);`; for any serde type, wrap it in `fdserver::Json<T>` (feature `serde`) (see the `fdserver::args` docs)"
)]
pub trait ToArg {
    /// How the value travels (the variant [`to_arg`](Self::to_arg) returns).
    const FORM: Form;

    /// The element, scalar or descriptor to send.
    fn to_arg(&self) -> Encoded<'_>;
}

impl<T: ToArg + ?Sized> ToArg for &T {
    const FORM: Form = T::FORM;
    fn to_arg(&self) -> Encoded<'_> {
        (**self).to_arg()
    }
}

// ---------------------------------------------------------------------------------------------
// Inline types
// ---------------------------------------------------------------------------------------------

macro_rules! display_fromstr {
    ($($t:ty)*) => {$(
        impl FromArg<'_> for $t {
            const FORM: Form = Form::Inline;
            fn from_arg(arg: Received<'_>) -> Result<Self, ArgError> {
                arg.parse()
            }
        }
        impl ListItem for $t {}
        impl ToArg for $t {
            const FORM: Form = Form::Inline;
            fn to_arg(&self) -> Encoded<'_> {
                Encoded::Element(Element::display(self))
            }
        }
    )*};
}

display_fromstr! {
    f32 f64
    NonZeroI8 NonZeroI16 NonZeroI32 NonZeroI64 NonZeroI128 NonZeroIsize
    NonZeroU8 NonZeroU16 NonZeroU32 NonZeroU64 NonZeroU128 NonZeroUsize
    IpAddr Ipv4Addr Ipv6Addr SocketAddr
}

/// Integers, on the hot path of every call that carries one: decimal digits written and read
/// directly (the same text as `Display` and `FromStr`; anything but plain digits, with a `-` for
/// a signed type, goes through `FromStr`, for its error message).
macro_rules! integers {
    ($($t:ty: $negative:ident, $magnitude:expr;)*) => {$(
        impl FromArg<'_> for $t {
            const FORM: Form = Form::Inline;
            #[allow(irrefutable_let_patterns)] // `i128::try_from(i128)`
            fn from_arg(arg: Received<'_>) -> Result<Self, ArgError> {
                if let Received::Element(bytes) = &arg {
                    let (negative, digits) = match bytes.split_first() {
                        Some((b'-', rest)) if <$t>::MIN != 0 => (true, rest),
                        _ => (false, &bytes[..]),
                    };
                    if let Some(v) = parse_digits(digits) {
                        let v = if negative { -(v as i128) } else { v as i128 };
                        if let Ok(v) = <$t>::try_from(v) {
                            return Ok(v);
                        }
                    }
                }
                arg.parse()
            }
        }
        impl ToArg for $t {
            const FORM: Form = Form::Inline;
            fn to_arg(&self) -> Encoded<'_> {
                let v = *self;
                Encoded::Element(Element::integer($negative(v), $magnitude(v)))
            }
        }
    )*};
}

fn below_zero<T: Default + PartialOrd>(v: T) -> bool {
    v < T::default()
}

fn never<T>(_: T) -> bool {
    false
}

integers! {
    i8: below_zero, |v: i8| v.unsigned_abs() as u128;
    i16: below_zero, |v: i16| v.unsigned_abs() as u128;
    i32: below_zero, |v: i32| v.unsigned_abs() as u128;
    i64: below_zero, |v: i64| v.unsigned_abs() as u128;
    i128: below_zero, |v: i128| v.unsigned_abs();
    isize: below_zero, |v: isize| v.unsigned_abs() as u128;
    u8: never, u128::from;
    u16: never, u128::from;
    u32: never, u128::from;
    u64: never, u128::from;
    u128: never, |v: u128| v;
    usize: never, |v: usize| v as u128;
}

impl ListItem for i8 {}
impl ListItem for i16 {}
impl ListItem for i32 {}
impl ListItem for i64 {}
impl ListItem for i128 {}
impl ListItem for isize {}
impl ListItem for u16 {}
impl ListItem for u32 {}
impl ListItem for u64 {}
impl ListItem for u128 {}
impl ListItem for usize {}
// (`u8` is inline too, but not a list item: `Vec<u8>` is a byte payload.)

/// The value of 1 to 38 ASCII decimal digits, if that is what `digits` is (38 digits always fit
/// in an `i128` as a magnitude below 10^38).
fn parse_digits(digits: &[u8]) -> Option<u128> {
    if digits.is_empty() || digits.len() > 38 {
        return None;
    }
    let mut v: u128 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u128::from(d - b'0');
    }
    Some(v)
}

impl ListItem for bool {}
impl ListItem for char {}
impl ListItem for String {}
impl ListItem for &str {}
impl ListItem for PathBuf {}
impl ListItem for &Path {}
impl ListItem for OsString {}
impl ListItem for &OsStr {}
impl<T: ListItem> ListItem for Option<T> {}

impl FromArg<'_> for bool {
    const FORM: Form = Form::Inline;
    fn from_arg(arg: Received<'_>) -> Result<Self, ArgError> {
        match arg.element()? {
            b"true" | b"1" => Ok(true),
            b"false" | b"0" => Ok(false),
            _ => Err(ArgError::new("expected `true` or `false`")),
        }
    }
}

impl ToArg for bool {
    const FORM: Form = Form::Inline;
    fn to_arg(&self) -> Encoded<'_> {
        Encoded::Element(Element::bytes(if *self { b"true" } else { b"false" }))
    }
}

impl FromArg<'_> for char {
    const FORM: Form = Form::Inline;
    fn from_arg(arg: Received<'_>) -> Result<Self, ArgError> {
        let s = arg.str()?;
        let mut chars = s.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => Ok(c),
            _ => Err(ArgError::new("expected exactly one character")),
        }
    }
}

impl ToArg for char {
    const FORM: Form = Form::Inline;
    fn to_arg(&self) -> Encoded<'_> {
        Encoded::Element(Element::display(self))
    }
}

impl FromArg<'_> for String {
    const FORM: Form = Form::Inline;
    fn from_arg(arg: Received<'_>) -> Result<Self, ArgError> {
        arg.str().map(str::to_owned)
    }
}

impl ToArg for String {
    const FORM: Form = Form::Inline;
    fn to_arg(&self) -> Encoded<'_> {
        Encoded::Element(Element::bytes(self.as_bytes()))
    }
}

impl<'a> FromArg<'a> for &'a str {
    const FORM: Form = Form::Inline;
    fn from_arg(arg: Received<'a>) -> Result<Self, ArgError> {
        arg.str()
    }
}

impl<'a> FromArg<'a> for &'a Path {
    const FORM: Form = Form::Inline;
    fn from_arg(arg: Received<'a>) -> Result<Self, ArgError> {
        Ok(Path::new(OsStr::from_bytes(arg.element()?)))
    }
}

impl<'a> FromArg<'a> for &'a OsStr {
    const FORM: Form = Form::Inline;
    fn from_arg(arg: Received<'a>) -> Result<Self, ArgError> {
        Ok(OsStr::from_bytes(arg.element()?))
    }
}

impl<'a> FromArg<'a> for &'a [u8] {
    const FORM: Form = Form::Scalar;
    fn from_arg(arg: Received<'a>) -> Result<Self, ArgError> {
        arg.scalar_bytes()
    }
}

impl ToArg for str {
    const FORM: Form = Form::Inline;
    fn to_arg(&self) -> Encoded<'_> {
        Encoded::Element(Element::bytes(self.as_bytes()))
    }
}

impl FromArg<'_> for PathBuf {
    const FORM: Form = Form::Inline;
    fn from_arg(arg: Received<'_>) -> Result<Self, ArgError> {
        Ok(PathBuf::from(OsStr::from_bytes(arg.element()?)))
    }
}

impl ToArg for PathBuf {
    const FORM: Form = Form::Inline;
    fn to_arg(&self) -> Encoded<'_> {
        self.as_path().to_arg()
    }
}

impl ToArg for Path {
    const FORM: Form = Form::Inline;
    fn to_arg(&self) -> Encoded<'_> {
        Encoded::Element(Element::bytes(self.as_os_str().as_bytes()))
    }
}

impl FromArg<'_> for OsString {
    const FORM: Form = Form::Inline;
    fn from_arg(arg: Received<'_>) -> Result<Self, ArgError> {
        Ok(OsStr::from_bytes(arg.element()?).to_owned())
    }
}

impl ToArg for OsString {
    const FORM: Form = Form::Inline;
    fn to_arg(&self) -> Encoded<'_> {
        self.as_os_str().to_arg()
    }
}

impl ToArg for OsStr {
    const FORM: Form = Form::Inline;
    fn to_arg(&self) -> Encoded<'_> {
        Encoded::Element(Element::bytes(self.as_bytes()))
    }
}

const fn option_form(inner: Form) -> Form {
    match inner {
        Form::Inline => Form::Inline,
        _ => panic!(
            "fdserver: `Option<T>` needs an inline `T` (one array element); descriptors and \
             byte payloads (`Vec<u8>`) cannot be optional"
        ),
    }
}

impl<'a, T: FromArg<'a>> FromArg<'a> for Option<T> {
    const FORM: Form = option_form(T::FORM);
    fn from_arg(arg: Received<'a>) -> Result<Self, ArgError> {
        let e = arg.element()?;
        match e.first() {
            None => Ok(None),
            Some(&OPTION_ESCAPE) => T::from_arg(Received::Element(&e[1..])).map(Some),
            Some(_) => T::from_arg(Received::Element(e)).map(Some),
        }
    }
}

impl<T: ToArg> ToArg for Option<T> {
    const FORM: Form = option_form(T::FORM);
    fn to_arg(&self) -> Encoded<'_> {
        match self {
            None => Encoded::Element(Element::bytes(b"")),
            Some(v) => match v.to_arg() {
                Encoded::Element(e) => {
                    if matches!(e.as_bytes().first(), None | Some(&OPTION_ESCAPE)) {
                        Encoded::Element(e.escaped())
                    } else {
                        Encoded::Element(e)
                    }
                }
                other => other,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scalars
// ---------------------------------------------------------------------------------------------

impl FromArg<'_> for Vec<u8> {
    const FORM: Form = Form::Scalar;
    fn from_arg(arg: Received<'_>) -> Result<Self, ArgError> {
        arg.scalar()
    }
}

impl ToArg for Vec<u8> {
    const FORM: Form = Form::Scalar;
    fn to_arg(&self) -> Encoded<'_> {
        Encoded::Scalar(Cow::Borrowed(self))
    }
}

impl ToArg for [u8] {
    const FORM: Form = Form::Scalar;
    fn to_arg(&self) -> Encoded<'_> {
        Encoded::Scalar(Cow::Borrowed(self))
    }
}

// ---------------------------------------------------------------------------------------------
// Lists
// ---------------------------------------------------------------------------------------------

const fn list_item_form(inner: Form) -> Form {
    match inner {
        Form::Inline => Form::Scalar,
        _ => panic!(
            "fdserver: `Vec<T>` needs an inline `T` (one array element per item): lists of \
             descriptors or byte payloads cannot be sent"
        ),
    }
}

/// `Vec<T>` of inline items: one scalar holding each item's element followed by a NUL byte
/// (the body of an array message, without its 64 KiB limit). An empty list is an empty scalar.
impl<'a, T: FromArg<'a> + ListItem> FromArg<'a> for Vec<T> {
    const FORM: Form = list_item_form(T::FORM);
    fn from_arg(arg: Received<'a>) -> Result<Self, ArgError> {
        let bytes = arg.scalar_bytes()?;
        let Some(body) = bytes.strip_suffix(b"\0") else {
            return if bytes.is_empty() {
                Ok(Vec::new())
            } else {
                Err(ArgError::new("list scalar does not end with a NUL byte"))
            };
        };
        let mut out = Vec::with_capacity(body.iter().filter(|&&b| b == 0).count() + 1);
        for (i, item) in body.split(|&b| b == 0).enumerate() {
            let value = T::from_arg(Received::Element(item))
                .map_err(|e| ArgError::new(format_args!("item {}: {e}", i + 1)))?;
            out.push(value);
        }
        Ok(out)
    }
}

impl<T: ToArg + ListItem> ToArg for Vec<T> {
    const FORM: Form = list_item_form(T::FORM);
    fn to_arg(&self) -> Encoded<'_> {
        self.as_slice().to_arg()
    }
}

impl<T: ToArg + ListItem> ToArg for [T] {
    const FORM: Form = list_item_form(T::FORM);
    fn to_arg(&self) -> Encoded<'_> {
        List::new(self).into_encoded()
    }
}

/// A list built for sending: what a client method taking `&[impl AsRef<str>]` (for a
/// `Vec<String>` parameter) sends. Each item's element, followed by a NUL byte, in one scalar.
///
/// ```
/// use fdserver::args::{Encoded, List, ToArg};
/// let list = List::new(["a", "", "c"]);
/// assert!(matches!(list.to_arg(), Encoded::Scalar(s) if *s == *b"a\0\0c\0"));
/// assert!(matches!(List::new(["x\0y"]).to_arg(), Encoded::Invalid(_)));
/// ```
#[derive(Debug)]
pub struct List(Result<Vec<u8>, ArgError>);

impl List {
    /// Encodes the items (each must travel inline).
    pub fn new<I>(items: I) -> List
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        let mut out = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            match item.to_arg() {
                Encoded::Element(e) if !e.as_bytes().contains(&0) => {
                    out.extend_from_slice(e.as_bytes());
                    out.push(0);
                }
                Encoded::Element(_) => {
                    return List(Err(ArgError::new(format_args!(
                        "list item {} contains a NUL byte, which the wire format cannot carry",
                        i + 1
                    ))))
                }
                Encoded::Invalid(e) => {
                    return List(Err(ArgError::new(format_args!("list item {}: {e}", i + 1))))
                }
                _ => return List(Err(ArgError::new("list items must travel inline"))),
            }
        }
        List(Ok(out))
    }

    fn into_encoded(self) -> Encoded<'static> {
        match self.0 {
            Ok(bytes) => Encoded::Scalar(Cow::Owned(bytes)),
            Err(e) => Encoded::Invalid(e),
        }
    }
}

impl ToArg for List {
    const FORM: Form = Form::Scalar;
    fn to_arg(&self) -> Encoded<'_> {
        match &self.0 {
            Ok(bytes) => Encoded::Scalar(Cow::Borrowed(bytes)),
            Err(e) => Encoded::Invalid(e.clone()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Descriptors
// ---------------------------------------------------------------------------------------------

/// Implements [`FromArg`] and [`ToArg`] for `FromStr + Display` types: they travel as one array
/// element holding their `Display` text, and a `FromStr` error's text becomes the reason in the
/// `bad_arguments` error.
///
/// ```
/// #[derive(Debug, PartialEq)]
/// struct Celsius(f64);
/// impl std::fmt::Display for Celsius {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{}C", self.0) }
/// }
/// impl std::str::FromStr for Celsius {
///     type Err = String;
///     fn from_str(s: &str) -> Result<Self, String> {
///         let n = s.strip_suffix('C').ok_or("missing unit C")?;
///         n.parse().map(Celsius).map_err(|e| format!("{e}"))
///     }
/// }
/// fdserver::display_fromstr_arg!(Celsius);
///
/// use fdserver::args::{Encoded, FromArg, Received, ToArg};
/// let Encoded::Element(e) = Celsius(21.5).to_arg() else { unreachable!() };
/// assert_eq!(e.as_bytes(), b"21.5C");
/// assert_eq!(Celsius::from_arg(Received::Element(b"21.5C")).unwrap(), Celsius(21.5));
/// ```
#[macro_export]
macro_rules! display_fromstr_arg {
    ($($t:ty),+ $(,)?) => {$(
        impl $crate::args::FromArg<'_> for $t {
            const FORM: $crate::args::Form = $crate::args::Form::Inline;
            fn from_arg(
                arg: $crate::args::Received<'_>,
            ) -> ::core::result::Result<Self, $crate::args::ArgError> {
                arg.parse()
            }
        }
        impl $crate::args::ListItem for $t {}
        impl $crate::args::ToArg for $t {
            const FORM: $crate::args::Form = $crate::args::Form::Inline;
            fn to_arg(&self) -> $crate::args::Encoded<'_> {
                $crate::args::Encoded::Element($crate::args::Element::display(self))
            }
        }
    )+};
}

/// Implements [`FromArg`] and [`ToArg`] for descriptor types (`From<OwnedFd> + AsFd`): they
/// travel as one file descriptor (`SCM_RIGHTS`).
///
/// ```
/// use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
///
/// /// A pipe's write end.
/// struct PipeWriter(OwnedFd);
/// impl From<OwnedFd> for PipeWriter {
///     fn from(fd: OwnedFd) -> Self { PipeWriter(fd) }
/// }
/// impl AsFd for PipeWriter {
///     fn as_fd(&self) -> BorrowedFd<'_> { self.0.as_fd() }
/// }
/// fdserver::fd_arg!(PipeWriter);
///
/// assert_eq!(<PipeWriter as fdserver::args::FromArg<'_>>::FORM, fdserver::args::Form::Fd);
/// ```
#[macro_export]
macro_rules! fd_arg {
    ($($t:ty),+ $(,)?) => {$(
        impl $crate::args::FromArg<'_> for $t {
            const FORM: $crate::args::Form = $crate::args::Form::Fd;
            fn from_arg(
                arg: $crate::args::Received<'_>,
            ) -> ::core::result::Result<Self, $crate::args::ArgError> {
                arg.fd().map(<$t as ::core::convert::From<::std::os::fd::OwnedFd>>::from)
            }
        }
        impl $crate::args::ToArg for $t {
            const FORM: $crate::args::Form = $crate::args::Form::Fd;
            fn to_arg(&self) -> $crate::args::Encoded<'_> {
                $crate::args::Encoded::Fd(::std::os::fd::AsFd::as_fd(self))
            }
        }
    )+};
}

crate::fd_arg!(
    OwnedFd,
    File,
    UnixStream,
    UnixListener,
    UnixDatagram,
    TcpStream,
    TcpListener,
    UdpSocket
);

impl ToArg for BorrowedFd<'_> {
    const FORM: Form = Form::Fd;
    fn to_arg(&self) -> Encoded<'_> {
        Encoded::Fd(self.as_fd())
    }
}

// ---------------------------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------------------------

/// What a handler's reply carries, on the sending (server) side: `()`, one value ([`ToArg`]), or
/// a tuple of up to 12 values. Implemented for those; you do not implement it yourself.
///
/// Inline members become the elements after `"ok"`, in order; out-of-band members (scalars,
/// descriptors) follow the array, in order.
///
/// ```
/// fn sendable<V: fdserver::args::ToValues>() {}
/// sendable::<()>();
/// sendable::<String>();
/// sendable::<(u32, std::fs::File, Vec<u8>)>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be sent as the value of an fdserver reply",
    label = "not `()`, a tuple, or a type implementing `ToArg`",
    note = "see the `fdserver::args` docs for the supported types"
)]
pub trait ToValues {
    #[doc(hidden)]
    const __LEN: usize;
    #[doc(hidden)]
    fn __form(index: usize) -> Form;
    #[doc(hidden)]
    fn __encode(&self, index: usize) -> Encoded<'_>;
}

/// What a reply carries, on the receiving (client) side: `()`, one value ([`FromArg`]), or a
/// tuple of up to 12 values. Implemented for those; you do not implement it yourself.
///
/// ```
/// fn receivable<V: fdserver::args::FromValues>() {}
/// receivable::<()>();
/// receivable::<Option<u8>>();
/// receivable::<(String, std::os::fd::OwnedFd)>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be received as the value of an fdserver reply",
    label = "not `()`, a tuple, or a type implementing `FromArg`",
    note = "see the `fdserver::args` docs for the supported types"
)]
pub trait FromValues: Sized {
    /// Whether the first value sent after the reply array is a descriptor (then the client
    /// reads it together with the reply).
    #[doc(hidden)]
    const __FIRST_OUT_OF_BAND_IS_FD: bool = false;
    /// The form of each value, in order.
    #[doc(hidden)]
    const __FORMS: &'static [Form];
    #[doc(hidden)]
    fn __decode(decoder: &mut Decoder<'_>) -> Option<Self>;
}

/// Whether the first form in `forms` that is not inline is a descriptor.
const fn first_out_of_band_is_fd(forms: &[Form]) -> bool {
    let mut i = 0;
    while i < forms.len() {
        match forms[i] {
            Form::Inline => i += 1,
            Form::Fd => return true,
            Form::Scalar => return false,
        }
    }
    false
}

impl<T: ToArg> ToValues for T {
    const __LEN: usize = 1;
    fn __form(_: usize) -> Form {
        T::FORM
    }
    fn __encode(&self, _: usize) -> Encoded<'_> {
        self.to_arg()
    }
}

impl<T> FromValues for T
where
    T: for<'a> FromArg<'a>,
{
    const __FIRST_OUT_OF_BAND_IS_FD: bool =
        first_out_of_band_is_fd(&[<T as FromArg<'static>>::FORM]);
    const __FORMS: &'static [Form] = &[<T as FromArg<'static>>::FORM];
    fn __decode(decoder: &mut Decoder<'_>) -> Option<Self> {
        decoder.take::<T>(0)
    }
}

impl ToValues for () {
    const __LEN: usize = 0;
    fn __form(_: usize) -> Form {
        Form::Inline
    }
    fn __encode(&self, _: usize) -> Encoded<'_> {
        Encoded::Element(Element::bytes(b""))
    }
}

impl FromValues for () {
    const __FORMS: &'static [Form] = &[];
    fn __decode(_: &mut Decoder<'_>) -> Option<Self> {
        Some(())
    }
}

macro_rules! tuple_values {
    ($len:expr; $($t:ident $v:ident $i:tt),+) => {
        impl<$($t: ToArg),+> ToValues for ($($t,)+) {
            const __LEN: usize = $len;
            fn __form(index: usize) -> Form {
                match index {
                    $($i => $t::FORM,)+
                    _ => Form::Inline,
                }
            }
            fn __encode(&self, index: usize) -> Encoded<'_> {
                match index {
                    $($i => self.$i.to_arg(),)+
                    _ => Encoded::Element(Element::bytes(b"")),
                }
            }
        }

        impl<$($t),+> FromValues for ($($t,)+)
        where
            $($t: for<'a> FromArg<'a>,)+
        {
            const __FIRST_OUT_OF_BAND_IS_FD: bool =
                first_out_of_band_is_fd(&[$(<$t as FromArg<'static>>::FORM),+]);
            const __FORMS: &'static [Form] = &[$(<$t as FromArg<'static>>::FORM),+];
            fn __decode(decoder: &mut Decoder<'_>) -> Option<Self> {
                // Take every member before giving up on any: out-of-band ones must be read.
                $(let $v = decoder.take::<$t>($i);)+
                Some(($($v?,)+))
            }
        }
    };
}

tuple_values!(1; A a 0);
tuple_values!(2; A a 0, B b 1);
tuple_values!(3; A a 0, B b 1, C c 2);
tuple_values!(4; A a 0, B b 1, C c 2, D d 3);
tuple_values!(5; A a 0, B b 1, C c 2, D d 3, E e 4);
tuple_values!(6; A a 0, B b 1, C c 2, D d 3, E e 4, F f 5);
tuple_values!(7; A a 0, B b 1, C c 2, D d 3, E e 4, F f 5, G g 6);
tuple_values!(8; A a 0, B b 1, C c 2, D d 3, E e 4, F f 5, G g 6, H h 7);
tuple_values!(9; A a 0, B b 1, C c 2, D d 3, E e 4, F f 5, G g 6, H h 7, I i 8);
tuple_values!(10; A a 0, B b 1, C c 2, D d 3, E e 4, F f 5, G g 6, H h 7, I i 8, J j 9);
tuple_values!(11; A a 0, B b 1, C c 2, D d 3, E e 4, F f 5, G g 6, H h 7, I i 8, J j 9, K k 10);
tuple_values!(12; A a 0, B b 1, C c 2, D d 3, E e 4, F f 5, G g 6, H h 7, I i 8, J j 9, K k 10, L l 11);

/// What a handler may return: [`ToValues`] (`()`, a value, a tuple), or `Result<V, E>` with
/// `E: Display`, whose `Err` reaches the client as an error reply:
///
/// * a [`RemoteError`] is sent as it is, so a handler can choose the kind;
/// * an `std::io::Error` (also inside a `Box<dyn Error + Send + Sync>`, or an
///   [`Error::Io`](crate::Error::Io)) as `["error", "io", text, kind, errno]`
///   ([`RemoteError::io`]), which the client turns back into an `io::Error` with the same
///   `kind()` and `raw_os_error()`;
/// * a [`WireError`](crate::WireError) type as `["error", code, text, fields...]`;
/// * any other error as `["error", "failed", e.to_string()]`
///   ([`Error::Remote`](crate::Error::Remote) with kind [`Failed`](crate::RemoteErrorKind::Failed)).
///
/// Type aliases such as `io::Result<T>` work too. The client method returns
/// `Result<V, fdserver::Error>`, or `Result<V, fdserver::CallError<E>>` in a `typed_errors`
/// server (see [`WireError`](crate::WireError)).
///
/// ```
/// use fdserver::{RemoteError, RemoteErrorKind};
///
/// struct Accounts;
///
/// #[fdserver::fdserver]
/// impl Accounts {
///     fn withdraw(&mut self, amount: u64) -> Result<u64, RemoteError> {
///         if amount == 0 {
///             return Err(RemoteError::bad_arguments("withdraw: amount must be positive"));
///         }
///         Err(RemoteError::failed("insufficient funds"))
///     }
///
///     fn parse(&mut self, text: &str) -> Result<u64, std::num::ParseIntError> {
///         text.trim().parse()
///     }
///
///     fn open(&mut self, path: &std::path::Path) -> std::io::Result<u64> {
///         Ok(std::fs::metadata(path)?.len())
///     }
/// }
///
/// let mut c = Accounts.start()?;
/// let e = c.withdraw(0).unwrap_err();
/// assert_eq!(e.as_remote().unwrap().kind(), &RemoteErrorKind::BadArguments);
/// let e = c.withdraw(5).unwrap_err();
/// assert_eq!(e.to_string(), "server error: failed: insufficient funds");
/// assert_eq!(c.parse(" 12 ")?, 12);
/// assert_eq!(c.parse("x").unwrap_err().to_string(), "server error: failed: invalid digit found in string");
/// let e = std::io::Error::from(c.open("/no/such/file").unwrap_err());
/// assert_eq!((e.kind(), e.raw_os_error()), (std::io::ErrorKind::NotFound, Some(libc::ENOENT)));
/// # Ok::<(), fdserver::Error>(())
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be returned by an fdserver handler",
    label = "not `()`, a value, a tuple of values, or `Result` of those with a `Display` error",
    note = "see the `fdserver::args` docs for the supported types"
)]
pub trait Reply {
    /// The values sent on success (what the client stub returns).
    type Ok: ToValues;

    /// The values, or the error reply to send.
    fn into_reply(self) -> Result<Self::Ok, RemoteError>;
}

impl<T: ToValues> Reply for T {
    type Ok = T;
    fn into_reply(self) -> Result<T, RemoteError> {
        Ok(self)
    }
}

impl<T: ToValues, E: Display + 'static> Reply for Result<T, E> {
    type Ok = T;
    fn into_reply(self) -> Result<T, RemoteError> {
        self.map_err(|e| error_reply(&e))
    }
}

/// The error reply for a handler's `Err(e)` (see [`Reply`]).
fn error_reply<E: Display + 'static>(e: &E) -> RemoteError {
    let any = e as &dyn std::any::Any;
    if let Some(remote) = any.downcast_ref::<RemoteError>() {
        // A handler that chose its error kind keeps it.
        return remote.clone();
    }
    if let Some(io) = any.downcast_ref::<std::io::Error>() {
        return RemoteError::io(io);
    }
    if let Some(error) = any.downcast_ref::<crate::Error>() {
        return match error {
            crate::Error::Io(io) => RemoteError::io(io),
            crate::Error::Remote(remote) => remote.clone(),
            other => RemoteError::failed(other),
        };
    }
    let boxed = any
        .downcast_ref::<Box<dyn std::error::Error + Send + Sync>>()
        .map(|b| &**b as &(dyn std::error::Error + 'static))
        .or_else(|| {
            any.downcast_ref::<Box<dyn std::error::Error>>()
                .map(|b| &**b as &(dyn std::error::Error + 'static))
        });
    if let Some(io) = boxed.and_then(|b| b.downcast_ref::<std::io::Error>()) {
        return RemoteError::io(io);
    }
    RemoteError::failed(e)
}

/// The return type of a handler whose error travels as itself: `Result<T, E>` with
/// `E: `[`WireError`](crate::WireError). In a `typed_errors` server the client method of such
/// a handler returns `Result<T, fdserver::CallError<E>>`.
///
/// ```
/// fn typed<R: fdserver::args::TypedReply>() {}
/// typed::<std::io::Result<u32>>();
/// typed::<Result<(), String>>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the return type of a `typed_errors` handler",
    label = "not `Result<T, E>` with `E: fdserver::WireError`",
    note = "derive `fdserver::WireError` on the error type, return `String` or `std::io::Error`, or leave `typed_errors` off"
)]
pub trait TypedReply: Reply {
    /// The error type the client gets back.
    type Error: crate::WireError;

    #[doc(hidden)]
    fn __into_result(self) -> Result<Self::Ok, Self::Error>;
}

impl<T: ToValues, E: crate::WireError> TypedReply for Result<T, E> {
    type Error = E;
    fn __into_result(self) -> Result<T, E> {
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Serde values
// ---------------------------------------------------------------------------------------------

/// A value carried as JSON in a scalar message: any `serde` type as a parameter or a result,
/// with the `serde` feature (`fdserver = { version = "0.1", features = ["serde"] }`).
///
/// `Json<T>` travels as one scalar holding `serde_json`'s encoding of the `T`: readable in every
/// language (`JSON.parse(channel.read_scalar)` in Ruby), without the 64 KiB limit of array
/// messages. A handler takes `Json<T>` (`T: Deserialize`, so `Json<Query<'_>>` may borrow from
/// the received scalar) and returns `Json<T>` (`T: Serialize`); the client method takes `&T`
/// and returns `Json<T>` (which derefs to `T`; `.0` or [`into_inner`](Json::into_inner) takes
/// it out). Why JSON and not a binary codec: see BENCHMARKS.md (row 8).
///
/// Why a wrapper rather than every serde type automatically: `String`, numbers and paths are
/// serde types too, and travel as array elements a Passenger peer reads as plain text; a
/// wrapper keeps each value's wire form visible in the handler's signature. A serde type used
/// without it is a compile error whose note points here, and so is `Json` without the feature.
///
#[cfg_attr(feature = "serde", doc = "```")]
#[cfg_attr(not(feature = "serde"), doc = "```ignore")]
/// use std::collections::BTreeMap;
/// use fdserver::Json;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// enum Shape { Circle { r: f64 }, Square(f64) }
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct Drawing { name: String, shapes: Vec<Shape>, tags: BTreeMap<String, u32> }
///
/// struct Store;
///
/// #[fdserver::fdserver]
/// impl Store {
///     fn area(&mut self, drawing: Json<Drawing>) -> Json<Vec<f64>> {
///         Json(drawing.shapes.iter().map(|s| match s {
///             Shape::Circle { r } => 3.0 * r * r,
///             Shape::Square(a) => a * a,
///         }).collect())
///     }
/// }
///
/// let mut store = Store.start()?;
/// let drawing = Drawing {
///     name: "d".into(),
///     shapes: vec![Shape::Circle { r: 1.0 }, Shape::Square(2.0)],
///     tags: BTreeMap::from([("x".to_string(), 1)]),
/// };
/// assert_eq!(*store.area(&drawing)?, [3.0, 4.0]);
/// # Ok::<(), fdserver::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T> From<T> for Json<T> {
    fn from(value: T) -> Self {
        Json(value)
    }
}

#[cfg(feature = "serde")]
impl<'a, T: serde::Deserialize<'a>> FromArg<'a> for Json<T> {
    const FORM: Form = Form::Scalar;
    fn from_arg(arg: Received<'a>) -> Result<Self, ArgError> {
        serde_json::from_slice(arg.scalar_bytes()?)
            .map(Json)
            .map_err(|e| ArgError::new(format_args!("JSON: {e}")))
    }
}

#[cfg(feature = "serde")]
impl<T: serde::Serialize> ToArg for Json<T> {
    const FORM: Form = Form::Scalar;
    fn to_arg(&self) -> Encoded<'_> {
        match serde_json::to_vec(&self.0) {
            Ok(bytes) => Encoded::Scalar(Cow::Owned(bytes)),
            Err(e) => Encoded::Invalid(ArgError::new(format_args!("JSON: {e}"))),
        }
    }
}

/// Without the `serde` feature, `Json<T>` exists only to say what to do.
#[cfg(not(feature = "serde"))]
#[diagnostic::on_unimplemented(
    message = "`fdserver::Json<{Self}>` needs fdserver's `serde` feature, which is off",
    label = "`Json` values travel as JSON only with the `serde` feature",
    note = "enable it in Cargo.toml: `fdserver = {{ version = \"0.1\", features = [\"serde\"] }}`"
)]
pub trait SerdeFeatureIsOff {}

#[cfg(not(feature = "serde"))]
impl<T: SerdeFeatureIsOff> FromArg<'_> for Json<T> {
    const FORM: Form = Form::Scalar;
    fn from_arg(_: Received<'_>) -> Result<Self, ArgError> {
        Err(ArgError::new("the serde feature is off"))
    }
}

// Not bounded by `SerdeFeatureIsOff`: every `Json` in a `#[fdserver]` signature is decoded on
// one side (a parameter by the server, a result by the client), where the `FromArg` bound above
// reports it; a bound here too would report each one a second time, for the other side.
#[cfg(not(feature = "serde"))]
impl<T> ToArg for Json<T> {
    const FORM: Form = Form::Scalar;
    fn to_arg(&self) -> Encoded<'_> {
        Encoded::Invalid(ArgError::new(
            "`fdserver::Json` needs fdserver's `serde` feature, which is off",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element<T: ToArg + ?Sized>(v: &T) -> Vec<u8> {
        match v.to_arg() {
            Encoded::Element(e) => e.as_bytes().to_vec(),
            other => panic!("not inline: {other:?}"),
        }
    }

    fn back<'a, T: FromArg<'a>>(bytes: &'a [u8]) -> Result<T, ArgError> {
        T::from_arg(Received::Element(bytes))
    }

    #[test]
    fn integers_read_and_write_what_display_and_fromstr_do() {
        fn check<T>(values: &[T])
        where
            T: ToArg + for<'a> FromArg<'a> + Display + FromStr + PartialEq + fmt::Debug + Copy,
            T::Err: Display,
        {
            for &v in values {
                assert_eq!(element(&v), v.to_string().as_bytes(), "{v}");
                assert_eq!(back::<T>(v.to_string().as_bytes()).unwrap(), v);
            }
            for text in [
                "",
                "-",
                "+5",
                " 5",
                "5 ",
                "-0",
                "007",
                "1e3",
                "0x10",
                "99999999999999999999999",
                "-99999999999999999999999",
                "340282366920938463463374607431768211456",
                "-170141183460469231731687303715884105729",
            ] {
                let fast = back::<T>(text.as_bytes()).map_err(|e| e.to_string());
                let slow = text.parse::<T>().map_err(|e| e.to_string());
                assert_eq!(fast, slow, "{text:?}");
            }
        }
        check(&[0u8, 1, 9, 10, 255]);
        check(&[0u16, 65535]);
        check(&[0u32, 1234, u32::MAX]);
        check(&[0u64, u64::MAX]);
        check(&[0u128, u128::MAX, u64::MAX as u128 + 1]);
        check(&[0usize, usize::MAX]);
        check(&[0i8, -1, i8::MIN, i8::MAX]);
        check(&[0i16, i16::MIN, i16::MAX]);
        check(&[0i32, -1234, i32::MIN, i32::MAX]);
        check(&[0i64, i64::MIN, i64::MAX]);
        check(&[0i128, i128::MIN, i128::MAX, -(u64::MAX as i128) - 7]);
        check(&[0isize, isize::MIN, isize::MAX]);
    }

    #[test]
    fn option_round_trips() {
        let cases: [Option<String>; 5] = [
            None,
            Some(String::new()),
            Some("x".into()),
            Some("\u{1}".into()),
            Some("\u{1}\u{1}a".into()),
        ];
        for c in cases {
            let e = element(&c);
            assert_eq!(back::<Option<String>>(&e).unwrap(), c, "{e:?}");
        }
        assert_eq!(element(&None::<u8>), b"");
        assert_eq!(element(&Some(5u8)), b"5");
        assert_eq!(element(&Some("")), b"\x01");
        // Nested options stay distinct.
        for c in [
            None,
            Some(None),
            Some(Some(String::new())),
            Some(Some("a".into())),
        ] {
            let e = element(&c);
            assert_eq!(back::<Option<Option<String>>>(&e).unwrap(), c, "{e:?}");
        }
    }

    #[test]
    fn numbers_and_text() {
        assert_eq!(element(&-5i64), b"-5");
        assert_eq!(element(&u128::MAX), u128::MAX.to_string().as_bytes());
        assert_eq!(back::<f64>(&element(&f64::MAX)).unwrap(), f64::MAX);
        assert!(back::<f64>(&element(&f64::NAN)).unwrap().is_nan());
        assert_eq!(back::<f32>(&element(&0.1f32)).unwrap(), 0.1f32);
        assert_eq!(back::<char>("é".as_bytes()).unwrap(), 'é');
        assert!(back::<char>(b"ab").is_err());
        assert!(back::<bool>(b"1").unwrap());
        assert_eq!(
            back::<bool>(b"yes").unwrap_err().reason(),
            "expected `true` or `false`"
        );
        assert_eq!(
            back::<PathBuf>(b"/tmp/\xff")
                .unwrap()
                .as_os_str()
                .as_bytes(),
            b"/tmp/\xff"
        );
        let long = "y".repeat(200);
        assert_eq!(element(&long), long.as_bytes());
        assert_eq!(Element::display(&long).as_bytes(), long.as_bytes());
    }
}
