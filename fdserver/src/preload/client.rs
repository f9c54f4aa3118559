//! The thin client: connect (or start a server), hand over the command, relay signals, exit with
//! the worker's status.

use std::ffi::OsString;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{join_nul, Application, Paths, Preloader, ENV_ROLE, PROTOCOL_VERSION};
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

/// Runs one command through the preloader.
pub(crate) fn run<A: Application>(p: &Preloader<A>, args: Vec<OsString>) -> io::Result<Outcome> {
    let paths = p.paths()?;
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
        let mut conn = connect_checked(p, &paths)?;
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
                return Err(other(reason));
            }
            return Err(other(format!("sending the command to the server: {e}")));
        }
        relay(&mut conn, &sigfd)
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

/// Waits for the worker's pid and status, relaying signals meanwhile.
fn relay(conn: &mut Channel, sigfd: &OwnedFd) -> io::Result<Outcome> {
    let mut pid: Option<i32> = None;
    let mut queued: Vec<i32> = Vec::new();
    let mut buf = MessageBuf::new();
    let forward = |pid: i32, sig: i32| {
        if sig == libc::SIGTSTP {
            // A worker in its own session is in an orphaned process group, where the kernel
            // discards SIGTSTP: stop it with SIGSTOP, then stop ourselves. `fg` continues us
            // with SIGCONT, which we relay.
            let _ = sys::kill_group(pid, libc::SIGSTOP);
            let _ = sys::kill(sys::getpid() as i32, libc::SIGSTOP);
        } else {
            let _ = sys::kill_group(pid, sig);
        }
    };
    loop {
        let ready = sys::poll_in(&[conn.as_fd(), sigfd.as_fd()], None)?;
        if ready[1] {
            while let Some(sig) = sys::read_signalfd(sigfd.as_fd())? {
                match pid {
                    Some(p) => forward(p, sig),
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
                    end_orphan(pid);
                    return Err(other(
                        "the preloader server closed the connection before the command finished",
                    ));
                }
                Err(e) => {
                    end_orphan(pid);
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
                    pid = Some(p);
                    for sig in queued.drain(..) {
                        forward(p, sig);
                    }
                }
                b"exit" => return Ok(Outcome::Exit(num(1)?)),
                b"signal" => return Ok(Outcome::Signal(num(1)?)),
                b"error" => {
                    // After the worker's pid, an error means its template failed (timed out, or
                    // died): nobody will report or stop the worker, so end it ourselves.
                    end_orphan(pid);
                    let kind = String::from_utf8_lossy(msg.get(1).unwrap_or(b""));
                    let text = String::from_utf8_lossy(msg.get(2).unwrap_or(b""));
                    return Err(other(format!("{kind}: {text}")));
                }
                _ => {
                    end_orphan(pid);
                    return Err(other(format!(
                        "unexpected message from the server: {msg:?}"
                    )));
                }
            }
        }
    }
}

/// The connection ended before the worker's status: nobody will report it or stop it, so end
/// its process group (SIGTERM, then SIGKILL after a grace period).
fn end_orphan(pid: Option<i32>) {
    let Some(pid) = pid else { return };
    let fd = sys::pidfd_open(pid).ok();
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
        .open(&paths.lock)?;
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
        Err(e) => return Err(e),
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
            Err(e) => return Err(e),
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
        .open(&paths.log)?;
    let exe = std::env::current_exe()?;
    let wr_raw = wr.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.env(ENV_ROLE, "launch")
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
