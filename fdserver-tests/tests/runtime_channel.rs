//! The message channel (issue 2, "Message channel"): Passenger's MessageChannel test cases between
//! two real processes (`Channel::pair` + fork), and the exact wire bytes, malformed input,
//! descriptor passing and deadlines observed on a raw socket peer.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use fdserver::{Channel, Error, MessageBuf, ProtocolError};
use fdserver_tests::{
    fork_peer, pipe, pseudo_random_bytes, recv_with_fds, send_with_fds, set_nonblocking,
    wait_child, watchdog, SECS,
};

/// A channel on one end and the raw socket on the other, in this process.
fn raw_pair() -> (Channel, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    (Channel::from(a), b)
}

/// Everything the raw peer can read right now, without waiting.
fn drain_now(peer: &mut UnixStream) -> Vec<u8> {
    peer.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("read: {e}"),
        }
    }
    peer.set_nonblocking(false).unwrap();
    out
}

fn read_exactly(peer: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    peer.read_exact(&mut v).unwrap();
    v
}

/// Reads a pipe's read end to end of stream (proves every write end is closed).
fn read_to_eof(fd: OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    std::fs::File::from(fd).read_to_end(&mut out).unwrap();
    out
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn assert_exit_ok(pid: libc::pid_t) {
    let st = wait_child(pid);
    assert_eq!(st.code(), Some(0), "peer process failed: {st}");
}

// ---------------------------------------------------------------------------------------------
// Exact wire bytes (REFERENCE §1 test vectors), observed on a raw socket
// ---------------------------------------------------------------------------------------------

#[test]
fn wire_array_vectors_written_byte_for_byte() {
    let (mut ch, mut peer) = raw_pair();
    let cases: &[(&[&str], &[u8])] = &[
        (
            &["hello", "world !!"],
            b"\x00\x0F\x68\x65\x6C\x6C\x6F\x00\x77\x6F\x72\x6C\x64\x20\x21\x21\x00",
        ),
        (&[""], b"\x00\x01\x00"),
        (&["", "foo"], b"\x00\x05\x00\x66\x6F\x6F\x00"),
        (&[], b"\x00\x00"),
    ];
    for (msg, bytes) in cases {
        ch.write_array(msg.iter()).unwrap();
        assert_eq!(read_exactly(&mut peer, bytes.len()), *bytes, "{msg:?}");
    }
    // Lengths count bytes, not characters.
    ch.write_array(["é"]).unwrap();
    assert_eq!(read_exactly(&mut peer, 5), b"\x00\x03\xC3\xA9\x00");
    assert!(drain_now(&mut peer).is_empty());
}

#[test]
fn wire_array_vectors_read_byte_for_byte() {
    let (mut ch, mut peer) = raw_pair();
    peer.write_all(b"\x00\x0Fhello\x00world !!\x00\x00\x01\x00\x00\x05\x00foo\x00\x00\x00")
        .unwrap();
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["hello", "world !!"]);
    assert_eq!(ch.read_strings().unwrap().unwrap(), [""]);
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["", "foo"]);
    // A zero-length body is the empty message, not end of stream.
    assert_eq!(ch.read_array().unwrap(), Some(vec![]));
    drop(peer);
    assert_eq!(ch.read_array().unwrap(), None);
}

#[test]
fn wire_scalar_is_u32_be_length_then_bytes() {
    let (mut ch, mut peer) = raw_pair();
    ch.write_scalar(b"abc").unwrap();
    assert_eq!(read_exactly(&mut peer, 7), b"\x00\x00\x00\x03abc");
    ch.write_scalar(b"").unwrap();
    assert_eq!(read_exactly(&mut peer, 4), b"\x00\x00\x00\x00");
    let big = pseudo_random_bytes(7, 70_000);
    ch.write_scalar(&big).unwrap();
    let got = read_exactly(&mut peer, 4 + big.len());
    assert_eq!(&got[..4], &70_000u32.to_be_bytes());
    assert_eq!(&got[4..], &big[..]);

    peer.write_all(b"\x00\x00\x00\x05\x00\xFFab\x00").unwrap();
    assert_eq!(ch.read_scalar().unwrap().unwrap(), b"\x00\xFFab\x00");
    peer.write_all(b"\x00\x00\x00\x00").unwrap();
    assert_eq!(ch.read_scalar().unwrap().unwrap(), b"");
}

#[test]
fn wire_fd_is_one_nul_byte_with_one_scm_rights_fd() {
    let (mut ch, peer) = raw_pair();
    let (r, w) = pipe();
    ch.send_fd(&w).unwrap();
    drop(w);
    let mut buf = [0xAAu8; 16];
    let (n, mut fds) = recv_with_fds(peer.as_fd(), &mut buf);
    assert_eq!((n, buf[0]), (1, 0), "exactly one data byte, 00");
    assert_eq!(fds.len(), 1, "exactly one descriptor");
    std::fs::File::from(fds.pop().unwrap())
        .write_all(b"through")
        .unwrap();
    assert_eq!(read_to_eof(r), b"through");

    // And what a Passenger peer sends, we receive.
    let (r, w) = pipe();
    send_with_fds(peer.as_fd(), &[0], &[w.as_raw_fd()]);
    drop(w);
    let got = ch.recv_fd().unwrap().expect("a descriptor");
    // SAFETY: F_GETFD only queries the descriptor.
    let flags = unsafe { libc::fcntl(got.as_raw_fd(), libc::F_GETFD) };
    assert_ne!(
        flags & libc::FD_CLOEXEC,
        0,
        "received descriptors are close-on-exec"
    );
    std::fs::File::from(got).write_all(b"back").unwrap();
    assert_eq!(read_to_eof(r), b"back");
}

// ---------------------------------------------------------------------------------------------
// Refused writes write nothing
// ---------------------------------------------------------------------------------------------

#[test]
fn nul_element_or_oversized_body_is_refused_and_nothing_is_written() {
    let (mut ch, mut peer) = raw_pair();
    assert!(matches!(
        ch.write_array(["a", "b\0c"]),
        Err(Error::ElementContainsNul { index: 1 })
    ));
    let too_big = "x".repeat(65535); // + its NUL = 65536 bytes of body
    assert!(matches!(
        ch.write_array([too_big.as_str()]),
        Err(Error::MessageTooLarge { len }) if len > 65535
    ));
    let split = ["y".repeat(40_000), "z".repeat(40_000)];
    assert!(matches!(
        ch.write_array(&split),
        Err(Error::MessageTooLarge { .. })
    ));
    assert!(matches!(
        ch.write_ok(["fine", "\0"]),
        Err(Error::ElementContainsNul { index: 1 })
    ));
    assert!(
        drain_now(&mut peer).is_empty(),
        "a refused message wrote bytes"
    );
    assert!(!ch.is_broken());

    // The channel is still in sync, and exactly 65535 bytes of body is allowed.
    ch.write_array(["next"]).unwrap();
    assert_eq!(read_exactly(&mut peer, 7), b"\x00\x05next\x00");
    let fits = "x".repeat(65534);
    ch.write_array([fits.as_str()]).unwrap();
    let got = read_exactly(&mut peer, 2 + 65535);
    assert_eq!(&got[..2], b"\xFF\xFF");
    assert!(drain_now(&mut peer).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Malformed input
// ---------------------------------------------------------------------------------------------

#[test]
fn trailing_bytes_after_last_nul_is_missing_terminator_and_channel_stays_usable() {
    let (mut ch, mut peer) = raw_pair();
    // Body "a\0bcd": Passenger would drop "bcd"; we refuse the whole message.
    peer.write_all(b"\x00\x05a\x00bcd").unwrap();
    peer.write_all(b"\x00\x03no\x00").unwrap();
    assert!(matches!(
        ch.read_array(),
        Err(Error::Protocol(ProtocolError::MissingTerminator))
    ));
    assert!(!ch.is_broken(), "the whole frame was consumed");
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["no"]);
    // A body without any NUL at all, too.
    peer.write_all(b"\x00\x03abc\x00\x02x\x00").unwrap();
    assert!(matches!(
        ch.read_array(),
        Err(Error::Protocol(ProtocolError::MissingTerminator))
    ));
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["x"]);
}

#[test]
fn eof_in_the_middle_of_a_message_is_a_protocol_error() {
    let partials: &[&[u8]] = &[b"\x00", b"\x00\x05", b"\x00\x05ab"];
    for partial in partials {
        let (mut ch, mut peer) = raw_pair();
        peer.write_all(partial).unwrap();
        drop(peer);
        assert!(
            matches!(
                ch.read_array(),
                Err(Error::Protocol(ProtocolError::UnexpectedEof))
            ),
            "{partial:?}"
        );
        assert!(ch.is_broken());
        assert!(matches!(ch.read_array(), Err(Error::Broken { .. })));
    }
    let partials: &[&[u8]] = &[b"\x00\x00", b"\x00\x00\x00\x04", b"\x00\x00\x00\x04abc"];
    for partial in partials {
        let (mut ch, mut peer) = raw_pair();
        peer.write_all(partial).unwrap();
        drop(peer);
        assert!(
            matches!(
                ch.read_scalar(),
                Err(Error::Protocol(ProtocolError::UnexpectedEof))
            ),
            "{partial:?}"
        );
    }
}

#[test]
fn eof_at_a_message_boundary_is_no_message() {
    let (mut ch, mut peer) = raw_pair();
    peer.write_all(b"\x00\x02a\x00").unwrap();
    drop(peer);
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["a"]);
    assert_eq!(ch.read_array().unwrap(), None);
    assert_eq!(ch.read_scalar().unwrap(), None);
    assert!(ch.recv_fd().unwrap().is_none());
}

#[test]
fn scalar_over_the_limit_is_refused_and_breaks_the_channel() {
    let (mut ch, mut peer) = raw_pair();
    ch.set_max_scalar_size(1024);
    assert_eq!(ch.max_scalar_size(), 1024);
    peer.write_all(b"\x00\x00\x04\x00").unwrap();
    peer.write_all(&[7u8; 1024]).unwrap();
    assert_eq!(ch.read_scalar().unwrap().unwrap(), vec![7u8; 1024]);
    peer.write_all(b"\x00\x00\x04\x01").unwrap();
    assert!(matches!(
        ch.read_scalar(),
        Err(Error::ScalarTooLarge {
            len: 1025,
            max: 1024
        })
    ));
    assert!(ch.is_broken());
    assert!(matches!(ch.read_scalar(), Err(Error::Broken { .. })));
    assert!(matches!(ch.read_array(), Err(Error::Broken { .. })));
    assert!(matches!(ch.write_array(["x"]), Err(Error::Broken { .. })));
    let e = ch.send_fd(&peer).unwrap_err();
    // Review F7: a break mid-message says so, and what to do.
    assert!(
        matches!(
            &e,
            Error::Broken {
                cause: fdserver::BrokenCause::MidMessage,
                ..
            }
        ),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("stopped part-way through a message"),
        "{text}"
    );
    assert!(
        text.contains("stop this server and start a new one"),
        "{text}"
    );
}

#[test]
fn announced_scalar_length_does_not_allocate_up_front() {
    // A peer announcing 4 GiB and then dying must not make us allocate 4 GiB.
    let (mut ch, mut peer) = raw_pair();
    ch.set_max_scalar_size(u64::MAX);
    peer.write_all(b"\xFF\xFF\xFF\xFFonly a few bytes").unwrap();
    drop(peer);
    assert!(matches!(
        ch.read_scalar(),
        Err(Error::Protocol(ProtocolError::UnexpectedEof))
    ));
    // The default limit refuses it outright.
    let (mut ch, mut peer) = raw_pair();
    assert_eq!(ch.max_scalar_size(), fdserver::DEFAULT_MAX_SCALAR);
    peer.write_all(b"\xFF\xFF\xFF\xFF").unwrap();
    assert!(matches!(
        ch.read_scalar(),
        Err(Error::ScalarTooLarge {
            len: 0xFFFF_FFFF,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// Descriptors where they do not belong
// ---------------------------------------------------------------------------------------------

#[test]
fn fd_where_a_message_is_expected_is_unexpected_fd_closed_and_channel_stays_usable() {
    let (mut ch, mut peer) = raw_pair();
    let (r, w) = pipe();
    send_with_fds(peer.as_fd(), &[0], &[w.as_raw_fd()]);
    drop(w);
    peer.write_all(b"\x00\x06after\x00").unwrap();
    assert!(matches!(
        ch.read_array(),
        Err(Error::Protocol(ProtocolError::UnexpectedFd))
    ));
    assert!(!ch.is_broken());
    // The descriptor that arrived was closed: the pipe's last write end is gone.
    assert_eq!(read_to_eof(r), b"");
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["after"]);

    // Same where a scalar is expected.
    let (r, w) = pipe();
    send_with_fds(peer.as_fd(), &[0], &[w.as_raw_fd()]);
    drop(w);
    peer.write_all(b"\x00\x00\x00\x01!").unwrap();
    assert!(matches!(
        ch.read_scalar(),
        Err(Error::Protocol(ProtocolError::UnexpectedFd))
    ));
    assert_eq!(read_to_eof(r), b"");
    assert_eq!(ch.read_scalar().unwrap().unwrap(), b"!");
}

#[test]
fn several_fds_in_one_sendmsg_is_too_many_fds_and_all_are_closed() {
    // 2 fits the receive buffer (rejected by count), 9 overflows it (MSG_CTRUNC).
    for count in [2usize, 9] {
        let (mut ch, mut peer) = raw_pair();
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..count).map(|_| pipe()).collect();
        let raw: Vec<_> = pipes.iter().map(|(_, w)| w.as_raw_fd()).collect();
        send_with_fds(peer.as_fd(), &[0], &raw);
        let readers: Vec<OwnedFd> = pipes.into_iter().map(|(r, _w)| r).collect();
        assert!(
            matches!(
                ch.recv_fd(),
                Err(Error::Protocol(ProtocolError::TooManyFds))
            ),
            "{count} fds"
        );
        for r in readers {
            assert_eq!(read_to_eof(r), b"", "a received descriptor was left open");
        }
        // The single byte that carried them was consumed: still in sync.
        assert!(!ch.is_broken());
        peer.write_all(b"\x00\x03ok\x00").unwrap();
        assert_eq!(ch.read_strings().unwrap().unwrap(), ["ok"]);
    }
}

#[test]
fn data_where_an_fd_is_expected_is_expected_fd() {
    let (mut ch, mut peer) = raw_pair();
    peer.write_all(b"\x00\x02a\x00").unwrap();
    assert!(matches!(
        ch.recv_fd(),
        Err(Error::Protocol(ProtocolError::ExpectedFd))
    ));
    assert!(ch.is_broken(), "a byte of another message was eaten");
}

// ---------------------------------------------------------------------------------------------
// A reply and its descriptor read together (`read_reply_with_fd`)
// ---------------------------------------------------------------------------------------------

/// Sends `["ok", "v"]` and, in its own `sendmsg`, the write end of a fresh pipe; returns the
/// read end.
fn send_ok_and_pipe(peer: &UnixStream) -> OwnedFd {
    let (r, w) = pipe();
    send_with_fds(peer.as_fd(), b"\x00\x05ok\x00v\x00", &[]);
    send_with_fds(peer.as_fd(), &[0], &[w.as_raw_fd()]);
    r
}

#[test]
fn reply_with_fd_reads_the_reply_and_its_descriptor_and_nothing_after() {
    let (mut ch, mut peer) = raw_pair();
    let r = send_ok_and_pipe(&peer);
    // What follows must stay on the socket for the next read.
    peer.write_all(b"\x00\x05next\x00").unwrap();
    let mut buf = MessageBuf::new();
    let (reply, fd) = ch.read_reply_with_fd(&mut buf).unwrap();
    assert_eq!(reply.to_strings().unwrap(), ["ok", "v"]);
    std::fs::File::from(fd).write_all(b"through").unwrap();
    assert_eq!(read_to_eof(r), b"through");
    assert!(!ch.is_broken());
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["next"]);
}

#[test]
fn reply_with_fd_waits_for_a_descriptor_sent_after_the_reply() {
    let (mut ch, peer) = raw_pair();
    let (r, w) = pipe();
    send_with_fds(peer.as_fd(), b"\x00\x05ok\x00v\x00", &[]);
    // The descriptor comes later, from another thread: the reader either takes it together with
    // the body or reads it on its own once the body is complete.
    let sender = std::thread::spawn(move || {
        send_with_fds(peer.as_fd(), &[0], &[w.as_raw_fd()]);
        peer
    });
    let mut buf = MessageBuf::new();
    let (reply, fd) = ch.read_reply_with_fd(&mut buf).unwrap();
    assert_eq!(reply.to_strings().unwrap(), ["ok", "v"]);
    let _peer = sender.join().unwrap();
    std::fs::File::from(fd).write_all(b"x").unwrap();
    assert_eq!(read_to_eof(r), b"x");
}

#[test]
fn reply_with_fd_and_write_ok_with_fd_round_trip_between_processes() {
    let _wd = watchdog("reply_with_fd_between_processes", SECS(30));
    let (mut ch, pid) = fork_peer(&[], |mut ch| {
        let mut buf = MessageBuf::new();
        while ch.read_into(&mut buf).unwrap() {
            let (r, w) = pipe();
            std::fs::File::from(w)
                .write_all(buf.message().name())
                .unwrap();
            ch.write_ok_with_fd(["piped"], &r).unwrap();
        }
        0
    });
    let mut buf = MessageBuf::new();
    for i in 0..200 {
        let word = format!("w{i}");
        ch.write_array([word.as_str()]).unwrap();
        let (reply, fd) = ch.read_reply_with_fd(&mut buf).unwrap();
        assert_eq!(reply.to_strings().unwrap(), ["ok", "piped"]);
        assert_eq!(read_to_eof(fd), word.as_bytes());
    }
    drop(ch);
    assert_exit_ok(pid);
}

#[test]
fn reply_with_fd_error_reply_reads_no_descriptor_and_keeps_the_channel() {
    let (mut ch, mut peer) = raw_pair();
    peer.write_all(b"\x00\x10error\x00failed\x00no\x00")
        .unwrap();
    let mut buf = MessageBuf::new();
    let err = ch.read_reply_with_fd(&mut buf).unwrap_err();
    assert_eq!(err.as_remote().map(|r| r.message()), Some("no"), "{err:?}");
    assert!(!ch.is_broken());
    peer.write_all(b"\x00\x03ok\x00").unwrap();
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["ok"]);
}

#[test]
fn reply_with_fd_error_reply_followed_by_data_reads_nothing_after_it() {
    // A message right behind the error reply (sent by a signal handler, say): the descriptor's
    // byte is only asked for after an "ok" body, so that message is left whole.
    let (mut ch, mut peer) = raw_pair();
    peer.write_all(b"\x00\x10error\x00failed\x00no\x00\x00\x05note\x00")
        .unwrap();
    let mut buf = MessageBuf::new();
    let err = ch.read_reply_with_fd(&mut buf).unwrap_err();
    assert!(err.as_remote().is_some(), "{err:?}");
    assert!(!ch.is_broken());
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["note"]);
}

#[test]
fn reply_with_fd_data_instead_of_the_descriptor_is_expected_fd() {
    let (mut ch, mut peer) = raw_pair();
    peer.write_all(b"\x00\x03ok\x00\x00\x03ok\x00").unwrap();
    let mut buf = MessageBuf::new();
    assert!(matches!(
        ch.read_reply_with_fd(&mut buf),
        Err(Error::Protocol(ProtocolError::ExpectedFd))
    ));
    assert!(ch.is_broken());
}

#[test]
fn shortest_replies_are_read_exactly_with_or_without_a_descriptor() {
    // ["ok"] is the shortest reply (5 bytes): the first read asks for exactly that, plus the
    // descriptor's byte when one is expected, and what follows stays on the socket.
    let (mut ch, mut peer) = raw_pair();
    let mut buf = MessageBuf::new();
    peer.write_all(b"\x00\x03ok\x00\x00\x05next\x00").unwrap();
    assert_eq!(
        ch.read_reply(&mut buf).unwrap().to_strings().unwrap(),
        ["ok"]
    );
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["next"]);

    let (r, w) = pipe();
    send_with_fds(peer.as_fd(), b"\x00\x03ok\x00", &[]);
    send_with_fds(peer.as_fd(), &[0], &[w.as_raw_fd()]);
    drop(w);
    peer.write_all(b"\x00\x05next\x00").unwrap();
    let (reply, fd) = ch.read_reply_with_fd(&mut buf).unwrap();
    assert_eq!(reply.to_strings().unwrap(), ["ok"]);
    drop(fd);
    assert_eq!(
        read_to_eof(r),
        b"",
        "the descriptor received is the pipe's write end"
    );
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["next"]);

    // An error reply with a descriptor expected: nothing past the reply is read.
    peer.write_all(b"\x00\x10error\x00failed\x00no\x00")
        .unwrap();
    assert!(ch
        .read_reply_with_fd(&mut buf)
        .unwrap_err()
        .as_remote()
        .is_some());
    assert!(!ch.is_broken());
    peer.write_all(b"\x00\x05next\x00").unwrap();
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["next"]);
}

#[test]
fn a_frame_shorter_than_any_reply_is_a_protocol_error() {
    // Alone on the socket: only its own bytes are read, and the channel stays in step.
    for frame in [&b"\x00\x00"[..], b"\x00\x02x\x00"] {
        let (mut ch, mut peer) = raw_pair();
        let mut buf = MessageBuf::new();
        peer.write_all(frame).unwrap();
        let err = ch.read_reply(&mut buf).unwrap_err();
        assert!(
            matches!(err, Error::Protocol(ProtocolError::BadReply(_))),
            "{frame:?}: {err:?}"
        );
        assert!(!ch.is_broken(), "{frame:?}");
        peer.write_all(b"\x00\x03ok\x00").unwrap();
        assert_eq!(
            ch.read_reply(&mut buf).unwrap().to_strings().unwrap(),
            ["ok"]
        );
    }
    // With the next message behind it, the first read took bytes of that message: broken.
    let (mut ch, mut peer) = raw_pair();
    let mut buf = MessageBuf::new();
    peer.write_all(b"\x00\x00\x00\x03ok\x00").unwrap();
    assert!(matches!(
        ch.read_reply(&mut buf),
        Err(Error::Protocol(ProtocolError::BadReply(_)))
    ));
    assert!(ch.is_broken());
}

#[test]
fn a_descriptor_where_a_reply_is_expected_is_closed_and_the_channel_stays_usable() {
    let (mut ch, mut peer) = raw_pair();
    let (r, w) = pipe();
    send_with_fds(peer.as_fd(), &[0], &[w.as_raw_fd()]);
    drop(w);
    let mut buf = MessageBuf::new();
    assert!(matches!(
        ch.read_reply(&mut buf),
        Err(Error::Protocol(ProtocolError::UnexpectedFd))
    ));
    assert_eq!(read_to_eof(r), b"", "the stray descriptor was closed");
    assert!(!ch.is_broken());
    peer.write_all(b"\x00\x03ok\x00").unwrap();
    assert_eq!(
        ch.read_reply(&mut buf).unwrap().to_strings().unwrap(),
        ["ok"]
    );
}

#[test]
fn reply_with_fd_stray_or_extra_descriptors_are_closed() {
    // Two descriptors on the descriptor's byte, and one attached to the reply itself.
    for (reply_fds, byte_fds) in [(0usize, 2usize), (1, 0), (0, 9)] {
        let (mut ch, peer) = raw_pair();
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..reply_fds + byte_fds).map(|_| pipe()).collect();
        let raw: Vec<_> = pipes.iter().map(|(_, w)| w.as_raw_fd()).collect();
        send_with_fds(peer.as_fd(), b"\x00\x03ok\x00", &raw[..reply_fds]);
        send_with_fds(peer.as_fd(), &[0], &raw[reply_fds..]);
        let readers: Vec<OwnedFd> = pipes.into_iter().map(|(r, _w)| r).collect();
        let mut buf = MessageBuf::new();
        let res = ch
            .read_reply_with_fd(&mut buf)
            .map(|(m, fd)| (m.to_vec(), fd));
        assert!(
            matches!(
                res,
                Err(Error::Protocol(
                    ProtocolError::UnexpectedFd | ProtocolError::TooManyFds
                ))
            ),
            "{reply_fds}+{byte_fds}: {res:?}"
        );
        for r in readers {
            assert_eq!(read_to_eof(r), b"", "a received descriptor was left open");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Strings
// ---------------------------------------------------------------------------------------------

#[test]
fn utf8_errors_name_the_element() {
    let (mut ch, mut peer) = raw_pair();
    peer.write_all(b"\x00\x0Aok\x00fine\x00\xFF\x00").unwrap();
    match ch.read_strings() {
        Err(Error::InvalidUtf8 { index: 2, .. }) => {}
        other => panic!("expected InvalidUtf8 at element 2, got {other:?}"),
    }
    assert!(!ch.is_broken());
    // The bytes API has no opinion.
    peer.write_all(b"\x00\x03\xC3\x28\x00").unwrap();
    assert_eq!(ch.read_array().unwrap().unwrap(), [b"\xC3\x28".to_vec()]);
    // And the message says which one.
    peer.write_all(b"\x00\x04a\x00\xFE\x00").unwrap();
    let err = ch.read_strings().unwrap_err();
    assert!(err.to_string().contains("element 1"), "{err}");
    let mut buf = MessageBuf::new();
    peer.write_all(b"\x00\x04a\x00\xFE\x00").unwrap();
    assert!(ch.read_into(&mut buf).unwrap());
    assert!(matches!(
        buf.message().str(1),
        Err(Error::InvalidUtf8 { index: 1, .. })
    ));
    assert_eq!(buf.message().str(0).unwrap(), "a");
}

// ---------------------------------------------------------------------------------------------
// Deadlines
// ---------------------------------------------------------------------------------------------

#[test]
fn read_timeout_before_a_message_leaves_the_channel_usable() {
    let (mut ch, mut peer) = raw_pair();
    ch.set_read_timeout(Some(Duration::from_millis(30)));
    assert_eq!(ch.read_timeout(), Some(Duration::from_millis(30)));
    assert!(matches!(ch.read_array(), Err(Error::TimedOut { .. })));
    assert!(matches!(ch.read_scalar(), Err(Error::TimedOut { .. })));
    assert!(matches!(ch.recv_fd(), Err(Error::TimedOut { .. })));
    assert!(!ch.is_broken());
    peer.write_all(b"\x00\x02a\x00\x00\x00\x00\x01b").unwrap();
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["a"]);
    assert_eq!(ch.read_scalar().unwrap().unwrap(), b"b");
    let (_r, w) = pipe();
    send_with_fds(peer.as_fd(), &[0], &[w.as_raw_fd()]);
    assert!(ch.recv_fd().unwrap().is_some());
}

#[test]
fn read_timeout_in_the_middle_of_a_message_breaks_the_channel() {
    for partial in [&b"\x00"[..], b"\x00\x05ab"] {
        let (mut ch, mut peer) = raw_pair();
        ch.set_read_timeout(Some(Duration::from_millis(30)));
        peer.write_all(partial).unwrap();
        assert!(matches!(ch.read_array(), Err(Error::TimedOut { .. })));
        assert!(ch.is_broken(), "{partial:?}");
        peer.write_all(b"cde\x00").unwrap();
        assert!(matches!(ch.read_array(), Err(Error::Broken { .. })));
    }
    let (mut ch, mut peer) = raw_pair();
    ch.set_read_timeout(Some(Duration::from_millis(30)));
    peer.write_all(b"\x00\x00\x00\x09abc").unwrap();
    assert!(matches!(ch.read_scalar(), Err(Error::TimedOut { .. })));
    assert!(ch.is_broken());
}

#[test]
fn write_timeout_when_the_peer_does_not_read() {
    let (mut ch, peer) = raw_pair();
    ch.set_write_timeout(Some(Duration::from_millis(30)));
    assert_eq!(ch.write_timeout(), Some(Duration::from_millis(30)));
    // Far more than any socket buffer: part of it goes out, then the deadline passes.
    let big = vec![1u8; 16 << 20];
    assert!(matches!(ch.write_scalar(&big), Err(Error::TimedOut { .. })));
    assert!(ch.is_broken(), "a half-written scalar breaks the channel");
    drop(peer);
}

#[test]
fn timeouts_work_on_a_nonblocking_socket_and_blocking_reads_wait() {
    let _wd = watchdog("timeouts_work_on_a_nonblocking_socket", SECS(30));
    let (mut ch, pid) = fork_peer(&[], |mut ch| {
        // Wait for the go, then send a large scalar in pieces the reader must wait for.
        let Ok(Some(_)) = ch.read_array() else {
            return 1;
        };
        let data = pseudo_random_bytes(3, 1 << 20);
        if ch.write_scalar(&data).is_err() {
            return 2;
        }
        0
    });
    set_nonblocking(ch.as_fd(), true);
    ch.set_read_timeout(Some(Duration::from_millis(20)));
    assert!(matches!(ch.read_scalar(), Err(Error::TimedOut { .. })));
    ch.set_read_timeout(None);
    ch.write_array(["go"]).unwrap();
    // No deadline on a non-blocking socket: waits with poll instead of failing with EAGAIN.
    let got = ch.read_scalar().unwrap().unwrap();
    assert_eq!(got, pseudo_random_bytes(3, 1 << 20));
    assert_eq!(ch.read_scalar().unwrap(), None);
    assert_exit_ok(pid);
}

// ---------------------------------------------------------------------------------------------
// Passenger's MessageChannel test cases, between two processes
// ---------------------------------------------------------------------------------------------

/// A peer process that echoes every array message back until end of stream.
fn array_echo_peer(mut ch: Channel) -> i32 {
    let mut buf = MessageBuf::new();
    loop {
        match ch.read_into(&mut buf) {
            Ok(true) => {
                if ch.write_array(buf.message().iter()).is_err() {
                    return 2;
                }
            }
            Ok(false) => return 0,
            Err(_) => return 1,
        }
    }
}

#[test]
fn passenger_message_round_trip_between_processes() {
    let _wd = watchdog("passenger_message_round_trip", SECS(30));
    let (mut ch, pid) = fork_peer(&[], |mut ch| {
        let Ok(Some(msg)) = ch.read_strings() else {
            return 1;
        };
        if msg != ["hello", "world !!"] {
            return 2;
        }
        match ch.write_array(["hi", "from", "the child"]) {
            Ok(()) => 0,
            Err(_) => 3,
        }
    });
    ch.write_array(["hello", "world !!"]).unwrap();
    assert_eq!(
        ch.read_strings().unwrap().unwrap(),
        ["hi", "from", "the child"]
    );
    assert_eq!(ch.read_array().unwrap(), None);
    assert_exit_ok(pid);
}

#[test]
fn passenger_arrays_with_spaces_only_empty_and_empty_elements() {
    let _wd = watchdog("passenger_arrays", SECS(30));
    let (mut ch, pid) = fork_peer(&[], array_echo_peer);
    let cases: Vec<Vec<String>> = vec![
        strings(&["hello world", "  leading", "trailing  ", " "]),
        strings(&[""]),
        strings(&["", "", ""]),
        strings(&["", "foo", "", "bar", ""]),
        strings(&["a", "", "b"]),
        strings(&[]),
        strings(&["ünïcödé ✓", "日本語"]),
    ];
    for case in &cases {
        ch.write_array(case).unwrap();
    }
    for case in &cases {
        assert_eq!(&ch.read_strings().unwrap().unwrap(), case);
    }
    drop(ch);
    assert_exit_ok(pid);
}

#[test]
fn passenger_eof_on_array_scalar_and_fd() {
    let _wd = watchdog("passenger_eof", SECS(30));
    // The peer exits without writing anything: its end closes.
    let (mut ch, pid) = fork_peer(&[], |_ch| 0);
    assert_exit_ok(pid);
    assert_eq!(ch.read_array().unwrap(), None);
    assert_eq!(ch.read_scalar().unwrap(), None);
    assert!(ch.recv_fd().unwrap().is_none());
    // Writing to a dead peer is an error, not SIGPIPE.
    let err = ch.write_array(["anyone?"]).unwrap_err();
    assert!(err.is_disconnect(), "{err:?}");
}

#[test]
fn passenger_scalars_empty_and_binary() {
    let _wd = watchdog("passenger_scalars", SECS(30));
    let payloads: Vec<Vec<u8>> = vec![
        Vec::new(),
        pseudo_random_bytes(1, 4 << 10),
        pseudo_random_bytes(2, 32 << 10),
        pseudo_random_bytes(3, 7 << 10),
        (0..=255u8).cycle().take(1000).collect(), // every byte value, NULs included
        pseudo_random_bytes(4, 3 << 20),
    ];
    let (mut ch, pid) = fork_peer(&[], |mut ch| {
        let mut buf = Vec::new();
        loop {
            match ch.read_scalar_into(&mut buf) {
                Ok(true) => {
                    if ch.write_scalar(&buf).is_err() {
                        return 2;
                    }
                }
                Ok(false) => return 0,
                Err(_) => return 1,
            }
        }
    });
    for p in &payloads {
        ch.write_scalar(p).unwrap();
        assert_eq!(&ch.read_scalar().unwrap().unwrap(), p, "{} bytes", p.len());
    }
    drop(ch);
    assert_exit_ok(pid);
}

#[test]
fn passenger_scalar_over_the_maximum_is_refused() {
    let _wd = watchdog("passenger_scalar_over_maximum", SECS(30));
    let (mut ch, pid) = fork_peer(&[], |mut ch| {
        let r1 = ch.write_scalar(&[1u8; 100]);
        let r2 = ch.write_scalar(&[2u8; 101]);
        // Wait for the parent to close before exiting.
        let _ = ch.read_array();
        if r1.is_ok() && r2.is_ok() {
            0
        } else {
            1
        }
    });
    ch.set_max_scalar_size(100);
    assert_eq!(ch.read_scalar().unwrap().unwrap(), vec![1u8; 100]);
    assert!(matches!(
        ch.read_scalar(),
        Err(Error::ScalarTooLarge { len: 101, max: 100 })
    ));
    assert!(matches!(ch.read_scalar(), Err(Error::Broken { .. })));
    drop(ch);
    assert_exit_ok(pid);
}

#[test]
fn passenger_fd_passing_child_writes_into_the_parents_pipe() {
    let _wd = watchdog("passenger_fd_passing", SECS(30));
    let (mut ch, pid) = fork_peer(&[], |mut ch| {
        let Ok(Some(fd)) = ch.recv_fd() else {
            return 1;
        };
        let mut f = std::fs::File::from(fd);
        if f.write_all(b"hello from the child").is_err() {
            return 2;
        }
        0
    });
    let (r, w) = pipe();
    ch.send_fd(&w).unwrap();
    drop(w);
    assert_eq!(read_to_eof(r), b"hello from the child");
    assert_exit_ok(pid);

    // Passing back: the child creates a pipe and hands us its write end.
    let (mut ch, pid) = fork_peer(&[], |mut ch| {
        let (r, w) = pipe();
        if ch.send_fd(&w).is_err() {
            return 1;
        }
        drop(w);
        let mut s = Vec::new();
        if std::fs::File::from(r).read_to_end(&mut s).is_err() || s != b"and back" {
            return 2;
        }
        0
    });
    let w = ch.recv_fd().unwrap().expect("a descriptor");
    std::fs::File::from(w).write_all(b"and back").unwrap();
    assert_exit_ok(pid);
}

#[test]
fn passenger_a_thousand_messages_of_3k() {
    let _wd = watchdog("passenger_thousand_messages", SECS(30));
    let payload = |i: usize| -> String {
        let mut s = format!("{i:05}:");
        while s.len() < 3 << 10 {
            s.push((b'a' + (s.len() % 26) as u8) as char);
        }
        s
    };
    let (mut ch, pid) = fork_peer(&[], move |mut ch| {
        for i in 0..1000 {
            if ch.write_array(["msg", &payload(i)]).is_err() {
                return 1;
            }
        }
        0
    });
    let mut buf = MessageBuf::new();
    for i in 0..1000 {
        assert!(ch.read_into(&mut buf).unwrap());
        let m = buf.message();
        assert_eq!(m.len(), 2);
        assert_eq!(m.str(1).unwrap(), payload(i), "message {i}");
    }
    assert!(!ch.read_into(&mut buf).unwrap());
    assert_exit_ok(pid);
}

#[test]
fn passenger_mixed_stream_array_scalar_fd_scalar_in_order() {
    let _wd = watchdog("passenger_mixed_stream", SECS(30));
    let (r, w) = pipe();
    let keep = [w.as_raw_fd()];
    let (mut ch, pid) = fork_peer(&keep, move |mut ch| {
        let steps = [
            ch.write_array(["first", "array"]),
            ch.write_scalar(b"second\0scalar"),
            ch.send_fd(&w),
            ch.write_scalar(b"fourth"),
            ch.write_array(["fifth"]),
        ];
        i32::from(steps.iter().any(Result::is_err))
    });
    // `w` moved into the closure, dropped (closed) here when fork_peer returned.
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["first", "array"]);
    assert_eq!(ch.read_scalar().unwrap().unwrap(), b"second\0scalar");
    let fd = ch
        .recv_fd()
        .unwrap()
        .expect("the third item is a descriptor");
    assert_eq!(ch.read_scalar().unwrap().unwrap(), b"fourth");
    assert_eq!(ch.read_strings().unwrap().unwrap(), ["fifth"]);
    assert_eq!(ch.read_array().unwrap(), None);
    assert_exit_ok(pid);
    std::fs::File::from(fd)
        .write_all(b"via the passed fd")
        .unwrap();
    assert_eq!(read_to_eof(r), b"via the passed fd");
}

#[test]
fn passenger_fds_sent_back_to_back_arrive_one_per_recv() {
    let _wd = watchdog("passenger_fds_back_to_back", SECS(30));
    let pipes: Vec<(OwnedFd, OwnedFd)> = (0..5).map(|_| pipe()).collect();
    let keep: Vec<_> = pipes.iter().map(|(_, w)| w.as_raw_fd()).collect();
    let writers: Vec<i32> = keep.clone();
    let (mut ch, pid) = fork_peer(&keep, move |mut ch| {
        for w in writers {
            // SAFETY: the descriptor is open in this child (kept by fork_child) for the call.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(w) };
            if ch.send_fd(fd).is_err() {
                return 1;
            }
        }
        0
    });
    let readers: Vec<OwnedFd> = pipes.into_iter().map(|(r, _w)| r).collect();
    for (i, r) in readers.into_iter().enumerate() {
        let fd = ch.recv_fd().unwrap().expect("one descriptor per recv_fd");
        std::fs::File::from(fd)
            .write_all(format!("pipe {i}").as_bytes())
            .unwrap();
        assert_eq!(read_to_eof(r), format!("pipe {i}").as_bytes());
    }
    assert!(ch.recv_fd().unwrap().is_none());
    assert_exit_ok(pid);
}

#[test]
fn writing_to_a_closed_peer_is_an_error_not_sigpipe() {
    let _wd = watchdog("writing_to_a_closed_peer", SECS(30));
    // The test harness ignores SIGPIPE (Rust's runtime does); prove MSG_NOSIGNAL in a process
    // where SIGPIPE has its default, fatal action.
    let pid = fdserver_tests::fork_child(&[], || {
        // SAFETY: setting SIGPIPE's disposition in this single-threaded child.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        let Ok((mut a, b)) = Channel::pair() else {
            return 1;
        };
        drop(b);
        let r1 = a.write_array(["x"]);
        let r2 = a.write_scalar(b"y");
        let r3 = a.send_fd(std::io::stdin());
        let all_disconnects = [r1, r2, r3]
            .into_iter()
            .all(|r| r.is_err_and(|e| e.is_disconnect() || matches!(e, Error::Broken { .. })));
        if all_disconnects {
            0
        } else {
            2
        }
    });
    let st = wait_child(pid);
    assert_eq!(st.code(), Some(0), "{st}");
}
