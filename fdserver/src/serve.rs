//! [`serve`]: running a server loop in the current process, e.g. on an inherited socket.

use std::os::fd::BorrowedFd;

use crate::channel::Channel;
use crate::error::{Error, RemoteError, RemoteErrorKind};
use crate::server::{LoopEnd, Server};
use crate::server_loop::{run_loop, SignalPlan};
use crate::sys;
use crate::wire::MessageBuf;

/// Serves `server` on `channel` in the current process until the peer disconnects, a handler
/// quits, or SIGTERM/SIGINT arrives (Passenger's `start_synchronously`). Runs
/// `initialize_server` before and `finalize_server` after the loop.
///
/// Use it to serve on a socket inherited from another program, e.g. fd 3:
///
/// ```no_run
/// # use fdserver::{Channel, Context, Message, RemoteError, Server, ServerHandle};
/// # struct MyServer;
/// # impl Server for MyServer {
/// #     type Client = ServerHandle;
/// #     fn handle(&mut self, _: &mut Context<'_>, m: Message<'_>) -> Result<(), RemoteError> {
/// #         Err(RemoteError::unknown_message(m.name()))
/// #     }
/// # }
/// // SAFETY: fd 3 was handed to us by our parent and nothing else owns it.
/// let channel = unsafe { Channel::from_inherited_fd(3)? };
/// let end = fdserver::serve(&mut MyServer, channel)?;
/// std::process::exit(end.exit_code());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// The signals the loop catches (SIGTERM, SIGINT and the server's [`Server::SIGNALS`]) get a
/// recording handler and are unblocked in the calling thread while it serves; their previous
/// dispositions and the thread's signal mask are restored afterwards. One that another thread
/// of the process receives is forwarded to the serving thread. No descriptor is closed and no
/// other disposition is touched: this is your process.
///
/// One loop serves at a time in a process: a second `serve` while one runs (in another thread)
/// fails at once with an [`Error::Io`] saying so. Fork a server per channel with
/// [`Server::start`] instead.
///
/// Unlike a forked server, no `["ready"]` message is sent: the peer may be any MessageChannel
/// client. The socket may be non-blocking.
///
/// In a program started by [`Spawn`](crate::Spawn), on the socket `Spawn` handed over (it says
/// which in the environment variable `FDSERVER_HANGUP_WATCH`), `serve` also starts the server's
/// hang-up watch, as a forked server does (see the crate docs, "A server ends with its client"):
/// once the client's end is gone, this process gets SIGTERM after `Spawn`'s `after_close` and
/// SIGKILL `after_term` later, unless it has exited, even if a handler never returns. The
/// watch outlives `serve`: such a program should exit once `serve` returns. On any other
/// socket `serve` starts no watch.
///
/// A server that declares a sandbox (`Server::sandbox`, feature `sandbox`) is sandboxed here
/// too, after `initialize_server`, and that applies to **this whole process**, for good (it
/// must have a single thread then). If a layer fails, `serve` returns `Error::Sandbox` with
/// the process partly restricted: end it.
pub fn serve<S: Server>(server: &mut S, mut channel: Channel) -> Result<LoopEnd, Error> {
    // Signals reach one loop per process (their flags and the loop's wait are process-wide).
    if !sys::claim_loop_thread() {
        return Err(Error::Io(std::io::Error::other(
            "another fdserver server loop is already running in this process: serve() runs one \
             at a time (start() forks a process per server)",
        )));
    }
    // From here on, whatever happens (errors, a panic in a hook), the guard gives the loop
    // thread up and restores the caller's signal mask and dispositions.
    let mut guard = ServeGuard {
        saved: Vec::new(),
        old_mask: None,
    };
    let plan = SignalPlan::new(S::SIGNALS);
    let mut failed = None;
    plan.each_caught(
        |sig| match sys::set_disposition(sig, sys::Disposition::Flag) {
            Ok(old) => guard.saved.push((sig, old)),
            Err(e) => failed = Some(e),
        },
    );
    if let Some(e) = failed {
        return Err(Error::Io(e));
    }
    sys::take_pending();
    let old_mask = sys::get_sigmask();
    guard.old_mask = Some(old_mask);
    // Our signals are delivered to the flag handler even if the caller had blocked them.
    let mut run_mask = old_mask;
    plan.each_caught(|sig| sys::sigset_del(&mut run_mask, sig));
    let plan = SignalPlan { run_mask, ..plan };
    sys::set_sigmask(&plan.run_mask);

    // A declared sandbox is checked before initialize_server, and applied after it.
    #[cfg(feature = "sandbox")]
    let mut sandbox = crate::sandbox::choose(None, server.sandbox())?;
    #[cfg(feature = "sandbox")]
    let watch_inside_sandbox = crate::sandbox::is_active(&sandbox);
    #[cfg(not(feature = "sandbox"))]
    let watch_inside_sandbox = false;
    // A program that `Spawn` started for one client ends with that client, as a forked server
    // does. Started now, so a long initialize_server is covered, unless a sandbox will be
    // applied: its per-thread layers need a single thread, and it starts the watch inside them.
    let watch = sys::HangupWatch::from_env(channel.socket());
    if !watch_inside_sandbox {
        start_watch(watch, channel.socket())?;
    }
    match server.initialize_server() {
        Ok(()) => {
            #[cfg(feature = "sandbox")]
            if let Some(p) = &mut sandbox {
                let sock = channel.socket();
                p.apply(|| start_watch(watch, sock).map_err(std::io::Error::other))
                    .map_err(|f| Error::Sandbox(f.into_error()))?;
            }
            let mut buf = MessageBuf::with_max_capacity();
            let end = run_loop(server, &mut channel, &mut buf, &plan);
            server.finalize_server();
            Ok(end)
        }
        Err(e) => Err(Error::Remote(RemoteError::new(
            RemoteErrorKind::Initialize,
            e.to_string(),
        ))),
    }
}

/// Starts the hang-up watch `Spawn` asked for, if any, with every signal blocked in its thread
/// (they are the serving thread's). A watch already running in this process (an earlier `serve`
/// of the same client) is kept.
fn start_watch(watch: Option<sys::HangupWatch>, sock: BorrowedFd<'_>) -> Result<(), Error> {
    let Some(watch) = watch else {
        return Ok(());
    };
    let old = sys::set_sigmask(&sys::sigset(true));
    // Until the thread runs: the server may install a seccomp filter of its own next.
    let r = watch.start(sock, true);
    sys::set_sigmask(&old);
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Io(std::io::Error::new(
            e.kind(),
            format!("serve: cannot start the hang-up watch thread that Spawn asked for: {e}"),
        ))),
    }
}

/// What [`serve`] undoes when it returns or unwinds: the loop thread it claimed, the signal
/// mask and the dispositions it changed.
struct ServeGuard {
    saved: Vec<(i32, sys::SavedAction)>,
    old_mask: Option<libc::sigset_t>,
}

impl Drop for ServeGuard {
    fn drop(&mut self) {
        sys::set_loop_thread(false);
        sys::set_stop_signals(0);
        if let Some(mask) = &self.old_mask {
            sys::set_sigmask(mask);
        }
        sys::take_pending();
        for (sig, old) in &self.saved {
            sys::restore_disposition(*sig, old);
        }
    }
}
