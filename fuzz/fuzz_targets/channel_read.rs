//! The `Channel` read loop on an arbitrary byte stream, over a real UNIX socket pair, with
//! descriptors attached wherever the input says.
//!
//! Input layout (every byte is mutable by the fuzzer, and any input is valid):
//!
//! ```text
//! [n_ops] [op; n_ops] [limit] [n_chunks] [(len, fds); n_chunks] [stream bytes...]
//! ```
//!
//! * `op % 4`: 0 = `read_into`, 1 = `read_scalar_into`, 2 = `recv_fd`, 3 = `read_reply_with_fd`;
//!   the ops repeat in a cycle.
//! * `limit` picks the scalar limit: 0 = the default (64 MiB), otherwise `limit * 64` bytes.
//! * each chunk is one `sendmsg` of the next `len` stream bytes with `fds % 8` descriptors
//!   attached (a chunk with descriptors and no bytes sends one byte); the rest of the stream
//!   goes last, plain. Then the writing end is closed.
//!
//! Properties checked: no panic; the loop ends (every operation consumes at least one byte or
//! reports end of stream), so a closed peer never hangs the reader; once the channel reports
//! itself broken every operation says `Broken`; memory stays bounded by the bytes that actually
//! arrived, whatever length a header announces; and no descriptor is leaked (the lowest free
//! descriptor number is the same after every run).
#![no_main]

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;

use fdserver::{Channel, Error, MessageBuf};
use libfuzzer_sys::fuzz_target;

/// A descriptor to pass around (opened once).
fn dev_null() -> &'static File {
    static F: OnceLock<File> = OnceLock::new();
    F.get_or_init(|| File::open("/dev/null").expect("open /dev/null"))
}

/// The lowest free descriptor number: a leaked descriptor would take it.
fn lowest_free_fd() -> RawFd {
    // SAFETY: F_DUPFD_CLOEXEC duplicates fd 0 (or fails); we close the duplicate at once.
    unsafe {
        let fd = libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 0);
        assert!(
            fd >= 0,
            "fcntl(F_DUPFD): {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
        fd
    }
}

fn baseline_fd() -> RawFd {
    static B: OnceLock<RawFd> = OnceLock::new();
    *B.get_or_init(|| {
        dev_null();
        lowest_free_fd()
    })
}

/// One non-blocking `sendmsg` of `bytes` with `nfds` copies of /dev/null attached. Returns
/// false when the socket buffer is full (the rest of the input is then dropped).
fn send_chunk(sock: &UnixStream, bytes: &[u8], nfds: usize) -> bool {
    let fds: Vec<RawFd> = vec![dev_null().as_raw_fd(); nfds];
    let one = [0u8];
    let data = if bytes.is_empty() { &one[..] } else { bytes };
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut cmsg = [0u64; 16]; // 128 bytes, 8-aligned: room for 7 descriptors
                               // SAFETY: an all-zero msghdr is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if nfds > 0 {
        let payload = (nfds * std::mem::size_of::<RawFd>()) as u32;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as _;
        // SAFETY: msg_control points at 128 aligned bytes, enough for CMSG_SPACE(7 * 4), so the
        // header and its payload are in bounds.
        unsafe {
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(hdr).cast::<RawFd>(), nfds);
        }
    }
    // SAFETY: msg describes live buffers for the duration of the call.
    let n = unsafe {
        libc::sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return false;
    }
    let n = n as usize;
    if n < data.len() {
        // Partial write: the descriptors went with the first byte; push the rest plainly.
        return send_chunk_plain(sock, &data[n..]);
    }
    true
}

fn send_chunk_plain(sock: &UnixStream, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: plain send of a live buffer.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n <= 0 {
            return false;
        }
        bytes = &bytes[n as usize..];
    }
    true
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Array,
    Scalar,
    Fd,
    ReplyFd,
}

fuzz_target!(|data: &[u8]| {
    let base = baseline_fd();
    let mut c = Cursor(data);
    let n_ops = usize::from(c.byte() % 16).max(1);
    let ops: Vec<Op> = (0..n_ops)
        .map(|_| match c.byte() % 4 {
            0 => Op::Array,
            1 => Op::Scalar,
            2 => Op::Fd,
            _ => Op::ReplyFd,
        })
        .collect();
    let limit = c.byte();
    let n_chunks = usize::from(c.byte() % 32);
    let chunk_specs: Vec<(usize, usize)> = (0..n_chunks)
        .map(|_| (usize::from(c.byte()), usize::from(c.byte() % 8)))
        .collect();

    let (writer, reader) = UnixStream::pair().expect("socketpair");
    let mut stream_len = 0usize;
    let mut full = false;
    for (len, nfds) in chunk_specs {
        let bytes = c.take(len);
        stream_len += bytes.len().max(1);
        if !send_chunk(&writer, bytes, nfds) {
            full = true;
            break;
        }
    }
    if !full {
        stream_len += c.0.len();
        send_chunk_plain(&writer, c.0);
    }
    drop(writer);

    let mut ch = Channel::from(reader);
    if limit != 0 {
        ch.set_max_scalar_size(u64::from(limit) * 64);
    }
    let mut buf = MessageBuf::new();
    let mut scalar = Vec::new();
    let mut steps = 0usize;
    let mut broken_seen = false;
    for op in ops.iter().cycle() {
        steps += 1;
        assert!(
            steps <= stream_len + 2,
            "read loop did not end: {steps} operations on {stream_len} bytes"
        );
        let r: Result<bool, Error> = match op {
            Op::Array => ch.read_into(&mut buf),
            Op::Scalar => ch.read_scalar_into(&mut scalar),
            Op::Fd => ch.recv_fd().map(|fd| {
                if let Some(fd) = &fd {
                    // A received descriptor is a working, close-on-exec descriptor.
                    // SAFETY: F_GETFD only queries.
                    let flags = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GETFD) };
                    assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0);
                }
                fd.is_some()
            }),
            Op::ReplyFd => match ch.read_reply_with_fd(&mut buf) {
                Ok((reply, fd)) => {
                    assert_eq!(reply.name(), b"ok");
                    // SAFETY: F_GETFD only queries.
                    let flags = unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_GETFD) };
                    assert!(flags >= 0 && flags & libc::FD_CLOEXEC != 0);
                    Ok(true)
                }
                // End of stream at a message boundary: the same as the other reads' `Ok(false)`.
                Err(Error::Disconnected) if !ch.is_broken() => Ok(false),
                Err(e) => Err(e),
            },
        };
        if broken_seen {
            assert!(
                matches!(r, Err(Error::Broken { .. })),
                "{op:?} on a broken channel: {r:?}"
            );
            break;
        }
        match r {
            Ok(true) => {
                if let Op::Array | Op::ReplyFd = op {
                    let m = buf.message();
                    assert!(m.iter().all(|e| !e.contains(&0)));
                }
            }
            Ok(false) => break,
            Err(Error::Broken { .. }) => panic!("Broken before the channel said it was broken"),
            Err(_) => {
                if ch.is_broken() {
                    broken_seen = true;
                }
            }
        }
        // Memory follows the bytes that arrived, never a header's claim.
        assert!(buf.message().len() <= 65_536);
        assert!(
            scalar.capacity() <= 2 * (stream_len + 65_536),
            "scalar buffer grew to {} on a {stream_len}-byte stream",
            scalar.capacity()
        );
    }
    drop(ch);
    drop(buf);
    let now = lowest_free_fd();
    if now != base {
        // Something holds the lowest slot. Only a socket or /dev/null there (the only kinds of
        // descriptor this target creates) is our leak: the fuzzing machinery may hold a file
        // of its own open at that moment.
        let what = std::fs::read_link(format!("/proc/self/fd/{base}")).unwrap_or_default();
        let what = what.to_string_lossy();
        assert!(
            !(what.starts_with("socket:") || what == "/dev/null"),
            "a descriptor leaked: fd {base} -> {what}; open: {}",
            describe_fds()
        );
    }
});

/// Every open descriptor and what it refers to, for the leak report.
fn describe_fds() -> String {
    let mut out = String::new();
    for e in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        out += &format!("{}->{} ", e.file_name().to_string_lossy(), target.display());
    }
    out
}
