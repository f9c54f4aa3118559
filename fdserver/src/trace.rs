//! Observability with the `tracing` feature: a span per call on the client, a span per handled
//! message in the server, events when servers start, stop and are restarted. Without the
//! feature every function here is empty and compiles away.
//!
//! Everything is emitted under the target `fdserver` (the crate docs' "Cargo features" show the
//! same table to users; keep both in step):
//!
//! | what | kind, level | fields |
//! |---|---|---|
//! | a client call | span `call`, DEBUG; then an event: DEBUG, or WARN when the server must be replaced | `message`, `pid` (for a started server), `outcome` (`ok`, the error the caller gets, or `cancelled` for an async call whose future was dropped), `micros` |
//! | a handled message (in the server) | span `handle`, DEBUG; then a DEBUG event | `message`, `pid`, `outcome` (`ok`, `error`, `panicked`), `micros` |
//! | a server started | event, DEBUG | `pid`, `server` (its type) |
//! | a start that failed | event, WARN | `server`, `error` |
//! | a server stopped (or found exited and reaped) | event, DEBUG (WARN when it had to be killed) | `pid`, `how`, `status` |
//! | a pool's server restarted, or given up on | event, INFO / WARN | `index`, `pid`, `restarts`, `reason` |

#[cfg(feature = "tracing")]
mod imp {
    use std::time::Instant;

    use crate::client::{Shutdown, Stopped};
    use crate::error::Error;

    /// Runs one client call inside a `call` span and reports its outcome.
    pub(crate) fn call<R>(
        message: &str,
        pid: Option<u32>,
        f: impl FnOnce() -> Result<R, Error>,
    ) -> Result<R, Error> {
        let span = tracing::debug_span!(
            target: "fdserver",
            "call",
            message,
            pid,
            outcome = tracing::field::Empty,
            micros = tracing::field::Empty,
        );
        if span.is_disabled() {
            return f();
        }
        let started = Instant::now();
        let r = span.in_scope(f);
        let micros = started.elapsed().as_micros() as u64;
        span.record("micros", micros);
        span.in_scope(|| match &r {
            Ok(_) => {
                span.record("outcome", "ok");
                tracing::debug!(target: "fdserver", micros, "call ok");
            }
            Err(e) => {
                span.record("outcome", tracing::field::display(e));
                if e.needs_restart() {
                    tracing::warn!(target: "fdserver", micros, error = %e, "call failed; the server must be replaced");
                } else {
                    tracing::debug!(target: "fdserver", micros, error = %e, "call failed");
                }
            }
        });
        r
    }

    /// Runs one async client call inside a `call` span and reports its outcome.
    #[cfg(feature = "tokio")]
    pub(crate) async fn call_async<R>(
        message: &str,
        pid: Option<u32>,
        f: impl std::future::Future<Output = Result<R, Error>>,
    ) -> Result<R, Error> {
        use tracing::Instrument;
        let span = tracing::debug_span!(
            target: "fdserver",
            "call",
            message,
            pid,
            outcome = tracing::field::Empty,
            micros = tracing::field::Empty,
        );
        if span.is_disabled() {
            return f.await;
        }
        let started = Instant::now();
        // Should the call's future be dropped before it ends, its span says so.
        struct Cancelled<'a>(Option<(&'a tracing::Span, Instant)>);
        impl Drop for Cancelled<'_> {
            fn drop(&mut self) {
                if let Some((span, started)) = self.0.take() {
                    let micros = started.elapsed().as_micros() as u64;
                    span.record("outcome", "cancelled");
                    span.record("micros", micros);
                    span.in_scope(|| {
                        tracing::debug!(target: "fdserver", micros, "call cancelled (its future was dropped)")
                    });
                }
            }
        }
        let mut cancelled = Cancelled(Some((&span, started)));
        let r = f.instrument(span.clone()).await;
        cancelled.0 = None;
        let micros = started.elapsed().as_micros() as u64;
        span.record("micros", micros);
        let _entered = span.enter();
        match &r {
            Ok(_) => {
                span.record("outcome", "ok");
                tracing::debug!(target: "fdserver", micros, "call ok");
            }
            Err(e) => {
                span.record("outcome", tracing::field::display(e));
                if e.needs_restart() {
                    tracing::warn!(target: "fdserver", micros, error = %e, "call failed; the server must be replaced");
                } else {
                    tracing::debug!(target: "fdserver", micros, error = %e, "call failed");
                }
            }
        }
        r
    }

    /// A handled message in the server: its span, entered until `end`.
    pub(crate) struct Handled {
        span: tracing::Span,
        started: Option<Instant>,
    }

    impl Handled {
        pub(crate) fn begin(name: &[u8]) -> Handled {
            // The fields are computed only when the span is enabled.
            let span = tracing::debug_span!(
                target: "fdserver",
                "handle",
                message = %String::from_utf8_lossy(name),
                pid = std::process::id(),
                outcome = tracing::field::Empty,
                micros = tracing::field::Empty,
            );
            let started = (!span.is_disabled()).then(Instant::now);
            Handled { span, started }
        }

        /// Runs `f` inside the span.
        pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
            self.span.in_scope(f)
        }

        pub(crate) fn end(self, outcome: &'static str) {
            let Some(started) = self.started else { return };
            let micros = started.elapsed().as_micros() as u64;
            self.span.record("outcome", outcome);
            self.span.record("micros", micros);
            self.span.in_scope(
                || tracing::debug!(target: "fdserver", outcome, micros, "message handled"),
            );
        }
    }

    pub(crate) fn started(pid: u32, server: &str) {
        tracing::debug!(target: "fdserver", pid, server, "server started");
    }

    pub(crate) fn start_failed(server: &str, error: &Error) {
        tracing::warn!(target: "fdserver", server, error = %error, "server failed to start");
    }

    pub(crate) fn stopped(pid: u32, stopped: &Stopped) {
        let how = format!("{:?}", stopped.how);
        if stopped.how == Shutdown::Killed {
            tracing::warn!(target: "fdserver", pid, how, status = %stopped.status, "server stopped: {stopped}");
        } else {
            tracing::debug!(target: "fdserver", pid, how, status = %stopped.status, "server stopped");
        }
    }

    pub(crate) fn pool_restarted(index: usize, pid: u32, restarts: u64, reason: Option<&str>) {
        tracing::info!(target: "fdserver", index, pid, restarts, reason, "pool restarted a server");
    }

    pub(crate) fn pool_gave_up(index: usize, failures: u32, reason: Option<&str>) {
        tracing::warn!(target: "fdserver", index, failures, reason, "pool gave up restarting a server");
    }
}

#[cfg(not(feature = "tracing"))]
mod imp {
    use crate::client::Stopped;
    use crate::error::Error;

    #[inline(always)]
    pub(crate) fn call<R>(
        _: &str,
        _: Option<u32>,
        f: impl FnOnce() -> Result<R, Error>,
    ) -> Result<R, Error> {
        f()
    }

    #[cfg(feature = "tokio")]
    #[inline(always)]
    pub(crate) async fn call_async<R>(
        _: &str,
        _: Option<u32>,
        f: impl std::future::Future<Output = Result<R, Error>>,
    ) -> Result<R, Error> {
        f.await
    }

    pub(crate) struct Handled;

    impl Handled {
        #[inline(always)]
        pub(crate) fn begin(_: &[u8]) -> Handled {
            Handled
        }

        #[inline(always)]
        pub(crate) fn run<R>(&self, f: impl FnOnce() -> R) -> R {
            f()
        }

        #[inline(always)]
        pub(crate) fn end(self, _: &'static str) {}
    }

    #[inline(always)]
    pub(crate) fn started(_: u32, _: &str) {}

    #[inline(always)]
    pub(crate) fn start_failed(_: &str, _: &Error) {}

    #[inline(always)]
    pub(crate) fn stopped(_: u32, _: &Stopped) {}

    #[inline(always)]
    pub(crate) fn pool_restarted(_: usize, _: u32, _: u64, _: Option<&str>) {}

    #[inline(always)]
    pub(crate) fn pool_gave_up(_: usize, _: u32, _: Option<&str>) {}
}

pub(crate) use imp::*;
