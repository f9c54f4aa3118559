//! How errors read (issue 10, item 11): every cause printed once by chain printers, time-outs
//! that name what timed out and after how long, and a `stop` report that says what happened.

use std::error::Error as StdError;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use fdserver::{
    fdserver, Builder, Context, Error, Message, Operation, ProtocolError, RemoteError, Server,
    ServerHandle, Shutdown, StopOptions,
};
use fdserver_tests::{watchdog, SECS};

/// Prints `e` the way `anyhow` prints `{:#}`: each link of the `source()` chain, joined by
/// `": "`; and checks that no link repeats text an earlier one already printed.
fn print_chain(e: &(dyn StdError + 'static)) -> String {
    let mut links = vec![e.to_string()];
    let mut next = e.source();
    while let Some(cause) = next {
        links.push(cause.to_string());
        next = cause.source();
    }
    for (i, link) in links.iter().enumerate().skip(1) {
        for earlier in &links[..i] {
            assert!(
                !earlier.contains(link.as_str()),
                "the cause {link:?} is printed twice: {links:?}"
            );
        }
    }
    links.join(": ")
}

/// An error with a cause of its own, to check that deeper causes stay in the chain.
#[derive(Debug)]
struct Outer(io::Error);

impl fmt::Display for Outer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("could not open the index")
    }
}

impl StdError for Outer {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn every_error_prints_each_cause_once() {
    let invalid = vec![0xff];
    let bad_utf8 = std::str::from_utf8(&invalid).unwrap_err();
    let cases: Vec<(Error, &str)> = vec![
        (
            Error::Remote(RemoteError::failed("nope")),
            "server error: failed: nope",
        ),
        (
            Error::Io(io::Error::from_raw_os_error(libc::EPIPE)),
            "I/O error: Broken pipe (os error 32)",
        ),
        (
            // The wrapped error is printed by `Display`; its own cause still follows.
            Error::Io(io::Error::other(Outer(io::Error::from_raw_os_error(
                libc::ENOENT,
            )))),
            "I/O error: could not open the index: No such file or directory (os error 2)",
        ),
        (
            Error::Protocol(ProtocolError::MissingTerminator),
            "protocol error: array message body does not end with a NUL byte",
        ),
        (
            Error::InvalidUtf8 {
                index: 1,
                error: bad_utf8,
            },
            "element 1 is not valid UTF-8: invalid utf-8 sequence of 1 bytes from index 0",
        ),
        (
            Error::Disconnected,
            "the peer closed the connection (it exited or dropped its end)",
        ),
        (
            Error::ServerExited(std::os::unix::process::ExitStatusExt::from_raw(101 << 8)),
            "server exited (exit status: 101); if it failed, its stderr says why (a panic prints \
             its message there); start a new server (a Pool replaces it by itself)",
        ),
        (
            Error::ScalarTooLarge {
                len: 1 << 33,
                max: u32::MAX.into(),
            },
            "scalar of 8589934592 bytes exceeds the limit of 4294967295 bytes (the wire format's \
             largest; send the data in several scalars)",
        ),
        (
            Error::ScalarTooLarge { len: 100, max: 16 },
            "scalar of 100 bytes exceeds the limit of 16 bytes (raise it with \
             Builder::max_scalar_size or Channel::set_max_scalar_size)",
        ),
        (
            Error::MissingElement { index: 2, len: 1 },
            "element 2 is missing from a message of 1 element: the peer sent fewer values than \
             expected",
        ),
    ];
    for (error, expected) in cases {
        assert_eq!(print_chain(&error), expected, "{error:?}");
        // Converted for `io`-based code (an `Io` variant gives back its own error), it still
        // prints each cause once.
        print_chain(&io::Error::from(error));
    }
}

/// A server whose handlers fail, block until the client hangs up, or block until the test lets
/// them go.
struct Slow;

#[fdserver]
impl Slow {
    fn fail(&mut self) -> Result<(), String> {
        Err("nope".into())
    }

    /// Never replies: waits until the client closes the connection.
    fn slow(&mut self, ctx: &mut Context<'_>) {
        let _ = ctx.channel().read_array();
    }
}

#[test]
fn a_failed_call_prints_once() {
    let _wd = watchdog("a_failed_call_prints_once", SECS(30));
    let mut server = Slow.start().unwrap();
    let err = server.fail().unwrap_err();
    // anyhow printed "server error: failed: nope: failed: nope".
    assert_eq!(print_chain(&err), "server error: failed: nope");
    server.stop().unwrap();
}

#[test]
fn a_timed_out_call_names_the_message_and_the_deadline() {
    let _wd = watchdog(
        "a_timed_out_call_names_the_message_and_the_deadline",
        SECS(30),
    );
    let timeout = Duration::from_millis(100);

    // Typed client.
    let mut server = Builder::new()
        .timeout(Some(timeout))
        .start(&mut Slow)
        .unwrap();
    let err = server.slow().unwrap_err();
    match &err {
        Error::TimedOut {
            operation,
            message,
            timeout: t,
            ..
        } => {
            assert_eq!(*operation, Operation::ReadReply);
            assert_eq!(message.as_deref(), Some("slow"));
            assert_eq!(*t, timeout);
        }
        other => panic!("expected a time-out, got {other:?}"),
    }
    assert_eq!(
        print_chain(&err),
        "call \"slow\": read of a reply timed out after 100ms (the call's deadline: \
         Builder::timeout or set_timeout, None to wait without one); the late reply breaks this \
         connection: start a new server (a Pool replaces it by itself)"
    );
    assert_eq!(io::Error::from(err).kind(), io::ErrorKind::TimedOut);
    server.stop().unwrap();

    // The untyped handle names the message too.
    let server = Builder::new()
        .timeout(Some(timeout))
        .start(&mut Slow)
        .unwrap();
    let mut handle = server.into_handle();
    let err = handle.call(["slow"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "call \"slow\": read of a reply timed out after 100ms (the call's deadline: \
         Builder::timeout or set_timeout, None to wait without one); the late reply breaks this \
         connection: start a new server (a Pool replaces it by itself)"
    );
    // A raw channel operation names the operation.
    let (mut a, _b) = fdserver::Channel::pair().unwrap();
    a.set_read_timeout(Some(Duration::from_millis(20)));
    assert_eq!(
        a.read_array().unwrap_err().to_string(),
        "read of an array message timed out after 20ms (the channel's deadline: Channel::set_timeout, None \
         to wait without one)"
    );
    assert_eq!(
        a.read_scalar().unwrap_err().to_string(),
        "read of a scalar message timed out after 20ms (the channel's deadline: Channel::set_timeout, None \
         to wait without one)"
    );
    assert_eq!(
        a.recv_fd().unwrap_err().to_string(),
        "receive of a file descriptor timed out after 20ms (the channel's deadline: Channel::set_timeout, None \
         to wait without one)"
    );
    handle.stop().unwrap();
}

/// `initialize_server` waits until the test closes its end of `hold`.
struct SlowStart {
    hold: UnixStream,
}

impl Server for SlowStart {
    type Client = ServerHandle;

    fn handle(&mut self, _: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
        Err(RemoteError::unknown_message(msg.name()))
    }

    fn initialize_server(&mut self) -> Result<(), fdserver::BoxError> {
        let _ = self.hold.read(&mut [0]);
        Ok(())
    }
}

#[test]
fn a_start_time_out_says_so() {
    let _wd = watchdog("a_start_time_out_says_so", SECS(30));
    let (mine, theirs) = UnixStream::pair().unwrap();
    let mut server = SlowStart { hold: theirs };
    let err = Builder::new()
        .keep_fd(&server.hold)
        .start_timeout(Some(Duration::from_millis(100)))
        .start_handle(&mut server)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TimedOut {
                operation: Operation::Start,
                message: None,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "start of the server (waiting for its initialize_server) timed out after 100ms (the \
         start deadline: Builder::start_timeout, None to wait as long as initialize_server takes)"
    );
    drop(mine);
}

/// A handler that returns only when the test closes the socket it was sent: neither the
/// connection closing nor SIGTERM ends it.
struct Stuck;

impl Server for Stuck {
    type Client = ServerHandle;

    fn handle(&mut self, ctx: &mut Context<'_>, _: Message<'_>) -> Result<(), RemoteError> {
        let fd = ctx
            .channel()
            .recv_fd()?
            .ok_or_else(|| RemoteError::failed("no descriptor"))?;
        let mut hold = UnixStream::from(fd);
        hold.write_all(b"!")?; // running
        let _ = hold.read(&mut [0]);
        Ok(())
    }
}

#[test]
fn stop_says_the_handler_did_not_return() {
    let _wd = watchdog("stop_says_the_handler_did_not_return", SECS(30));
    let mut server = Stuck.start().unwrap();
    let (mut mine, theirs) = UnixStream::pair().unwrap();
    server.channel().write_array(["block"]).unwrap();
    server.channel().send_fd(&theirs).unwrap();
    drop(theirs);
    mine.read_exact(&mut [0]).unwrap(); // the handler is running
    let grace = StopOptions {
        after_close: Duration::from_millis(100),
        after_term: Duration::from_millis(100),
    };
    let stopped = server.stop_with(grace).unwrap();
    assert_eq!(stopped.how, Shutdown::Killed);
    assert_eq!(stopped.grace, grace);
    // It said "was killed with SIGKILL after ignoring SIGTERM": SIGTERM was not ignored, the
    // handler did not return.
    assert_eq!(
        stopped.to_string(),
        "server did not exit within 100ms of its connection closing nor within 100ms of \
         SIGTERM (a handler or hook did not return), so it was killed with SIGKILL \
         (signal: 9 (SIGKILL))"
    );
    drop(mine);
}

#[test]
fn a_remote_error_debug_prints_its_details_as_text() {
    // As a client sees an io error (`{:?}` through `unwrap`, anyhow, a log).
    let e = RemoteError::new(
        fdserver::RemoteErrorKind::Io,
        "Bad file descriptor (os error 9)",
    )
    .with_details(["other", "9"]);
    assert_eq!(
        format!("{e:?}"),
        r#"RemoteError { kind: Io, message: "Bad file descriptor (os error 9)", details: ["other", "9"] }"#
    );
    // Bytes that are not UTF-8 stay exact, as a byte string.
    let e = RemoteError::failed("x").with_details([vec![b'a', 0xff], vec![]]);
    assert!(
        format!("{e:?}").ends_with(r#"details: [b"a\xff", ""] }"#),
        "{e:?}"
    );
}
