//! Issue 13, item 3: a call future dropped at any `.await` leaves its client in a documented,
//! tested state (see the generated async client's docs): dropped before any byte of the request
//! went out, nothing changed; dropped part-way through the request, the client is broken and
//! says so; dropped once the request was out (while its reply is due, or part-way through it),
//! the next call reads and drops that reply first. Never a reply delivered to the wrong call.
//!
//! The server here is a fake one, a raw blocking `Channel` on a thread that the test drives
//! step by step, so that each cancellation point is reached deterministically.
#![cfg(feature = "async")]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::time::Duration;

use fdserver::{AsyncChannel, Channel, Error, MessageBuf};
use fdserver_tests::{watchdog, SECS};

struct Echoer;

#[fdserver::fdserver]
impl Echoer {
    fn echo(&self, text: &str) -> String {
        text.to_string()
    }

    fn reverse(&self, data: &[u8]) -> Vec<u8> {
        data.iter().rev().copied().collect()
    }
}

/// What the fake server is told to do.
enum Do {
    /// Read one request and answer `["ok", arg1]` (the echo of `echo`).
    Echo,
    /// Read one request, answer only the first `n` bytes of `["ok", arg1]`...
    EchoPart(usize),
    /// ...and then the rest.
    Rest,
    /// Read `n` bytes of whatever comes, and report them.
    Drain(usize),
}

/// A fake server on a thread: each command is run, and its result reported.
fn fake_server(mut ch: Channel) -> (mpsc::Sender<Do>, mpsc::Receiver<Vec<u8>>) {
    let (tx, rx) = mpsc::channel::<Do>();
    let (report, reports) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = MessageBuf::new();
        let mut rest = Vec::new();
        for cmd in rx {
            match cmd {
                Do::Echo | Do::EchoPart(_) => {
                    assert!(ch.read_into(&mut buf).unwrap());
                    let arg = buf.message().get(1).unwrap_or(b"").to_vec();
                    let mut frame = Vec::new();
                    fdserver::wire::encode_array(&mut frame, [&b"ok"[..], &arg]).unwrap();
                    let cut = match cmd {
                        Do::EchoPart(n) => n,
                        _ => frame.len(),
                    };
                    raw_write(&ch, &frame[..cut]);
                    rest = frame[cut..].to_vec();
                    let _ = report.send(arg);
                }
                Do::Rest => {
                    raw_write(&ch, &rest);
                    let _ = report.send(Vec::new());
                }
                Do::Drain(n) => {
                    let mut got = vec![0u8; n];
                    let mut f = std::fs::File::from(ch.as_fd_owned_dup());
                    std::io::Read::read_exact(&mut f, &mut got).unwrap();
                    let _ = report.send(got);
                }
            }
        }
    });
    (tx, reports)
}

fn raw_write(ch: &Channel, bytes: &[u8]) {
    // SAFETY: a write from a live buffer to the channel's socket.
    let n = unsafe { libc::write(ch.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n, bytes.len() as isize);
}

trait DupFd {
    fn as_fd_owned_dup(&self) -> OwnedFd;
}

impl DupFd for Channel {
    fn as_fd_owned_dup(&self) -> OwnedFd {
        // SAFETY: dup of an open descriptor; the copy is ours.
        unsafe { OwnedFd::from_raw_fd(libc::dup(self.as_raw_fd())) }
    }
}

fn client_and_fake() -> (
    EchoerAsyncClient<AsyncChannel>,
    mpsc::Sender<Do>,
    mpsc::Receiver<Vec<u8>>,
) {
    let (ours, theirs) = Channel::pair().unwrap();
    let (tx, rx) = fake_server(theirs);
    (
        EchoerAsyncClient::from(AsyncChannel::new(ours).unwrap()),
        tx,
        rx,
    )
}

/// Bytes waiting in a socket's receive queue.
fn unread(fd: i32) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int.
    assert_eq!(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) }, 0);
    n
}

/// Polls `fut` until it is pending (it has done all it can without the peer), then drops it.
async fn run_until_pending<F: std::future::Future>(fut: F) -> Option<F::Output> {
    tokio::pin!(fut);
    // A zero-length time-out polls the future once, then gives up: what `tokio::time::timeout`
    // does to a call that takes too long, at the earliest point.
    tokio::time::timeout(Duration::ZERO, fut).await.ok()
}

#[tokio::test(flavor = "current_thread")]
async fn dropped_while_its_reply_is_due_the_next_call_reads_it_first() {
    let _wd = watchdog("cancel_reply_due", SECS(60));
    let (mut client, server, done) = client_and_fake();
    // The request goes out; the reply is not there yet: dropped.
    assert!(run_until_pending(client.echo("first")).await.is_none());
    assert!(!client.channel().is_broken());
    server.send(Do::Echo).unwrap(); // answers "first"
    assert_eq!(done.recv().unwrap(), b"first");
    server.send(Do::Echo).unwrap(); // will answer the next request
                                    // The next call reads the abandoned reply ("first") and drops it, then gets its own.
    assert_eq!(client.echo("second").await.unwrap(), "second");
    assert_eq!(done.recv().unwrap(), b"second");
}

#[tokio::test(flavor = "current_thread")]
async fn dropped_part_way_through_its_reply_the_next_call_reads_the_rest_first() {
    let _wd = watchdog("cancel_reply_partial", SECS(60));
    let (mut client, server, done) = client_and_fake();
    let fd = client.channel().as_raw_fd();
    {
        let call = client.echo("first");
        tokio::pin!(call);
        // Let the request out, and half of the reply in; then drop the call.
        assert!(tokio::time::timeout(Duration::ZERO, &mut call)
            .await
            .is_err());
        server.send(Do::EchoPart(6)).unwrap();
        assert_eq!(done.recv().unwrap(), b"first");
        // Run the call until it has taken those bytes from the socket (it then waits for the
        // rest), and drop it.
        while unread(fd) > 0 {
            assert!(tokio::time::timeout(Duration::from_millis(10), &mut call)
                .await
                .is_err());
        }
    }
    server.send(Do::Rest).unwrap();
    done.recv().unwrap();
    server.send(Do::Echo).unwrap();
    assert_eq!(client.echo("second").await.unwrap(), "second");
    assert_eq!(done.recv().unwrap(), b"second");
}

#[tokio::test(flavor = "current_thread")]
async fn dropped_while_it_drains_an_abandoned_reply_the_next_call_carries_on() {
    let _wd = watchdog("cancel_twice", SECS(60));
    let (mut client, server, done) = client_and_fake();
    assert!(run_until_pending(client.echo("one")).await.is_none());
    // The next call waits for "one"'s reply before sending: dropped there, it sent nothing.
    assert!(run_until_pending(client.echo("two")).await.is_none());
    server.send(Do::Echo).unwrap();
    assert_eq!(done.recv().unwrap(), b"one");
    server.send(Do::Echo).unwrap();
    assert_eq!(client.echo("three").await.unwrap(), "three");
    // "two" never reached the server: the request the server read after "one" was "three".
    assert_eq!(done.recv().unwrap(), b"three");
}

#[tokio::test(flavor = "current_thread")]
async fn dropped_part_way_through_its_request_the_client_is_broken() {
    let _wd = watchdog("cancel_mid_request", SECS(60));
    let (mut client, _server, _done) = client_and_fake();
    // The fake server reads nothing: 8 MiB cannot all go out, the call waits to write more.
    let big = vec![7u8; 8 << 20];
    assert!(run_until_pending(client.reverse(&big)).await.is_none());
    let e = client.echo("after").await.unwrap_err();
    assert!(matches!(e, Error::Broken { .. }), "{e}");
    assert!(e.needs_restart());
    assert!(client.channel().is_broken());
}

#[tokio::test(flavor = "current_thread")]
async fn dropped_before_any_byte_of_its_request_nothing_changed() {
    let _wd = watchdog("cancel_before_request", SECS(60));
    let (mut client, server, done) = client_and_fake();
    // Fill the socket's send buffer from a copy of the client's socket, so that the call can
    // send nothing.
    let fd = client.channel().as_raw_fd();
    let mut filler = 0usize;
    loop {
        let chunk = [1u8; 4096];
        // SAFETY: a non-blocking send from a live buffer on the client's socket.
        let n = unsafe {
            libc::send(
                fd,
                chunk.as_ptr().cast(),
                chunk.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n <= 0 {
            break;
        }
        filler += n as usize;
    }
    assert!(run_until_pending(client.echo("never")).await.is_none());
    assert!(!client.channel().is_broken());
    // The server finds the filler and nothing of the dropped call.
    server.send(Do::Drain(filler)).unwrap();
    assert!(done.recv().unwrap().iter().all(|&b| b == 1));
    server.send(Do::Echo).unwrap();
    assert_eq!(client.echo("after").await.unwrap(), "after");
    assert_eq!(done.recv().unwrap(), b"after");
}

/// With a real server: a call cut short by `tokio::time::timeout` leaves the server to finish;
/// the next call gets its own reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_on_a_real_server_does_not_answer_the_next_one() {
    let _wd = watchdog("cancel_real_server", SECS(60));
    let mut s = Echoer.start_async().await.unwrap();
    for i in 0..50 {
        let text = format!("call {i}");
        // Cut every other call short at its first wait.
        if i % 2 == 0 {
            let _ = run_until_pending(s.echo(&text)).await;
        } else {
            assert_eq!(s.echo(&text).await.unwrap(), text);
        }
    }
    s.stop().await.unwrap();
}
