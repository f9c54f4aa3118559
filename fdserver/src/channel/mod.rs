//! [`Channel`]: array messages, scalar messages and file descriptors over one connected UNIX
//! socket (`SOCK_STREAM`, or the `SOCK_SEQPACKET` pair `start` creates), byte-compatible with
//! Phusion Passenger's `MessageChannel`.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{BrokenCause, Error, Operation, ProtocolError, RemoteError, RemoteErrorKind};
use crate::sys;
use crate::wire::{self, Message, MessageBuf, OK_SCALAR};

/// Largest write buffer a channel keeps between messages.
const WBUF_KEEP: usize = 1 << 20;

mod read_ahead;

use read_ahead::ReadAhead;
#[cfg(feature = "tokio")]
pub(crate) use read_ahead::{RECORD_BUFFER, RECORD_MAX, SCALAR_ALONE};

/// Default largest scalar [`Channel::read_scalar`] accepts: 64 MiB.
pub const DEFAULT_MAX_SCALAR: u64 = 64 << 20;

/// The limit a client's call reads its own reply with: any scalar the wire can carry (its
/// length is a `u32`). The channel's own limit bounds what arrives unasked; a result is what
/// the call asked for, and must not fail for its size after the handler ran (see
/// [`args`](crate::args#large-results)).
pub(crate) const REPLY_MAX_SCALAR: u64 = u32::MAX as u64;

/// One end of a MessageChannel: a connected UNIX socket (`SOCK_STREAM`; the pair
/// [`Server::start`](crate::Server::start) creates is `SOCK_SEQPACKET` by default, see
/// [`Builder::seqpacket`](crate::Builder::seqpacket)) that carries array messages, scalar
/// messages and file descriptors, in any order both sides agree on.
///
/// On a stream socket, reads never take more bytes from the socket than the message being read
/// still lacks, so descriptors sent between messages are never swallowed, and a socket can be
/// handed on mid-stream. The exceptions read ahead, and refuse to lend or give up their socket
/// while they hold bytes read ahead (see [`as_fd`](Channel::as_fd) and
/// [`into_parts`](Channel::into_parts)): the pair [`Server::start`](crate::Server::start)
/// creates, whose both ends are fdserver's, and any channel on a `SOCK_SEQPACKET` socket, whose
/// records can only be read whole.
///
/// ```
/// use fdserver::Channel;
/// let (mut a, mut b) = Channel::pair()?;
/// a.write_array(["hello", "world !!"])?;
/// assert_eq!(b.read_strings()?, Some(vec!["hello".to_string(), "world !!".to_string()]));
///
/// a.write_scalar(b"\x00any bytes\xff")?;
/// assert_eq!(b.read_scalar()?.as_deref(), Some(&b"\x00any bytes\xff"[..]));
///
/// drop(a);
/// assert_eq!(b.read_array()?, None); // end of stream at a message boundary
/// # Ok::<(), fdserver::Error>(())
/// ```
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    max_scalar: u64,
    broken: bool,
    /// A write stopped part-way through a message: not even a last message can follow.
    /// (`broken` alone may mean only the read direction is out of step.)
    write_broken: bool,
    peer_gone: bool,
    /// Set with `broken` by a call that gave up with its reply still to come; any other break
    /// is mid-message.
    late_reply: Option<Option<String>>,
    /// The channel of a running server loop: every wait also watches for a signal that ends the
    /// loop (see [`sys::wait_loop_socket`]).
    stop_on_signal: bool,
    wbuf: Vec<u8>,
    writes: u64,
    /// The operation in progress, named by a time-out.
    op: Operation,
    /// Bytes and descriptors read ahead: only on the pair `start` creates (see `read_ahead`).
    ra: Option<Box<ReadAhead>>,
    /// The socket was lent out (`as_fd`, `as_raw_fd`): a stream channel reads exactly from
    /// then on.
    lent: AtomicBool,
    /// On a `SOCK_SEQPACKET` socket: the longest record a write may send (see `read_ahead`).
    record_max: Option<usize>,
    /// The receive time-out set on the socket (`SO_RCVTIMEO`, nanoseconds; 0: none), with which
    /// a record channel waits for a message inside `recvmsg` (see `read_ahead`).
    rcvtimeo: AtomicU64,
}

/// What a channel had read from its socket ahead of the messages it returned: returned by
/// [`Channel::into_parts`] together with the socket, so that nothing read is lost when the socket
/// changes hands. Only the channels of the pair [`Server::start`](crate::Server::start) creates
/// and channels on a `SOCK_SEQPACKET` socket read ahead; for every other channel it is always
/// empty.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Buffered {
    /// The bytes, in stream order: what the socket would have returned next.
    pub bytes: Vec<u8>,
    /// The descriptors that arrived with them, each with the index in `bytes` of the byte it was
    /// sent with (a descriptor's own `00` byte in the wire format).
    pub fds: Vec<(usize, OwnedFd)>,
}

impl Buffered {
    /// Whether nothing was buffered.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.fds.is_empty()
    }
}

/// An element that is either a fixed prefix or one of the caller's elements.
enum Elem<'a, T> {
    Fixed(&'a [u8]),
    User(T),
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Elem<'_, T> {
    fn as_ref(&self) -> &[u8] {
        match self {
            Elem::Fixed(b) => b,
            Elem::User(t) => t.as_ref(),
        }
    }
}

impl Channel {
    /// Wraps a connected UNIX socket. On a stream (`SOCK_STREAM`) the channel reads exactly what
    /// each message lacks, never more. On a `SOCK_SEQPACKET` socket, such as the one
    /// [`into_parts`](Self::into_parts) returns from a started server's channel, it reads whole
    /// records, as the channels of the pair [`Server::start`](crate::Server::start) creates do
    /// (see [`is_seqpacket`](Self::is_seqpacket)): a shorter read would lose the rest of a record.
    /// Blocking and non-blocking (`O_NONBLOCK`) sockets both work: a non-blocking one is waited
    /// on with `poll` instead of busy-looping.
    ///
    /// ```
    /// use fdserver::{Channel, Server};
    /// # use fdserver::{Context, Message, RemoteError, ServerHandle};
    /// # struct Echo;
    /// # impl Server for Echo {
    /// #     type Client = ServerHandle;
    /// #     fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
    /// #         ctx.reply(msg.args())?; Ok(())
    /// #     }
    /// # }
    /// let mut server = Echo.start()?;
    /// // Take the (SOCK_SEQPACKET) socket out of the server's channel, and wrap it again.
    /// let taken = std::mem::replace(server.channel(), Channel::pair()?.0);
    /// let (fd, buffered) = taken.into_parts();
    /// assert!(buffered.is_empty());
    /// let mut channel = Channel::new(fd);
    /// assert!(channel.is_seqpacket());
    /// channel.write_array(["echo", "hello"])?;
    /// assert_eq!(channel.read_strings()?, Some(vec!["ok".to_string(), "hello".to_string()]));
    /// # drop(channel);
    /// # server.stop()?;
    /// # Ok::<(), fdserver::Error>(())
    /// ```
    pub fn new(fd: impl Into<OwnedFd>) -> Channel {
        let fd = fd.into();
        if sys::is_seqpacket(fd.as_fd()) {
            Channel::owned(fd, true)
        } else {
            Channel::exact(fd)
        }
    }

    /// A channel that reads exactly what each message lacks (on a stream socket).
    pub(crate) fn exact(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            read_timeout: None,
            write_timeout: None,
            max_scalar: DEFAULT_MAX_SCALAR,
            broken: false,
            write_broken: false,
            peer_gone: false,
            late_reply: None,
            stop_on_signal: false,
            wbuf: Vec::with_capacity(256),
            writes: 0,
            op: Operation::ReadArray,
            ra: None,
            lent: AtomicBool::new(false),
            record_max: None,
            rcvtimeo: AtomicU64::new(0),
        }
    }

    /// The two ends of a pair whose both ends are fdserver's, reading ahead (see `read_ahead`):
    /// `SOCK_SEQPACKET` if `records` and the system allows it, else `SOCK_STREAM`. Their buffers
    /// are allocated here (for a server: in the parent, before the fork).
    pub(crate) fn owned_pair(records: bool) -> io::Result<(Channel, Channel)> {
        let seqpacket = records
            .then(|| sys::seqpacket_pair(read_ahead::RECORD_BUFFER).ok())
            .flatten()
            .filter(|&(_, _, sndbuf)| sndbuf > read_ahead::RECORD_MAX + 32);
        let (a, b, records, capacity) = match seqpacket {
            // The kernel takes records of up to the send buffer less 32 bytes: a reader always
            // offers that much room, and writes records of at most RECORD_MAX.
            Some((a, b, sndbuf)) => (a, b, true, sndbuf),
            None => {
                let (a, b) = sys::socketpair()?;
                (a, b, false, read_ahead::STREAM_AHEAD)
            }
        };
        Ok((
            Channel::reading_ahead(a, records, capacity),
            Channel::reading_ahead(b, records, capacity),
        ))
    }

    /// A channel on one end of such a pair, given back by an `AsyncChannel`, or on any
    /// `SOCK_SEQPACKET` socket, whose records only a reader that takes them whole reads right.
    pub(crate) fn owned(fd: OwnedFd, records: bool) -> Channel {
        let capacity = if records {
            read_ahead::RECORD_BUFFER
        } else {
            read_ahead::STREAM_AHEAD
        };
        Channel::reading_ahead(fd, records, capacity)
    }

    fn reading_ahead(fd: OwnedFd, records: bool, capacity: usize) -> Channel {
        let mut c = Channel::exact(fd);
        c.ra = Some(Box::new(ReadAhead::new(records, capacity)));
        c.record_max = records.then_some(read_ahead::RECORD_MAX);
        c
    }

    /// Whether this channel reads ahead (one of the pair `start` creates, its socket not lent).
    #[cfg(feature = "tokio")]
    pub(crate) fn has_read_ahead(&self) -> bool {
        self.ra.is_some()
    }

    /// Whether the socket is a `SOCK_SEQPACKET` one (the pair `start` creates, where the system
    /// allows it, or a socket of that type given to [`new`](Self::new)): see
    /// [`Builder::seqpacket`](crate::Builder::seqpacket).
    pub fn is_seqpacket(&self) -> bool {
        self.record_max.is_some()
    }

    /// The socket, for the runtime's own use (waits, `shutdown`): unlike [`as_fd`](Self::as_fd),
    /// it neither refuses nor stops the read-ahead.
    pub(crate) fn socket(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// How many bytes this channel has read from its socket ahead of the messages it returned,
    /// and not yet returned (always 0 but on the channels of the pair
    /// [`Server::start`](crate::Server::start) creates and on `SOCK_SEQPACKET` sockets, and there
    /// too between calls unless the peer sent more than was asked for). While it is not 0, [`as_fd`](Self::as_fd) and
    /// [`into_fd`](Self::into_fd) refuse.
    pub fn buffered(&self) -> usize {
        self.ra.as_ref().map_or(0, |ra| ra.len())
    }

    /// Takes back the receive time-out the channel set on its socket (`SO_RCVTIMEO`), before
    /// the socket is lent or given away: others' reads of it must not fail after that long.
    fn clear_recv_timeout(&self) {
        if self.rcvtimeo.swap(0, Ordering::Relaxed) != 0 {
            let _ = sys::set_recv_timeout(self.fd.as_fd(), None);
        }
    }

    /// Panics, saying what to do, if this channel holds bytes read ahead (see
    /// [`buffered`](Self::buffered)).
    fn refuse_if_buffered(&self, what: &str) {
        if let Some(ra) = self.ra.as_ref().filter(|ra| ra.len() > 0) {
            panic!(
                "Channel::{what}: the channel holds {} byte(s) and {} descriptor(s) it read ahead \
                 from its socket, which a reader of the socket would miss; read the messages \
                 they belong to through the channel first (`Channel::buffered` says how much \
                 is held), or take the socket with `Channel::into_parts`, which returns them",
                ra.len(),
                ra.fd_count()
            );
        }
    }

    /// A connected pair of channels (close-on-exec), e.g. to hand one end to another process.
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let (a, b) = sys::socketpair()?;
        Ok((Channel::exact(a), Channel::exact(b)))
    }

    /// Takes ownership of a descriptor inherited from the parent process (for example fd 3 given
    /// to a server binary by a Ruby or C++ program), and marks it close-on-exec.
    ///
    /// # Safety
    /// `fd` must be an open descriptor that nothing else in this process owns or will close;
    /// call this once per descriptor, typically at the start of `main`.
    ///
    /// # Errors
    /// `EBADF` if `fd` is not open.
    pub unsafe fn from_inherited_fd(fd: RawFd) -> io::Result<Channel> {
        if !sys::fd_is_open(fd) {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        // SAFETY: the caller guarantees the descriptor is open and unowned.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        sys::set_cloexec(owned.as_fd())?;
        Ok(Channel::new(owned))
    }

    /// Reserves write-buffer capacity so that writing messages up to `bytes` long allocates nothing.
    pub(crate) fn reserve_write(&mut self, bytes: usize) {
        self.wbuf.reserve(bytes);
    }

    /// Sets a deadline for each read operation (one message, scalar or descriptor), or `None` to
    /// wait forever (the default).
    ///
    /// A read that times out before any byte of its message arrived leaves the channel usable; one
    /// that times out part-way marks it broken.
    pub fn set_read_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
    }

    /// Sets a deadline for each write operation, or `None` to wait forever (the default).
    /// A write that times out part-way marks the channel broken.
    pub fn set_write_timeout(&mut self, timeout: Option<Duration>) {
        self.write_timeout = timeout;
    }

    /// Sets both deadlines.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.read_timeout = timeout;
        self.write_timeout = timeout;
    }

    /// The read deadline in force.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    /// The write deadline in force.
    pub fn write_timeout(&self) -> Option<Duration> {
        self.write_timeout
    }

    /// Sets the largest scalar [`read_scalar`](Self::read_scalar) and
    /// [`read_reply`](Self::read_reply) accept (default 64 MiB). A typed client's call and
    /// [`ServerHandle::call`](crate::ServerHandle::call) read the reply they asked for without
    /// it (see [`args`](crate::args#large-results)).
    pub fn set_max_scalar_size(&mut self, max: u64) {
        self.max_scalar = max;
    }

    /// The largest scalar a read accepts.
    pub fn max_scalar_size(&self) -> u64 {
        self.max_scalar
    }

    /// Whether an earlier error left the channel mid-message; if so every operation fails with
    /// [`Error::Broken`] and the channel should be dropped.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Whether an operation found the peer gone (end of stream, reset, broken pipe).
    pub(crate) fn peer_gone(&self) -> bool {
        self.peer_gone
    }

    /// Marks the channel unusable: a write or read left it mid-message.
    pub(crate) fn mark_broken(&mut self) {
        self.broken = true;
        self.write_broken = true;
    }

    /// Marks the channel unusable because the call `call` timed out with its reply still to
    /// come (unless it was broken already, which says more).
    pub(crate) fn mark_late_reply(&mut self, call: Option<String>) {
        if !self.broken {
            self.late_reply = Some(call);
        }
        self.mark_broken();
    }

    /// The [`Error::Broken`] this channel answers with.
    pub(crate) fn broken_error(&self) -> Error {
        Error::Broken {
            cause: match &self.late_reply {
                Some(call) => BrokenCause::LateReply { call: call.clone() },
                None => BrokenCause::MidMessage,
            },
        }
    }

    /// Writes `error` as the last message on a channel that an earlier error broke, if the write
    /// direction is still in step (the break was on the read side: an oversized scalar, data
    /// where a descriptor was due, a descriptor glued to a frame) and the peer is still there.
    /// The channel stays broken. A server calls this just before it closes the connection, so
    /// that its peer learns why (`["error", kind, text]`) instead of reading a bare end of
    /// stream.
    pub(crate) fn write_last_error(&mut self, error: &RemoteError) -> Result<(), Error> {
        if self.write_broken || self.peer_gone {
            return Err(self.broken_error());
        }
        let was_broken = std::mem::replace(&mut self.broken, false);
        let r = self.write_error(error);
        self.broken |= was_broken;
        r
    }

    /// How many write operations have put at least one byte on the wire (lets a server tell
    /// whether a handler began its reply: a write refused before its first byte does not count).
    pub(crate) fn writes(&self) -> u64 {
        self.writes
    }

    /// Gives back the socket.
    ///
    /// # Panics
    /// If the channel holds bytes it read ahead (only the channels of the pair
    /// [`Server::start`](crate::Server::start) creates and those on a `SOCK_SEQPACKET` socket do,
    /// and only when the peer sent more than was read): they would be lost. Use [`into_parts`](Self::into_parts) to get them too.
    pub fn into_fd(self) -> OwnedFd {
        self.refuse_if_buffered("into_fd");
        self.clear_recv_timeout();
        self.fd
    }

    /// Gives back the socket and whatever the channel read ahead from it (empty but on the
    /// channels of the pair [`Server::start`](crate::Server::start) creates and on
    /// `SOCK_SEQPACKET` sockets): the bytes the socket would have returned next, and their
    /// descriptors. [`Channel::new`] on the socket reads it as this channel did (whole records
    /// on a `SOCK_SEQPACKET` socket); hand a `SOCK_SEQPACKET` socket only to a reader that
    /// takes whole records.
    ///
    /// ```
    /// let (mut a, b) = fdserver::Channel::pair()?;
    /// a.write_array(["hello"])?;
    /// let (fd, buffered) = b.into_parts();
    /// assert!(buffered.is_empty()); // a plain channel never reads ahead
    /// let mut b = fdserver::Channel::new(fd);
    /// assert_eq!(b.read_strings()?, Some(vec!["hello".to_string()]));
    /// # Ok::<(), fdserver::Error>(())
    /// ```
    pub fn into_parts(mut self) -> (OwnedFd, Buffered) {
        self.clear_recv_timeout();
        let buffered = self
            .ra
            .take()
            .map(|ra| ra.into_buffered())
            .unwrap_or_default();
        (self.fd, buffered)
    }

    fn check(&self) -> Result<(), Error> {
        if self.broken {
            Err(self.broken_error())
        } else {
            Ok(())
        }
    }

    /// Makes this the channel of a running server loop (`true`) or an ordinary one: see
    /// [`sys::wait_loop_socket`]. Its socket must be the one the loop waits on.
    pub(crate) fn set_stop_on_signal(&mut self, on: bool) {
        self.stop_on_signal = on;
    }

    /// Whether system calls must not block: with a deadline or on a loop's channel, every wait
    /// is a `poll` (never a blocking `recvmsg`/`sendmsg`, which SA_RESTART would resume).
    fn nonblocking(&self, deadline: Option<Instant>) -> bool {
        deadline.is_some() || self.stop_on_signal
    }

    fn read_deadline(&self) -> Option<Instant> {
        self.read_timeout.map(|t| Instant::now() + t)
    }

    fn write_deadline(&self) -> Option<Instant> {
        self.write_timeout.map(|t| Instant::now() + t)
    }

    // ----------------------------------------------------------------------------------------
    // Raw reading and writing
    // ----------------------------------------------------------------------------------------

    /// Fills `buf` completely. `Ok(false)`: clean end of stream before the first byte, allowed only
    /// when `at_boundary` (this is the first read of a message).
    fn fill(
        &mut self,
        buf: &mut [u8],
        deadline: Option<Instant>,
        at_boundary: bool,
    ) -> Result<bool, Error> {
        if self.reads_ahead() {
            self.ra_fill(buf, deadline, at_boundary)
        } else {
            self.exact_fill(buf, deadline, at_boundary)
        }
    }

    /// [`fill`](Self::fill), never reading past `buf`.
    fn exact_fill(
        &mut self,
        buf: &mut [u8],
        deadline: Option<Instant>,
        at_boundary: bool,
    ) -> Result<bool, Error> {
        let mut got = 0;
        while got < buf.len() {
            match sys::recv(self.fd.as_fd(), &mut buf[got..], self.nonblocking(deadline)) {
                Ok(r) => {
                    if r.fd_count() > 0 || r.truncated {
                        let clean = at_boundary && got == 0 && r.n == 1 && buf[0] == 0;
                        drop(r); // closes every descriptor that arrived
                        if !clean {
                            self.broken = true;
                        }
                        return Err(Error::Protocol(ProtocolError::UnexpectedFd));
                    }
                    if r.n == 0 {
                        self.peer_gone = true;
                        if got == 0 && at_boundary {
                            return Ok(false);
                        }
                        self.broken = true;
                        return Err(Error::Protocol(ProtocolError::UnexpectedEof));
                    }
                    got += r.n;
                }
                Err(e) => self.on_io_error(e, deadline, libc::POLLIN, got == 0 && at_boundary)?,
            }
        }
        Ok(true)
    }

    /// Decides what a failed syscall means: retry (`Ok`), or a final error. `clean` says whether
    /// the operation has not yet moved any byte (so that failing leaves the channel in sync).
    fn on_io_error(
        &mut self,
        e: io::Error,
        deadline: Option<Instant>,
        events: libc::c_short,
        clean: bool,
    ) -> Result<(), Error> {
        match e.raw_os_error() {
            Some(libc::EINTR) => Ok(()),
            Some(libc::EAGAIN) => {
                let wake = if self.stop_on_signal {
                    sys::wait_loop_socket(events, deadline)?
                } else if sys::wait_fd(self.fd.as_fd(), events, deadline)? {
                    sys::Wake::Ready
                } else {
                    sys::Wake::TimedOut
                };
                let err = match wake {
                    sys::Wake::Ready => return Ok(()),
                    sys::Wake::TimedOut => {
                        let timeout = if events == libc::POLLIN {
                            self.read_timeout
                        } else {
                            self.write_timeout
                        };
                        Error::timed_out(self.op, timeout.unwrap_or_default())
                    }
                    // The loop is ending: whatever was half read or half written is abandoned.
                    sys::Wake::Stop(sig) => Error::Io(io::Error::new(
                        io::ErrorKind::Interrupted,
                        match sig {
                            libc::SIGTERM => "SIGTERM arrived: the server loop is ending",
                            libc::SIGINT => "SIGINT arrived: the server loop is ending",
                            _ => "a terminating signal arrived: the server loop is ending",
                        },
                    )),
                };
                if !clean {
                    self.broken = true;
                    self.write_broken |= events == libc::POLLOUT;
                }
                Err(err)
            }
            Some(libc::ECONNRESET) | Some(libc::EPIPE) if events == libc::POLLIN => {
                // A reset reads as end of stream, like Passenger.
                self.broken = true;
                self.peer_gone = true;
                if clean {
                    Err(Error::Disconnected)
                } else {
                    Err(Error::Protocol(ProtocolError::UnexpectedEof))
                }
            }
            Some(libc::ECONNRESET) | Some(libc::EPIPE) => {
                self.broken = true;
                self.peer_gone = true;
                Err(Error::Disconnected)
            }
            _ => {
                if !clean {
                    self.broken = true;
                    self.write_broken |= events == libc::POLLOUT;
                }
                Err(Error::Io(e))
            }
        }
    }

    /// Writes all of `iov`, optionally attaching one descriptor to the first byte.
    fn send_all(
        &mut self,
        iov: &mut [IoSlice<'_>],
        mut fd: Option<BorrowedFd<'_>>,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let mut iov = iov;
        let mut sent_any = false;
        while !iov.is_empty() {
            // On a record socket, no record longer than the kernel accepts.
            let mut part = [IoSlice::new(&[]); 4];
            let iov_now: &[IoSlice<'_>] = match self.record_max {
                Some(max) if iov.len() > part.len() || total_len(iov) > max => {
                    let mut room = max;
                    let mut k = 0;
                    for s in iov.iter().take(part.len()) {
                        if room == 0 {
                            break;
                        }
                        let take = s.len().min(room);
                        part[k] = IoSlice::new(&s[..take]);
                        room -= take;
                        k += 1;
                    }
                    &part[..k]
                }
                _ => iov,
            };
            match sys::send(self.fd.as_fd(), iov_now, fd, self.nonblocking(deadline)) {
                Ok(n) => {
                    if n > 0 {
                        if !sent_any {
                            self.writes += 1;
                        }
                        sent_any = true;
                        fd = None; // the descriptor went with the first byte
                    }
                    IoSlice::advance_slices(&mut iov, n);
                }
                Err(e) => self.on_io_error(e, deadline, libc::POLLOUT, !sent_any)?,
            }
        }
        Ok(())
    }

    // ----------------------------------------------------------------------------------------
    // Array messages
    // ----------------------------------------------------------------------------------------

    /// Writes an array message. An element containing NUL, or a body over 65535 bytes, is an
    /// error and nothing is written.
    ///
    /// ```
    /// # let (mut a, mut b) = fdserver::Channel::pair()?;
    /// a.write_array(["hello", "Joe", "Dalton"])?;
    /// a.write_array(&[b"bytes\xff".as_slice()])?;
    /// assert!(matches!(a.write_array(["a\0b"]), Err(fdserver::Error::ElementContainsNul { index: 0 })));
    /// # Ok::<(), fdserver::Error>(())
    /// ```
    pub fn write_array<I, T>(&mut self, elements: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.write_array_prefixed(None, elements)
    }

    /// Writes `[prefix, elements...]` without collecting the elements first.
    pub(crate) fn write_array_prefixed<I, T>(
        &mut self,
        prefix: Option<&[u8]>,
        elements: I,
    ) -> Result<(), Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.encode_and_send(prefix, elements, None)
    }

    /// [`write_array`](Self::write_array) then [`send_fd`](Self::send_fd), in one `sendmmsg` (as
    /// [`write_ok_with_fd`](Self::write_ok_with_fd)).
    pub(crate) fn write_array_with_fd<I, T>(
        &mut self,
        elements: I,
        fd: impl AsFd,
    ) -> Result<(), Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.encode_and_send(None, elements, Some(fd.as_fd()))
    }

    /// Encodes `[prefix, elements...]` into the write buffer (nothing is sent if that fails) and
    /// sends it, followed by `fd` in the same `sendmmsg` when given.
    fn encode_and_send<I, T>(
        &mut self,
        prefix: Option<&[u8]>,
        elements: I,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.check()?;
        self.op = Operation::WriteArray;
        let mut buf = std::mem::take(&mut self.wbuf);
        buf.clear();
        let all = prefix
            .into_iter()
            .map(Elem::Fixed)
            .chain(elements.into_iter().map(Elem::User));
        // A success reply never fails for its size: past 64 KiB it goes as a scalar.
        let encoded = if prefix == Some(b"ok") {
            wire::encode_reply(&mut buf, all)
        } else {
            wire::encode_array(&mut buf, all)
        };
        let result = encoded.and_then(|()| {
            let deadline = self.write_deadline();
            match fd {
                None => self.send_all(&mut [IoSlice::new(&buf)], None, deadline),
                Some(fd) => self.send_frame_then_fd(&buf, fd, deadline),
            }
        });
        if buf.capacity() > WBUF_KEEP {
            // After a large reply: do not keep its memory for the rest of the connection.
            buf = Vec::with_capacity(256);
        }
        self.wbuf = buf;
        result.map_err(|e| match e {
            // Report the caller's element index, not ours.
            Error::ElementContainsNul { index } if prefix.is_some() => {
                Error::ElementContainsNul { index: index - 1 }
            }
            other => other,
        })
    }

    /// Reads one array message into `buf`, allocating nothing once `buf` has grown to fit.
    /// `Ok(false)` is a clean end of stream at a message boundary.
    ///
    /// A body that does not end in NUL, or a descriptor where a message was expected, is a
    /// [`ProtocolError`]; the channel stays usable (the whole frame was consumed).
    pub fn read_into(&mut self, buf: &mut MessageBuf) -> Result<bool, Error> {
        self.check()?;
        self.op = Operation::ReadArray;
        let deadline = self.read_deadline();
        if self.reads_ahead() {
            if !self.ra_read_frame(&mut buf.body, deadline)? {
                return Ok(false);
            }
            buf.index()?;
            return Ok(true);
        }
        let mut hdr = [0u8; 2];
        if !self.fill(&mut hdr, deadline, true)? {
            return Ok(false);
        }
        let len = u16::from_be_bytes(hdr) as usize;
        buf.body.clear();
        buf.body.resize(len, 0);
        self.fill(&mut buf.body, deadline, false)?;
        buf.index()?;
        Ok(true)
    }

    /// Reads one array message as owned byte strings; `None` at end of stream.
    pub fn read_array(&mut self) -> Result<Option<Vec<Vec<u8>>>, Error> {
        let mut buf = MessageBuf::new();
        Ok(self.read_into(&mut buf)?.then(|| buf.message().to_vec()))
    }

    /// Reads one array message as strings, naming the first element that is not valid UTF-8;
    /// `None` at end of stream.
    pub fn read_strings(&mut self) -> Result<Option<Vec<String>>, Error> {
        let mut buf = MessageBuf::new();
        if !self.read_into(&mut buf)? {
            return Ok(None);
        }
        buf.message().to_strings().map(Some)
    }

    // ----------------------------------------------------------------------------------------
    // Replies (the fdserver convention on top of array messages)
    // ----------------------------------------------------------------------------------------

    /// Writes a success reply: `["ok", values...]`. One whose body exceeds 65535 bytes is sent
    /// as `["ok_scalar"]` followed by a scalar holding the same body (see [`wire::OK_SCALAR`]),
    /// which [`read_reply`](Self::read_reply) reads back as `["ok", values...]`: a reply never
    /// fails for its size.
    pub fn write_ok<I, T>(&mut self, values: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.write_array_prefixed(Some(b"ok"), values)
    }

    /// Writes the success reply `["ok", values...]` followed by one file descriptor, in one
    /// system call (`sendmmsg` of the frame and the descriptor's own `00` byte). On the wire it is
    /// exactly [`write_ok`](Self::write_ok) then [`send_fd`](Self::send_fd).
    ///
    /// ```
    /// # let (mut server, mut client) = fdserver::Channel::pair()?;
    /// let file = std::fs::File::open("/dev/null")?;
    /// server.write_ok_with_fd(["opened"], &file)?;
    /// let mut buf = fdserver::MessageBuf::new();
    /// assert_eq!(client.read_reply(&mut buf)?.to_strings()?, ["ok", "opened"]);
    /// assert!(client.recv_fd()?.is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write_ok_with_fd<I, T>(&mut self, values: I, fd: impl AsFd) -> Result<(), Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.encode_and_send(Some(b"ok"), values, Some(fd.as_fd()))
    }

    /// A frame and a descriptor in one `sendmmsg`; finishes with plain sends if the socket took
    /// only part of it. On a record socket, one record: the frame and the descriptor's `00` byte,
    /// which the descriptor comes with (as it does when sent on its own).
    fn send_frame_then_fd(
        &mut self,
        frame: &[u8],
        fd: BorrowedFd<'_>,
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        if let Some(max) = self.record_max {
            if frame.len() < max {
                return self.send_all(
                    &mut [IoSlice::new(frame), IoSlice::new(&[0])],
                    Some(fd),
                    deadline,
                );
            }
            // A frame longer than a record (an `ok_scalar` reply): its records, then the
            // descriptor's own.
            self.send_all(&mut [IoSlice::new(frame)], None, deadline)?;
            self.op = Operation::SendFd;
            let sent_fd = self.send_all(&mut [IoSlice::new(&[0])], Some(fd), deadline);
            if sent_fd.is_err() {
                // The reply went out without its descriptor.
                self.broken = true;
                self.write_broken = true;
            }
            return sent_fd;
        }
        loop {
            match sys::send_frame_then_fd(self.fd.as_fd(), frame, fd, self.nonblocking(deadline)) {
                Ok((_, true)) => {
                    self.writes += 1;
                    return Ok(());
                }
                Ok((sent, false)) => {
                    if sent > 0 {
                        self.writes += 1;
                    }
                    let rest = self.send_all(&mut [IoSlice::new(&frame[sent..])], None, deadline);
                    if rest.is_err() && sent > 0 {
                        self.broken = true;
                        self.write_broken = true;
                    }
                    rest?;
                    self.op = Operation::SendFd;
                    let sent_fd = self.send_all(&mut [IoSlice::new(&[0])], Some(fd), deadline);
                    if sent_fd.is_err() {
                        // The reply went out without its descriptor.
                        self.broken = true;
                        self.write_broken = true;
                    }
                    return sent_fd;
                }
                Err(e) => self.on_io_error(e, deadline, libc::POLLOUT, true)?,
            }
        }
    }

    /// Writes an error reply: `["error", kind, message, details...]` (see [`RemoteError`]). NUL
    /// bytes are replaced (by U+FFFD) and an over-long kind (1000 bytes) or message (60 000) is
    /// cut, so that the reply itself cannot fail to encode; details that would not fit next to
    /// the message are left out.
    pub fn write_error(&mut self, error: &RemoteError) -> Result<(), Error> {
        const MAX_TEXT: usize = 60_000;
        const MAX_KIND: usize = 1_000;
        let mut msg = error.message().replace('\0', "\u{FFFD}");
        if msg.len() > MAX_TEXT {
            let mut cut = MAX_TEXT;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
        }
        let mut kind = error.kind().as_str().replace('\0', "\u{FFFD}");
        if kind.len() > MAX_KIND {
            let mut cut = MAX_KIND;
            while !kind.is_char_boundary(cut) {
                cut -= 1;
            }
            kind.truncate(cut);
        }
        let clean = |d: &Vec<u8>| -> Vec<u8> {
            if d.contains(&0) {
                let mut out = Vec::with_capacity(d.len() + 2);
                for &b in d {
                    if b == 0 {
                        out.extend_from_slice("\u{FFFD}".as_bytes());
                    } else {
                        out.push(b);
                    }
                }
                out
            } else {
                d.clone()
            }
        };
        let details: Vec<Vec<u8>> = error.details().iter().map(clean).collect();
        let room = wire::MAX_BODY.saturating_sub(b"error".len() + kind.len() + msg.len() + 3);
        let need: usize = details.iter().map(|d| d.len() + 1).sum();
        let details = if need <= room { &details[..] } else { &[] };
        self.write_array(
            [&b"error"[..], kind.as_bytes(), msg.as_bytes()]
                .into_iter()
                .chain(details.iter().map(Vec::as_slice)),
        )
    }

    /// Reads a reply into `buf`: `Ok(message)` for `["ok", values...]` (element 0 is `"ok"`; a
    /// reply too large for an array message, `["ok_scalar"]` and its scalar, reads the same),
    /// [`Error::Remote`] for `["error", kind, message]`, [`Error::Disconnected`] at end of stream.
    ///
    /// The first read asks for the five bytes of the shortest reply there is, `["ok"]`
    /// (`00 03 6F 6B 00`; an error reply is longer): such a reply arrives in one `recvmsg`, and no
    /// valid reply is ever read past. A frame shorter than that is not a reply; if bytes after
    /// it were taken with it, the channel is broken. (A channel of the pair
    /// [`Server::start`](crate::Server::start) creates reads a whole reply in one `recvmsg`, and
    /// keeps what follows it for the next read.)
    pub fn read_reply<'b>(&mut self, buf: &'b mut MessageBuf) -> Result<Message<'b>, Error> {
        self.read_reply_frame(buf, false)?;
        Ok(buf.message())
    }

    /// Reads a reply that carries one file descriptor after it (what
    /// [`write_ok_with_fd`](Self::write_ok_with_fd) sends, or [`write_ok`](Self::write_ok) then
    /// [`send_fd`](Self::send_fd)): the same as [`read_reply`](Self::read_reply) then
    /// [`recv_fd`](Self::recv_fd), in one system call fewer when the descriptor has already
    /// arrived, because the body and the descriptor's byte are read together.
    ///
    /// It still never reads past what belongs to this reply: the body, and the one byte that
    /// must follow it only once the body is known to be an `"ok"` reply. An `["error", ...]`
    /// reply is returned as [`Error::Remote`] with nothing more read, and the channel stays
    /// usable. Plain data where the descriptor's byte must be, or a descriptor anywhere but with
    /// that byte, is a [`ProtocolError`] and breaks the channel; descriptors that arrived
    /// elsewhere are closed. One read timeout covers the reply and its descriptor.
    ///
    /// ```
    /// # let (mut server, mut client) = fdserver::Channel::pair()?;
    /// let file = std::fs::File::open("/dev/null")?;
    /// server.write_ok_with_fd(["opened"], &file)?;
    /// let mut buf = fdserver::MessageBuf::new();
    /// let (reply, fd) = client.read_reply_with_fd(&mut buf)?;
    /// assert_eq!(reply.to_strings()?, ["ok", "opened"]);
    /// # drop(fd);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn read_reply_with_fd<'b>(
        &mut self,
        buf: &'b mut MessageBuf,
    ) -> Result<(Message<'b>, OwnedFd), Error> {
        let fd = self.read_reply_frame(buf, true)?;
        Ok((
            buf.message(),
            fd.expect("read_reply_frame returns the descriptor it was asked for"),
        ))
    }

    /// Reads a reply into `buf` and checks it (`["ok", ...]`, else the error it carries); with
    /// `with_fd`, also the descriptor that must follow an `"ok"` reply, returned.
    ///
    /// Reads never go past what belongs to the reply. The first asks for the shortest reply
    /// there is, `["ok"]` (5 bytes), plus its descriptor's byte when one is expected (every other
    /// reply, errors included, is at least that long by itself); then exactly the rest of the
    /// body, and the descriptor's byte together with the body's end when it is already there. The
    /// kernel ends a stream read right after the piece that carried descriptors, so ours can only
    /// come with that last byte: any other descriptor is a protocol error, and is closed.
    fn read_reply_frame(
        &mut self,
        buf: &mut MessageBuf,
        with_fd: bool,
    ) -> Result<Option<OwnedFd>, Error> {
        const SHORTEST: usize = 5; // 00 03 'o' 'k' 00
        self.check()?;
        self.op = Operation::ReadReply;
        let deadline = self.read_deadline();
        if self.reads_ahead() {
            return self.ra_read_reply_frame(buf, with_fd, deadline);
        }
        let extra = usize::from(with_fd);
        let want = SHORTEST + extra;
        let mut head = [0u8; SHORTEST + 1];
        let mut got = 0;
        let mut fd = None;
        while got < 2 {
            match sys::recv(
                self.fd.as_fd(),
                &mut head[got..want],
                self.nonblocking(deadline),
            ) {
                Ok(mut r) => {
                    if r.n == 0 {
                        self.peer_gone = true;
                        if got == 0 {
                            return Err(Error::Disconnected);
                        }
                        self.broken = true;
                        return Err(Error::Protocol(ProtocolError::UnexpectedEof));
                    }
                    let first = got == 0;
                    got += r.n;
                    if r.fd_count() > 0 || r.truncated {
                        let ours = with_fd
                            && got == want
                            && head[..2] == [0, 3]
                            && head[SHORTEST] == 0
                            && r.fd_count() == 1
                            && !r.truncated;
                        if !ours {
                            // A descriptor on its own at a message boundary leaves the stream in
                            // step (as in `fill`); anything else does not.
                            let clean = first && r.n == 1 && head[0] == 0;
                            drop(r); // closes every descriptor that arrived
                            if !clean {
                                self.broken = true;
                            }
                            return Err(Error::Protocol(ProtocolError::UnexpectedFd));
                        }
                        fd = r.fds[0].take();
                    }
                }
                Err(e) => self.on_io_error(e, deadline, libc::POLLIN, got == 0)?,
            }
        }
        let len = u16::from_be_bytes([head[0], head[1]]) as usize;
        buf.body.clear();
        buf.body.resize(len + extra, 0);
        let early = (got - 2).min(len + extra);
        buf.body[..early].copy_from_slice(&head[2..2 + early]);
        // More than the frame (and its descriptor's byte) was taken only if the frame is shorter
        // than any reply: those bytes belonged to the next message.
        let overrun = got - 2 > len + extra;
        let mut body_got = early;
        while body_got < len {
            // The descriptor's byte is asked for only after a body known to start with "ok":
            // nothing follows an error reply, and a byte after one would not be ours.
            let limit = if with_fd && body_got >= 3 && buf.body[..3] == *b"ok\0" {
                len + 1
            } else {
                len
            };
            match sys::recv(
                self.fd.as_fd(),
                &mut buf.body[body_got..limit],
                self.nonblocking(deadline),
            ) {
                Ok(mut r) => {
                    if r.n == 0 {
                        self.peer_gone = true;
                        self.broken = true;
                        return Err(Error::Protocol(ProtocolError::UnexpectedEof));
                    }
                    body_got += r.n;
                    if r.fd_count() > 0 || r.truncated {
                        let ours = with_fd
                            && body_got == len + 1
                            && buf.body[len] == 0
                            && r.fd_count() == 1
                            && !r.truncated;
                        if !ours {
                            drop(r); // closes every descriptor that arrived
                            self.broken = true;
                            return Err(Error::Protocol(ProtocolError::UnexpectedFd));
                        }
                        fd = r.fds[0].take();
                    }
                }
                Err(e) => self.on_io_error(e, deadline, libc::POLLIN, false)?,
            }
        }
        let fd_byte_read = body_got > len;
        buf.body.truncate(len);
        if overrun {
            self.broken = true;
        }
        let checked = buf
            .index()
            .map_err(Error::Protocol)
            .and_then(|()| check_reply(buf.message()));
        if let Err(e) = checked {
            if fd_byte_read {
                self.broken = true; // not an "ok" reply, yet a byte after it was taken
            }
            return Err(e);
        }
        if overrun {
            return Err(Error::Protocol(ProtocolError::BadReply(
                "a reply frame shorter than any reply".into(),
            )));
        }
        if buf.message().name() == OK_SCALAR {
            self.read_spilled_reply(buf)?;
        }
        if !with_fd {
            return Ok(None);
        }
        match fd {
            Some(fd) => Ok(Some(fd)),
            None if fd_byte_read => {
                self.broken = true; // plain data where the descriptor's byte should be
                Err(Error::Protocol(ProtocolError::ExpectedFd))
            }
            None => Ok(Some(
                self.recv_fd_until(deadline)?.ok_or(Error::Disconnected)?,
            )),
        }
    }

    /// After `["ok_scalar"]`: reads the scalar holding the reply's body into `buf` (see
    /// [`wire::OK_SCALAR`]), so that it reads as the `["ok", ...]` reply it stands for.
    fn read_spilled_reply(&mut self, buf: &mut MessageBuf) -> Result<(), Error> {
        if !self.read_scalar_into(&mut buf.body)? {
            self.broken = true;
            return Err(Error::Protocol(ProtocolError::UnexpectedEof));
        }
        self.op = Operation::ReadReply;
        buf.index().map_err(Error::Protocol)?;
        if buf.message().name() != b"ok" {
            return Err(Error::Protocol(ProtocolError::BadReply(
                "the scalar after \"ok_scalar\" does not hold an \"ok\" reply".into(),
            )));
        }
        Ok(())
    }

    // ----------------------------------------------------------------------------------------
    // Scalar messages
    // ----------------------------------------------------------------------------------------

    /// Writes a scalar message: a `u32` big-endian length and the bytes, in one `sendmsg`
    /// without copying them.
    pub fn write_scalar(&mut self, data: &[u8]) -> Result<(), Error> {
        self.check()?;
        self.op = Operation::WriteScalar;
        let hdr = wire::scalar_header(data.len())?;
        let deadline = self.write_deadline();
        if self.record_max.is_some() && data.len() >= read_ahead::SCALAR_ALONE {
            return self.send_scalar_records(&hdr, data, deadline);
        }
        self.send_all(
            &mut [IoSlice::new(&hdr), IoSlice::new(data)],
            None,
            deadline,
        )
    }

    /// A large scalar on a record socket: its header as a record of its own, then the bytes in
    /// records, all in as few `sendmmsg` as the socket takes. A reader then receives the bytes
    /// straight into their destination (it knows their length from the header), where a header
    /// sharing their record would land them in its read-ahead buffer first.
    fn send_scalar_records(
        &mut self,
        hdr: &[u8; 4],
        data: &[u8],
        deadline: Option<Instant>,
    ) -> Result<(), Error> {
        let max = self.record_max.expect("a record socket");
        let mut header_pending = true;
        let mut at = 0;
        let mut sent_any = false;
        while header_pending || at < data.len() {
            let mut records = [IoSlice::new(&[]); 8];
            let mut n = 0;
            if header_pending {
                records[0] = IoSlice::new(hdr);
                n = 1;
            }
            let mut next = at;
            while n < records.len() && next < data.len() {
                let end = data.len().min(next + max);
                records[n] = IoSlice::new(&data[next..end]);
                next = end;
                n += 1;
            }
            match sys::send_records(self.fd.as_fd(), &records[..n], self.nonblocking(deadline)) {
                Ok(0) => {
                    let e = io::Error::from_raw_os_error(libc::EAGAIN);
                    self.on_io_error(e, deadline, libc::POLLOUT, !sent_any)?;
                }
                Ok(k) => {
                    if !sent_any {
                        self.writes += 1;
                        sent_any = true;
                    }
                    let had_header = header_pending;
                    for (i, r) in records[..k].iter().enumerate() {
                        if i == 0 && had_header {
                            header_pending = false;
                        } else {
                            at += r.len();
                        }
                    }
                }
                Err(e) => self.on_io_error(e, deadline, libc::POLLOUT, !sent_any)?,
            }
        }
        Ok(())
    }

    /// Reads a scalar message; `None` at end of stream. A length above the limit
    /// ([`set_max_scalar_size`](Self::set_max_scalar_size)) is [`Error::ScalarTooLarge`] and
    /// breaks the channel.
    pub fn read_scalar(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let mut out = Vec::new();
        Ok(self.read_scalar_into(&mut out)?.then_some(out))
    }

    /// Reads a scalar message into `out` (replacing its contents); `Ok(false)` at end of stream.
    /// Memory grows with the bytes that actually arrive, never with the announced length alone.
    pub fn read_scalar_into(&mut self, out: &mut Vec<u8>) -> Result<bool, Error> {
        self.check()?;
        self.op = Operation::ReadScalar;
        let deadline = self.read_deadline();
        let mut hdr = [0u8; 4];
        if !self.fill(&mut hdr, deadline, true)? {
            return Ok(false);
        }
        let len = u32::from_be_bytes(hdr) as u64;
        if len > self.max_scalar {
            self.broken = true;
            return Err(Error::ScalarTooLarge {
                len,
                max: self.max_scalar,
            });
        }
        let len = len as usize;
        let mut filled = 0;
        while filled < len {
            let want = len.min(filled.saturating_mul(2).max(1 << 16));
            if out.len() < want {
                out.resize(want, 0);
            }
            self.fill(&mut out[filled..want], deadline, false)?;
            filled = want;
        }
        out.truncate(len);
        Ok(true)
    }

    // ----------------------------------------------------------------------------------------
    // File descriptors
    // ----------------------------------------------------------------------------------------

    /// Sends one file descriptor (`File`, `UnixStream`, a pipe end, a socket...): one data byte
    /// `00` with an `SCM_RIGHTS` control message. The caller keeps its own copy.
    ///
    /// ```
    /// use std::io::{Read, Write};
    /// use std::os::unix::net::UnixStream;
    /// let (mut a, mut b) = fdserver::Channel::pair()?;
    /// let (mut mine, theirs) = UnixStream::pair()?;
    /// a.send_fd(&theirs)?;
    /// drop(theirs);
    /// let mut got = UnixStream::from(b.recv_fd()?.expect("a descriptor"));
    /// got.write_all(b"hi")?;
    /// let mut buf = [0; 2];
    /// mine.read_exact(&mut buf)?;
    /// assert_eq!(&buf, b"hi");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_fd(&mut self, fd: impl AsFd) -> Result<(), Error> {
        self.check()?;
        self.op = Operation::SendFd;
        let deadline = self.write_deadline();
        self.send_all(&mut [IoSlice::new(&[0])], Some(fd.as_fd()), deadline)
    }

    /// Receives one file descriptor (close-on-exec); `None` at end of stream.
    ///
    /// More than one descriptor, or a truncated control message, is
    /// [`ProtocolError::TooManyFds`]: every descriptor that arrived is closed. Plain data where a
    /// descriptor was expected is [`ProtocolError::ExpectedFd`] and breaks the channel.
    pub fn recv_fd(&mut self) -> Result<Option<OwnedFd>, Error> {
        self.op = Operation::ReceiveFd;
        let deadline = self.read_deadline();
        self.recv_fd_until(deadline)
    }

    /// [`recv_fd`](Self::recv_fd) with a deadline already running (that of the reply it
    /// follows).
    fn recv_fd_until(&mut self, deadline: Option<Instant>) -> Result<Option<OwnedFd>, Error> {
        self.check()?;
        if self.reads_ahead() {
            return self.ra_recv_fd(deadline);
        }
        loop {
            let mut byte = [0u8; 1];
            match sys::recv(self.fd.as_fd(), &mut byte, self.nonblocking(deadline)) {
                Ok(r) => {
                    if r.n == 0 {
                        self.peer_gone = true;
                        return Ok(None);
                    }
                    if r.truncated || r.fd_count() > 1 {
                        return Err(Error::Protocol(ProtocolError::TooManyFds));
                    }
                    let mut fds = r.fds;
                    return match fds[0].take() {
                        Some(fd) if byte[0] == 0 => Ok(Some(fd)),
                        _ => {
                            // Plain data: we just ate a byte of some other message.
                            self.broken = true;
                            Err(Error::Protocol(ProtocolError::ExpectedFd))
                        }
                    };
                }
                Err(e) => self.on_io_error(e, deadline, libc::POLLIN, true)?,
            }
        }
    }
}

fn total_len(iov: &[IoSlice<'_>]) -> usize {
    iov.iter().map(|s| s.len()).sum()
}

/// `Ok` for an `["ok", ...]` reply (and the `["ok_scalar"]` announcement of a large one),
/// [`Error::Remote`] for `["error", kind, message, details...]`, a protocol error for anything
/// else.
pub(crate) fn check_reply(msg: Message<'_>) -> Result<(), Error> {
    match msg.name() {
        b"ok" | OK_SCALAR => Ok(()),
        b"error" => {
            let kind = String::from_utf8_lossy(msg.get(1).unwrap_or(b""));
            let text = String::from_utf8_lossy(msg.get(2).unwrap_or(b"")).into_owned();
            Err(Error::Remote(
                RemoteError::new(RemoteErrorKind::from_wire(&kind), text)
                    .with_details(msg.iter().skip(3).map(<[u8]>::to_vec)),
            ))
        }
        other => Err(Error::Protocol(ProtocolError::BadReply(format!(
            "expected \"ok\" or \"error\", got {:?}",
            String::from_utf8_lossy(other)
        )))),
    }
}

/// Lends the socket, for writes, socket options, waits, or a copy to hand on.
///
/// On a `SOCK_STREAM` channel of the pair [`Server::start`](crate::Server::start) creates
/// ([`Builder::seqpacket(false)`](crate::Builder::seqpacket)), which reads ahead, the channel
/// reads exactly from the first call on (what each message lacks, never more), so that the
/// socket can be read by others between messages. A `SOCK_SEQPACKET` channel keeps reading whole
/// records: another reader of its socket must take whole records too.
///
/// # Panics
/// If the channel holds bytes it read ahead (see [`Channel::buffered`]): a reader of the socket
/// would miss them, and `poll` would not see them. Read the messages they belong to through the
/// channel first, or take everything with [`Channel::into_parts`].
impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.refuse_if_buffered("as_fd");
        self.lent.store(true, Ordering::Relaxed);
        self.clear_recv_timeout();
        self.fd.as_fd()
    }
}

/// As [`AsFd`]: panics if the channel holds bytes it read ahead, and makes it read exactly from
/// then on.
impl AsRawFd for Channel {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// As [`Channel::into_fd`]: panics if the channel holds bytes it read ahead.
impl IntoRawFd for Channel {
    fn into_raw_fd(self) -> RawFd {
        self.into_fd().into_raw_fd()
    }
}

/// As [`Channel::into_fd`]: panics if the channel holds bytes it read ahead.
impl From<Channel> for OwnedFd {
    fn from(c: Channel) -> OwnedFd {
        c.into_fd()
    }
}

impl From<OwnedFd> for Channel {
    fn from(fd: OwnedFd) -> Channel {
        Channel::new(fd)
    }
}

impl From<UnixStream> for Channel {
    fn from(s: UnixStream) -> Channel {
        Channel::new(s)
    }
}
