//! Support for the code that `#[fdserver]` generates. Not a public API: nothing here is covered
//! by semver, and only generated code should call it.

use std::fmt::{self, Write as _};
use std::iter;
use std::os::fd::OwnedFd;

use crate::args::{Element, Encoded, Form, FromArg, FromValues, Received, Reply, ToArg, ToValues};
use crate::channel::Channel;
use crate::error::{Error, ProtocolError, RemoteError, RemoteErrorKind};
use crate::server::{BoxError, Context};
use crate::wire::{self, Message, MessageBuf};

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

/// How much of an offending element an error message quotes.
const QUOTE_MAX: usize = 60;

/// The generated client's per-connection state: a reply buffer reused across calls.
#[derive(Debug, Default)]
pub struct ClientState {
    reply: MessageBuf,
}

impl ClientState {
    /// A fresh state.
    pub fn new() -> Self {
        Self::default()
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
/// from the message's elements, out-of-band values from the channel, in order.
///
/// Every out-of-band value is received even after an earlier value failed to decode, so that
/// the stream stays in step; the first failure is reported by `finish_*`.
pub struct Decoder<'m, 'c> {
    msg: Message<'m>,
    channel: &'c mut Channel,
    target: Target,
    next: usize,
    inline_mask: u64,
    inline_count: usize,
    failure: Option<Failure>,
    receiving: bool,
    /// A descriptor read together with the reply (see `Channel::read_reply_with_fd`): the
    /// first out-of-band value, handed out instead of reading one.
    prefetched_fd: Option<OwnedFd>,
}

impl<'m, 'c> Decoder<'m, 'c> {
    /// Decodes the arguments of the request `msg` to `message`.
    pub fn request(
        ctx: &'c mut Context<'_>,
        msg: Message<'m>,
        message: &'static str,
        params: &'static [&'static str],
    ) -> Self {
        Self::new(ctx.channel(), msg, Target::Request { message, params })
    }

    fn new(channel: &'c mut Channel, msg: Message<'m>, target: Target) -> Self {
        Decoder {
            msg,
            channel,
            target,
            next: 1,
            inline_mask: 0,
            inline_count: 0,
            failure: None,
            receiving: true,
            prefetched_fd: None,
        }
    }

    /// Decodes value number `index` (`None` if it, or an earlier value, failed).
    pub fn take<T: FromArg>(&mut self, index: usize) -> Option<T> {
        match T::FORM {
            Form::Inline => {
                self.inline_count += 1;
                if index < 64 {
                    self.inline_mask |= 1 << index;
                }
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
            Form::Scalar => {
                let received = self.receive(index, |ch| {
                    let mut data = Vec::new();
                    Ok(ch.read_scalar_into(&mut data)?.then_some(data))
                })?;
                self.convert(index, Received::Scalar(received))
            }
            Form::Fd => {
                let received = match self.prefetched_fd.take() {
                    Some(fd) => fd,
                    None => self.receive(index, Channel::recv_fd)?,
                };
                self.convert(index, Received::Fd(received))
            }
        }
    }

    fn receive<R>(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut Channel) -> Result<Option<R>, Error>,
    ) -> Option<R> {
        if !self.receiving || self.channel.is_broken() {
            return None;
        }
        let error = match f(self.channel) {
            Ok(Some(r)) => return Some(r),
            Ok(None) => Error::Disconnected,
            Err(e) => e,
        };
        // After a disconnect or a broken stream nothing more can be read.
        if error.is_disconnect() || self.channel.is_broken() {
            self.receiving = false;
        }
        if !matches!(self.failure, Some(Failure::Receive { .. })) {
            self.failure = Some(Failure::Receive { index, error });
        }
        None
    }

    fn convert<T: FromArg>(&mut self, index: usize, received: Received<'_>) -> Option<T> {
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

/// The error a handler arm returns if its arguments vanished after a successful decode (a bug).
pub fn internal(message: &str) -> RemoteError {
    RemoteError::failed(format_args!(
        "{message}: internal error: arguments decoded but missing"
    ))
}

/// Sends a handler's return value: `["ok", inline values...]`, then its out-of-band values; or
/// the error reply for `Err`.
///
/// What can be checked before the first byte is (a scalar too long for the wire format's `u32`
/// length), so that such a failure is an ordinary error reply and the server keeps serving.
/// A failure after the first byte (a descriptor the kernel refuses to pass) marks the channel
/// broken: the loop then closes the connection rather than answer twice.
pub fn reply<R: Reply>(ctx: &mut Context<'_>, ret: R) -> Result<(), RemoteError> {
    let values = ret.into_reply()?;
    let len = <R::Ok as ToValues>::__LEN;
    for i in (0..len).filter(|&i| <R::Ok as ToValues>::__form(i) == Form::Scalar) {
        if let Encoded::Scalar(data) = values.__encode(i) {
            wire::scalar_header(data.len())?;
        }
    }
    let inline = (0..len)
        .filter(|&i| <R::Ok as ToValues>::__form(i) == Form::Inline)
        .map(|i| match values.__encode(i) {
            Encoded::Element(e) => e,
            _ => Element::bytes(b""),
        });
    let mut out_of_band = (0..len).filter(|&i| <R::Ok as ToValues>::__form(i) != Form::Inline);
    match out_of_band.next() {
        // The reply and a first descriptor leave in one system call.
        Some(first) => match values.__encode(first) {
            Encoded::Fd(fd) => ctx.channel().write_ok_with_fd(inline, fd)?,
            other => {
                ctx.reply(inline)?;
                send_after_first_byte(ctx.channel(), other)?;
            }
        },
        None => ctx.reply(inline)?,
    }
    for i in out_of_band {
        send_after_first_byte(ctx.channel(), values.__encode(i))?;
    }
    Ok(())
}

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
        Encoded::Scalar(data) => channel.write_scalar(data),
        Encoded::Fd(fd) => channel.send_fd(fd),
        Encoded::Element(_) => Ok(()),
    }
}

/// Encodes a client argument, once, for [`send_request`] and [`send_out_of_band`].
pub fn encode<T: ToArg + ?Sized>(value: &T) -> Encoded<'_> {
    value.to_arg()
}

/// Writes the request array `[message, inline arguments...]`, after checking what can be
/// checked of the out-of-band arguments that follow it (a scalar too long for the wire format's
/// `u32` length): a call that fails before its first byte leaves the channel in step.
pub fn send_request<const N: usize>(
    channel: &mut Channel,
    message: &str,
    arguments: [&Encoded<'_>; N],
) -> Result<(), Error> {
    for a in arguments {
        if let Encoded::Scalar(data) = a {
            wire::scalar_header(data.len())?;
        }
    }
    let inline = arguments.into_iter().filter_map(|a| match a {
        Encoded::Element(e) => Some(e.as_bytes()),
        _ => None,
    });
    channel
        .write_array(iter::once(message.as_bytes()).chain(inline))
        .map_err(|e| e.in_call(message.as_bytes()))
}

/// Sends a client argument of the call to `message` after the request array if it is
/// out-of-band. The request is on the wire by then: a failure (e.g. `ETOOMANYREFS` for a
/// descriptor) leaves the server waiting for this value, so it marks the channel broken, and
/// later calls fail with [`Error::Broken`] instead of feeding the server the next request as
/// this value.
pub fn send_out_of_band(
    channel: &mut Channel,
    message: &str,
    argument: Encoded<'_>,
) -> Result<(), Error> {
    send_after_first_byte(channel, argument).map_err(|e| e.in_call(message.as_bytes()))
}

/// Reads the reply to `message` and decodes its values.
pub fn read_reply<V: FromValues>(
    channel: &mut Channel,
    state: &mut ClientState,
    message: &'static str,
) -> Result<V, Error> {
    read_reply_values(channel, state, message).map_err(|e| e.in_call(message.as_bytes()))
}

fn read_reply_values<V: FromValues>(
    channel: &mut Channel,
    state: &mut ClientState,
    message: &'static str,
) -> Result<V, Error> {
    let (msg, fd) = if V::__FIRST_OUT_OF_BAND_IS_FD {
        let (msg, fd) = channel.read_reply_with_fd(&mut state.reply)?;
        (msg, Some(fd))
    } else {
        (channel.read_reply(&mut state.reply)?, None)
    };
    let mut decoder = Decoder::new(channel, msg, Target::Reply { message });
    decoder.prefetched_fd = fd;
    let values = V::__decode(&mut decoder);
    decoder.finish_reply()?;
    values.ok_or_else(|| bad_reply(format_args!("{message}: reply values missing")))
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
