//! Borrowed parameters, lists and large results (issue 14, items 3 without serde, 4 and 5):
//! `&str`, `&[u8]`, `&Path`, `&OsStr` parameters borrow from the received message; `Vec<T>` and
//! `Option<T>` of inline types travel without the `serde` feature; a result of any size is
//! delivered, never refused after the handler ran.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use fdserver::{MessageBuf, RemoteErrorKind};
use fdserver_tests::{watchdog, SECS};

#[derive(Default)]
struct Values {
    side_effects: u32,
}

#[fdserver::fdserver]
impl Values {
    fn borrowed(
        &mut self,
        s: &str,
        b: &[u8],
        p: &Path,
        o: &OsStr,
    ) -> (String, usize, PathBuf, OsString) {
        (s.to_uppercase(), b.len(), p.join("x"), o.to_owned())
    }

    fn optional(&mut self, s: Option<&str>, p: Option<&Path>) -> (Option<String>, Option<PathBuf>) {
        (s.map(str::to_owned), p.map(Path::to_owned))
    }

    fn words(&mut self, text: &str) -> Vec<String> {
        text.split(' ').map(str::to_owned).collect()
    }

    fn join(&mut self, words: Vec<&str>, sep: &str) -> String {
        words.join(sep)
    }

    fn sum(&mut self, numbers: Vec<u64>, extra: Option<u64>) -> (u64, usize) {
        (
            numbers.iter().sum::<u64>() + extra.unwrap_or(0),
            numbers.len(),
        )
    }

    fn paths(&mut self, paths: Vec<PathBuf>, os: Vec<OsString>) -> (Vec<PathBuf>, Vec<OsString>) {
        (paths, os)
    }

    fn maybe(&mut self, items: Vec<Option<String>>) -> Vec<Option<String>> {
        items
    }

    /// A big result after a side effect: the reply must arrive, whatever its size.
    fn big(&mut self, n: usize) -> (u32, String, Vec<String>) {
        self.side_effects += 1;
        (self.side_effects, "b".repeat(n), vec!["x".repeat(n / 2); 2])
    }

    /// A plain string result of `n` bytes, after a side effect.
    fn text(&mut self, n: usize) -> String {
        self.side_effects += 1;
        "t".repeat(n)
    }

    fn count(&self) -> u32 {
        self.side_effects
    }

    fn bytes_back(&mut self, data: &[u8]) -> Vec<u8> {
        data.to_vec()
    }
}

#[test]
fn borrowed_parameters_round_trip() {
    let _wd = watchdog("borrowed_parameters_round_trip", SECS(30));
    let mut c = Values::default().start().unwrap();
    let weird = OsStr::from_bytes(b"not \xff utf-8");
    let (s, n, p, o) = c
        .borrowed("héllo", b"\0\x01\xff", Path::new("/tmp"), weird)
        .unwrap();
    assert_eq!(
        (s.as_str(), n, p.as_path(), o.as_os_str()),
        ("HÉLLO", 3, Path::new("/tmp/x"), weird)
    );
    // `impl AsRef<Path>` and `impl AsRef<OsStr>` on the client side.
    assert_eq!(
        c.borrowed("", b"", "rel", "o").unwrap().2,
        Path::new("rel/x")
    );
    assert_eq!(c.optional(None, None).unwrap(), (None, None));
    assert_eq!(
        c.optional(Some(""), Some(Path::new("/p"))).unwrap(),
        (Some(String::new()), Some(PathBuf::from("/p")))
    );
    let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    assert_eq!(c.bytes_back(&big).unwrap(), big);
    assert_eq!(c.bytes_back(b"").unwrap(), b"");
    // A non-UTF-8 `&str` argument from a raw peer is refused like a `String` one.
    let e = c.handle_mut().call([&b"words"[..], b"\xff"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "server error: bad_arguments: words: parameter `text`: invalid utf-8 sequence of 1 bytes from index 0 (got \"\u{FFFD}\")"
    );
    c.stop().unwrap();
}

#[test]
fn lists_and_options_without_serde() {
    let _wd = watchdog("lists_and_options_without_serde", SECS(30));
    let mut c = Values::default().start().unwrap();
    assert_eq!(c.words("a bb  c").unwrap(), ["a", "bb", "", "c"]);
    assert_eq!(c.words("").unwrap(), [""]);
    assert_eq!(c.join(&["x", "", "z"], "-").unwrap(), "x--z");
    assert_eq!(c.join(&[String::from("only")], ",").unwrap(), "only");
    assert_eq!(c.join(&[] as &[&str], ",").unwrap(), "");
    assert_eq!(c.sum(&[1, 2, 3], Some(4)).unwrap(), (10, 3));
    assert_eq!(c.sum(&[], None).unwrap(), (0, 0));
    let weird = PathBuf::from(OsStr::from_bytes(b"/\xfe"));
    let (p, o) = c
        .paths(&[weird.clone(), PathBuf::from("b")], &["x", ""])
        .unwrap();
    assert_eq!(p, [weird, PathBuf::from("b")]);
    assert_eq!(o, [OsString::from("x"), OsString::new()]);
    let items = vec![
        None,
        Some(String::new()),
        Some("\u{1}".into()),
        Some("v".into()),
    ];
    assert_eq!(c.maybe(&items).unwrap(), items);

    // A list item that cannot travel fails the call before anything is sent.
    let e = c.join(&["a\0b"], ",").unwrap_err();
    assert_eq!(
        e.to_string(),
        "call \"join\": parameter `words` cannot be sent: list item 1 contains a NUL byte, which the wire format cannot carry"
    );
    // The wire form: one scalar, each item followed by NUL (what a Ruby peer sends and reads).
    let ch = c.channel();
    ch.write_array(["join", ","]).unwrap();
    ch.write_scalar(b"a\0b\0").unwrap();
    let mut buf = MessageBuf::new();
    assert_eq!(
        ch.read_reply(&mut buf).unwrap().to_strings().unwrap(),
        ["ok", "a,b"]
    );
    ch.write_array(["words", "p q"]).unwrap();
    assert_eq!(
        ch.read_reply(&mut buf).unwrap().to_strings().unwrap(),
        ["ok"]
    );
    assert_eq!(ch.read_scalar().unwrap().unwrap(), b"p\0q\0");
    // A malformed list is a bad argument; the server keeps serving.
    ch.write_array(["join", ","]).unwrap();
    ch.write_scalar(b"no terminator").unwrap();
    let e = ch.read_reply(&mut buf).unwrap_err();
    assert_eq!(
        e.to_string(),
        "server error: bad_arguments: join: parameter `words`: list scalar does not end with a NUL byte"
    );
    ch.write_array(["sum"]).unwrap();
    ch.write_scalar(b"1\0x\0").unwrap();
    let e = ch.read_reply(&mut buf).unwrap_err();
    assert_eq!(
        e.as_remote().map(|r| r.kind()),
        Some(&RemoteErrorKind::BadArguments)
    );
    assert_eq!(c.sum(&[5], None).unwrap(), (5, 1));
    c.stop().unwrap();
}

#[test]
fn a_result_of_one_mib_arrives() {
    let _wd = watchdog("a_result_of_one_mib_arrives", SECS(30));
    let mut c = Values::default().start().unwrap();
    for n in [10, 65_000, 70_000, 1 << 20] {
        let (calls, s, list) = c.big(n).unwrap();
        assert_eq!(s.len(), n);
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].len(), n / 2);
        assert_eq!(calls, c.count().unwrap());
    }
    // The large form on the wire: ["ok_scalar"], then a scalar holding the reply's body.
    let ch = c.channel();
    ch.write_array(["big", "100000"]).unwrap();
    let mut buf = MessageBuf::new();
    ch.read_into(&mut buf).unwrap();
    assert_eq!(buf.message().to_strings().unwrap(), ["ok_scalar"]);
    let body = ch.read_scalar().unwrap().unwrap();
    assert!(body.starts_with(b"ok\x005\x00bbb"), "{:?}", &body[..10]);
    assert_eq!(body.len(), 3 + 2 + 100_001);
    assert_eq!(ch.read_scalar().unwrap().unwrap().len(), 2 * 50_001);
    // And through the untyped handle, which reads it as a plain reply.
    let reply = c.handle_mut().call(["big", "200000"]).unwrap();
    assert_eq!((reply.len(), reply[1].len()), (2, 200_000));
    assert_eq!(
        c.handle_mut()
            .channel()
            .read_scalar()
            .unwrap()
            .unwrap()
            .len(),
        200_002
    );
    assert_eq!(c.count().unwrap(), 6);
    c.stop().unwrap();
}

/// Review F5 (issue 14, item 5): a result larger than the client's scalar limit arrives, typed
/// and through the untyped handle, and the channel stays in step: the limit bounds what a side
/// reads unasked, not the reply of its own call. Before the fix the call failed with
/// `ScalarTooLarge` after the handler ran, and every later call with `Broken`.
#[test]
fn a_result_over_the_clients_scalar_limit_arrives() {
    let _wd = watchdog("a_result_over_the_clients_scalar_limit_arrives", SECS(60));
    let mut c = fdserver::Builder::new()
        .max_scalar_size(1000)
        .start(&mut Values::default())
        .unwrap();
    assert_eq!(c.text(70_000).unwrap().len(), 70_000);
    let (calls, s, list) = c.big(70_000).unwrap();
    assert_eq!((calls, s.len(), list[0].len()), (2, 70_000, 35_000));
    let reply = c.handle_mut().call(["text", "80000"]).unwrap();
    assert_eq!(reply[0].len(), 80_000);
    assert_eq!(c.count().unwrap(), 3);
    // The limit still bounds what a side reads unasked: here the server, a request's scalar.
    let e = c.bytes_back(&[0; 1001]).unwrap_err();
    assert!(e.to_string().contains("exceeds the limit of 1000"), "{e}");
    let _ = c.stop();

    // At the default limit (64 MiB): the review's 100 MiB case, scaled down to just over it.
    let mut c = Values::default().start().unwrap();
    let n = (fdserver::DEFAULT_MAX_SCALAR + 1) as usize;
    assert_eq!(c.text(n).unwrap().len(), n);
    assert_eq!(c.count().unwrap(), 1);
    c.stop().unwrap();
}

/// Review F7: a string argument with a NUL byte is refused before anything is sent, naming the
/// call and the parameter (not "element 1", its place in the request array), and the server
/// keeps serving.
#[test]
fn a_nul_in_a_string_argument_names_the_call_and_the_parameter() {
    let _wd = watchdog("a_nul_in_a_string_argument", SECS(30));
    let mut c = Values::default().start().unwrap();
    // `sep` is the second inline element (after `words`, which travels as a scalar).
    let e = c.join(&["a", "b"], "x\0y").unwrap_err();
    match &e {
        fdserver::Error::Encode { message, value, .. } => {
            assert_eq!(
                (message.as_str(), value.as_str()),
                ("join", "parameter `sep`")
            );
        }
        other => panic!("expected Encode, got {other:?}"),
    }
    let text = e.to_string();
    assert!(
        text.contains("call \"join\": parameter `sep` cannot be sent"),
        "{text}"
    );
    assert!(text.contains("NUL byte"), "{text}");
    assert!(!text.contains("element"), "{text}");
    assert!(!e.needs_restart());
    let e = c.words("a\0b").unwrap_err();
    assert!(
        e.to_string().contains("call \"words\": parameter `text`"),
        "{e}"
    );
    assert_eq!(c.join(&["a", "b"], "-").unwrap(), "a-b");
    c.stop().unwrap();
}
