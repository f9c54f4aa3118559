//! The async channel's receive side without I/O: bytes received (with the descriptors that came
//! with them) go in, whole frames come out. The channel's read loop only moves bytes from the
//! socket into [`Incoming::spare`] and calls [`Incoming::received`].
//!
//! It reads ahead: one `recvmsg` takes whatever is there, up to [`ROOM`] bytes, so a reply is
//! usually one system call. Descriptors keep their place: the kernel hands a sent buffer's
//! descriptors to the first `recvmsg` that reads any of its bytes and ends that read with the
//! buffer, and every descriptor fdserver's peers send travels with a buffer of its own (one `00`
//! byte), so a descriptor belongs to the last byte of the read that brought it. It is queued
//! with that byte's stream position and handed out only by the descriptor frame made of that
//! byte; a descriptor anywhere else is a protocol error, as on the blocking channel. [`ROOM`] is
//! larger than any array message plus a descriptor byte, so a descriptor's buffer is never cut.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use crate::error::{Error, ProtocolError};
use crate::wire::MessageBuf;

/// The room every receive is offered: the longest array message (64 KiB body and its header),
/// a descriptor's byte, and slack.
pub(crate) const ROOM: usize = 68 << 10;

/// What was received and not yet taken.
#[derive(Default)]
pub(crate) struct Incoming {
    /// `buf[start..end]` is unread; `buf[end..]` is room (initialised once, reused).
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Stream position of `buf[start]`.
    pos: u64,
    /// Descriptors and the stream position of the byte each came with.
    fds: VecDeque<(u64, OwnedFd)>,
    /// The peer closed its end (a receive returned 0 bytes).
    pub(crate) eof: bool,
}

impl Incoming {
    /// How many unread bytes are held.
    pub(crate) fn available(&self) -> usize {
        self.end - self.start
    }

    /// Whether nothing is held (no byte, no descriptor).
    pub(crate) fn is_empty(&self) -> bool {
        self.available() == 0 && self.fds.is_empty()
    }

    /// Room for the next receive: at least `room` bytes ([`ROOM`] on a stream; on a record
    /// socket, the longest record), after what is held. The caller receives into it and then
    /// calls [`received`](Self::received) with the count. A buffer larger than twice `room` is
    /// given back once empty (after a large scalar went through it).
    pub(crate) fn spare(&mut self, room: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > 2 * room {
                self.buf = Vec::new();
            }
        } else if self.buf.len() - self.end < room && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < room {
            self.buf.resize(self.end + room, 0);
        }
        &mut self.buf[self.end..]
    }

    /// A receive into [`spare`](Self::spare) returned `n` bytes (0: end of stream) and these
    /// descriptors. Call once after each `spare`.
    pub(crate) fn received(&mut self, n: usize, fds: impl IntoIterator<Item = OwnedFd>) {
        self.end += n;
        if n == 0 {
            self.eof = true;
        }
        // The byte the descriptors came with: the read's last (see the module docs). With no
        // byte a descriptor cannot come; if one did, it is queued where nothing claims it, a
        // protocol error at the next take.
        let last = (self.pos + self.available() as u64).saturating_sub(1);
        for fd in fds {
            self.fds.push_back((last, fd));
        }
    }

    /// Starts with what a blocking channel had read ahead (see [`Channel::into_parts`]): its
    /// bytes, and each descriptor at the position of the byte it came with. Call on a new,
    /// empty `Incoming`.
    ///
    /// [`Channel::into_parts`]: crate::Channel::into_parts
    pub(crate) fn seed(&mut self, buffered: crate::channel::Buffered) {
        debug_assert!(self.is_empty() && self.pos == 0);
        let crate::channel::Buffered { bytes, fds } = buffered;
        self.buf = bytes;
        self.start = 0;
        self.end = self.buf.len();
        for (index, fd) in fds {
            self.fds.push_back((index as u64, fd));
        }
    }

    /// The unread bytes.
    fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Marks `n` bytes read. A descriptor queued at one of them and not claimed is a protocol
    /// error (it came where a message was expected); it is closed.
    fn consume(&mut self, n: usize) -> Result<(), Error> {
        self.start += n;
        self.pos += n as u64;
        let mut stray = false;
        while let Some(&(at, _)) = self.fds.front() {
            if at >= self.pos {
                break;
            }
            self.fds.pop_front(); // closes it
            stray = true;
        }
        if stray {
            return Err(Error::Protocol(ProtocolError::UnexpectedFd));
        }
        Ok(())
    }

    /// An array message, if a whole one is held: its body into `out`. `Ok(false)`: not yet.
    pub(crate) fn take_array(&mut self, out: &mut MessageBuf) -> Result<bool, Error> {
        let bytes = self.bytes();
        if bytes.len() < 2 {
            return Ok(false);
        }
        let len = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
        if bytes.len() < 2 + len {
            return Ok(false);
        }
        out.body.clear();
        out.body.extend_from_slice(&bytes[2..2 + len]);
        self.consume(2 + len)?;
        out.index().map_err(Error::Protocol)?;
        Ok(true)
    }

    /// A whole scalar message, if held: its bytes into `out` (replacing them). A length over
    /// `max` is [`Error::ScalarTooLarge`]. Nothing is taken before the whole scalar is here.
    pub(crate) fn take_scalar_into(&mut self, max: u64, out: &mut Vec<u8>) -> Result<bool, Error> {
        let bytes = self.bytes();
        if bytes.len() < 4 {
            return Ok(false);
        }
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as u64;
        if len > max {
            return Err(Error::ScalarTooLarge { len, max });
        }
        let len = len as usize;
        if bytes.len() < 4 + len {
            return Ok(false);
        }
        out.clear();
        out.extend_from_slice(&bytes[4..4 + len]);
        self.consume(4 + len)?;
        Ok(true)
    }

    /// [`take_scalar_into`](Self::take_scalar_into), for `read_until`.
    pub(crate) fn take_scalar(&mut self, max: u64, out: &mut Vec<u8>) -> Result<Option<()>, Error> {
        self.take_scalar_into(max, out)
            .map(|done| done.then_some(()))
    }

    /// A descriptor frame, if held: its `00` byte and the descriptor that came with it.
    /// `Ok(None)`: not yet. Plain data or a byte without its descriptor is
    /// [`ProtocolError::ExpectedFd`].
    pub(crate) fn take_fd(&mut self) -> Result<Option<OwnedFd>, Error> {
        let Some(&byte) = self.bytes().first() else {
            return Ok(None);
        };
        let here = self.pos;
        let fd = match self.fds.front() {
            Some(&(at, _)) if at == here && byte == 0 => self.fds.pop_front().map(|(_, fd)| fd),
            _ => None,
        };
        match fd {
            Some(fd) => {
                self.consume(1)?;
                Ok(Some(fd))
            }
            None => Err(Error::Protocol(ProtocolError::ExpectedFd)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(inc: &mut Incoming, bytes: &[u8], fds: Vec<OwnedFd>) {
        let room = inc.spare(ROOM);
        room[..bytes.len()].copy_from_slice(bytes);
        inc.received(bytes.len(), fds);
    }

    fn devnull() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    #[test]
    fn frames_come_out_whole_whatever_the_pieces() {
        let mut inc = Incoming::default();
        let mut msg = MessageBuf::new();
        // ["ok", "x"] in two pieces, then a scalar "abc", then a descriptor frame.
        feed(&mut inc, &[0, 5, b'o', b'k'], vec![]);
        assert!(!inc.take_array(&mut msg).unwrap());
        feed(&mut inc, &[0, b'x', 0, 0, 0, 0, 3, b'a'], vec![]);
        assert!(inc.take_array(&mut msg).unwrap());
        assert_eq!(msg.message().to_strings().unwrap(), ["ok", "x"]);
        let mut body = Vec::new();
        assert!(!inc.take_scalar_into(10, &mut body).unwrap());
        feed(&mut inc, b"bc", vec![]);
        assert!(inc.take_scalar_into(10, &mut body).unwrap());
        assert_eq!(body, b"abc");
        feed(&mut inc, &[0], vec![devnull()]);
        assert!(inc.take_fd().unwrap().is_some());
        assert!(inc.is_empty());
    }

    #[test]
    fn a_descriptor_belongs_to_the_last_byte_of_its_read() {
        let mut inc = Incoming::default();
        let mut msg = MessageBuf::new();
        // A reply and its descriptor's byte, read together: the descriptor is the byte's.
        feed(&mut inc, &[0, 3, b'o', b'k', 0, 0], vec![devnull()]);
        assert!(inc.take_array(&mut msg).unwrap());
        assert!(inc.take_fd().unwrap().is_some());
        // A descriptor that came with a message's bytes is a protocol error when they are taken.
        feed(&mut inc, &[0, 3, b'o', b'k', 0], vec![devnull()]);
        assert!(matches!(
            inc.take_array(&mut msg),
            Err(Error::Protocol(ProtocolError::UnexpectedFd))
        ));
        // A descriptor byte without its descriptor.
        feed(&mut inc, &[0], vec![]);
        assert!(matches!(
            inc.take_fd(),
            Err(Error::Protocol(ProtocolError::ExpectedFd))
        ));
    }

    #[test]
    fn scalars_over_the_limit_are_refused() {
        let mut inc = Incoming::default();
        feed(&mut inc, &[0, 0, 1, 0], vec![]);
        assert!(matches!(
            inc.take_scalar_into(255, &mut Vec::new()),
            Err(Error::ScalarTooLarge { len: 256, max: 255 })
        ));
    }
}
