//! The template: an fdserver server that preloaded the application and forks one worker per
//! command.
//!
//! Its one client is the preloader server, which sends `["run", cwd]` and the client's
//! connection (a descriptor), positioned after the client's first message; the template reads
//! the rest of the command from the client: scalar argv, scalar env, then three descriptors,
//! its stdin, stdout, stderr. The template forks the worker and replies `["ok", n]` at once; the
//! worker writes `["pid", n]` to the client's connection as soon as it leads its own process
//! group. When the worker ends, the template writes `["exit", code]` or `["signal", n]` to the
//! client's connection and closes it.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::{os, split_nul, Application};
use crate::channel::Channel;
use crate::client::ServerHandle;
use crate::error::{Error, ProtocolError, RemoteError, RemoteErrorKind};
use crate::server::{Context, Server};
use crate::signal::Signal;
use crate::sys;
use crate::wire::Message;

/// How long the client may take, in all, to send the rest of its command (it sends it right
/// after its first message). The template serves nothing else meanwhile, so this bounds what a
/// stalled client costs the other commands of its key.
const REQUEST_BUDGET: Duration = Duration::from_secs(3);

struct Worker {
    pid: libc::pid_t,
    /// The client's connection; `None` once the client is gone.
    conn: Option<Channel>,
    /// What was allocated for the worker, freed once it has exited (see `Template::run`).
    _request: Request,
}

/// A command's arguments, as given to its worker. Freeing them while the worker still shares
/// the template's memory would copy the pages that malloc writes to (the freed chunks, its
/// lists); once it has exited, those pages are ours alone again and writing them is cheap.
#[allow(dead_code)] // only ever dropped
struct Request {
    args: Vec<OsString>,
}

/// Buffers reused from command to command, so that reading a command allocates (and later
/// frees) nothing: in a template with a large fragmented heap, each allocation may touch a
/// different page (a free chunk and its neighbours in malloc's lists), which the next fork
/// shares again.
#[derive(Default)]
struct Scratch {
    cwd: Vec<u8>,
    argv: Vec<u8>,
    env: Vec<u8>,
    /// The worker's `environ`: pointers into `env`.
    envp: Vec<*mut libc::c_char>,
    close: Vec<RawFd>,
}

pub(crate) struct Template<A> {
    app: A,
    key: String,
    workers: Vec<Worker>,
    huge_pages: bool,
    /// The signals a worker resets to their default action (see `os::non_default_signals`).
    reset: Option<u64>,
    scratch: Scratch,
    /// When a worker last started or ended (the server's idle timeout asks).
    last_activity: Instant,
}

impl<A: Application> Template<A> {
    pub(crate) fn new(app: A, key: String, huge_pages: bool) -> Self {
        Template {
            app,
            key,
            workers: Vec::new(),
            huge_pages,
            reset: None,
            scratch: Scratch::default(),
            last_activity: Instant::now(),
        }
    }

    fn run(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
        self.last_activity = Instant::now();
        let sc = &mut self.scratch;
        sc.cwd.clear();
        sc.cwd.extend_from_slice(msg.get(1).unwrap_or(b"/"));
        let ch = ctx.channel();
        let conn = ch
            .recv_fd()?
            .ok_or(Error::Protocol(ProtocolError::ExpectedFd))?;
        // The rest of the request comes from the client itself (sent in one go right after
        // its first message, which the server read).
        let mut conn = Channel::new(conn);
        // One budget for the whole request, not one per read: five reads of 10 s each let a
        // client that trickled its parts hold the template for most of a minute.
        let deadline = Instant::now() + REQUEST_BUDGET;
        let left = move || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        let request = (|| -> Result<_, Error> {
            for buf in [&mut sc.argv, &mut sc.env] {
                conn.set_timeout(Some(left()));
                if !conn.read_scalar_into(buf)? {
                    return Err(Error::Disconnected);
                }
            }
            let mut fd = || {
                conn.set_timeout(Some(left()));
                conn.recv_fd()?
                    .ok_or(Error::Protocol(ProtocolError::ExpectedFd))
            };
            let stdio: [OwnedFd; 3] = [fd()?, fd()?, fd()?];
            Ok(stdio)
        })();
        let stdio = match request {
            Ok(r) => r,
            Err(e) => {
                // The server passes this on to the client.
                return Err(RemoteError::new(
                    RemoteErrorKind::Protocol,
                    format!("incomplete command from the client: {e}"),
                ));
            }
        };
        conn.set_read_timeout(None);
        conn.set_write_timeout(Some(Duration::from_secs(5)));
        // The worker points `environ` into this buffer: every entry must end in NUL.
        if sc.env.last().is_some_and(|&b| b != 0) {
            sc.env.push(0);
        }
        // What the worker needs is built here, before the fork: an allocation in the worker can
        // land on any page of the template's fragmented heap (a free chunk, and its neighbours
        // in malloc's lists) and copy it; in a shared huge page, that splits it first (about
        // 20 us each). `environ` will point at `envp`, whose entries point into `env`.
        sc.envp.clear();
        sc.envp.extend(
            split_nul(&sc.env)
                .filter(|kv| kv.iter().position(|&b| b == b'=').is_some_and(|i| i > 0))
                .map(|kv| kv.as_ptr().cast::<libc::c_char>().cast_mut())
                .chain(std::iter::once(std::ptr::null_mut())),
        );
        let args: Vec<OsString> = split_nul(&sc.argv)
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect();
        conn.reserve_write(64); // the worker's ["pid", n]

        // Nothing buffered in this process may be written twice (once by the worker).
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        sc.close.clear();
        sc.close.extend(
            self.workers
                .iter()
                .filter_map(|w| w.conn.as_ref().map(AsRawFd::as_raw_fd)),
        );
        sc.close.push(ch.as_raw_fd());
        sc.close.push(conn.as_raw_fd());
        self.workers.reserve(1);
        // What the worker resets: read once (the template's dispositions do not change once it
        // serves), so that each worker saves reading /proc.
        let reset = *self.reset.get_or_insert_with(|| {
            let mut mask = os::non_default_signals();
            for sig in [libc::SIGHUP, libc::SIGPIPE, libc::SIGCHLD, libc::SIGIO] {
                mask |= 1 << (sig - 1);
            }
            mask | 1 << (libc::SIGINT - 1) | 1 << (libc::SIGTERM - 1)
        });

        // Every signal stays blocked across the fork: the server loop runs handlers with its
        // signals unblocked, and the worker must not run the template's flag handler (which
        // would swallow a SIGTERM or SIGINT) before it has reset its dispositions.
        let old_mask = sys::set_sigmask(&sys::sigset(true));
        // SAFETY: the template is single-threaded (the application's preload must not leave
        // threads running; see the module docs), so the child may do anything.
        let forked = unsafe { sys::fork() };
        if matches!(forked, Ok(0)) {
            let sc = &mut self.scratch;
            let job = WorkerJob {
                args,
                envp: &mut sc.envp,
                env: &sc.env,
                cwd: &sc.cwd,
                reset,
            };
            worker_main(&mut self.app, job, stdio, &mut conn, &sc.close);
        }
        sys::set_sigmask(&old_mask);
        let pid = forked.map_err(RemoteError::from)?;
        drop(stdio); // the worker has them; holding them would keep the client's pipes open

        // The worker itself sends the client `["pid", n]` once it leads its own process group
        // (so the client never signals a group that does not exist yet); nothing to wait for
        // here. SIGIO when the client hangs up; check once now for a hang-up that came first.
        let alive = sys::set_async_owner(conn.as_fd()).is_ok() && !sys::poll_now(conn.as_fd());
        if !alive {
            kill_worker(pid);
        }
        self.workers.push(Worker {
            pid,
            conn: alive.then_some(conn),
            _request: Request { args },
        });
        let mut digits = [0u8; 20];
        ctx.reply([decimal(pid as u32, &mut digits)])?; // ["ok", n]
        Ok(())
    }

    /// Tells the client how its worker ended, and forgets the worker.
    fn report(&mut self, pid: libc::pid_t, raw: libc::c_int) {
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            return; // a grandchild reparented to us, or a worker already forgotten
        };
        let w = self.workers.swap_remove(i);
        self.last_activity = Instant::now();
        if let Some(mut conn) = w.conn {
            // The client closes the connection once it has read this: no SIGIO for that.
            os::stop_async(conn.as_fd());
            let msg = if libc::WIFSIGNALED(raw) {
                ["signal".to_owned(), libc::WTERMSIG(raw).to_string()]
            } else {
                ["exit".to_owned(), libc::WEXITSTATUS(raw).to_string()]
            };
            let _ = conn.write_array(msg);
        }
    }
}

impl<A: Application> Server for Template<A> {
    type Client = ServerHandle;
    const SIGNALS: &'static [Signal] = &[Signal::SIGCHLD, Signal::SIGIO];

    fn initialize_server(&mut self) -> Result<(), crate::BoxError> {
        // While preloading nothing watches the server: die with it (a server stopped or
        // killed mid-preload must not leave this process behind). Only while preloading: a
        // preloaded template outlives its server until its workers finish.
        sys::set_parent_death_signal(libc::SIGKILL);
        let r = catch_unwind(AssertUnwindSafe(|| self.app.preload(&self.key)));
        sys::set_parent_death_signal(0);
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        match r {
            Ok(Ok(())) => {
                if self.huge_pages {
                    // Forking a worker copies the page tables of the preloaded heap: with 2 MiB
                    // pages that is 512 times fewer entries (BENCHMARKS.md, row 5w).
                    let _ = sys::advise_huge_pages();
                }
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(p) => Err(format!(
                "preload panicked: {}",
                crate::server_loop::panic_message(&*p)
            )
            .into()),
        }
    }

    fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
        match msg.name() {
            b"run" => self.run(ctx, msg),
            b"idle" => {
                // ["ok", running workers, ms since a worker last started or ended]
                let running = self.workers.len().to_string();
                let ms = self.last_activity.elapsed().as_millis().to_string();
                ctx.reply([running, ms])?;
                Ok(())
            }
            b"shutdown" => {
                for w in &self.workers {
                    // A worker that has not called setsid yet has no group: signal it alone
                    // (it is blocked there until its dispositions are default).
                    if sys::kill_group(w.pid, libc::SIGTERM).is_err() {
                        let _ = sys::kill(w.pid, libc::SIGTERM);
                    }
                }
                ctx.reply::<[&str; 0], _>([])?; // ["ok"]
                ctx.quit();
                Ok(())
            }
            other => Err(RemoteError::unknown_message(other)),
        }
    }

    fn handle_signal(&mut self, _ctx: &mut Context<'_>, signal: Signal) {
        match signal {
            Signal::SIGCHLD => {
                while let Some((pid, raw)) = sys::reap_any() {
                    self.report(pid, raw);
                }
            }
            Signal::SIGIO => {
                for w in &mut self.workers {
                    let gone = w.conn.as_ref().is_some_and(|c| sys::poll_now(c.as_fd()));
                    if gone {
                        // The client went away: nobody is left to read the worker's output or
                        // its status, so its process group goes too.
                        kill_worker(w.pid);
                        w.conn = None;
                    }
                }
            }
            _ => {}
        }
    }

    fn finalize_server(&mut self) {
        // Retired (watched file changed) or orphaned (server gone): let running workers finish
        // and report each to its client as soon as it ends, in whatever order (waiting for
        // them in start order would keep a short command's client waiting for an older one).
        while !self.workers.is_empty() {
            match os::reap_any_blocking() {
                Some((pid, raw)) => self.report(pid, raw),
                None => break, // no child left: nothing more will end
            }
        }
    }
}

/// Kills a worker's process group, and the worker itself in case it has not become a group
/// leader (it died before, or is a zombie).
fn kill_worker(pid: libc::pid_t) {
    let _ = sys::kill_group(pid, libc::SIGKILL);
    let _ = sys::kill(pid, libc::SIGKILL);
}

/// What a worker runs: the client's arguments, environment (`envp` points into `env`) and
/// working directory, and the signals to reset first.
struct WorkerJob<'a> {
    args: Vec<OsString>,
    envp: &'a mut Vec<*mut libc::c_char>,
    env: &'a [u8],
    cwd: &'a [u8],
    reset: u64,
}

/// The forked worker: becomes the client's command.
fn worker_main<A: Application>(
    app: &mut A,
    job: WorkerJob<'_>,
    stdio: [OwnedFd; 3],
    conn: &mut Channel,
    close: &[RawFd],
) -> ! {
    let WorkerJob {
        args,
        envp,
        env,
        cwd,
        reset,
    } = job;
    // Every signal is blocked (the template blocked them all around the fork). Default
    // dispositions first (the template ignores SIGHUP and catches its own signals with a flag
    // handler); then our own group; then tell the client who we are. Signals are unblocked
    // only below, once nothing of the template's handling is left.
    os::reset_dispositions(reset);
    let _ = sys::setsid();
    let mut digits = [0u8; 20];
    let pid = decimal(sys::getpid(), &mut digits);
    // A pidfd of ourselves goes with the pid: the client signals us (and our group) only
    // through it, so never a process that later gets our number.
    // If the client is gone, there is nobody to run for: leave before running anything (the
    // template, seeing the hang-up, would kill us anyway).
    let pidfd = sys::pidfd_open(sys::getpid() as libc::pid_t).ok();
    let sent = match &pidfd {
        Some(fd) => conn.write_array_with_fd([b"pid".as_slice(), pid, b"fd"], fd.as_fd()),
        None => conn.write_array([b"pid".as_slice(), pid]),
    };
    drop(pidfd);
    if sent.is_err() {
        sys::exit_now(1);
    }
    for (i, fd) in stdio.iter().enumerate() {
        if sys::dup2(fd.as_fd(), i as RawFd).is_err() {
            sys::exit_now(127);
        }
    }
    drop(stdio);
    for &fd in close {
        sys::close_raw(fd);
    }
    sys::take_pending();
    sys::set_sigmask(&sys::sigset(false));

    let cwd = std::ffi::OsStr::from_bytes(cwd);
    if let Err(e) = std::env::set_current_dir(cwd) {
        eprintln!("cannot enter the working directory {cwd:?}: {e}");
        sys::exit_now(126);
    }
    // The client's environment replaces ours in one step: `environ` points at `envp`, whose
    // entries point into the request's buffer (never freed: the process ends with the command).
    // The worker is single-threaded, so nothing reads the environment concurrently.
    // SAFETY: single-threaded; `envp` is a NULL-terminated array of pointers to NUL-terminated
    // strings (`run` made `env` end in NUL, so each item is followed by one, and contains none:
    // `split_nul` split there). Both are borrowed from the template, which this process never
    // returns to (this function exits it), so they outlive every reader of `environ`.
    unsafe { libc::environ = envp.as_mut_ptr() };
    let _ = env;
    let code = catch_unwind(AssertUnwindSafe(|| app.run(args))).unwrap_or(101);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    sys::exit_now(code)
}

/// `n` in decimal, in `buf`, without allocating.
fn decimal(mut n: u32, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}
