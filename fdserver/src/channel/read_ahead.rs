//! Read-ahead, on the channels whose both ends fdserver owns: the pair
//! [`Builder::start`](crate::Builder::start) creates, and on every channel on a `SOCK_SEQPACKET`
//! socket (whose records a reader must take whole). Every other channel (built from a stream
//! descriptor: [`Channel::new`], [`Channel::from_inherited_fd`], [`Channel::pair`]) reads exactly
//! what each message lacks, whatever its peer, as Passenger's readers expect of a stream they may
//! hand on.
//!
//! A read-ahead channel receives into the destination of the message being read and, in the
//! same `recvmsg`, into a buffer for whatever follows, which the next operation takes first. A
//! request or a reply then costs one `recvmsg` instead of two (header, then body), a reply with a
//! descriptor one instead of three.
//!
//! The pair is `SOCK_SEQPACKET` where the system allows it, else `SOCK_STREAM`:
//! - **Records** (`SOCK_SEQPACKET`): the kernel keeps the boundaries of each `sendmsg`, and a
//!   `recvmsg` takes one whole record. Both ends set their send buffer ([`RECORD_BUFFER`]), and
//!   the kernel refuses any record longer than it (`EMSGSIZE`, whoever writes it); every receive
//!   offers at least that much room, so no record is ever cut. fdserver's writes are records of
//!   at most [`RECORD_MAX`] (a large scalar: its header, then its bytes); the bytes are those of
//!   the wire format, in order, and the reader treats the records as one stream. A `recvmsg` blocked on such a socket is woken by
//!   arriving data only, not by the peer reading what this side sent, so a client waits in
//!   `recvmsg` without a `poll`.
//! - **Stream** (`SOCK_STREAM`, the fallback, and [`Builder::seqpacket(false)`]): the buffer takes
//!   up to [`STREAM_AHEAD`] bytes more than the message needs. A client waits in `poll` before
//!   its read: a `recvmsg` blocked on a stream socket also wakes, for nothing, each time the peer
//!   reads what this side sent (the kernel's write-space wake-up on the same wait queue), which
//!   `poll` filters out.
//!
//! Nothing is ever lost or reordered:
//! - **Descriptors keep their byte.** The kernel hands a sent buffer's descriptors to the first
//!   `recvmsg` that reads any byte of that buffer, and ends that read with the buffer, so they
//!   belong to the last byte the read returned. They are queued with that byte's position in the
//!   stream and handed out only by the operation that consumes that byte (a descriptor's own `00`
//!   byte, as the wire format sends each one), as an exact reader would receive them; anywhere
//!   else they are the same protocol error as without read-ahead.
//! - **Taking the socket out refuses while something is buffered.** [`Channel::as_fd`],
//!   `as_raw_fd`, [`Channel::into_fd`] and their trait forms panic (saying what to do) if the
//!   buffer holds anything; [`Channel::into_parts`] returns the socket together with what was
//!   buffered. From the first `as_fd`/`as_raw_fd` on, a stream channel reads exactly again, so
//!   that the socket can be shared.
//!
//! [`Builder::seqpacket(false)`]: crate::Builder::seqpacket

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use super::Channel;
use crate::error::{Error, ProtocolError};
use crate::sys;
use crate::wire::MessageBuf;

/// The longest record fdserver writes on a `SOCK_SEQPACKET` pair: the longest array message fits
/// in one.
pub(crate) const RECORD_MAX: usize = 68 << 10;

/// The send buffer each end of a `SOCK_SEQPACKET` pair asks for: room for three or four 64 KiB
/// records in flight (with less, a bulk transfer between two CPUs waits for the reader at every
/// record: 1.9x slower with 124 KiB), and, as the kernel refuses any record longer than the
/// buffer less 32 bytes, the read-ahead buffer's size. Allocated in the parent before the fork;
/// its pages are touched only as data arrives.
pub(crate) const RECORD_BUFFER: usize = 248 << 10;

/// A scalar at least this long goes on a record socket as a header record and data records,
/// so that its reader receives the data straight into its destination.
pub(crate) const SCALAR_ALONE: usize = 4096;

/// What a stream channel reads beyond the message it needs.
pub(crate) const STREAM_AHEAD: usize = 4096;

/// The read-ahead state of a channel.
pub(crate) struct ReadAhead {
    /// `buf[start..]` is buffered (`buf.len()` is the end); its capacity is the most one receive
    /// may put here.
    buf: Vec<u8>,
    start: usize,
    /// Stream position of `buf[start]` (bytes consumed since the channel was created).
    pos: u64,
    /// Descriptors that came with buffered bytes, in stream order.
    fds: Vec<Queued>,
    /// `SOCK_SEQPACKET`: one receive takes one whole record.
    records: bool,
}

/// The descriptors one `recvmsg` brought, and the stream position of the byte they came with.
struct Queued {
    at: u64,
    received: sys::Received,
}

impl ReadAhead {
    /// The state of a channel on a record socket (`records`) or a stream, with a buffer of
    /// `capacity` bytes (not written: its pages are touched only as data arrives).
    pub(crate) fn new(records: bool, capacity: usize) -> Self {
        ReadAhead {
            buf: Vec::with_capacity(capacity),
            start: 0,
            pos: 0,
            fds: Vec::new(),
            records,
        }
    }

    /// Bytes buffered.
    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Descriptors buffered.
    pub(crate) fn fd_count(&self) -> usize {
        self.fds.iter().map(|q| q.received.fd_count()).sum()
    }

    /// Drops the next `n` buffered bytes (and closes the descriptors that came with them).
    fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        self.pos += n as u64;
        let pos = self.pos;
        if self.fds.first().is_some_and(|q| q.at < pos) {
            self.fds.retain(|q| q.at >= pos);
        }
        if self.start == self.buf.len() {
            self.start = 0;
            self.buf.clear();
        }
    }

    /// Everything buffered, for [`Channel::into_parts`].
    pub(crate) fn into_buffered(mut self) -> super::Buffered {
        let bytes = self.buf[self.start..].to_vec();
        let mut fds = Vec::new();
        for q in self.fds.drain(..) {
            let index = (q.at - self.pos) as usize;
            for fd in q.received.fds.into_iter().flatten() {
                fds.push((index, fd));
            }
        }
        super::Buffered { bytes, fds }
    }
}

impl std::fmt::Debug for ReadAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadAhead")
            .field("records", &self.records)
            .field("buffered", &self.len())
            .field("fds", &self.fd_count())
            .finish()
    }
}

/// What one receive of a read-ahead channel brought.
struct Got {
    /// Bytes written into the destination (those beyond went to the buffer).
    into_dst: usize,
    /// Descriptors that came with the last of those bytes (those that came with a buffered byte
    /// are queued instead).
    fds: Option<sys::Received>,
    /// End of stream: nothing was received.
    eof: bool,
}

impl Channel {
    /// Whether this channel reads ahead now. A stream channel whose socket was lent out
    /// (`as_fd`) stops doing so once its buffer is empty (it is, or `as_fd` would have refused);
    /// a record channel cannot (an exact read would cut records).
    pub(super) fn reads_ahead(&mut self) -> bool {
        match &self.ra {
            Some(ra)
                if !ra.records
                    && ra.len() == 0
                    && self.lent.load(std::sync::atomic::Ordering::Relaxed) =>
            {
                self.ra = None;
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// One receive, into `dst` and then into the (empty) read-ahead buffer. `clean`: no byte of
    /// the operation in progress has arrived yet (a failure then leaves the channel in step).
    fn ra_recv(
        &mut self,
        dst: &mut [u8],
        deadline: Option<Instant>,
        clean: bool,
    ) -> Result<Got, Error> {
        let records = self.ra.as_ref().is_some_and(|ra| ra.records);
        debug_assert!(
            self.buffered() == 0,
            "receiving into a non-empty read-ahead buffer"
        );
        // A stream client waiting for a message that is not there yet waits in `poll` first (see
        // the module docs). A record client blocks in `recvmsg`, with a deadline too: the
        // socket's receive time-out (`SO_RCVTIMEO`) is the channel's read time-out, which is
        // what is left of a deadline that starts with this wait. The server loop has polled (with
        // its signal slot) before it reads a request.
        let mut dontwait = self.nonblocking(deadline);
        if clean && records && !self.stop_on_signal && deadline.is_some() && self.recv_timeout_set()
        {
            dontwait = false;
        }
        if clean && !records && !self.stop_on_signal {
            self.on_io_error(
                std::io::Error::from_raw_os_error(libc::EAGAIN),
                deadline,
                libc::POLLIN,
                true,
            )?;
            dontwait = true;
        }
        loop {
            let ra = self.ra.as_mut().expect("read-ahead channel");
            let spare: &mut [MaybeUninit<u8>] = ra.buf.spare_capacity_mut();
            match sys::recv2(self.fd.as_fd(), dst, spare, dontwait) {
                Ok(r) => {
                    if r.n == 0 && records && !sys::peer_done_writing(self.fd.as_fd()) {
                        continue; // an empty record (a raw write of nothing), not the end
                    }
                    return self.ra_received(r, dst.len());
                }
                Err(e) => {
                    self.on_io_error(e, deadline, libc::POLLIN, clean)?;
                    dontwait = true;
                }
            }
        }
    }

    /// Makes the socket's receive time-out (`SO_RCVTIMEO`) the channel's read time-out, unless
    /// it is already (one `setsockopt` when the time-out changes). `false` if it cannot be: the
    /// socket is lent out, or the option failed; the wait is then a `poll`.
    fn recv_timeout_set(&mut self) -> bool {
        use std::sync::atomic::Ordering;
        if self.lent.load(Ordering::Relaxed) {
            return false;
        }
        let Some(t) = self.read_timeout.filter(|t| !t.is_zero()) else {
            return false;
        };
        let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
        if self.rcvtimeo.load(Ordering::Relaxed) == nanos {
            return true;
        }
        if sys::set_recv_timeout(self.fd.as_fd(), Some(t)).is_err() {
            return false;
        }
        self.rcvtimeo.store(nanos, Ordering::Relaxed);
        true
    }

    /// Accounts for what a receive into a destination of `dst_len` bytes, then the (empty)
    /// buffer, brought.
    fn ra_received(&mut self, r: sys::Received, dst_len: usize) -> Result<Got, Error> {
        let n = r.n;
        let ra = self.ra.as_mut().expect("read-ahead channel");
        let into_dst = n.min(dst_len);
        let extra = n - into_dst;
        // SAFETY: the kernel wrote `extra` bytes at the start of the spare capacity (the buffer
        // was empty).
        unsafe { ra.buf.set_len(extra) };
        if r.record_cut {
            self.broken = true;
            return Err(Error::Io(std::io::Error::other(format!(
                "a record longer than the {} bytes a read takes arrived on the channel and the \
                 kernel cut it (its writer raised the socket's send buffer, SO_SNDBUF, above \
                 what fdserver set): bytes were lost, so the connection is closed",
                ra.buf.capacity()
            ))));
        }
        let has_fds = r.fd_count() > 0 || r.truncated;
        if has_fds && extra > 0 {
            // They came with the last byte of this read: a buffered one.
            let at = ra.pos + extra as u64 - 1;
            ra.fds.push(Queued { at, received: r });
            return Ok(Got {
                into_dst,
                fds: None,
                eof: false,
            });
        }
        Ok(Got {
            into_dst,
            fds: has_fds.then_some(r),
            eof: n == 0,
        })
    }

    /// Whether the loop can wait for its next request inside a blocking `recvmsg` (see
    /// `sys::set_idle_socket`): on a record socket only.
    pub(crate) fn can_wait_in_recv(&self) -> bool {
        self.ra.as_ref().is_some_and(|ra| ra.records)
    }

    /// The server loop's wait for its next request, on a record socket with nothing buffered:
    /// one blocking `recvmsg` into the buffer, which a caught signal ends (`Ok(false)`; see
    /// `sys::set_idle_socket`). `Ok(true)`: something arrived, or the end of the stream, which
    /// the next read reports.
    pub(crate) fn wait_in_recv(&mut self) -> Result<bool, Error> {
        debug_assert!(self.can_wait_in_recv() && self.buffered() == 0);
        let ra = self.ra.as_mut().expect("read-ahead channel");
        let spare: &mut [MaybeUninit<u8>] = ra.buf.spare_capacity_mut();
        match sys::recv2(self.fd.as_fd(), &mut [], spare, false) {
            Ok(r) if r.n == 0 => Ok(sys::peer_done_writing(self.fd.as_fd())),
            Ok(r) => {
                let got = self.ra_received(r, 0)?;
                debug_assert!(got.fds.is_none());
                Ok(true)
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => Ok(false),
            Err(e) => self
                .on_io_error(e, None, libc::POLLIN, true)
                .map(|()| false),
        }
    }

    /// [`fill`](Channel::fill) through the read-ahead buffer.
    pub(super) fn ra_fill(
        &mut self,
        dst: &mut [u8],
        deadline: Option<Instant>,
        at_boundary: bool,
    ) -> Result<bool, Error> {
        let mut got = 0;
        while got < dst.len() {
            let ra = self.ra.as_mut().expect("read-ahead channel");
            let buffered = ra.len();
            if buffered > 0 {
                let k = buffered.min(dst.len() - got);
                let end = ra.pos + k as u64;
                if let Some(at) = ra.fds.first().map(|q| q.at).filter(|&at| at < end) {
                    // A descriptor among this message's bytes. On its own at a message boundary
                    // (its `00` byte is where a message should start) the stream is still in
                    // step, as without read-ahead; anywhere else it is not.
                    let at = (at - ra.pos) as usize;
                    let clean = at_boundary && got == 0 && at == 0 && ra.buf[ra.start] == 0;
                    ra.consume(at + 1); // closes the descriptors
                    if !clean {
                        self.broken = true;
                    }
                    return Err(Error::Protocol(ProtocolError::UnexpectedFd));
                }
                dst[got..got + k].copy_from_slice(&ra.buf[ra.start..ra.start + k]);
                ra.consume(k);
                got += k;
                continue;
            }
            if !ra.records && dst.len() - got >= STREAM_AHEAD {
                // A large payload on a stream: straight into its destination, exactly.
                return self.exact_fill(&mut dst[got..], deadline, at_boundary && got == 0);
            }
            let clean = at_boundary && got == 0;
            let r = self.ra_recv(&mut dst[got..], deadline, clean)?;
            if r.eof {
                self.peer_gone = true;
                if clean {
                    return Ok(false);
                }
                self.broken = true;
                return Err(Error::Protocol(ProtocolError::UnexpectedEof));
            }
            if let Some(received) = r.fds {
                // Descriptors with a byte of this message (the last one received).
                let clean = clean && r.into_dst == 1 && dst[got] == 0;
                drop(received); // closes them
                if !clean {
                    self.broken = true;
                }
                return Err(Error::Protocol(ProtocolError::UnexpectedFd));
            }
            got += r.into_dst;
        }
        Ok(true)
    }

    /// [`recv_fd_until`](Channel::recv_fd_until) through the read-ahead buffer.
    pub(super) fn ra_recv_fd(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<OwnedFd>, Error> {
        if self.buffered() == 0 && self.ra_recv(&mut [], deadline, true)?.eof {
            self.peer_gone = true;
            return Ok(None);
        }
        let ra = self.ra.as_mut().expect("read-ahead channel");
        let byte = ra.buf[ra.start];
        let received = match ra.fds.first() {
            Some(q) if q.at == ra.pos => Some(ra.fds.remove(0).received),
            _ => None,
        };
        ra.consume(1);
        let Some(received) = received else {
            // Plain data where the descriptor's byte should be.
            self.broken = true;
            return Err(Error::Protocol(ProtocolError::ExpectedFd));
        };
        if received.truncated || received.fd_count() > 1 {
            return Err(Error::Protocol(ProtocolError::TooManyFds));
        }
        let mut fds = received.fds;
        match fds[0].take() {
            Some(fd) if byte == 0 => Ok(Some(fd)),
            _ => {
                self.broken = true;
                Err(Error::Protocol(ProtocolError::ExpectedFd))
            }
        }
    }

    /// Reads one array frame's body into `body` (`Ok(false)`: end of stream before it). The common
    /// case, a whole frame in the buffer with no descriptor among its bytes, is one copy; anything
    /// else goes the general way ([`ra_fill`](Self::ra_fill)).
    pub(super) fn ra_read_frame(
        &mut self,
        body: &mut Vec<u8>,
        deadline: Option<Instant>,
    ) -> Result<bool, Error> {
        if self.buffered() == 0 {
            let r = self.ra_recv(&mut [], deadline, true)?;
            if r.eof {
                self.peer_gone = true;
                return Ok(false);
            }
        }
        let ra = self.ra.as_mut().expect("read-ahead channel");
        let buffered = &ra.buf[ra.start..];
        if buffered.len() >= 2 {
            let end = 2 + u16::from_be_bytes([buffered[0], buffered[1]]) as usize;
            let fd_inside = ra.fds.first().is_some_and(|q| q.at < ra.pos + end as u64);
            if buffered.len() >= end && !fd_inside {
                body.clear();
                body.extend_from_slice(&buffered[2..end]);
                ra.consume(end);
                return Ok(true);
            }
        }
        let mut hdr = [0u8; 2];
        if !self.ra_fill(&mut hdr, deadline, true)? {
            return Ok(false);
        }
        body.clear();
        body.resize(u16::from_be_bytes(hdr) as usize, 0);
        self.ra_fill(body, deadline, false)?;
        Ok(true)
    }

    /// [`read_reply_frame`](Channel::read_reply_frame) through the read-ahead buffer: the frame,
    /// checked, then (for an `"ok"` reply, when asked) the descriptor's byte. What arrived after
    /// them stays buffered.
    pub(super) fn ra_read_reply_frame(
        &mut self,
        buf: &mut MessageBuf,
        with_fd: bool,
        deadline: Option<Instant>,
    ) -> Result<Option<OwnedFd>, Error> {
        if !self.ra_read_frame(&mut buf.body, deadline)? {
            return Err(Error::Disconnected);
        }
        buf.index().map_err(Error::Protocol)?;
        super::check_reply(buf.message())?;
        if buf.message().name() == crate::wire::OK_SCALAR {
            self.read_spilled_reply(buf)?;
        }
        if !with_fd {
            return Ok(None);
        }
        Ok(Some(self.ra_recv_fd(deadline)?.ok_or(Error::Disconnected)?))
    }
}
