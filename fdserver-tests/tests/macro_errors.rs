//! Structured errors across the wire (issue 14, items 1 and 2): an `io::Error` returned by a
//! handler comes back with its kind and OS error number; a user's error enum comes back as
//! itself, matchable, with fdserver's own errors kept apart; the wire form stays a
//! `["error", kind, text, ...]` array any MessageChannel peer reads.

use std::fmt;
use std::io;
use std::path::PathBuf;

use fdserver::{CallError, Error, MessageBuf, ProtocolError, RemoteError, RemoteErrorKind};
use fdserver_tests::{watchdog, SECS};

/// Errors of every flavour, by OS error number or by kind alone.
struct Files;

#[fdserver::fdserver]
impl Files {
    /// The `io::Error` for `errno` (0: a custom error of `kind`, without a number).
    fn fail(&mut self, errno: i32, kind: String) -> io::Result<()> {
        if errno != 0 {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let kind = match kind.as_str() {
            "not_found" => io::ErrorKind::NotFound,
            "invalid_data" => io::ErrorKind::InvalidData,
            "timed_out" => io::ErrorKind::TimedOut,
            _ => io::ErrorKind::Other,
        };
        Err(io::Error::new(kind, format!("custom {kind:?} error")))
    }

    fn open(&mut self, path: PathBuf) -> io::Result<u64> {
        Ok(std::fs::File::open(path)?.metadata()?.len())
    }

    /// An `io::Error` inside a boxed error.
    fn boxed(&mut self, errno: i32) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Err(Box::new(io::Error::from_raw_os_error(errno)))
    }

    /// An error reply that cannot fit in an array message as it is.
    fn huge(&mut self) -> Result<(), RemoteError> {
        Err(RemoteError::new(
            RemoteErrorKind::Other("k".repeat(70_000)),
            "t".repeat(70_000),
        )
        .with_details(["d".repeat(40_000), "a\0b".into()]))
    }

    /// A plain `Display` error: kind `failed`.
    fn plain(&mut self) -> Result<(), std::num::ParseIntError> {
        "x".parse::<u8>().map(|_| ())
    }
}

#[test]
fn io_errors_keep_their_kind_and_errno() {
    let _wd = watchdog("io_errors_keep_their_kind_and_errno", SECS(30));
    let mut c = Files.start().unwrap();
    for errno in [
        libc::ENOENT,
        libc::EACCES,
        libc::EEXIST,
        libc::EISDIR,
        libc::ENOTDIR,
        libc::ENOSPC,
        libc::EPIPE,
        libc::ECONNREFUSED,
        libc::EAGAIN,
        libc::EINTR,
        libc::EIO, // no kind of its own: Uncategorized on both sides
        libc::EBADF,
    ] {
        let expected = io::Error::from_raw_os_error(errno);
        let e = c.fail(errno, "").unwrap_err();
        let remote = e.as_remote().unwrap().clone();
        assert_eq!(remote.kind(), &RemoteErrorKind::Io);
        assert_eq!(remote.message(), expected.to_string());
        let back = io::Error::from(e);
        assert_eq!(back.kind(), expected.kind(), "errno {errno}");
        assert_eq!(back.raw_os_error(), Some(errno));
        assert_eq!(back.to_string(), expected.to_string());
        // The same through RemoteError and CallError.
        assert_eq!(remote.to_io_error().unwrap().raw_os_error(), Some(errno));
        match CallError::<io::Error>::from_error(Error::Remote(remote)) {
            CallError::Handler(h) => assert_eq!(h.raw_os_error(), Some(errno)),
            other => panic!("{other:?}"),
        }
    }
    // Without an OS error number: the kind and the text.
    for (name, kind) in [
        ("not_found", io::ErrorKind::NotFound),
        ("invalid_data", io::ErrorKind::InvalidData),
        ("timed_out", io::ErrorKind::TimedOut),
        ("other", io::ErrorKind::Other),
    ] {
        let back = io::Error::from(c.fail(0, name).unwrap_err());
        assert_eq!(back.kind(), kind);
        assert_eq!(back.raw_os_error(), None);
        assert_eq!(back.to_string(), format!("custom {kind:?} error"));
    }
    // A real one, with `?` on std::fs.
    let e = io::Error::from(c.open("/definitely/not/here").unwrap_err());
    assert_eq!(
        (e.kind(), e.raw_os_error()),
        (io::ErrorKind::NotFound, Some(libc::ENOENT))
    );
    // Inside a Box<dyn Error + Send + Sync>.
    let e = io::Error::from(c.boxed(libc::EPERM).unwrap_err());
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    // Other errors stay `failed`.
    let e = c.plain().unwrap_err();
    assert_eq!(e.as_remote().unwrap().kind(), &RemoteErrorKind::Failed);
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::Other);
    c.stop().unwrap();
}

#[test]
fn io_error_wire_form_is_a_plain_error_array() {
    let _wd = watchdog("io_error_wire_form", SECS(30));
    let mut c = Files.start().unwrap();
    // What a Ruby peer reads with `channel.read`.
    let ch = c.channel();
    ch.write_array(["fail", "13", ""]).unwrap();
    let mut buf = MessageBuf::new();
    ch.read_into(&mut buf).unwrap();
    assert_eq!(
        buf.message().to_strings().unwrap(),
        [
            "error",
            "io",
            "Permission denied (os error 13)",
            "permission_denied",
            "13"
        ]
    );
    ch.write_array(["fail", "0", "not_found"]).unwrap();
    ch.read_into(&mut buf).unwrap();
    assert_eq!(
        buf.message().to_strings().unwrap(),
        ["error", "io", "custom NotFound error", "not_found", ""]
    );
    c.stop().unwrap();
}

#[derive(Debug, PartialEq, fdserver::WireError)]
enum BankError {
    InsufficientFunds {
        needed: u64,
        available: u64,
    },
    NoSuchAccount(String),
    #[wire_error(code = "frozen")]
    AccountFrozen,
    Limit(Option<u32>, PathBuf),
}

impl fmt::Display for BankError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BankError::InsufficientFunds { needed, available } => {
                write!(
                    f,
                    "insufficient funds: {needed} needed, {available} available"
                )
            }
            BankError::NoSuchAccount(name) => write!(f, "no account named {name:?}"),
            BankError::AccountFrozen => f.write_str("the account is frozen"),
            BankError::Limit(n, p) => write!(f, "limit {n:?} in {}", p.display()),
        }
    }
}

impl std::error::Error for BankError {}

struct Bank {
    balance: u64,
}

#[fdserver::fdserver(typed_errors)]
impl Bank {
    fn withdraw(&mut self, account: &str, amount: u64) -> Result<u64, BankError> {
        match account {
            "joe" if amount <= self.balance => {
                self.balance -= amount;
                Ok(self.balance)
            }
            "joe" => Err(BankError::InsufficientFunds {
                needed: amount,
                available: self.balance,
            }),
            "averell" => Err(BankError::AccountFrozen),
            "jack" => Err(BankError::Limit(Some(3), PathBuf::from("/a b"))),
            "william" => Err(BankError::Limit(None, PathBuf::new())),
            other => Err(BankError::NoSuchAccount(other.to_owned())),
        }
    }

    fn read(&mut self, path: PathBuf) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn note(&mut self, text: String) -> Result<(), String> {
        Err(format!("cannot note {text:?}"))
    }

    fn balance(&self) -> u64 {
        self.balance
    }
}

#[test]
fn user_error_enum_is_matched_on_the_client() {
    let _wd = watchdog("user_error_enum_is_matched_on_the_client", SECS(30));
    let mut bank = Bank { balance: 100 }.start().unwrap();
    assert_eq!(bank.withdraw("joe", 30).unwrap(), 70);
    match bank.withdraw("joe", 500) {
        Err(CallError::Handler(BankError::InsufficientFunds { needed, available })) => {
            assert_eq!((needed, available), (500, 70))
        }
        other => panic!("{other:?}"),
    }
    let e = bank.withdraw("averell", 1).unwrap_err();
    assert!(matches!(e, CallError::Handler(BankError::AccountFrozen)));
    assert_eq!(e.to_string(), "server error: the account is frozen");
    assert_eq!(
        bank.withdraw("Ma Dalton", 1).unwrap_err().handler(),
        Some(&BankError::NoSuchAccount("Ma Dalton".into()))
    );
    assert_eq!(
        bank.withdraw("jack", 1).unwrap_err().handler(),
        Some(&BankError::Limit(Some(3), "/a b".into()))
    );
    assert_eq!(
        bank.withdraw("william", 1).unwrap_err().handler(),
        Some(&BankError::Limit(None, PathBuf::new()))
    );
    // io::Result and Result<_, String> in a typed_errors server.
    let e = bank.read("/definitely/not/here").unwrap_err();
    match &e {
        CallError::Handler(io) => assert_eq!(io.raw_os_error(), Some(libc::ENOENT)),
        other => panic!("{other:?}"),
    }
    assert_eq!(io::Error::from(e).kind(), io::ErrorKind::NotFound);
    assert!(matches!(
        bank.note("x"),
        Err(CallError::Handler(s)) if s == r#"cannot note "x""#
    ));
    // fdserver's own errors stay apart: a bad argument, a dead server.
    let raw = bank
        .handle_mut()
        .call(["withdraw", "joe", "lots"])
        .unwrap_err();
    match CallError::<BankError>::from_error(raw) {
        CallError::Fdserver(Error::Remote(r)) => {
            assert_eq!(r.kind(), &RemoteErrorKind::BadArguments)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(bank.balance().unwrap(), 70);
    bank.signal(fdserver::Signal::SIGKILL).unwrap();
    assert!(matches!(
        bank.withdraw("joe", 1),
        Err(CallError::Fdserver(Error::ServerExited(_)))
    ));
}

#[test]
fn user_error_wire_form_and_decoding_failures() {
    let _wd = watchdog("user_error_wire_form", SECS(30));
    let mut bank = Bank { balance: 5 }.start().unwrap();
    let h = bank.handle_mut();
    let e = h.call(["withdraw", "joe", "9"]).unwrap_err();
    let r = e.as_remote().unwrap();
    assert_eq!(r.kind().as_str(), "insufficient_funds");
    assert_eq!(r.message(), "insufficient funds: 9 needed, 5 available");
    assert_eq!(r.details(), [b"9".to_vec(), b"5".to_vec()]);
    let e = h.call(["withdraw", "averell", "9"]).unwrap_err();
    assert_eq!(e.as_remote().unwrap().kind().as_str(), "frozen");
    assert!(e.as_remote().unwrap().details().is_empty());

    // A reply with the right code but bad details (from a buggy peer) is a protocol error.
    let bad = RemoteError::new(RemoteErrorKind::Other("insufficient_funds".into()), "x")
        .with_details(["nine", "5"]);
    match CallError::<BankError>::from_error(Error::Remote(bad)) {
        CallError::Fdserver(Error::Protocol(ProtocolError::BadReply(m))) => assert_eq!(
            m,
            r#"error reply "insufficient_funds" does not decode: field `needed`: invalid digit found in string (got "nine")"#
        ),
        other => panic!("{other:?}"),
    }
    let short = RemoteError::new(RemoteErrorKind::Other("no_such_account".into()), "x");
    assert!(matches!(
        CallError::<BankError>::from_error(Error::Remote(short)),
        CallError::Fdserver(Error::Protocol(ProtocolError::BadReply(m))) if m.ends_with("expected 1 field(s), got 0")
    ));
    // An unknown code is not ours: it stays an fdserver error.
    let other = RemoteError::new(RemoteErrorKind::Other("newer_code".into()), "x");
    assert!(matches!(
        CallError::<BankError>::from_error(Error::Remote(other)),
        CallError::Fdserver(Error::Remote(_))
    ));
    // Back to an untyped error: the reply it travelled as.
    let e = Error::from(CallError::Handler(BankError::AccountFrozen));
    assert_eq!(e.to_string(), "server error: frozen: the account is frozen");
    bank.stop().unwrap();
}

/// Without `typed_errors`, the wire form is the same and the client decodes it on demand.
struct Untyped;

#[fdserver::fdserver]
impl Untyped {
    fn withdraw(&mut self, account: &str) -> Result<u64, BankError> {
        Err(BankError::NoSuchAccount(account.to_owned()))
    }
}

#[test]
fn untyped_client_decodes_on_demand() {
    let _wd = watchdog("untyped_client_decodes_on_demand", SECS(30));
    let mut c = Untyped.start().unwrap();
    let e: Error = c.withdraw("x").unwrap_err();
    assert_eq!(e.as_remote().unwrap().kind().as_str(), "no_such_account");
    assert!(matches!(
        CallError::<BankError>::from_error(e),
        CallError::Handler(BankError::NoSuchAccount(n)) if n == "x"
    ));
    c.stop().unwrap();
}

#[test]
fn oversized_error_replies_are_cut_not_lost() {
    let _wd = watchdog("oversized_error_replies_are_cut_not_lost", SECS(30));
    let mut c = Files.start().unwrap();
    let e = c.huge().unwrap_err();
    let r = e.as_remote().unwrap();
    assert_eq!(r.kind().as_str().len(), 1_000);
    assert_eq!(r.message().len(), 60_000);
    assert!(
        r.details().is_empty(),
        "details that do not fit are left out"
    );
    // The server kept serving.
    assert!(c.plain().is_err());
    assert!(c.stop().unwrap().status.success());
}
