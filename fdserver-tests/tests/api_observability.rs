//! Issue 13, item 7: a server's panics say they come from the server (its name and pid), and
//! with the `tracing` feature, calls, handled messages, starts, stops and pool restarts are
//! spans and events.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;

use fdserver_tests::{fork_child, pipe, wait_child, watchdog, SECS};

struct Panicker;

#[fdserver::fdserver]
impl Panicker {
    fn boom(&self) {
        panic!("the handler gave up");
    }

    fn pid_of(&self, ctx: &mut fdserver::Context<'_>) -> u32 {
        ctx.pid()
    }
}

/// Runs `f` in a forked process whose standard error is a pipe (its servers inherit it), and
/// returns what was written there and `f`'s exit code.
fn stderr_of(f: impl FnOnce() -> i32) -> (String, Option<i32>) {
    let (rd, wr) = pipe();
    let child = fork_child(&[wr.as_raw_fd()], || {
        // SAFETY: dup2 onto standard error, in this single-threaded child.
        if unsafe { libc::dup2(wr.as_raw_fd(), 2) } != 2 {
            return 90;
        }
        // SAFETY: closing our own extra copy.
        unsafe { libc::close(wr.as_raw_fd()) };
        f()
    });
    drop(wr);
    let mut text = String::new();
    std::fs::File::from(rd).read_to_string(&mut text).unwrap();
    (text, wait_child(child).code())
}

#[test]
fn a_servers_panic_names_the_server_and_its_pid() {
    let _wd = watchdog("panic_names_server", SECS(60));
    let (text, code) = stderr_of(|| {
        let Ok(mut s) = Panicker.start() else {
            return 1;
        };
        let Ok(pid) = s.pid_of() else { return 2 };
        if s.boom().is_ok() {
            return 3;
        }
        // Not `eprintln!`: the test harness captures that; the server's stderr is fd 2.
        let _ = writeln!(std::io::stderr(), "server pid {pid}");
        if s.stop().is_err() {
            return 4;
        }
        0
    });
    assert_eq!(code, Some(0), "{text}");
    let pid = text
        .lines()
        .find_map(|l| l.strip_prefix("server pid "))
        .expect("pid line");
    let expected = format!("thread 'fdserver Panicker' ({pid}) panicked at");
    assert!(text.contains(&expected), "wanted {expected:?} in {text}");
    assert!(text.contains("the handler gave up"), "{text}");
}

#[cfg(feature = "tracing")]
mod with_tracing {
    use super::*;
    use fdserver::{PoolOptions, Signal};

    #[derive(Default)]
    struct Traced;

    #[fdserver::fdserver]
    impl Traced {
        fn hello(&self, name: &str) -> String {
            format!("hi {name}")
        }

        fn fail(&self) -> Result<(), String> {
            Err("no luck".into())
        }

        fn pid_of(&self, ctx: &mut fdserver::Context<'_>) -> u32 {
            ctx.pid()
        }
    }

    /// Every span and event fdserver emits, printed by a `tracing-subscriber` fmt subscriber to
    /// standard error (which the servers inherit: their spans arrive there too).
    #[test]
    fn calls_handled_messages_starts_stops_and_restarts_are_traced() {
        let _wd = watchdog("tracing_spans", SECS(60));
        let (text, code) = stderr_of(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .finish();
            if tracing::subscriber::set_global_default(subscriber).is_err() {
                return 10;
            }
            let Ok(mut s) = Traced.start() else { return 1 };
            if s.hello("Joe").ok().as_deref() != Some("hi Joe") || s.fail().is_ok() {
                return 2;
            }
            if s.stop().is_err() {
                return 3;
            }
            let Ok(pool) = TracedPool::start(PoolOptions::new(1), Traced) else {
                return 4;
            };
            let Ok(pid) = pool.pid_of() else { return 5 };
            let _ = writeln!(std::io::stderr(), "pool server pid {pid}");
            let mut guard = fdserver::Pool::get(&pool).unwrap();
            let _ = guard.signal(Signal::SIGKILL);
            let _ = guard.pid_of(); // fails: the server is gone
            drop(guard);
            if pool.pid_of().is_err() {
                return 6;
            }
            0
        });
        assert_eq!(code, Some(0), "{text}");
        let has = |needle: &str| text.lines().any(|l| l.contains(needle));
        // The client's call spans, with the outcome.
        assert!(has("call{hello pid="), "{text}");
        assert!(has("call ok"), "{text}");
        assert!(has("call failed") && has("no luck"), "{text}");
        assert!(has("call failed; the server must be replaced"), "{text}");
        // The server's spans (written by the server process).
        assert!(has("handle{hello pid="), "{text}");
        assert!(has("message handled") && has("outcome=\"error\""), "{text}");
        // Lifecycle events.
        assert!(has("server started") && has("Traced"), "{text}");
        assert!(has("server stopped"), "{text}");
        assert!(
            has("pool restarted a server") && has("restarts=1"),
            "{text}"
        );
    }

    #[derive(Default)]
    struct Dier;

    #[fdserver::fdserver]
    impl Dier {
        fn die(&self) {
            std::process::exit(3);
        }

        /// Blocks until a byte can be read from `fd`.
        fn block_on(&self, fd: i32) {
            let mut b = [0u8];
            // SAFETY: a read of one byte into a local buffer.
            unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        }
    }

    /// Review of issue 13, finding 10: a call span's outcome is the error the caller gets (after
    /// the disconnect is mapped to the server's exit), a cancelled async call's span says
    /// `cancelled`, and a server found exited and reaped by a call (not by a stop) gets its
    /// "server stopped" event.
    #[cfg(feature = "async")]
    #[test]
    fn spans_record_the_callers_outcome_and_cancellations() {
        let _wd = watchdog("tracing_outcomes", SECS(60));
        let (text, code) = stderr_of(|| {
            // Made in the child (which keeps only its standard error of what it inherits).
            let (gate_rd, gate_wr) = pipe();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_max_level(tracing::Level::DEBUG)
                .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
                .with_ansi(false)
                .finish();
            if tracing::subscriber::set_global_default(subscriber).is_err() {
                return 10;
            }
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return 11;
            };
            rt.block_on(async {
                let Ok(mut s) = fdserver::Builder::new()
                    .keep_fd(&gate_rd)
                    .start_async(&mut Dier)
                    .await
                    .map(DierAsyncClient::from)
                else {
                    return 1;
                };
                let pid = s.handle().pid();
                let cut = tokio::time::timeout(
                    std::time::Duration::ZERO,
                    s.block_on(gate_rd.as_raw_fd()),
                )
                .await;
                if cut.is_ok() {
                    return 2;
                }
                fdserver_tests::write_raw(gate_wr.as_raw_fd(), b"x");
                match s.die().await {
                    Err(fdserver::Error::ServerExited(_)) => {}
                    _ => return 3,
                }
                let _ = writeln!(std::io::stderr(), "dead server pid {pid}");
                0
            })
        });
        assert_eq!(code, Some(0), "{text}");
        let has = |needle: &str| text.lines().any(|l| l.contains(needle));
        let pid = text
            .lines()
            .find_map(|l| l.strip_prefix("dead server pid "))
            .expect("pid line");
        assert!(
            has("call{message=\"block_on\"") || has("call{block_on"),
            "{text}"
        );
        assert!(has("outcome=\"cancelled\""), "{text}");
        assert!(has("call cancelled"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.contains("call{die")
                    && l.contains("outcome=server exited (exit status: 3)")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("server stopped") && l.contains(&format!("pid={pid}"))),
            "{text}"
        );
    }
}
