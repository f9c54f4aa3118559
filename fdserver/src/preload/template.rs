//! The template: a process of its own (the server starts it by running this executable again),
//! which runs [`Application::preload`] once on its main thread and then serves the preloader
//! server on descriptor 3, forking one worker per command from that same main thread. So a
//! worker is what a fresh run of the program would be: its main thread (named `main`, with the
//! main thread's stack), and only that thread.
//!
//! Its one client is the server, which sends:
//!
//! * `["run"]` and the client's connection (a descriptor), positioned after the client's first
//!   message. The template reads the rest of the command from the client: a `u32` little-endian
//!   length, then that many bytes (argv with the program name, environment, process attributes,
//!   the numbers of further descriptors: see [`Parts`]), the first byte carrying the client's
//!   stdin, stdout, stderr and working directory as four descriptors, and the further ones. It
//!   compares the client's context with its own (`context::judge`: the client's sandbox, read
//!   from the kernel, its loader variables, its limits): if a worker could not be what a fresh
//!   run would be, it writes `["error", "confined", why]` (the client runs the command itself)
//!   or `["error", "outranked", why]` (this template is the more confined one: the client
//!   replaces the server) and replies `["ok", "0"]`. Otherwise it forks the worker and replies
//!   `["ok", pid]` at once; the worker writes `["pid", n, "fd", template pid]` and a pidfd of
//!   itself to the client once it leads its own process group (`["pid", n]` alone if it could
//!   not make one), so that the client never signals a process that merely reuses its number.
//!   A worker that then fails to take on one of the client's attributes writes `["error",
//!   "confined", why]` and exits without running anything. When the worker stops, the
//!   template writes `["stopped", signal]` to the client's connection; when it ends, `["exit",
//!   code]` or `["signal", n]`, and closes it.
//! * `["idle"]`, for the server's idle timeout: `["ok", running workers, ms since a worker last
//!   started or ended]`.
//!
//! When the server's end of descriptor 3 closes (the server exited, or retired this template),
//! the template stops taking commands and exits once its running workers have ended, still
//! reporting their stops and ends and still ending the worker of a client that goes away.
//!
//! Its stdout and stderr are a pipe that the server copies into its log, bounded, while it
//! preloads; then the log itself (descriptor 4, which it is given for that).
//!
//! After the request the client may send single bytes: `S` (the job was suspended before the
//! worker's pid reached it: the worker waits before running) and `G` (go on).

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStringExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use super::attrs::{self, Attrs};
use super::context::{self, ProcessContext, Verdict};
use super::os::{self, ArgvArea, Handlers};
use super::{split_nul, Application, Preloader};
use crate::channel::Channel;
use crate::error::{Error, ProtocolError, RemoteError, RemoteErrorKind};
use crate::server::{Context, Server};
use crate::signal::Signal;
use crate::sys;
use crate::wire::Message;

/// How long the client may take, in all, to send the rest of its command (it sends it right
/// after its first message). The template serves nothing else meanwhile, so this bounds what a
/// stalled client costs the other commands of its key.
const REQUEST_BUDGET: Duration = Duration::from_secs(3);
/// Largest request accepted (argv + environment + attributes).
const MAX_REQUEST: usize = 64 << 20;
/// The empty arguments the server passes a template (see `daemon`): room for the worker's
/// `argv` (std's `env::args` reads the array the kernel built at `execve`).
pub(crate) const ARGV_SLOTS: usize = 4096;
/// The environment variable that carries a template's key from the server.
pub(crate) const ENV_KEY: &str = "__FDSERVER_PRELOAD_KEY";

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
    /// The request body: argv, environment, attributes.
    req: Vec<u8>,
    /// The worker's `environ`: pointers into `req`.
    envp: Vec<*mut libc::c_char>,
    close: Vec<RawFd>,
    /// The request's descriptors: stdin, stdout, stderr, working directory, then the other
    /// descriptors the client inherited.
    fds: Vec<OwnedFd>,
}

/// What this template itself is, read once: what a worker compares the client's attributes
/// with, so that it changes only what differs.
struct Own {
    attrs: Attrs,
    ignored: u64,
    caught: u64,
    /// What a client is compared with (see `context`).
    context: Result<ProcessContext, String>,
}

pub(crate) struct Template<A> {
    app: A,
    key: String,
    workers: Vec<Worker>,
    scratch: Scratch,
    /// The signal handlers of a fresh `main` of this program (read when the template started).
    handlers: Handlers,
    area: Option<ArgvArea>,
    own: Option<Own>,
    preloaded: Instant,
    /// When a worker last started or ended (the server's idle timeout asks, `["idle"]`).
    last_activity: Instant,
    /// The loader variables this template was started with (`context::loader_entries`).
    loader: Vec<Vec<u8>>,
}

/// Entry of a template process (started by the server with the role variable): preload, say
/// `["ready"]` (or why not) on descriptor 3, then serve the server there until it hangs up.
pub(crate) fn main<A: Application>(p: &Preloader<A>) -> ! {
    // Before anything of ours: the handlers a fresh `main` of this program has.
    let handlers = Handlers::of_this_process();
    let key = std::env::var(ENV_KEY).unwrap_or_default();
    let env: Vec<Vec<u8>> = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend_from_slice(v.as_encoded_bytes());
            kv
        })
        .collect();
    let loader = context::loader_entries(env.iter().map(Vec::as_slice))
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    // Single-threaded at this point of a fresh process, so changing the environment is sound.
    std::env::remove_var(ENV_KEY);
    let area = ArgvArea::of_this_process();
    if let Some(area) = &area {
        area.set_title(format!("{}: template {key}", p.app.name()).as_bytes());
    }
    // The kernel named us after the path we were run by (/proc/self/exe): name us after the
    // program instead, as the client is.
    if let Ok(exe) = std::env::current_exe() {
        if let Some(name) = exe.file_name() {
            os::set_comm(name.as_encoded_bytes());
        }
    }
    // SAFETY: descriptor 3 was set up by the server as our end of its socket pair, and nothing
    // else in this fresh process owns it.
    let mut channel = match unsafe { Channel::from_inherited_fd(3) } {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fdserver preloader: template {key:?}: no channel to the server on descriptor 3: {e}");
            sys::exit_now(1)
        }
    };
    let mut template = Template {
        app: p.app.clone(),
        key,
        workers: Vec::new(),
        scratch: Scratch::default(),
        handlers,
        area,
        own: None,
        preloaded: Instant::now(),
        last_activity: Instant::now(),
        loader,
    };
    // Nobody watches us while we preload but the server, which set PR_SET_PDEATHSIG: we die
    // with it. Only while preloading: a preloaded template outlives its server until its
    // workers finish. Then the server's death continues us instead (SIGCONT: a no-op unless
    // we were stopped), so that a template someone stopped (SIGSTOP) sees its channel close
    // and exits even after a server killed before it could continue us itself.
    let r = catch_unwind(AssertUnwindSafe(|| template.app.preload(&template.key)));
    sys::set_parent_death_signal(libc::SIGCONT);
    let _ = std::io::stdout().flush();
    log_directly();
    let failure = match r {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(p) => Some(format!(
            "preload panicked: {}",
            crate::server_loop::panic_message(&*p)
        )),
    };
    if let Some(text) = failure {
        let _ = channel.write_error(&RemoteError::new(RemoteErrorKind::Initialize, text));
        let _ = std::io::stdout().flush();
        sys::exit_now(1);
    }
    if p.options.huge_pages {
        // Forking a worker copies the page tables of the preloaded heap: with 2 MiB pages that
        // is 512 times fewer entries (BENCHMARKS.md, row 5w).
        let _ = sys::advise_huge_pages();
    }
    template.preloaded = Instant::now();
    if channel.write_array(["ready"]).is_err() {
        sys::exit_now(0); // the server is gone already
    }
    let code = match crate::serve(&mut template, channel) {
        Ok(end) => end.exit_code(),
        Err(e) => {
            eprintln!("fdserver preloader: template {:?}: {e}", template.key);
            1
        }
    };
    let _ = std::io::stdout().flush();
    sys::exit_now(code)
}

/// From now on, stdout and stderr are the server's log itself (descriptor 4), not the pipe that
/// the server copies (bounded) while the template preloads: a preloaded template writes little,
/// and must not depend on the server to be heard (it outlives a server that exits).
fn log_directly() {
    const LOG: RawFd = 4;
    if !sys::fd_is_open(LOG) {
        return; // started without one (an older server): stdout and stderr are the log already
    }
    // SAFETY: a descriptor number this process owns (given by the server for this).
    let log = unsafe { OwnedFd::from_raw_fd(LOG) };
    for fd in [1, 2] {
        let _ = sys::dup2(log.as_fd(), fd);
    }
}

impl<A: Application> Template<A> {
    fn run(&mut self, ctx: &mut Context<'_>, _msg: Message<'_>) -> Result<(), RemoteError> {
        self.last_activity = Instant::now();
        let ch = ctx.channel();
        let conn = ch
            .recv_fd()?
            .ok_or(Error::Protocol(ProtocolError::ExpectedFd))?;
        let mut conn = Channel::new(conn);
        // The rest of the request comes from the client itself (sent in one go right after
        // its first message, which the server read). One budget for all of it.
        let deadline = Instant::now() + REQUEST_BUDGET;
        let read = read_request(
            conn.as_fd(),
            &mut self.scratch.req,
            &mut self.scratch.fds,
            deadline,
        );
        let checked = read.and_then(|()| {
            let parts = Parts::split(&self.scratch.req).ok_or("malformed command")?;
            let extra = parts.extra.len() / 4;
            if self.scratch.fds.len() != 4 + extra {
                return Err(format!(
                    "{} descriptors where {} were announced",
                    self.scratch.fds.len(),
                    4 + extra
                ));
            }
            Ok(())
        });
        match checked {
            Ok(()) => {}
            Err(e) => {
                self.scratch.fds.clear();
                // The server passes this on to the client.
                return Err(RemoteError::new(
                    RemoteErrorKind::Protocol,
                    format!("incomplete command from the client: {e}"),
                ));
            }
        };
        let parts = Parts::split(&self.scratch.req).expect("checked above");
        let own = self.own.get_or_insert_with(|| {
            let (ignored, caught) = os::current_dispositions();
            Own {
                attrs: Attrs::of_this_process(0),
                ignored,
                caught,
                context: ProcessContext::of_this_process(),
            }
        });
        let want = parts.attrs.clone().unwrap_or_else(|| Attrs {
            sig_ignored: 1 << (libc::SIGPIPE - 1),
            sig_blocked: 0,
            ..own.attrs.clone()
        });
        // A worker is forked from here: it cannot take on a sandbox, a tracer, namespaces... that
        // the client has and we have not (running the command here would escape them), nor
        // limits we are under and the client is not. The client's side is read from the kernel,
        // not from what it says.
        let verdict = match (&own.context, ProcessContext::of_peer(conn.as_fd())) {
            (Ok(mine), Ok(theirs)) => context::judge(
                mine,
                &own.attrs,
                &self.loader,
                &theirs,
                &want,
                split_nul(&self.scratch.req[parts.env.clone()]),
            ),
            (Err(e), _) => context::unreadable(e),
            (_, Err(e)) => context::unreadable(&e),
        };
        let refusal = match verdict {
            Verdict::Faithful => None,
            Verdict::InProcess(why) => Some(("confined", why)),
            Verdict::Replace(why) => Some(("outranked", why)),
        };
        if let Some((kind, why)) = refusal {
            conn.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = conn.write_error(&RemoteError::new(RemoteErrorKind::Other(kind.into()), why));
            self.scratch.fds.clear();
            ctx.reply(["0"])?;
            return Ok(());
        }
        conn.set_write_timeout(Some(Duration::from_secs(5)));
        // The client may have died while its command waited (say, for the preload): nobody to
        // run it for.
        if os::peer_hung_up(conn.as_fd()) {
            self.scratch.fds.clear();
            ctx.reply(["0"])?;
            return Ok(());
        }

        // What the worker needs is built here, before the fork: an allocation in the worker can
        // land on any page of the template's fragmented heap (a free chunk, and its neighbours
        // in malloc's lists) and copy it; in a shared huge page, that splits it first (about
        // 20 us each). `environ` will point at `envp`, whose entries point into `req`.
        let sc = &mut self.scratch;
        let (argv_range, env_range, extra_range) =
            (parts.argv.clone(), parts.env.clone(), parts.extra.clone());
        sc.envp.clear();
        let env = &sc.req[env_range.clone()];
        sc.envp.extend(
            split_nul(env)
                .filter(|kv| kv.iter().position(|&b| b == b'=').is_some_and(|i| i > 0))
                .map(|kv| kv.as_ptr().cast::<libc::c_char>().cast_mut())
                .chain(std::iter::once(std::ptr::null_mut())),
        );
        let args: Vec<OsString> = split_nul(&sc.req[argv_range.clone()])
            .skip(1) // the program name
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

        // Every signal stays blocked across the fork: the server loop runs handlers with its
        // signals unblocked, and the worker must not run the template's flag handler (which
        // would swallow a SIGTERM or SIGINT) before it has reset its dispositions.
        let old_mask = sys::set_sigmask(&sys::sigset(true));
        // SAFETY: the template is single-threaded (the application's preload must not leave
        // threads running; see the module docs), so the child may do anything.
        let forked = unsafe { sys::fork() };
        if matches!(forked, Ok(0)) {
            let job = WorkerJob {
                args,
                req: &self.scratch.req,
                argv: argv_range,
                env: env_range,
                extra: extra_range,
                envp: &mut self.scratch.envp,
                want: &want,
                own,
                handlers: &self.handlers,
                area: self.area.as_ref(),
                key: &self.key,
                preloaded: self.preloaded,
            };
            worker_main(
                &mut self.app,
                job,
                &self.scratch.fds,
                &mut conn,
                &self.scratch.close,
            );
        }
        sys::set_sigmask(&old_mask);
        // The worker has them; holding them would keep the client's pipes open.
        self.scratch.fds.clear();
        let pid = forked.map_err(RemoteError::from)?;

        // The worker itself sends the client `["pid", n]` once it leads its own process group
        // (so the client never signals a group that does not exist yet); nothing to wait for
        // here. SIGIO when the client hangs up (or sends a byte: checked then); check once now
        // for a hang-up that came first.
        let alive = sys::set_async_owner(conn.as_fd()).is_ok() && !os::peer_hung_up(conn.as_fd());
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

    /// Ends the workers whose client went away: nobody is left to read their output or their
    /// status, so their process groups go too.
    fn end_workers_of_gone_clients(&mut self) {
        for w in &mut self.workers {
            let gone = w.conn.as_ref().is_some_and(|c| os::peer_hung_up(c.as_fd()));
            if gone {
                kill_worker(w.pid);
                w.conn = None;
            }
        }
    }

    /// Tells the client its worker stopped (so that the client, the shell's job, stops too).
    fn report_stop(&mut self, pid: libc::pid_t, sig: libc::c_int) {
        if let Some(conn) = self
            .workers
            .iter_mut()
            .find(|w| w.pid == pid)
            .and_then(|w| w.conn.as_mut())
        {
            let _ = conn.write_array(["stopped".to_owned(), sig.to_string()]);
        }
    }
}

impl<A: Application> Server for Template<A> {
    type Client = crate::client::ServerHandle;
    const SIGNALS: &'static [Signal] = &[Signal::SIGCHLD, Signal::SIGIO];

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
            other => Err(RemoteError::unknown_message(other)),
        }
    }

    fn handle_signal(&mut self, _ctx: &mut Context<'_>, signal: Signal) {
        match signal {
            Signal::SIGCHLD => {
                while let Some(ev) = os::child_event() {
                    match ev {
                        os::ChildEvent::Ended(pid, raw) => self.report(pid, raw),
                        os::ChildEvent::Stopped(pid, sig) => self.report_stop(pid, sig),
                    }
                }
            }
            Signal::SIGIO => self.end_workers_of_gone_clients(),
            _ => {}
        }
    }

    fn finalize_server(&mut self) {
        // Retired (watched file changed, server stopped or replaced) or orphaned (server
        // gone): let running workers finish, and go on doing for them what the loop did: report
        // each stop and end to its client as soon as it happens, in whatever order (waiting for
        // them in start order would keep a short command's client waiting for an older one),
        // and end the worker of a client that goes away.
        let mut chld = sys::sigset(false);
        sys::sigset_add(&mut chld, libc::SIGCHLD);
        // SAFETY: a valid set; blocking SIGCHLD so that it queues for the signalfd below.
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &chld, std::ptr::null_mut()) };
        let sigfd = match sys::signalfd(&chld) {
            Ok(fd) => fd,
            Err(e) => {
                eprintln!(
                    "fdserver preloader: template {:?}: no signalfd ({e}): waiting for its \
                     workers without watching their clients",
                    self.key
                );
                while !self.workers.is_empty() {
                    match os::reap_any_blocking() {
                        Some((pid, raw)) => self.report(pid, raw),
                        None => break,
                    }
                }
                return;
            }
        };
        loop {
            while let Some(ev) = os::child_event() {
                match ev {
                    os::ChildEvent::Ended(pid, raw) => self.report(pid, raw),
                    os::ChildEvent::Stopped(pid, sig) => self.report_stop(pid, sig),
                }
            }
            self.end_workers_of_gone_clients();
            if self.workers.is_empty() {
                return;
            }
            let mut fds = vec![sigfd.as_fd()];
            fds.extend(
                self.workers
                    .iter()
                    .filter_map(|w| w.conn.as_ref().map(|c| c.as_fd())),
            );
            if os::wait_hang_up_or_readable(&fds).is_err() {
                // Cannot wait (out of memory?): reap what ends, without the rest.
                match os::reap_any_blocking() {
                    Some((pid, raw)) => self.report(pid, raw),
                    None => return,
                }
            }
            while let Ok(Some(_)) = sys::read_signalfd(sigfd.as_fd()) {}
        }
    }
}

/// Reads the request that follows the client's first message: a `u32` length whose first byte
/// carries the descriptors (into `fds`), then the body into `body`.
fn read_request(
    sock: std::os::fd::BorrowedFd<'_>,
    body: &mut Vec<u8>,
    fds: &mut Vec<OwnedFd>,
    deadline: Instant,
) -> Result<(), String> {
    fds.clear();
    let mut hdr = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let had = fds.len();
        match os::recv_fds(sock, &mut hdr[got..], fds) {
            Ok((0, _)) => return Err("the client hung up".into()),
            Ok((n, truncated)) => {
                if truncated || (got > 0 && fds.len() > had) {
                    return Err(format!(
                        "unexpected descriptors (at most {} in all)",
                        4 + os::MAX_EXTRA_FDS
                    ));
                }
                got += n;
            }
            Err(e) => wait_or(sock, e, deadline)?,
        }
    }
    if fds.len() < 4 {
        return Err(format!(
            "expected at least 4 descriptors, got {}",
            fds.len()
        ));
    }
    let len = u32::from_le_bytes(hdr) as usize;
    if len > MAX_REQUEST {
        return Err(format!("a command of {len} bytes (at most {MAX_REQUEST})"));
    }
    body.clear();
    body.resize(len, 0);
    let mut filled = 0;
    while filled < len {
        match sys::recv(sock, &mut body[filled..], true) {
            Ok(r) if r.n == 0 => return Err("the client hung up".into()),
            Ok(r) => {
                if r.fd_count() > 0 || r.truncated {
                    return Err("unexpected descriptors".into());
                }
                filled += r.n;
            }
            Err(e) => wait_or(sock, e, deadline)?,
        }
    }
    Ok(())
}

fn wait_or(
    sock: std::os::fd::BorrowedFd<'_>,
    e: std::io::Error,
    deadline: Instant,
) -> Result<(), String> {
    match e.kind() {
        std::io::ErrorKind::WouldBlock => match sys::wait_fd(sock, libc::POLLIN, Some(deadline)) {
            Ok(true) => Ok(()),
            Ok(false) => Err(format!("timed out after {REQUEST_BUDGET:?}")),
            Err(e) => Err(e.to_string()),
        },
        std::io::ErrorKind::Interrupted => Ok(()),
        _ => Err(e.to_string()),
    }
}

/// The parts of a request body: `u32` argv length, argv (NUL-separated, NUL-terminated, the
/// program name first), `u32` environment length, environment (`KEY=VALUE`, same format), then
/// optionally the attributes (a client in another language may leave them out: the worker then
/// keeps the template's, and has the signal state of a fresh Rust `main`), then optionally a
/// `u32` count and as many `u32` descriptor numbers: where the worker puts the descriptors that
/// follow the first four (those the client inherited besides 0, 1, 2).
struct Parts {
    argv: std::ops::Range<usize>,
    env: std::ops::Range<usize>,
    attrs: Option<Attrs>,
    /// The descriptor numbers, 4 bytes each (little-endian).
    extra: std::ops::Range<usize>,
}

impl Parts {
    fn split(b: &[u8]) -> Option<Parts> {
        let len_at = |at: usize| -> Option<usize> {
            Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
        };
        let argv_len = len_at(0)?;
        let argv = 4..4 + argv_len;
        let env_len = len_at(argv.end)?;
        let env = argv.end + 4..argv.end + 4 + env_len;
        let rest = b.get(env.end..)?;
        let (attrs, extra) = if rest.is_empty() {
            (None, b.len()..b.len())
        } else {
            let attrs = Attrs::decode(rest.get(..attrs::ENCODED)?)?;
            let at = env.end + attrs::ENCODED;
            if b.len() == at {
                (Some(attrs), at..at)
            } else {
                let n = len_at(at)?;
                if n > os::MAX_EXTRA_FDS || b.len() != at + 4 + 4 * n {
                    return None;
                }
                (Some(attrs), at + 4..b.len())
            }
        };
        // Both lists must end in NUL: the worker points C strings into them.
        let ends_nul = |r: &std::ops::Range<usize>| r.is_empty() || b.get(r.end - 1) == Some(&0);
        if b.len() < env.end || !ends_nul(&argv) || !ends_nul(&env) || argv.is_empty() {
            return None;
        }
        Some(Parts {
            argv,
            env,
            attrs,
            extra,
        })
    }
}

/// Encodes a request body (the client's side of [`Parts`]).
pub(crate) fn encode_request(argv: &[u8], env: &[u8], attrs: &Attrs, extra: &[RawFd]) -> Vec<u8> {
    let tail = if extra.is_empty() {
        0
    } else {
        4 + 4 * extra.len()
    };
    let body = 4 + argv.len() + 4 + env.len() + attrs::ENCODED + tail;
    let mut out = Vec::with_capacity(4 + body);
    out.extend_from_slice(&(body as u32).to_le_bytes());
    out.extend_from_slice(&(argv.len() as u32).to_le_bytes());
    out.extend_from_slice(argv);
    out.extend_from_slice(&(env.len() as u32).to_le_bytes());
    out.extend_from_slice(env);
    attrs.encode(&mut out);
    if !extra.is_empty() {
        out.extend_from_slice(&(extra.len() as u32).to_le_bytes());
        for fd in extra {
            out.extend_from_slice(&(*fd as u32).to_le_bytes());
        }
    }
    out
}

/// Kills a worker's process group, and the worker itself in case it has not become a group
/// leader (it died before, or is a zombie).
fn kill_worker(pid: libc::pid_t) {
    let _ = sys::kill_group(pid, libc::SIGKILL);
    let _ = sys::kill(pid, libc::SIGKILL);
}

/// What a worker runs.
struct WorkerJob<'a> {
    args: Vec<OsString>,
    req: &'a [u8],
    argv: std::ops::Range<usize>,
    env: std::ops::Range<usize>,
    extra: std::ops::Range<usize>,
    envp: &'a mut Vec<*mut libc::c_char>,
    want: &'a Attrs,
    own: &'a Own,
    handlers: &'a Handlers,
    area: Option<&'a ArgvArea>,
    key: &'a str,
    preloaded: Instant,
}

/// The forked worker: becomes the client's command.
fn worker_main<A: Application>(
    app: &mut A,
    job: WorkerJob<'_>,
    fds: &[OwnedFd],
    conn: &mut Channel,
    close: &[RawFd],
) -> ! {
    // Every signal is blocked (the template blocked them all around the fork); they are
    // unblocked last, once this process has the client's dispositions and nothing of the
    // template's handling is left. Our own process group first: in the template's session,
    // so that stop signals stop it (a group with a parent outside it is not orphaned), and its
    // own so that the client can signal it as a whole. Then tell the client who we are.
    // SAFETY: setpgid on ourselves.
    unsafe { libc::setpgid(0, 0) };
    let mut digits = [0u8; 20];
    let pid = decimal(sys::getpid(), &mut digits);
    // Our template (for the client's message should it die while we run).
    let mut tdigits = [0u8; 20];
    // SAFETY: getppid cannot fail.
    let template = decimal(unsafe { libc::getppid() } as u32, &mut tdigits);
    // A pidfd of ourselves goes with the pid: the client signals us (and our group) only
    // through it, so never a process that later gets our number.
    // If the client is gone, there is nobody to run for: leave before running anything (the
    // template, seeing the hang-up, would kill us anyway).
    let pidfd = sys::pidfd_open(sys::getpid() as libc::pid_t).ok();
    let sent = match &pidfd {
        Some(fd) => conn.write_array_with_fd([b"pid".as_slice(), pid, b"fd", template], fd.as_fd()),
        None => conn.write_array([b"pid".as_slice(), pid]),
    };
    drop(pidfd);
    if sent.is_err() {
        sys::exit_now(1);
    }
    // The client suspended before it knew our pid (Ctrl-Z while the template preloaded): it
    // wrote `S` before stopping itself and writes `G` when continued. Wait for that, so that a
    // suspended job does not run. (It wrote `S` before checking for our pid, and we wrote our
    // pid before checking for `S`: one of us always sees the other.)
    if !await_go(conn.as_fd()) {
        sys::exit_now(1);
    }
    for (i, fd) in fds[..3].iter().enumerate() {
        if sys::dup2(fd.as_fd(), i as RawFd).is_err() {
            sys::exit_now(127);
        }
    }
    // The client's working directory, as a descriptor: works for a directory since deleted, a
    // path that is not UTF-8 or is longer than PATH_MAX.
    if let Err(e) = attrs::fchdir(fds[3].as_fd()) {
        let _ = writeln!(
            std::io::stderr(),
            "fdserver preloader: cannot enter the working directory: {e}"
        );
        sys::exit_now(126);
    }
    // The connection is closed below (its number may be one the client's descriptors need):
    // a copy above every such number stays, to hand the command back if need be.
    let above = os::max_target(&job.req[job.extra.clone()]).max(2) + 1;
    // SAFETY: fcntl on a valid descriptor; the copy is close-on-exec.
    let report = unsafe { libc::fcntl(conn.as_raw_fd(), libc::F_DUPFD_CLOEXEC, above) };
    for &fd in close {
        sys::close_raw(fd);
    }
    // The `OwnedFd`s belong to the template's buffer, which this process never drops: close by
    // number (the other descriptors first go where the client had them).
    for fd in &fds[..4] {
        sys::close_raw(fd.as_raw_fd());
    }
    let mut failed = attrs::Failed::default();
    os::install_fds(&fds[4..], &job.req[job.extra.clone()], &mut failed);
    let WorkerJob {
        args,
        req,
        argv,
        env,
        extra: _,
        envp,
        want,
        own,
        handlers,
        area,
        key,
        preloaded,
    } = job;
    if let Some(area) = area {
        area.set_args(&req[argv], &req[env]);
    }
    own.attrs.apply(want, &mut failed);
    if !failed.names().is_empty() {
        hand_back(report, &failed);
    }
    sys::close_raw(report);
    // The client's environment replaces ours in one step: `environ` points at `envp`, whose
    // entries point into the request's buffer (never freed: the process ends with the command).
    // The worker is single-threaded, so nothing reads the environment concurrently.
    // SAFETY: single-threaded; `envp` is a NULL-terminated array of pointers to NUL-terminated
    // strings (`Parts::split` checked that the list ends in NUL, so each item is followed by
    // one, and contains none: `split_nul` split there). Both are borrowed from the template,
    // which this process never returns to (this function exits it), so they outlive every
    // reader of `environ`.
    unsafe { libc::environ = envp.as_mut_ptr() };
    handlers.reset_for(want.sig_ignored, own.ignored, own.caught);
    sys::take_pending();
    sys::set_sigmask(&attrs::set_of(want.sig_blocked));
    if std::env::var_os(super::ENV_VERBOSE).is_some_and(|v| !v.is_empty() && v != "0") {
        let _ = writeln!(
            std::io::stderr(),
            "fdserver preloader: running preloaded: template {key:?} (pid {}, preloaded {} s ago), worker pid {}",
            // SAFETY: getppid cannot fail.
            unsafe { libc::getppid() },
            preloaded.elapsed().as_secs(),
            sys::getpid()
        );
    }
    let code = catch_unwind(AssertUnwindSafe(|| app.run(args))).unwrap_or(101);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    sys::exit_now(code)
}

/// The worker could not take on everything the client has (a hard limit it may not raise, a
/// descriptor number the preload keeps...): it would not be what a fresh run is. Tells the client
/// (which runs the command itself, in-process) and exits without running anything.
/// `report` is a copy of the client's connection.
fn hand_back(report: RawFd, failed: &attrs::Failed) -> ! {
    if report >= 0 {
        let why = format!(
            "the preloader's worker could not take on its {}",
            failed.names().join(", ")
        );
        // SAFETY: a descriptor this process owns (the copy made for this).
        let mut conn = Channel::new(unsafe { OwnedFd::from_raw_fd(report) });
        let _ = conn.write_array(["error", "confined", why.as_str()]);
    }
    sys::exit_now(0)
}

/// Reads the bytes the client may have sent after its request: returns once none is waiting
/// and no `S` is unanswered by a `G`; `false` if the client hung up.
fn await_go(conn: std::os::fd::BorrowedFd<'_>) -> bool {
    let mut parked = false;
    loop {
        let mut b = [0u8; 1];
        match sys::recv(conn, &mut b, !parked) {
            Ok(r) if r.n == 0 => return false,
            Ok(_) => match b[0] {
                b'S' => parked = true,
                b'G' => parked = false,
                _ => {}
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let attrs = Attrs::of_this_process(0);
        let enc = encode_request(b"prog\0a\0\0", b"A=1\0B=\0", &attrs, &[7, 9]);
        let body = &enc[4..];
        assert_eq!(
            u32::from_le_bytes(enc[..4].try_into().unwrap()) as usize,
            body.len()
        );
        let p = Parts::split(body).expect("splits");
        assert_eq!(&body[p.argv.clone()], b"prog\0a\0\0");
        assert_eq!(&body[p.env.clone()], b"A=1\0B=\0");
        assert!(p.attrs == Some(attrs.clone()));
        assert_eq!(&body[p.extra.clone()], &[7, 0, 0, 0, 9, 0, 0, 0]);
        // Without attributes.
        let mut short = encode_request(b"prog\0", b"", &attrs, &[]);
        short.truncate(short.len() - attrs::ENCODED);
        assert!(Parts::split(&short[4..]).is_some_and(|p| p.attrs.is_none()));
        // A list that does not end in NUL is refused.
        let bad = encode_request(b"prog", b"", &attrs, &[]);
        assert!(Parts::split(&bad[4..]).is_none());
    }
}
