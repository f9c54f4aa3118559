//! [`AsyncChannel`]: the message channel on a tokio runtime.

use std::fmt;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::incoming::{Incoming, ROOM};
use crate::__private::Store;
use crate::args::Form;
use crate::channel::{check_reply, Channel, DEFAULT_MAX_SCALAR};
use crate::channel::{RECORD_BUFFER, RECORD_MAX, SCALAR_ALONE};
use crate::error::{BrokenCause, Error, Operation, ProtocolError};
use crate::sys;
use crate::wire::{self, Message, MessageBuf, OK_SCALAR};

/// The message channel, on a tokio runtime: the same wire format and operations as
/// [`Channel`], each an `async fn` that waits for the socket through the runtime (tokio's
/// `AsyncFd`: readiness from its I/O driver; no blocking call on a runtime thread, no thread per
/// call).
///
/// Reads take whatever has arrived (up to 68 KiB at a time) into a buffer of the channel's own,
/// so a reply is usually one system call; descriptors keep their place in the stream (a
/// descriptor anywhere but with its own `00` byte is a protocol error, as on [`Channel`]).
/// So the socket is the channel's alone: [`into_inner`](Self::into_inner) gives it back only
/// when nothing is buffered.
///
/// On a `SOCK_SEQPACKET` socket (the pair [`Builder::start_async`](crate::Builder::start_async)
/// creates by default: see [`Builder::seqpacket`](crate::Builder::seqpacket)) every receive
/// offers room for the longest record the peer's send buffer lets it write (a longer one, which
/// the kernel would cut, is an error that breaks the channel), and writes are records of at most
/// 68 KiB (a large scalar: its header, then its bytes), as on [`Channel`].
///
/// **Cancellation.** Every operation may be dropped at any `.await`. A read takes nothing out of
/// the stream until its whole frame has arrived, so a dropped read loses nothing: the next read
/// gets that frame. A write dropped after part of its bytes went out leaves the peer waiting for
/// the rest: the channel is then broken, and every later operation fails with
/// [`Error::Broken`]. (The typed async clients do more: see their docs.)
///
/// Must be created inside a tokio runtime (with its I/O driver enabled).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), fdserver::Error> {
/// use fdserver::{AsyncChannel, MessageBuf};
/// let (mut a, mut b) = AsyncChannel::pair()?;
/// a.write_array(["hello", "world"]).await?;
/// a.write_scalar(b"payload").await?;
/// let mut buf = MessageBuf::new();
/// assert!(b.read_array(&mut buf).await?);
/// assert_eq!(buf.message().to_strings()?, ["hello", "world"]);
/// assert_eq!(b.read_scalar().await?.as_deref(), Some(&b"payload"[..]));
/// # Ok(())
/// # }
/// ```
pub struct AsyncChannel {
    io: AsyncFd<OwnedFd>,
    pub(crate) incoming: Incoming,
    wbuf: Vec<u8>,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
    max_scalar: u64,
    broken: bool,
    /// Set with `broken` by a call that timed out with its reply still to come; any other break
    /// is mid-message.
    late_reply: Option<Option<String>>,
    /// Bytes sent by the write (or request) in progress; `None` between writes. A new operation
    /// that finds bytes here knows the last write was dropped part-way.
    writing: Option<usize>,
    /// A call whose reply has not been read to its end (its future was dropped): the next call
    /// reads the rest of that reply first and drops it.
    pub(crate) pending: Option<ReplyReader>,
    /// `SOCK_SEQPACKET`: one receive takes one whole record, and writes are records of at
    /// most [`RECORD_MAX`] (see `channel::read_ahead`).
    records: bool,
    /// The socket came from a channel that read ahead (the pair `start` creates): given back by
    /// [`into_inner`](Self::into_inner), it reads ahead again.
    owned: bool,
    /// When the operation (or the whole call) in progress must be over: set when a public
    /// operation or a call begins, so that a peer that trickles its bytes cannot stretch it.
    deadline: Option<Instant>,
}

impl fmt::Debug for AsyncChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncChannel")
            .field("fd", &self.io.get_ref().as_raw_fd())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl AsyncChannel {
    /// The channel on `channel`'s socket (its deadlines and scalar limit carry over, and so do
    /// the bytes and descriptors it had read ahead: the next read here returns them first).
    /// Fails if `channel` is broken, or outside a tokio runtime with I/O enabled.
    pub fn new(channel: Channel) -> Result<AsyncChannel, Error> {
        if channel.is_broken() {
            return Err(channel.broken_error());
        }
        let (read_timeout, write_timeout, max_scalar) = (
            channel.read_timeout(),
            channel.write_timeout(),
            channel.max_scalar_size(),
        );
        let (records, owned) = (channel.is_seqpacket(), channel.has_read_ahead());
        let (fd, buffered) = channel.into_parts();
        let mut ch = AsyncChannel::on_socket(fd, records)?;
        ch.owned = owned;
        ch.incoming.seed(buffered);
        ch.read_timeout = read_timeout;
        ch.write_timeout = write_timeout;
        ch.max_scalar = max_scalar;
        Ok(ch)
    }

    /// The channel on a connected UNIX socket: a stream (`SOCK_STREAM`), or a `SOCK_SEQPACKET`
    /// one whose records are read whole (see above).
    pub fn from_fd(fd: OwnedFd) -> Result<AsyncChannel, Error> {
        let records = sys::is_seqpacket(fd.as_fd());
        AsyncChannel::on_socket(fd, records)
    }

    fn on_socket(fd: OwnedFd, records: bool) -> Result<AsyncChannel, Error> {
        // SAFETY: the AsyncFd owns `fd` (an OwnedFd): it stays open, and the same descriptor,
        // for as long as it is registered.
        let io =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(|e| Error::Io(e.into_parts().1))?;
        Ok(AsyncChannel {
            io,
            incoming: Incoming::default(),
            wbuf: Vec::new(),
            read_timeout: None,
            write_timeout: None,
            max_scalar: DEFAULT_MAX_SCALAR,
            broken: false,
            late_reply: None,
            writing: None,
            pending: None,
            records,
            owned: false,
            deadline: None,
        })
    }

    /// A connected pair, both ends close-on-exec (in the current runtime).
    pub fn pair() -> Result<(AsyncChannel, AsyncChannel), Error> {
        let (a, b) = Channel::pair()?;
        Ok((AsyncChannel::new(a)?, AsyncChannel::new(b)?))
    }

    /// Gives the socket back as a blocking [`Channel`]: `Err(self)` while the channel holds
    /// bytes or descriptors it has read ahead (which a new reader of the socket would miss).
    /// The channel reads ahead again if this one came from a channel that did (the pair
    /// [`Builder::start_async`](crate::Builder::start_async) creates), and reads whole records
    /// on any `SOCK_SEQPACKET` socket; on another stream it reads exactly.
    pub fn into_inner(self) -> Result<Channel, Box<AsyncChannel>> {
        if !self.incoming.is_empty() {
            return Err(Box::new(self));
        }
        let (read, write, max) = (self.read_timeout, self.write_timeout, self.max_scalar);
        let (records, owned) = (self.records, self.owned);
        let fd = self.io.into_inner();
        // A record socket is read whole records at a time whoever made it; a stream reads ahead
        // again only if both its ends are fdserver's.
        let mut channel = if records || owned {
            Channel::owned(fd, records)
        } else {
            Channel::exact(fd)
        };
        channel.set_read_timeout(read);
        channel.set_write_timeout(write);
        channel.set_max_scalar_size(max);
        Ok(channel)
    }

    /// Sets the deadline of each operation (`None`: wait forever, the default for a channel
    /// made here; a started server's has [`DEFAULT_CALL_TIMEOUT`](crate::DEFAULT_CALL_TIMEOUT)).
    /// It bounds an operation as a whole (a read of one message, scalar or descriptor, a write
    /// of one), however its bytes trickle in; a typed call (or
    /// [`AsyncServerHandle::call`](crate::AsyncServerHandle::call)) gets one deadline for the
    /// whole call: request, reply and everything after it. A time-out part-way through a frame
    /// breaks the channel.
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

    /// Largest scalar this side accepts (default [`DEFAULT_MAX_SCALAR`]).
    pub fn set_max_scalar_size(&mut self, max: u64) {
        self.max_scalar = max;
    }

    /// The largest scalar a read accepts.
    pub fn max_scalar_size(&self) -> u64 {
        self.max_scalar
    }

    /// Whether an earlier error (or a write dropped part-way) left the channel unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Marks the channel unusable because the call `call` timed out with its reply still to
    /// come (unless it was broken already, which says more).
    pub(crate) fn mark_late_reply(&mut self, call: Option<String>) {
        if !self.broken {
            self.late_reply = Some(call);
        }
        self.broken = true;
    }

    /// Whether the peer has closed its end (an end of stream was read).
    pub(crate) fn peer_gone(&self) -> bool {
        self.incoming.eof
    }

    /// Fails with `Broken` if the channel cannot be used, including after a write that was
    /// dropped part-way.
    fn check(&mut self) -> Result<(), Error> {
        match self.writing.take() {
            Some(0) | None => {}
            Some(_) => self.broken = true,
        }
        if self.broken {
            return Err(Error::Broken {
                cause: match &self.late_reply {
                    Some(call) => BrokenCause::LateReply { call: call.clone() },
                    None => BrokenCause::MidMessage,
                },
            });
        }
        Ok(())
    }

    /// Starts the deadline of a public operation (`timeout` from now).
    fn start_op(&mut self, timeout: Option<Duration>) {
        self.deadline = timeout.map(|t| Instant::now() + t);
    }

    /// Starts the deadline of a call: one for its request, the abandoned reply it may have to
    /// read first, and its reply.
    pub(crate) fn begin_call(&mut self) {
        let timeout = match (self.read_timeout, self.write_timeout) {
            (Some(r), Some(w)) => Some(r.max(w)),
            (r, w) => r.or(w),
        };
        self.start_op(timeout);
    }

    // ----------------------------------------------------------------------------------------
    // Waiting
    // ----------------------------------------------------------------------------------------

    /// One receive into the buffer (waiting for the socket as needed).
    async fn receive(&mut self, op: Operation) -> Result<(), Error> {
        let deadline = self.deadline.filter(|_| self.read_timeout.is_some());
        let r = receive_into(
            &self.io,
            &mut self.incoming,
            self.records,
            deadline,
            op,
            self.read_timeout,
        )
        .await;
        if let Err(e) = &r {
            // A time-out between frames leaves the stream in step; one part-way through a
            // frame, or while a call's reply is due (it may still come), does not.
            let midway = self.incoming.available() > 0 || self.pending.is_some();
            if !matches!(e, Error::TimedOut { .. }) || midway {
                self.broken = true;
            }
        }
        r
    }

    /// Receives until `ready` finds what it needs in the buffer (`Ok(Some)`), failing at end of
    /// stream (`Disconnected` before the first byte of the frame, else `UnexpectedEof`).
    async fn read_until<T>(
        &mut self,
        op: Operation,
        mut ready: impl FnMut(&mut Incoming, u64) -> Result<Option<T>, Error>,
    ) -> Result<T, Error> {
        self.check()?;
        loop {
            match ready(&mut self.incoming, self.max_scalar) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
            if self.incoming.eof {
                if self.incoming.available() == 0 {
                    return Err(Error::Disconnected);
                }
                self.broken = true;
                return Err(Error::Protocol(ProtocolError::UnexpectedEof));
            }
            self.receive(op).await?;
        }
    }

    /// Sends every byte of `parts` (and `fd` with them, when given), waiting as needed.
    async fn send_all(
        &mut self,
        parts: &[&[u8]],
        mut fd: Option<BorrowedFd<'_>>,
        op: Operation,
    ) -> Result<(), Error> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let mut sent = 0;
        let deadline = self.deadline.filter(|_| self.write_timeout.is_some());
        while sent < total || fd.is_some() {
            // The slices not yet (wholly) sent.
            let mut skip = sent;
            let iov: Vec<IoSlice<'_>> = parts
                .iter()
                .filter_map(|p| {
                    if skip >= p.len() {
                        skip -= p.len();
                        None
                    } else {
                        let s = IoSlice::new(&p[skip..]);
                        skip = 0;
                        Some(s)
                    }
                })
                .collect();
            let mut guard = wait(&self.io, true, deadline, op, self.write_timeout)
                .await
                .inspect_err(|_| {
                    if sent > 0 {
                        self.broken = true;
                    }
                })?;
            match guard.try_io(|io| sys::send(io.get_ref().as_fd(), &iov, fd, true)) {
                Ok(Ok(n)) => {
                    sent += n;
                    fd = None; // it went with the first byte of this send
                    *self.writing.get_or_insert(0) += n;
                }
                Ok(Err(e)) => {
                    if sent > 0 {
                        self.broken = true;
                    }
                    return Err(Error::Io(e));
                }
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    // ----------------------------------------------------------------------------------------
    // Array messages
    // ----------------------------------------------------------------------------------------

    /// Writes an array message (see [`Channel::write_array`]).
    pub async fn write_array<I, T>(&mut self, elements: I) -> Result<(), Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.check()?;
        self.start_op(self.write_timeout);
        let mut buf = std::mem::take(&mut self.wbuf);
        buf.clear();
        let r = match wire::encode_array(&mut buf, elements) {
            Ok(()) => {
                self.writing = Some(0);
                let r = self.send_all(&[&buf], None, Operation::WriteArray).await;
                self.writing = None;
                r
            }
            Err(e) => Err(e),
        };
        self.wbuf = buf;
        r
    }

    /// Reads one array message into `buf`; `Ok(false)` at end of stream at a message boundary.
    pub async fn read_array(&mut self, buf: &mut MessageBuf) -> Result<bool, Error> {
        self.start_op(self.read_timeout);
        match self
            .read_until(Operation::ReadArray, |inc, _| {
                inc.take_array(buf).map(|done| done.then_some(()))
            })
            .await
        {
            Ok(()) => Ok(true),
            Err(Error::Disconnected) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Reads a reply (see [`Channel::read_reply`]): `["ok", ...]` (or `["ok_scalar"]` and the
    /// scalar holding it), else the error it carries.
    pub async fn read_reply<'b>(&mut self, buf: &'b mut MessageBuf) -> Result<Message<'b>, Error> {
        let mut reader = ReplyReader::new("", &[]);
        let mut store = Store::default();
        self.check()?;
        self.start_op(self.read_timeout);
        loop {
            match reader.advance(&mut self.incoming, buf, &mut store, self.max_scalar) {
                Ok(Step::Done(r)) => {
                    r?;
                    return Ok(buf.message());
                }
                Ok(Step::More) => {}
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
            self.more(Operation::ReadReply).await?;
        }
    }

    /// One more receive for a frame that is not whole yet; end of stream is an error there.
    async fn more(&mut self, op: Operation) -> Result<(), Error> {
        if self.incoming.eof {
            if self.incoming.available() == 0 {
                return Err(Error::Disconnected);
            }
            self.broken = true;
            return Err(Error::Protocol(ProtocolError::UnexpectedEof));
        }
        self.receive(op).await
    }

    // ----------------------------------------------------------------------------------------
    // Scalars and descriptors
    // ----------------------------------------------------------------------------------------

    /// Writes a scalar message.
    pub async fn write_scalar(&mut self, data: &[u8]) -> Result<(), Error> {
        self.check()?;
        self.start_op(self.write_timeout);
        self.writing = Some(0);
        let r = self.send_scalar(data).await;
        self.writing = None;
        r
    }

    /// Sends a scalar message: header and bytes in one send, but on a record socket a large
    /// one goes as a header record and data records of at most [`RECORD_MAX`] (as
    /// [`Channel::write_scalar`] sends it).
    async fn send_scalar(&mut self, data: &[u8]) -> Result<(), Error> {
        let hdr = wire::scalar_header(data.len())?;
        let op = Operation::WriteScalar;
        if !self.records || data.len() < SCALAR_ALONE {
            return self.send_all(&[&hdr, data], None, op).await;
        }
        self.send_all(&[&hdr], None, op).await?;
        for chunk in data.chunks(RECORD_MAX) {
            self.send_all(&[chunk], None, op).await?;
        }
        Ok(())
    }

    /// Reads a scalar message; `None` at end of stream. Over the limit
    /// ([`set_max_scalar_size`](Self::set_max_scalar_size)) is [`Error::ScalarTooLarge`] and
    /// breaks the channel.
    pub async fn read_scalar(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let mut out = Vec::new();
        self.start_op(self.read_timeout);
        match self
            .read_until(Operation::ReadScalar, |inc, max| {
                inc.take_scalar(max, &mut out)
            })
            .await
        {
            Ok(()) => Ok(Some(out)),
            Err(Error::Disconnected) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends a file descriptor (one `00` byte carrying it).
    pub async fn send_fd(&mut self, fd: impl AsFd) -> Result<(), Error> {
        self.check()?;
        self.start_op(self.write_timeout);
        self.writing = Some(0);
        let r = self
            .send_all(&[&[0]], Some(fd.as_fd()), Operation::SendFd)
            .await;
        self.writing = None;
        r
    }

    /// Receives a file descriptor; `None` at end of stream.
    pub async fn recv_fd(&mut self) -> Result<Option<OwnedFd>, Error> {
        self.start_op(self.read_timeout);
        match self
            .read_until(Operation::ReceiveFd, |inc, _| inc.take_fd())
            .await
        {
            Ok(fd) => Ok(Some(fd)),
            Err(Error::Disconnected) => Ok(None),
            Err(e) => Err(e),
        }
    }

    // ----------------------------------------------------------------------------------------
    // Typed calls (`__private::call_async`)
    // ----------------------------------------------------------------------------------------

    /// Before a typed call: fails if the channel is broken, and finishes what an abandoned
    /// call left: the rest of its reply is read and dropped, so that this call's reply is the
    /// next one.
    pub(crate) async fn settle(&mut self) -> Result<(), Error> {
        self.check()?;
        let mut scratch = MessageBuf::new();
        let mut store = Store::default();
        while let Some(reader) = &mut self.pending {
            // A reply a call asked for: at any size, as in `receive_reply`.
            match reader.advance(
                &mut self.incoming,
                &mut scratch,
                &mut store,
                crate::channel::REPLY_MAX_SCALAR,
            ) {
                Ok(Step::Done(_)) => self.pending = None,
                Ok(Step::More) => self.more(Operation::ReadReply).await?,
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Sends a typed call's request: `[message, inline...]`, then the out-of-band arguments.
    /// Once all of it is out, the reply is pending (until `receive_reply` has read it).
    pub(crate) async fn send_request(
        &mut self,
        message: &'static str,
        arguments: &[crate::args::Encoded<'_>],
        reply_forms: &'static [Form],
    ) -> Result<(), Error> {
        use crate::args::Encoded;
        let mut buf = std::mem::take(&mut self.wbuf);
        buf.clear();
        let inline = arguments.iter().filter_map(|a| match a {
            Encoded::Element(e) => Some(e.as_bytes()),
            _ => None,
        });
        let encoded =
            wire::encode_array(&mut buf, std::iter::once(message.as_bytes()).chain(inline));
        if let Err(e) = encoded {
            self.wbuf = buf;
            return Err(e);
        }
        self.writing = Some(0);
        let mut r = self.send_all(&[&buf], None, Operation::WriteArray).await;
        self.wbuf = buf;
        for a in arguments {
            if r.is_err() {
                break;
            }
            r = match a {
                Encoded::Scalar(data) => self.send_scalar(data).await,
                Encoded::Fd(fd) => {
                    self.send_all(&[&[0]], Some(fd.as_fd()), Operation::SendFd)
                        .await
                }
                Encoded::Element(_) | Encoded::Invalid(_) => Ok(()),
            };
        }
        self.writing = None;
        match r {
            Ok(()) => {
                self.pending = Some(ReplyReader::new(message, reply_forms));
                Ok(())
            }
            Err(e) => {
                // Part of the request went out: the server waits for the rest.
                self.broken = true;
                Err(e)
            }
        }
    }

    /// A raw call ([`AsyncServerHandle::call`](crate::AsyncServerHandle::call)): the same
    /// pending-reply machinery as a typed call, so a dropped raw call's reply is read and dropped
    /// by the next call (raw or typed), and a pool sees the call in flight. The reply's array
    /// (spilled or not) ends up in `reply`.
    pub(crate) async fn call_raw(
        &mut self,
        elements: &[Vec<u8>],
        reply: &mut MessageBuf,
    ) -> Result<(), Error> {
        self.begin_call();
        self.settle().await?;
        let mut buf = std::mem::take(&mut self.wbuf);
        buf.clear();
        if let Err(e) = wire::encode_array(&mut buf, elements) {
            self.wbuf = buf;
            return Err(e);
        }
        self.writing = Some(0);
        let r = self.send_all(&[&buf], None, Operation::WriteArray).await;
        self.writing = None;
        self.wbuf = buf;
        r?;
        self.pending = Some(ReplyReader::new("", &[]));
        self.receive_reply(reply, &mut Store::default()).await
    }

    /// Reads the pending reply into `reply` (the array) and `store` (its out-of-band values,
    /// in order). `Err(Remote)` for an error reply (the channel stays usable).
    pub(crate) async fn receive_reply(
        &mut self,
        reply: &mut MessageBuf,
        store: &mut Store,
    ) -> Result<(), Error> {
        store.start_filling();
        loop {
            let Some(reader) = &mut self.pending else {
                unreachable!("receive_reply follows send_request")
            };
            // The reply this call asked for: at any size the wire can carry (see
            // `REPLY_MAX_SCALAR`); the channel's limit bounds what arrives unasked.
            let limit = crate::channel::REPLY_MAX_SCALAR;
            match reader.advance(&mut self.incoming, reply, store, limit) {
                Ok(Step::Done(r)) => {
                    self.pending = None;
                    return r;
                }
                Ok(Step::More) => self.more(Operation::ReadReply).await?,
                Err(e) => {
                    self.broken = true;
                    return Err(e);
                }
            }
        }
    }
}

impl AsFd for AsyncChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.io.get_ref().as_fd()
    }
}

impl AsRawFd for AsyncChannel {
    fn as_raw_fd(&self) -> RawFd {
        self.io.get_ref().as_raw_fd()
    }
}

/// Waits until the socket is readable (or writable), or the deadline passes.
async fn wait(
    io: &AsyncFd<OwnedFd>,
    write: bool,
    deadline: Option<Instant>,
    op: Operation,
    timeout: Option<Duration>,
) -> Result<tokio::io::unix::AsyncFdReadyGuard<'_, OwnedFd>, Error> {
    let ready = async {
        if write {
            io.writable().await
        } else {
            io.readable().await
        }
    };
    match deadline {
        None => ready.await.map_err(Error::Io),
        Some(d) => match tokio::time::timeout_at(d.into(), ready).await {
            Ok(r) => r.map_err(Error::Io),
            Err(_) => Err(Error::timed_out(op, timeout.unwrap_or_default())),
        },
    }
}

/// One receive into `incoming`, waiting for the socket as needed.
async fn receive_into(
    io: &AsyncFd<OwnedFd>,
    incoming: &mut Incoming,
    records: bool,
    deadline: Option<Instant>,
    op: Operation,
    timeout: Option<Duration>,
) -> Result<(), Error> {
    loop {
        let mut guard = wait(io, false, deadline, op, timeout).await?;
        let room = if records { RECORD_BUFFER } else { ROOM };
        let spare = incoming.spare(room);
        match guard.try_io(|io| sys::recv(io.get_ref().as_fd(), spare, true)) {
            Ok(Ok(mut r)) => {
                if r.record_cut {
                    drop(r); // closes what arrived
                    return Err(Error::Io(std::io::Error::other(format!(
                        "a record longer than the {room} bytes a read takes arrived on the \
                         channel and the kernel cut it (its writer raised the socket's send \
                         buffer, SO_SNDBUF, above what fdserver set): bytes were lost, so the \
                         connection is closed"
                    ))));
                }
                if r.truncated {
                    drop(r); // closes what arrived
                    return Err(Error::Protocol(ProtocolError::TooManyFds));
                }
                if r.n == 0 && records && !sys::peer_done_writing(io.get_ref().as_fd()) {
                    continue; // an empty record (a raw write of nothing), not the end
                }
                let fds: Vec<OwnedFd> = r.fds.iter_mut().filter_map(Option::take).collect();
                incoming.received(r.n, fds);
                return Ok(());
            }
            Ok(Err(e)) => {
                return Err(match e.raw_os_error() {
                    Some(libc::ECONNRESET) => Error::Disconnected,
                    _ => Error::Io(e),
                });
            }
            // `try_io` cleared the readiness; nothing was received.
            Err(_would_block) => {}
        }
    }
}

/// What one step of reading a reply found.
pub(crate) enum Step {
    /// Not all of it is here yet.
    More,
    /// The reply is whole: `Ok` (`["ok", ...]` and every out-of-band value), or the error reply.
    Done(Result<(), Error>),
}

/// Reading one reply, resumable: its progress lives here, not in the future that reads it, so a
/// call dropped part-way leaves the next call able to finish reading (and drop) that reply.
#[derive(Debug)]
pub(crate) struct ReplyReader {
    /// The forms of the reply's values (after `"ok"`): the out-of-band ones are read after it.
    forms: &'static [Form],
    stage: Stage,
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    Array,
    /// After `["ok_scalar"]`: the scalar holding the reply.
    Spilled,
    /// Reading the out-of-band values; the next is `forms[next]` (inline ones skipped).
    OutOfBand {
        next: usize,
    },
}

impl ReplyReader {
    pub(crate) fn new(_message: &'static str, forms: &'static [Form]) -> ReplyReader {
        ReplyReader {
            forms,
            stage: Stage::Array,
        }
    }

    /// Takes what the reply needs from `inc`, as far as it has arrived.
    fn advance(
        &mut self,
        inc: &mut Incoming,
        reply: &mut MessageBuf,
        store: &mut Store,
        max: u64,
    ) -> Result<Step, Error> {
        loop {
            match self.stage {
                Stage::Array => {
                    if !inc.take_array(reply)? {
                        return Ok(Step::More);
                    }
                    if let Err(e) = check_reply(reply.message()) {
                        // Protocol errors in the reply's shape break the channel; an error
                        // reply does not (nothing follows it).
                        return match e {
                            Error::Remote(_) => Ok(Step::Done(Err(e))),
                            other => Err(other),
                        };
                    }
                    self.stage = if reply.message().name() == OK_SCALAR {
                        Stage::Spilled
                    } else {
                        Stage::OutOfBand { next: 0 }
                    };
                }
                Stage::Spilled => {
                    if !inc.take_scalar_into(max, &mut reply.body)? {
                        return Ok(Step::More);
                    }
                    reply.index().map_err(Error::Protocol)?;
                    if reply.message().name() != b"ok" {
                        return Err(Error::Protocol(ProtocolError::BadReply(
                            "the scalar after \"ok_scalar\" does not hold an \"ok\" reply".into(),
                        )));
                    }
                    self.stage = Stage::OutOfBand { next: 0 };
                }
                Stage::OutOfBand { next } => {
                    let Some(form) = self.forms.get(next) else {
                        return Ok(Step::Done(Ok(())));
                    };
                    match form {
                        Form::Inline => {}
                        Form::Scalar => {
                            let mut buf = store.scalar_buffer();
                            if !inc.take_scalar_into(max, &mut buf)? {
                                return Ok(Step::More);
                            }
                            store.push_scalar(buf);
                        }
                        Form::Fd => match inc.take_fd()? {
                            Some(fd) => store.push_fd(fd),
                            None => return Ok(Step::More),
                        },
                    }
                    self.stage = Stage::OutOfBand { next: next + 1 };
                }
            }
        }
    }
}
