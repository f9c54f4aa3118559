//! `#[fdserver]` through real forked servers: every supported parameter and return type
//! round-trips; argument errors, remote errors and unknown messages sent through the raw channel
//! are answered with typed errors and the server keeps serving.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU64;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use fdserver::{fdserver, Context, Error, MessageBuf, RemoteErrorKind, ServerHandle};
use fdserver_tests::{watchdog, SECS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Low,
    High,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Low => "low",
            Level::High => "high",
        })
    }
}

impl FromStr for Level {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "low" => Ok(Level::Low),
            "high" => Ok(Level::High),
            other => Err(format!("unknown level {other:?}")),
        }
    }
}

fdserver::display_fromstr_arg!(Level);

#[derive(Default)]
struct Types {
    calls: u32,
}

type Ints = (
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
);

#[fdserver]
impl Types {
    fn string(&mut self, s: String) -> String {
        self.calls += 1;
        s
    }

    fn boolean(&mut self, b: bool) -> bool {
        !b
    }

    #[allow(clippy::too_many_arguments)]
    fn ints(
        &mut self,
        a: i8,
        b: i16,
        c: i32,
        d: i64,
        e: i128,
        f: isize,
        g: u8,
        h: u16,
        i: u32,
        j: u64,
        k: u128,
        l: usize,
    ) -> (
        i8,
        i16,
        i32,
        i64,
        i128,
        isize,
        u8,
        u16,
        u32,
        u64,
        u128,
        usize,
    ) {
        (a, b, c, d, e, f, g, h, i, j, k, l)
    }

    fn floats(&mut self, a: f32, b: f64) -> (f32, f64) {
        (a, b)
    }

    fn character(&mut self, c: char) -> (char, u32) {
        (c, c as u32)
    }

    fn path(&mut self, p: PathBuf) -> PathBuf {
        p.join("child")
    }

    fn os(&mut self, s: OsString) -> OsString {
        s
    }

    fn opt_str(&mut self, s: Option<String>) -> Option<String> {
        s
    }

    fn opt_num(&mut self, n: Option<u32>) -> Option<u32> {
        n.map(|n| n + 1)
    }

    fn opt_path(&mut self, p: Option<PathBuf>) -> Option<PathBuf> {
        p
    }

    fn opt_opt(&mut self, o: Option<Option<String>>) -> Option<Option<String>> {
        o
    }

    fn bytes(&mut self, data: Vec<u8>) -> Vec<u8> {
        data.iter().rev().copied().collect()
    }

    /// Inline and out-of-band parameters mixed, and a reply mixing them too.
    fn mixed(&mut self, name: String, data: Vec<u8>, n: u32) -> (usize, Vec<u8>, String) {
        (data.len(), data, format!("{name}{n}"))
    }

    fn unit(&mut self) {
        self.calls += 1;
    }

    fn user(&mut self, level: Level) -> Level {
        match level {
            Level::Low => Level::High,
            Level::High => Level::Low,
        }
    }

    fn net(&mut self, ip: IpAddr, port: u16, n: NonZeroU64) -> (SocketAddr, NonZeroU64) {
        (SocketAddr::new(ip, port), n)
    }

    fn fallible(&mut self, fail: bool) -> Result<u32, String> {
        if fail {
            Err("it failed, as asked".into())
        } else {
            Ok(7)
        }
    }

    fn io_result(&mut self, path: PathBuf) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    fn fmt_result(&mut self, fail: bool) -> fmt::Result {
        if fail {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }

    fn alias(&mut self) -> Ints {
        (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
    }

    fn with_ctx(&mut self, n: u32, ctx: &mut Context<'_>) -> (u32, u32) {
        (n, ctx.pid())
    }

    fn count(&self) -> u32 {
        self.calls
    }

    #[fdserver(name = "renamed.message")]
    fn renamed(&mut self) -> String {
        "renamed".into()
    }

    fn r#type(&mut self) -> String {
        "raw identifier".into()
    }

    fn long(&mut self, n: usize) -> (String, f64) {
        ("é".repeat(n), f64::MAX)
    }

    fn panics(&mut self) -> u32 {
        panic!("handler panicked on purpose")
    }

    fn add(&mut self, a: i32, b: i32) -> i32 {
        a + b
    }

    fn hello(&mut self, first_name: String, last_name: String) -> (String, u32) {
        (
            format!("Hello {first_name} {last_name}, how are you?"),
            1234,
        )
    }

    /// Out-of-band parameters between inline ones.
    fn put(&mut self, key: String, data: Vec<u8>, n: u32) -> String {
        format!("{key}:{}:{n}", data.len())
    }

    fn quit(&mut self, ctx: &mut Context<'_>) -> String {
        ctx.quit();
        "bye".into()
    }

    #[cfg(not(unix))]
    fn compiled_out(&mut self) {}

    #[cfg(unix)]
    fn compiled_in(&mut self) -> bool {
        true
    }

    #[fdserver(skip)]
    #[allow(dead_code)]
    fn helper(&mut self) -> u32 {
        42
    }

    fn new() -> Self {
        Types::default()
    }
}

#[test]
fn every_type_round_trips() {
    let _wd = watchdog("every_type_round_trips", SECS(30));
    let mut c = Types::new().start().unwrap();

    assert_eq!(c.string("héllo wörld").unwrap(), "héllo wörld");
    assert_eq!(c.string("").unwrap(), "");
    assert!(!c.boolean(true).unwrap());
    assert!(c.boolean(false).unwrap());

    let ints: Ints = (
        i8::MIN,
        i16::MIN,
        i32::MIN,
        i64::MIN,
        i128::MIN,
        isize::MIN,
        u8::MAX,
        u16::MAX,
        u32::MAX,
        u64::MAX,
        u128::MAX,
        usize::MAX,
    );
    let (a, b, cc, d, e, f, g, h, i, j, k, l) = ints;
    assert_eq!(c.ints(a, b, cc, d, e, f, g, h, i, j, k, l).unwrap(), ints);

    for (a, b) in [
        (0.1f32, 0.1f64),
        (-0.0, f64::MIN_POSITIVE),
        (f32::MAX, f64::INFINITY),
        (f32::NEG_INFINITY, 1e300),
    ] {
        let (x, y) = c.floats(a, b).unwrap();
        assert_eq!((x.to_bits(), y.to_bits()), (a.to_bits(), b.to_bits()));
    }
    let (x, y) = c.floats(f32::NAN, f64::NAN).unwrap();
    assert!(x.is_nan() && y.is_nan());

    assert_eq!(c.character('ß').unwrap(), ('ß', 'ß' as u32));
    assert_eq!(c.character('🦀').unwrap(), ('🦀', 0x1F980));

    assert_eq!(c.path("/tmp/x").unwrap(), Path::new("/tmp/x/child"));
    let weird = OsStr::from_bytes(b"not \xff utf-8");
    assert_eq!(
        c.path(Path::new(weird)).unwrap(),
        Path::new(weird).join("child")
    );
    assert_eq!(c.os(weird).unwrap(), weird);
    assert_eq!(c.os("plain").unwrap(), "plain");

    for s in [None, Some(""), Some("x"), Some("\u{1}"), Some("\u{1}y")] {
        assert_eq!(c.opt_str(s).unwrap().as_deref(), s);
    }
    assert_eq!(c.opt_num(None).unwrap(), None);
    assert_eq!(c.opt_num(Some(41)).unwrap(), Some(42));
    assert_eq!(c.opt_path(None).unwrap(), None);
    assert_eq!(
        c.opt_path(Some(Path::new(""))).unwrap(),
        Some(PathBuf::new())
    );
    assert_eq!(
        c.opt_path(Some(Path::new("/a"))).unwrap(),
        Some("/a".into())
    );
    for o in [
        None,
        Some(None),
        Some(Some(String::new())),
        Some(Some("z".into())),
    ] {
        assert_eq!(c.opt_opt(o.clone()).unwrap(), o);
    }

    assert_eq!(c.bytes(b"").unwrap(), b"");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
    let rev: Vec<u8> = big.iter().rev().copied().collect();
    assert_eq!(c.bytes(&big).unwrap(), rev);
    assert_eq!(
        c.mixed("n", b"\0\x01\xff", 5).unwrap(),
        (3, b"\0\x01\xff".to_vec(), "n5".to_string())
    );

    c.unit().unwrap();
    assert_eq!(c.user(Level::Low).unwrap(), Level::High);
    assert_eq!(c.user(Level::High).unwrap(), Level::Low);

    let ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let n = NonZeroU64::new(9).unwrap();
    assert_eq!(c.net(ip, 80, n).unwrap(), (SocketAddr::new(ip, 80), n));

    assert_eq!(c.fallible(false).unwrap(), 7);
    assert_eq!(
        c.io_result("/").unwrap(),
        std::fs::metadata("/").unwrap().len()
    );
    c.fmt_result(false).unwrap();
    assert_eq!(c.alias().unwrap(), (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12));

    let (n, pid) = c.with_ctx(3).unwrap();
    assert_eq!((n, pid), (3, c.pid()));
    assert_ne!(pid, std::process::id());

    // `&self` handlers; `string` and `unit` counted (3 calls).
    assert_eq!(c.count().unwrap(), 3);
    assert_eq!(c.renamed().unwrap(), "renamed");
    assert_eq!(c.r#type().unwrap(), "raw identifier");
    assert!(c.compiled_in().unwrap());

    // Elements longer than the inline buffer, and the largest float.
    assert_eq!(c.long(1000).unwrap(), ("é".repeat(1000), f64::MAX));

    // The wire names, through the untyped handle.
    let h = c.handle_mut();
    assert_eq!(h.call(["renamed.message"]).unwrap(), ["renamed"]);
    assert_eq!(h.call(["type"]).unwrap(), ["raw identifier"]);
    assert_eq!(h.call(["opt_str", ""]).unwrap(), [""]);
    assert_eq!(h.call(["opt_str", "\u{1}"]).unwrap(), ["\u{1}"]);
    assert_eq!(h.call(["opt_num", "5"]).unwrap(), ["6"]);
    assert_eq!(h.call(["boolean", "1"]).unwrap(), ["false"]);
    assert_eq!(
        h.call(["ints", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "+12"])
            .unwrap()
            .len(),
        12
    );

    let stopped = c.stop().unwrap();
    assert!(stopped.status.success(), "{stopped}");
}

fn remote(e: Error) -> (RemoteErrorKind, String) {
    match e {
        Error::Remote(r) => (r.kind().clone(), r.message().to_owned()),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

#[test]
fn argument_errors_name_the_message_parameter_and_reason() {
    let _wd = watchdog("argument_errors", SECS(30));
    let mut c = Types::new().start().unwrap();
    let h = c.handle_mut();

    let e = remote(h.call(["hello", "Joe"]).unwrap_err());
    assert_eq!(
        e,
        (
            RemoteErrorKind::BadArguments,
            "hello: expected 2 arguments (first_name, last_name), got 1".into()
        )
    );
    let e = remote(h.call(["hello", "a", "b", "c"]).unwrap_err());
    assert_eq!(
        e.1,
        "hello: expected 2 arguments (first_name, last_name), got 3"
    );
    let e = remote(h.call(["unit", "x"]).unwrap_err());
    assert_eq!(e.1, "unit: expected no arguments, got 1");
    let e = remote(h.call(["user"]).unwrap_err());
    assert_eq!(e.1, "user: expected 1 argument (level), got 0");

    let e = remote(h.call(["add", "x", "2"]).unwrap_err());
    assert_eq!(
        e,
        (
            RemoteErrorKind::BadArguments,
            r#"add: parameter `a`: invalid digit found in string (got "x")"#.into()
        )
    );
    let e = remote(h.call(["add", "1", "99999999999"]).unwrap_err());
    assert_eq!(
        e.1,
        r#"add: parameter `b`: number too large to fit in target type (got "99999999999")"#
    );
    let e = remote(h.call(["user", "medium"]).unwrap_err());
    assert_eq!(
        e.1,
        r#"user: parameter `level`: unknown level "medium" (got "medium")"#
    );
    let e = remote(h.call(["boolean", "yes"]).unwrap_err());
    assert_eq!(
        e.1,
        r#"boolean: parameter `b`: expected `true` or `false` (got "yes")"#
    );
    let e = remote(h.call(["character", "ab"]).unwrap_err());
    assert_eq!(
        e.1,
        r#"character: parameter `c`: expected exactly one character (got "ab")"#
    );
    let e = remote(h.call([&b"string"[..], b"\xff\xfe"]).unwrap_err());
    assert_eq!(
        e.1,
        "string: parameter `s`: invalid utf-8 sequence of 1 bytes from index 0 (got \"\u{FFFD}\u{FFFD}\")"
    );
    // Long offending values are cut.
    let long = "9".repeat(500);
    let e = remote(h.call(["add", &long, "1"]).unwrap_err());
    assert!(
        e.1.ends_with(&format!("(got \"{}\"...)", "9".repeat(60))),
        "{}",
        e.1
    );

    // The server kept serving through all of that.
    assert_eq!(c.add(2, 3).unwrap(), 5);
    assert_eq!(
        c.hello("Joe", "Dalton").unwrap(),
        ("Hello Joe Dalton, how are you?".into(), 1234)
    );
    assert!(c.stop().unwrap().status.success());
}

#[test]
fn out_of_band_arguments_are_consumed_even_when_inline_ones_are_bad() {
    let _wd = watchdog("out_of_band_consumed", SECS(30));
    let mut c = Types::new().start().unwrap();
    let mut buf = MessageBuf::new();
    let ch = c.channel();

    // `put(key, data: Vec<u8>, n)`: one inline argument missing, the scalar sent.
    ch.write_array(["put", "k"]).unwrap();
    ch.write_scalar(b"payload").unwrap();
    let e = remote(ch.read_reply(&mut buf).unwrap_err());
    assert_eq!(e.1, "put: expected 2 arguments (key, n), got 1");

    // Unparsable `n`, scalar sent.
    ch.write_array(["put", "k", "x"]).unwrap();
    ch.write_scalar(b"payload").unwrap();
    let e = remote(ch.read_reply(&mut buf).unwrap_err());
    assert_eq!(
        e.1,
        r#"put: parameter `n`: invalid digit found in string (got "x")"#
    );

    // A correct raw request: array first, scalar after it.
    ch.write_array(["put", "k", "3"]).unwrap();
    ch.write_scalar(b"payload").unwrap();
    let reply = ch.read_reply(&mut buf).unwrap().to_strings().unwrap();
    assert_eq!(reply, ["ok", "k:7:3"]);

    // `mixed` replies ["ok", len, text] then the scalar.
    ch.write_array(["mixed", "a", "1"]).unwrap();
    ch.write_scalar(b"xyz").unwrap();
    let reply = ch.read_reply(&mut buf).unwrap().to_strings().unwrap();
    assert_eq!(reply, ["ok", "3", "a1"]);
    assert_eq!(ch.read_scalar().unwrap().unwrap(), b"xyz");

    // Still in step.
    assert_eq!(c.put("key", b"12345", 9).unwrap(), "key:5:9");
    assert!(c.stop().unwrap().status.success());
}

#[test]
fn remote_errors_and_unknown_messages() {
    let _wd = watchdog("remote_errors_and_unknown_messages", SECS(30));
    let mut c = Types::new().start().unwrap();

    let e = remote(c.fallible(true).unwrap_err());
    assert_eq!(e, (RemoteErrorKind::Failed, "it failed, as asked".into()));
    let e = remote(c.io_result("/definitely/not/here").unwrap_err());
    assert_eq!(e.0, RemoteErrorKind::Io);
    assert_eq!(e.1, "No such file or directory (os error 2)");
    let e = remote(c.fmt_result(true).unwrap_err());
    assert_eq!(
        e,
        (
            RemoteErrorKind::Failed,
            "an error occurred when formatting an argument".into()
        )
    );

    let e = remote(c.panics().unwrap_err());
    assert_eq!(e.0, RemoteErrorKind::Panicked);
    assert!(e.1.contains("handler panicked on purpose"), "{}", e.1);

    // Unknown names, a skipped method, a compiled-out handler, the Rust name of a renamed one.
    let h = c.handle_mut();
    for name in ["nope", "helper", "compiled_out", "renamed", "new", ""] {
        let e = remote(h.call([name]).unwrap_err());
        assert_eq!(e.0, RemoteErrorKind::UnknownMessage, "{name}");
    }
    // An empty message, straight through the channel.
    let ch = h.channel();
    ch.write_array::<[&str; 0], &str>([]).unwrap();
    let e = remote(ch.read_reply(&mut MessageBuf::new()).unwrap_err());
    assert_eq!(e.0, RemoteErrorKind::UnknownMessage);

    // Serving goes on.
    assert_eq!(c.fallible(false).unwrap(), 7);

    // A reply that does not decode as the stub expects: another server's client on this one.
    let e = {
        let handle: ServerHandle = fdserver::Builder::new().start_handle(&mut Liar).unwrap();
        let mut wrong = TypesClient::from(handle);
        let e = wrong.add(1, 2).unwrap_err();
        let e2 = wrong.hello("a", "b").unwrap_err();
        assert!(
            matches!(&e2, Error::Protocol(fdserver::ProtocolError::BadReply(m)) if m == "hello: expected 2 inline value(s), got 1"),
            "{e2:?}"
        );
        // The channel is still in step after a bad reply.
        assert_eq!(wrong.string("still fine").unwrap(), "still fine");
        e
    };
    assert!(
        matches!(&e, Error::Protocol(fdserver::ProtocolError::BadReply(m)) if m == r#"add: value 1: invalid digit found in string (got "three")"#),
        "{e:?}"
    );

    // `quit` ends the loop after replying.
    assert_eq!(c.quit().unwrap(), "bye");
    let e = c.add(1, 1).unwrap_err();
    assert!(matches!(e, Error::ServerExited(s) if s.success()), "{e:?}");
}

/// A server that answers `TypesClient` calls with the wrong shapes.
struct Liar;

#[fdserver]
impl Liar {
    fn add(&mut self, _a: i32, _b: i32) -> String {
        "three".into()
    }
    fn hello(&mut self, _first: String, _last: String) -> String {
        "just one".into()
    }
    fn string(&mut self, s: String) -> String {
        s
    }
}
