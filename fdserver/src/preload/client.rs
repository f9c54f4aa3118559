//! The thin client: connect (or start a server), hand over the command, relay signals, exit with
//! the worker's status.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::attrs::{self, Attrs};
use super::context;
use super::{
    build_id, join_nul, lock_within, os, verbose, Application, Dir, Kind, Preloader, Unusable,
    ENV_ROLE, PROTOCOL_VERSION,
};
use crate::channel::Channel;
use crate::error::Error;
use crate::sys;
use crate::wire::MessageBuf;

/// Whether the client relays `sig` to the worker's process group: every signal but those it
/// cannot catch (KILL, STOP), those the kernel raises for a fault of the client itself (SEGV,
/// BUS, FPE, ILL, TRAP, SYS, and PIPE for a write to a closed pipe), its own children's CHLD,
/// and the two the C library keeps for itself (32, 33).
fn relayed(sig: libc::c_int) -> bool {
    !matches!(
        sig,
        libc::SIGKILL
            | libc::SIGSTOP
            | libc::SIGSEGV
            | libc::SIGBUS
            | libc::SIGFPE
            | libc::SIGILL
            | libc::SIGTRAP
            | libc::SIGSYS
            | libc::SIGPIPE
            | libc::SIGCHLD
            | 32
            | 33
    ) && (1..=64).contains(&sig)
}

/// Signals whose default action is to stop the process.
fn stops(sig: libc::c_int) -> bool {
    matches!(sig, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU)
}

/// Signals whose default action is to do nothing.
fn ignored_by_default(sig: libc::c_int) -> bool {
    matches!(sig, libc::SIGCONT | libc::SIGWINCH | libc::SIGURG)
}

/// How the worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Exit(i32),
    Signal(i32),
}

/// What [`run`] did.
pub(crate) enum Ran {
    /// The worker ran and ended so.
    Outcome(Outcome),
    /// A worker would not be what a fresh run of the command is (the client is sandboxed,
    /// traced, a background job of its terminal...: see `context`): run it in-process. Why
    /// (for `FDSERVER_PRELOAD_VERBOSE`).
    InProcess(String),
}

impl Outcome {
    /// Ends this process the way the worker ended: same exit code, or death by the same signal.
    pub(crate) fn exit(self) -> ! {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        match self {
            Outcome::Exit(code) => std::process::exit(code),
            Outcome::Signal(sig) => die_by(sig),
        }
    }
}

/// Dies by `sig` (its default action), as the command would have; exits `128 + sig` if that
/// action does not end the process. Without a core dump: the worker that died by it has dumped
/// the command's own (where the system puts cores); the client's would replace or bury it.
fn die_by(sig: libc::c_int) -> ! {
    if dumps_core(sig) {
        let none = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: integer and valid-pointer arguments; this process is about to end.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        }
    }
    let _ = sys::set_disposition(sig, sys::Disposition::Default);
    let mut only = sys::sigset(true);
    sys::sigset_del(&mut only, sig);
    sys::set_sigmask(&only);
    let _ = sys::kill(sys::getpid() as i32, sig);
    // Still alive: the signal's default action is not to terminate.
    std::process::exit(128 + sig)
}

/// Signals whose default action dumps core (signal(7)).
fn dumps_core(sig: libc::c_int) -> bool {
    matches!(
        sig,
        libc::SIGQUIT
            | libc::SIGILL
            | libc::SIGTRAP
            | libc::SIGABRT
            | libc::SIGBUS
            | libc::SIGFPE
            | libc::SIGSEGV
            | libc::SIGXCPU
            | libc::SIGXFSZ
            | libc::SIGSYS
    )
}

/// Stops this process with `sig` (its default action), as the command would have stopped.
/// Returns once continued: `true` if a SIGCONT continued it, `false` if the kernel discarded
/// the stop (TSTP, TTIN and TTOU do nothing to a process in an orphaned process group).
fn stop_by(sig: libc::c_int) -> bool {
    let old = sys::set_disposition(sig, sys::Disposition::Default).ok();
    let mut one = sys::sigset(false);
    sys::sigset_add(&mut one, sig);
    let _ = sys::kill(sys::getpid() as i32, sig);
    // The signal is blocked (it is one we relay): unblocking delivers it, and we stop here.
    // SAFETY: valid sets.
    unsafe {
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
        libc::pthread_sigmask(libc::SIG_BLOCK, &one, std::ptr::null_mut());
    }
    if let Some(old) = old {
        sys::restore_disposition(sig, &old);
    }
    // A SIGCONT that continues us stays pending (blocked, for the signalfd).
    let mut pending = sys::sigset(false);
    // SAFETY: valid out-pointer.
    unsafe { libc::sigpending(&mut pending) };
    // SAFETY: an initialised set.
    unsafe { libc::sigismember(&pending, libc::SIGCONT) == 1 }
}

/// Whether process `pid` is stopped right now (`/proc/<pid>/stat`); `true` if unknown.
fn is_stopped(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.trim_start().chars().next())
            .map_or(true, |c| c == 'T'),
        Err(_) => true,
    }
}

/// The server's answer to `status`, with what the client knows of its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The application's name.
    pub app: String,
    /// The server's socket.
    pub socket: PathBuf,
    /// Where the server's and templates' output goes: the log file, or the terminal of a
    /// server started with `--preloader serve`.
    pub log: String,
    /// The server's pid.
    pub server_pid: u32,
    /// How long it has been running.
    pub uptime: Duration,
    /// Its protocol version.
    pub version: String,
    /// The identity of its build (the executable's ELF build id, in hex; see *State recovery*
    /// in the module docs).
    pub build: String,
    /// The idle timeout it runs with (`Duration::ZERO`: none). It is read when the server
    /// starts: a different `FDSERVER_PRELOAD_IDLE_TIMEOUT` takes effect after `--preloader
    /// restart`.
    pub idle_timeout: Duration,
    /// Its templates, by key.
    pub templates: Vec<TemplateStatus>,
}

/// One template in a [`Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateStatus {
    /// The environment key it serves.
    pub key: String,
    /// What it is doing.
    pub state: TemplateState,
    /// Its pid, if it is running.
    pub pid: Option<u32>,
    /// How long since it was (re)started, or since its preload began.
    pub uptime: Duration,
    /// Its resident memory in bytes, if known.
    pub memory: Option<u64>,
    /// How many workers (commands) it is running, if known.
    pub workers: Option<usize>,
}

/// What a template is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateState {
    /// Preloaded, serving commands.
    Running,
    /// Preloading.
    Preloading,
    /// Not running (never started, failed, or died); the next command starts it.
    Stopped,
}

/// "12 s", "3 min", "2 h 5 min".
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min", s / 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: preloader server pid {}, up {} ({}, build {})",
            self.app,
            self.server_pid,
            human(self.uptime),
            self.version,
            self.build.get(..16).unwrap_or(&self.build)
        )?;
        writeln!(f, "  socket: {}", self.socket.display())?;
        writeln!(f, "  log:    {}", self.log)?;
        if self.idle_timeout.is_zero() {
            writeln!(f, "  idle timeout: none")?;
        } else {
            writeln!(
                f,
                "  idle timeout: {} (set when the server started)",
                human(self.idle_timeout)
            )?;
        }
        if self.templates.is_empty() {
            writeln!(f, "  no template yet (the first command starts one)")?;
        }
        for t in &self.templates {
            match (t.state, t.pid) {
                (TemplateState::Running, Some(pid)) => {
                    write!(
                        f,
                        "  template {:?}: pid {pid}, up {}",
                        t.key,
                        human(t.uptime)
                    )?;
                    if let Some(m) = t.memory {
                        write!(f, ", {:.1} MiB resident", m as f64 / (1 << 20) as f64)?;
                    }
                    match t.workers {
                        Some(1) => write!(f, ", 1 running command")?,
                        Some(n) => write!(f, ", {n} running commands")?,
                        None => {}
                    }
                    writeln!(f)?;
                }
                (TemplateState::Preloading, _) => writeln!(
                    f,
                    "  template {:?}: preloading (for {})",
                    t.key,
                    human(t.uptime)
                )?,
                _ => writeln!(f, "  template {:?}: not running", t.key)?,
            }
        }
        Ok(())
    }
}

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// The message for an `["error", kind, text]` from the server, with what to do.
fn explain(kind: &str, text: &str) -> String {
    match kind {
        "preload" => format!(
            "{text}.\nFix the preload and run the command again: the next command preloads again \
             (`--preloader serve` runs a server that shows its log on the terminal)."
        ),
        "template" => {
            format!("{text}.\nRun the command again: the next command starts a new template.")
        }
        "stopping" => format!("{text}; run the command again."),
        "server" => format!("{text}."),
        _ => format!("{kind}: {text}"),
    }
}

/// Why a command could not run through the preloader.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The directory, or the process listening on its socket, cannot be trusted: the command
    /// runs in-process instead.
    Unusable(String),
    /// The server is in trouble (it does not answer: wedged, or at its connection limit): the
    /// command runs in-process instead, with this line on stderr.
    Trouble(String),
    /// The preloader cannot be used from here (its directory is read-only or full for this
    /// process, a sandbox forbids writing there...): the command runs in-process, saying why
    /// under `FDSERVER_PRELOAD_VERBOSE`, as for a confined client.
    InProcess(String),
    /// Anything else: the command fails with this error.
    Io(io::Error),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        Failure::Io(e)
    }
}

impl From<Unusable> for Failure {
    fn from(u: Unusable) -> Failure {
        Failure::Unusable(u.0)
    }
}

fn failure_to_io(f: Failure) -> io::Error {
    match f {
        Failure::Unusable(why) => io::Error::new(io::ErrorKind::PermissionDenied, why),
        Failure::Trouble(why) => io::Error::new(io::ErrorKind::TimedOut, why),
        Failure::InProcess(why) => io::Error::new(io::ErrorKind::PermissionDenied, why),
        Failure::Io(e) => e,
    }
}

/// `e`, from creating or opening a file of the preloader's directory or starting the server
/// (`what` says which, when `e` does not): a directory this process may not write to
/// (read-only, a sandbox), or no room (disk, quota, descriptors) makes the command run
/// in-process; anything else fails it.
fn cannot_use(e: io::Error, what: Option<(&str, &Path)>) -> Failure {
    use io::ErrorKind as K;
    let no_room = matches!(
        e.raw_os_error(),
        Some(
            libc::EACCES
                | libc::EPERM
                | libc::EROFS
                | libc::ENOSPC
                | libc::EDQUOT
                | libc::EMFILE
                | libc::ENFILE
        )
    ) || matches!(
        e.kind(),
        K::PermissionDenied | K::ReadOnlyFilesystem | K::StorageFull | K::QuotaExceeded
    );
    let e = match what {
        Some((what, path)) => io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())),
        None => e,
    };
    if no_room {
        Failure::InProcess(format!("cannot use the preloader: {e}"))
    } else {
        Failure::Io(e)
    }
}

/// How many times a command is sent again when the server stopped (or its template died)
/// before its worker started: a command racing `--preloader stop`, a restart, a rebuild's new
/// server or an idle exit starts (or finds) the next server instead of failing.
const RETRIES: u32 = 2;

/// Runs one command (this process's arguments) through the preloader.
pub(crate) fn run<A: Application>(p: &Preloader<A>) -> Result<Ran, Failure> {
    // What exec passed us besides 0, 1, 2 (`3>file`, a jobserver's pipe): the worker gets them
    // under the same numbers. Read before this process opens anything itself.
    let inherited = os::inherited_fds();
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let status = attrs::proc_status();
    // What only this process can see (a tracer, an injected library, a background job of its
    // terminal): such a command runs here, and no server is contacted (nor started under a
    // tracer).
    if let Some(why) = context::client_reason(&status, &env, inherited.len()) {
        return Ok(Ran::InProcess(why));
    }
    let dir = p.dir()?;
    let key = p.app.template_key(&env);
    // The working directory as a descriptor: the worker `fchdir`s into it, so a directory
    // since deleted, a path that is not UTF-8 or longer than PATH_MAX all work.
    // SAFETY: a NUL-terminated path; the result is checked.
    let cwd = unsafe {
        libc::open(
            c".".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if cwd < 0 {
        let e = io::Error::last_os_error();
        return Err(other(format!("cannot open the working directory: {e}")).into());
    }
    // SAFETY: a descriptor open() just returned, owned by nobody else.
    let cwd = unsafe { OwnedFd::from_raw_fd(cwd) };

    // Block the signals we relay before anything else, so that none is lost: until the worker's
    // pid is known they wait in the signalfd. What was blocked before is the worker's mask.
    let mut set = sys::sigset(false);
    for s in 1..=64 {
        if relayed(s) {
            sys::sigset_add(&mut set, s);
        }
    }
    let old_mask = sys::set_sigmask(&set);
    let sigfd = sys::signalfd(&set)?;
    let original = attrs::mask_of(&old_mask);
    let attrs = Attrs::with_status(&status, original);

    let log = dir.display(Kind::Log);
    let mut relay = Relay {
        worker: None,
        queued: Vec::new(),
        relayed: Vec::new(),
        original,
        parked: false,
        log: &log,
        key: &key,
        server: 0,
    };
    let result = (|| {
        let full: Vec<OsString> = std::env::args_os().collect();
        let argv = join_nul(full.iter().map(|a| a.as_bytes()));
        let mut envb = Vec::new();
        for (k, v) in &env {
            envb.extend_from_slice(k.as_bytes());
            envb.push(b'=');
            envb.extend_from_slice(v.as_bytes());
            envb.push(0);
        }
        let request = super::template::encode_request(&argv, &envb, &attrs, &inherited);
        let send = |conn: &mut Channel, proof: &[u8]| -> Result<(), Error> {
            conn.write_array([b"run".as_slice(), key.as_bytes(), proof])?;
            // The rest goes to the template, which reads it from our socket: one `sendmsg`
            // carrying stdin, stdout, stderr and the working directory with its first byte.
            let (stdin, stdout, stderr) = (io::stdin(), io::stdout(), io::stderr());
            let mut fds = vec![stdin.as_fd(), stdout.as_fd(), stderr.as_fd(), cwd.as_fd()];
            // SAFETY: each is open in this process (just listed) and outlives the send.
            fds.extend(
                inherited
                    .iter()
                    .map(|&fd| unsafe { BorrowedFd::borrow_raw(fd) }),
            );
            os::send_with_fds(conn.as_fd(), &request, &fds).map_err(Error::Io)
        };
        let (mut retries, mut replaced) = (0, false);
        loop {
            let mut c = connect_checked(p, &dir)?;
            if c.started && verbose() {
                eprintln!(
                    "fdserver preloader: started a preloader server (pid {}) for this command",
                    c.server
                );
            }
            if let Some(why) = context::confined_against(c.server) {
                return Ok(Ran::InProcess(why));
            }
            // The server runs nothing for a client that cannot prove it may inspect the server
            // (see `os::Proof`): one that cannot knows it is confined, and runs it here.
            let proof = match &c.proof {
                Ok(proof) => proof.clone(),
                Err(why) => return Ok(Ran::InProcess(why.clone())),
            };
            relay.server = c.server;
            let end = match send(&mut c.conn, &proof) {
                Ok(()) => relay.run(&mut c.conn, &sigfd)?,
                // The server may have refused the command (a failed preload, say) and hung up
                // while we were still sending: its reply, already on the socket, says why.
                Err(e) => match refusal(&c.conn, p.options.handshake_timeout) {
                    // Handed back before the whole command was read (the server judges the
                    // peer's context as soon as it connects): as if it came after.
                    Some((kind, text)) if kind == "confined" => End::InProcess(text),
                    Some((kind, text)) if kind == "outranked" => End::Replace(text),
                    Some((kind, text)) if retryable(&kind) => End::Retry(explain(&kind, &text)),
                    Some((kind, text)) => return Err(other(explain(&kind, &text)).into()),
                    None => End::Retry(format!("sending the command to the server: {e}")),
                },
            };
            match end {
                End::Outcome(outcome) => return Ok(Ran::Outcome(outcome)),
                End::InProcess(why) => {
                    relay.reraise();
                    return Ok(Ran::InProcess(why));
                }
                End::Replace(why) if !replaced => {
                    // The server (and so its templates) runs more confined than this command:
                    // started by a command under lower limits, say. Replace it with one started
                    // by us; its running commands finish.
                    if verbose() {
                        eprintln!(
                            "fdserver preloader: replacing the preloader server (pid {}): {why}",
                            c.server
                        );
                    }
                    drop(c);
                    replace_server(p, &dir, relay.server)?;
                    replaced = true;
                    relay.worker = None;
                }
                End::Replace(why) => {
                    relay.reraise();
                    return Ok(Ran::InProcess(why));
                }
                End::Retry(_) if retries < RETRIES => {
                    retries += 1;
                    relay.worker = None;
                }
                End::Retry(why) => return Err(other(why).into()),
            }
        }
    })();
    drop(cwd);
    sys::set_sigmask(&old_mask);
    result
}

/// Error kinds (`["error", kind, text]`, before the worker started) after which the command is
/// sent again (see [`RETRIES`]): the server was stopping, or the template died taking it.
fn retryable(kind: &str) -> bool {
    matches!(kind, "stopping" | "template")
}

/// Stops the server `old` (the pid that refused our command as more confined than us), if it
/// still is the one listening: another client may have replaced it already. Its running
/// commands finish (see `daemon::serve`).
fn replace_server<A: Application>(
    p: &Preloader<A>,
    dir: &Dir,
    old: libc::pid_t,
) -> Result<(), Failure> {
    if let Some((conn, pid)) = connect(dir)? {
        if pid == old {
            stop_server(conn, p.options.stop_grace, None)?;
        }
    }
    Ok(())
}

/// The `["error", kind, text]` reply a server left on `conn` before hanging up, if there is one.
/// Reads through a second descriptor for the same socket: `conn` is marked broken by the failed
/// send, but what the server wrote is still there to read.
fn refusal(conn: &Channel, timeout: Duration) -> Option<(String, String)> {
    let mut reader = Channel::new(conn.as_fd().try_clone_to_owned().ok()?);
    reader.set_read_timeout(Some(timeout));
    let mut buf = MessageBuf::new();
    if !reader.read_into(&mut buf).ok()? {
        return None;
    }
    let msg = buf.message();
    if msg.name() != b"error" {
        return None;
    }
    let kind = String::from_utf8_lossy(msg.get(1).unwrap_or(b"")).into_owned();
    let text = String::from_utf8_lossy(msg.get(2).unwrap_or(b"")).into_owned();
    Some((kind, text))
}

/// The command's worker, as the client may signal it: through the pidfd the worker itself sent
/// (so never a process that merely reuses its number), or, from a worker that could not make
/// one, by its number while the connection that announced it is open.
struct Worker {
    pid: i32,
    pidfd: Option<OwnedFd>,
    /// Its template's pid, as the worker saw it, for messages.
    template: Option<i32>,
}

impl Worker {
    /// Waits (a moment at most) for the worker to exit, through its pidfd.
    fn await_exit(&self) {
        if let Some(fd) = &self.pidfd {
            let deadline = Instant::now() + Duration::from_secs(2);
            let _ = sys::wait_fd(fd.as_fd(), libc::POLLIN, Some(deadline));
        }
    }

    /// Sends `sig` to the worker's process group (the worker leads it). `connected`: the
    /// connection that announced the worker is still open (its template still owns the worker,
    /// so its number is still the worker's).
    fn signal(&self, sig: i32, connected: bool) {
        let Some(fd) = &self.pidfd else {
            if connected {
                let _ = sys::kill_group(self.pid, sig);
            }
            return;
        };
        match os::pidfd_signal_group(fd.as_fd(), sig) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                // Before Linux 6.9 a group is signalled by number: only while its leader, the
                // worker, runs is that number surely still its group's.
                if !sys::poll_now(fd.as_fd()) && os::pidfd_pid(fd.as_fd()) == Some(self.pid) {
                    let _ = sys::kill_group(self.pid, sig);
                }
            }
            Err(_) => {}
        }
    }
}

/// The client's side of a running command: relays signals to the worker, mirrors its stops,
/// waits for its status.
struct Relay<'a> {
    /// The worker (its pid and pidfd, leading its process group), once it has told us.
    worker: Option<Worker>,
    /// Signals to relay once the worker's pid is known.
    queued: Vec<i32>,
    /// Signals relayed to the worker (raised again here if the worker hands the command back
    /// without running it).
    relayed: Vec<i32>,
    /// The signals blocked when the program started: they stay pending for the worker.
    original: u64,
    /// We wrote `S` (suspended before the worker's pid came) and not yet `G`.
    parked: bool,
    log: &'a Path,
    /// The command's template key, for messages.
    key: &'a str,
    /// The server's pid (`SO_PEERCRED`), for messages.
    server: libc::pid_t,
}

/// How a command's relay ended.
enum End {
    /// The worker ended so.
    Outcome(Outcome),
    /// Run the command in this process: why.
    InProcess(String),
    /// The server is more confined than this command: replace it (why).
    Replace(String),
    /// The server stopped (or the template died) before the worker started: send the command
    /// again (this error if that fails too).
    Retry(String),
}

/// What the relay loop does after a message.
enum Step {
    Continue,
    Done(End),
}

impl Relay<'_> {
    /// Waits for the worker's status, relaying signals meanwhile.
    fn run(&mut self, conn: &mut Channel, sigfd: &OwnedFd) -> io::Result<End> {
        let mut buf = MessageBuf::new();
        loop {
            let ready = sys::poll_in(&[conn.as_fd(), sigfd.as_fd()], None)?;
            if ready[1] {
                while let Some(sig) = sys::read_signalfd(sigfd.as_fd())? {
                    if let Some(done) = self.on_signal(conn, &mut buf, sig)? {
                        return Ok(done);
                    }
                }
            }
            // (Handling a signal may have read what was waiting: then look again, never block.)
            if ready[0] && (!ready[1] || sys::poll_now(conn.as_fd())) {
                if let Step::Done(d) = self.on_message(conn, &mut buf)? {
                    return Ok(d);
                }
            }
        }
    }

    /// A signal for the command. Once the worker exists, it gets it. Before, we do what the
    /// command would have done with it while preloading: a blocked one stays pending (relayed
    /// later), one that terminates ends us at once (the preload goes on in the background, for
    /// the next command), one that stops stops us (and the worker will wait until we
    /// continue), and one that does nothing by default is relayed later.
    fn on_signal(
        &mut self,
        conn: &mut Channel,
        buf: &mut MessageBuf,
        sig: i32,
    ) -> io::Result<Option<End>> {
        // The worker may have sent its pid already (it does before it runs anything): then it
        // gets the signal.
        while self.worker.is_none() && sys::poll_now(conn.as_fd()) {
            if let Step::Done(d) = self.on_message(conn, buf)? {
                return Ok(Some(d));
            }
        }
        if let Some(w) = &self.worker {
            w.signal(sig, true);
            self.relayed.push(sig);
            return Ok(None);
        }
        if self.original & (1u64 << (sig - 1)) != 0 {
            self.queue(sig);
        } else if stops(sig) {
            // Tell the worker to wait (it checks after sending its pid), then see whether the
            // pid came meanwhile: one of us always sees the other.
            let _ = send_byte(conn, b'S');
            self.parked = true;
            while self.worker.is_none() && sys::poll_now(conn.as_fd()) {
                if let Step::Done(d) = self.on_message(conn, buf)? {
                    let _ = send_byte(conn, b'G');
                    return Ok(Some(d));
                }
            }
            match &self.worker {
                Some(w) => {
                    // The worker exists: it stops itself with the signal, and we stop when it
                    // reports so. Release it first if it saw our `S`.
                    let _ = send_byte(conn, b'G');
                    self.parked = false;
                    w.signal(sig, true);
                    self.relayed.push(sig);
                }
                None => {
                    stop_by(sig);
                    let _ = send_byte(conn, b'G');
                    self.parked = false;
                }
            }
        } else if ignored_by_default(sig) {
            if sig != libc::SIGCONT {
                self.queue(sig);
            }
        } else {
            die_by(sig);
        }
        Ok(None)
    }

    fn queue(&mut self, sig: i32) {
        if !self.queued.contains(&sig) || sig >= 34 {
            self.queued.push(sig);
        }
    }

    /// The command runs here after all: the signals meant for its worker (queued, or relayed
    /// to a worker that handed the command back) are raised again for this process, pending
    /// until the signal mask is restored.
    fn reraise(&mut self) {
        for sig in self.queued.drain(..).chain(self.relayed.drain(..)) {
            let _ = sys::kill(sys::getpid() as i32, sig);
        }
    }

    /// The message for a connection that ended while the worker ran: its template died.
    fn template_died(&self, w: &Worker) -> String {
        let template = match w.template {
            Some(t) => {
                let mut how = how_it_ended(t, self.server);
                if how.is_empty() {
                    how = logged_end(self.log, self.key, t);
                }
                format!(" (pid {t}{how})")
            }
            None => String::new(),
        };
        format!(
            "the preloader's template for {:?}{template} ended while the command ran (worker \
             pid {}): the command was ended (SIGTERM). Run it again: the next command starts a \
             new template (the server's log, {}, says more)",
            self.key,
            w.pid,
            self.log.display()
        )
    }

    fn on_message(&mut self, conn: &mut Channel, buf: &mut MessageBuf) -> io::Result<Step> {
        match conn.read_into(buf) {
            Ok(true) => {}
            Ok(false) => {
                end_orphan(self.worker.as_ref());
                return match &self.worker {
                    None => Ok(Step::Done(End::Retry(format!(
                        "the preloader server closed the connection before the command started \
                         (it was stopped, or it failed: see {}); run the command again",
                        self.log.display()
                    )))),
                    Some(w) => Err(other(self.template_died(w))),
                };
            }
            // A reset (the server closed with our request unread: it was stopping) before the
            // worker exists is an end like any other: nothing ran, so the command is sent again.
            Err(e) if self.worker.is_none() => {
                return Ok(Step::Done(End::Retry(format!(
                    "reading from the preloader server before the command started: {e} (it \
                     was stopped, or it failed: see {}); run the command again",
                    self.log.display()
                ))));
            }
            Err(e) => {
                end_orphan(self.worker.as_ref());
                return Err(other(format!("reading from the preloader server: {e}")));
            }
        }
        let msg = buf.message();
        let num = |i| -> io::Result<i32> {
            msg.str(i)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| other(format!("malformed message from the server: {msg:?}")))
        };
        match msg.name() {
            b"pid" if self.worker.is_none() => {
                let pid = num(1)?;
                // 0, 1 and negative numbers would make "its group" ours, init's or everyone's:
                // never a worker.
                if pid <= 1 {
                    return Err(other(format!(
                        "the preloader server sent an impossible worker pid {pid}"
                    )));
                }
                let pidfd = if msg.get(2) == Some(b"fd".as_slice()) {
                    match conn.recv_fd() {
                        Ok(Some(fd)) => Some(fd),
                        Ok(None) => {
                            return Err(other(format!(
                                "the preloader's template went away before the command \
                                 finished (see {})",
                                self.log.display()
                            )))
                        }
                        Err(e) => {
                            return Err(other(format!(
                                "reading the worker's pidfd from the preloader server: {e}"
                            )))
                        }
                    }
                } else {
                    None
                };
                let template = msg.str(3).ok().and_then(|s| s.parse().ok());
                let w = Worker {
                    pid,
                    pidfd,
                    template,
                };
                for sig in std::mem::take(&mut self.queued) {
                    w.signal(sig, true);
                    self.relayed.push(sig);
                }
                self.worker = Some(w);
                Ok(Step::Continue)
            }
            b"stopped" => {
                // The worker stopped (Ctrl-Z relayed, or it stopped itself): so do we, with the
                // same signal, so that the shell sees the job stopped. Unless it has been
                // continued since (this report is then out of date).
                let sig = num(1)?;
                if let Some(w) = &self.worker {
                    if is_stopped(w.pid) && !stop_by(sig) {
                        // The kernel discarded our stop (orphaned process group): the command,
                        // run without the preloader, would not have stopped either.
                        w.signal(libc::SIGCONT, true);
                    }
                }
                Ok(Step::Continue)
            }
            b"exit" => Ok(Step::Done(End::Outcome(Outcome::Exit(num(1)?)))),
            b"signal" => Ok(Step::Done(End::Outcome(Outcome::Signal(num(1)?)))),
            b"error" => {
                let kind = String::from_utf8_lossy(msg.get(1).unwrap_or(b"")).into_owned();
                let text = String::from_utf8_lossy(msg.get(2).unwrap_or(b"")).into_owned();
                match (kind.as_str(), &self.worker) {
                    ("confined", None) => return Ok(Step::Done(End::InProcess(text))),
                    ("confined", Some(w)) => {
                        // The worker handed the command back without running anything, and
                        // exits: let it be gone before the command runs here.
                        w.await_exit();
                        return Ok(Step::Done(End::InProcess(text)));
                    }
                    ("outranked", None) => return Ok(Step::Done(End::Replace(text))),
                    (k, None) if retryable(k) => {
                        return Ok(Step::Done(End::Retry(explain(&kind, &text))))
                    }
                    _ => {}
                }
                // After the worker's pid, an error means its template failed (timed out, or
                // died): nobody will report or stop the worker, so end it ourselves.
                end_orphan(self.worker.as_ref());
                Err(other(explain(&kind, &text)))
            }
            _ => {
                end_orphan(self.worker.as_ref());
                Err(other(format!(
                    "unexpected message from the server: {msg:?}"
                )))
            }
        }
    }
}

/// One byte to the worker (see the template's module docs: `S`, `G`).
fn send_byte(conn: &Channel, b: u8) -> io::Result<usize> {
    sys::send(conn.as_fd(), &[io::IoSlice::new(&[b])], None, false)
}

/// The connection ended before the worker's status: nobody will report it or stop it, so end
/// its process group (SIGTERM, then SIGKILL after a grace period), only through the worker's
/// pidfd: its number may already belong to another process.
fn end_orphan(worker: Option<&Worker>) {
    let Some(w) = worker else { return };
    let Some(fd) = &w.pidfd else { return };
    w.signal(libc::SIGCONT, false); // a stopped worker would not act on SIGTERM
    w.signal(libc::SIGTERM, false);
    let deadline = Instant::now() + Duration::from_secs(2);
    let _ = sys::wait_fd(fd.as_fd(), libc::POLLIN, Some(deadline));
    w.signal(libc::SIGKILL, false); // what is left of the group
}

/// How the template `pid` of `key` ended, as the server logged it when it reaped it (it logs
/// before it reaps: a template that is no longer a zombie has its line in the log): ", killed by
/// signal 9 (SIGKILL)"; empty if the log's last 64 KiB do not say.
fn logged_end(log: &Path, key: &str, pid: i32) -> String {
    use std::io::{Seek, SeekFrom};
    let Ok(mut f) = File::open(log) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 << 10)));
    let mut tail = Vec::new();
    let _ = f.read_to_end(&mut tail);
    let tail = String::from_utf8_lossy(&tail);
    let needle = format!("template {key:?} (pid {pid}) died (");
    tail.lines()
        .rev()
        .find_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            let end = rest.find("): ")?;
            Some(format!(", {}", &rest[..end]))
        })
        .unwrap_or_default()
}

/// How the template `pid`, a child of the server `server`, ended, if it is a zombie still
/// (`/proc/<pid>/stat`: state `Z`, parent `server`, and its wait status, field 52): ", killed
/// by signal 9 (SIGKILL)"; empty if that cannot be told.
fn how_it_ended(pid: i32, server: libc::pid_t) -> String {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return String::new();
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return String::new();
    };
    // Field n (1-based, proc(5)) is at index n - 3 after the command name.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let (state, ppid, code) = (f.first(), f.get(1), f.get(49));
    if state != Some(&"Z") || ppid.and_then(|p| p.parse().ok()) != Some(server) {
        return String::new();
    }
    match code.and_then(|c| c.parse::<i32>().ok()) {
        Some(raw) if libc::WIFSIGNALED(raw) => {
            let sig = libc::WTERMSIG(raw);
            format!(
                ", killed by signal {sig} ({})",
                super::daemon::signal_name(sig)
            )
        }
        Some(raw) => format!(", exited with code {}", libc::WEXITSTATUS(raw)),
        None => String::new(),
    }
}

/// A connection to a server of our version and build.
struct Connected {
    conn: Channel,
    /// The server's pid (`SO_PEERCRED`).
    server: libc::pid_t,
    /// We started that server.
    started: bool,
    /// The proof that this process may inspect the server (see `os::Proof`), or why it may
    /// not (it is confined where the server is not).
    proof: Result<Vec<u8>, String>,
}

/// The server's greeting.
#[derive(Debug)]
pub(crate) struct Hello {
    version: String,
    /// (The pid it names is not used: who the server is comes from the kernel, `SO_PEERCRED`
    /// and `SO_PEERPIDFD`.)
    build: String,
    /// The server's descriptor that holds this connection's nonce (see `os::Proof`); empty
    /// from a server that asks for none.
    proof_fd: String,
}

impl Hello {
    /// Reads the nonce the server `pid` holds for this connection: the proof, sent back with
    /// the request, that this process may inspect the server. `Err`: why it may not.
    fn prove(&self, pid: libc::pid_t) -> Result<Vec<u8>, String> {
        if self.proof_fd.is_empty() {
            return Ok(Vec::new());
        }
        os::read_proof(pid, &self.proof_fd).map_err(|e| {
            format!(
                "it may not inspect the preloader server (pid {pid}: /proc/{pid}/fd/{}: {e}): it \
                 is confined (a Landlock domain, a security module, another pid or user \
                 namespace) where the server is not",
                self.proof_fd
            )
        })
    }
}

/// Connects to a server speaking our protocol version and of our build, starting one if needed.
/// A server of another version or build is stopped and replaced, once (its running commands
/// finish).
fn connect_checked<A: Application>(p: &Preloader<A>, dir: &Dir) -> Result<Connected, Failure> {
    let mut restarted = false;
    let mut retried = false;
    loop {
        let (mut conn, server, started) = connect_or_start(p, dir)?;
        let hello = match handshake(&mut conn, p.options.handshake_timeout, dir) {
            Ok(h) => h,
            // A server that was exiting (idle, stopped) as we connected: once more.
            Err(Handshake::Closed(_)) if !retried => {
                retried = true;
                continue;
            }
            Err(Handshake::Busy(why)) => return Err(Failure::Trouble(why)),
            Err(Handshake::Closed(e) | Handshake::Failed(e)) => return Err(e.into()),
        };
        if hello.version == PROTOCOL_VERSION && hello.build == build_id() {
            let proof = hello.prove(server);
            return Ok(Connected {
                conn,
                server,
                started,
                proof,
            });
        }
        if restarted {
            return Err(other(format!(
                "the preloader server speaks {:?} (build {:?}) even after a restart; expected \
                 {PROTOCOL_VERSION:?} (build {:?})",
                hello.version,
                hello.build,
                build_id()
            ))
            .into());
        }
        stop_server(conn, p.options.stop_grace, Some((&hello, server))).map_err(|e| {
            match e.kind() {
                io::ErrorKind::PermissionDenied => Failure::InProcess(e.to_string()),
                _ => Failure::Io(e),
            }
        })?;
        restarted = true;
    }
}

/// The greeting on a fresh connection, within `timeout`; `None` if there is none (a server that
/// is exiting, or one that greets otherwise).
fn read_greeting(conn: &mut Channel, timeout: Duration) -> Option<Hello> {
    conn.set_read_timeout(Some(timeout));
    let hello = conn.read_strings().ok().flatten()?;
    conn.set_read_timeout(None);
    match hello.as_slice() {
        [magic, version, _pid, rest @ ..] if magic == "fdserver-preload" => Some(Hello {
            version: version.clone(),
            build: rest.first().cloned().unwrap_or_default(),
            proof_fd: rest.get(1).cloned().unwrap_or_default(),
        }),
        _ => None,
    }
}

enum Handshake {
    /// The connection ended before the greeting.
    Closed(io::Error),
    /// No greeting within the deadline: the server is wedged, or at its connection limit.
    Busy(String),
    Failed(io::Error),
}

/// Reads the server's greeting `["fdserver-preload", version, pid, build]`. Any other shape, an
/// older server's included, is a mismatch that the caller resolves by restarting the server.
fn handshake(conn: &mut Channel, timeout: Duration, dir: &Dir) -> Result<Hello, Handshake> {
    conn.set_read_timeout(Some(timeout));
    let hello = match conn.read_strings() {
        Ok(Some(v)) => v,
        Ok(None) => {
            return Err(Handshake::Closed(other(
                "the preloader server closed the connection at once",
            )))
        }
        Err(Error::TimedOut { .. }) => {
            return Err(Handshake::Busy(format!(
                "the preloader server did not answer within {timeout:?}: it is wedged, or busy \
                 with {} connections (its limit); see {}, or try `--preloader restart`",
                super::daemon::MAX_CONNECTIONS,
                dir.display(Kind::Log).display()
            )))
        }
        Err(e) if !matches!(e, Error::Protocol(_)) => {
            return Err(Handshake::Closed(other(format!(
                "handshake with the preloader server: {e}"
            ))))
        }
        Err(e) => {
            return Err(Handshake::Failed(other(format!(
                "handshake with the preloader server: {e}"
            ))))
        }
    };
    conn.set_read_timeout(None);
    let bad = || Handshake::Failed(other(format!("bad greeting from the server: {hello:?}")));
    match hello.as_slice() {
        [magic, version, _pid, rest @ ..] if magic == "fdserver-preload" => Ok(Hello {
            version: version.clone(),
            build: rest.first().cloned().unwrap_or_default(),
            proof_fd: rest.get(1).cloned().unwrap_or_default(),
        }),
        [version, ..] => Ok(Hello {
            version: version.clone(),
            build: String::new(),
            proof_fd: String::new(),
        }),
        [] => Err(bad()),
    }
}

/// Connects to the socket, and checks with `SO_PEERCRED` that the server runs as us before
/// anything is sent. `None`: nobody listens there. With the server's pid (`SO_PEERCRED`).
fn connect(dir: &Dir) -> Result<Option<(Channel, libc::pid_t)>, Failure> {
    let stream = match UnixStream::connect(dir.socket_addr()) {
        Ok(s) => s,
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ECONNREFUSED)) => {
            return Ok(None)
        }
        Err(e) => {
            return Err(other(format!(
                "cannot connect to {}: {e}",
                dir.display(Kind::Sock).display()
            ))
            .into())
        }
    };
    let (uid, pid) = os::peer_cred(stream.as_fd())?;
    let me = dir.owner(); // checked to be our euid when it was opened
    if uid != me {
        return Err(Failure::Unusable(format!(
            "the server at {} runs as uid {uid}, not as you (uid {me}): nothing was sent to it",
            dir.display(Kind::Sock).display()
        )));
    }
    Ok(Some((Channel::from(stream), pid)))
}

/// Connects, or (under the start lock, so that racing clients start one server) removes stale
/// files, starts a server and waits for it to listen. With the server's pid, and whether we
/// started it.
fn connect_or_start<A: Application>(
    p: &Preloader<A>,
    dir: &Dir,
) -> Result<(Channel, libc::pid_t, bool), Failure> {
    let mut attempts = 0;
    loop {
        if let Some((c, pid)) = connect(dir)? {
            return Ok((c, pid, false));
        }
        let lock = dir
            .open_file(Kind::Lock, libc::O_RDWR | libc::O_CREAT)
            .map_err(|e| cannot_use(e, None))?;
        sys::flock(lock.as_fd(), true, false)?;
        if let Some((c, pid)) = connect(dir)? {
            return Ok((c, pid, false)); // another client started it while we waited for the lock
        }
        clean_stale(dir).map_err(|e| {
            cannot_use(
                e,
                Some((
                    "cannot remove a stale preloader server's files",
                    &dir.display(Kind::Pid),
                )),
            )
        })?;
        spawn_server(p, dir)?;
        if let Some((c, pid)) = connect(dir)? {
            drop(lock);
            return Ok((c, pid, true));
        }
        // Stopped (`--preloader stop` from elsewhere) between its "ready" and our connect:
        // start another, a few times.
        attempts += 1;
        if attempts > RETRIES {
            return Err(other(format!(
                "the preloader server reported ready but {} refuses connections ({attempts} \
                 times: something stops each server as it starts)",
                dir.display(Kind::Sock).display()
            ))
            .into());
        }
    }
}

/// Removes the socket and pidfile if no server holds the pidfile's lock. `Ok(false)`: one does.
fn clean_stale(dir: &Dir) -> io::Result<bool> {
    let pidfile = match dir.open_file(Kind::Pid, libc::O_RDWR) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if let Some(f) = &pidfile {
        if !sys::flock(f.as_fd(), true, true)? {
            return Ok(false); // a live server holds it
        }
    }
    // Removed while we hold the pidfile's lock: a server that opened it meanwhile finds it
    // unlinked once it gets the lock, and opens the new one.
    // A socket that cannot be removed is left for the server, which says so when it fails to
    // listen there.
    let _ = dir.unlink(Kind::Sock);
    if pidfile.is_some() {
        dir.unlink(Kind::Pid)?;
    }
    Ok(true)
}

/// Starts the server: this executable with the role variable set, the readiness pipe as
/// descriptor 3 and the checked directory as descriptor 4, nothing else but its log as stdout
/// and stderr; it forks into the background (new session) and writes `ready` to descriptor 3
/// once it listens. It starts with what it needs from us, not with what only this command was
/// under ([`server_start_context`]).
fn spawn_server<A: Application>(p: &Preloader<A>, dir: &Dir) -> Result<(), Failure> {
    if let Err(why) = super::idle_timeout(&p.options) {
        eprintln!("fdserver preloader: {why}");
    }
    let (rd, wr) = sys::pipe()?;
    let log = dir
        .open_file(Kind::Log, libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND)
        .map_err(|e| cannot_use(e, None))?;
    let exe = std::env::current_exe()?;
    let (wr_raw, dir_raw) = (wr.as_raw_fd(), dir.fd().as_raw_fd());
    let mut cmd = Command::new(&exe);
    // Its title in `ps` (rewritten by the server, which the spare arguments make room for).
    cmd.arg0(format!("{}: preloader server", p.app.name()))
        .args(std::iter::repeat("").take(64))
        .env(ENV_ROLE, "launch")
        .env(super::ENV_DIR, dir.path())
        .env_remove(context::INJECTED[0])
        .env_remove(context::INJECTED[1])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .current_dir("/");
    // SAFETY: the closure only calls fcntl, dup2, close and close_range (async-signal-safe) on
    // descriptors that are open in the child.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first (either may be 3 or 4), then into place; dup2 clears
            // close-on-exec on the copies.
            let high = [wr_raw, dir_raw].map(|fd| libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10));
            if high.contains(&-1) {
                return Err(io::Error::last_os_error());
            }
            for (from, to) in high.into_iter().zip([3, 4]) {
                if libc::dup2(from, to) == -1 {
                    return Err(io::Error::last_os_error());
                }
                libc::close(from);
            }
            // The server outlives us: it must not keep what we inherited (a pipe whose reader
            // waits for its end, say), only its log, the readiness pipe and the directory.
            os::cloexec_from(5);
            server_start_context();
            Ok(())
        });
    }
    let mut launcher = cmd
        .spawn()
        .map_err(|e| cannot_use(e, Some(("cannot start the preloader server", &exe))))?;
    drop(wr);
    // The launcher forks the server and exits at once; reap it.
    let status = launcher.wait()?;
    if !status.success() {
        return Err(other(format!(
            "the preloader server failed to launch ({status}); see {}",
            dir.display(Kind::Log).display()
        ))
        .into());
    }
    let deadline = Instant::now() + p.options.boot_timeout;
    let mut rd = File::from(rd);
    let mut got = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        if !sys::wait_fd(rd.as_fd(), libc::POLLIN, Some(deadline))? {
            return Err(other(format!(
                "the preloader server did not start within {:?}; see {}",
                p.options.boot_timeout,
                dir.display(Kind::Log).display()
            ))
            .into());
        }
        let n = rd.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
        if got.ends_with(b"\n") {
            break;
        }
    }
    if got == b"ready\n" {
        Ok(())
    } else {
        Err(other(format!(
            "the preloader server failed to start: {}; see {}",
            String::from_utf8_lossy(&got).trim(),
            dir.display(Kind::Log).display()
        ))
        .into())
    }
}

/// In the child that becomes the server (async-signal-safe: system calls only): undoes what
/// this one command may have been started under and a worker can take on anyway, so that the
/// server and its templates do not keep it for every later command: soft resource limits go up
/// to the hard ones (a template must not die of a command's `ulimit -t`, nor the server run out
/// of descriptors at a command's `ulimit -n 200`; `RLIMIT_STACK` stays, as it shapes the
/// address space, and descriptors stop at 65536), the CPU affinity widens to every CPU allowed,
/// an idle or batch scheduling policy and an idle I/O class go back to the default where
/// allowed. What cannot be undone (hard limits, a raised nice value, `no_new_privs`...) makes a
/// later command that is not under it replace the server (see `context`).
fn server_start_context() {
    for r in 0..attrs::RLIMITS as libc::c_int {
        if r == libc::RLIMIT_STACK as libc::c_int {
            continue;
        }
        // SAFETY: an all-zero rlimit is a valid out-value.
        let mut l: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: a valid out-pointer; an unknown resource just fails.
        if unsafe { libc::getrlimit(r as _, &mut l) } != 0 {
            continue;
        }
        let want = if r == libc::RLIMIT_NOFILE as libc::c_int {
            l.rlim_max.min(1 << 16).max(l.rlim_cur)
        } else {
            l.rlim_max
        };
        if l.rlim_cur < want {
            l.rlim_cur = want;
            // SAFETY: a valid rlimit, within the hard limit.
            unsafe { libc::setrlimit(r as _, &l) };
        }
    }
    let all = [0xffu8; 128];
    // SAFETY: the raw syscall reads 128 bytes of mask; the kernel keeps only allowed CPUs.
    unsafe { libc::syscall(libc::SYS_sched_setaffinity, 0, all.len(), all.as_ptr()) };
    // SAFETY: plain queries and changes of this process's scheduling.
    unsafe {
        let policy = libc::sched_getscheduler(0);
        if policy == libc::SCHED_IDLE || policy == libc::SCHED_BATCH {
            let param = libc::sched_param { sched_priority: 0 };
            libc::sched_setscheduler(0, libc::SCHED_OTHER, &param);
        }
        // ioprio_get(IOPRIO_WHO_PROCESS, self): class in the top bits; 3 is "idle".
        let prio = libc::syscall(libc::SYS_ioprio_get, 1, 0);
        if prio >= 0 && prio >> 13 == 3 {
            libc::syscall(libc::SYS_ioprio_set, 1, 0, 0);
        }
        libc::prctl(libc::PR_SET_TIMERSLACK, 0, 0, 0, 0);
    }
}

/// The running server's status, without starting one.
pub(crate) fn status<A: Application>(p: &Preloader<A>) -> io::Result<Option<Status>> {
    let dir = p.dir()?;
    let Some((mut conn, _)) = connect(&dir).map_err(failure_to_io)? else {
        clean_stale(&dir)?;
        return Ok(None);
    };
    let hello = handshake(&mut conn, p.options.handshake_timeout, &dir).map_err(|e| match e {
        Handshake::Closed(e) | Handshake::Failed(e) => e,
        Handshake::Busy(why) => io::Error::new(io::ErrorKind::TimedOut, why),
    })?;
    // The pid shown is the kernel's (the process listening on the socket), not the greeting's.
    let server_pid = os::peer_cred(conn.as_fd())?.1 as u32;
    conn.set_read_timeout(Some(p.options.handshake_timeout));
    conn.write_array(["status"]).map_err(io::Error::from)?;
    let reply = conn
        .read_strings()
        .map_err(io::Error::from)?
        .ok_or_else(|| other("the server closed the connection"))?;
    // ["ok", uptime_ms, log, idle_ms, (key, state, pid, uptime_ms, resident bytes, workers)*]
    // (without idle_ms before protocol 4)
    let ms = |s: &String| Duration::from_millis(s.parse().unwrap_or(0));
    if reply.first().map(String::as_str) != Some("ok") || reply.len() < 3 {
        return Err(other(format!("bad status reply: {reply:?}")));
    }
    let (idle_timeout, first) =
        if hello.version == PROTOCOL_VERSION || hello.version == "fdserver-preload/4" {
            (reply.get(3).map(ms).unwrap_or_default(), 4)
        } else {
            (Duration::ZERO, 3)
        };
    let templates = reply[first.min(reply.len())..]
        .chunks(6)
        .filter(|c| c.len() == 6)
        .map(|c| TemplateStatus {
            key: c[0].clone(),
            state: match c[1].as_str() {
                "running" => TemplateState::Running,
                "preloading" => TemplateState::Preloading,
                _ => TemplateState::Stopped,
            },
            pid: c[2].parse().ok(),
            uptime: ms(&c[3]),
            memory: c[4].parse().ok(),
            workers: c[5].parse().ok(),
        })
        .collect();
    Ok(Some(Status {
        app: p.app.name().to_owned(),
        socket: dir.display(Kind::Sock),
        log: reply[2].clone(),
        server_pid,
        uptime: ms(&reply[1]),
        version: hello.version,
        build: hello.build,
        idle_timeout,
        templates,
    }))
}

/// Stops the running server: asks it (`["stop"]`), SIGTERM, then SIGKILL after the grace
/// period, each through a pidfd of the process that listens on the socket. A server that holds
/// the pidfile but has lost its socket exits by itself: it is given the grace period to.
pub(crate) fn stop<A: Application>(p: &Preloader<A>) -> io::Result<bool> {
    let dir = p.dir()?;
    let stopped = match connect(&dir).map_err(failure_to_io)? {
        Some((conn, _)) => {
            stop_server(conn, p.options.stop_grace, None)?;
            true
        }
        None => {
            if let Ok(f) = dir.open_file(Kind::Pid, libc::O_RDWR) {
                if !lock_within(&f, Instant::now() + p.options.stop_grace)? {
                    return Err(other(format!(
                        "a preloader server (pid {}, from {}) holds its pidfile but has no \
                         socket; it should exit by itself: if it does not, kill it",
                        super::pidfile_text(&f),
                        dir.display(Kind::Pid).display()
                    )));
                }
            }
            false
        }
    };
    let lock = dir.open_file(Kind::Lock, libc::O_RDWR | libc::O_CREAT)?;
    sys::flock(lock.as_fd(), true, false)?;
    clean_stale(&dir)?;
    Ok(stopped)
}

/// Stops the server at the other end of `conn`: `["stop", proof]` (`["stop"]` to a server that
/// asks for no proof: every version understands it as its first request), then SIGTERM and
/// SIGCONT, wait up to `grace`, SIGKILL, wait. The signals go through a pidfd of the process
/// that listens on the socket (from the kernel, not from anything the server says).
///
/// `hello`: the server's greeting and pid, if already read; else it is read here. A process
/// that cannot prove it may inspect the server (it is confined where the server is not: see
/// `os::Proof`) stops nothing (`PermissionDenied`): a server it started again would run in its
/// confinement, which the user's other commands cannot use.
fn stop_server(
    mut conn: Channel,
    grace: Duration,
    hello: Option<(&Hello, libc::pid_t)>,
) -> io::Result<()> {
    let pidfd = os::peer_pidfd(conn.as_fd());
    let read;
    let (hello, pid) = match hello {
        Some(h) => (Some(h.0), h.1),
        None => {
            let pid = os::peer_cred(conn.as_fd())?.1;
            read = read_greeting(&mut conn, grace);
            (read.as_ref(), pid)
        }
    };
    let proof = match hello.map(|h| h.prove(pid)) {
        Some(Err(why)) => {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("this process may not stop the preloader server: {why}"),
            ))
        }
        Some(Ok(proof)) => proof,
        None => Vec::new(),
    };
    conn.set_write_timeout(Some(grace));
    if hello.is_some_and(|h| !h.proof_fd.is_empty()) {
        let _ = conn.write_array([b"stop".as_slice(), &proof]);
    } else {
        let _ = conn.write_array(["stop"]);
    }
    drop(conn);
    let pidfd = match pidfd {
        Ok(fd) => fd,
        // Gone already (or the kernel cannot name it): nothing we may signal.
        Err(_) => return Ok(()),
    };
    sys::pidfd_kill(pidfd.as_fd(), libc::SIGTERM)?;
    // A stopped server (SIGSTOP) acts on SIGTERM only once continued: it then lets its
    // templates go, continuing those that are stopped too (as `kill` does for a stopped job).
    let _ = sys::pidfd_kill(pidfd.as_fd(), libc::SIGCONT);
    if sys::wait_fd(pidfd.as_fd(), libc::POLLIN, Some(Instant::now() + grace))? {
        return Ok(());
    }
    sys::pidfd_kill(pidfd.as_fd(), libc::SIGKILL)?;
    sys::wait_fd(pidfd.as_fd(), libc::POLLIN, Some(Instant::now() + grace))?;
    Ok(())
}

/// What `--preloader restart` did.
#[derive(Debug)]
pub(crate) struct Restarted {
    server: u32,
    key: String,
    template: String,
}

impl fmt::Display for Restarted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "preloader server restarted (pid {}); template {:?} preloaded (pid {})",
            self.server, self.key, self.template
        )
    }
}

/// Stops the server, starts a new one and preloads the template of this environment's key.
pub(crate) fn restart<A: Application>(p: &Preloader<A>) -> io::Result<Restarted> {
    stop(p)?;
    let dir = p.dir()?;
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let key = p.app.template_key(&env);
    let Connected {
        mut conn, proof, ..
    } = connect_checked(p, &dir).map_err(failure_to_io)?;
    let proof = proof.map_err(|why| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("this process may not preload a template: {why}"),
        )
    })?;
    conn.write_array([b"preload".as_slice(), key.as_bytes(), &proof])
        .map_err(io::Error::from)?;
    let mut buf = MessageBuf::new();
    let reply = conn.read_reply(&mut buf).map_err(|e| match e {
        Error::Remote(r) => other(r.message().to_owned()),
        e => io::Error::from(e),
    })?;
    Ok(Restarted {
        server: os::peer_cred(conn.as_fd())?.1 as u32,
        key,
        template: reply.str(1).unwrap_or("?").to_owned(),
    })
}
