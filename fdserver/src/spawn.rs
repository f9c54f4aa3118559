//! [`Spawn`]: starting a server program with `exec` instead of `fork`, and driving it with the
//! same typed client.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use crate::channel::Channel;
use crate::client::{ServerHandle, StopOptions};
use crate::error::Error;
use crate::sys;

/// Starts a server *program* (`exec`, not `fork`) connected by a socket it inherits, and
/// returns the same client a forked server has: a generated `MyServerClient` (or a
/// [`ServerHandle`]) with `pid`, typed calls, `signal`, `stop` (close, SIGTERM, SIGKILL,
/// always reaped: no zombie; waited on through a pidfd).
///
/// The program gets its end of the socket at descriptor 3 ([`fd`](Self::fd) chooses another)
/// and serves on it with [`serve`](crate::serve), like `examples/hello.rs --serve-fd 3`; pass
/// it the number in whatever form it expects (an argument, an environment variable). Nothing
/// else is inherited that the [`Command`] does not say: every descriptor fdserver creates is
/// close-on-exec. Unlike a forked server, the program runs none of your process's state, so
/// the fork-safety rules do not apply; the price is an `exec` and the program's own start-up
/// (BENCHMARKS.md, row 4e).
///
/// The program ends with its client, as a forked server does: `Spawn` names the socket it
/// hands over in the environment variable `FDSERVER_HANGUP_WATCH`, and [`serve`](crate::serve)
/// on that socket runs the server's *hang-up watch* (see the crate docs, "A server ends with its
/// client"): once this process's end is gone (`stop`, a dropped client, this process exiting or
/// SIGKILLed), the program gets SIGTERM after `after_close` and SIGKILL `after_term` later
/// ([`stop_timeouts`](Self::stop_timeouts)), unless it has exited. `PR_SET_PDEATHSIG` is not
/// used: it fires when the *thread* that spawned the program exits.
///
/// A program served with `serve` sends nothing before the first request, so `start` returns
/// once the program is running (a failed `exec` is its error); a program that exits at once
/// makes the first call fail with [`Error::ServerExited`] and its status. A program that runs
/// but never serves (the wrong program, wrong arguments, stuck before `serve`) makes the first
/// call wait until it exits, since there is no deadline by default: give one with
/// [`timeout`](Self::timeout), and the call fails with [`Error::TimedOut`] instead (as in the
/// example). A program that applies its own sandbox in `serve` reports it to nobody:
/// [`ServerHandle::sandbox`] is `None` for a spawned server. The program's
/// standard streams are what the `Command` says; `Stdio::piped()` ones are closed (the handle
/// keeps no `Child`), so give it files, or let it inherit yours.
///
/// ```no_run
/// use std::process::Command;
///
/// struct MyServer;
///
/// #[fdserver::fdserver]
/// impl MyServer {
///     fn hello(&mut self, first_name: &str, last_name: &str) -> (String, u32) {
///         (format!("Hello {first_name} {last_name}, how are you?"), 1234)
///     }
/// }
///
/// # fn hello_binary() -> std::path::PathBuf { unimplemented!() }
/// let mut command = Command::new(hello_binary()); // a program that serves MyServer
/// command.args(["--serve-fd", "3"]);
/// let mut server: MyServerClient = fdserver::Spawn::new(command)
///     .timeout(Some(std::time::Duration::from_secs(5)))
///     .start()?;
/// let (reply, _) = server.hello("Joe", "Dalton")?;
/// assert_eq!(reply, "Hello Joe Dalton, how are you?");
/// server.stop()?;
/// # Ok::<(), fdserver::Error>(())
/// ```
#[derive(Debug)]
pub struct Spawn {
    command: Command,
    fd: RawFd,
    stop: StopOptions,
    timeout: Option<Duration>,
    max_scalar: Option<u64>,
}

impl Spawn {
    /// A spawn of `command`, whose program serves on descriptor 3.
    pub fn new(command: Command) -> Spawn {
        Spawn {
            command,
            fd: 3,
            stop: StopOptions::default(),
            timeout: Some(crate::DEFAULT_CALL_TIMEOUT),
            max_scalar: None,
        }
    }

    /// The descriptor number the program finds its socket at (default 3; 0, 1 and 2 are the
    /// standard streams and are refused by `start`).
    pub fn fd(mut self, fd: RawFd) -> Self {
        self.fd = fd;
        self
    }

    /// The deadline of each call, for the whole call (default
    /// [`DEFAULT_CALL_TIMEOUT`](crate::DEFAULT_CALL_TIMEOUT), 30 s; `None` disables it): see
    /// [`Builder::timeout`](crate::Builder::timeout).
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long `stop` waits after closing the connection before SIGTERM, and after SIGTERM
    /// before SIGKILL (defaults: 3 s and 3 s).
    pub fn stop_timeouts(mut self, after_close: Duration, after_term: Duration) -> Self {
        self.stop = StopOptions {
            after_close,
            after_term,
        };
        self
    }

    /// Largest scalar the client accepts in raw reads of its channel (default
    /// [`DEFAULT_MAX_SCALAR`](crate::DEFAULT_MAX_SCALAR)). A call reads the reply it asked for
    /// at any size (see [`args`](crate::args#large-results)).
    pub fn max_scalar_size(mut self, max: u64) -> Self {
        self.max_scalar = Some(max);
        self
    }

    /// Starts the program and returns its typed client (`MyServerClient`).
    pub fn start<C: From<ServerHandle>>(self) -> Result<C, Error> {
        self.start_handle().map(C::from)
    }

    /// Starts the program and returns the untyped handle.
    ///
    /// Fails with `InvalidInput` for a descriptor number below 3, or if this process ignores
    /// SIGCHLD (the kernel would reap the server and its status would be lost, as for
    /// [`Builder::start`](crate::Builder::start)); with the error of `Command::spawn` (its
    /// kind, and a text naming the program) if the program cannot be run.
    pub fn start_handle(mut self) -> Result<ServerHandle, Error> {
        if self.fd < 3 {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "Spawn::fd({}): descriptors 0, 1 and 2 are the standard streams; give the \
                     server's socket 3 or above",
                    self.fd
                ),
            )));
        }
        if sys::children_autoreaped() {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "SIGCHLD is ignored in this process (SIG_IGN or SA_NOCLDWAIT), so the kernel would \
                 reap the server and its exit status would be lost; restore SIGCHLD's default \
                 disposition before starting servers",
            )));
        }
        let (mut parent_end, child_end) = Channel::pair()?;
        // The program's `serve` on this socket runs the hang-up watch (see `serve`): it ends
        // on `stop`'s schedule once this end is gone, as a forked server does.
        let watch = sys::HangupWatch {
            after_close: self.stop.after_close,
            after_term: self.stop.after_term,
        };
        self.command
            .env(sys::SPAWN_WATCH_ENV, watch.to_env(child_end.as_fd())?);
        let target = self.fd;
        // `Command::spawn` reports a failed `exec` through a pipe it opens just before forking,
        // at the lowest free descriptor number; if that were `target`, the child's `dup2` below
        // would replace it. So `target` is kept busy during the spawn: with our own socket if
        // it is free (never replacing anything: `F_DUPFD_CLOEXEC` takes the lowest free number
        // at or above it), else it already holds one of this process's descriptors.
        let holder = sys::dup_at_least(child_end.as_fd(), target)?;
        let source = if holder.as_raw_fd() == target {
            target
        } else {
            child_end.as_raw_fd()
        };
        // SAFETY: the closure runs in the child between fork and exec and makes only
        // async-signal-safe calls (dup2 or fcntl), allocating nothing.
        unsafe {
            self.command
                .pre_exec(move || sys::inherit_at(source, target));
        }
        let spawned = self.command.spawn();
        drop(holder);
        drop(child_end);
        let child = spawned.map_err(|e| {
            Error::Io(io::Error::new(
                e.kind(),
                format!(
                    "cannot start the server program {:?}: {e}",
                    self.command.get_program()
                ),
            ))
        })?;
        let pid = child.id() as libc::pid_t;
        // Our handle reaps it; `Child` neither waits nor kills on drop.
        drop(child);
        parent_end.set_timeout(self.timeout);
        if let Some(max) = self.max_scalar {
            parent_end.set_max_scalar_size(max);
        }
        ServerHandle::new(pid, parent_end, self.stop)
    }
}
