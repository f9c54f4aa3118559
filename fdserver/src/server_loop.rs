//! The server loop: wait for a message or a signal, dispatch it, reply, repeat.

use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::channel::Channel;
use crate::error::{Error, RemoteError, RemoteErrorKind};
use crate::server::{Context, LoopEnd, Server};
use crate::signal::Signal;
use crate::sys;
use crate::wire::MessageBuf;

/// Which signals the server loop owns, computed before the fork.
pub(crate) struct SignalPlan {
    /// Bit n: the server declared a handler for signal n.
    pub(crate) declared: u64,
    /// Bit n: the child sets signal n itself after resetting the others (SIGHUP, SIGPIPE and
    /// the caught ones).
    pub(crate) preset: u64,
    /// The highest signal number (asked of the C library in the parent).
    pub(crate) sigmax: libc::c_int,
    /// Signals the loop catches (declared + SIGTERM + SIGINT), with a flag handler.
    pub(crate) caught: libc::sigset_t,
    /// The signal mask the loop runs with: `caught` unblocked.
    pub(crate) run_mask: libc::sigset_t,
}

impl SignalPlan {
    pub(crate) fn new(signals: &[Signal]) -> Self {
        let mut declared = 0u64;
        let mut caught = sys::sigset(false);
        for s in signals {
            let n = *s as i32;
            declared |= 1 << n;
            sys::sigset_add(&mut caught, n);
        }
        sys::sigset_add(&mut caught, libc::SIGTERM);
        sys::sigset_add(&mut caught, libc::SIGINT);
        let preset = declared
            | 1 << libc::SIGHUP
            | 1 << libc::SIGPIPE
            | 1 << libc::SIGTERM
            | 1 << libc::SIGINT;
        SignalPlan {
            declared,
            preset,
            sigmax: sys::sigmax(),
            caught,
            run_mask: sys::sigset(false),
        }
    }

    pub(crate) fn declares(&self, sig: i32) -> bool {
        self.declared & (1 << sig) != 0
    }

    /// The signals that end the loop: SIGTERM and SIGINT, unless the server handles them.
    pub(crate) fn stop_mask(&self) -> u64 {
        [libc::SIGTERM, libc::SIGINT]
            .into_iter()
            .filter(|&sig| !self.declares(sig))
            .fold(0, |mask, sig| mask | 1 << sig)
    }

    pub(crate) fn each_caught(&self, mut f: impl FnMut(i32)) {
        for sig in 1..64 {
            // SAFETY: `caught` is an initialised sigset; sigismember only reads it.
            if unsafe { libc::sigismember(&self.caught, sig) } == 1 {
                f(sig);
            }
        }
    }
}

/// The server loop: wait for a message or a signal, dispatch, repeat.
///
/// SIGTERM and SIGINT (unless declared) end it in every state: every wait of the channel's reads
/// and writes, the loop's and its handlers', also watches for them (see
/// [`sys::wait_loop_socket`]), so a half-read message or a reply blocked on a client that does
/// not read is abandoned, and the loop ends with [`LoopEnd::Signal`].
pub(crate) fn run_loop<S: Server>(
    server: &mut S,
    channel: &mut Channel,
    buf: &mut MessageBuf,
    plan: &SignalPlan,
) -> LoopEnd {
    sys::set_wait_socket(channel.socket());
    sys::set_stop_signals(plan.stop_mask());
    channel.set_stop_on_signal(true);
    let wait_in_recv = channel.can_wait_in_recv() && sys::set_idle_socket(Some(channel.socket()));
    let end = serve_messages(server, channel, buf, plan, wait_in_recv);
    if wait_in_recv {
        sys::set_idle_socket(None);
    }
    channel.set_stop_on_signal(false);
    sys::set_stop_signals(0);
    end
}

fn serve_messages<S: Server>(
    server: &mut S,
    channel: &mut Channel,
    buf: &mut MessageBuf,
    plan: &SignalPlan,
    wait_in_recv: bool,
) -> LoopEnd {
    loop {
        // Arm the wait before looking at the flags: a signal landing between the check and the
        // wait then makes the wait return at once (see `sys::arm_wait`, `sys::arm_idle_wake`).
        sys::arm_wait();
        if wait_in_recv {
            sys::arm_idle_wake();
        }
        let pending = sys::take_pending();
        if pending != 0 {
            for sig in 1..64 {
                if pending & (1 << sig) == 0 {
                    continue;
                }
                if plan.declares(sig) {
                    let Ok(signal) = Signal::try_from(sig) else {
                        continue;
                    };
                    let mut ctx = Context::new(channel);
                    let r = catch_unwind(AssertUnwindSafe(|| {
                        server.handle_signal(&mut ctx, signal);
                        ctx.quitting()
                    }));
                    if matches!(r, Ok(true)) {
                        return LoopEnd::Quit;
                    }
                } else if sig == libc::SIGTERM || sig == libc::SIGINT {
                    return LoopEnd::Signal(Signal::try_from(sig).unwrap_or(Signal::SIGTERM));
                }
            }
            // Signal handlers may take long; look again before the next message.
            continue;
        }

        // A message the channel already read ahead (the client sent more than one) needs no
        // wait; signals were looked at above all the same.
        if channel.buffered() == 0 && wait_in_recv {
            // On a record socket: inside `recvmsg` itself (see `sys::set_idle_socket`).
            match channel.wait_in_recv() {
                // A signal that arrived with the request goes first; the request stays buffered.
                Ok(true) if sys::signals_pending() => continue,
                Ok(true) => {}
                Ok(false) => continue, // a signal: handled at the top of the loop
                Err(e) if e.is_disconnect() => return LoopEnd::Disconnected,
                Err(e) => return LoopEnd::ChannelFailed(e.to_string()),
            }
        } else if channel.buffered() == 0 {
            match sys::wait_readable_or_signal() {
                // A signal delivered as `poll` returned (or while the last handler ran) goes
                // before the message waiting on the socket.
                Ok(true) if sys::signals_pending() => continue,
                Ok(true) => {}
                Ok(false) => continue, // a signal: handled at the top of the loop
                Err(e) => return LoopEnd::ChannelFailed(e.to_string()),
            }
        }

        match channel.read_into(buf) {
            Ok(true) => {}
            // SIGTERM or SIGINT in the middle of a message: ended at the top of the loop.
            Err(_) if sys::stop_requested().is_some() => continue,
            Ok(false) => return LoopEnd::Disconnected,
            Err(e) if e.is_disconnect() => return LoopEnd::Disconnected,
            Err(e) if !channel.is_broken() && !matches!(e, Error::TimedOut { .. }) => {
                // A malformed but complete frame: say so, and keep serving.
                let err = RemoteError::new(RemoteErrorKind::Protocol, e.to_string());
                if let Err(e) = channel.write_error(&err) {
                    return end_for(e);
                }
                continue;
            }
            Err(Error::TimedOut { .. }) => continue,
            Err(e) => {
                // The frame cannot be skipped (a descriptor glued to its bytes, a failed read
                // part-way): say why, then close.
                last_word(channel, RemoteErrorKind::Protocol, &e.to_string());
                return LoopEnd::ChannelFailed(e.to_string());
            }
        }

        let writes_before = channel.writes();
        let msg = buf.message();
        let mut ctx = Context::new(channel);
        let traced = crate::trace::Handled::begin(msg.name());
        let outcome = traced.run(|| {
            catch_unwind(AssertUnwindSafe(|| {
                let r = server.handle(&mut ctx, msg);
                (r, ctx.quitting())
            }))
        });
        traced.end(match &outcome {
            Ok((Ok(()), _)) => "ok",
            Ok((Err(_), _)) => "error",
            Err(_) => "panicked",
        });
        let failed = !matches!(outcome, Ok((Ok(()), _))) || channel.is_broken();
        if failed && sys::stop_requested().is_some() {
            // The handler's channel operation was cut short by SIGTERM or SIGINT (or it failed
            // as they arrived): no reply, the loop ends at its top.
            continue;
        }
        let quit = match outcome {
            Ok((Ok(()), quit)) => quit,
            Ok((Err(err), quit)) => {
                if channel.peer_gone() {
                    return LoopEnd::Disconnected;
                }
                if channel.writes() != writes_before {
                    // The handler began its reply: an error reply now would be a second one,
                    // which the client would read as the answer to its next request. The stream
                    // cannot be repaired, so it is closed, as after a panic part-way through.
                    return LoopEnd::ChannelFailed(format!(
                        "the handler for {:?} returned an error after it had begun its reply \
                         ({err}); the connection was closed",
                        String::from_utf8_lossy(buf.message().name())
                    ));
                }
                if channel.is_broken() {
                    // Broken on the read side (an oversized scalar, data where a descriptor was
                    // due): nothing was written for this request, so one last message can
                    // still tell the client why the connection closes.
                    last_word(channel, RemoteErrorKind::Protocol, err.message());
                    return LoopEnd::ChannelFailed(err.to_string());
                }
                if let Err(e) = channel.write_error(&err) {
                    return end_for(e);
                }
                quit
            }
            Err(panic) => {
                let text = format!(
                    "handler for {:?} panicked: {}",
                    String::from_utf8_lossy(buf.message().name()),
                    panic_message(&*panic)
                );
                if channel.writes() != writes_before {
                    return LoopEnd::PanickedMidReply;
                }
                if channel.is_broken() {
                    last_word(channel, RemoteErrorKind::Panicked, &text);
                    return LoopEnd::PanickedMidReply;
                }
                let err = RemoteError::new(RemoteErrorKind::Panicked, text);
                if let Err(e) = channel.write_error(&err) {
                    return end_for(e);
                }
                false
            }
        };
        if quit {
            return LoopEnd::Quit;
        }
        if channel.peer_gone() {
            return LoopEnd::Disconnected;
        }
        if channel.is_broken() {
            if channel.writes() == writes_before {
                last_word(
                    channel,
                    RemoteErrorKind::Protocol,
                    "the handler left the request stream out of step",
                );
            }
            return LoopEnd::ChannelFailed("channel broken by a handler".into());
        }
    }
}

/// The last message on a stream that cannot be resynchronised: `["error", kind, why]`, so that
/// the peer (a Ruby `MessageChannel` reads `nil` otherwise) learns why the connection closes.
/// Written only if the write direction is still in step; failures are ignored (the connection
/// closes either way).
fn last_word(channel: &mut Channel, kind: RemoteErrorKind, why: &str) {
    let text =
        format!("{why} (the server closes the connection: the stream cannot be resynchronised)");
    let _ = channel.write_last_error(&RemoteError::new(kind, text));
}

fn end_for(e: Error) -> LoopEnd {
    if e.is_disconnect() {
        LoopEnd::Disconnected
    } else {
        LoopEnd::ChannelFailed(e.to_string())
    }
}

pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
