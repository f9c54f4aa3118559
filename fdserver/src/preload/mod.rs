//! A Spring-style preloader: load expensive state once, then run each command in a worker
//! forked from that warm process, attached to the caller's own terminal.
//!
//! Four processes take part:
//!
//! * the **client**: your program as the user runs it. It connects to the server (starting one
//!   if none runs), passes its stdin, stdout, stderr and working directory as descriptors with
//!   its arguments, environment and process attributes, relays its signals to the worker,
//!   mirrors the worker's stops and exits with the worker's status;
//! * the **server**: one per application and user, listening on a UNIX socket in a private
//!   directory; it accepts clients and hands each request to a template;
//! * a **template** per environment key ([`Application::template_key`]): this executable run
//!   again by the server, which runs [`Application::preload`] once on its main thread and then
//!   serves the server;
//! * a **worker** per command, forked from the template's main thread, in its own process
//!   group, with the client's descriptors as 0, 1 and 2, running [`Application::run`].
//!
//! ```no_run
//! use std::ffi::OsString;
//! use fdserver::preload::{Application, Preloader};
//!
//! #[derive(Clone)]
//! struct App { index: Vec<String> }
//!
//! impl Application for App {
//!     fn name(&self) -> &str { "myapp" }
//!     fn preload(&mut self, _key: &str) -> Result<(), fdserver::BoxError> {
//!         self.index = (0..1_000_000).map(|i| i.to_string()).collect(); // expensive, once
//!         Ok(())
//!     }
//!     fn run(&mut self, args: Vec<OsString>) -> i32 {
//!         println!("{} entries, args {:?}", self.index.len(), args);
//!         0
//!     }
//! }
//!
//! fn main() {
//!     Preloader::new(App { index: Vec::new() }).main()
//! }
//! ```
//!
//! `myapp a b` runs warm; `FDSERVER_PRELOAD=0 myapp a b` runs in-process without the preloader;
//! `myapp --preloader status`, `stop` and `serve` manage the server.
//!
//! ## A warm command is the program, run fresh
//!
//! The worker starts as a fresh run of the program started by the client would (the one
//! `FDSERVER_PRELOAD=0` gives), apart from being forked from the preloaded template:
//!
//! * **Arguments** (with the program name) as `run` gets them, as `std::env::args` returns them
//!   and as `/proc/<pid>/cmdline` (so `ps`) shows them; the **environment**, also in
//!   `/proc/<pid>/environ`; the **process name** (`comm`).
//! * **Working directory**: passed as a descriptor, so a directory since deleted, a path that
//!   is not UTF-8 or longer than `PATH_MAX` work.
//! * **Descriptors**: 0, 1, 2 are the client's own (a terminal stays a terminal), and so are
//!   the others the caller passed on through `exec` (`7>file`, a jobserver's pipe), under the
//!   same numbers (up to 64 of them). A number the template itself uses (a file the preload
//!   opened and kept) cannot be given; `FDSERVER_PRELOAD_VERBOSE=1` says so.
//! * **Thread and stack**: `run` runs on the main thread (named `main` in panics) with the main
//!   thread's stack, growing up to the client's `RLIMIT_STACK`.
//! * **Signals**: the dispositions of a fresh `main` of the program (std's handlers, SIGPIPE
//!   ignored as std does), plus whatever the caller ignored (an ignored signal stays ignored
//!   across `exec`: `nohup`, `trap '' INT`); the caller's **signal mask**.
//! * **Process attributes** an `exec`'d program inherits: umask, every resource limit, nice
//!   value, scheduling policy and priority, CPU affinity, I/O priority, timer slack,
//!   personality, `no_new_privs`. The worker changes only those that differ from its
//!   template's; one it cannot change (raising a hard limit or lowering the nice value needs
//!   privileges) stays the template's, and `FDSERVER_PRELOAD_VERBOSE=1` says so.
//! * **Signals from outside**: the client relays every signal it can catch (all but KILL,
//!   STOP, the faults SEGV, BUS, FPE, ILL, TRAP, SYS, and PIPE, CHLD) to the worker's process
//!   group. Before the worker exists (its template still preloading), the client does what the
//!   program would have done with the signal in the middle of its own preload: dies by a
//!   terminating one at once (the preload goes on, for the next command), stops on a stopping
//!   one (the worker, once forked, waits until the job is continued), and keeps a blocked or a
//!   default-ignored one (WINCH) for the worker.
//! * **Job control**: the worker is in its own process group in the template's session, so
//!   SIGTSTP, SIGTTIN and SIGTTOU stop it as they stop a shell's job. When it stops (Ctrl-Z
//!   relayed, or it stopped itself) the template tells the client, which stops by the same
//!   signal: the shell sees the job stopped, and `fg` / `bg` continue the client, which
//!   continues the worker.
//! * **Exit**: the client exits with the worker's code, or dies by the signal that killed it.
//!
//! What cannot be the same, and why:
//!
//! * **The terminal's job control for reads and writes.** A background job that reads its
//!   terminal gets SIGTTIN (and, with `stty tostop`, one that writes gets SIGTTOU) only if the
//!   terminal is its *controlling* terminal, which requires being in the terminal's session.
//!   Linux lets a process into a session only by being forked there (`setpgid` cannot cross
//!   sessions), and the worker is forked by the template, which serves every terminal. So a
//!   warm background command that reads the terminal is not stopped, `/dev/tty` cannot be
//!   opened in a worker, and `tcgetpgrp` on the terminal fails there. Run such commands with
//!   `FDSERVER_PRELOAD=0`. (Spring has the same limit.)
//! * **SIGSTOP sent to the client** stops the client only: it cannot be caught, so it cannot
//!   be relayed. Ctrl-Z (SIGTSTP) stops both.
//! * **Credentials, namespaces, cgroup, Landlock domain** are the server's (the server serves
//!   only its own uid). A client confined by a seccomp filter its template lacks runs the
//!   command in-process instead of escaping the filter.
//! * **What a fork shares**: the address-space layout, std's `HashMap` random keys and other
//!   seeds drawn before the fork are the template's (reseed in `run` what must differ per
//!   command), and the stack gap below the main stack was sized when the template started
//!   (at least 128 MiB: a larger `RLIMIT_STACK` than the template's may not get all of it,
//!   and a stack overflow is then reported as a plain SIGSEGV).
//! * **Exit**: the worker ends with `_exit`: `atexit` handlers registered during the preload
//!   belong to the template and do not run.
//! * In `preload`, `std::env::args` is the template's title, not a command's arguments.
//!
//! ## Tooling
//!
//! * `--preloader status`: the application, the socket and log paths, the server (pid,
//!   uptime, version) and each template (pid, uptime, resident memory, running commands, or
//!   that it is preloading). [`Preloader::status`] returns the same as a [`Status`].
//! * Process titles in `ps`: `<app>: preloader server | started 3 min ago`, `<app>: template
//!   <key>`; a worker shows the command's own arguments.
//! * [`Application::watched_files`]: when one changes (inotify, on its directory, so editors
//!   that replace the file are seen), the server retires the template (its running commands
//!   finish) and preloads a new one at once, in the background: the first command after an
//!   edit is warm. Each command also checks the files (size, times, inode), so a change that
//!   inotify cannot see still takes effect.
//! * Preloads have a deadline ([`Options::preload_timeout`]); a template that misses it is
//!   killed and its waiting commands are told so.
//! * `FDSERVER_PRELOAD_VERBOSE=1`: each command says on stderr, before it runs, whether it runs
//!   preloaded and in which template (pid, age), or in-process.
//! * `--preloader serve`: the server in the foreground of this terminal, its log (and its
//!   templates' output) on the terminal, until Ctrl-C or `--preloader stop`.
//! * Errors name the process that failed (the server, or the template for a key, with its pid
//!   and the signal that killed it), say where its output went, and what to do.
//! * [`Application::run_without_preload`]: commands such as `--help` run in the client without
//!   any server.
//!
//! ## What fdserver does differently from Spring
//!
//! * Every wait has a deadline: booting the server, the version handshake, a preload. A wedged
//!   server gives a clear error, not a hang.
//! * A worker killed by a signal makes the client die by the same signal (so a shell sees
//!   `128 + n` and the signal); exit codes are passed through unchanged.
//! * Descriptors: every process closes its copy of the client's descriptors as soon as it has
//!   handed them on, so `cmd | head -1` terminates; a worker never holds another client's
//!   socket; the server keeps nothing its first client inherited.
//! * The server checks the peer's uid (`SO_PEERCRED`) and lives in a `0700` directory.
//! * The server's accept loop never waits for a template: each connection is served by its own
//!   thread (idle ones are reused), so clients queue behind a preloading template instead of
//!   timing out. The template reads a command's arguments, environment, attributes and
//!   descriptors from the client itself (one `sendmsg` right after its first message); a
//!   client that stalls halfway holds up its template's next commands for at most 3 s in all,
//!   then gets a clear error.
//! * A client that dies mid-command takes its worker with it (the worker's process group is
//!   killed), so no orphaned worker keeps running.
//! * When the server dies, its templates see end of stream and exit after their running workers.
//!
//! ## Rules for `preload` and `run`
//!
//! * `preload` runs in the template, which forks a worker per command: **do not leave threads
//!   running** when it returns (a thread pool, an async runtime). Only the forking thread exists
//!   in a worker, and locks held by the others stay locked there (see the crate docs on fork
//!   safety). Build with threads if you like, then join them.
//! * Its output goes to the server's log, never to a client.
//! * `run` owns the worker process: it may change the environment, exit, or exec. Install
//!   signal handlers there, not before `Preloader::main` (a worker gets those of a fresh
//!   `main`, but the threads or state such handlers rely on are the template's).
//! * After `preload`, the template's anonymous memory is advised to use transparent huge pages
//!   ([`Options::huge_pages`]), which makes forking from a large preloaded heap much cheaper.
//!
//! ## Files
//!
//! In `$FDSERVER_PRELOAD_DIR`, else `$XDG_RUNTIME_DIR/fdserver-preload`, else
//! `/tmp/fdserver-preload-<uid>` (created `0700`; refused if another user owns it or others can
//! reach it): `<name>-<hash>.sock`, `.pid` (locked by the server while it runs), `.lock` (held by a
//! client while it starts a server) and `.log` (the server's and templates' stdout and stderr).

mod attrs;
mod client;
mod daemon;
mod os;
mod template;

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::server::BoxError;

pub use client::{Status, TemplateState, TemplateStatus};

/// The version the server sends first. A client that sees another version stops that server and
/// starts its own, once.
pub const PROTOCOL_VERSION: &str = "fdserver-preload/2";

/// Set to `0` (or `off`, `false`, `no`) to run commands without the preloader.
pub const ENV_DISABLE: &str = "FDSERVER_PRELOAD";
/// Overrides the directory of the socket, pidfile and log.
pub const ENV_DIR: &str = "FDSERVER_PRELOAD_DIR";
/// Set (to anything but `0` or empty) to have each command say on stderr, before it runs,
/// whether it runs preloaded and in which template (`fdserver preloader: running preloaded:
/// template "dev" (pid 1234, preloaded 12 s ago), worker pid 5678`), or in-process.
pub const ENV_VERBOSE: &str = "FDSERVER_PRELOAD_VERBOSE";
/// Set by a client on the server process it starts, and by the server on its templates. Not
/// for users.
const ENV_ROLE: &str = "__FDSERVER_PRELOAD_ROLE";

/// Your program, as the preloader sees it.
///
/// The value is cloned into each template; `preload` runs there once, and every `run` happens in
/// a worker forked from that template, so it sees the preloaded state.
pub trait Application: Clone + Send + Sync + 'static {
    /// The application's identity: it names the server's socket (with a hash of the executable's
    /// path, so two builds never share a server).
    fn name(&self) -> &str;

    /// Which template serves a command, from its environment (Spring keys by `RAILS_ENV`).
    /// Computed in the client. Default: one template, `"default"`.
    fn template_key(&self, env: &[(OsString, OsString)]) -> String {
        let _ = env;
        "default".to_owned()
    }

    /// The expensive part: runs once per template, before any command. Its output goes to the
    /// server's log. An error is shown to the client that triggered it, and the next command
    /// tries again.
    fn preload(&mut self, key: &str) -> Result<(), BoxError>;

    /// Runs one command in a worker: the arguments exclude the program name; the environment,
    /// the working directory and descriptors 0, 1, 2 are the client's. Returns the exit code.
    fn run(&mut self, args: Vec<OsString>) -> i32;

    /// Files whose change restarts the template: as soon as one changes (inotify), the server
    /// retires the template (its running workers finish) and preloads a new one in the
    /// background, so that the next command finds it warm. Checked again at each command.
    fn watched_files(&self, key: &str) -> Vec<PathBuf> {
        let _ = key;
        Vec::new()
    }

    /// Commands that need no preloaded state (`--help`, `--version`, no arguments): return
    /// `Some(exit code)` to run such a command right here in the client process, before any
    /// server is contacted or started, and without preloading; `None` (the default) runs it
    /// through the preloader. Called with the arguments `run` would get, in both modes (also
    /// with `FDSERVER_PRELOAD=0`), so the command behaves the same either way.
    ///
    /// ```
    /// # use std::ffi::OsString;
    /// # #[derive(Clone)] struct App;
    /// # impl fdserver::preload::Application for App {
    /// #     fn name(&self) -> &str { "app" }
    /// #     fn preload(&mut self, _: &str) -> Result<(), fdserver::BoxError> { Ok(()) }
    /// #     fn run(&mut self, _: Vec<OsString>) -> i32 { 0 }
    /// fn run_without_preload(&mut self, args: &[OsString]) -> Option<i32> {
    ///     match args.first().and_then(|a| a.to_str()) {
    ///         None | Some("--help") => {
    ///             println!("usage: app search WORD...");
    ///             Some(0)
    ///         }
    ///         Some("--version") => {
    ///             println!("app 1.0");
    ///             Some(0)
    ///         }
    ///         _ => None,
    ///     }
    /// }
    /// # }
    /// # let mut app = App;
    /// # use fdserver::preload::Application;
    /// # assert_eq!(app.run_without_preload(&["--version".into()]), Some(0));
    /// # assert_eq!(app.run_without_preload(&["search".into()]), None);
    /// ```
    fn run_without_preload(&mut self, args: &[OsString]) -> Option<i32> {
        let _ = args;
        None
    }
}

/// Timeouts and locations. The defaults suit interactive commands.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory for the socket, pidfile and log (see the module docs for the default).
    pub dir: Option<PathBuf>,
    /// How long a client waits for a server it started to be listening (default 20 s).
    pub boot_timeout: Duration,
    /// How long a client waits for the server's version line after connecting (default 10 s).
    pub handshake_timeout: Duration,
    /// How long `stop` waits after SIGTERM before SIGKILL (default 2 s).
    pub stop_grace: Duration,
    /// How long a template may take to preload (default 120 s). One that takes longer is killed,
    /// and the commands waiting for it get an error saying so; the next command tries again.
    pub preload_timeout: Duration,
    /// After preloading, ask for transparent huge pages on the template's anonymous memory and
    /// collapse it (default `true`). Forking a worker from a large preloaded heap then copies
    /// 512 times fewer page-table entries; the cost is memory rounded up to 2 MiB pages.
    pub huge_pages: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dir: None,
            boot_timeout: Duration::from_secs(20),
            handshake_timeout: Duration::from_secs(10),
            stop_grace: Duration::from_secs(2),
            preload_timeout: Duration::from_secs(120),
            huge_pages: true,
        }
    }
}

/// The preloader for one application: the entry point of the program, and its control commands.
#[derive(Debug, Clone)]
pub struct Preloader<A> {
    app: A,
    options: Options,
}

impl<A: Application> Preloader<A> {
    /// A preloader with default [`Options`].
    pub fn new(app: A) -> Self {
        Preloader {
            app,
            options: Options::default(),
        }
    }

    /// Replaces the options.
    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// The whole program: call it from `main`. Never returns.
    ///
    /// * Started by a client as the server (or by the server as a template): serves until
    ///   stopped.
    /// * [`Application::run_without_preload`] says so: runs the command here, without preloading.
    /// * With `FDSERVER_PRELOAD=0`: preloads and runs the command in this process.
    /// * `--preloader status` / `stop` / `serve`: prints the server's status / stops it / runs
    ///   a server in the foreground, logging to the terminal.
    /// * Otherwise: runs the command through the preloader (starting the server if needed) and
    ///   exits with the worker's exit code, or dies by the signal that killed it.
    pub fn main(self) -> ! {
        if let Some(role) = std::env::var_os(ENV_ROLE) {
            // Single-threaded at this point of a fresh process, so changing the environment is
            // sound.
            std::env::remove_var(ENV_ROLE);
            if role == "template" {
                template::main(&self);
            }
            let code = match daemon::launch(&self, &role) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("fdserver preloader: server failed: {e}");
                    1
                }
            };
            std::process::exit(code);
        }
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        if args.first().is_some_and(|a| a == "--preloader") {
            std::process::exit(self.control(args.get(1).and_then(|a| a.to_str())));
        }
        let mut app = self.app.clone();
        if let Some(code) = app.run_without_preload(&args) {
            exit_flushed(code);
        }
        if preloading_disabled() {
            self.run_in_process(args);
        }
        match client::run(&self, args) {
            Ok(client::Ran::Outcome(outcome)) => outcome.exit(),
            Ok(client::Ran::InProcess(args)) => self.run_in_process(args),
            Err(e) => {
                eprintln!("fdserver preloader: {e}");
                std::process::exit(1);
            }
        }
    }

    /// `--preloader <what>`: the exit code.
    fn control(&self, what: Option<&str>) -> i32 {
        let name = self.app.name();
        match what {
            Some("status") => match self.status() {
                Ok(Some(s)) => {
                    print!("{s}");
                    0
                }
                Ok(None) => {
                    match self.paths() {
                        Ok(p) => println!(
                            "{name}: no preloader server is running (socket {}, log {})",
                            p.socket.display(),
                            p.log.display()
                        ),
                        Err(_) => println!("{name}: no preloader server is running"),
                    }
                    1
                }
                Err(e) => {
                    eprintln!("fdserver preloader: status: {e}");
                    1
                }
            },
            Some("stop") => match self.stop() {
                Ok(true) => {
                    println!("preloader server stopped");
                    0
                }
                Ok(false) => {
                    println!("no preloader server was running");
                    0
                }
                Err(e) => {
                    eprintln!("fdserver preloader: stop: {e}");
                    1
                }
            },
            Some("serve") => match daemon::foreground(self) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("fdserver preloader: serve: {e}");
                    1
                }
            },
            _ => {
                eprintln!("usage: {name} --preloader status|stop|serve");
                2
            }
        }
    }

    /// Preloads and runs the command in this process (`FDSERVER_PRELOAD=0`, or a client that the
    /// preloader cannot serve faithfully).
    fn run_in_process(&self, args: Vec<OsString>) -> ! {
        let mut app = self.app.clone();
        let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let key = app.template_key(&env);
        let started = std::time::Instant::now();
        if let Err(e) = app.preload(&key) {
            eprintln!("fdserver preloader: the preload of {key:?} failed (in-process): {e}");
            std::process::exit(1);
        }
        if verbose() {
            eprintln!(
                "fdserver preloader: running in-process, not preloaded: {key:?} preloaded in {} ms",
                started.elapsed().as_millis()
            );
        }
        exit_flushed(app.run(args))
    }

    /// The running server's status, or `None` if none runs.
    pub fn status(&self) -> io::Result<Option<Status>> {
        client::status(self)
    }

    /// Stops the server (SIGTERM, then SIGKILL after the grace period), and its templates.
    /// `Ok(false)` if none was running. Stale files are removed either way.
    pub fn stop(&self) -> io::Result<bool> {
        client::stop(self)
    }

    /// Where this application's files live.
    pub fn paths(&self) -> io::Result<Paths> {
        Paths::new(self.app.name(), self.options.dir.as_deref())
    }
}

/// Flushes stdout and exits with `code`.
fn exit_flushed(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

/// Whether `FDSERVER_PRELOAD_VERBOSE` asks for the line saying how a command runs.
fn verbose() -> bool {
    std::env::var_os(ENV_VERBOSE).is_some_and(|v| !v.is_empty() && v != "0")
}

fn preloading_disabled() -> bool {
    matches!(
        std::env::var(ENV_DISABLE).as_deref(),
        Ok("0") | Ok("off") | Ok("false") | Ok("no")
    )
}

/// The files of one application's server.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The private directory.
    pub dir: PathBuf,
    /// The listening socket.
    pub socket: PathBuf,
    /// The pidfile, locked by the running server.
    pub pidfile: PathBuf,
    /// Held by a client while it starts a server.
    pub lock: PathBuf,
    /// The server's log (its stdout and stderr, and its templates').
    pub log: PathBuf,
}

impl Paths {
    fn new(name: &str, dir: Option<&Path>) -> io::Result<Paths> {
        let dir = match dir {
            Some(d) => d.to_owned(),
            None => default_dir(),
        };
        ensure_private_dir(&dir)?;
        let exe = std::env::current_exe().unwrap_or_default();
        let id = format!(
            "{}-{:016x}",
            sanitize(name),
            fnv1a(exe.as_os_str().as_encoded_bytes())
        );
        Ok(Paths {
            socket: dir.join(format!("{id}.sock")),
            pidfile: dir.join(format!("{id}.pid")),
            lock: dir.join(format!("{id}.lock")),
            log: dir.join(format!("{id}.log")),
            dir,
        })
    }
}

fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(ENV_DIR) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        return PathBuf::from(d).join("fdserver-preload");
    }
    std::env::temp_dir().join(format!("fdserver-preload-{}", crate::sys::geteuid()))
}

/// Creates `dir` with mode 0700 if needed, and refuses one that another user owns or that others
/// can enter.
fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    // Usually it exists: one `statx` then (every client command passes here).
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(dir)
            {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            fs::metadata(dir)?
        }
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a directory", dir.display()),
        ));
    }
    if meta.uid() != crate::sys::geteuid() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is owned by uid {}, not us", dir.display(), meta.uid()),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is accessible to other users (mode {:o}); it must be 0700",
                dir.display(),
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    Ok(())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// NUL-terminates each item into one buffer (argv and environment travel as scalars, so their
/// size is not limited by the 64 KiB array message).
fn join_nul<'a>(items: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for i in items {
        out.extend_from_slice(i);
        out.push(0);
    }
    out
}

fn split_nul(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = buf.strip_suffix(&[0]).unwrap_or(buf);
    let empty = buf.is_empty();
    body.split(|&b| b == 0).filter(move |_| !empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_lists_round_trip() {
        let items: Vec<&[u8]> = vec![b"a", b"", b"b c"];
        let joined = join_nul(items.iter().copied());
        assert_eq!(split_nul(&joined).collect::<Vec<_>>(), items);
        assert_eq!(split_nul(b"").count(), 0);
        assert_eq!(split_nul(b"\0").collect::<Vec<_>>(), vec![b""]);
    }

    #[test]
    fn private_dir_is_enforced() {
        let base = std::env::temp_dir().join(format!("fdserver-pl-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        ensure_private_dir(&base).unwrap();
        assert_eq!(
            fs::metadata(&base).unwrap().permissions().mode() & 0o777,
            0o700
        );
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(ensure_private_dir(&base).is_err());
        fs::remove_dir_all(&base).unwrap();
    }
}
