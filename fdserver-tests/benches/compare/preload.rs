//! Row 5: the preloader (`fdserver::preload`), measured from outside as a user sees it: whole
//! client processes, started the way a shell runs a command (`fork`, `execve` in the child,
//! `waitpid`), exactly like the raw baseline (the same for `/bin/true`). Row 5p starts both
//! with `posix_spawn` instead (`vfork`-like: no copy of the bench's page tables).
//!
//! * `preload-app` (the integration tests' application, `fdserver-tests/src/bin/preload-app.rs`;
//!   its command `exit 0` does nothing) against a server that is already running: the warm
//!   command, from the client's `execve` to its exit.
//! * `wordindex` (the `examples/wordindex.rs` preloader example, release build; its preload builds
//!   an inverted index): `stats` cold (`--preloader stop`, untimed, then a run that starts the
//!   server and preloads), warm (server up), and in-process (`FDSERVER_PRELOAD=0`).
//!
//! Every server lives in its own `0700` directory under /tmp (`FDSERVER_PRELOAD_DIR`), so the
//! bench never talks to a user's server. [`PreloadServer`] stops its server and removes the
//! directory when dropped (also when a panic unwinds), and [`watchdog`] does the same for every
//! live server before it aborts a hung row. The bench makes itself a child subreaper, so the
//! servers (daemons, which the preloader double-forks away from their client) are reparented to
//! it and reaped after each stop instead of piling up as zombies under an init that does not
//! reap (as on these VMs).

use std::ffi::{CString, OsStr};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Finding (and building) the binaries
// ---------------------------------------------------------------------------------------------

/// The workspace root (this package is one level below it).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("fdserver-tests has a parent directory")
        .to_path_buf()
}

/// The target directory the bench was built in: `CARGO_TARGET_DIR` if set, else `<root>/target`.
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let d = PathBuf::from(d);
            if d.is_absolute() {
                d
            } else {
                workspace_root().join(d)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Runs `cargo build --release <args> --message-format=json-render-diagnostics` in the workspace
/// with the bench's target directory, and returns the path of the executable it reports for
/// `name` (cargo's own answer, so a `--target` triple or a renamed profile directory cannot
/// fool us).
fn cargo_build(args: &[&str], name: &str) -> Result<PathBuf, String> {
    cargo_build_in(&target_dir(), &[], args, name)
}

/// [`cargo_build`] into `target`, with `env` added to cargo's environment.
fn cargo_build_in(
    target: &Path,
    env: &[(&str, &str)],
    args: &[&str],
    name: &str,
) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .env("CARGO_TARGET_DIR", target)
        .envs(env.iter().copied())
        .args([
            "build",
            "--release",
            "--message-format=json-render-diagnostics",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    eprintln!(
        "  building: {}{} build --release {} (CARGO_TARGET_DIR={})",
        env.iter()
            .map(|(k, v)| format!("{k}='{v}' "))
            .collect::<String>(),
        Path::new(&cargo).display(),
        args.join(" "),
        target.display()
    );
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", Path::new(&cargo).display()))?;
    if !out.status.success() {
        return Err(format!("`cargo build --release {}` failed", args.join(" ")));
    }
    // One JSON object per line; the artifact of our target carries `"executable":"<path>"`.
    let text = String::from_utf8_lossy(&out.stdout);
    let found = text
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .filter(|l| l.contains(&format!("\"name\":\"{name}\"")))
        .find_map(|l| json_string_field(l, "executable"));
    match found {
        Some(p) if Path::new(&p).is_file() => Ok(PathBuf::from(p)),
        _ => {
            // Fall back to the conventional location.
            let sub = if args.contains(&"--example") {
                format!("release/examples/{name}")
            } else {
                format!("release/{name}")
            };
            let p = target.join(sub);
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "cargo built {name} but it is not at {}",
                    p.display()
                ))
            }
        }
    }
}

/// The string value of `"field":"..."` in one line of cargo's JSON output (handles the escapes
/// cargo emits in paths: `\\`, `\"`, `\/`).
fn json_string_field(line: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\":\"");
    let start = line.find(&key)? + key.len();
    let mut out = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

/// `preload-app`: cargo builds this package's binaries before its benches and tells us where
/// (`CARGO_BIN_EXE_*`), so this is always the current code in the bench's profile. Built with
/// cargo only if it has gone missing since (target directory cleaned, binary moved).
pub fn preload_app() -> Result<PathBuf, String> {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_preload-app"));
    if p.is_file() {
        return Ok(p);
    }
    cargo_build(
        &["-p", "fdserver-tests", "--bin", "preload-app"],
        "preload-app",
    )
}

/// `preload-app` linked statically (`-C target-feature=+crt-static`, glibc), the build
/// recommended for a preloader's thin client: no dynamic loader, no relocations of shared
/// libraries at every start. Built by cargo for the host triple into `<target>/static-client`
/// (its own directory, so the bench's own build is not invalidated); a no-op when up to date.
pub fn preload_app_static() -> Result<PathBuf, String> {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return Err("the static client row is measured on linux-gnu only".into());
    }
    // `--target` keeps RUSTFLAGS off the proc-macro crate (built for the host without it).
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    cargo_build_in(
        &target_dir().join("static-client"),
        &[("RUSTFLAGS", "-C target-feature=+crt-static")],
        &[
            "--target",
            &triple,
            "-p",
            "fdserver-tests",
            "--bin",
            "preload-app",
        ],
        "preload-app",
    )
}

/// `wordindex` (release): another package's example, which `cargo bench` does not build, so we
/// always ask cargo (a no-op when it is up to date; otherwise it rebuilds against the current
/// fdserver, so a stale binary is never measured). If the build fails but an earlier binary
/// exists, it is used with a warning.
pub fn wordindex() -> Result<PathBuf, String> {
    match cargo_build(
        &["-p", "fdserver-examples", "--example", "wordindex"],
        "wordindex",
    ) {
        Ok(p) => Ok(p),
        Err(e) => {
            let old = target_dir().join("release/examples/wordindex");
            if old.is_file() {
                eprintln!(
                    "  WARNING: {e}; measuring the existing (possibly stale) {}",
                    old.display()
                );
                Ok(old)
            } else {
                Err(e)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// posix_spawn + waitpid
// ---------------------------------------------------------------------------------------------

/// An environment block for `posix_spawn`: this process's environment without the preloader's
/// variables, plus the ones given.
pub struct Env {
    _vars: Vec<CString>,
    ptrs: Vec<*mut libc::c_char>,
}

impl Env {
    pub fn new(extra: &[(&str, &OsStr)]) -> Env {
        let mut vars: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| k != "FDSERVER_PRELOAD" && k != "FDSERVER_PRELOAD_DIR")
            .chain(extra.iter().map(|(k, v)| ((*k).into(), (*v).to_owned())))
            .filter_map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).ok()
            })
            .collect();
        vars.shrink_to_fit();
        let mut ptrs: Vec<*mut libc::c_char> = vars.iter().map(|c| c.as_ptr().cast_mut()).collect();
        ptrs.push(ptr::null_mut());
        Env { _vars: vars, ptrs }
    }
}

/// A program with its arguments and environment, prepared once and spawned many times.
pub struct Spawn {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*mut libc::c_char>,
    env: Env,
    /// `Some`: stdout goes to /dev/null.
    actions: Option<Box<libc::posix_spawn_file_actions_t>>,
    /// Started as a shell does: `fork`, then `execve` in the child (else `posix_spawn`).
    fork_exec: bool,
    label: String,
}

impl Spawn {
    /// `argv[0]` is the program's path. `quiet`: stdout to /dev/null (stdin and stderr are
    /// inherited either way).
    pub fn new(path: &Path, args: &[&str], env: Env, quiet: bool) -> Spawn {
        let path_c = CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
        let argv: Vec<CString> = std::iter::once(path_c.clone())
            .chain(
                args.iter()
                    .map(|a| CString::new(*a).expect("arg without NUL")),
            )
            .collect();
        let mut argv_ptrs: Vec<*mut libc::c_char> =
            argv.iter().map(|c| c.as_ptr().cast_mut()).collect();
        argv_ptrs.push(ptr::null_mut());
        let actions = quiet.then(|| {
            // SAFETY: an all-zero value is a valid argument to posix_spawn_file_actions_init,
            // which initialises it; the Box keeps its address stable.
            let mut fa: Box<libc::posix_spawn_file_actions_t> =
                Box::new(unsafe { std::mem::zeroed() });
            // SAFETY: `fa` is valid, and the path is a NUL-terminated literal.
            unsafe {
                assert_eq!(libc::posix_spawn_file_actions_init(&mut *fa), 0);
                assert_eq!(
                    libc::posix_spawn_file_actions_addopen(
                        &mut *fa,
                        1,
                        c"/dev/null".as_ptr(),
                        libc::O_WRONLY,
                        0
                    ),
                    0
                );
            }
            fa
        });
        Spawn {
            path: path_c,
            _argv: argv,
            argv_ptrs,
            env,
            actions,
            fork_exec: true,
            label: format!("{} {}", path.display(), args.join(" ")),
        }
    }

    /// Started with `posix_spawn` instead of `fork` + `execve` (row 5p).
    pub fn posix_spawn(mut self) -> Spawn {
        self.fork_exec = false;
        self
    }

    /// `fork`, then in the child (stdout to /dev/null if quiet) `execve`; `_exit(127)` if it
    /// fails. The child makes only async-signal-safe calls (the bench has a watchdog thread).
    fn fork_exec(&self) -> libc::pid_t {
        let quiet = self.actions.is_some();
        // SAFETY: the child only calls open, dup2, close, execve and _exit on data prepared
        // before the fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: as above; every pointer refers to NUL-terminated strings and
            // NULL-terminated arrays owned by `self`.
            unsafe {
                if quiet {
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                    if null >= 0 && null != 1 {
                        libc::dup2(null, 1);
                        libc::close(null);
                    }
                }
                libc::execve(
                    self.path.as_ptr(),
                    self.argv_ptrs.as_ptr() as *const *const libc::c_char,
                    self.env.ptrs.as_ptr() as *const *const libc::c_char,
                );
                libc::_exit(127);
            }
        }
        if pid < 0 {
            panic!("fork for `{}`: {}", self.label, io::Error::last_os_error());
        }
        pid
    }

    /// Spawns, waits, and panics unless the program exited with status 0.
    #[inline(never)]
    pub fn run(&self) {
        let status = self.run_status();
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
            panic!("`{}` failed: wait status {status:#x}", self.label);
        }
    }

    /// Spawns and waits; returns the raw wait status.
    pub fn run_status(&self) -> libc::c_int {
        let pid = if self.fork_exec {
            self.fork_exec()
        } else {
            self.spawn()
        };
        let mut status = 0;
        loop {
            // SAFETY: `status` is a valid out-pointer; `pid` is our child.
            let w = unsafe { libc::waitpid(pid, &mut status, 0) };
            if w == pid {
                return status;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                panic!("waitpid `{}`: {e}", self.label);
            }
        }
    }

    fn spawn(&self) -> libc::pid_t {
        let mut pid: libc::pid_t = 0;
        let fa = self.actions.as_deref().map_or(ptr::null(), |fa| {
            fa as *const libc::posix_spawn_file_actions_t
        });
        // SAFETY: every pointer refers to NUL-terminated strings and NULL-terminated arrays
        // owned by `self`, alive for the call.
        let r = unsafe {
            libc::posix_spawn(
                &mut pid,
                self.path.as_ptr(),
                fa,
                ptr::null(),
                self.argv_ptrs.as_ptr(),
                self.env.ptrs.as_ptr(),
            )
        };
        if r != 0 {
            panic!(
                "posix_spawn `{}`: {}",
                self.label,
                io::Error::from_raw_os_error(r)
            );
        }
        pid
    }
}

impl Drop for Spawn {
    fn drop(&mut self) {
        if let Some(fa) = self.actions.as_deref_mut() {
            // SAFETY: initialised in `new`, destroyed once.
            unsafe { libc::posix_spawn_file_actions_destroy(fa) };
        }
    }
}

/// The raw baseline's trivial program.
pub fn trivial_program() -> PathBuf {
    ["/bin/true", "/usr/bin/true"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("/bin/true or /usr/bin/true")
}

// ---------------------------------------------------------------------------------------------
// A private preloader server, always stopped
// ---------------------------------------------------------------------------------------------

/// Servers started and not yet stopped: (program, directory). [`watchdog`] stops them before it
/// aborts the process.
static LIVE: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());

/// One application's preloader server in a private directory. The first command run with
/// [`PreloadServer::env`] starts it; dropping the guard stops it (`--preloader stop`, and SIGKILL
/// for any pid left in the directory) and removes the directory.
pub struct PreloadServer {
    bin: PathBuf,
    dir: PathBuf,
}

impl PreloadServer {
    pub fn new(bin: &Path, tag: &str) -> PreloadServer {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let dir = PathBuf::from(format!(
            "/tmp/fdserver-bench-{}-{tag}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) only sets a process attribute.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((bin.to_path_buf(), dir.clone()));
        PreloadServer {
            bin: bin.to_path_buf(),
            dir,
        }
    }

    /// The environment of a client of this server (`FDSERVER_PRELOAD_DIR` set; `in_process`:
    /// `FDSERVER_PRELOAD=0` too).
    pub fn env(&self, in_process: bool) -> Env {
        let mut extra: Vec<(&str, &OsStr)> = vec![("FDSERVER_PRELOAD_DIR", self.dir.as_os_str())];
        if in_process {
            extra.push(("FDSERVER_PRELOAD", OsStr::new("0")));
        }
        Env::new(&extra)
    }

    /// `<bin> --preloader stop` (untimed part of the cold runs).
    pub fn stop(&self) {
        if let Err(e) = stop_server(&self.bin, &self.dir) {
            panic!(
                "stopping the preloader server in {}: {e}",
                self.dir.display()
            );
        }
    }

    /// The server's log (its "template ... preloaded" lines tell how many preloads ran).
    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    text += &std::fs::read_to_string(e.path()).unwrap_or_default();
                }
            }
        }
        text
    }

    /// The running server's pid, from its pidfile.
    pub fn server_pid(&self) -> Option<i32> {
        pids_in(&self.dir).into_iter().next()
    }
}

impl Drop for PreloadServer {
    fn drop(&mut self) {
        if let Err(e) = stop_server(&self.bin, &self.dir) {
            eprintln!(
                "  bench: stopping the server in {}: {e}",
                self.dir.display()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, d)| d != &self.dir);
    }
}

/// The pids in the directory's pidfiles.
fn pids_in(dir: &Path) -> Vec<i32> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .filter(|&p: &i32| p > 0)
        .collect()
}

/// `<bin> --preloader stop` with the server's directory, bounded to 15 s; if that fails, SIGKILL
/// to the pid in the pidfile (its templates then see end of stream and exit).
fn stop_server(bin: &Path, dir: &Path) -> Result<(), String> {
    let result = (|| {
        let mut child = Command::new(bin)
            .args(["--preloader", "stop"])
            .env("FDSERVER_PRELOAD_DIR", dir)
            .env_remove("FDSERVER_PRELOAD")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawn {} --preloader stop: {e}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match child.try_wait() {
                Ok(Some(s)) if s.success() => return Ok(()),
                Ok(Some(s)) => return Err(format!("--preloader stop: {s}")),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("--preloader stop did not finish within 15 s".into());
                }
                Err(e) => return Err(format!("waiting for --preloader stop: {e}")),
            }
        }
    })();
    if result.is_err() {
        for pid in pids_in(dir) {
            // SAFETY: kill(2) with a pid read from the server's own pidfile in our private
            // directory.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    reap_orphans();
    result
}

/// Reaps the exited processes reparented to this process (a subreaper): the stopped servers.
/// Only called between measurements, when the bench has no other child it waits for.
fn reap_orphans() {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer.
        if unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) } <= 0 {
            return;
        }
    }
}

/// Stops every live server (called before aborting).
fn stop_all() {
    let live: Vec<(PathBuf, PathBuf)> = LIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (bin, dir) in live {
        let _ = stop_server(&bin, &dir);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Like `fdserver_tests::watchdog`, but stops the preloader servers (daemons in their own
/// session, which would otherwise outlive the aborted bench) before aborting.
pub struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn watchdog(name: &str, limit: Duration) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    let name = name.to_owned();
    let thread = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!("WATCHDOG: `{name}` still running after {limit:?}: stopping the preloader servers, aborting");
            stop_all();
            std::process::abort();
        }
    });
    Watchdog {
        done: Some(tx),
        thread: Some(thread),
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.done.take()); // disconnects: the thread ends without aborting
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The time of one run of `s`.
pub fn time_one(s: &Spawn) -> Duration {
    let t = Instant::now();
    s.run();
    t.elapsed()
}

/// Checks a command's output once (outside the timed loops): runs it with `Command` and returns
/// its stdout, or panics with its stderr.
pub fn output_of(bin: &Path, args: &[&str], server: &PreloadServer, in_process: bool) -> String {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("FDSERVER_PRELOAD")
        .env("FDSERVER_PRELOAD_DIR", &server.dir)
        .stdin(Stdio::null());
    if in_process {
        cmd.env("FDSERVER_PRELOAD", "0");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    if !out.status.success() {
        panic!(
            "`{} {}` failed ({}): {}",
            bin.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Analysis only (`--trace preload-protocol`): one warm command done by this process itself,
/// speaking the client's side of the preloader protocol (`fdserver/src/preload/client.rs`) over
/// the server's socket: no `execve`, no dynamic loading, no Rust runtime start. Returns the
/// cumulative time at: connected, greeting read, `["run", key]` and the request sent (argv and
/// env without process attributes, as a client in another language may send it, with stdin,
/// stdout, stderr and the working directory), `["pid", n, "fd"]` and the worker's pidfd read,
/// `["exit", 0]` read.
pub fn protocol_run(server: &PreloadServer, env: &[u8]) -> [Duration; 5] {
    use fdserver::{Channel, MessageBuf};
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::net::UnixStream;
    let sock = std::fs::read_dir(&server.dir)
        .expect("server dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sock"))
        .expect("the server's socket");
    let devnull = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("/dev/null");
    let cwd = std::fs::File::open("/tmp").expect("/tmp");
    let t = Instant::now();
    let mut ch = Channel::from(UnixStream::connect(&sock).expect("connect"));
    let connected = t.elapsed();
    let mut buf = MessageBuf::new();
    assert!(ch.read_into(&mut buf).expect("greeting"), "greeting");
    assert_eq!(buf.message().name(), b"fdserver-preload");
    let greeted = t.elapsed();
    ch.write_array([&b"run"[..], b"dev"]).expect("run");
    // The request the template reads (`template::Parts`): a `u32` length (its first byte
    // carrying the descriptors), then `u32` + argv (the program name first) and `u32` + env.
    let argv = b"preload-app\x00exit\x000\x00";
    let mut request = Vec::with_capacity(12 + argv.len() + env.len());
    request.extend_from_slice(&((8 + argv.len() + env.len()) as u32).to_le_bytes());
    request.extend_from_slice(&(argv.len() as u32).to_le_bytes());
    request.extend_from_slice(argv);
    request.extend_from_slice(&(env.len() as u32).to_le_bytes());
    request.extend_from_slice(env);
    let fd = devnull.as_raw_fd();
    fdserver_tests::send_with_fds(ch.as_fd(), &request, &[fd, fd, fd, cwd.as_raw_fd()]);
    let sent = t.elapsed();
    assert!(ch.read_into(&mut buf).expect("pid"), "pid");
    assert_eq!(buf.message().name(), b"pid");
    if buf.message().get(2) == Some(&b"fd"[..]) {
        // The worker's pidfd follows its pid (the client signals the worker only through it).
        drop(ch.recv_fd().expect("the worker's pidfd"));
    }
    let pid = t.elapsed();
    assert!(ch.read_into(&mut buf).expect("exit"), "exit");
    assert_eq!(buf.message().get(1), Some(&b"0"[..]), "{:?}", buf.message());
    [connected, greeted, sent, pid, t.elapsed()]
}
