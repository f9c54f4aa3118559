//! Issue 6, "Hostile and malformed input", through a live forked server: raw bytes and raw
//! descriptors written to the server's socket, and a hostile server feeding raw bytes to the
//! client. Every case checks its documented outcome (a typed error reply and the server keeps
//! serving, or the connection is closed), that the server never panicked (its exit status), and
//! that this process's descriptors are exactly what they were before.
//!
//! Every test here holds `serial()`: they count this process's descriptors.

mod reliability_common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use fdserver::{
    Builder, Context, Error, Message, MessageBuf, ProtocolError, RemoteError, RemoteErrorKind,
    Server, ServerHandle, Shutdown,
};
use fdserver_tests::{open_fds, serial, watchdog, SECS};
use reliability_common::*;

/// The server under attack: a few handlers written by hand the way the crate docs show.
struct Target {
    /// Descriptors kept open in the server (`Builder::keep_fd`), used by some handlers.
    release: Option<OwnedFd>,
}

impl Target {
    fn new() -> Self {
        Target { release: None }
    }
}

fn parse_i64(msg: &Message<'_>, i: usize) -> Result<i64, RemoteError> {
    let bytes = msg.get(i).unwrap_or(b"");
    let s = std::str::from_utf8(bytes)
        .map_err(|e| RemoteError::bad_arguments(format!("argument {i} is not UTF-8: {e}")))?;
    s.parse::<i64>()
        .map_err(|e| RemoteError::bad_arguments(format!("argument {i} ({s:?}): {e}")))
}

impl Server for Target {
    type Client = ServerHandle;

    fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
        match msg.name() {
            b"echo" => {
                ctx.reply(msg.args())?;
                Ok(())
            }
            // Arity and numbers checked by hand, with typed errors.
            b"add" => {
                if msg.len() != 3 {
                    return Err(RemoteError::bad_arguments(format!(
                        "add takes 2 arguments, got {}",
                        msg.len().saturating_sub(1)
                    )));
                }
                let sum = parse_i64(&msg, 1)?
                    .checked_add(parse_i64(&msg, 2)?)
                    .ok_or_else(|| RemoteError::bad_arguments("sum overflows i64"))?;
                ctx.reply([sum.to_string()])?;
                Ok(())
            }
            // The crate docs' idiom: `msg.str(i)?` and let the runtime classify the failure.
            b"greet" => {
                let who = msg.str(1)?;
                ctx.reply([format!("hello {who}")])?;
                Ok(())
            }
            // Reads a scalar the client sends after the request.
            b"scalar" => {
                let data = ctx
                    .channel()
                    .read_scalar()?
                    .ok_or_else(|| RemoteError::failed("no scalar"))?;
                ctx.reply([data.len().to_string()])?;
                Ok(())
            }
            // Receives a descriptor the client sends after the request.
            b"fd" => {
                let fd = ctx
                    .channel()
                    .recv_fd()?
                    .ok_or_else(|| RemoteError::failed("no descriptor"))?;
                let (dev, ino) = file_id(&fd);
                ctx.reply([dev.to_string(), ino.to_string()])?;
                Ok(())
            }
            // A large reply under a write deadline.
            b"big" => {
                let n: usize = parse_i64(&msg, 1)? as usize;
                ctx.channel()
                    .set_write_timeout(Some(Duration::from_millis(200)));
                ctx.reply(["big"])?;
                ctx.channel().write_scalar(&vec![7u8; n])?;
                Ok(())
            }
            // Blocks until the test writes to (or closes) the release pipe.
            b"stall" => {
                if let Some(r) = &self.release {
                    wait_byte(r.as_fd());
                }
                ctx.reply(["released"])?;
                Ok(())
            }
            // The server's own resource use.
            b"stats" => {
                let pid = std::process::id();
                ctx.reply([rss_kib(pid).to_string(), fd_count_of(pid).to_string()])?;
                Ok(())
            }
            other => Err(RemoteError::unknown_message(other)),
        }
    }
}

fn start() -> ServerHandle {
    start_guarded_with(Builder::new(), &mut Target::new()).expect("start")
}

/// The server still answers normally.
fn still_serving(h: &mut ServerHandle) {
    assert_eq!(
        h.call(["echo", "still", "here"])
            .expect("echo after hostile input"),
        ["still", "here"]
    );
}

/// Stops the server and checks it ended with `code` and did not panic (101) or die of a signal.
fn stop_expect(h: ServerHandle, code: i32) -> Shutdown {
    let st = h.stop().expect("stop");
    assert_eq!(
        st.status.code(),
        Some(code),
        "server ended with {} (101 = panic)",
        st.status
    );
    st.how
}

/// Reads the next reply and expects an error reply of `kind`; returns its text.
fn expect_error_reply(h: &mut ServerHandle, kind: RemoteErrorKind) -> String {
    let mut buf = MessageBuf::new();
    let r = h.with_channel(|ch| ch.read_reply(&mut buf).map(|m| m.to_vec()));
    match r {
        Err(Error::Remote(e)) => {
            assert_eq!(e.kind(), &kind, "error reply: {e}");
            e.message().to_owned()
        }
        other => panic!("expected an error reply of kind {kind:?}, got {other:?}"),
    }
}

fn remote_kind(r: Result<Vec<String>, Error>) -> (RemoteErrorKind, String) {
    match r {
        Err(Error::Remote(e)) => (e.kind().clone(), e.message().to_owned()),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// The call fails because the server closed the connection and exited with `code`.
fn expect_server_exited(r: Result<impl std::fmt::Debug, Error>, code: i32) {
    match r {
        Err(Error::ServerExited(st)) => assert_eq!(st.code(), Some(code), "server ended {st}"),
        other => panic!("expected ServerExited(exit {code}), got {other:?}"),
    }
}

// -------------------------------------------------------------------------------------------
// Truncated frames: connection closed (the server sees end of stream mid-message and exits 0)
// -------------------------------------------------------------------------------------------

#[test]
fn truncated_header_then_eof_closes_connection() {
    let _s = serial();
    let _wd = watchdog("truncated_header_then_eof_closes_connection", SECS(60));
    let fds = open_fds();
    let mut h = start();
    raw_write(h.channel().as_fd(), &[0x00]).unwrap();
    shutdown_write(h.channel().as_fd());
    // The server drops the connection without answering.
    assert_eq!(h.channel().read_array().unwrap(), None);
    stop_expect(h, 0);
    assert_eq!(open_fds(), fds);
}

#[test]
fn truncated_body_then_eof_closes_connection() {
    let _s = serial();
    let _wd = watchdog("truncated_body_then_eof_closes_connection", SECS(60));
    let fds = open_fds();
    let mut h = start();
    raw_write(h.channel().as_fd(), b"\x00\x10echo\x00ab").unwrap();
    shutdown_write(h.channel().as_fd());
    assert_eq!(h.channel().read_array().unwrap(), None);
    stop_expect(h, 0);
    assert_eq!(open_fds(), fds);
}

// -------------------------------------------------------------------------------------------
// Complete but malformed frames: typed error reply, the server keeps serving
// -------------------------------------------------------------------------------------------

#[test]
fn max_length_garbage_gets_error_and_server_keeps_serving() {
    let _s = serial();
    let _wd = watchdog("max_length_garbage", SECS(60));
    let fds = open_fds();
    let mut h = start();
    for seed in 1..=8u64 {
        let mut body = pseudo_random(seed, 65_535);
        // Without a final NUL: a protocol error. With one: garbage elements, so the name is
        // unknown.
        let terminated = seed % 2 == 0;
        *body.last_mut().unwrap() = if terminated { 0 } else { 0xAB };
        if terminated {
            body[0] = b'~'; // not a handler name
        }
        let mut frame = vec![0xFF, 0xFF];
        frame.extend_from_slice(&body);
        raw_write(h.channel().as_fd(), &frame).unwrap();
        if terminated {
            expect_error_reply(&mut h, RemoteErrorKind::UnknownMessage);
        } else {
            let text = expect_error_reply(&mut h, RemoteErrorKind::Protocol);
            assert!(text.contains("NUL"), "{text}");
        }
        still_serving(&mut h);
    }
    // 65535 empty elements: the most elements a frame can hold.
    let mut frame = vec![0xFF, 0xFF];
    frame.resize(2 + 65_535, 0);
    raw_write(h.channel().as_fd(), &frame).unwrap();
    expect_error_reply(&mut h, RemoteErrorKind::UnknownMessage);
    still_serving(&mut h);
    assert_eq!(stop_expect(h, 0), Shutdown::Graceful);
    assert_eq!(open_fds(), fds);
}

#[test]
fn nul_less_body_gets_protocol_error() {
    let _s = serial();
    let _wd = watchdog("nul_less_body_gets_protocol_error", SECS(60));
    let fds = open_fds();
    let mut h = start();
    for body in [&b"echo"[..], b"echo\0abc", b"\xff", b"x"] {
        let mut frame = (body.len() as u16).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        raw_write(h.channel().as_fd(), &frame).unwrap();
        expect_error_reply(&mut h, RemoteErrorKind::Protocol);
        still_serving(&mut h);
    }
    assert_eq!(stop_expect(h, 0), Shutdown::Graceful);
    assert_eq!(open_fds(), fds);
}

#[test]
fn empty_message_and_empty_name_are_unknown_messages() {
    let _s = serial();
    let _wd = watchdog("empty_message_and_empty_name", SECS(60));
    let mut h = start();
    raw_write(h.channel().as_fd(), b"\x00\x00").unwrap(); // []
    expect_error_reply(&mut h, RemoteErrorKind::UnknownMessage);
    raw_write(h.channel().as_fd(), b"\x00\x01\x00").unwrap(); // [""]
    expect_error_reply(&mut h, RemoteErrorKind::UnknownMessage);
    still_serving(&mut h);
    assert_eq!(stop_expect(h, 0), Shutdown::Graceful);
}

// -------------------------------------------------------------------------------------------
// Scalars
// -------------------------------------------------------------------------------------------

#[test]
fn scalar_length_u32_max_closes_connection() {
    let _s = serial();
    let _wd = watchdog("scalar_length_u32_max_closes_connection", SECS(60));
    let fds = open_fds();
    let mut h = start();
    h.channel().write_array(["scalar"]).unwrap();
    // 2^32-1 announced, 64 MiB is the server's limit: refused before allocating, and the
    // half-read stream cannot be resynchronised, so the server says why in a last message
    // (issue 10, item 10) and closes it (exit status 1).
    raw_write(h.channel().as_fd(), b"\xff\xff\xff\xffsome bytes").unwrap();
    let why = expect_error_reply(&mut h, RemoteErrorKind::Protocol);
    assert!(why.contains("4294967295 bytes exceeds the limit"), "{why}");
    let mut buf = MessageBuf::new();
    expect_server_exited(h.with_channel(|ch| ch.read_reply(&mut buf).map(|_| ())), 1);
    assert_eq!(stop_expect(h, 1), Shutdown::AlreadyExited);
    assert_eq!(open_fds(), fds);
}

#[test]
fn scalar_over_configured_limit_closes_connection_but_at_limit_is_fine() {
    let _s = serial();
    let _wd = watchdog("scalar_over_configured_limit", SECS(60));
    let mut h =
        start_guarded_with(Builder::new().max_scalar_size(1024), &mut Target::new()).unwrap();
    h.channel().write_array(["scalar"]).unwrap();
    h.channel().write_scalar(&[1u8; 1024]).unwrap();
    let mut buf = MessageBuf::new();
    let n = h
        .with_channel(|ch| ch.read_reply(&mut buf).map(|m| m.to_vec()))
        .unwrap();
    assert_eq!(n[1], b"1024");
    h.channel().write_array(["scalar"]).unwrap();
    h.channel().write_scalar(&[1u8; 1025]).unwrap();
    let why = expect_error_reply(&mut h, RemoteErrorKind::Protocol);
    assert!(
        why.contains("1025 bytes exceeds the limit of 1024"),
        "{why}"
    );
    expect_server_exited(h.with_channel(|ch| ch.read_reply(&mut buf).map(|_| ())), 1);
    stop_expect(h, 1);
}

// -------------------------------------------------------------------------------------------
// Descriptors
// -------------------------------------------------------------------------------------------

#[test]
fn fd_where_a_message_is_expected_is_refused_and_closed() {
    let _s = serial();
    let _wd = watchdog("fd_where_a_message_is_expected", SECS(60));
    let fds = open_fds();
    let mut h = start();

    // A well-formed descriptor message (one byte 00, one fd) between requests: a protocol
    // error reply, the descriptor closed in the server, the server keeps serving.
    let (r, w) = pipe();
    send_with_fds(h.channel().as_fd(), &[0], &[w.as_raw_fd()]).unwrap();
    drop(w);
    expect_error_reply(&mut h, RemoteErrorKind::Protocol);
    // Our read end sees end of stream only once every copy of the write end is closed,
    // including the one the server received: no leak in the server.
    assert_eq!(read_to_eof(r.as_fd()).unwrap(), b"");
    drop(r);
    still_serving(&mut h);

    // Five descriptors at once (more than the reader's control buffer holds): all closed.
    let pipes: Vec<_> = (0..5).map(|_| pipe()).collect();
    let raw: Vec<_> = pipes.iter().map(|(_, w)| w.as_raw_fd()).collect();
    send_with_fds(h.channel().as_fd(), &[0], &raw).unwrap();
    let reads: Vec<_> = pipes.into_iter().map(|(r, _w)| r).collect();
    expect_error_reply(&mut h, RemoteErrorKind::Protocol);
    for r in &reads {
        assert_eq!(read_to_eof(r.as_fd()).unwrap(), b"");
    }
    drop(reads);
    still_serving(&mut h);

    assert_eq!(stop_expect(h, 0), Shutdown::Graceful);
    assert_eq!(open_fds(), fds);
}

#[test]
fn fd_glued_to_frame_bytes_closes_connection_and_fd() {
    let _s = serial();
    let _wd = watchdog("fd_glued_to_frame_bytes", SECS(60));
    let fds = open_fds();
    let mut h = start();
    // The descriptor rides on the first bytes of a real frame: the stream cannot be
    // resynchronised, so the server says why (issue 10, item 10), closes the connection
    // (exit 1) and closes the descriptor.
    let (r, w) = pipe();
    send_with_fds(h.channel().as_fd(), b"\x00\x05echo\x00", &[w.as_raw_fd()]).unwrap();
    drop(w);
    assert_eq!(read_to_eof(r.as_fd()).unwrap(), b"");
    drop(r);
    let why = expect_error_reply(&mut h, RemoteErrorKind::Protocol);
    assert!(why.contains("file descriptor arrived"), "{why}");
    expect_server_exited(h.call(["echo"]), 1);
    stop_expect(h, 1);
    assert_eq!(open_fds(), fds);
}

#[test]
fn message_where_an_fd_is_expected_closes_connection() {
    let _s = serial();
    let _wd = watchdog("message_where_an_fd_is_expected", SECS(60));
    let fds = open_fds();
    let mut h = start();

    // First the normal case works.
    let (r, w) = pipe();
    h.channel().write_array(["fd"]).unwrap();
    h.channel().send_fd(&w).unwrap();
    let mut buf = MessageBuf::new();
    let reply = h
        .with_channel(|ch| ch.read_reply(&mut buf).map(|m| m.to_vec()))
        .unwrap();
    let (dev, ino) = file_id(&w);
    assert_eq!(
        reply[1..],
        [dev.to_string().into_bytes(), ino.to_string().into_bytes()]
    );
    drop((r, w));

    // Then a message instead of the descriptor: the handler's recv_fd ate one byte of it, the
    // stream is out of sync: the server says so (issue 10, item 10) and closes the connection
    // (exit 1).
    h.channel().write_array(["fd"]).unwrap();
    h.channel().write_array(["not", "a", "descriptor"]).unwrap();
    let why = expect_error_reply(&mut h, RemoteErrorKind::Protocol);
    assert!(why.contains("expected a file descriptor"), "{why}");
    expect_server_exited(h.with_channel(|ch| ch.read_reply(&mut buf).map(|_| ())), 1);
    stop_expect(h, 1);
    assert_eq!(open_fds(), fds);
}

// -------------------------------------------------------------------------------------------
// Message names, arity, numbers, UTF-8
// -------------------------------------------------------------------------------------------

#[test]
fn ten_thousand_unknown_names() {
    let _s = serial();
    let _wd = watchdog("ten_thousand_unknown_names", SECS(60));
    let fds = open_fds();
    let mut h = start();
    let pid = h.pid();
    let name = |i: u32| match i % 4 {
        0 => format!("unknown-{i}").into_bytes(),
        1 => format!("{i}-{}", "x".repeat((i % 2048) as usize)).into_bytes(),
        2 => vec![0xFF, 0xFE, (i % 251) as u8 + 1], // not UTF-8
        _ => format!("Echo{i}").into_bytes(),
    };
    // Warm up with every name length (buffers, allocator bins), then measure.
    for i in 0..8192 {
        let (k, _) = remote_kind(h.call([name(i).as_slice(), b"arg"]));
        assert_eq!(k, RemoteErrorKind::UnknownMessage);
    }
    let rss_before = rss_kib(pid);
    let fds_before = fd_count_of(pid);
    for i in 0..10_000u32 {
        let (k, text) = remote_kind(h.call([name(i).as_slice(), b"arg"]));
        assert_eq!(k, RemoteErrorKind::UnknownMessage, "{text}");
    }
    let rss_after = rss_kib(pid);
    let fds_after = fd_count_of(pid);
    eprintln!(
        "FIGURES unknown_names: calls=10000 server_rss_kib {rss_before} -> {rss_after}, \
         server_fds {fds_before} -> {fds_after}"
    );
    assert_eq!(fds_after, fds_before);
    assert!(
        rss_after <= rss_before + 256,
        "server RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    still_serving(&mut h);
    assert_eq!(stop_expect(h, 0), Shutdown::Graceful);
    assert_eq!(open_fds(), fds);
}

#[test]
fn wrong_arity_gets_bad_arguments() {
    let _s = serial();
    let _wd = watchdog("wrong_arity_gets_bad_arguments", SECS(60));
    let mut h = start();
    for req in [
        &["add"][..],
        &["add", "1"],
        &["add", "1", "2", "3"],
        &["add", "", "", "", "", ""],
    ] {
        let (k, text) = remote_kind(h.call(req));
        assert_eq!(k, RemoteErrorKind::BadArguments, "{req:?}: {text}");
    }
    assert_eq!(h.call(["add", "40", "2"]).unwrap(), ["42"]);
    assert_eq!(stop_expect(h, 0), Shutdown::Graceful);
}

#[test]
fn unparsable_numbers_get_bad_arguments() {
    let _s = serial();
    let _wd = watchdog("unparsable_numbers_get_bad_arguments", SECS(60));
    let mut h = start();
    for (a, b) in [
        ("x", "1"),
        ("1", "one"),
        ("", "1"),
        ("1.5", "1"),
        (" 1", "1"),
        ("99999999999999999999", "1"),
        ("-9223372036854775808", "-1"), // parses, but the sum overflows
        ("0x10", "1"),
        ("١", "1"), // a non-ASCII digit
    ] {
        let (k, text) = remote_kind(h.call(["add", a, b]));
        assert_eq!(k, RemoteErrorKind::BadArguments, "add {a:?} {b:?}: {text}");
    }
    assert_eq!(
        h.call(["add", "-9223372036854775808", "9223372036854775807"])
            .unwrap(),
        ["-1"]
    );
    assert_eq!(stop_expect(h, 0), Shutdown::Graceful);
}

#[test]
fn invalid_utf8_argument_checked_by_hand_gets_bad_arguments() {
    let _s = serial();
    let _wd = watchdog("invalid_utf8_by_hand", SECS(60));
    let mut h = start();
    for bad in [&b"\xff"[..], b"1\xc3", b"\xed\xa0\x80", b"\xc0\xaf"] {
        let (k, text) = remote_kind(h.call([&b"add"[..], bad, b"1"]));
        assert_eq!(k, RemoteErrorKind::BadArguments, "{text}");
    }
    still_serving(&mut h);
    assert_eq!(stop_expect(h, 0), Shutdown::Graceful);
}

/// The idiom the crate docs teach, `msg.str(i)?`, on a request with a missing or non-UTF-8
/// argument. README: "wrong argument count or an unparsable argument" is `bad_arguments`.
/// Also checks that the server keeps serving (it does).
#[test]
fn str_accessor_errors_are_bad_arguments() {
    let _s = serial();
    let _wd = watchdog("str_accessor_errors_are_bad_arguments", SECS(60));
    let mut h = start();
    let missing = remote_kind(h.call(["greet"]));
    let not_utf8 = remote_kind(h.call([&b"greet"[..], b"\xff\xfe"]));
    assert_eq!(h.call(["greet", "Joe"]).unwrap(), ["hello Joe"]);
    assert_eq!(stop_expect(h, 0), Shutdown::Graceful);
    assert_eq!(
        missing.0,
        RemoteErrorKind::BadArguments,
        "missing argument: {}",
        missing.1
    );
    assert!(!missing.1.contains("reply"), "{}", missing.1);
    assert_eq!(
        not_utf8.0,
        RemoteErrorKind::BadArguments,
        "invalid UTF-8: {}",
        not_utf8.1
    );
}

/// What the same requests get today (keeps the current behaviour pinned until the fix).
#[test]
fn str_accessor_errors_keep_the_server_serving() {
    let _s = serial();
    let _wd = watchdog("str_accessor_errors_keep_the_server_serving", SECS(60));
    let mut h = start();
    let (k1, _) = remote_kind(h.call(["greet"]));
    let (k2, t2) = remote_kind(h.call([&b"greet"[..], b"\xff\xfe"]));
    assert!(matches!(
        k1,
        RemoteErrorKind::BadArguments | RemoteErrorKind::Failed
    ));
    assert!(matches!(
        k2,
        RemoteErrorKind::BadArguments | RemoteErrorKind::Failed
    ));
    assert!(t2.contains("UTF-8"), "{t2}");
    assert_eq!(h.call(["greet", "Joe"]).unwrap(), ["hello Joe"]);
    assert_eq!(stop_expect(h, 0), Shutdown::Graceful);
}

// -------------------------------------------------------------------------------------------
// A peer that stops reading
// -------------------------------------------------------------------------------------------

#[test]
fn client_that_stops_reading_does_not_block_server_with_write_deadline() {
    let _s = serial();
    let _wd = watchdog("client_that_stops_reading", SECS(60));
    let fds = open_fds();
    let mut h = start();
    // The handler writes 16 MiB under a 200 ms write deadline; we never read. The server must
    // give up, close the connection and exit (1: the channel failed), not block forever.
    h.channel().write_array(["big", "16777216"]).unwrap();
    assert!(
        wait_readable(h.pidfd(), None),
        "server exit (bounded by the watchdog)"
    );
    assert_eq!(stop_expect(h, 1), Shutdown::AlreadyExited);
    assert_eq!(open_fds(), fds);
}

#[test]
fn server_that_stops_reading_times_out_client_write() {
    let _s = serial();
    let _wd = watchdog("server_that_stops_reading", SECS(60));
    let fds = open_fds();
    let (release_r, release_w) = pipe();
    let builder = Builder::new().keep_fd(&release_r);
    let mut h = start_guarded_with(
        builder,
        &mut Target {
            release: Some(release_r),
        },
    )
    .unwrap();
    h.channel().write_array(["stall"]).unwrap();
    h.channel()
        .set_write_timeout(Some(Duration::from_millis(200)));
    // The server is stuck in its handler and reads nothing: our 16 MiB write times out and
    // leaves the channel broken (it is mid-message).
    let r = h.channel().write_scalar(&vec![0u8; 16 << 20]);
    assert!(matches!(r, Err(Error::TimedOut { .. })), "{r:?}");
    assert!(h.channel().is_broken());
    assert!(matches!(h.call(["echo"]), Err(Error::Broken { .. })));
    drop(release_w); // the handler returns; the server then reads our half-written scalar
    let st = h.stop().unwrap();
    assert!(
        matches!(st.status.code(), Some(0 | 1)),
        "server ended with {} (101 = panic)",
        st.status
    );
    assert_eq!(open_fds(), fds);
}

// -------------------------------------------------------------------------------------------
// A hostile server: malformed replies reach the client as typed errors
// -------------------------------------------------------------------------------------------

struct Liar;

impl Server for Liar {
    type Client = ServerHandle;

    fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
        let ch = ctx.channel();
        match msg.name() {
            b"noterm" => raw_write(ch.as_fd(), b"\x00\x03abc")?,
            b"notstatus" => ch.write_array(["weird", "reply"])?,
            b"empty" => ch.write_array::<[&str; 0], &str>([])?,
            b"fdfirst" => {
                let (_r, w) = pipe();
                ch.send_fd(&w)?;
                ch.write_ok(["after"])?;
            }
            b"hugescalar" => {
                ch.write_ok(["scalar follows"])?;
                raw_write(ch.as_fd(), b"\xff\xff\xff\xff")?;
            }
            b"cut" => {
                raw_write(ch.as_fd(), b"\x00\x10ok\x00tru")?;
                ctx.quit();
            }
            _ => ch.write_ok(["fine"])?,
        }
        Ok(())
    }
}

#[test]
fn malformed_replies_are_typed_errors_on_the_client() {
    let _s = serial();
    let _wd = watchdog("malformed_replies", SECS(60));
    let fds = open_fds();
    let mut h = start_guarded(&mut Liar).unwrap();

    let r = h.call(["noterm"]);
    assert!(
        matches!(r, Err(Error::Protocol(ProtocolError::MissingTerminator))),
        "{r:?}"
    );
    assert_eq!(h.call(["x"]).unwrap(), ["fine"]);

    let r = h.call(["notstatus"]);
    assert!(
        matches!(r, Err(Error::Protocol(ProtocolError::BadReply(_)))),
        "{r:?}"
    );
    let r = h.call(["empty"]);
    assert!(
        matches!(r, Err(Error::Protocol(ProtocolError::BadReply(_)))),
        "{r:?}"
    );
    assert_eq!(h.call(["x"]).unwrap(), ["fine"]);

    // A descriptor where the client expects its reply: refused and closed, then the reply
    // that follows is read normally.
    let r = h.call(["fdfirst"]);
    assert!(
        matches!(r, Err(Error::Protocol(ProtocolError::UnexpectedFd))),
        "{r:?}"
    );
    let mut buf = MessageBuf::new();
    let after = h
        .with_channel(|ch| ch.read_reply(&mut buf).map(|m| m.to_vec()))
        .unwrap();
    assert_eq!(after[1], b"after");
    assert_eq!(h.call(["x"]).unwrap(), ["fine"]);

    // A scalar header announcing 4 GiB: refused (the client's limit) and the channel broken.
    assert_eq!(h.call(["hugescalar"]).unwrap(), ["scalar follows"]);
    let r = h.channel().read_scalar();
    assert!(matches!(r, Err(Error::ScalarTooLarge { .. })), "{r:?}");
    assert!(matches!(h.call(["x"]), Err(Error::Broken { .. })));
    assert_eq!(stop_expect(h, 0), Shutdown::Graceful);

    // A reply cut short, then the server exits: the client learns how it ended.
    let mut h = start_guarded(&mut Liar).unwrap();
    expect_server_exited(h.call(["cut"]), 0);
    stop_expect(h, 0);
    assert_eq!(open_fds(), fds);
}
