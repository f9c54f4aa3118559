//! Support for the code that `#[fdserver]` generates. Not a public API: nothing here is covered
//! by semver, and only generated code should call it.

use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::iter;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;

use crate::args::{
    ArgError, Encoded, Form, FromArg, FromValues, Received, Reply, ToArg, ToValues, TypedReply,
};
use crate::channel::Channel;
use crate::connection::Connection;
use crate::error::{Error, ProtocolError, RemoteError, RemoteErrorKind};
use crate::server::{BoxError, Context};
use crate::wire::{self, Message, MessageBuf};
use crate::wire_error::{CallError, WireError};

/// Makes every server handle created from now on wait for its server with a watcher thread
/// instead of a pidfd, the fallback for systems without pidfds (for fdserver's own tests).
pub fn force_exit_watch_thread(on: bool) {
    crate::sys::force_exit_watch_thread(on);
}

/// For `benches/compare.rs` only: turns the forked server's hang-up watch and descriptor
/// tombstones on or off for servers started from now on, so that the bench can measure what
/// they cost. Both are on by default; turning them off gives up guarantees the crate documents.
pub fn bench_hardening(hangup_watch: bool, tombstones: bool) {
    crate::start::set_bench_hardening(hangup_watch, tombstones);
}

/// For the test suite only: the two ends of a pair as [`Server::start`](crate::Server::start)
/// creates it (both reading ahead; `SOCK_SEQPACKET` if `seqpacket` and the system allows it,
/// else `SOCK_STREAM`), to exercise read-ahead in one process.
pub fn read_ahead_pair(seqpacket: bool) -> std::io::Result<(Channel, Channel)> {
    Channel::owned_pair(seqpacket)
}

/// For the test suite only: a channel's socket, without lending it (see `Channel::as_fd`).
pub fn channel_socket(channel: &Channel) -> std::os::fd::BorrowedFd<'_> {
    channel.socket()
}

/// For tests: waits until fdserver's reaper thread has finished every stop it was handed
/// (dropped clients), or `timeout` passes; returns whether it has.
pub fn wait_background_stops(timeout: std::time::Duration) -> bool {
    crate::reaper::wait_settled(timeout)
}

/// How much of an offending element an error message quotes.
const QUOTE_MAX: usize = 60;

/// The generated client's per-connection state: a reply buffer and an out-of-band store, reused
/// across calls.
#[derive(Debug, Default)]
pub struct ClientState {
    reply: MessageBuf,
    store: Store,
}

impl ClientState {
    /// A fresh state.
    pub fn new() -> Self {
        Self::default()
    }
}

/// Largest scalar buffer kept for reuse, and how many are kept.
const SPARE_MAX_BYTES: usize = 1 << 20;
const SPARE_MAX_COUNT: usize = 4;

/// Where the out-of-band values of one message (scalars, descriptors) are received before they
/// are decoded, so that borrowed parameters (`&[u8]`) can point into them. Scalar buffers are
/// kept for the next message (up to 4 of at most 1 MiB each), so a borrowed scalar parameter
/// costs no allocation once warm.
#[derive(Debug, Default)]
pub struct Store {
    slots: Vec<Slot>,
    spare: Vec<Vec<u8>>,
}

#[derive(Debug)]
enum Slot {
    Scalar(Vec<u8>),
    Fd(Option<OwnedFd>),
    /// Not received (an earlier failure stopped the reading).
    Missing,
}

impl Store {
    /// Empties the slots (closing unclaimed descriptors), keeping scalar buffers for reuse.
    fn clear(&mut self) {
        for slot in self.slots.drain(..) {
            if let Slot::Scalar(mut buf) = slot {
                if buf.capacity() > 0
                    && buf.capacity() <= SPARE_MAX_BYTES
                    && self.spare.len() < SPARE_MAX_COUNT
                {
                    buf.clear();
                    self.spare.push(buf);
                }
            }
        }
    }

    fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// The async client fills the store itself before decoding (see `Decoder::prefilled`):
    /// empties it for a new reply.
    #[cfg(feature = "tokio")]
    pub(crate) fn start_filling(&mut self) {
        self.clear();
    }

    /// A buffer for the next scalar, to receive into.
    #[cfg(feature = "tokio")]
    pub(crate) fn scalar_buffer(&mut self) -> Vec<u8> {
        self.buffer()
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn push_scalar(&mut self, data: Vec<u8>) {
        self.slots.push(Slot::Scalar(data));
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn push_fd(&mut self, fd: OwnedFd) {
        self.slots.push(Slot::Fd(Some(fd)));
    }
}

thread_local! {
    static POOLED: Cell<Option<Store>> = const { Cell::new(None) };
}

/// The server side's store for one request, taken from this thread's pool and given back when
/// dropped.
#[derive(Debug)]
pub struct PooledStore(Store);

impl PooledStore {
    /// This thread's store (a new one on first use).
    pub fn take() -> PooledStore {
        PooledStore(POOLED.with(Cell::take).unwrap_or_default())
    }
}

impl Drop for PooledStore {
    fn drop(&mut self) {
        let mut store = std::mem::take(&mut self.0);
        store.clear();
        let _ = POOLED.try_with(|p| p.set(Some(store)));
    }
}

enum Target {
    /// Decoding a request for `message`, whose value parameters are `params`.
    Request {
        message: &'static str,
        params: &'static [&'static str],
    },
    /// Decoding the reply to `message`.
    Reply { message: &'static str },
}

enum Failure {
    /// An element could not be decoded.
    Parse {
        index: usize,
        reason: String,
        got: Option<String>,
    },
    /// An out-of-band item could not be received.
    Receive { index: usize, error: Error },
}

/// Decodes the values of a request (after the name) or of a reply (after `"ok"`): inline values
/// from the message's elements, out-of-band values from the channel.
///
/// Every out-of-band value is received first, in order, into a [`Store`] (so the stream stays in
/// step whatever fails later); then [`take`](Self::take) decodes each value, borrowing from the
/// message and the store. The first failure is reported by `finish_*`.
pub struct Decoder<'m> {
    msg: Message<'m>,
    target: Target,
    next: usize,
    inline_mask: u64,
    inline_count: usize,
    failure: Option<Failure>,
    oob: std::slice::IterMut<'m, Slot>,
}

impl<'m> Decoder<'m> {
    /// Decodes the arguments of the request `msg` to `message`, whose value parameters are named
    /// `params` and travel as `forms`.
    pub fn request(
        ctx: &mut Context<'_>,
        msg: Message<'m>,
        message: &'static str,
        params: &'static [&'static str],
        forms: &[Form],
        store: &'m mut PooledStore,
    ) -> Self {
        Self::new(
            ctx.channel(),
            msg,
            Target::Request { message, params },
            forms,
            &mut store.0,
            None,
            None,
        )
    }

    fn new(
        channel: &mut Channel,
        msg: Message<'m>,
        target: Target,
        forms: &[Form],
        store: &'m mut Store,
        mut prefetched_fd: Option<OwnedFd>,
        clock: Option<&CallClock>,
    ) -> Self {
        let mut inline_mask = 0;
        let mut inline_count = 0;
        let mut failure = None;
        let mut receiving = !channel.is_broken();
        store.clear();
        for (index, form) in forms.iter().enumerate() {
            let slot = match form {
                Form::Inline => {
                    inline_count += 1;
                    if index < 64 {
                        inline_mask |= 1 << index;
                    }
                    continue;
                }
                Form::Fd if prefetched_fd.is_some() => Slot::Fd(prefetched_fd.take()),
                _ if !receiving => Slot::Missing,
                _ if clock.is_some_and(|c| !c.arm(channel)) => Self::lost(
                    &mut failure,
                    &mut receiving,
                    index,
                    channel,
                    clock.expect("checked").expired(),
                ),
                Form::Scalar => {
                    let mut buf = store.buffer();
                    match channel.read_scalar_into(&mut buf) {
                        Ok(true) => Slot::Scalar(buf),
                        Ok(false) => Self::lost(
                            &mut failure,
                            &mut receiving,
                            index,
                            channel,
                            Error::Disconnected,
                        ),
                        Err(e) => Self::lost(&mut failure, &mut receiving, index, channel, e),
                    }
                }
                Form::Fd => match channel.recv_fd() {
                    Ok(Some(fd)) => Slot::Fd(Some(fd)),
                    Ok(None) => Self::lost(
                        &mut failure,
                        &mut receiving,
                        index,
                        channel,
                        Error::Disconnected,
                    ),
                    Err(e) => Self::lost(&mut failure, &mut receiving, index, channel, e),
                },
            };
            store.slots.push(slot);
        }
        Decoder {
            msg,
            target,
            next: 1,
            inline_mask,
            inline_count,
            failure,
            oob: store.slots.iter_mut(),
        }
    }

    /// A reply decoder over a store the async client filled with the reply's out-of-band
    /// values, in order (see `asyncio`).
    #[cfg(feature = "tokio")]
    pub(crate) fn prefilled(
        msg: Message<'m>,
        message: &'static str,
        forms: &[Form],
        store: &'m mut Store,
    ) -> Self {
        let mut inline_mask = 0;
        let mut inline_count = 0;
        for (index, form) in forms.iter().enumerate() {
            if *form == Form::Inline {
                inline_count += 1;
                if index < 64 {
                    inline_mask |= 1 << index;
                }
            }
        }
        Decoder {
            msg,
            target: Target::Reply { message },
            next: 1,
            inline_mask,
            inline_count,
            failure: None,
            oob: store.slots.iter_mut(),
        }
    }

    /// Records a receive failure (the first one wins); after a disconnect or a broken stream
    /// nothing more can be read.
    fn lost(
        failure: &mut Option<Failure>,
        receiving: &mut bool,
        index: usize,
        channel: &Channel,
        error: Error,
    ) -> Slot {
        if error.is_disconnect() || channel.is_broken() {
            *receiving = false;
        }
        if !matches!(failure, Some(Failure::Receive { .. })) {
            *failure = Some(Failure::Receive { index, error });
        }
        Slot::Missing
    }

    /// Decodes value number `index` (`None` if it, or an earlier value, failed).
    pub fn take<T: FromArg<'m>>(&mut self, index: usize) -> Option<T> {
        match T::FORM {
            Form::Inline => {
                let element = self.msg.get(self.next);
                self.next += 1;
                let element = element?; // missing: reported as a count mismatch
                if self.failure.is_some() {
                    return None;
                }
                match T::from_arg(Received::Element(element)) {
                    Ok(v) => Some(v),
                    Err(e) => {
                        self.failure = Some(Failure::Parse {
                            index,
                            reason: e.reason().to_owned(),
                            got: Some(quote(element)),
                        });
                        None
                    }
                }
            }
            Form::Scalar | Form::Fd => {
                let received = match self.oob.next()? {
                    Slot::Scalar(buf) => Received::Scalar(buf),
                    Slot::Fd(fd) => Received::Fd(fd.take()?),
                    Slot::Missing => return None,
                };
                self.convert(index, received)
            }
        }
    }

    fn convert<T: FromArg<'m>>(&mut self, index: usize, received: Received<'m>) -> Option<T> {
        match T::from_arg(received) {
            Ok(v) if self.failure.is_none() => Some(v),
            Ok(_) => None,
            Err(e) => {
                if self.failure.is_none() {
                    self.failure = Some(Failure::Parse {
                        index,
                        reason: e.reason().to_owned(),
                        got: None,
                    });
                }
                None
            }
        }
    }

    fn got(&self) -> usize {
        self.msg.len().saturating_sub(1)
    }

    /// The request's verdict: a `protocol` error if an out-of-band argument could not be
    /// received, else `bad_arguments` for a wrong count or an undecodable argument.
    pub fn finish_request(self) -> Result<(), RemoteError> {
        let Target::Request { message, params } = self.target else {
            unreachable!("finish_request on a reply decoder")
        };
        let name = |index: usize| params.get(index).copied().unwrap_or("?");
        if let Some(Failure::Receive { index, error }) = &self.failure {
            return Err(RemoteError::new(
                RemoteErrorKind::Protocol,
                format!("{message}: parameter `{}`: {error}", name(*index)),
            ));
        }
        let got = self.got();
        if got != self.inline_count {
            let mut text = String::new();
            let n = self.inline_count;
            let _ = write!(text, "{message}: expected ");
            match n {
                0 => text.push_str("no arguments"),
                1 => text.push_str("1 argument"),
                n => {
                    let _ = write!(text, "{n} arguments");
                }
            }
            if n > 0 {
                text.push_str(" (");
                let inline =
                    (0..params.len()).filter(|&i| i < 64 && self.inline_mask & (1 << i) != 0);
                for (k, i) in inline.enumerate() {
                    if k > 0 {
                        text.push_str(", ");
                    }
                    text.push_str(name(i));
                }
                text.push(')');
            }
            let _ = write!(text, ", got {got}");
            return Err(RemoteError::bad_arguments(text));
        }
        if let Some(Failure::Parse { index, reason, got }) = &self.failure {
            let mut text = format!("{message}: parameter `{}`: {reason}", name(*index));
            if let Some(got) = got {
                let _ = write!(text, " (got {got})");
            }
            return Err(RemoteError::bad_arguments(text));
        }
        Ok(())
    }

    /// The reply's verdict: the receive error if an out-of-band value could not be received, else
    /// a [`ProtocolError::BadReply`] for a wrong count or an undecodable value.
    fn finish_reply(self) -> Result<(), Error> {
        let Target::Reply { message } = self.target else {
            unreachable!("finish_reply on a request decoder")
        };
        match self.failure {
            Some(Failure::Receive { error, .. }) => return Err(error),
            _ if self.got() != self.inline_count => {
                return Err(bad_reply(format_args!(
                    "{message}: expected {} inline value(s), got {}",
                    self.inline_count,
                    self.got()
                )))
            }
            Some(Failure::Parse { index, reason, got }) => {
                let got = got.map(|g| format!(" (got {g})")).unwrap_or_default();
                return Err(bad_reply(format_args!(
                    "{message}: value {}: {reason}{got}",
                    index + 1
                )));
            }
            None => {}
        }
        Ok(())
    }
}

fn bad_reply(text: fmt::Arguments<'_>) -> Error {
    Error::Protocol(ProtocolError::BadReply(text.to_string()))
}

/// `"text"`, cut to a readable length.
fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() <= QUOTE_MAX {
        format!("{text:?}")
    } else {
        let cut: String = text.chars().take(QUOTE_MAX).collect();
        format!("{cut:?}...")
    }
}

/// The request check of a handler without parameters: `bad_arguments` if the request has any.
pub fn expect_no_arguments(msg: Message<'_>, message: &'static str) -> Result<(), RemoteError> {
    match msg.len().saturating_sub(1) {
        0 => Ok(()),
        got => Err(RemoteError::bad_arguments(format_args!(
            "{message}: expected no arguments, got {got}"
        ))),
    }
}

/// The error a handler arm returns if its arguments vanished after a successful decode (a bug).
pub fn internal(message: &str) -> RemoteError {
    RemoteError::failed(format_args!(
        "{message}: internal error: arguments decoded but missing"
    ))
}

/// Sends a handler's return value: `["ok", inline values...]`, then its out-of-band values; or
/// the error reply for `Err` (see [`Reply`]).
pub fn reply<R: Reply>(
    ctx: &mut Context<'_>,
    message: &'static str,
    ret: R,
) -> Result<(), RemoteError> {
    send_values(ctx, message, ret.into_reply()?)
}

/// [`reply`] for a `typed_errors` handler: its error travels as itself.
pub fn reply_typed<R: TypedReply>(
    ctx: &mut Context<'_>,
    message: &'static str,
    ret: R,
) -> Result<(), RemoteError> {
    match ret.__into_result() {
        Ok(values) => send_values(ctx, message, values),
        Err(e) => Err(e.to_remote()),
    }
}

/// Picks how a handler's return value is sent, by autoref specialisation in the generated
/// dispatch: `Result<T, E>` with `E: WireError` sends `E` as itself ([`SendWireError`]);
/// anything else goes through [`Reply`] ([`SendReply`]). So the wire form of an error depends on
/// its type only, not on whether the server is `typed_errors`.
pub struct ReplySelect<R>(PhantomData<R>);

impl<R> ReplySelect<R> {
    /// The selector for return type `R`.
    pub fn new() -> Self {
        ReplySelect(PhantomData)
    }
}

impl<R> Default for ReplySelect<R> {
    fn default() -> Self {
        Self::new()
    }
}

/// The specialised path of [`ReplySelect`].
pub trait SendWireError<R> {
    /// Sends `ret`.
    fn __fdserver_send(
        &self,
        ctx: &mut Context<'_>,
        message: &'static str,
        ret: R,
    ) -> Result<(), RemoteError>;
}

impl<T: ToValues, E: WireError> SendWireError<Result<T, E>> for ReplySelect<Result<T, E>> {
    fn __fdserver_send(
        &self,
        ctx: &mut Context<'_>,
        message: &'static str,
        ret: Result<T, E>,
    ) -> Result<(), RemoteError> {
        match ret {
            Ok(values) => send_values(ctx, message, values),
            Err(e) => Err(e.to_remote()),
        }
    }
}

/// The general path of [`ReplySelect`].
pub trait SendReply<R> {
    /// Sends `ret`.
    fn __fdserver_send(
        &self,
        ctx: &mut Context<'_>,
        message: &'static str,
        ret: R,
    ) -> Result<(), RemoteError>
    where
        R: Reply;
}

impl<R> SendReply<R> for &ReplySelect<R> {
    fn __fdserver_send(
        &self,
        ctx: &mut Context<'_>,
        message: &'static str,
        ret: R,
    ) -> Result<(), RemoteError>
    where
        R: Reply,
    {
        reply(ctx, message, ret)
    }
}

/// Writes `["ok", inline values...]` and the out-of-band values. Every value is encoded first:
/// one that cannot be sent fails the call with nothing written.
fn send_values<V: ToValues>(
    ctx: &mut Context<'_>,
    message: &'static str,
    values: V,
) -> Result<(), RemoteError> {
    let len = V::__LEN;
    let mut encoded: [Option<Encoded<'_>>; MAX_VALUES] =
        std::array::from_fn(|i| (i < len).then(|| values.__encode(i)));
    for (i, e) in encoded.iter_mut().enumerate() {
        match e {
            Some(Encoded::Invalid(why)) => {
                return Err(RemoteError::failed(format_args!(
                    "{message}: reply value {} cannot be sent: {why}",
                    i + 1
                )));
            }
            // Too long for the wire format's `u32` length: refused before the first byte, so
            // that this is an ordinary error reply and the server keeps serving.
            Some(Encoded::Scalar(data)) => {
                wire::scalar_header(data.len()).map_err(|e| {
                    RemoteError::failed(format_args!(
                        "{message}: reply value {} cannot be sent: {e}",
                        i + 1
                    ))
                })?;
            }
            _ => {}
        }
    }
    if (0..len).all(|i| V::__form(i) == Form::Inline) {
        // The common reply: an array message alone.
        let inline = encoded[..len].iter().filter_map(|e| match e {
            Some(Encoded::Element(e)) => Some(e.as_bytes()),
            _ => None,
        });
        ctx.channel().write_ok(inline)?;
        return Ok(());
    }
    // Out-of-band values apart, so the inline ones can be borrowed while these are sent.
    let mut out_of_band: [Option<Encoded<'_>>; MAX_VALUES] = std::array::from_fn(|_| None);
    for (i, e) in encoded[..len].iter_mut().enumerate() {
        if V::__form(i) != Form::Inline {
            out_of_band[i] = e.take();
        }
    }
    let inline = encoded[..len].iter().filter_map(|e| match e {
        Some(Encoded::Element(e)) => Some(e.as_bytes()),
        _ => None,
    });
    let mut out_of_band = out_of_band.into_iter().flatten();
    let channel = ctx.channel();
    let sent = (|| {
        match out_of_band.next() {
            // The reply and a first descriptor leave in one system call.
            Some(Encoded::Fd(fd)) => channel.write_ok_with_fd(inline, fd)?,
            Some(other) => {
                channel.write_ok(inline)?;
                send_after_first_byte(channel, other)?;
            }
            None => channel.write_ok(inline)?,
        }
        for e in out_of_band {
            send_after_first_byte(channel, e)?;
        }
        Ok(())
    })();
    sent.map_err(|e| reply_unsent(message, e))
}

/// The error for a reply the runtime could not send, after the handler succeeded: it says so
/// (not as though the handler had failed), and for a refused system call points at the likely
/// cause. (If nothing of the reply went out, the server sends this as the error reply.)
fn reply_unsent(message: &str, e: Error) -> RemoteError {
    let refused = matches!(
        &e,
        Error::Io(io) if matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES | libc::ENOSYS))
    );
    let hint = if refused {
        "; a seccomp filter in the server (its own, installed in initialize_server, or its \
         sandbox's) refuses a system call fdserver's runtime needs to send replies \
         (Seccomp::RUNTIME lists them)"
    } else {
        ""
    };
    RemoteError::failed(format_args!(
        "{message}: the handler returned, but the server runtime could not send its reply: \
         {e}{hint}"
    ))
}

/// Most values in a reply (tuples of up to 12).
const MAX_VALUES: usize = 12;

/// Sends an out-of-band value that follows a message already on the wire: failing leaves the
/// peer waiting for it, so the channel is marked broken.
fn send_after_first_byte(channel: &mut Channel, encoded: Encoded<'_>) -> Result<(), Error> {
    let r = send_encoded(channel, encoded);
    if r.is_err() {
        channel.mark_broken();
    }
    r
}

fn send_encoded(channel: &mut Channel, encoded: Encoded<'_>) -> Result<(), Error> {
    match encoded {
        Encoded::Scalar(data) => channel.write_scalar(&data),
        Encoded::Fd(fd) => channel.send_fd(fd),
        Encoded::Element(_) | Encoded::Invalid(_) => Ok(()),
    }
}

/// [`Error::Encode`] for the argument at `index` (in the handler's parameter order).
fn argument_error(message: &str, params: &[&str], index: usize, reason: String) -> Error {
    Error::Encode {
        message: message.to_owned(),
        value: format!("parameter `{}`", params.get(index).copied().unwrap_or("?")),
        reason,
    }
}

/// A request array refused for an element with a NUL byte names the call and the parameter,
/// not the element's place in the array (the message name is element 0; out-of-band arguments
/// have none). Other errors are named with the call, as a time-out is.
fn name_inline_argument(
    e: Error,
    message: &str,
    params: &[&str],
    arguments: &[Encoded<'_>],
) -> Error {
    let Error::ElementContainsNul { index } = e else {
        return e.in_call(message.as_bytes());
    };
    let param = arguments
        .iter()
        .enumerate()
        .filter(|(_, a)| matches!(a, Encoded::Element(_)))
        .nth(index.wrapping_sub(1))
        .map(|(i, _)| i);
    match param {
        Some(i) => argument_error(
            message,
            params,
            i,
            "it contains a NUL byte, which the array format cannot carry (send arbitrary bytes \
             as `&[u8]` or `Vec<u8>`)"
                .into(),
        ),
        None => e,
    }
}

/// Encodes a client argument, once, for [`call`].
pub fn encode<T: ToArg + ?Sized>(value: &T) -> Encoded<'_> {
    value.to_arg()
}

/// A client call: sends `[message, inline arguments...]` and the out-of-band arguments, reads
/// the reply and decodes its values. An argument that cannot be encoded fails the call with
/// [`Error::Encode`] before anything is sent.
pub fn call<V: FromValues, const N: usize>(
    connection: &mut impl Connection,
    state: &mut ClientState,
    message: &'static str,
    params: &'static [&'static str],
    arguments: [Encoded<'_>; N],
) -> Result<V, Error> {
    for (i, a) in arguments.iter().enumerate() {
        match a {
            Encoded::Invalid(why) => {
                return Err(argument_error(message, params, i, why.reason().to_owned()));
            }
            // Too long for the wire format's `u32` length: refused before the request's first
            // byte, so the channel stays in step.
            Encoded::Scalar(data) => {
                wire::scalar_header(data.len())
                    .map_err(|e| argument_error(message, params, i, e.to_string()))?;
            }
            _ => {}
        }
    }
    let pid = connection.__pid();
    crate::trace::call(message, pid, || {
        connection.with_channel(|channel| {
            let clock = CallClock::start(channel);
            let r = (|| {
                let inline = arguments.iter().filter_map(|a| match a {
                    Encoded::Element(e) => Some(e.as_bytes()),
                    _ => None,
                });
                clock.arm_or_fail(channel)?;
                channel
                    .write_array(iter::once(message.as_bytes()).chain(inline))
                    .map_err(|e| name_inline_argument(e, message, params, &arguments))?;
                // The request is on the wire: a failure now (e.g. `ETOOMANYREFS` for a
                // descriptor) leaves the server waiting for this value, so it breaks the
                // channel (later calls fail with `Error::Broken` instead of feeding the server
                // the next request as this value).
                for argument in arguments {
                    if !clock.arm(channel) {
                        channel.mark_broken();
                        return Err(clock.expired());
                    }
                    send_after_first_byte(channel, argument)?;
                }
                clock.arm_or_fail(channel)?;
                read_reply_values(channel, state, message, &clock)
            })();
            clock
                .finish(channel, r)
                .map_err(|e| e.in_call(message.as_bytes()))
        })
    })
}

/// How far past its deadline a blocking call may end (see [`CallClock::arm`]).
const CALL_SLACK: std::time::Duration = std::time::Duration::from_millis(2);

/// One deadline for a whole blocking call (request, reply, and every value after it), however
/// its bytes trickle: the channel's per-operation deadlines are set, before each operation, to
/// what is left of the call's (once the call has run for more than [`CALL_SLACK`]), and put
/// back after it.
pub(crate) struct CallClock {
    deadline: Option<std::time::Instant>,
    /// The call's whole deadline (for the error), and the channel's own timeouts.
    full: Option<std::time::Duration>,
    saved: (Option<std::time::Duration>, Option<std::time::Duration>),
}

impl CallClock {
    /// The clock of a call starting now on `channel` (whose timeouts give its length).
    pub(crate) fn start(channel: &Channel) -> CallClock {
        let saved = (channel.read_timeout(), channel.write_timeout());
        let full = match saved {
            (Some(r), Some(w)) => Some(r.max(w)),
            (r, w) => r.or(w),
        };
        CallClock {
            deadline: full.map(|t| std::time::Instant::now() + t),
            full,
            saved,
        }
    }

    /// Sets the channel's deadlines to what is left of the call's; `false` if nothing is.
    pub(crate) fn arm(&self, channel: &mut Channel) -> bool {
        let Some(deadline) = self.deadline else {
            return true;
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        // Early in the call the channel keeps its own deadlines (the call's whole one): setting
        // `left` would change the socket's receive time-out, one `setsockopt` per call, to save
        // a few microseconds. So a call may overrun its deadline by up to `CALL_SLACK`. Once
        // re-armed (time goes one way), it is re-armed before every later operation.
        let whole = |t: Option<std::time::Duration>| t.is_none() || t == self.full;
        if whole(self.saved.0)
            && whole(self.saved.1)
            && self
                .full
                .is_some_and(|full| full.saturating_sub(left) < CALL_SLACK)
        {
            return true;
        }
        channel.set_read_timeout(self.saved.0.map(|_| left));
        channel.set_write_timeout(self.saved.1.map(|_| left));
        true
    }

    /// [`arm`](Self::arm), failing with the time-out when the call's time is up.
    pub(crate) fn arm_or_fail(&self, channel: &mut Channel) -> Result<(), Error> {
        if self.arm(channel) {
            Ok(())
        } else {
            Err(self.expired())
        }
    }

    /// The error of a call whose time is up before its next operation.
    pub(crate) fn expired(&self) -> Error {
        Error::timed_out(
            crate::error::Operation::ReadReply,
            self.full.unwrap_or_default(),
        )
    }

    /// Puts the channel's deadlines back; a time-out reports the call's whole deadline.
    pub(crate) fn finish<T>(&self, channel: &mut Channel, r: Result<T, Error>) -> Result<T, Error> {
        channel.set_read_timeout(self.saved.0);
        channel.set_write_timeout(self.saved.1);
        r.map_err(|e| match e {
            Error::TimedOut {
                operation,
                message,
                timeout: _,
            } if self.full.is_some() => Error::TimedOut {
                operation,
                message,
                timeout: self.full.unwrap_or_default(),
            },
            e => e,
        })
    }
}

/// The async client's call (feature `tokio`): [`call`]'s checks, then the request and the reply
/// through the runtime. Dropped at any `.await`, it leaves the connection as
/// `AsyncChannel::settle` expects: nothing sent (nothing to do), part of the request sent
/// (broken), or the reply due (read and dropped by the next call).
#[cfg(feature = "tokio")]
pub async fn call_async<V: FromValues, const N: usize>(
    connection: &mut impl crate::AsyncConnection,
    state: &mut ClientState,
    message: &'static str,
    params: &'static [&'static str],
    arguments: [Encoded<'_>; N],
) -> Result<V, Error> {
    for (i, a) in arguments.iter().enumerate() {
        match a {
            Encoded::Invalid(why) => {
                return Err(argument_error(message, params, i, why.reason().to_owned()));
            }
            Encoded::Scalar(data) => {
                wire::scalar_header(data.len())
                    .map_err(|e| argument_error(message, params, i, e.to_string()))?;
            }
            _ => {}
        }
    }
    let pid = connection.__pid();
    // The span's outcome is what the caller gets: the error after `call_failed` maps it.
    crate::trace::call_async(message, pid, async {
        let r = async {
            let channel = connection.channel();
            channel.begin_call();
            channel.settle().await?;
            channel
                .send_request(message, &arguments, V::__FORMS)
                .await
                .map_err(|e| name_inline_argument(e, message, params, &arguments))?;
            let ClientState { reply, store } = state;
            channel.receive_reply(reply, store).await?;
            let mut decoder = Decoder::prefilled(reply.message(), message, V::__FORMS, store);
            let values = V::__decode(&mut decoder);
            decoder.finish_reply()?;
            values.ok_or_else(|| bad_reply(format_args!("{message}: reply values missing")))
        }
        .await;
        match r {
            Ok(v) => Ok(v),
            Err(e) => Err(connection.call_failed(e.in_call(message.as_bytes())).await),
        }
    })
    .await
}

/// [`call_async`] for a `typed_errors` handler.
#[cfg(feature = "tokio")]
pub async fn call_async_typed<V: FromValues, E: WireError, const N: usize>(
    connection: &mut impl crate::AsyncConnection,
    state: &mut ClientState,
    message: &'static str,
    params: &'static [&'static str],
    arguments: [Encoded<'_>; N],
) -> Result<V, CallError<E>> {
    call_async(connection, state, message, params, arguments)
        .await
        .map_err(CallError::from_error)
}

/// Expands to its input with fdserver's `tokio` feature, to nothing without it: the async items
/// `#[fdserver]` generates go through it (a proc macro cannot see its runtime crate's features).
#[cfg(feature = "tokio")]
#[doc(hidden)]
#[macro_export]
macro_rules! __fdserver_if_tokio {
    ($($t:tt)*) => { $($t)* };
}

/// See the `tokio` version.
#[cfg(not(feature = "tokio"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __fdserver_if_tokio {
    ($($t:tt)*) => {};
}

pub use crate::__fdserver_if_tokio as if_tokio;

/// [`call`] for a `typed_errors` handler: an error reply of `E`'s becomes
/// [`CallError::Handler`].
pub fn call_typed<V: FromValues, E: WireError, const N: usize>(
    connection: &mut impl Connection,
    state: &mut ClientState,
    message: &'static str,
    params: &'static [&'static str],
    arguments: [Encoded<'_>; N],
) -> Result<V, CallError<E>> {
    call(connection, state, message, params, arguments).map_err(CallError::from_error)
}

/// Reads and decodes the reply to the call just sent. Its scalars (an `ok_scalar` body, a
/// `Vec<u8>` or `String` result) are accepted at any size the wire can carry: the channel's
/// scalar limit bounds what arrives unasked, not the result the call asked for (see
/// [`args`](crate::args#large-results)).
fn read_reply_values<V: FromValues>(
    channel: &mut Channel,
    state: &mut ClientState,
    message: &'static str,
    clock: &CallClock,
) -> Result<V, Error> {
    let limit = channel.max_scalar_size();
    channel.set_max_scalar_size(crate::channel::REPLY_MAX_SCALAR);
    let r = decode_reply_values(channel, state, message, clock);
    channel.set_max_scalar_size(limit);
    r
}

fn decode_reply_values<V: FromValues>(
    channel: &mut Channel,
    state: &mut ClientState,
    message: &'static str,
    clock: &CallClock,
) -> Result<V, Error> {
    let ClientState { reply, store } = state;
    let (msg, fd) = if V::__FIRST_OUT_OF_BAND_IS_FD {
        let (msg, fd) = channel.read_reply_with_fd(reply)?;
        (msg, Some(fd))
    } else {
        (channel.read_reply(reply)?, None)
    };
    let mut decoder = Decoder::new(
        channel,
        msg,
        Target::Reply { message },
        V::__FORMS,
        store,
        fd,
        Some(clock),
    );
    let values = V::__decode(&mut decoder);
    decoder.finish_reply()?;
    values.ok_or_else(|| bad_reply(format_args!("{message}: reply values missing")))
}

/// `#[derive(WireError)]`: the error reply for a variant with code `code`.
pub fn wire_error_reply(
    code: &'static str,
    error: &dyn fmt::Display,
    details: Vec<Vec<u8>>,
) -> RemoteError {
    RemoteError::new(RemoteErrorKind::from_wire(code), error.to_string()).with_details(details)
}

/// `#[derive(WireError)]`: fails the build for a field that would not travel inline.
pub const fn wire_error_field_is_inline(form: Form) {
    if !matches!(form, Form::Inline) {
        panic!(
            "a field of a `#[derive(WireError)]` type must travel inline (strings, numbers, \
             paths, `Option`s of those, `display_fromstr_arg!` types): the error reply is one \
             array message, so byte payloads, lists, JSON values and descriptors cannot be fields"
        )
    }
}

/// `#[derive(WireError)]`: one field as an element (fields travel inline).
pub fn wire_error_detail<T: ToArg + ?Sized>(value: &T) -> Vec<u8> {
    match value.to_arg() {
        Encoded::Element(e) => e.as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

/// `#[derive(WireError)]`: the reply has exactly `n` details.
pub fn wire_error_count(remote: &RemoteError, n: usize) -> Result<(), ArgError> {
    match remote.details().len() {
        got if got == n => Ok(()),
        got => Err(ArgError::new(format_args!(
            "expected {n} field(s), got {got}"
        ))),
    }
}

/// `#[derive(WireError)]`: field number `index` (`what`, for the error message).
pub fn wire_error_field<T>(remote: &RemoteError, index: usize, what: &str) -> Result<T, ArgError>
where
    T: for<'a> FromArg<'a>,
{
    let bytes = remote
        .details()
        .get(index)
        .ok_or_else(|| ArgError::new(format_args!("{what} is missing")))?;
    T::from_arg(Received::Element(bytes))
        .map_err(|e| ArgError::new(format_args!("{what}: {e} (got {})", quote(bytes))))
}

/// What an `initialize` hook may return.
#[diagnostic::on_unimplemented(
    message = "an fdserver `initialize` hook must return `()` or `Result<(), E>`, not `{Self}`",
    label = "return `()`, or `Result<(), E>` whose `E` converts into `Box<dyn Error + Send + Sync>`"
)]
pub trait HookResult {
    /// The result as the `Server` trait wants it.
    fn into_hook_result(self) -> Result<(), BoxError>;
}

impl HookResult for () {
    fn into_hook_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E: Into<BoxError>> HookResult for Result<(), E> {
    fn into_hook_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// Converts an `initialize` hook's result.
pub fn hook_result<R: HookResult>(r: R) -> Result<(), BoxError> {
    r.into_hook_result()
}

/// What a `#[fdserver(sandbox)]` hook may return: a [`Sandbox`](crate::sandbox::Sandbox), or
/// an `Option` of one (`None`: no sandbox).
#[cfg(feature = "sandbox")]
#[diagnostic::on_unimplemented(
    message = "an fdserver `sandbox` hook must return `fdserver::sandbox::Sandbox` or `Option<Sandbox>`, not `{Self}`",
    label = "return a `Sandbox` (or `Option<Sandbox>`, `None` for no sandbox)"
)]
pub trait SandboxResult {
    /// The result as the `Server` trait wants it.
    fn into_sandbox(self) -> Option<crate::sandbox::Sandbox>;
}

#[cfg(feature = "sandbox")]
impl SandboxResult for crate::sandbox::Sandbox {
    fn into_sandbox(self) -> Option<crate::sandbox::Sandbox> {
        Some(self)
    }
}

#[cfg(feature = "sandbox")]
impl SandboxResult for Option<crate::sandbox::Sandbox> {
    fn into_sandbox(self) -> Option<crate::sandbox::Sandbox> {
        self
    }
}

/// Converts a `sandbox` hook's result.
#[cfg(feature = "sandbox")]
pub fn sandbox_result<R: SandboxResult>(r: R) -> Option<crate::sandbox::Sandbox> {
    r.into_sandbox()
}

/// Emits the `sandbox` method a `#[fdserver(sandbox)]` hook generates, with the feature on.
#[cfg(feature = "sandbox")]
#[doc(hidden)]
#[macro_export]
macro_rules! __fdserver_with_sandbox_feature {
    ($($item:tt)*) => { $($item)* };
}

/// Without the feature, a `#[fdserver(sandbox)]` hook is an error that says what to enable.
#[cfg(not(feature = "sandbox"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __fdserver_with_sandbox_feature {
    ($($item:tt)*) => {
        ::core::compile_error!(
            "`#[fdserver(sandbox)]` needs fdserver's `sandbox` feature: \
             fdserver = { version = \"...\", features = [\"sandbox\"] }"
        );
    };
}
