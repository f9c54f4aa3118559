//! Read-ahead on the pair `start()` creates (issue 16, item 1): a reader takes whatever its
//! socket holds, keeps what the current message does not need, and loses nothing: descriptors
//! stay with their byte, and every way of taking the socket out of the channel (`as_fd`,
//! `as_raw_fd`, `into_fd`, `into_parts`, a handler handing the client's socket on) returns what
//! was buffered or refuses while something is. Each in-process test runs on both kinds of pair:
//! `SOCK_SEQPACKET` (the default) and `SOCK_STREAM` (`Builder::seqpacket(false)`).

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};

use fdserver::{Builder, Channel, Context, Error, Message, MessageBuf, ProtocolError};
use fdserver::{RemoteError, Server, ServerHandle};
use fdserver_tests::{pipe, send_with_fds, watchdog, SECS};

/// Both kinds of read-ahead pair: (reader under test, writer), and a name for messages.
fn pairs() -> Vec<(Channel, Channel, &'static str)> {
    let (a, b) = fdserver::__private::read_ahead_pair(true).unwrap();
    assert!(a.is_seqpacket(), "this system has SOCK_SEQPACKET");
    let (c, d) = fdserver::__private::read_ahead_pair(false).unwrap();
    assert!(!c.is_seqpacket());
    vec![(a, b, "seqpacket"), (c, d, "stream")]
}

/// The frames of `messages`, back to back.
fn frames(messages: &[&[&str]]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        fdserver::wire::encode_array(&mut out, m.iter()).unwrap();
    }
    out
}

/// A pipe whose read end yields `text`: a descriptor whose identity a reader can check.
fn labelled(text: &str) -> OwnedFd {
    let (r, w) = pipe();
    fdserver_tests::write_raw(w.as_raw_fd(), text.as_bytes());
    r
}

fn label_of(fd: OwnedFd) -> String {
    let mut s = String::new();
    std::fs::File::from(fd).read_to_string(&mut s).unwrap();
    s
}

/// Runs `f`, which must panic, and returns the panic's message. It holds the lock the tests that
/// start servers hold: std's panic hook takes a process-wide lock while it prints, and a server
/// forked meanwhile would inherit it held and hang in its own hook when its handler panics.
fn refuses<R>(f: impl FnOnce() -> R) -> String {
    let _serial = fdserver_tests::serial();
    let e = catch_unwind(AssertUnwindSafe(f)).err().expect("it refused");
    e.downcast_ref::<String>().cloned().unwrap_or_default()
}

#[test]
fn messages_written_at_once_are_read_one_by_one_and_the_rest_waits_in_the_buffer() {
    let _wd = watchdog("read_ahead_messages_at_once", SECS(30));
    for (mut r, w, kind) in pairs() {
        let bytes = frames(&[&["a", "1"], &["b"], &["c", "3", "33"]]);
        send_with_fds(w.as_fd(), &bytes, &[]);
        assert_eq!(r.read_strings().unwrap().unwrap(), ["a", "1"], "{kind}");
        let first = frames(&[&["a", "1"]]).len();
        assert_eq!(
            r.buffered(),
            bytes.len() - first,
            "{kind}: one receive took them all"
        );
        let why = refuses(|| r.as_fd().as_raw_fd());
        assert!(why.contains("read ahead"), "{kind}: {why}");
        refuses(|| r.as_raw_fd());
        assert_eq!(r.read_strings().unwrap().unwrap(), ["b"], "{kind}");
        assert_eq!(
            r.read_strings().unwrap().unwrap(),
            ["c", "3", "33"],
            "{kind}"
        );
        assert_eq!(r.buffered(), 0, "{kind}");
        let _ = r.as_fd(); // nothing buffered: lent
        drop(w);
        assert_eq!(r.read_strings().unwrap(), None, "{kind}: end of stream");
    }
}

#[test]
fn descriptors_read_ahead_come_out_with_their_own_byte() {
    let _wd = watchdog("read_ahead_descriptors_in_place", SECS(30));
    for (mut r, mut w, kind) in pairs() {
        let mut buf = MessageBuf::new();
        // Two replies, each followed by its descriptor, all queued before the reader reads.
        w.write_ok_with_fd(["first"], labelled("one")).unwrap();
        w.write_ok_with_fd(["second"], labelled("two")).unwrap();
        w.write_array(["after"]).unwrap();
        let (m, fd) = r.read_reply_with_fd(&mut buf).unwrap();
        assert_eq!(m.to_strings().unwrap(), ["ok", "first"], "{kind}");
        assert_eq!(label_of(fd), "one", "{kind}");
        // The second reply read without its descriptor: the descriptor waits for `recv_fd`.
        assert_eq!(
            r.read_reply(&mut buf).unwrap().to_strings().unwrap(),
            ["ok", "second"]
        );
        let fd = r.recv_fd().unwrap().unwrap();
        assert_eq!(label_of(fd), "two", "{kind}");
        assert_eq!(r.read_strings().unwrap().unwrap(), ["after"], "{kind}");
        assert!(!r.is_broken(), "{kind}");
    }
}

#[test]
fn a_reply_too_large_for_an_array_message_crosses_with_its_descriptor() {
    let _wd = watchdog("read_ahead_ok_scalar_with_fd", SECS(30));
    for (mut r, mut w, kind) in pairs() {
        let big = "z".repeat(200 << 10); // longer than a record and than an array message
        let expected = big.clone();
        let t = std::thread::spawn(move || {
            w.write_ok_with_fd([big.as_str(), "tail"], labelled("big one"))
                .unwrap();
            w
        });
        let mut buf = MessageBuf::new();
        let (m, fd) = r.read_reply_with_fd(&mut buf).unwrap();
        assert_eq!(
            m.to_strings().unwrap(),
            ["ok".to_string(), expected, "tail".to_string()],
            "{kind}"
        );
        assert_eq!(label_of(fd), "big one", "{kind}");
        drop(t.join().unwrap());
    }
}

#[test]
fn into_parts_returns_the_buffered_bytes_and_descriptors_at_their_positions() {
    let _wd = watchdog("read_ahead_into_parts", SECS(30));
    for (mut r, w, kind) in pairs() {
        let first = frames(&[&["first"]]);
        let rest = frames(&[&["second", "x"]]);
        let mut bytes = first.clone();
        bytes.extend_from_slice(&rest);
        // Records: one write of both frames; then a descriptor with its own byte. (On a
        // stream, one receive takes all three pieces: they are queued before it.)
        send_with_fds(w.as_fd(), &bytes, &[]);
        let fd = labelled("handed over");
        send_with_fds(w.as_fd(), &[0], &[fd.as_raw_fd()]);
        drop(fd);
        assert_eq!(r.read_strings().unwrap().unwrap(), ["first"], "{kind}");
        let (sock, buffered) = r.into_parts();
        let mut expected = rest.clone();
        if kind == "stream" {
            expected.push(0); // the descriptor's byte came with the same receive
        }
        assert_eq!(buffered.bytes, expected, "{kind}");
        if kind == "stream" {
            assert_eq!(buffered.fds.len(), 1, "{kind}");
            let (index, fd) = buffered.fds.into_iter().next().unwrap();
            assert_eq!(index, rest.len(), "{kind}: the descriptor's own byte");
            assert_eq!(label_of(fd), "handed over");
        } else {
            // Still in the socket, as the next record: a plain channel on it reads it.
            assert!(buffered.fds.is_empty());
            let (n, fds) = fdserver_tests::recv_with_fds(sock.as_fd(), &mut [0u8; 16]);
            assert_eq!((n, fds.len()), (1, 1));
            assert_eq!(label_of(fds.into_iter().next().unwrap()), "handed over");
        }
    }
}

#[test]
fn into_fd_and_its_trait_forms_refuse_while_something_is_buffered() {
    let _wd = watchdog("read_ahead_into_fd_refuses", SECS(30));
    for how in 0..3 {
        for (mut r, w, kind) in pairs() {
            send_with_fds(w.as_fd(), &frames(&[&["one"], &["two"]]), &[]);
            assert_eq!(r.read_strings().unwrap().unwrap(), ["one"], "{kind}");
            let why = refuses(move || match how {
                0 => drop(r.into_fd()),
                1 => drop(OwnedFd::from(r)),
                _ => drop(std::os::fd::IntoRawFd::into_raw_fd(r)),
            });
            assert!(why.contains("into_parts"), "{kind}: {why}");
        }
    }
    // With nothing buffered, the socket is given back.
    for (mut r, mut w, kind) in pairs() {
        w.write_array(["one"]).unwrap();
        assert_eq!(r.read_strings().unwrap().unwrap(), ["one"], "{kind}");
        let fd = r.into_fd();
        w.write_array(["two"]).unwrap();
        let (n, _) = fdserver_tests::recv_with_fds(fd.as_fd(), &mut [0u8; 64]);
        assert_eq!(n, frames(&[&["two"]]).len(), "{kind}");
    }
}

#[test]
fn a_descriptor_glued_to_a_frame_is_unexpected_and_breaks_the_channel() {
    let _wd = watchdog("read_ahead_glued_descriptor", SECS(30));
    for (mut r, w, kind) in pairs() {
        let (pr, pw) = pipe();
        send_with_fds(w.as_fd(), &frames(&[&["echo"]]), &[pw.as_raw_fd()]);
        drop(pw);
        let e = r.read_strings().unwrap_err();
        assert!(
            matches!(e, Error::Protocol(ProtocolError::UnexpectedFd)),
            "{kind}: {e}"
        );
        assert!(r.is_broken(), "{kind}");
        // It was closed: the pipe's only write end is gone.
        assert_eq!(label_of(pr), "", "{kind}");
    }
}

#[test]
fn a_descriptor_alone_at_a_message_boundary_is_closed_and_the_channel_stays_usable() {
    let _wd = watchdog("read_ahead_stray_descriptor", SECS(30));
    for (mut r, mut w, kind) in pairs() {
        let (pr, pw) = pipe();
        w.send_fd(&pw).unwrap();
        drop(pw);
        w.write_array(["next"]).unwrap();
        let e = r.read_strings().unwrap_err();
        assert!(
            matches!(e, Error::Protocol(ProtocolError::UnexpectedFd)),
            "{kind}: {e}"
        );
        assert!(!r.is_broken(), "{kind}");
        assert_eq!(label_of(pr), "", "{kind}: closed");
        assert_eq!(r.read_strings().unwrap().unwrap(), ["next"], "{kind}");
    }
}

#[test]
fn data_where_a_descriptor_is_expected_is_expected_fd() {
    let _wd = watchdog("read_ahead_expected_fd", SECS(30));
    for (mut r, mut w, kind) in pairs() {
        w.write_array(["not a descriptor"]).unwrap();
        let e = r.recv_fd().unwrap_err();
        assert!(
            matches!(e, Error::Protocol(ProtocolError::ExpectedFd)),
            "{kind}: {e}"
        );
        assert!(r.is_broken(), "{kind}");
    }
}

#[test]
fn scalars_of_every_size_cross_intact_between_messages() {
    let _wd = watchdog("read_ahead_scalars", SECS(60));
    for (mut r, mut w, kind) in pairs() {
        let sizes = [0usize, 1, 5, 4095, 4096, 65536, 69_632, 1 << 20];
        let t = std::thread::spawn(move || {
            for (i, &n) in sizes.iter().enumerate() {
                w.write_array([i.to_string()]).unwrap();
                w.write_scalar(&fdserver_tests::pseudo_random_bytes(i as u64, n))
                    .unwrap();
            }
            w
        });
        for (i, &n) in sizes.iter().enumerate() {
            assert_eq!(
                r.read_strings().unwrap().unwrap(),
                [i.to_string()],
                "{kind}"
            );
            let got = r.read_scalar().unwrap().unwrap();
            assert!(
                got == fdserver_tests::pseudo_random_bytes(i as u64, n),
                "{kind}: scalar of {n} bytes"
            );
        }
        drop(t.join().unwrap());
        assert_eq!(r.read_strings().unwrap(), None, "{kind}");
    }
}

#[test]
fn the_end_of_the_stream_inside_a_message_is_a_protocol_error() {
    let _wd = watchdog("read_ahead_eof_mid_message", SECS(30));
    for (mut r, w, kind) in pairs() {
        send_with_fds(w.as_fd(), b"\x00\x10ech", &[]);
        drop(w);
        let e = r.read_strings().unwrap_err();
        assert!(
            matches!(e, Error::Protocol(ProtocolError::UnexpectedEof)),
            "{kind}: {e}"
        );
    }
}

#[test]
fn a_read_timeout_before_a_message_leaves_the_channel_usable() {
    let _wd = watchdog("read_ahead_timeout", SECS(30));
    for (mut r, mut w, kind) in pairs() {
        r.set_read_timeout(Some(std::time::Duration::from_millis(20)));
        let e = r.read_strings().unwrap_err();
        assert!(matches!(e, Error::TimedOut { .. }), "{kind}: {e}");
        assert!(!r.is_broken(), "{kind}");
        w.write_array(["late"]).unwrap();
        assert_eq!(r.read_strings().unwrap().unwrap(), ["late"], "{kind}");
    }
}

/// The socket's receive time-out (`SO_RCVTIMEO`), in microseconds.
fn recv_timeout_us(fd: std::os::fd::BorrowedFd<'_>) -> i64 {
    // SAFETY: a zeroed timeval is a valid out-value.
    let mut tv: libc::timeval = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the right size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0);
    tv.tv_sec * 1_000_000 + tv.tv_usec
}

#[test]
fn a_record_channel_waits_for_a_deadline_inside_recvmsg_and_lends_its_socket_without_it() {
    let _wd = watchdog("read_ahead_rcvtimeo", SECS(30));
    let (mut r, mut w) = fdserver::__private::read_ahead_pair(true).unwrap();
    let raw = fdserver::__private::channel_socket(&r)
        .try_clone_to_owned()
        .unwrap();
    r.set_read_timeout(Some(std::time::Duration::from_millis(30)));
    let t = std::time::Instant::now();
    let e = r.read_strings().unwrap_err();
    assert!(matches!(e, Error::TimedOut { .. }), "{e}");
    assert!(t.elapsed() >= std::time::Duration::from_millis(30));
    // (The kernel keeps it in clock ticks: rounded up to the next one.)
    let set = recv_timeout_us(raw.as_fd());
    assert!(
        (30_000..40_000).contains(&set),
        "the wait was the socket's: {set} µs"
    );
    w.write_array(["in time"]).unwrap();
    assert_eq!(r.read_strings().unwrap().unwrap(), ["in time"]);
    // Lent: whoever reads the socket now must not see reads fail after 30 ms.
    let _ = r.as_fd();
    assert_eq!(recv_timeout_us(raw.as_fd()), 0);
    // And the channel keeps its deadline, through `poll`.
    let e = r.read_strings().unwrap_err();
    assert!(matches!(e, Error::TimedOut { .. }), "{e}");
    assert_eq!(recv_timeout_us(raw.as_fd()), 0);
}

#[test]
fn a_lent_stream_channel_reads_exactly_so_the_socket_can_be_shared() {
    let _wd = watchdog("read_ahead_lent_stream", SECS(30));
    let (mut r, w) = fdserver::__private::read_ahead_pair(false).unwrap();
    let raw = r.as_fd().try_clone_to_owned().unwrap();
    send_with_fds(w.as_fd(), &frames(&[&["mine"], &["yours"]]), &[]);
    assert_eq!(r.read_strings().unwrap().unwrap(), ["mine"]);
    assert_eq!(r.buffered(), 0, "nothing read past the message");
    let mut rest = [0u8; 64];
    let (n, _) = fdserver_tests::recv_with_fds(raw.as_fd(), &mut rest);
    assert_eq!(&rest[..n], &frames(&[&["yours"]])[..]);
}

#[test]
fn an_empty_record_is_not_the_end_of_the_stream() {
    let _wd = watchdog("read_ahead_empty_record", SECS(30));
    let (mut r, mut w) = fdserver::__private::read_ahead_pair(true).unwrap();
    // SAFETY: a write of nothing on our own socket.
    assert_eq!(
        unsafe { libc::write(w.as_fd().as_raw_fd(), [0u8; 1].as_ptr().cast(), 0) },
        0
    );
    w.write_array(["after nothing"]).unwrap();
    assert_eq!(r.read_strings().unwrap().unwrap(), ["after nothing"]);
}

#[test]
fn a_record_longer_than_a_reader_takes_is_refused_to_its_writer() {
    let _wd = watchdog("read_ahead_long_record", SECS(30));
    let (mut r, mut w) = fdserver::__private::read_ahead_pair(true).unwrap();
    let big = vec![7u8; 400 << 10]; // more than the send buffer (248 KiB)
                                    // SAFETY: a write from a live buffer to our own socket.
    let n = unsafe { libc::write(w.as_fd().as_raw_fd(), big.as_ptr().cast(), big.len()) };
    assert_eq!(n, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EMSGSIZE)
    );
    // Through the channel, the same bytes are split into records and arrive whole.
    let expected = big.clone();
    let t = std::thread::spawn(move || w.write_scalar(&big).unwrap());
    assert_eq!(r.read_scalar().unwrap().unwrap(), expected);
    t.join().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Through `start()`
// ---------------------------------------------------------------------------------------------

/// `echo` answers its arguments; `fd` reads a descriptor argument and answers what it carries;
/// `handoff` lends the client's socket (Passenger handlers handed it on) and writes a raw frame
/// through a copy of it.
struct Lender;

impl Server for Lender {
    type Client = ServerHandle;

    fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
        match msg.name() {
            b"echo" => ctx.reply(msg.args())?,
            b"fd" => {
                let fd = ctx
                    .channel()
                    .recv_fd()?
                    .ok_or_else(|| RemoteError::failed("no descriptor"))?;
                ctx.reply([label_of(fd)])?;
            }
            b"handoff" => {
                let copy = ctx
                    .channel()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(RemoteError::failed)?;
                let reply = frames(&[&["ok", "from the copy"]]);
                send_with_fds(copy.as_fd(), &reply, &[]);
            }
            other => return Err(RemoteError::unknown_message(other)),
        }
        Ok(())
    }
}

fn start(seqpacket: bool) -> ServerHandle {
    Builder::new()
        .seqpacket(seqpacket)
        .start_handle(&mut Lender)
        .unwrap()
}

#[test]
fn a_server_answers_requests_written_at_once_with_descriptors_in_order() {
    let _wd = watchdog("read_ahead_server_pipelined", SECS(30));
    let _serial = fdserver_tests::serial(); // see `refuses`
    for seqpacket in [true, false] {
        let mut s = start(seqpacket);
        assert_eq!(s.channel().is_seqpacket(), seqpacket);
        let ch = s.channel();
        for i in 0..5 {
            ch.write_array(["fd"]).unwrap();
            ch.send_fd(labelled(&format!("descriptor {i}"))).unwrap();
            ch.write_array(["echo", &i.to_string()]).unwrap();
        }
        let mut buf = MessageBuf::new();
        for i in 0..5 {
            let m = ch.read_reply(&mut buf).unwrap().to_strings().unwrap();
            assert_eq!(m, ["ok".to_string(), format!("descriptor {i}")]);
            let m = ch.read_reply(&mut buf).unwrap().to_strings().unwrap();
            assert_eq!(m, ["ok".to_string(), i.to_string()]);
        }
        assert!(s.stop().unwrap().status.success());
    }
}

#[test]
fn a_handler_cannot_lend_the_socket_while_a_request_waits_in_its_buffer() {
    let _wd = watchdog("read_ahead_server_refuses", SECS(30));
    let _serial = fdserver_tests::serial(); // see `refuses`
    for seqpacket in [true, false] {
        let mut s = start(seqpacket);
        // Both requests in one write (one record): the server reads the second with the first.
        let bytes = frames(&[&["handoff"], &["echo", "still served"]]);
        send_with_fds(s.channel().as_fd(), &bytes, &[]);
        let mut buf = MessageBuf::new();
        let e = s.channel().read_reply(&mut buf).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("panicked") && text.contains("read ahead"),
            "{seqpacket}: {text}"
        );
        let m = s
            .channel()
            .read_reply(&mut buf)
            .unwrap()
            .to_strings()
            .unwrap();
        assert_eq!(m, ["ok", "still served"], "{seqpacket}: nothing lost");
        assert!(s.stop().unwrap().status.success());
    }
}

#[test]
fn a_handler_hands_the_socket_on_when_nothing_is_buffered() {
    let _wd = watchdog("read_ahead_server_handoff", SECS(30));
    let _serial = fdserver_tests::serial(); // see `refuses`
    for seqpacket in [true, false] {
        let mut s = start(seqpacket);
        assert_eq!(
            s.call(["handoff"]).unwrap(),
            ["from the copy"],
            "{seqpacket}"
        );
        assert_eq!(s.call(["echo", "after"]).unwrap(), ["after"], "{seqpacket}");
        assert!(s.stop().unwrap().status.success());
    }
}

#[test]
fn a_client_lends_its_socket_only_once_the_reply_is_read_whole() {
    let _wd = watchdog("read_ahead_client_lends", SECS(30));
    let _serial = fdserver_tests::serial(); // see `refuses`
    struct FdServer(OwnedFd);
    impl Server for FdServer {
        type Client = ServerHandle;
        fn handle(&mut self, ctx: &mut Context<'_>, _: Message<'_>) -> Result<(), RemoteError> {
            ctx.channel().write_ok_with_fd(["here"], &self.0)?;
            Ok(())
        }
    }
    for seqpacket in [true, false] {
        let (pr, pw) = pipe();
        fdserver_tests::write_raw(pw.as_raw_fd(), b"kept");
        let mut server = FdServer(pr);
        let mut s = Builder::new()
            .seqpacket(seqpacket)
            .keep_fd(&server.0)
            .start_handle(&mut server)
            .unwrap();
        let ch = s.channel();
        ch.write_array(["give"]).unwrap();
        let mut buf = MessageBuf::new();
        assert_eq!(
            ch.read_reply(&mut buf).unwrap().to_strings().unwrap(),
            ["ok", "here"]
        );
        if seqpacket {
            // The reply and its descriptor came as one record: the descriptor is buffered.
            assert_eq!(ch.buffered(), 1);
            // (`refuses` would take the lock this test holds.)
            let r = catch_unwind(AssertUnwindSafe(|| ch.as_fd().as_raw_fd()));
            assert!(
                r.is_err(),
                "as_fd lent the socket with a descriptor buffered"
            );
        }
        let fd = ch.recv_fd().unwrap().unwrap();
        assert_eq!(ch.buffered(), 0);
        let _ = ch.as_fd();
        let mut got = [0u8; 4];
        // SAFETY: a read into a live buffer from a descriptor we own.
        assert_eq!(
            unsafe { libc::read(fd.as_raw_fd(), got.as_mut_ptr().cast(), 4) },
            4
        );
        assert_eq!(&got, b"kept");
        drop(pw);
        assert!(s.stop().unwrap().status.success());
    }
}

/// A started server's socket taken out of its channel (`into_parts`) and wrapped again with
/// `Channel::new`, `From<OwnedFd>` or `From<UnixStream>` (the `into_parts` example): on a
/// `SOCK_SEQPACKET` pair the new channel reads whole records, so a call through it is answered.
/// Before the constructors checked the socket's type, they read it exactly: a 2-byte header read
/// threw away the rest of the record, and the call timed out.
#[test]
fn a_started_servers_socket_wrapped_again_is_read_as_the_server_writes_it() {
    let _wd = watchdog("read_ahead_socket_wrapped_again", SECS(60));
    let _serial = fdserver_tests::serial(); // see `refuses`
    type Wrap = fn(OwnedFd) -> Channel;
    let wraps: [(Wrap, &str); 3] = [
        (Channel::new, "Channel::new"),
        (Channel::from, "From<OwnedFd>"),
        (
            |fd| Channel::from(std::os::unix::net::UnixStream::from(fd)),
            "From<UnixStream>",
        ),
    ];
    for seqpacket in [true, false] {
        for (wrap, how) in wraps {
            let mut s = start(seqpacket);
            assert_eq!(s.call(["echo", "before"]).unwrap(), ["before"]);
            let taken = std::mem::replace(s.channel(), Channel::pair().unwrap().0);
            let (fd, buffered) = taken.into_parts();
            assert!(buffered.is_empty(), "{how}, {seqpacket}");
            let mut c = wrap(fd);
            assert_eq!(c.is_seqpacket(), seqpacket, "{how}");
            c.set_timeout(Some(SECS(5)));
            for _ in 0..3 {
                c.write_array(["echo", "hello", "world"]).unwrap();
                let reply = c.read_strings();
                assert!(
                    matches!(&reply, Ok(Some(v)) if v == &["ok", "hello", "world"]),
                    "{how}, seqpacket {seqpacket}: {reply:?}"
                );
            }
            // A descriptor after its request.
            c.write_array(["fd"]).unwrap();
            c.send_fd(labelled("through the new channel")).unwrap();
            assert_eq!(
                c.read_strings().unwrap().unwrap(),
                ["ok", "through the new channel"],
                "{how}"
            );
            // Two requests before either reply: the second reply may wait in the buffer.
            c.write_array(["echo", "one"]).unwrap();
            c.write_array(["echo", "two"]).unwrap();
            assert_eq!(c.read_strings().unwrap().unwrap(), ["ok", "one"], "{how}");
            assert_eq!(c.read_strings().unwrap().unwrap(), ["ok", "two"], "{how}");
            drop(c);
            assert!(s.stop().unwrap().status.success(), "{how}, {seqpacket}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The async channel (feature `tokio`) on the same pairs
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "async")]
mod on_tokio {
    use super::*;
    use fdserver::AsyncChannel;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A blocking channel handed to the runtime (`AsyncChannel::new`, as `start_async` does)
    /// after it read ahead: the async channel reads what was buffered first, descriptors
    /// included, then the socket.
    #[test]
    fn an_async_channel_takes_over_what_the_channel_read_ahead() {
        let _wd = watchdog("read_ahead_async_takeover", SECS(30));
        for (mut r, w, kind) in pairs() {
            // One write of two frames, then a descriptor with its own byte, then one more frame.
            send_with_fds(w.as_fd(), &frames(&[&["first"], &["second", "x"]]), &[]);
            let fd = labelled("taken over");
            send_with_fds(w.as_fd(), &[0], &[fd.as_raw_fd()]);
            drop(fd);
            send_with_fds(w.as_fd(), &frames(&[&["third"]]), &[]);
            assert_eq!(r.read_strings().unwrap().unwrap(), ["first"], "{kind}");
            assert!(
                r.buffered() > 0,
                "{kind}: the test needs something buffered"
            );
            runtime().block_on(async {
                let mut a = AsyncChannel::new(r).unwrap();
                a.set_timeout(Some(SECS(5)));
                let mut buf = MessageBuf::new();
                assert!(a.read_array(&mut buf).await.unwrap(), "{kind}");
                assert_eq!(
                    buf.message().to_strings().unwrap(),
                    ["second", "x"],
                    "{kind}"
                );
                let fd = a.recv_fd().await.unwrap().expect("the descriptor");
                assert_eq!(label_of(fd), "taken over", "{kind}");
                assert!(a.read_array(&mut buf).await.unwrap(), "{kind}");
                assert_eq!(buf.message().to_strings().unwrap(), ["third"], "{kind}");
            });
        }
    }

    /// Scalars of every size cross between an async end and a blocking one, both ways, on
    /// records: the async side writes large ones as a header record and data records (one
    /// record would exceed the send buffer), and reads whole whatever records come.
    #[test]
    fn scalars_of_every_size_cross_between_an_async_end_and_a_blocking_one() {
        let _wd = watchdog("read_ahead_async_scalars", SECS(60));
        let sizes = [0usize, 1, 4095, 4096, 70 << 10, 300 << 10, 1 << 20];
        for (r, w, kind) in pairs() {
            let rt = runtime();
            let _enter = rt.enter();
            let mut a = AsyncChannel::new(r).unwrap();
            let mut b = w;
            let t = std::thread::spawn(move || {
                for &n in &sizes {
                    let got = b.read_scalar().unwrap().unwrap();
                    assert_eq!(got.len(), n);
                    assert!(got.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8));
                    b.write_scalar(&got).unwrap();
                }
                b
            });
            rt.block_on(async {
                for &n in &sizes {
                    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                    a.write_scalar(&data).await.unwrap();
                    let back = a.read_scalar().await.unwrap().unwrap();
                    assert!(back == data, "{kind}: {n} bytes came back changed");
                }
            });
            drop(t.join().unwrap());
        }
    }

    /// A record written raw, longer than what the async channel used to offer a receive (68 KiB)
    /// and within the send buffer, arrives whole; an empty record is not the end of the stream.
    #[test]
    fn an_async_channel_reads_whole_records_and_skips_empty_ones() {
        let _wd = watchdog("read_ahead_async_records", SECS(30));
        let (r, w) = fdserver::__private::read_ahead_pair(true).unwrap();
        // SAFETY: a write of nothing on our own socket.
        assert_eq!(
            unsafe { libc::write(w.as_fd().as_raw_fd(), [0u8; 1].as_ptr().cast(), 0) },
            0
        );
        let data = vec![9u8; 200 << 10];
        let mut record = (data.len() as u32).to_be_bytes().to_vec();
        record.extend_from_slice(&data);
        send_with_fds(w.as_fd(), &record, &[]);
        runtime().block_on(async {
            let mut a = AsyncChannel::new(r).unwrap();
            a.set_timeout(Some(SECS(5)));
            assert_eq!(a.read_scalar().await.unwrap().unwrap(), data);
            // Given back, it is still a channel that reads whole records.
            let mut back = a.into_inner().unwrap();
            assert!(back.is_seqpacket());
            send_with_fds(w.as_fd(), &frames(&[&["one"], &["two"]]), &[]);
            assert_eq!(back.read_strings().unwrap().unwrap(), ["one"]);
            assert_eq!(back.read_strings().unwrap().unwrap(), ["two"]);
        });
    }
}
