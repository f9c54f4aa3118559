//! A Spring-style preloader: load expensive state once, then run each command in a worker
//! forked from that warm process, attached to the caller's own terminal.
//!
//! Four processes take part:
//!
//! * the **client**: your program as the user runs it. It connects to the server (starting one
//!   if none runs), checks that the server runs as the same user, passes its stdin, stdout,
//!   stderr and working directory as descriptors with its arguments, environment and process
//!   attributes, relays its signals to the worker, mirrors the worker's stops and exits with the
//!   worker's status;
//! * the **server**: one per application (and path of its executable) and user, listening on
//!   a UNIX socket in a private directory; it accepts clients and hands each request to a
//!   template;
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
//! `myapp --preloader status`, `stop`, `restart` and `serve` manage the server (see
//! [Tooling](#tooling)).
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
//!   same numbers (up to 64 of them; with more, or with one under a number the template itself
//!   uses, a file the preload opened and kept, the command runs in-process).
//! * **Thread and stack**: `run` runs on the main thread (named `main` in panics) with the main
//!   thread's stack, growing up to the client's `RLIMIT_STACK`.
//! * **Signals**: the dispositions of a fresh `main` of the program (std's handlers, SIGPIPE
//!   ignored as std does), plus whatever the caller ignored (an ignored signal stays ignored
//!   across `exec`: `nohup`, `trap '' INT`); the caller's **signal mask**.
//! * **Process attributes** an `exec`'d program inherits: umask, every resource limit, nice
//!   value, scheduling policy and priority, CPU affinity, I/O priority, timer slack,
//!   personality. The worker changes only those that differ from its template's. One it
//!   cannot take on (raising a hard limit or lowering the nice value needs privileges) is never
//!   silently left as the template's: see [When a command runs
//!   in-process](#when-a-command-runs-in-process).
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
//! * **The preload's environment**: a template preloads with the environment of the command
//!   that started it, a command of its key (as that command run without the preloader would
//!   have), not with the server's.
//!
//! ### When a command runs in-process
//!
//! A worker is forked from its template, so it lives in the template's context: what a
//! process gets when it is *started*, and cannot take on later. When the client's context
//! differs from the template's there, a worker would not be what a fresh run is, and the
//! command runs in the client instead, exactly as with `FDSERVER_PRELOAD=0` (it preloads
//! there); `FDSERVER_PRELOAD_VERBOSE=1` says why. The cases:
//!
//! * **A sandbox**: a seccomp filter, `no_new_privs` (which Landlock and an unprivileged
//!   seccomp filter need), fewer capabilities (in any of the five sets: `setpriv
//!   --bounding-set`), other group ids or supplementary groups (`newgrp`, `sg`, a group change
//!   since the server started), another namespace (cgroup, ipc, mnt, net, pid, time, user,
//!   uts: `unshare`, bwrap, firejail, a container), a cgroup that limits it where the
//!   template's does not (`memory`, `pids`, `cpu`, `io`, `cpuset`, `devices` limits between
//!   its cgroup and the common ancestor; another terminal's unlimited scope is fine), another
//!   security label (`/proc/<pid>/attr/current`: an AppArmor profile, an SELinux context), or
//!   a confinement that keeps it from inspecting the server (a Landlock domain, a security
//!   module's ptrace rule: see the proof of inspection below).
//! * **A ptrace tracer** (`strace`, `ltrace`, `gdb`, `valgrind`... : `TracerPid`): the tracer
//!   would not see the worker. No server is started under a tracer either. Tools that do not
//!   ptrace the command are **not** detected (see *What cannot be the same*).
//! * **Loader variables**: `LD_PRELOAD` or `LD_AUDIT` set (the server and templates never load
//!   them), or another value than the template's of a variable read at start (`LD_*`,
//!   `GLIBC_TUNABLES`, `MALLOC_*`).
//! * **A background job of its terminal**: started with `&` and reading its terminal (or
//!   writing it, with `stty tostop`), it must stop (SIGTTIN, SIGTTOU) as a job of the
//!   terminal's session, which a worker is not.
//! * **Descriptors**: more than 64 inherited, or one under a number the template uses.
//! * **Attributes** the worker cannot take on (a higher hard limit, a lower nice value, a
//!   scheduling policy it may not set...), when the template is not just more limited (below).
//!
//! When it is the **template that is more confined** (its server was started by a command
//! under `ulimit -H`, `nice`, `setpriv --no-new-privs`, in a limiting cgroup...) and the
//! command is nowhere more confined than the template, the command replaces the server: it
//! stops it (whose running commands finish) and starts one under its own, wider, context, then
//! runs warm there. The server also starts with what a worker can always take back: soft
//! resource limits raised to the hard ones (`RLIMIT_STACK` excepted), every allowed CPU, a
//! normal scheduling policy and I/O class.
//!
//! Besides, a command runs in-process, after one line on stderr saying why, when the
//! preloader cannot be used: an unusable directory (see [Security](#security)), or a server
//! that does not answer within [`Options::handshake_timeout`] (wedged, or at its connection
//! limit). A directory this process may not write to with no server running (a read-only
//! bind mount, a sandbox that allows writing elsewhere only, a full disk, no descriptors
//! left: the start lock, log or pidfile cannot be created) runs the command in-process too,
//! saying why under `FDSERVER_PRELOAD_VERBOSE` only, as for a sandbox.
//!
//! The sandbox is decided by the server and the template from the kernel, not taken from what
//! the client says, so any process of the user that can reach the socket, sandboxed or not and
//! whatever program it runs, gets its command run in its own confinement or not at all:
//!
//! * **Proof of inspection.** A Landlock domain shows nowhere in `/proc`. So for each
//!   connection the server writes a fresh random nonce (16 bytes from `getrandom`) into a
//!   memfd it holds, names its descriptor in the greeting, and requires it back with `run`,
//!   `preload` and `stop`. The client reads it through `/proc/<server pid>/fd/<n>`, which the
//!   kernel opens only after a `PTRACE_MODE_READ_FSCREDS` check: a process in a Landlock
//!   domain the server is not in, one a security module's ptrace rule confines (AppArmor,
//!   SELinux), one with fewer capabilities, another user or user namespace, or a pid namespace
//!   that does not show the server, cannot. Without the proof the server runs no command
//!   (`["error", "confined", why]`: the real client runs it in-process), starts no template
//!   (none preloads with a sandboxed process's environment) and does not stop. The real client
//!   finds out first and does not ask.
//! * **The template compares** `/proc/<pid>/status` (uids, capabilities, `no_new_privs`,
//!   seccomp, groups, tracer), `attr/current`, `ns/*` and `cgroup` of the process at the
//!   other end of the client's socket (`SO_PEERCRED`, pinned by its pidfd) with its own. A
//!   template that may not read the client's (it is itself in a Landlock domain, started by a
//!   command inside one) is the confined one: the proven client replaces the server.
//!
//! Limits: seccomp is compared by the number of filters (two sibling sandboxes with one filter
//! each compare equal; the server would have to have been started in one of them). On kernels
//! without `SO_PEERPIDFD` (before Linux 6.5), the pid of `SO_PEERCRED` is the process that
//! *connected*, which may have exited, and its pid been reused, while another process holds the
//! connection (its child, or one it passed the socket to): there the template also checks,
//! through the kernel's socket diagnostics (`UNIX_DIAG_PEER`, the `unix_diag` module), that the
//! process it judges holds the client's end of the connection itself (`/proc/<pid>/fd`), and
//! runs the command in-process otherwise. Where socket diagnostics are missing too, only the
//! older check remains (the connection was up when the pidfd was made, and the judged process
//! has the server's uids); Landlock and security modules are caught there anyway (the proof is
//! read by whoever holds the connection). Signals are not
//! the server's to refuse: a same-user process can end the server with `kill` unless its
//! sandbox scopes signals (Landlock ABI 6); the next command starts a new server.
//!
//! These checks cost about 25 system calls in the template (plus a netlink query and a read of
//! the client's `fd` directory before Linux 6.5), 4 in the server (the proof: `getrandom`,
//! `memfd_create`, `write`, `close`) and 6 to 9 in the client (`kcmp`, the proof's `open`,
//! `read`, `close`, up to three `ioctl`s on its terminal) per command (see BENCHMARKS.md).
//!
//! ### What cannot be the same, and why
//!
//! * **A job put in the background later** (Ctrl-Z, then `bg`) that reads its terminal is not
//!   stopped: a worker is not in the terminal's session (Linux lets a process into a session
//!   only by being forked there), and the client decides only at the start. For the same
//!   reason `/dev/tty` cannot be opened in a worker, and `tcgetpgrp` on the terminal fails
//!   there. Run such commands with `FDSERVER_PRELOAD=0`.
//! * **SIGSTOP sent to the client** stops the client only: it cannot be caught, so it cannot
//!   be relayed. Ctrl-Z (SIGTSTP) stops both.
//! * **A crash's core dump** is the worker's, the command's own (where the system puts cores).
//!   The client then dies by the same signal without dumping core itself (it would replace or
//!   bury the worker's), so a shell shows no "(core dumped)".
//! * **Resource accounting**: a worker counts in the template's cgroup, not the client's (when
//!   the client's limits nothing, else it runs in-process); its CPU time is not the client's.
//! * **The preloaded state** comes from the first command of a key: a later command of the key
//!   with other values of the variables the preload read gets the state preloaded with the
//!   first one's (`--preloader restart` preloads again).
//! * **What a fork shares**: the address-space layout, std's `HashMap` random keys and other
//!   seeds drawn before the fork are the template's (reseed in `run` what must differ per
//!   command), and the stack gap below the main stack was sized when the template started
//!   (at least 128 MiB: a larger `RLIMIT_STACK` than the template's may not get all of it,
//!   and a stack overflow is then reported as a plain SIGSEGV).
//! * **Exit**: the worker ends with `_exit`: `atexit` handlers registered during the preload
//!   belong to the template and do not run.
//! * In `preload`, `std::env::args` is the template's title, not a command's arguments.
//! * **Profilers and tracers that do not ptrace** (`perf record`, `perf stat`, `perf trace`,
//!   bpftrace or uprobes attached by pid, other eBPF tools) see the client only: the command
//!   runs in the worker, which they do not follow, and the client cannot tell they are there.
//!   Run the command with `FDSERVER_PRELOAD=0` under them.
//! * **A server started in another context** than the user's usual one (from `unshare`, `ip
//!   netns exec`, bwrap or firejail, another set of supplementary groups) serves only
//!   commands of that context: the others run in-process until it exits (idle timeout), or
//!   until `--preloader restart` from a normal shell. `FDSERVER_PRELOAD_VERBOSE=1` says so.
//!   One started inside a Landlock domain is replaced by the next normal command (above).
//!
//! ## Tooling
//!
//! * `--preloader status`: the application, the socket and log paths, the server (pid, as the
//!   kernel reports the process listening on the socket; uptime; version; idle timeout) and
//!   each template (pid, uptime, resident memory, running commands, or that it is preloading).
//!   [`Preloader::status`] returns the same as a [`Status`].
//! * `--preloader stop` stops the server and its idle templates ([`Preloader::stop`]);
//!   `--preloader restart` stops it, starts a new one and preloads the template of the current
//!   environment, so that the next command is warm ([`Preloader::restart`]). **Running
//!   commands finish**: their templates take no more commands and exit once their last command
//!   ends (to end a running command, end it: Ctrl-C, `kill`). The same holds whatever stops a
//!   server: a newer build, its socket or directory gone, the idle timeout. This is chosen so
//!   that managing the preloader never ends a user's command, which the same command run
//!   without it would not have seen; a template still preloading is ended at once. A template
//!   someone stopped (SIGSTOP) is continued, so that it sees the stop (`stop` continues a
//!   stopped server too, and a template whose server was killed is continued by the kernel:
//!   its parent-death signal is SIGCONT). A command that was waiting for the server (for a
//!   preload, say), or that was refused by a server as it stopped, starts the next one.
//!   `stop` and `restart` from a process confined where the server is not (one that cannot
//!   give the proof of inspection) are refused (exit 1): a server it started would run in its
//!   sandbox.
//! * A template that dies while idle is reaped and logged at once (`template "<key>" (pid n)
//!   died (killed by signal 9 (SIGKILL))`), and `status` shows it not running; the next
//!   command of its key starts a new one.
//! * `--preloader serve`: the server in the foreground of this terminal, its log (and its
//!   templates' output) on the terminal, until Ctrl-C or `--preloader stop`.
//! * Process titles in `ps`: `<app>: preloader server | started 3 min ago`, `<app>: template
//!   <key>`; a worker shows the command's own arguments.
//! * [`Application::watched_files`]: when one changes (inotify, on its directory, so editors
//!   that replace the file are seen), the server retires the template (its running commands
//!   finish) and preloads a new one at once, in the background: the first command after an
//!   edit is warm. Each command also checks the files (size, times, inode), so a change that
//!   inotify cannot see still takes effect.
//! * Preloads have a deadline ([`Options::preload_timeout`]); a template that misses it is
//!   killed and its waiting commands are told so.
//! * The server exits by itself after [`Options::idle_timeout`] without commands (see
//!   [State recovery](#state-recovery)).
//! * `FDSERVER_PRELOAD_VERBOSE=1`: each command says on stderr, before it runs, whether it runs
//!   preloaded and in which template (pid, age), or in-process and why; and when it started or
//!   replaced the server.
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
//!   socket; the server keeps nothing its first client inherited (Linux 5.11 and later; see
//!   "Platforms" in the crate docs).
//! * Both ends check each other's uid (`SO_PEERCRED`), and everything lives in a `0700`
//!   directory that is never reached through a path resolved twice (see
//!   [Security](#security)).
//! * The server's accept loop never waits for a template: each connection is served by its own
//!   thread (idle ones are reused), so clients queue behind a preloading template instead of
//!   timing out. The template reads a command's arguments, environment, attributes and
//!   descriptors from the client itself (one `sendmsg` right after its first message); each
//!   client that stalls halfway holds up its template's next commands for at most 3 s (several
//!   such clients, one after the other), then gets a clear error.
//! * A client that dies mid-command takes its worker with it (the template kills the worker's
//!   process group), so no orphaned worker keeps running; a client whose template dies ends the
//!   worker itself, through the worker's pidfd.
//! * When the server dies, its templates see end of stream and exit after their running workers.
//!
//! ## Rules for `preload` and `run`
//!
//! * `preload` runs in the template, which forks a worker per command: **do not leave threads
//!   running** when it returns (a thread pool, an async runtime). Only the forking thread exists
//!   in a worker, and locks held by the others stay locked there (see the crate docs on fork
//!   safety). Build with threads if you like, then join them.
//! * Its output goes to the server's log, never to a client.
//! * It sees the environment of the command that started its template (a command of its
//!   key); that environment is the template's for as long as it lives. A command confined
//!   anywhere more than the server (a sandbox, see [When a command runs
//!   in-process](#when-a-command-runs-in-process)) starts no template: it runs in-process, so
//!   that a sandboxed process cannot choose what an unconfined template loads and runs.
//! * `run` owns the worker process: it may change the environment, exit, or exec. Install
//!   signal handlers there, not before `Preloader::main` (a worker gets those of a fresh
//!   `main`, but the threads or state such handlers rely on are the template's).
//! * After `preload`, the template's anonymous memory is advised to use transparent huge pages
//!   ([`Options::huge_pages`]), which makes forking from a large preloaded heap much cheaper.
//!
//! ## Files
//!
//! The directory is `$FDSERVER_PRELOAD_DIR` if set (or [`Options::dir`]), else
//! `$XDG_RUNTIME_DIR/fdserver-preload`, else `fdserver-preload-<uid>` in the temporary directory
//! (`$TMPDIR`, else `/tmp`). A missing directory is created `0700` (with its missing parents).
//! In it: `<name>-<hash of the executable's path>.sock`, `.pid` (locked by the server while it
//! runs), `.lock` (held by a client while it starts a server), `.log` (the server's and its
//! templates' stdout and stderr; a server run by `--preloader serve` writes to its terminal
//! instead) and `.log.1` (the log's previous part).
//!
//! The log is bounded: when it exceeds 1 MiB, its last 1 MiB moves to `.log.1` and it starts
//! again empty. The server checks this whenever it writes a line to it, and a template's output
//! while it preloads goes through a pipe that the server copies into the log (and checks), so
//! the bound holds during a preload too, however much it prints. A preloaded template writes
//! to the log itself (it rarely writes at all).
//!
//! The directory's path must be absolute: a relative one would be another directory (and
//! another server) in each working directory; the command runs in-process, saying so.
//!
//! ## Security
//!
//! * **The directory** is opened once, without following a symbolic link
//!   (`O_DIRECTORY | O_NOFOLLOW`), and checked on the open descriptor: it must be a directory,
//!   owned by the user, with no permission for group or others (`0700`). Everything in it is
//!   then reached through that descriptor (`openat`, `fstatat`, `unlinkat`, and the socket as
//!   `/proc/self/fd/N/<name>`, which also frees the directory's path from the 108-byte limit of
//!   a socket address; `/proc` must be mounted), never through a path resolved again. The client
//!   hands the same open directory to the server it starts; `--preloader serve` opens and
//!   checks it the same way.
//! * **A directory that cannot be used** (created by another user first, a symbolic link, open
//!   to others, not creatable) never fails the command: it runs in-process, as with
//!   `FDSERVER_PRELOAD=0`, after one line on stderr saying why and how to fix it (set
//!   `FDSERVER_PRELOAD_DIR`, or `XDG_RUNTIME_DIR`, to a directory of yours with mode `0700`).
//!   The same goes for a server that turns out to run as another uid.
//! * **Peers.** The client checks the server's uid (`SO_PEERCRED`) before it sends anything; the
//!   server refuses clients of another uid. Pids never come from what a peer says: the server's
//!   is taken from the kernel (`SO_PEERPIDFD`, or the `SO_PEERCRED` pid while the connection
//!   proves it alive) when a client must stop it; a worker sends its own pidfd with its pid, and
//!   the client signals the worker's process group only through it (`pidfd_send_signal` with
//!   `PIDFD_SIGNAL_PROCESS_GROUP`, Linux 6.9; on older kernels by number, and only while the
//!   pidfd shows the worker still running), so a recycled number is never signalled. A worker
//!   pid of 0 or 1 ends the command with an error. A client's sandbox is read from the kernel
//!   too (see [When a command runs in-process](#when-a-command-runs-in-process)): a sandboxed
//!   process that reaches the socket cannot have a command run outside its sandbox (for
//!   Landlock, see there).
//! * **Resources.** The server serves at most 64 connections at once (a thread each); more
//!   clients wait in the socket's listen queue until one ends (a client that waits longer than
//!   [`Options::handshake_timeout`] runs its command in-process, after a line saying the server
//!   is wedged or busy). A failing `accept` (out of descriptors, say) pauses new connections with
//!   a back-off of 10 ms doubling up to 1 s, logged once until `accept` works again.
//!
//! ## State recovery
//!
//! * **The server's own files.** The server watches its directory (inotify on the open
//!   directory): when its socket or pidfile is removed or replaced, or the directory is removed,
//!   moved, replaced or opened to others, it exits promptly (its templates finish their running
//!   commands, then exit), and the next command starts a new server. Without inotify it checks every
//!   5 s. An exiting server removes its socket and pidfile only if they are still its own (same
//!   device and inode), and only while no client is starting a successor (the start lock); a
//!   new server waits (up to 10 s, woken by inotify) for an exiting one to release the pidfile.
//! * **Build identity.** The server's greeting carries the identity of its build: the ELF build
//!   id of the executable (`NT_GNU_BUILD_ID`, the linker's hash of the linked contents, read
//!   from the loaded image at no cost), or, for an executable linked without one, the identity
//!   of the running file (device, inode, size, modification and change times). A client of
//!   another build (say, after `cargo build` replaced the program at the same path) stops that
//!   server (the old build's running commands finish) and starts its own, as for another
//!   protocol version: two builds never share a server. A template is always of its server's build: the server starts it from
//!   `/proc/self/exe`, the very file the server runs, even once the path names a newer build.
//! * **Idle timeout.** A server with no command starting or running for
//!   [`Options::idle_timeout`] (default 3 hours; `0` = never; overridden by the environment
//!   variable `FDSERVER_PRELOAD_IDLE_TIMEOUT`, in seconds or with a unit: `90s`, `30m`, `8h`,
//!   `0`) exits with its templates. A running command keeps it alive; the timeout counts from the
//!   end of the last command. The server reads it when it starts: a different value later takes
//!   effect after `--preloader restart` (`status` shows the one in force).

mod attrs;
mod client;
mod context;
mod daemon;
mod os;
mod template;

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::server::BoxError;

pub use client::{Status, TemplateState, TemplateStatus};

/// The version the server sends first. A client that sees another version (or another build)
/// stops that server and starts its own, once.
///
/// Version 3: the template reads the working directory as a descriptor, with the process
/// attributes and inherited descriptors, from the client (`["run", key]`); the worker sends its
/// pidfd with its pid; the greeting carries the build identity. Version 4: the template (or
/// the worker) may hand a command back (`["error", "confined", why]`) or ask the client to
/// replace the server (`["error", "outranked", why]`); the worker's pid comes with its
/// template's; `status` carries the idle timeout. Version 5: the greeting names a descriptor of
/// the server whose nonce the client reads through `/proc/<server pid>/fd/<n>` and sends back
/// as the last element of `["run", key, nonce]`, `["preload", key, nonce]` and `["stop",
/// nonce]`: the proof that the client may inspect the server (see *Sandboxes* below).
pub const PROTOCOL_VERSION: &str = "fdserver-preload/5";

/// Set to `0` (or `off`, `false`, `no`, in any case) to run commands without the preloader.
pub const ENV_DISABLE: &str = "FDSERVER_PRELOAD";
/// Overrides the directory of the socket, pidfile and log.
pub const ENV_DIR: &str = "FDSERVER_PRELOAD_DIR";
/// Overrides [`Options::idle_timeout`]: seconds, or a number with a unit (`500ms`, `90s`, `30m`,
/// `3h`); `0` means never. Read by the server when it starts (it inherits the environment of
/// the client that starts it): set it for the command that starts the server, or run
/// `--preloader restart` with it.
pub const ENV_IDLE_TIMEOUT: &str = "FDSERVER_PRELOAD_IDLE_TIMEOUT";
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
    /// path, so programs at different paths never share a server; builds at the same path are
    /// told apart by their build id, see *State recovery* in the module docs).
    fn name(&self) -> &str;

    /// Which template serves a command, from its environment (Spring keys by `RAILS_ENV`).
    /// Computed in the client. Default: one template, `"default"`.
    fn template_key(&self, env: &[(OsString, OsString)]) -> String {
        let _ = env;
        "default".to_owned()
    }

    /// The expensive part: runs once per template, before any command, with the environment of
    /// the command that started the template (one of its key). Its output goes to the server's
    /// log. An error is shown to the client that triggered it (and to those waiting for the
    /// same preload), and the next command tries again.
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
///
/// ```
/// use std::time::Duration;
/// use fdserver::preload::Options;
///
/// let options = Options {
///     idle_timeout: Duration::from_secs(30 * 60), // exit after 30 min without commands
///     ..Options::default()
/// };
/// assert_eq!(options.boot_timeout, Duration::from_secs(20));
/// ```
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
    /// How long the server stays without any command starting or running before it exits with
    /// its templates (default 3 hours, as Bazel's and Gradle's servers; `Duration::ZERO`:
    /// never). The environment variable [`ENV_IDLE_TIMEOUT`] overrides it.
    pub idle_timeout: Duration,
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
            idle_timeout: Duration::from_secs(3 * 3600),
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
    /// * `--preloader status` / `stop` / `restart` / `serve`: prints the server's status / stops
    ///   it / replaces it with a new one whose template is preloaded / runs a server in the
    ///   foreground, logging to the terminal.
    /// * Otherwise: runs the command through the preloader (starting the server if needed) and
    ///   exits with the worker's exit code, or dies by the signal that killed it. When a worker
    ///   would not be what a fresh run is (a sandbox, a tracer, a background job of its
    ///   terminal...: see *When a command runs in-process* in the module docs), or the preloader
    ///   cannot be used (an untrusted directory, a server that does not answer), the command
    ///   runs in this process instead.
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
            self.run_in_process(args, "FDSERVER_PRELOAD is off");
        }
        match client::run(&self) {
            Ok(client::Ran::Outcome(outcome)) => outcome.exit(),
            Ok(client::Ran::InProcess(why)) => self.run_in_process(args, &why),
            Err(client::Failure::Unusable(why)) => {
                // Never fail the user's command for the preloader's own trouble: run it here.
                eprintln!(
                    "fdserver preloader: {why}; running this command without the preloader (to \
                     use it, {FIX_DIR})"
                );
                self.run_in_process(args, &why)
            }
            Err(client::Failure::Trouble(why)) => {
                eprintln!("fdserver preloader: {why}; running this command without the preloader");
                self.run_in_process(args, &why)
            }
            Err(client::Failure::InProcess(why)) => self.run_in_process(args, &why),
            Err(client::Failure::Io(e)) => {
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
            Some("restart") => match client::restart(self) {
                Ok(r) => {
                    println!("{r}");
                    0
                }
                Err(e) => {
                    eprintln!("fdserver preloader: restart: {e}");
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
                eprintln!("usage: {name} --preloader status|stop|restart|serve");
                2
            }
        }
    }

    /// Preloads and runs the command in this process (`FDSERVER_PRELOAD=0`, a directory that
    /// cannot be trusted, a server in trouble, or a command that a worker would not run as a
    /// fresh run would: `why`), and exits with its code.
    fn run_in_process(&self, args: Vec<OsString>, why: &str) -> ! {
        let mut app = self.app.clone();
        let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        let key = app.template_key(&env);
        let started = Instant::now();
        if let Err(e) = app.preload(&key) {
            eprintln!("fdserver preloader: the preload of {key:?} failed (in-process): {e}");
            std::process::exit(1);
        }
        if verbose() {
            eprintln!(
                "fdserver preloader: running in-process, not preloaded ({why}): {key:?} \
                 preloaded in {} ms",
                started.elapsed().as_millis()
            );
        }
        exit_flushed(app.run(args))
    }

    /// The running server's status, or `None` if none runs.
    pub fn status(&self) -> io::Result<Option<Status>> {
        client::status(self)
    }

    /// Stops the server (SIGTERM, then SIGKILL after the grace period) and its idle templates;
    /// running commands finish in their templates, which then exit. `Ok(false)` if none was
    /// running. Stale files are removed either way.
    pub fn stop(&self) -> io::Result<bool> {
        client::stop(self)
    }

    /// Stops the server if one runs (its running commands finish), starts a new one and
    /// preloads the template of this process's environment, so that the next command is warm
    /// (`--preloader restart`).
    ///
    /// ```no_run
    /// # use fdserver::preload::{Application, Preloader};
    /// # #[derive(Clone)] struct App;
    /// # impl Application for App {
    /// #     fn name(&self) -> &str { "myapp" }
    /// #     fn preload(&mut self, _: &str) -> Result<(), fdserver::BoxError> { Ok(()) }
    /// #     fn run(&mut self, _: Vec<std::ffi::OsString>) -> i32 { 0 }
    /// # }
    /// Preloader::new(App).restart()?; // e.g. after deploying new data the preload reads
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn restart(&self) -> io::Result<()> {
        client::restart(self).map(drop)
    }

    /// Where this application's files live (the directory is created if needed, and checked:
    /// an error says why it cannot be used). For display: the preloader itself reaches them
    /// through the open directory, never by these paths.
    pub fn paths(&self) -> io::Result<Paths> {
        Ok(self.dir()?.paths())
    }

    /// The private directory, opened and checked.
    pub(crate) fn dir(&self) -> Result<Dir, Unusable> {
        Dir::open(self.app.name(), self.options.dir.as_deref())
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

/// `FDSERVER_PRELOAD` is `0`, `off`, `false` or `no` (in any case).
fn preloading_disabled() -> bool {
    std::env::var(ENV_DISABLE).is_ok_and(|v| {
        let v = v.trim();
        ["0", "off", "false", "no"]
            .iter()
            .any(|off| v.eq_ignore_ascii_case(off))
    })
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

/// Why the preloader's directory (or the server found there) cannot be trusted: the command then
/// runs in-process, with this reason on stderr.
#[derive(Debug, Clone)]
pub(crate) struct Unusable(pub(crate) String);

impl From<Unusable> for io::Error {
    fn from(u: Unusable) -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, u.0)
    }
}

/// What a user can do about an [`Unusable`] directory.
const FIX_DIR: &str = "set FDSERVER_PRELOAD_DIR (or XDG_RUNTIME_DIR) to a directory of yours \
                       with mode 0700, or FDSERVER_PRELOAD=0 to run without the preloader";

/// The files of the application in the private directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Sock,
    Pid,
    Lock,
    Log,
    /// The log's previous part (see `daemon::LOG_LIMIT`).
    OldLog,
}

impl Kind {
    fn ext(self) -> &'static str {
        match self {
            Kind::Sock => "sock",
            Kind::Pid => "pid",
            Kind::Lock => "lock",
            Kind::Log => "log",
            Kind::OldLog => "log.1",
        }
    }

    /// What the file is, for messages.
    fn what(self) -> &'static str {
        match self {
            Kind::Sock => "socket",
            Kind::Pid => "pidfile",
            Kind::Lock => "start lock",
            Kind::Log => "log",
            Kind::OldLog => "previous log",
        }
    }
}

/// What [`Dir::unlink_if`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unlinked {
    /// It was ours: removed.
    Removed,
    /// Nothing there (removed by someone else).
    Absent,
    /// Another file is there now: left in place.
    Other,
}

/// The private directory, opened once without following a symbolic link and checked on the open
/// descriptor: everything in it is reached through that descriptor (`openat`, `fstatat`,
/// `unlinkat`, and `/proc/self/fd/N/<name>` for the socket), never by a path resolved again.
#[derive(Debug)]
pub(crate) struct Dir {
    file: fs::File,
    path: PathBuf,
    owner: u32,
    /// `<name>-<hash of the executable's path>`: the stem of this application's files.
    id: String,
}

impl Dir {
    /// Opens (creating it `0700` if needed) and checks the directory of `dir`, or the default.
    pub(crate) fn open(name: &str, dir: Option<&Path>) -> Result<Dir, Unusable> {
        let path = match dir {
            Some(d) => d.to_owned(),
            None => default_dir(),
        };
        // A relative path would name another directory (so another server) in every working
        // directory.
        if !path.is_absolute() {
            return Err(Unusable(format!(
                "the preloader's directory {} is not an absolute path (it would be another \
                 directory, and another server, in each working directory)",
                path.display()
            )));
        }
        let (file, owner) = open_private_dir(&path)?;
        Ok(Dir {
            file,
            path,
            owner,
            id: app_id(name),
        })
    }

    /// The directory a client opened and checked, passed to the server it starts; checked again.
    pub(crate) fn inherited(fd: OwnedFd, path: PathBuf, name: &str) -> Result<Dir, Unusable> {
        let file = fs::File::from(fd);
        let owner = check_private(&file, &path)?;
        Ok(Dir {
            file,
            path,
            owner,
            id: app_id(name),
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's owner: our effective uid (checked when it was opened).
    pub(crate) fn owner(&self) -> u32 {
        self.owner
    }

    /// The name of a file in the directory.
    pub(crate) fn name(&self, kind: Kind) -> OsString {
        format!("{}.{}", self.id, kind.ext()).into()
    }

    /// A file's path, for messages (never used to reach it).
    pub(crate) fn display(&self, kind: Kind) -> PathBuf {
        self.path.join(self.name(kind))
    }

    /// The address of the socket: through this process's descriptor of the directory, so that
    /// it names exactly the directory that was checked, and is short whatever the directory's
    /// path (a UNIX socket's address is limited to 108 bytes). Needs `/proc`.
    pub(crate) fn socket_addr(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/self/fd/{}/{}.sock",
            self.file.as_raw_fd(),
            self.id
        ))
    }

    /// Opens a file of the directory (`flags` plus `O_NOFOLLOW | O_CLOEXEC`, created `0600`).
    pub(crate) fn open_file(&self, kind: Kind, flags: libc::c_int) -> io::Result<fs::File> {
        os::open_at(self.fd(), &self.name(kind), flags).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot open the preloader's {} {}: {e}",
                    kind.what(),
                    self.display(kind).display()
                ),
            )
        })
    }

    /// The device and inode of a file of the directory, `None` if it is absent.
    pub(crate) fn stat(&self, kind: Kind) -> io::Result<Option<(u64, u64)>> {
        os::stat_at(self.fd(), &self.name(kind))
    }

    /// Removes a file of the directory (absent is fine).
    pub(crate) fn unlink(&self, kind: Kind) -> io::Result<()> {
        os::unlink_at(self.fd(), &self.name(kind))
    }

    /// Removes a file only if it is still the one identified by `id` (device, inode).
    pub(crate) fn unlink_if(&self, kind: Kind, id: (u64, u64)) -> io::Result<Unlinked> {
        match self.stat(kind)? {
            Some(now) if now == id => {
                self.unlink(kind)?;
                Ok(Unlinked::Removed)
            }
            Some(_) => Ok(Unlinked::Other),
            None => Ok(Unlinked::Absent),
        }
    }

    /// Why the server should no longer serve from this directory, if it should not: the
    /// directory was removed, moved, replaced or opened to others, or the socket or pidfile
    /// (identified by device and inode) is gone or replaced.
    pub(crate) fn lost(&self, sock: (u64, u64), pid: (u64, u64)) -> Option<String> {
        let meta = match self.file.metadata() {
            Ok(m) => m,
            Err(e) => return Some(format!("cannot check its directory: {e}")),
        };
        if meta.nlink() == 0 {
            return Some(format!("its directory {} was removed", self.path.display()));
        }
        match fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == (meta.dev(), meta.ino()) => {}
            _ => {
                return Some(format!(
                    "its directory {} was moved or replaced",
                    self.path.display()
                ))
            }
        }
        if let Err(Unusable(why)) = check_private(&self.file, &self.path) {
            return Some(why);
        }
        for (kind, id, what) in [(Kind::Sock, sock, "socket"), (Kind::Pid, pid, "pidfile")] {
            match self.stat(kind) {
                Ok(Some(now)) if now == id => {}
                Ok(Some(_)) => {
                    return Some(format!(
                        "its {what} {} was replaced",
                        self.display(kind).display()
                    ))
                }
                Ok(None) => {
                    return Some(format!(
                        "its {what} {} was removed",
                        self.display(kind).display()
                    ))
                }
                Err(e) => return Some(format!("cannot check its {what}: {e}")),
            }
        }
        None
    }

    fn paths(&self) -> Paths {
        Paths {
            dir: self.path.clone(),
            socket: self.display(Kind::Sock),
            pidfile: self.display(Kind::Pid),
            lock: self.display(Kind::Lock),
            log: self.display(Kind::Log),
        }
    }
}

/// What a pidfile says (read through its open descriptor), for messages only: the pid of the
/// server that wrote it, which nothing ever signals on that word.
pub(crate) fn pidfile_text(f: &fs::File) -> String {
    use std::io::Read;
    let mut text = String::new();
    let _ = f.take(32).read_to_string(&mut text);
    text.trim().to_owned()
}

/// `<name>-<hash of the executable's path>`.
fn app_id(name: &str) -> String {
    let exe = std::env::current_exe().unwrap_or_default();
    format!(
        "{}-{:016x}",
        sanitize(name),
        fnv1a(exe.as_os_str().as_encoded_bytes())
    )
}

fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(ENV_DIR).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("fdserver-preload");
    }
    std::env::temp_dir().join(format!("fdserver-preload-{}", crate::sys::geteuid()))
}

/// Opens `dir` without following a symbolic link (creating it `0700`, and its missing parents,
/// if needed) and checks the open directory: ours, and closed to others.
fn open_private_dir(dir: &Path) -> Result<(fs::File, u32), Unusable> {
    let shown = dir.display();
    let opened = match os::open_dir_nofollow(dir) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                match fs::DirBuilder::new()
                    .mode(0o700)
                    .recursive(true)
                    .create(parent)
                {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => {
                        return Err(Unusable(format!("cannot create {}: {e}", parent.display())))
                    }
                }
            }
            // mkdir never follows a symbolic link in the last component (EEXIST instead).
            match fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Unusable(format!("cannot create {shown}: {e}"))),
            }
            os::open_dir_nofollow(dir)
        }
        other => other,
    };
    let file = opened.map_err(|e| {
        Unusable(match e.raw_os_error() {
            Some(libc::ELOOP) => format!(
                "{shown} is a symbolic link (the preloader never follows one to its directory)"
            ),
            // O_DIRECTORY | O_NOFOLLOW on a symbolic link gives ENOTDIR (or ELOOP).
            Some(libc::ENOTDIR) if fs::symlink_metadata(dir).is_ok_and(|m| m.is_symlink()) => {
                format!(
                    "{shown} is a symbolic link (the preloader never follows one to its \
                     directory)"
                )
            }
            Some(libc::ENOTDIR) => format!("{shown} is not a directory"),
            _ => format!("cannot open {shown}: {e}"),
        })
    })?;
    let owner = check_private(&file, dir)?;
    Ok((file, owner))
}

/// The open directory must be ours and closed to others. Returns our (its owner's) uid.
fn check_private(file: &fs::File, dir: &Path) -> Result<u32, Unusable> {
    let meta = file
        .metadata()
        .map_err(|e| Unusable(format!("cannot check {}: {e}", dir.display())))?;
    let me = crate::sys::geteuid();
    if !meta.is_dir() {
        return Err(Unusable(format!("{} is not a directory", dir.display())));
    }
    if meta.uid() != me {
        return Err(Unusable(format!(
            "{} belongs to uid {}, not to you (uid {me})",
            dir.display(),
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(Unusable(format!(
            "{} is open to other users (mode {:o}); it must be 0700",
            dir.display(),
            meta.mode() & 0o777
        )));
    }
    Ok(me)
}

/// Takes the exclusive lock of `file` (a pidfile), waiting until `deadline` for its holder to
/// release it: woken by inotify when a descriptor of the file is closed (a lock is released when
/// its holder's last descriptor closes), not by polling. `Ok(false)` at the deadline.
pub(crate) fn lock_within(file: &fs::File, deadline: Instant) -> io::Result<bool> {
    use inotify::{Inotify, WatchMask};
    if crate::sys::flock(file.as_fd(), true, true)? {
        return Ok(true);
    }
    let mut inotify = Inotify::init()?; // non-blocking, close-on-exec
    inotify.watches().add(
        format!("/proc/self/fd/{}", file.as_raw_fd()),
        WatchMask::CLOSE_WRITE | WatchMask::CLOSE_NOWRITE | WatchMask::ATTRIB,
    )?;
    let mut buf = [0u8; 1024];
    loop {
        // Tried again after the watch exists, so that a release in between is not missed.
        if crate::sys::flock(file.as_fd(), true, true)? {
            return Ok(true);
        }
        if !crate::sys::wait_fd(inotify.as_fd(), libc::POLLIN, Some(deadline))? {
            return Ok(false);
        }
        while inotify.read_events(&mut buf).is_ok_and(|e| e.count() > 0) {}
    }
}

/// The identity of the running program's build, which the server and its client compare at each
/// connection: the ELF build id (`NT_GNU_BUILD_ID`, the linker's hash of the linked contents),
/// read from the loaded image at no cost. Without one, the identity of the executable file that
/// is running (device, inode, size, modification and change times, from `/proc/self/exe`),
/// which changes with every rebuild.
pub(crate) fn build_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| match os::build_id_note() {
        Some(id) => {
            // Every client computes this once: hex by table (`format!` per byte costs ~1.5 us).
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut hex = String::with_capacity(id.len() * 2);
            for b in id {
                hex.push(HEX[usize::from(b >> 4)] as char);
                hex.push(HEX[usize::from(b & 15)] as char);
            }
            hex
        }
        None => match fs::metadata("/proc/self/exe") {
            Ok(m) => format!(
                "file:{:x}:{:x}:{:x}:{}.{}:{}.{}",
                m.dev(),
                m.ino(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ),
            Err(_) => "unknown".to_owned(),
        },
    })
}

/// A duration as `FDSERVER_PRELOAD_IDLE_TIMEOUT` gives it: seconds, or a number with a unit
/// (`ms`, `s`, `m`, `h`).
fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit.trim() {
        "" | "s" => n.checked_mul(1000)?,
        "ms" => n,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(ms))
}

/// The idle timeout in force: `FDSERVER_PRELOAD_IDLE_TIMEOUT` if set (and valid), else
/// `options`. `Err` names an invalid value.
pub(crate) fn idle_timeout(options: &Options) -> Result<Duration, String> {
    match std::env::var(ENV_IDLE_TIMEOUT) {
        Ok(v) if !v.trim().is_empty() => parse_duration(&v).ok_or_else(|| {
            format!(
                "{ENV_IDLE_TIMEOUT}={v:?} is not a duration (seconds, or a number with ms, s, m \
                 or h); using {:?}",
                options.idle_timeout
            )
        }),
        _ => Ok(options.idle_timeout),
    }
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
    use std::os::unix::fs::PermissionsExt;

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
        let dir = base.join("a/b");
        open_private_dir(&dir).unwrap();
        for d in [&base, &dir] {
            assert_eq!(fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o700);
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(open_private_dir(&dir).unwrap_err().0.contains("0700"));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(open_private_dir(&link)
            .unwrap_err()
            .0
            .contains("symbolic link"));
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn build_id_is_the_notes_hex() {
        let note = os::build_id_note().expect("test binaries have a build id");
        let hex: String = note.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(build_id(), hex);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 3h "), Some(Duration::from_secs(3 * 3600)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(parse_duration(""), None);
    }
}
