//! Shared support for the preloader's integration tests (`tests/preload_*.rs`): a private
//! directory and server per test, clients run with deadlines, status parsing, process probes.
//!
//! Not every test binary uses every helper.
#![allow(dead_code)]

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fdserver_tests::{poll_readable, wait_pid_gone, SECS};

/// The test application.
pub const APP: &str = env!("CARGO_BIN_EXE_preload-app");

/// How long any single client run may take before the test calls it a hang.
pub const RUN_LIMIT: Duration = Duration::from_secs(20);

/// Environment variables of the test process that must not leak into a test's clients.
const SCRUBBED: &[&str] = &[
    "FDSERVER_PRELOAD",
    "FDSERVER_PRELOAD_DIR",
    "XDG_RUNTIME_DIR",
    "APP_COUNTER",
    "APP_PRELOAD_OUTPUT",
    "APP_PRELOAD_THREAD",
    "APP_FAIL_IF",
    "APP_CRASH_IF",
    "APP_WATCH",
    "APP_ENV",
    "APP_GATE",
    "APP_GATE_KEY",
    "APP_PRELOAD_TIMEOUT_MS",
    "APP_HANDSHAKE_TIMEOUT_MS",
    "APP_CONF",
    "APP_KEEP_FD",
    "FDSERVER_PRELOAD_VERBOSE",
    "FDSERVER_PRELOAD_IDLE_TIMEOUT",
    "LD_PRELOAD",
    "LD_AUDIT",
];

/// One test's private preloader world: a fresh `0700` directory (hence its own server) and the
/// environment its clients run with. Dropping it stops the server (`--preloader stop`) and
/// removes the directory, even when the test panics.
pub struct Pl {
    pub dir: PathBuf,
    env: Vec<(OsString, OsString)>,
    /// Whether clients get `FDSERVER_PRELOAD_DIR` (see [`Pl::default_dir_in`]).
    dir_env: bool,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Pl {
    /// A new private directory `/tmp/pl-<tag>-<pid>-<n>` (short: socket paths are limited to
    /// 108 bytes), with `APP_COUNTER` pointing into it.
    pub fn new(tag: &str) -> Pl {
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = PathBuf::from(format!("/tmp/pl-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .expect("create the test's private directory");
        let counter = dir.join("counter");
        Pl {
            env: vec![("APP_COUNTER".into(), counter.into())],
            dir,
            dir_env: true,
        }
    }

    /// Adds (or replaces) a variable every client of this test gets.
    pub fn set(&mut self, key: &str, value: impl AsRef<OsStr>) -> &mut Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.as_ref().to_owned()));
        self
    }

    /// Clients choose their directory as without any setting (no `FDSERVER_PRELOAD_DIR` nor
    /// `XDG_RUNTIME_DIR`): `fdserver-preload-<uid>` in the temporary directory, here
    /// `<dir>/tmp`, a world-writable sticky directory like `/tmp` (`TMPDIR`). Returns it.
    pub fn default_dir_in(&mut self) -> PathBuf {
        let tmp = self.path("tmp");
        std::fs::create_dir(&tmp).unwrap();
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o1777))
            .unwrap();
        // Traversable by others too, as /tmp is.
        std::fs::set_permissions(
            &self.dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )
        .unwrap();
        self.dir_env = false;
        self.set("TMPDIR", &tmp);
        tmp
    }

    /// A path inside the private directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `program` with this test's environment, stdin from /dev/null, in its own process group.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = self.command_env(program);
        c.stdin(Stdio::null()).process_group(0);
        c
    }

    /// `program` with this test's environment only, and no descriptor but 0, 1, 2 (a client
    /// passes what it inherited on to its worker: the test process's own strays must not
    /// reach it; a test that wants some adds them in its own `pre_exec`, which runs after).
    pub fn command_env(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new(program);
        // SAFETY: close_range only sets close-on-exec here; async-signal-safe.
        unsafe {
            c.pre_exec(|| {
                const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
                libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC);
                Ok(())
            });
        }
        for k in SCRUBBED {
            c.env_remove(k);
        }
        if self.dir_env {
            c.env("FDSERVER_PRELOAD_DIR", &self.dir);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// The test application with `args`.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.command(APP);
        c.args(args);
        c
    }

    /// Runs the application with `args` to completion (within [`RUN_LIMIT`]).
    pub fn run(&self, args: &[&str]) -> Out {
        output(self.cmd(args), RUN_LIMIT)
    }

    /// Runs it and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "{args:?} failed: {out:?}");
        out.stdout
    }

    /// Runs the application with `args` both ways: through the preloader, and in-process
    /// (`FDSERVER_PRELOAD=0`), each command prepared by `setup`. Returns `(warm, cold)`.
    pub fn both(&self, args: &[&str], setup: impl Fn(&mut Command)) -> (Out, Out) {
        let mut warm = self.cmd(args);
        setup(&mut warm);
        let warm = output(warm, RUN_LIMIT);
        let mut cold = self.cmd(args);
        cold.env("FDSERVER_PRELOAD", "0");
        setup(&mut cold);
        (warm, output(cold, RUN_LIMIT))
    }

    /// Runs `sh -c script` with the application's path as `$0` (`"$0" echo hi | cat`).
    pub fn sh(&self, script: &str) -> Out {
        let mut c = self.command("sh");
        c.arg("-c").arg(script).arg(APP);
        output(c, RUN_LIMIT)
    }

    /// `--preloader status`, parsed; `None` when no server runs.
    pub fn status(&self) -> Option<Status> {
        let out = self.run(&["--preloader", "status"]);
        if out.status.code() == Some(1) && out.stdout.contains("no preloader server") {
            return None;
        }
        assert!(out.status.success(), "status failed: {out:?}");
        Some(Status::parse(&out.stdout))
    }

    /// The running server's status; panics if none runs.
    pub fn server(&self) -> Status {
        self.status().expect("a preloader server should be running")
    }

    /// `--preloader stop`, asserting it succeeded; returns its stdout.
    pub fn stop(&self) -> String {
        self.ok(&["--preloader", "stop"])
    }

    /// The lines of the preload counter (one per preload, the template key).
    pub fn preloads(&self) -> Vec<String> {
        match std::fs::read_to_string(self.path("counter")) {
            Ok(s) => s.lines().map(str::to_owned).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The server's files, named as the library names them.
    pub fn files(&self) -> Files {
        let exe = std::fs::canonicalize(APP).expect("canonicalize the app's path");
        let id = format!(
            "preload-app-{:016x}",
            fnv1a(exe.as_os_str().as_encoded_bytes())
        );
        Files {
            sock: self.dir.join(format!("{id}.sock")),
            pid: self.dir.join(format!("{id}.pid")),
            lock: self.dir.join(format!("{id}.lock")),
            log: self.dir.join(format!("{id}.log")),
        }
    }

    /// The server's log (empty if none was written).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.files().log).unwrap_or_default()
    }
}

impl Drop for Pl {
    fn drop(&mut self) {
        // Best effort, never panicking (we may be unwinding already).
        if std::thread::panicking() {
            if let Ok(o) = Command::new("ps")
                .args(["-eo", "pid,ppid,pgid,sid,stat,args"])
                .output()
            {
                let text = String::from_utf8_lossy(&o.stdout);
                let mine: Vec<&str> = text.lines().filter(|l| l.contains("preload-app")).collect();
                eprintln!("--- preload-app processes ---\n{}", mine.join("\n"));
            }
        }
        let mut c = self.cmd(["--preloader", "stop"]);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        if let Ok(mut child) = c.spawn() {
            if !wait_pid_gone(child.id(), RUN_LIMIT) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- server log of {} ---\n{}",
                self.dir.display(),
                self.log()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The server's files.
#[derive(Debug, Clone)]
pub struct Files {
    pub sock: PathBuf,
    pub pid: PathBuf,
    pub lock: PathBuf,
    pub log: PathBuf,
}

/// `--preloader status`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub server: u32,
    pub version: String,
    /// `(key, pid)`; `pid` is `None` for a template that is not running.
    pub templates: Vec<(String, Option<u32>)>,
}

impl Status {
    fn parse(text: &str) -> Status {
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("");
        // <app>: preloader server pid N, up T (version, build B)
        let server = first
            .split_once("preloader server pid ")
            .and_then(|(_, r)| r.split(',').next())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("bad status output: {text:?}"));
        let version = first
            .rsplit_once('(')
            .and_then(|(_, v)| v.strip_suffix(')'))
            .and_then(|v| v.split(", build ").next())
            .expect("(version, build B)")
            .to_owned();
        let mut templates = Vec::new();
        for l in lines {
            let l = l.trim();
            let Some(rest) = l.strip_prefix("template ") else {
                continue;
            };
            // "dev": pid N, up T, ...   |   "dev": preloading (for T)   |   "dev": not running
            let (key, tail) = rest.split_once(": ").expect("template line");
            let key = key.trim_matches('"').to_owned();
            let pid = tail
                .strip_prefix("pid ")
                .and_then(|t| t.split(',').next())
                .map(|p| p.trim().parse().expect("template pid"));
            templates.push((key, pid));
        }
        Status {
            server,
            version,
            templates,
        }
    }

    /// The pid of the template for `key`.
    pub fn template(&self, key: &str) -> Option<u32> {
        self.templates
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, p)| *p)
    }
}

/// How a client run ended, and what it printed.
#[derive(Debug)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` (stdout and stderr piped unless already set) and waits for it and for the end of
/// its output, both within `limit`. A run that outlives the limit has its process group killed
/// and fails the test with what it printed so far: a hang is a test failure, not a stalled run.
pub fn output(mut cmd: Command, limit: Duration) -> Out {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + limit;
    let (tx, rx) = mpsc::channel();
    for (i, mut r) in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ]
    .into_iter()
    .enumerate()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            let _ = tx.send((i, buf));
        });
    }
    drop(tx);
    let exited = wait_pid_gone(child.id(), limit);
    if !exited {
        // SAFETY: kill(2) on the process group we created for the child.
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    }
    let status = child.wait().expect("wait");
    let mut outs = [Vec::new(), Vec::new()];
    let mut closed = 0;
    while closed < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.max(Duration::from_millis(if exited { 1 } else { 0 }))) {
            Ok((i, b)) => {
                outs[i] = b;
                closed += 1;
            }
            Err(_) => break,
        }
    }
    let [o, e] = outs;
    let out = Out {
        status,
        stdout: String::from_utf8_lossy(&o).into_owned(),
        stderr: String::from_utf8_lossy(&e).into_owned(),
    };
    assert!(
        exited,
        "{cmd:?} still running after {limit:?} (killed): {out:?}"
    );
    assert!(
        closed == 2,
        "{cmd:?} exited ({}) but its stdout/stderr stayed open after {limit:?}: some process \
         kept the client's descriptors. So far: {out:?}",
        out.status
    );
    out
}

/// A long-running client (e.g. `wait`) whose stdout the test reads line by line.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    /// Spawns `cmd` with stdout piped (stderr inherited: it shows in the test's output).
    pub fn spawn(mut cmd: Command) -> Running {
        cmd.stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines: rx }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line of output (within [`RUN_LIMIT`]); `None` at end of stream.
    pub fn line(&self) -> Option<String> {
        match self.lines.recv_timeout(RUN_LIMIT) {
            Ok(l) => Some(l),
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("client {} printed nothing for {RUN_LIMIT:?}", self.pid())
            }
        }
    }

    /// Reads lines until one starts with `prefix `; returns the number after it.
    pub fn expect_pid(&self, prefix: &str) -> u32 {
        loop {
            let l = self
                .line()
                .unwrap_or_else(|| panic!("end of output before {prefix:?}"));
            if let Some(rest) = l.strip_prefix(prefix).and_then(|r| r.strip_prefix(' ')) {
                return rest.trim().parse().expect("pid");
            }
        }
    }

    /// The numbers of the lines `a <n>` and `b <n>`, in whichever order they come.
    pub fn expect_two(&self, a: &str, b: &str) -> (u32, u32) {
        let (mut x, mut y) = (None, None);
        while x.is_none() || y.is_none() {
            let l = self.line().expect("end of output");
            let (word, n) = l.split_once(' ').expect("`word pid` line");
            let n: u32 = n.trim().parse().expect("pid");
            if word == a {
                x = Some(n);
            } else if word == b {
                y = Some(n);
            }
        }
        (x.unwrap(), y.unwrap())
    }

    /// Sends `sig` to the client process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, sig) }, 0);
    }

    /// Waits (within [`RUN_LIMIT`]) for the client to exit and returns its status.
    pub fn wait(&mut self) -> ExitStatus {
        assert!(
            wait_pid_gone(self.pid(), RUN_LIMIT),
            "client {} did not exit within {RUN_LIMIT:?}",
            self.pid()
        );
        self.child.wait().expect("wait")
    }

    /// Whether the client is still running (not exited).
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether `cond` becomes true within [`RUN_LIMIT`] (checked in a yielding loop: for kernel
/// state that has no event to wait on, such as another process's stop).
pub fn wait_until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + RUN_LIMIT;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::yield_now();
    }
    cond()
}

/// Whether we run as root (tests that build sandboxes need it); prints why `test` skips
/// otherwise.
pub fn as_root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("{test}: skipped: needs root");
    }
    root
}

/// Asserts that the process `pid` (not necessarily our child) exits within [`RUN_LIMIT`].
pub fn assert_gone(pid: u32, what: &str) {
    assert!(
        wait_pid_gone(pid, RUN_LIMIT),
        "{what} (pid {pid}) still running after {RUN_LIMIT:?}"
    );
}

/// Whether `pid` is running (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    fdserver_tests::process_exists(pid) && !fdserver_tests::is_zombie(pid)
}

/// The parent pid of `pid`, from `/proc`.
pub fn ppid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The children of `pid` (running or zombie), from `/proc`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if ppid(p) == Some(pid) {
            out.push(p);
        }
    }
    out
}

/// Zombies anywhere under `pid` (its children, their children, ...).
pub fn zombies_under(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            if fdserver_tests::is_zombie(c) {
                found.push(c);
            } else {
                todo.push(c);
            }
        }
    }
    found
}

/// The state letter of `pid` (`R`, `S`, `T`, `Z`, ...).
pub fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Reads `fd` to end of stream within `limit`; `None` if it is still open then (some process
/// holds its write end).
pub fn read_to_eof(fd: OwnedFd, limit: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut f = std::fs::File::from(fd);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if !poll_readable(f.as_fd(), Some(left)) {
            return None;
        }
        match f.read(&mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Some(out), // pty hang-up
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// A child process that does nothing until killed: a pid the test can let others signal.
pub fn sleeper() -> Child {
    Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sleep")
}

/// The signal that ended `status`, if any.
pub fn signal_of(status: &ExitStatus) -> Option<i32> {
    status.signal()
}

/// A pseudo-terminal: `(master, slave)`, both close-on-exec (so that processes spawned by
/// concurrently running tests never inherit them).
pub fn pty(cols: u16, rows: u16) -> (OwnedFd, OwnedFd) {
    // SAFETY: plain libc calls on descriptors this function owns; ptsname_r writes into a
    // local buffer of the size given.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        let master = OwnedFd::from_raw_fd(m);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut name = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        assert!(s >= 0, "open slave: {}", std::io::Error::last_os_error());
        let slave = OwnedFd::from_raw_fd(s);
        set_winsize(master.as_fd(), cols, rows);
        (master, slave)
    }
}

/// Sets a terminal's window size (on the master: the kernel signals the foreground group).
pub fn set_winsize(fd: std::os::fd::BorrowedFd<'_>, cols: u16, rows: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

/// Reads from a pty master until the accumulated output contains `needle` (within
/// [`RUN_LIMIT`]); returns everything read, with `\r` removed.
pub fn read_until(master: std::os::fd::BorrowedFd<'_>, acc: &mut String, needle: &str) {
    let deadline = Instant::now() + RUN_LIMIT;
    let mut buf = [0u8; 1024];
    while !acc.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            poll_readable(master, Some(left)),
            "no {needle:?} on the terminal within {RUN_LIMIT:?}; got {acc:?}"
        );
        // SAFETY: read into a local buffer of its size.
        let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            panic!("terminal closed before {needle:?} ({e}); got {acc:?}");
        }
        if n == 0 {
            panic!("terminal closed before {needle:?}; got {acc:?}");
        }
        acc.push_str(&String::from_utf8_lossy(&buf[..n as usize]).replace('\r', ""));
    }
}

/// A client running on a pty as a session leader with it as its controlling terminal, like a
/// command typed in a shell: Ctrl-C on the master reaches it as SIGINT, a resize as SIGWINCH.
pub fn spawn_on_pty(pl: &Pl, args: &[&str], slave: &OwnedFd) -> Child {
    let mut c = pl.command_env(APP);
    c.args(args)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.spawn().expect("spawn on pty")
}

/// A job-control shell on a pty, like a user's terminal: `bash -c 'set -m; <script>'` as the
/// session leader with the pty as its controlling terminal, `$0` the test application. With
/// `set -m` bash runs each command as a job in its own process group, in the terminal's
/// foreground, and goes on when the job stops (`$?` is then 128 + the signal); `fg` continues
/// it. `extra` adds variables (e.g. `FDSERVER_PRELOAD=0`).
pub fn spawn_shell_on_pty(pl: &Pl, script: &str, slave: &OwnedFd, extra: &[(&str, &str)]) -> Child {
    let mut c = pl.command_env("bash");
    c.args([
        "--norc",
        "--noprofile",
        "-c",
        &format!("set -m; {script}"),
        APP,
    ])
    .envs(extra.iter().copied())
    .stdin(Stdio::from(slave.try_clone().unwrap()))
    .stdout(Stdio::from(slave.try_clone().unwrap()))
    .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: setsid and ioctl are async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.spawn().expect("spawn bash on pty")
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// A gate holding a preload (see the app's `APP_GATE`): configure it on `pl` for `key`, then
/// [`Gate::wait_started`] and [`Gate::release`].
pub struct Gate {
    started: std::fs::File,
    release: PathBuf,
}

impl Gate {
    pub fn new(pl: &mut Pl, key: &str) -> Gate {
        let dir = pl.path("gate");
        std::fs::create_dir(&dir).unwrap();
        mkfifo(&dir.join("started"));
        mkfifo(&dir.join("release"));
        // Open the read end without blocking, so that the preload's open for writing succeeds
        // at once.
        let started = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(dir.join("started"))
            .unwrap();
        pl.set("APP_GATE", &dir).set("APP_GATE_KEY", key);
        Gate {
            started,
            release: dir.join("release"),
        }
    }

    /// Waits until the preload reports it is held; returns its line.
    pub fn wait_started(&mut self) -> String {
        let mut acc = Vec::new();
        let mut buf = [0u8; 256];
        while !acc.ends_with(b"\n") {
            assert!(
                poll_readable(self.started.as_fd(), Some(RUN_LIMIT)),
                "the preload never reached the gate"
            );
            match self.started.read(&mut buf) {
                Ok(n) => acc.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("read gate: {e}"),
            }
        }
        String::from_utf8_lossy(&acc).trim().to_owned()
    }

    /// What the gate has said since, without waiting (`None`: nothing; a preload that reached
    /// the gate says `preloading <key>`).
    pub fn try_started(&mut self) -> Option<String> {
        let mut buf = [0u8; 256];
        match self.started.read(&mut buf) {
            Ok(n) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned()),
            _ => None,
        }
    }

    /// Lets the held preload finish.
    pub fn release(&self) {
        // Opening for writing blocks until the preload has the read end open, which it does
        // right after reporting.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.release)
            .unwrap();
        drop(f);
    }
}

/// The connections the server holds (accepted, not yet closed): sockets of the server process
/// (its pid from the pidfile) that `/proc/net/unix` lists as connected (state 03) under the
/// listening socket's name (the server binds it as `/proc/self/fd/N/<name>`).
pub fn server_connections(pl: &Pl) -> usize {
    let files = pl.files();
    let name = format!("/{}", files.sock.file_name().unwrap().to_str().unwrap());
    let server = std::fs::read_to_string(&files.pid).unwrap_or_default();
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{}/fd", server.trim()))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let link = std::fs::read_link(e.path()).ok()?;
            let link = link.to_str()?;
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    table
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            l.ends_with(&name)
                && f.get(5) == Some(&"03")
                && f.get(6).is_some_and(|i| inodes.iter().any(|o| o == i))
        })
        .count()
}

/// Waits (up to [`RUN_LIMIT`]) until the number of connections the server holds satisfies
/// `done`: a bounded wait on kernel state, which has no event to wait on.
pub fn wait_for_server_connections(pl: &Pl, done: impl Fn(usize) -> bool) -> bool {
    let deadline = Instant::now() + RUN_LIMIT;
    while Instant::now() < deadline {
        if done(server_connections(pl)) {
            return true;
        }
        std::thread::yield_now();
    }
    false
}

/// Shorthand for the watchdog every test takes.
pub fn wd(name: &str) -> fdserver_tests::Watchdog {
    fdserver_tests::watchdog(name, SECS(60))
}

/// What a [`FakeServer`] does on one connection, in order.
#[derive(Debug, Clone)]
pub enum Step {
    /// Sends an array message.
    Send(Vec<String>),
    /// Sends an array message followed by a pidfd of a process that has exited and been reaped
    /// (a worker whose number may since have been reused).
    SendWithDeadPidfd(Vec<String>),
    /// Reads one array message and reports it (`msg a|b|c`, or `eof`).
    Read,
    /// Reads a whole command as a client sends it (`["run", key]`, then the request the template
    /// reads: a `u32` length whose first byte carries stdin, stdout, stderr and the working
    /// directory, and that many bytes) and reports its first message and whether the rest came
    /// whole (`msg run|key +`).
    ReadCommand,
    /// Reads until end of stream and reports how many bytes came (`bytes N`).
    ReadToEnd,
}

/// A fake preloader server on `sock`, in two child processes: the *listener* binds and listens
/// (so it is the process `SO_PEERCRED` names to a client), optionally as another uid, then
/// waits to be killed; the *acceptor*, forked from it after `listen`, serves one connection per
/// script in `conns` and reports what it saw, one line per step that reads.
pub struct FakeServer {
    pub listener: libc::pid_t,
    reports: Option<OwnedFd>,
}

impl FakeServer {
    pub fn start(sock: &Path, listen_as: Option<u32>, conns: Vec<Vec<Step>>) -> FakeServer {
        let (r, w) = fdserver_tests::pipe();
        let (ready_r, ready_w) = fdserver_tests::pipe();
        let (w_raw, ready_raw) = (w.as_raw_fd(), ready_w.as_raw_fd());
        let path = sock.to_owned();
        let listener = fdserver_tests::fork_child(&[w_raw, ready_raw], move || {
            let l = match std::os::unix::net::UnixListener::bind(&path) {
                Ok(l) => l,
                Err(_) => return 2,
            };
            // `bind` also listened: listen again after changing uid, which is what the kernel
            // records as the peer's credentials.
            // SAFETY: credential calls in a child process; listen on our own socket.
            unsafe {
                if let Some(uid) = listen_as {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(uid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return 3;
                    }
                }
                if libc::listen(l.as_raw_fd(), 16) != 0 {
                    return 4;
                }
                let acceptor = libc::fork();
                if acceptor == 0 {
                    libc::close(ready_raw);
                    let code = serve_fake(&l, conns, w_raw);
                    libc::_exit(code);
                }
                libc::close(w_raw);
                fdserver_tests::write_raw(ready_raw, b"L");
                libc::close(ready_raw);
                loop {
                    libc::pause();
                }
            }
        });
        drop((w, ready_w));
        assert!(
            read_to_eof(ready_r, RUN_LIMIT).is_some_and(|b| b == b"L"),
            "the fake server did not start listening"
        );
        FakeServer {
            listener,
            reports: Some(r),
        }
    }

    /// Every report line, once the acceptor has served its connections (or given up waiting
    /// for them, after [`RUN_LIMIT`] each).
    pub fn reports(&mut self) -> Vec<String> {
        let fd = self.reports.take().expect("reports read once");
        let got = read_to_eof(fd, RUN_LIMIT * 4).expect("the fake server's reports");
        String::from_utf8_lossy(&got)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits for the listener process to end and returns how.
    pub fn wait_listener(&mut self) -> ExitStatus {
        fdserver_tests::wait_child(std::mem::replace(&mut self.listener, 0))
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if self.listener > 0 {
            // SAFETY: kill(2) and reaping of our own child.
            unsafe { libc::kill(self.listener, libc::SIGKILL) };
            fdserver_tests::wait_child(self.listener);
        }
    }
}

fn serve_fake(l: &std::os::unix::net::UnixListener, conns: Vec<Vec<Step>>, report: i32) -> i32 {
    let say = |line: String| fdserver_tests::write_raw(report, format!("{line}\n").as_bytes());
    for steps in conns {
        if !poll_readable(l.as_fd(), Some(RUN_LIMIT)) {
            say("no connection".into());
            return 1;
        }
        let Ok((s, _)) = l.accept() else { return 1 };
        let mut ch = fdserver::Channel::from(s);
        ch.set_timeout(Some(RUN_LIMIT));
        for step in steps {
            match step {
                Step::Send(msg) => {
                    let _ = ch.write_array(&msg);
                }
                Step::SendWithDeadPidfd(msg) => {
                    // SAFETY: a child that exits at once, reaped below; pidfd_open before that.
                    let pidfd = unsafe {
                        let pid = libc::fork();
                        if pid == 0 {
                            libc::_exit(0);
                        }
                        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
                        let mut st = 0;
                        libc::waitpid(pid, &mut st, 0);
                        OwnedFd::from_raw_fd(fd)
                    };
                    // As the library sends it: the frame, then one byte carrying the descriptor.
                    let _ = ch.write_array(&msg);
                    let _ = ch.send_fd(&pidfd);
                }
                Step::ReadCommand => {
                    let rest = |ch: &fdserver::Channel| -> bool {
                        let mut len = [0u8; 4];
                        let (n, fds) = fdserver_tests::recv_with_fds(ch.as_fd(), &mut len);
                        if n == 0 || fds.len() < 4 {
                            return false;
                        }
                        if n < 4 {
                            len[n..].copy_from_slice(&fdserver_tests::read_n(ch.as_fd(), 4 - n));
                        }
                        let body = u32::from_le_bytes(len) as usize;
                        fdserver_tests::read_n(ch.as_fd(), body).len() == body
                    };
                    match ch.read_strings() {
                        Ok(Some(v)) => {
                            let r = rest(&ch);
                            say(format!("msg {} {}", v.join("|"), if r { "+" } else { "-" }));
                        }
                        Ok(None) => say("eof".into()),
                        Err(e) => say(format!("error {e}")),
                    }
                }
                Step::Read => match ch.read_strings() {
                    Ok(Some(v)) => say(format!("msg {}", v.join("|"))),
                    Ok(None) => say("eof".into()),
                    Err(e) => say(format!("error {e}")),
                },
                Step::ReadToEnd => {
                    let mut n = 0usize;
                    let mut buf = [0u8; 4096];
                    loop {
                        if !poll_readable(ch.as_fd(), Some(RUN_LIMIT)) {
                            break;
                        }
                        // SAFETY: read into a local buffer of its size.
                        let r =
                            unsafe { libc::read(ch.as_raw_fd(), buf.as_mut_ptr().cast(), 4096) };
                        if r <= 0 {
                            break;
                        }
                        n += r as usize;
                    }
                    say(format!("bytes {n}"));
                }
            }
        }
    }
    0
}

/// The greeting of a real server of the test application (`["fdserver-preload", version, pid,
/// build]`): starts one, reads it, stops it.
pub fn real_greeting(pl: &Pl) -> Vec<String> {
    pl.ok(&["echo", "x"]);
    let mut ch = fdserver::Channel::from(
        std::os::unix::net::UnixStream::connect(pl.files().sock).expect("connect"),
    );
    ch.set_timeout(Some(RUN_LIMIT));
    let mut hello = ch.read_strings().expect("greeting").expect("greeting");
    drop(ch);
    pl.stop();
    // Without the descriptor of the (now stopped) server's proof: a fake server asks for none.
    hello.truncate(4);
    hello
}

/// A hand-made client's proof that it may inspect the server (protocol 5): the nonce behind
/// the descriptor the greeting `hello` names, read through `/proc/<server pid>/fd/<n>`
/// (`Err`: this process may not, being confined where the server is not).
pub fn proof(conn: std::os::fd::BorrowedFd<'_>, hello: &[String]) -> std::io::Result<Vec<u8>> {
    // SAFETY: ucred is plain data; getsockopt writes at most its size.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the right size.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "SO_PEERCRED: {}", std::io::Error::last_os_error());
    let pid = cred.pid;
    let fd = hello.get(4).expect("a greeting with a proof descriptor");
    std::fs::read(format!("/proc/{pid}/fd/{fd}"))
}
