//! Structured errors across the wire: [`WireError`] (an error type a handler returns and a client
//! gets back as itself) and [`CallError`] (that error, or fdserver's own).

use std::fmt;
use std::io;

use crate::args::ArgError;
use crate::error::{Error, ProtocolError, RemoteError, RemoteErrorKind};

/// An error type that crosses the wire as itself: a handler returns it, and a client gets the
/// same value back, matchable, in [`CallError::Handler`] (zbus's `DBusError`, for fdserver).
///
/// Derive it on your error enum (or struct) with `#[derive(fdserver::WireError)]`, next to a
/// `Display` implementation (written by hand or by `thiserror`). Each variant travels as the
/// error reply `["error", code, text, fields...]`: `code` is the variant's name in snake case
/// (`InsufficientFunds` → `insufficient_funds`; `#[wire_error(code = "...")]` on the variant
/// chooses another), `text` is the error's `Display`, and each field is one element, encoded
/// like an inline argument (strings, numbers, paths, `Option`s of those, your
/// [`display_fromstr_arg!`](crate::display_fromstr_arg) types). A Ruby or C++ peer reads it as
/// any error reply. Codes fdserver itself uses (`failed`, `io`, `bad_arguments`,
/// `unknown_message`, `panicked`, `protocol`, `initialize`) are refused at compile time.
///
/// Mark the server `#[fdserver::fdserver(typed_errors)]` (or one handler
/// `#[fdserver(typed_errors)]`) and the client method of a handler returning `Result<T, E>`
/// returns `Result<T, fdserver::CallError<E>>`:
///
/// ```
/// use std::fmt;
/// use fdserver::CallError;
///
/// #[derive(Debug, PartialEq, fdserver::WireError)]
/// enum BankError {
///     InsufficientFunds { needed: u64, available: u64 },
///     NoSuchAccount(String),
///     #[wire_error(code = "frozen")]
///     AccountFrozen,
/// }
///
/// impl fmt::Display for BankError {
///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
///         match self {
///             BankError::InsufficientFunds { needed, available } => {
///                 write!(f, "insufficient funds: {needed} needed, {available} available")
///             }
///             BankError::NoSuchAccount(name) => write!(f, "no account named {name:?}"),
///             BankError::AccountFrozen => f.write_str("the account is frozen"),
///         }
///     }
/// }
///
/// impl std::error::Error for BankError {}
///
/// struct Bank { balance: u64 }
///
/// #[fdserver::fdserver(typed_errors)]
/// impl Bank {
///     fn withdraw(&mut self, account: &str, amount: u64) -> Result<u64, BankError> {
///         match account {
///             "joe" if amount <= self.balance => { self.balance -= amount; Ok(self.balance) }
///             "joe" => Err(BankError::InsufficientFunds { needed: amount, available: self.balance }),
///             "averell" => Err(BankError::AccountFrozen),
///             other => Err(BankError::NoSuchAccount(other.to_owned())),
///         }
///     }
/// }
///
/// let mut bank = Bank { balance: 100 }.start()?;
/// assert_eq!(bank.withdraw("joe", 30)?, 70);
/// match bank.withdraw("joe", 500) {
///     Err(CallError::Handler(BankError::InsufficientFunds { available, .. })) => assert_eq!(available, 70),
///     other => panic!("{other:?}"),
/// }
/// assert!(matches!(bank.withdraw("averell", 1), Err(CallError::Handler(BankError::AccountFrozen))));
///
/// // What any MessageChannel peer sees:
/// let raw = bank.handle_mut().call(["withdraw", "jack", "1"]).unwrap_err();
/// let remote = raw.as_remote().unwrap();
/// assert_eq!(remote.kind().as_str(), "no_such_account");
/// assert_eq!(remote.message(), r#"no account named "jack""#);
/// assert_eq!(remote.details(), [b"jack".to_vec()]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// fdserver implements it for `String` (kind `failed`, the text) and `std::io::Error` (kind
/// `io`, see [`RemoteError::io`]), so those work in `typed_errors` servers too. Without
/// `typed_errors` the wire form is the same and the client gets [`Error::Remote`], which
/// [`CallError::from_error`] decodes.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot travel back to the client as itself",
    label = "`{Self}` does not implement `fdserver::WireError`",
    note = "in a `typed_errors` server, a handler's error type must implement `WireError`: add `#[derive(fdserver::WireError)]` to it, or return `String` or `std::io::Error`",
    note = "or leave `typed_errors` off for this handler: any `Display` error then reaches the client as `fdserver::Error::Remote`"
)]
pub trait WireError: fmt::Display + Sized + 'static {
    /// The error reply that carries `self`.
    fn to_remote(&self) -> RemoteError;

    /// Rebuilds the error from an error reply: `None` if the reply is not one of this type's
    /// (another code: an fdserver error such as `bad_arguments`, or a code this version does not
    /// know), `Some(Err(..))` if it is but its details do not decode.
    fn from_remote(remote: &RemoteError) -> Option<Result<Self, ArgError>>;
}

impl WireError for String {
    /// `["error", "failed", text]`.
    fn to_remote(&self) -> RemoteError {
        RemoteError::failed(self)
    }

    /// Any `failed` reply: its text.
    fn from_remote(remote: &RemoteError) -> Option<Result<Self, ArgError>> {
        (*remote.kind() == RemoteErrorKind::Failed).then(|| Ok(remote.message().to_owned()))
    }
}

impl WireError for io::Error {
    /// [`RemoteError::io`].
    fn to_remote(&self) -> RemoteError {
        RemoteError::io(self)
    }

    /// [`RemoteError::to_io_error`].
    fn from_remote(remote: &RemoteError) -> Option<Result<Self, ArgError>> {
        (*remote.kind() == RemoteErrorKind::Io).then(|| {
            remote
                .to_io_error()
                .ok_or_else(|| ArgError::new("malformed io error details"))
        })
    }
}

/// What the client method of a `typed_errors` handler returns on failure: the handler's own
/// error, or fdserver's.
///
/// `Display` gives the whole message (`server error: ` and the handler error's text, or the
/// fdserver error's text); `source()` is the wrapped error's own source, never the wrapped error
/// itself, so chain printers show each cause once (as for [`Error`]).
///
/// ```
/// use fdserver::{CallError, Error};
/// let e: CallError<String> = CallError::Handler("disk full".into());
/// assert_eq!(e.to_string(), "server error: disk full");
/// let e: CallError<String> = CallError::Fdserver(Error::Disconnected);
/// assert_eq!(
///     e.to_string(),
///     "the peer closed the connection (it exited or dropped its end)"
/// );
/// ```
#[derive(Debug)]
pub enum CallError<E> {
    /// The handler returned `Err(e)`; this is `e`, rebuilt on the client.
    Handler(E),
    /// Anything else: the server could not be reached or died, the request was refused
    /// (`bad_arguments`, `unknown_message`), the handler panicked, the reply was malformed...
    Fdserver(Error),
}

impl<E> CallError<E> {
    /// Whether the server must be replaced: never for the handler's own error (the server
    /// answered and keeps serving), else [`Error::needs_restart`].
    ///
    /// ```
    /// use fdserver::{CallError, Error};
    /// assert!(!CallError::Handler("disk full").needs_restart());
    /// assert!(CallError::<&str>::Fdserver(Error::Disconnected).needs_restart());
    /// ```
    pub fn needs_restart(&self) -> bool {
        match self {
            CallError::Handler(_) => false,
            CallError::Fdserver(e) => e.needs_restart(),
        }
    }

    /// The handler's error, if that is what this is.
    pub fn handler(&self) -> Option<&E> {
        match self {
            CallError::Handler(e) => Some(e),
            CallError::Fdserver(_) => None,
        }
    }

    /// fdserver's error, if that is what this is.
    pub fn fdserver(&self) -> Option<&Error> {
        match self {
            CallError::Handler(_) => None,
            CallError::Fdserver(e) => Some(e),
        }
    }
}

impl<E: WireError> CallError<E> {
    /// Sorts an [`Error`] from an untyped call ([`ServerHandle::call`](crate::ServerHandle::call),
    /// a client without `typed_errors`, a reply read by hand): an error reply that is one of
    /// `E`'s becomes [`CallError::Handler`]; one whose code is `E`'s but whose details do not
    /// decode becomes a [`ProtocolError::BadReply`]; everything else stays as it is.
    ///
    /// ```
    /// use std::io;
    /// use fdserver::{CallError, Error, RemoteError};
    /// let err = Error::Remote(RemoteError::io(&io::Error::from_raw_os_error(libc::ENOENT)));
    /// match CallError::<io::Error>::from_error(err) {
    ///     CallError::Handler(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound),
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    pub fn from_error(error: Error) -> Self {
        let Error::Remote(remote) = error else {
            return CallError::Fdserver(error);
        };
        match E::from_remote(&remote) {
            Some(Ok(e)) => CallError::Handler(e),
            Some(Err(why)) => {
                CallError::Fdserver(Error::Protocol(ProtocolError::BadReply(format!(
                    "error reply {:?} does not decode: {why}",
                    remote.kind().as_str()
                ))))
            }
            None => CallError::Fdserver(Error::Remote(remote)),
        }
    }
}

impl<E> From<Error> for CallError<E> {
    fn from(e: Error) -> Self {
        CallError::Fdserver(e)
    }
}

impl<E: fmt::Display> fmt::Display for CallError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Handler(e) => write!(f, "server error: {e}"),
            CallError::Fdserver(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error> std::error::Error for CallError<E> {
    /// Not the wrapped error, whose text `Display` already includes, but its own source.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CallError::Handler(e) => e.source(),
            CallError::Fdserver(e) => std::error::Error::source(e),
        }
    }
}

impl<E: WireError> From<CallError<E>> for Error {
    /// Back to an untyped [`Error`]: a handler error becomes the [`Error::Remote`] it travelled
    /// as, so `?` works in functions returning `fdserver::Error`.
    fn from(e: CallError<E>) -> Self {
        match e {
            CallError::Handler(e) => Error::Remote(e.to_remote()),
            CallError::Fdserver(e) => e,
        }
    }
}

impl<E: Into<io::Error>> From<CallError<E>> for io::Error {
    /// A handler's `io::Error` as it is (same kind and OS error number); fdserver's errors
    /// as [`From<Error> for io::Error`](Error) converts them.
    fn from(e: CallError<E>) -> Self {
        match e {
            CallError::Handler(e) => e.into(),
            CallError::Fdserver(e) => e.into(),
        }
    }
}
