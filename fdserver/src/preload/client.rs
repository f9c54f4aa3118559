//! The thin client: connect (or start a server), hand over the command, relay signals, exit with
//! the worker's status.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::attrs::{self, Attrs};
use super::{join_nul, Application, Paths, Preloader, ENV_ROLE, PROTOCOL_VERSION};
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
    /// The preloader cannot run this command faithfully (the client is confined by a seccomp
    /// filter its template lacks): run it in-process, with these arguments.
    InProcess(Vec<OsString>),
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
/// action does not end the process.
fn die_by(sig: libc::c_int) -> ! {
    let _ = sys::set_disposition(sig, sys::Disposition::Default);
    let mut only = sys::sigset(true);
    sys::sigset_del(&mut only, sig);
    sys::set_sigmask(&only);
    let _ = sys::kill(sys::getpid() as i32, sig);
    // Still alive: the signal's default action is not to terminate.
    std::process::exit(128 + sig)
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
            "{}: preloader server pid {}, up {} ({})",
            self.app,
            self.server_pid,
            human(self.uptime),
            self.version
        )?;
        writeln!(f, "  socket: {}", self.socket.display())?;
        writeln!(f, "  log:    {}", self.log)?;
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

/// `e`, saying which file it was about.
fn at(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
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

/// Runs one command through the preloader.
pub(crate) fn run<A: Application>(p: &Preloader<A>, args: Vec<OsString>) -> io::Result<Ran> {
    // What exec passed us besides 0, 1, 2 (`3>file`, a jobserver's pipe): the worker gets them
    // under the same numbers. Read before this process opens anything itself.
    let inherited = super::os::inherited_fds();
    let paths = p.paths()?;
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
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
        return Err(other(format!("cannot open the working directory: {e}")));
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
    let attrs = Attrs::of_this_process(original);

    let result = (|| {
        let mut conn = connect_checked(p, &paths)?;
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
        let send = |conn: &mut Channel| -> Result<(), Error> {
            conn.write_array([b"run".as_slice(), key.as_bytes()])?;
            // The rest goes to the template, which reads it from our socket: one `sendmsg`
            // carrying stdin, stdout, stderr and the working directory with its first byte.
            let (stdin, stdout, stderr) = (io::stdin(), io::stdout(), io::stderr());
            let mut fds = vec![stdin.as_fd(), stdout.as_fd(), stderr.as_fd(), cwd.as_fd()];
            // SAFETY: each is open in this process (just listed) and outlives the send.
            fds.extend(
                inherited
                    .iter()
                    .map(|&fd| unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }),
            );
            super::os::send_with_fds(conn.as_fd(), &request, &fds).map_err(Error::Io)
        };
        if let Err(e) = send(&mut conn) {
            // The server may have refused the command (a failed preload, say) and hung up
            // while we were still sending: its reply, already on the socket, says why.
            if let Some((kind, text)) = refusal(&conn, p.options.handshake_timeout) {
                return Err(other(explain(&kind, &text)));
            }
            return Err(other(format!("sending the command to the server: {e}")));
        }
        drop(cwd);
        let mut relay = Relay {
            pid: None,
            queued: Vec::new(),
            original,
            parked: false,
            log: &paths.log,
        };
        match relay.run(&mut conn, &sigfd)? {
            Some(outcome) => Ok(Ran::Outcome(outcome)),
            None => Ok(Ran::InProcess(args)),
        }
    })();
    sys::set_sigmask(&old_mask);
    result
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

/// The client's side of a running command: relays signals to the worker, mirrors its stops,
/// waits for its status.
struct Relay<'a> {
    /// The worker's pid (and process group), once it has told us.
    pid: Option<i32>,
    /// Signals to relay once the worker's pid is known.
    queued: Vec<i32>,
    /// The signals blocked when the program started: they stay pending for the worker.
    original: u64,
    /// We wrote `S` (suspended before the worker's pid came) and not yet `G`.
    parked: bool,
    log: &'a Path,
}

/// What the relay loop does after a message.
enum Step {
    Continue,
    Done(Option<Outcome>),
}

impl Relay<'_> {
    /// Waits for the worker's status, relaying signals meanwhile. `None`: run the command
    /// in-process instead (the template refused to run it for a confined client).
    fn run(&mut self, conn: &mut Channel, sigfd: &OwnedFd) -> io::Result<Option<Outcome>> {
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
            // (Handling a signal may have read what was waiting: look again, never block.)
            if ready[0] && sys::poll_now(conn.as_fd()) {
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
    ) -> io::Result<Option<Option<Outcome>>> {
        // The worker may have sent its pid already (it does before it runs anything): then it
        // gets the signal.
        while self.pid.is_none() && sys::poll_now(conn.as_fd()) {
            if let Step::Done(d) = self.on_message(conn, buf)? {
                return Ok(Some(d));
            }
        }
        if let Some(pid) = self.pid {
            let _ = sys::kill_group(pid, sig);
            return Ok(None);
        }
        if self.original & (1u64 << (sig - 1)) != 0 {
            self.queue(sig);
        } else if stops(sig) {
            // Tell the worker to wait (it checks after sending its pid), then see whether the
            // pid came meanwhile: one of us always sees the other.
            let _ = send_byte(conn, b'S');
            self.parked = true;
            while self.pid.is_none() && sys::poll_now(conn.as_fd()) {
                if let Step::Done(d) = self.on_message(conn, buf)? {
                    let _ = send_byte(conn, b'G');
                    return Ok(Some(d));
                }
            }
            match self.pid {
                Some(pid) => {
                    // The worker exists: it stops itself with the signal, and we stop when it
                    // reports so. Release it first if it saw our `S`.
                    let _ = send_byte(conn, b'G');
                    self.parked = false;
                    let _ = sys::kill_group(pid, sig);
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

    fn on_message(&mut self, conn: &mut Channel, buf: &mut MessageBuf) -> io::Result<Step> {
        match conn.read_into(buf) {
            Ok(true) => {}
            Ok(false) => {
                end_orphan(self.pid);
                return Err(other(match self.pid {
                    None => format!(
                        "the preloader server closed the connection before the command started \
                         (it was stopped, or it failed: see {}); run the command again",
                        self.log.display()
                    ),
                    Some(_) => format!(
                        "the preloader's template went away before the command finished (see {})",
                        self.log.display()
                    ),
                }));
            }
            Err(e) => {
                end_orphan(self.pid);
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
            b"pid" => {
                let p = num(1)?;
                self.pid = Some(p);
                for sig in std::mem::take(&mut self.queued) {
                    let _ = sys::kill_group(p, sig);
                }
                Ok(Step::Continue)
            }
            b"stopped" => {
                // The worker stopped (Ctrl-Z relayed, or it stopped itself): so do we, with the
                // same signal, so that the shell sees the job stopped. Unless it has been
                // continued since (this report is then out of date).
                let sig = num(1)?;
                if let Some(pid) = self.pid {
                    if is_stopped(pid) && !stop_by(sig) {
                        // The kernel discarded our stop (orphaned process group): the command,
                        // run without the preloader, would not have stopped either.
                        let _ = sys::kill_group(pid, libc::SIGCONT);
                    }
                }
                Ok(Step::Continue)
            }
            b"exit" => Ok(Step::Done(Some(Outcome::Exit(num(1)?)))),
            b"signal" => Ok(Step::Done(Some(Outcome::Signal(num(1)?)))),
            b"error" => {
                let kind = String::from_utf8_lossy(msg.get(1).unwrap_or(b"")).into_owned();
                let text = String::from_utf8_lossy(msg.get(2).unwrap_or(b"")).into_owned();
                if kind == "confined" && self.pid.is_none() {
                    return Ok(Step::Done(None));
                }
                // After the worker's pid, an error means its template failed (timed out, or
                // died): nobody will report or stop the worker, so end it ourselves.
                end_orphan(self.pid);
                Err(other(explain(&kind, &text)))
            }
            _ => {
                end_orphan(self.pid);
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
/// its process group (SIGTERM, then SIGKILL after a grace period).
fn end_orphan(pid: Option<i32>) {
    let Some(pid) = pid else { return };
    let fd = sys::pidfd_open(pid).ok();
    let _ = sys::kill_group(pid, libc::SIGCONT); // a stopped worker would not act on SIGTERM
    let _ = sys::kill_group(pid, libc::SIGTERM);
    if let Some(fd) = fd {
        let deadline = Instant::now() + Duration::from_secs(2);
        let _ = sys::wait_fd(fd.as_fd(), libc::POLLIN, Some(deadline));
    }
    let _ = sys::kill_group(pid, libc::SIGKILL); // what is left of the group
}

/// Connects to a server speaking our protocol version, starting one if needed. A server of
/// another version is stopped and replaced, once.
fn connect_checked<A: Application>(p: &Preloader<A>, paths: &Paths) -> io::Result<Channel> {
    let mut restarted = false;
    loop {
        let mut conn = connect_or_start(p, paths)?;
        let (version, pid) = handshake(&mut conn, p.options.handshake_timeout)?;
        if version == PROTOCOL_VERSION {
            return Ok(conn);
        }
        if restarted {
            return Err(other(format!(
                "the preloader server speaks {version:?} even after a restart; expected {PROTOCOL_VERSION:?}"
            )));
        }
        // Every version understands ["stop"] as its first request.
        let _ = conn.write_array(["stop"]);
        drop(conn);
        stop_pid(pid, p.options.stop_grace)?;
        clean_stale(paths)?;
        restarted = true;
    }
}

/// Reads the server's greeting `["fdserver-preload", version, pid]`.
fn handshake(conn: &mut Channel, timeout: Duration) -> io::Result<(String, i32)> {
    conn.set_read_timeout(Some(timeout));
    let hello = match conn.read_strings() {
        Ok(Some(v)) => v,
        Ok(None) => return Err(other("the preloader server closed the connection at once")),
        Err(Error::TimedOut { .. }) => {
            return Err(other(format!(
                "the preloader server did not answer within {timeout:?} (wedged?); try `--preloader stop`"
            )))
        }
        Err(e) => return Err(other(format!("handshake with the preloader server: {e}"))),
    };
    conn.set_read_timeout(None);
    match hello.as_slice() {
        [magic, version, pid, ..] if magic == "fdserver-preload" => Ok((
            version.clone(),
            pid.parse()
                .map_err(|_| other(format!("bad greeting from the server: {hello:?}")))?,
        )),
        [version, ..] => Ok((version.clone(), 0)),
        [] => Err(other("empty greeting from the preloader server")),
    }
}

fn connect(paths: &Paths) -> Option<Channel> {
    UnixStream::connect(&paths.socket).ok().map(Channel::from)
}

/// Connects, or (under the start lock, so that racing clients start one server) removes stale
/// files, starts a server and waits for it to listen.
fn connect_or_start<A: Application>(p: &Preloader<A>, paths: &Paths) -> io::Result<Channel> {
    if let Some(c) = connect(paths) {
        return Ok(c);
    }
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&paths.lock)
        .map_err(|e| at(e, "cannot open the start lock", &paths.lock))?;
    sys::flock(lock.as_fd(), true, false)?;
    if let Some(c) = connect(paths) {
        return Ok(c); // another client started it while we waited for the lock
    }
    clean_stale(paths)?;
    spawn_server(p, paths)?;
    let c = connect(paths).ok_or_else(|| {
        other(format!(
            "the preloader server reported ready but {} refuses connections",
            paths.socket.display()
        ))
    })?;
    drop(lock);
    Ok(c)
}

/// Removes the socket and pidfile if no server holds the pidfile's lock.
fn clean_stale(paths: &Paths) -> io::Result<()> {
    let pidfile = match OpenOptions::new()
        .read(true)
        .write(true)
        .open(&paths.pidfile)
    {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(at(e, "cannot open the pidfile", &paths.pidfile)),
    };
    if let Some(f) = &pidfile {
        if !sys::flock(f.as_fd(), true, true)? {
            return Ok(()); // a live server holds it
        }
    }
    for path in [&paths.socket, &paths.pidfile] {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(e, "cannot remove the stale", path)),
        }
    }
    Ok(())
}

/// Starts the server: this executable with the role variable set; it forks into the background
/// (new session) and writes `ready` to descriptor 3 once it listens.
fn spawn_server<A: Application>(p: &Preloader<A>, paths: &Paths) -> io::Result<()> {
    let (rd, wr) = sys::pipe()?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.log)
        .map_err(|e| at(e, "cannot open the preloader's log", &paths.log))?;
    let exe = std::env::current_exe()?;
    let wr_raw = wr.as_raw_fd();
    let mut cmd = Command::new(&exe);
    // Its title in `ps` (rewritten by the server, which the spare arguments make room for).
    cmd.arg0(format!("{}: preloader server", p.app.name()))
        .args(std::iter::repeat("").take(64))
        .env(ENV_ROLE, "launch")
        .env(super::ENV_DIR, &paths.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .current_dir("/");
    // SAFETY: the closure only calls dup2/fcntl (async-signal-safe) on descriptors that are open
    // in the child.
    unsafe {
        cmd.pre_exec(move || {
            if wr_raw == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags == -1 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(wr_raw, 3) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The server outlives us: it must not keep what we inherited (a pipe whose reader
            // waits for its end, say), only its log and the readiness pipe.
            super::os::cloexec_from(4);
            Ok(())
        });
    }
    let mut launcher = cmd
        .spawn()
        .map_err(|e| at(e, "cannot start the preloader server", &exe))?;
    drop(wr);
    // The launcher forks the server and exits at once; reap it.
    let status = launcher.wait()?;
    if !status.success() {
        return Err(other(format!(
            "the preloader server failed to launch ({status}); see {}",
            paths.log.display()
        )));
    }
    let deadline = Instant::now() + p.options.boot_timeout;
    let mut rd = File::from(rd);
    let mut got = Vec::new();
    let mut chunk = [0u8; 64];
    loop {
        if !sys::wait_fd(rd.as_fd(), libc::POLLIN, Some(deadline))? {
            return Err(other(format!(
                "the preloader server did not start within {:?}; see {}",
                p.options.boot_timeout,
                paths.log.display()
            )));
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
            paths.log.display()
        )))
    }
}

/// The running server's status, without starting one.
pub(crate) fn status<A: Application>(p: &Preloader<A>) -> io::Result<Option<Status>> {
    let paths = p.paths()?;
    let Some(mut conn) = connect(&paths) else {
        clean_stale(&paths)?;
        return Ok(None);
    };
    let (version, pid) = handshake(&mut conn, p.options.handshake_timeout)?;
    conn.set_read_timeout(Some(p.options.handshake_timeout));
    conn.write_array(["status"]).map_err(io::Error::from)?;
    let reply = conn
        .read_strings()
        .map_err(io::Error::from)?
        .ok_or_else(|| other("the server closed the connection"))?;
    // ["ok", uptime_ms, log, (key, state, pid, uptime_ms, resident bytes, workers)*]
    let ms = |s: &String| Duration::from_millis(s.parse().unwrap_or(0));
    if reply.first().map(String::as_str) != Some("ok") || reply.len() < 3 {
        return Err(other(format!("bad status reply: {reply:?}")));
    }
    let templates = reply[3..]
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
        socket: paths.socket.clone(),
        log: reply[2].clone(),
        server_pid: pid as u32,
        uptime: ms(&reply[1]),
        version,
        templates,
    }))
}

/// Stops the running server: SIGTERM, then SIGKILL after the grace period.
pub(crate) fn stop<A: Application>(p: &Preloader<A>) -> io::Result<bool> {
    let paths = p.paths()?;
    let pid = match std::fs::read_to_string(&paths.pidfile) {
        Ok(s) => s.trim().parse::<i32>().ok(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let live = match OpenOptions::new()
        .read(true)
        .write(true)
        .open(&paths.pidfile)
    {
        Ok(f) => !sys::flock(f.as_fd(), true, true)?,
        Err(_) => false,
    };
    let stopped = match pid {
        Some(pid) if live => {
            stop_pid(pid, p.options.stop_grace)?;
            true
        }
        _ => false,
    };
    clean_stale(&paths)?;
    Ok(stopped)
}

/// SIGTERM, wait (on a pidfd) up to `grace`, SIGKILL, wait.
fn stop_pid(pid: i32, grace: Duration) -> io::Result<()> {
    if pid <= 0 {
        return Ok(());
    }
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(()),
        Err(e) => return Err(e),
    };
    sys::pidfd_kill(pidfd.as_fd(), libc::SIGTERM)?;
    if sys::wait_fd(pidfd.as_fd(), libc::POLLIN, Some(Instant::now() + grace))? {
        return Ok(());
    }
    sys::pidfd_kill(pidfd.as_fd(), libc::SIGKILL)?;
    sys::wait_fd(pidfd.as_fd(), libc::POLLIN, Some(Instant::now() + grace))?;
    Ok(())
}
