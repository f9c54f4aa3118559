//! The thin client: connect (or start a server), hand over the command, relay signals, exit with
//! the worker's status.

use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    build_id, join_nul, lock_within, os, Application, Dir, Kind, Preloader, Unusable, ENV_ROLE,
    PROTOCOL_VERSION,
};
use crate::channel::Channel;
use crate::error::Error;
use crate::sys;
use crate::wire::MessageBuf;

/// Signals the client relays to the worker's process group.
const FORWARDED: &[libc::c_int] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGTSTP,
    libc::SIGCONT,
];

/// How the worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Exit(i32),
    Signal(i32),
}

impl Outcome {
    /// Ends this process the way the worker ended: same exit code, or death by the same signal.
    pub(crate) fn exit(self) -> ! {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        match self {
            Outcome::Exit(code) => std::process::exit(code),
            Outcome::Signal(sig) => {
                let _ = sys::set_disposition(sig, sys::Disposition::Default);
                let mut only = sys::sigset(true);
                sys::sigset_del(&mut only, sig);
                sys::set_sigmask(&only);
                let _ = sys::kill(sys::getpid() as i32, sig);
                // Still alive: the signal's default action is not to terminate.
                std::process::exit(128 + sig)
            }
        }
    }
}

/// The server's answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
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
    /// Its pid, if it is running.
    pub pid: Option<u32>,
    /// How long since it was (re)started.
    pub uptime: Duration,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "server pid {} up {}s ({})",
            self.server_pid,
            self.uptime.as_secs(),
            self.version
        )?;
        for t in &self.templates {
            match t.pid {
                Some(pid) => writeln!(
                    f,
                    "  template {:?}: pid {pid} up {}s",
                    t.key,
                    t.uptime.as_secs()
                )?,
                None => writeln!(f, "  template {:?}: not running", t.key)?,
            }
        }
        Ok(())
    }
}

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Why a command could not run through the preloader.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The directory, or the process listening on its socket, cannot be trusted: the command
    /// runs in-process instead.
    Unusable(String),
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

/// Runs one command through the preloader.
pub(crate) fn run<A: Application>(p: &Preloader<A>, args: &[OsString]) -> Result<Outcome, Failure> {
    let dir = p.dir()?;
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let key = p.app.template_key(&env);
    let cwd = std::env::current_dir()
        .map_err(|e| other(format!("cannot read the working directory: {e}")))?;

    // Block the signals we relay before anything else, so that none is lost: until the worker's
    // pid is known they queue in the signalfd.
    let mut set = sys::sigset(false);
    for &s in FORWARDED {
        sys::sigset_add(&mut set, s);
    }
    let old_mask = sys::set_sigmask(&set);
    let sigfd = sys::signalfd(&set)?;

    let result = (|| {
        let (mut conn, _) = connect_checked(p, &dir)?;
        let argv = join_nul(args.iter().map(|a| a.as_bytes()));
        let mut envb = Vec::new();
        for (k, v) in &env {
            envb.extend_from_slice(k.as_bytes());
            envb.push(b'=');
            envb.extend_from_slice(v.as_bytes());
            envb.push(0);
        }
        let send = |conn: &mut Channel| -> Result<(), Error> {
            conn.write_array([
                b"run".as_slice(),
                key.as_bytes(),
                cwd.as_os_str().as_bytes(),
            ])?;
            conn.write_scalar(&argv)?;
            conn.write_scalar(&envb)?;
            conn.send_fd(io::stdin().as_fd())?;
            conn.send_fd(io::stdout().as_fd())?;
            conn.send_fd(io::stderr().as_fd())?;
            Ok(())
        };
        if let Err(e) = send(&mut conn) {
            // The server may have refused the command (a failed preload, say) and hung up
            // while we were still sending: its reply, already on the socket, says why.
            if let Some(reason) = refusal(&conn, p.options.handshake_timeout) {
                return Err(other(reason).into());
            }
            return Err(other(format!("sending the command to the server: {e}")).into());
        }
        relay(&mut conn, &sigfd).map_err(Failure::Io)
    })();
    sys::set_sigmask(&old_mask);
    result
}

/// The `["error", kind, text]` reply a server left on `conn` before hanging up, if there is one.
/// Reads through a second descriptor for the same socket: `conn` is marked broken by the failed
/// send, but what the server wrote is still there to read.
fn refusal(conn: &Channel, timeout: Duration) -> Option<String> {
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
    let kind = String::from_utf8_lossy(msg.get(1).unwrap_or(b""));
    let text = String::from_utf8_lossy(msg.get(2).unwrap_or(b""));
    Some(format!("{kind}: {text}"))
}

/// The command's worker, as the client may signal it: through the pidfd the worker itself sent
/// (so never a process that merely reuses its number), or, from a worker that could not make
/// one, by its number while the connection that announced it is open.
struct Worker {
    pid: i32,
    pidfd: Option<OwnedFd>,
}

impl Worker {
    /// Sends `sig` to the worker's process group (the worker leads it: its own session).
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

/// Waits for the worker's pid and status, relaying signals meanwhile.
fn relay(conn: &mut Channel, sigfd: &OwnedFd) -> io::Result<Outcome> {
    let mut worker: Option<Worker> = None;
    let mut queued: Vec<i32> = Vec::new();
    let mut buf = MessageBuf::new();
    let forward = |w: &Worker, sig: i32| {
        if sig == libc::SIGTSTP {
            // A worker in its own session is in an orphaned process group, where the kernel
            // discards SIGTSTP: stop it with SIGSTOP, then stop ourselves. `fg` continues us
            // with SIGCONT, which we relay.
            w.signal(libc::SIGSTOP, true);
            let _ = sys::kill(sys::getpid() as i32, libc::SIGSTOP);
        } else {
            w.signal(sig, true);
        }
    };
    loop {
        let ready = sys::poll_in(&[conn.as_fd(), sigfd.as_fd()], None)?;
        if ready[1] {
            while let Some(sig) = sys::read_signalfd(sigfd.as_fd())? {
                match &worker {
                    Some(w) => forward(w, sig),
                    // Stopping (TSTP) waits for the pid, so that the worker stops too; one
                    // pending WINCH is enough.
                    None if sig == libc::SIGCONT => {}
                    None if sig == libc::SIGWINCH && queued.contains(&sig) => {}
                    None => queued.push(sig),
                }
            }
        }
        if ready[0] {
            match conn.read_into(&mut buf) {
                Ok(true) => {}
                Ok(false) => {
                    end_orphan(worker.as_ref());
                    return Err(other(
                        "the preloader server closed the connection before the command finished",
                    ));
                }
                Err(e) => {
                    end_orphan(worker.as_ref());
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
                b"pid" if worker.is_none() => {
                    let pid = num(1)?;
                    // 0, 1 and negative numbers would make "its group" ours, init's or
                    // everyone's: never a worker.
                    if pid <= 1 {
                        return Err(other(format!(
                            "the preloader server sent an impossible worker pid {pid}"
                        )));
                    }
                    let pidfd = if msg.get(2) == Some(b"fd".as_slice()) {
                        match conn.recv_fd() {
                            Ok(Some(fd)) => Some(fd),
                            Ok(None) => {
                                return Err(other(
                                    "the preloader server closed the connection before the \
                                     command finished",
                                ))
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
                    let w = Worker { pid, pidfd };
                    for sig in queued.drain(..) {
                        forward(&w, sig);
                    }
                    worker = Some(w);
                }
                b"exit" => return Ok(Outcome::Exit(num(1)?)),
                b"signal" => return Ok(Outcome::Signal(num(1)?)),
                b"error" => {
                    // After the worker's pid, an error means its template failed (timed out, or
                    // died): nobody will report or stop the worker, so end it ourselves.
                    end_orphan(worker.as_ref());
                    let kind = String::from_utf8_lossy(msg.get(1).unwrap_or(b""));
                    let text = String::from_utf8_lossy(msg.get(2).unwrap_or(b""));
                    return Err(other(format!("{kind}: {text}")));
                }
                _ => {
                    end_orphan(worker.as_ref());
                    return Err(other(format!(
                        "unexpected message from the server: {msg:?}"
                    )));
                }
            }
        }
    }
}

/// The connection ended before the worker's status: nobody will report it or stop it, so end
/// its process group (SIGTERM, then SIGKILL after a grace period), only through the worker's
/// pidfd: its number may already belong to another process.
fn end_orphan(worker: Option<&Worker>) {
    let Some(w) = worker else { return };
    let Some(fd) = &w.pidfd else { return };
    w.signal(libc::SIGTERM, false);
    let deadline = Instant::now() + Duration::from_secs(2);
    let _ = sys::wait_fd(fd.as_fd(), libc::POLLIN, Some(deadline));
    w.signal(libc::SIGKILL, false); // what is left of the group
}

/// The server's greeting.
#[derive(Debug)]
pub(crate) struct Hello {
    version: String,
    /// (The pid it names is not used: who the server is comes from the kernel, `SO_PEERCRED`
    /// and `SO_PEERPIDFD`.)
    build: String,
}

/// Connects to a server speaking our protocol version and of our build, starting one if needed.
/// A server of another version or build is stopped and replaced, once.
fn connect_checked<A: Application>(
    p: &Preloader<A>,
    dir: &Dir,
) -> Result<(Channel, Hello), Failure> {
    let mut restarted = false;
    let mut retried = false;
    loop {
        let mut conn = connect_or_start(p, dir)?;
        let hello = match handshake(&mut conn, p.options.handshake_timeout, dir) {
            Ok(h) => h,
            // A server that was exiting (idle, stopped) as we connected: once more.
            Err(Handshake::Closed(_)) if !retried => {
                retried = true;
                continue;
            }
            Err(Handshake::Closed(e) | Handshake::Failed(e)) => return Err(e.into()),
        };
        if hello.version == PROTOCOL_VERSION && hello.build == build_id() {
            return Ok((conn, hello));
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
        stop_server(conn, p.options.stop_grace)?;
        restarted = true;
    }
}

enum Handshake {
    /// The connection ended before the greeting.
    Closed(io::Error),
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
            return Err(Handshake::Failed(other(format!(
                "the preloader server did not answer within {timeout:?}: it is wedged, or busy \
                 with {} connections (its limit); see {}, or try `--preloader restart`",
                super::daemon::MAX_CONNECTIONS,
                dir.display(Kind::Log).display()
            ))))
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
        }),
        [version, ..] => Ok(Hello {
            version: version.clone(),
            build: String::new(),
        }),
        [] => Err(bad()),
    }
}

/// Connects to the socket, and checks with `SO_PEERCRED` that the server runs as us before
/// anything is sent. `None`: nobody listens there.
fn connect(dir: &Dir) -> Result<Option<Channel>, Failure> {
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
    let (uid, _) = os::peer_cred(stream.as_fd())?;
    let me = dir.owner(); // checked to be our euid when it was opened
    if uid != me {
        return Err(Failure::Unusable(format!(
            "the server at {} runs as uid {uid}, not as you (uid {me}): nothing was sent to it",
            dir.display(Kind::Sock).display()
        )));
    }
    Ok(Some(Channel::from(stream)))
}

/// Connects, or (under the start lock, so that racing clients start one server) removes stale
/// files, starts a server and waits for it to listen.
fn connect_or_start<A: Application>(p: &Preloader<A>, dir: &Dir) -> Result<Channel, Failure> {
    if let Some(c) = connect(dir)? {
        return Ok(c);
    }
    let lock = dir.open_file(Kind::Lock, libc::O_RDWR | libc::O_CREAT)?;
    sys::flock(lock.as_fd(), true, false)?;
    if let Some(c) = connect(dir)? {
        return Ok(c); // another client started it while we waited for the lock
    }
    clean_stale(dir)?;
    spawn_server(p, dir)?;
    let c = connect(dir)?.ok_or_else(|| {
        other(format!(
            "the preloader server reported ready but {} refuses connections",
            dir.display(Kind::Sock).display()
        ))
    })?;
    drop(lock);
    Ok(c)
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

/// Starts the server: this executable with the role variable set, the checked directory as
/// descriptor 4; it forks into the background (new session) and writes `ready` to descriptor 3
/// once it listens.
fn spawn_server<A: Application>(p: &Preloader<A>, dir: &Dir) -> io::Result<()> {
    if let Err(why) = super::idle_timeout(&p.options) {
        eprintln!("fdserver preloader: {why}");
    }
    let (rd, wr) = sys::pipe()?;
    let log = dir.open_file(Kind::Log, libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND)?;
    let exe = std::env::current_exe()?;
    let (wr_raw, dir_raw) = (wr.as_raw_fd(), dir.fd().as_raw_fd());
    let mut cmd = Command::new(exe);
    cmd.env(ENV_ROLE, "launch")
        .env(super::ENV_DIR, dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .current_dir("/");
    // SAFETY: the closure only calls fcntl/dup2/close (async-signal-safe) on descriptors that
    // are open in the child.
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
            Ok(())
        });
    }
    let mut launcher = cmd.spawn()?;
    drop(wr);
    // The launcher forks the server and exits at once; reap it.
    let status = launcher.wait()?;
    if !status.success() {
        return Err(other(format!(
            "the preloader server failed to launch ({status}); see {}",
            dir.display(Kind::Log).display()
        )));
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
            dir.display(Kind::Log).display()
        )))
    }
}

/// The running server's status, without starting one.
pub(crate) fn status<A: Application>(p: &Preloader<A>) -> io::Result<Option<Status>> {
    let dir = p.dir()?;
    let Some(mut conn) = connect(&dir).map_err(failure_to_io)? else {
        clean_stale(&dir)?;
        return Ok(None);
    };
    let hello = handshake(&mut conn, p.options.handshake_timeout, &dir).map_err(|e| match e {
        Handshake::Closed(e) | Handshake::Failed(e) => e,
    })?;
    // The pid shown is the kernel's (the process listening on the socket), not the greeting's.
    let (version, pid) = (hello.version, os::peer_cred(conn.as_fd())?.1 as u32);
    conn.set_read_timeout(Some(p.options.handshake_timeout));
    conn.write_array(["status"]).map_err(io::Error::from)?;
    let reply = conn
        .read_strings()
        .map_err(io::Error::from)?
        .ok_or_else(|| other("the server closed the connection"))?;
    // ["ok", uptime_ms, (key, pid or "", uptime_ms)*]
    let ms = |s: &String| Duration::from_millis(s.parse().unwrap_or(0));
    if reply.first().map(String::as_str) != Some("ok") || reply.len() < 2 {
        return Err(other(format!("bad status reply: {reply:?}")));
    }
    let templates = reply[2..]
        .chunks(3)
        .filter(|c| c.len() == 3)
        .map(|c| TemplateStatus {
            key: c[0].clone(),
            pid: c[1].parse().ok(),
            uptime: ms(&c[2]),
        })
        .collect();
    Ok(Some(Status {
        server_pid: pid,
        uptime: ms(&reply[1]),
        version,
        templates,
    }))
}

fn failure_to_io(f: Failure) -> io::Error {
    match f {
        Failure::Unusable(why) => io::Error::new(io::ErrorKind::PermissionDenied, why),
        Failure::Io(e) => e,
    }
}

/// Stops the running server: asks it (`["stop"]`), SIGTERM, then SIGKILL after the grace
/// period, each through a pidfd of the process that listens on the socket. A server that holds
/// the pidfile but has lost its socket exits by itself: it is given the grace period to.
pub(crate) fn stop<A: Application>(p: &Preloader<A>) -> io::Result<bool> {
    let dir = p.dir()?;
    let stopped = match connect(&dir).map_err(failure_to_io)? {
        Some(conn) => {
            stop_server(conn, p.options.stop_grace)?;
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

/// Stops the server at the other end of `conn`: `["stop"]` (every version understands it as its
/// first request), then SIGTERM, wait up to `grace`, SIGKILL, wait. The signals go through a
/// pidfd of the process that listens on the socket (from the kernel, not from anything the
/// server says).
fn stop_server(mut conn: Channel, grace: Duration) -> io::Result<()> {
    let pidfd = os::peer_pidfd(conn.as_fd());
    conn.set_write_timeout(Some(grace));
    let _ = conn.write_array(["stop"]);
    drop(conn);
    let pidfd = match pidfd {
        Ok(fd) => fd,
        // Gone already (or the kernel cannot name it): nothing we may signal.
        Err(_) => return Ok(()),
    };
    sys::pidfd_kill(pidfd.as_fd(), libc::SIGTERM)?;
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
    let (mut conn, _) = connect_checked(p, &dir).map_err(failure_to_io)?;
    conn.write_array(["preload", key.as_str()])
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
