//! Sandboxed servers: privilege separation as part of a server's definition (feature `sandbox`).
//!
//! A [`Sandbox`] describes what a forked server may no longer do. Give it to
//! [`Builder::sandbox`](crate::Builder::sandbox), return it from
//! [`Server::sandbox`](crate::Server::sandbox), or mark a method `#[fdserver(sandbox)]`:
//!
//! ```
//! use fdserver::sandbox::{Landlock, Limit, Preset, Sandbox, Seccomp};
//!
//! struct Parser;
//!
//! #[fdserver::fdserver]
//! impl Parser {
//!     /// Counts the lines of what the client hands over (a file, a pipe, a socket).
//!     fn count_lines(&mut self, input: std::os::fd::OwnedFd) -> std::io::Result<u64> {
//!         use std::io::Read;
//!         let mut text = String::new();
//!         std::fs::File::from(input).read_to_string(&mut text)?;
//!         Ok(text.lines().count() as u64)
//!     }
//!
//!     /// Applied in the server after `initialize`, before its first message.
//!     #[fdserver(sandbox)]
//!     fn sandbox(&self) -> Sandbox {
//!         Sandbox::new()
//!             .landlock(Landlock::new()) // no path at all: no filesystem
//!             .seccomp(Seccomp::new().preset(Preset::NoNetwork).preset(Preset::NoExec))
//!             .limit(Limit::OpenFiles(64))
//!     }
//! }
//!
//! let mut parser = Parser.start()?;
//! let report = parser.handle().sandbox().expect("the server is sandboxed");
//! assert!(report.no_new_privs);
//! let (input, mut feed) = std::os::unix::net::UnixStream::pair()?;
//! std::io::Write::write_all(&mut feed, b"one\ntwo\n")?;
//! drop(feed);
//! assert_eq!(parser.count_lines(input)?, 2);
//! parser.stop()?;
//! # Ok::<(), fdserver::Error>(())
//! ```
//!
//! # Sandboxing
//!
//! ## When it is applied
//!
//! [`start`](crate::Builder::start) checks the description and prepares every layer in the
//! parent, before the fork: names are resolved, paths opened, the Landlock ruleset created and
//! the seccomp filters compiled, so a wrong description fails there with
//! [`Error::Sandbox`], without a child. In the child the sandbox takes
//! effect **after `initialize_server`** (which can still open what the server needs: its files,
//! sockets, a directory to work in) **and before the first message** (before `["ready"]`).
//! Every restriction either takes effect or `start` fails with [`Error::Sandbox`] naming the
//! [`Layer`] and saying why; the child then exits with status 1. Nothing is applied "as far as
//! it goes" unless you ask for it ([`Landlock::best_effort`]), and then
//! [`ServerHandle::sandbox`](crate::ServerHandle::sandbox) says what was enforced. A server run
//! with [`serve`](crate::serve) is sandboxed at the same point, in the calling process.
//!
//! The layers are applied in this order: each step needs privileges that a later one drops, and
//! seccomp comes last because its filters may forbid the calls the other steps make.
//!
//! | # | layer | what it protects against | needs |
//! |---|---|---|---|
//! | 0 | single thread | threads that would escape the per-thread layers (see below) | — |
//! | 1 | [`Namespace`]s | `Network`: reaching any network interface, and abstract UNIX sockets outside; `Ipc`: System V IPC and POSIX message queues of the host | root (`CAP_SYS_ADMIN`), or `Namespace::User` with unprivileged user namespaces |
//! | 2 | [`Limit`]s (`setrlimit`) | memory exhaustion (address space), descriptor exhaustion, runaway CPU, filling the disk, fork bombs (never for uid 0, so refused there) | root only to *raise* a hard limit |
//! | 3 | `no_new_privs` | gaining privileges through `execve` of set-user-ID or file-capability binaries | — |
//! | 4 | capabilities and [`Identity`] | everything root or a capability allows; then the server runs as another user: supplementary groups set (or cleared), then gid, then uid, all of real, effective and saved | root to change user; root (`CAP_SETPCAP`) to empty the bounding set |
//! | 5 | [`Landlock`] | reading and writing files outside the paths you list; signalling processes and reaching abstract UNIX sockets outside the sandbox | Linux 5.13 (ABI 1); the whole layer as fdserver builds it: Linux 6.12 (ABI 6) |
//! | 6 | [`Seccomp`] | system calls the server should never make: network sockets, `execve`, `fork`; any list you give | Linux 3.17 (4.14 for `Violation::Kill`) |
//!
//! After the identity change fdserver checks that it cannot be undone: the real, effective and
//! saved ids and the groups are what was asked, `setuid(0)` and `setgid(0)` fail with `EPERM`,
//! and no capability is left in the effective, permitted, inheritable and ambient sets (nor in
//! the bounding set, when the parent could empty it). A sandboxed server always drops every
//! capability, and `no_new_privs` is on unless you turn it off
//! ([`Sandbox::no_new_privs`]; Landlock and seccomp need it).
//!
//! ## Threads
//!
//! Landlock, capabilities, `no_new_privs`, namespaces and (for raw system calls) user ids are
//! properties of a *thread*: a thread started before the sandbox would keep running without it.
//! So the server must have exactly one thread when the sandbox is applied: start threads from a
//! handler (or later), never in `initialize_server`, and they inherit the whole sandbox.
//! Otherwise `start` fails with [`Layer::Threads`]. (The check is `unshare(CLONE_THREAD)`, which
//! the kernel refuses in a process with other threads; where a container's seccomp profile
//! refuses `unshare`, it reads `/proc/self/stat`.)
//!
//! ## When the client is gone
//!
//! A sandboxed server started with [`start`](crate::Builder::start) ends when its client is
//! gone (closed, exited, SIGKILLed), even while a handler is stuck, on the schedule of
//! [`Builder::stop_timeouts`](crate::Builder::stop_timeouts), like any forked server: its
//! hang-up watch thread starts inside the sandbox, after the per-thread layers (so it inherits
//! them) and before seccomp (whose filter covers every thread). The watch's system calls
//! (`ppoll`, `clock_gettime`, `getpid`, `tgkill`) are among [`Seccomp::RUNTIME`], which
//! [`Seccomp::allow_only`] always allows and [`Seccomp::deny`] refuses to deny, so no sandbox
//! can disable it.
//!
//! ## What needs root
//!
//! Changing the user ([`Identity`]), new namespaces without a user namespace, emptying the
//! capability bounding set and raising a hard resource limit. `start` checks the parent's
//! capabilities before the fork and says which one is missing. A server started by an
//! unprivileged process can still use Landlock, seccomp, `no_new_privs`, lower limits and
//! `Namespace::User` (then `Network`/`Ipc` too). The bounding set of an unprivileged process
//! cannot be emptied; with `no_new_privs` it grants nothing, and the report says it was kept
//! ([`SandboxReport::bounding_set_cleared`]).
//!
//! ## What it does not protect against
//!
//! * **Descriptors the server already holds.** Landlock and the namespaces govern opening new
//!   files and sockets; a descriptor opened in `initialize_server`, kept with
//!   [`Builder::keep_fd`](crate::Builder::keep_fd) or received in a message stays fully usable.
//!   That is the point of privilege separation (the broker hands over exactly what it decides);
//!   it is also what to audit.
//! * **The client.** A sandboxed server still answers its client with whatever it computes;
//!   treat its replies as untrusted input.
//! * **Kernel bugs.** Every layer is enforced by the kernel; a kernel exploit reachable through
//!   the system calls the filter still allows escapes all of them. Deny what you can
//!   ([`Seccomp::allow_only`] is the strictest).
//! * **Side channels and resources outside the limits**: timing, the CPU caches, memory
//!   bandwidth, kernel memory.
//! * **Other processes of the same user.** Without [`Identity`], the server runs as the parent's
//!   user; with [`Landlock`] it cannot signal them (its signal scope), but `ptrace` is governed
//!   by the system's Yama setting, not by fdserver (deny `ptrace` with [`Seccomp::deny`]).
//! * **File metadata.** Landlock governs opening, creating, removing and renaming files, not
//!   looking at them: `stat` still tells a sandboxed server whether any path exists, and its
//!   size, owner and times.
//! * **Pathname UNIX sockets.** Landlock before ABI 9 does not govern connecting to one, and
//!   fdserver's Landlock rules stop at ABI 6: [`Preset::NoNetwork`] leaves `AF_UNIX` sockets
//!   possible, so deny `socket` outright with [`Seccomp::deny`] when even those must go.
//! * **Memory that Rust allocates infallibly.** Over the address-space limit, `Vec::push` and
//!   `Box::new` abort the server (`SIGABRT`); use `try_reserve` for sizes that come from
//!   untrusted input.
//!
//! ## Kernel requirements
//!
//! Linux only. `no_new_privs` and seccomp filters: 3.5; seccomp on every thread (`TSYNC`): 3.17;
//! `Violation::Kill`: 4.14; Landlock: 5.13 for files (ABI 1), 5.19 for renames across directories
//! (2), 6.2 for truncation (3), 6.10 for device ioctls (5), 6.12 for the signal and abstract
//! socket scopes (6). By default Landlock needs all of them (ABI 6); [`Landlock::best_effort`]
//! accepts less and reports what is missing. Seccomp's architectures: x86_64, aarch64, riscv64.

use std::fmt;

use crate::error::{Error, RemoteError, RemoteErrorKind};

mod identity;
mod landlock;
mod limits;
mod namespaces;
mod privileges;
mod seccomp;

pub use identity::Identity;
pub use landlock::{Landlock, LandlockReport};
pub use limits::Limit;
pub use namespaces::Namespace;
pub use seccomp::{Preset, Seccomp, SeccompReport, Syscall, Violation};

/// A description of what a server may no longer do, applied after `initialize_server` and
/// before the first message (see the [module docs](self)).
///
/// An empty `Sandbox` restricts nothing. Any layer makes the server drop every capability and
/// set `no_new_privs` (unless turned off with [`no_new_privs(false)`](Self::no_new_privs)).
///
/// ```
/// use fdserver::sandbox::{Identity, Landlock, Limit, Namespace, Preset, Sandbox, Seccomp};
///
/// let sandbox = Sandbox::new()
///     .identity(Identity::user("nobody"))                  // root only
///     .namespace(Namespace::Network)                       // root, or Namespace::User too
///     .limit(Limit::AddressSpace(512 << 20))
///     .limit(Limit::OpenFiles(64))
///     .landlock(Landlock::new().read_only("/usr/share/zoneinfo"))
///     .seccomp(Seccomp::new().preset(Preset::NoExec).preset(Preset::NoNewProcesses));
/// // What would be enforced here, checked without starting anything (needs root, for the
/// // identity and the namespace):
/// # if unsafe { libc::geteuid() } == 0 {
/// let report = sandbox.check()?;
/// println!("{report}");
/// # }
/// # Ok::<(), fdserver::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "a Sandbox does nothing until it is given to Builder::sandbox or returned by Server::sandbox"]
pub struct Sandbox {
    identity: Option<Identity>,
    no_new_privs: Option<bool>,
    limits: Vec<Limit>,
    namespaces: Vec<Namespace>,
    landlock: Option<Landlock>,
    seccomp: Option<Seccomp>,
}

impl Sandbox {
    /// An empty sandbox: nothing restricted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the server as this user and group (the parent must be root).
    pub fn identity(mut self, identity: Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Adds a resource limit (one of each kind; a later one replaces an earlier one).
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limits.retain(|l| l.kind() != limit.kind());
        self.limits.push(limit);
        self
    }

    /// Puts the server in a new namespace of this kind.
    pub fn namespace(mut self, namespace: Namespace) -> Self {
        if !self.namespaces.contains(&namespace) {
            self.namespaces.push(namespace);
        }
        self
    }

    /// Restricts the filesystem with Landlock.
    pub fn landlock(mut self, landlock: Landlock) -> Self {
        self.landlock = Some(landlock);
        self
    }

    /// Filters system calls with seccomp.
    pub fn seccomp(mut self, seccomp: Seccomp) -> Self {
        self.seccomp = Some(seccomp);
        self
    }

    /// Sets `no_new_privs` (`true`, the default whenever any layer is used) or not (`false`:
    /// only possible without Landlock and seccomp, which require it).
    pub fn no_new_privs(mut self, on: bool) -> Self {
        self.no_new_privs = Some(on);
        self
    }

    /// Whether this sandbox restricts anything.
    pub fn is_empty(&self) -> bool {
        self.identity.is_none()
            && self.no_new_privs != Some(true)
            && self.limits.is_empty()
            && self.namespaces.is_empty()
            && self.landlock.is_none()
            && self.seccomp.is_none()
    }

    /// Checks the description against this process and kernel, and reports what a server
    /// started from here would enforce, without starting anything. `start` runs the same check.
    pub fn check(&self) -> Result<SandboxReport, Error> {
        Ok(self.prepare()?.report)
    }

    /// Everything the child needs, prepared in the parent.
    pub(crate) fn prepare(&self) -> Result<Prepared, Error> {
        let me = Caller::current();
        let layers = !self.is_empty();
        let no_new_privs = self.no_new_privs.unwrap_or(layers);
        if !no_new_privs && (self.landlock.is_some() || self.seccomp.is_some()) {
            return Err(fail(
                Layer::NoNewPrivs,
                "Landlock and seccomp need no_new_privs (the server will have no capability left \
                 to do without it): remove `no_new_privs(false)`",
            ));
        }
        let namespaces = namespaces::prepare(&self.namespaces, &me)?;
        if namespaces.is_some()
            && self.identity.is_some()
            && self.namespaces.contains(&Namespace::User)
        {
            return Err(fail(
                Layer::Namespaces,
                "a user namespace maps only the parent's own user and group, so the server cannot \
                 change identity inside it: drop `Namespace::User` (as root the other namespaces \
                 need none) or the identity",
            ));
        }
        let identity = match &self.identity {
            Some(id) => Some(id.resolve(&me)?),
            None => None,
        };
        // The real uid the server ends up with (a user namespace maps the parent's own).
        let final_uid = identity.as_ref().map_or(me.uid, |ids| ids.uid);
        let limits = limits::prepare(&self.limits, final_uid, &me)?;
        // The bounding set can be emptied with CAP_SETPCAP, which root has, and which a new user
        // namespace grants inside it.
        let clear_bounding = layers
            && (me.has_cap(privileges::CAP_SETPCAP) || self.namespaces.contains(&Namespace::User));
        if layers && !clear_bounding && !no_new_privs {
            return Err(fail(
                Layer::Capabilities,
                "this process lacks CAP_SETPCAP, so the server's capability bounding set cannot be \
                 emptied, and without no_new_privs an execve could regain capabilities from it: \
                 keep no_new_privs on, or start the server as root",
            ));
        }
        let (landlock, landlock_report) = match &self.landlock {
            Some(l) => {
                let (ruleset, report) = l.prepare()?;
                (ruleset, Some(report))
            }
            None => (None, None),
        };
        let (seccomp, seccomp_report) = match &self.seccomp {
            Some(s) => {
                let (filters, report) = s.prepare()?;
                (Some(filters), Some(report))
            }
            None => (None, None),
        };
        let report = SandboxReport {
            identity: identity
                .as_ref()
                .map(|ids| (ids.uid, ids.gid, ids.groups.clone())),
            no_new_privs,
            capabilities_dropped: layers,
            bounding_set_cleared: clear_bounding,
            limits: self.limits.clone(),
            namespaces: self.namespaces.clone(),
            landlock: landlock_report,
            seccomp: seccomp_report,
        };
        Ok(Prepared {
            active: layers,
            namespaces,
            limits,
            no_new_privs,
            clear_bounding,
            identity,
            landlock,
            seccomp,
            report,
        })
    }
}

/// What the parent knows about itself, for the checks made before the fork.
pub(crate) struct Caller {
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    effective_caps: u64,
}

impl Caller {
    fn current() -> Caller {
        Caller {
            // SAFETY: getuid/getgid cannot fail.
            uid: unsafe { libc::getuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getgid() },
            effective_caps: privileges::effective().unwrap_or(0),
        }
    }

    pub(crate) fn has_cap(&self, cap: u32) -> bool {
        cap < 64 && self.effective_caps & (1 << cap) != 0
    }
}

/// A sandbox layer, as named in errors and in the report, in the order they are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Layer {
    /// The description as a whole (e.g. given both to the `Builder` and by the server).
    Description,
    /// The single-thread precondition.
    Threads,
    /// New namespaces.
    Namespaces,
    /// Resource limits.
    Limits,
    /// `no_new_privs`.
    NoNewPrivs,
    /// Capabilities (effective, permitted, inheritable, ambient, bounding set).
    Capabilities,
    /// User, group and supplementary groups.
    Identity,
    /// Landlock.
    Landlock,
    /// The seccomp filter.
    Seccomp,
}

impl Layer {
    /// The layer's name in messages (`"landlock"`, `"seccomp"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Description => "description",
            Layer::Threads => "threads",
            Layer::Namespaces => "namespaces",
            Layer::Limits => "limits",
            Layer::NoNewPrivs => "no_new_privs",
            Layer::Capabilities => "capabilities",
            Layer::Identity => "identity",
            Layer::Landlock => "landlock",
            Layer::Seccomp => "seccomp",
        }
    }

    fn from_str(s: &str) -> Option<Layer> {
        [
            Layer::Description,
            Layer::Threads,
            Layer::Namespaces,
            Layer::Limits,
            Layer::NoNewPrivs,
            Layer::Capabilities,
            Layer::Identity,
            Layer::Landlock,
            Layer::Seccomp,
        ]
        .into_iter()
        .find(|l| l.as_str() == s)
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sandbox that could not be set up: which layer, and why. `start` returns it (as
/// [`Error::Sandbox`]) whether the problem was found before the fork or in the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxError {
    layer: Layer,
    message: String,
}

impl SandboxError {
    pub(crate) fn new(layer: Layer, message: impl Into<String>) -> Self {
        SandboxError {
            layer,
            message: message.into(),
        }
    }

    /// The layer that failed.
    pub fn layer(&self) -> Layer {
        self.layer
    }

    /// What went wrong, and what to do about it.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The error reply a server sends when its sandbox fails: `["error", "sandbox", "layer:
    /// message"]`.
    pub(crate) fn to_remote(&self) -> RemoteError {
        RemoteError::new(
            RemoteErrorKind::Sandbox,
            format!("{}: {}", self.layer, self.message),
        )
    }

    /// Turns the server's `sandbox` error reply back into a `SandboxError`.
    pub(crate) fn from_remote(r: &RemoteError) -> Option<SandboxError> {
        if r.kind() != &RemoteErrorKind::Sandbox {
            return None;
        }
        let (layer, message) = r.message().split_once(": ")?;
        Some(SandboxError::new(Layer::from_str(layer)?, message))
    }
}

impl fmt::Display for SandboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sandbox layer `{}`: {}", self.layer, self.message)
    }
}

impl std::error::Error for SandboxError {}

fn fail(layer: Layer, message: impl Into<String>) -> Error {
    Error::Sandbox(SandboxError::new(layer, message))
}

/// What a sandbox enforces, known before the fork and guaranteed once `start` succeeded (the
/// server applies exactly this or fails to start). Its `Display` lists it layer by layer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SandboxReport {
    /// `(uid, gid, supplementary groups)` the server runs as, if it changes identity.
    pub identity: Option<(u32, u32, Vec<u32>)>,
    /// Whether `no_new_privs` is set.
    pub no_new_privs: bool,
    /// Whether every capability is dropped (always, for a non-empty sandbox).
    pub capabilities_dropped: bool,
    /// Whether the capability bounding set is emptied too (needs `CAP_SETPCAP` in the parent, or
    /// a user namespace); when it is not, `no_new_privs` makes it grant nothing.
    pub bounding_set_cleared: bool,
    /// The resource limits set.
    pub limits: Vec<Limit>,
    /// The new namespaces.
    pub namespaces: Vec<Namespace>,
    /// Landlock: the kernel's ABI and what is enforced.
    pub landlock: Option<LandlockReport>,
    /// The seccomp filter.
    pub seccomp: Option<SeccompReport>,
}

impl fmt::Display for SandboxReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.capabilities_dropped && !self.no_new_privs {
            return f.write_str("sandbox: empty (nothing restricted)");
        }
        // One line per layer, in the order they are applied.
        let mut lines = vec!["sandbox:".to_owned()];
        if !self.namespaces.is_empty() {
            let names: Vec<&str> = self.namespaces.iter().map(|n| n.as_str()).collect();
            lines.push(format!("  namespaces: new {}", names.join(", ")));
        }
        for l in &self.limits {
            lines.push(format!("  limit: {l}"));
        }
        lines.push(format!(
            "  no_new_privs: {}",
            if self.no_new_privs { "on" } else { "off" }
        ));
        if self.capabilities_dropped {
            lines.push(format!(
                "  capabilities: none; bounding set {}",
                if self.bounding_set_cleared {
                    "emptied"
                } else {
                    "kept (no CAP_SETPCAP; no_new_privs keeps it from granting anything)"
                }
            ));
        }
        if let Some((uid, gid, groups)) = &self.identity {
            lines.push(format!(
                "  identity: uid {uid}, gid {gid}, groups {groups:?}"
            ));
        }
        if let Some(l) = &self.landlock {
            lines.push(format!("  landlock: {l}"));
        }
        if let Some(s) = &self.seccomp {
            lines.push(format!("  seccomp: {s}"));
        }
        f.write_str(&lines.join("\n"))
    }
}

impl crate::ServerHandle {
    /// What the server's sandbox enforces, if it has one (feature `sandbox`): known before
    /// the fork, and in force since `start` returned (a layer that could not be applied would
    /// have made `start` fail).
    ///
    /// `None` for a server started with [`Spawn`](crate::Spawn), even one whose program
    /// applies a sandbox of its own in [`serve`](crate::serve): that happens in another
    /// program, which tells the client nothing about it.
    pub fn sandbox(&self) -> Option<&SandboxReport> {
        self.sandbox.as_deref()
    }
}

/// A failure in the child, described without allocating: the layer, the operation, the errno.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fail {
    layer: Layer,
    what: &'static str,
    errno: Option<i32>,
}

impl Fail {
    /// `what` failed with the current `errno`.
    pub(crate) fn os(layer: Layer, what: &'static str) -> Fail {
        Fail {
            layer,
            what,
            errno: std::io::Error::last_os_error().raw_os_error(),
        }
    }

    /// `what` failed with this errno.
    pub(crate) fn errno(layer: Layer, what: &'static str, errno: i32) -> Fail {
        Fail {
            layer,
            what,
            errno: Some(errno),
        }
    }

    /// A check that did not hold.
    pub(crate) fn check(layer: Layer, what: &'static str) -> Fail {
        Fail {
            layer,
            what,
            errno: None,
        }
    }

    pub(crate) fn into_error(self) -> SandboxError {
        let message = match self.errno {
            Some(e) => format!("{}: {}", self.what, std::io::Error::from_raw_os_error(e)),
            None => self.what.to_owned(),
        };
        SandboxError::new(self.layer, message)
    }
}

/// A sandbox ready to apply: everything computed in the parent, so that the child only makes
/// system calls (no allocation on the success path).
pub(crate) struct Prepared {
    active: bool,
    namespaces: Option<namespaces::Unshare>,
    limits: limits::Rlimits,
    no_new_privs: bool,
    clear_bounding: bool,
    identity: Option<identity::Ids>,
    landlock: Option<std::os::fd::OwnedFd>,
    seccomp: Option<seccomp::Filters>,
    report: SandboxReport,
}

impl Prepared {
    /// The descriptors the child must keep open until it applies the sandbox.
    pub(crate) fn fds(&self) -> impl Iterator<Item = std::os::fd::RawFd> + '_ {
        use std::os::fd::AsRawFd;
        self.landlock.iter().map(|fd| fd.as_raw_fd())
    }

    /// What will be enforced.
    pub(crate) fn into_report(self) -> SandboxReport {
        self.report
    }

    /// Applies every layer, in the documented order, to the calling process (which must have
    /// exactly one thread), and starts the runtime's hang-up watch thread with `start_watch`
    /// after the per-thread layers and before seccomp: the watch inherits the namespaces, limits,
    /// `no_new_privs`, identity, capabilities and Landlock domain, and seccomp's
    /// `SECCOMP_FILTER_FLAG_TSYNC` covers it too. On failure the process is left partly
    /// sandboxed: end it.
    pub(crate) fn apply(
        &mut self,
        start_watch: impl FnOnce() -> std::io::Result<()>,
    ) -> Result<(), Fail> {
        if !self.active {
            return Ok(());
        }
        check_single_thread()?;
        // 1. Namespaces, while we still have the capabilities to create them.
        if let Some(ns) = &self.namespaces {
            ns.apply()?;
        }
        // 2. Limits: raising a hard limit needs CAP_SYS_RESOURCE, dropped below.
        self.limits.apply()?;
        // 3. no_new_privs (per thread; inherited by every thread and child started later).
        if self.no_new_privs {
            privileges::set_no_new_privs()?;
        }
        // 4. Capabilities and identity. The bounding set is emptied first, while CAP_SETPCAP is
        //    still held; then groups, gid, uid (each change needs the capability the next
        //    one drops); then whatever capability is left.
        privileges::drop_ambient_and_bounding(self.clear_bounding)?;
        if let Some(ids) = &self.identity {
            // A change of effective ids clears the parent-death signal: keep it armed.
            let death_signal = privileges::parent_death_signal();
            identity::apply(ids)?;
            privileges::restore_parent_death_signal(death_signal)?;
        }
        privileges::drop_all()?;
        privileges::verify_none()?;
        if let Some(ids) = &mut self.identity {
            identity::verify(ids)?;
        }
        // 5. Landlock.
        if let Some(ruleset) = self.landlock.take() {
            landlock::apply(ruleset)?;
        }
        // 5b. The runtime's hang-up watch (issue 10, item 6), which ends the server once its
        //     client is gone even while a handler runs: started here, it inherits every layer
        //     above, and the seccomp filter below (applied to all threads) allows its calls
        //     (ppoll, clock_gettime, getpid, tgkill to its own process, within the Landlock
        //     domain).
        start_watch().map_err(|e| {
            Fail::errno(
                Layer::Threads,
                "cannot start the server's hang-up watch thread",
                e.raw_os_error().unwrap_or(libc::EAGAIN),
            )
        })?;
        // 6. Seccomp, last: its filters may forbid the calls the steps above make.
        if let Some(filters) = &self.seccomp {
            filters.apply()?;
        }
        Ok(())
    }
}

/// Fails unless the calling process has exactly one thread.
///
/// `unshare(CLONE_THREAD)` answers in one system call: the kernel refuses it with `EINVAL` when
/// the thread group has other threads and otherwise does nothing (unshare(2)). Where a
/// container's seccomp profile refuses `unshare` itself, field 20 of `/proc/self/stat` is read
/// instead.
fn check_single_thread() -> Result<(), Fail> {
    const WHAT: &str = "the server has more than one thread when the sandbox is applied, and \
                        Landlock, capabilities, no_new_privs and namespaces act per thread, so \
                        the others would escape it: start threads after the sandbox (in a \
                        handler), not in initialize_server";
    // SAFETY: unshare takes flags only; with CLONE_THREAD alone it changes nothing.
    if unsafe { libc::unshare(libc::CLONE_THREAD) } == 0 {
        return Ok(());
    }
    if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        return Err(Fail::check(Layer::Threads, WHAT));
    }
    let mut buf = [0u8; 1024];
    let n = read_small_file(c"/proc/self/stat", &mut buf).map_err(|e| {
        Fail::errno(
            Layer::Threads,
            "cannot count threads (unshare is refused here): open /proc/self/stat",
            e,
        )
    })?;
    match thread_count(&buf[..n]) {
        Some(1) => Ok(()),
        Some(_) => Err(Fail::check(Layer::Threads, WHAT)),
        None => Err(Fail::check(Layer::Threads, "cannot parse /proc/self/stat")),
    }
}

/// `num_threads` (field 20) of a `/proc/<pid>/stat` line.
fn thread_count(stat: &[u8]) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain anything: start after the
    // last ')'. Then field 3 is the first token; num_threads (field 20) is the 18th.
    let after = &stat[stat.iter().rposition(|&b| b == b')')? + 1..];
    after
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .nth(17)
        .and_then(|t| std::str::from_utf8(t).ok())
        .and_then(|t| t.parse::<u64>().ok())
}

/// Reads up to `buf.len()` bytes of a small file into `buf` (no allocation). Errors are errnos.
pub(crate) fn read_small_file(path: &std::ffi::CStr, buf: &mut [u8]) -> Result<usize, i32> {
    let errno = || {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: `path` is NUL-terminated; the flags need no mode argument.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    let mut n = 0;
    let result = loop {
        if n == buf.len() {
            break Ok(n);
        }
        // SAFETY: writes at most `buf.len() - n` bytes into the rest of `buf`.
        let r = unsafe { libc::read(fd, buf[n..].as_mut_ptr().cast(), buf.len() - n) };
        match r {
            0 => break Ok(n),
            r if r > 0 => n += r as usize,
            _ if errno() == libc::EINTR => {}
            _ => break Err(errno()),
        }
    };
    // SAFETY: `fd` was opened above and is closed once.
    unsafe { libc::close(fd) };
    result
}

/// Writes all of `data` to the file at `path` (which must exist). Errors are errnos.
pub(crate) fn write_small_file(path: &std::ffi::CStr, data: &[u8]) -> Result<(), i32> {
    let errno = || {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // SAFETY: `path` is NUL-terminated; the flags need no mode argument.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: reads `data.len()` bytes of `data`.
    let r = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let result = if r < 0 {
        Err(errno())
    } else if r as usize != data.len() {
        Err(libc::EIO)
    } else {
        Ok(())
    };
    // SAFETY: `fd` was opened above and is closed once.
    unsafe { libc::close(fd) };
    result
}

/// The sandbox a start uses: the `Builder`'s or the server's, never both.
pub(crate) fn choose(
    builder: Option<&Sandbox>,
    server: Option<Sandbox>,
) -> Result<Option<Prepared>, Error> {
    let sandbox = match (builder, server) {
        (Some(_), Some(_)) => {
            return Err(fail(
                Layer::Description,
                "both the Builder and the server declare a sandbox; fdserver does not merge \
                 them (a merge could silently weaken the server's own): give one",
            ))
        }
        (Some(b), None) => b.clone(),
        (None, Some(s)) => s,
        (None, None) => return Ok(None),
    };
    sandbox.prepare().map(Some)
}

/// Applies a prepared sandbox in the child, turning a failure into the error reply to send.
pub(crate) fn apply_in_child(
    prepared: &mut Option<Prepared>,
    start_watch: impl FnOnce() -> std::io::Result<()>,
) -> Result<(), RemoteError> {
    match prepared {
        Some(p) => p.apply(start_watch).map_err(|f| f.into_error().to_remote()),
        None => Ok(()),
    }
}

/// Whether `prepared` will apply a sandbox (and start the hang-up watch inside it).
pub(crate) fn is_active(prepared: &Option<Prepared>) -> bool {
    prepared.as_ref().is_some_and(|p| p.active)
}

/// `start`'s error when the server's sandbox failed: `Error::Sandbox` instead of the raw reply.
pub(crate) fn ready_error(e: Error) -> Error {
    match &e {
        Error::Remote(r) => match SandboxError::from_remote(r) {
            Some(s) => Error::Sandbox(s),
            None => e,
        },
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_round_trips_through_the_wire_reply() {
        let e = SandboxError::new(
            Layer::Landlock,
            "landlock_restrict_self: Operation not permitted",
        );
        let remote = e.to_remote();
        assert_eq!(remote.kind().as_str(), "sandbox");
        assert_eq!(SandboxError::from_remote(&remote), Some(e));
    }

    #[test]
    fn empty_sandbox_prepares_to_nothing() {
        let p = Sandbox::new().prepare().unwrap();
        assert!(!p.active);
        assert!(!p.report.no_new_privs);
        assert_eq!(p.report.to_string(), "sandbox: empty (nothing restricted)");
    }

    #[test]
    fn no_new_privs_is_on_by_default_with_any_layer() {
        let r = Sandbox::new()
            .limit(Limit::OpenFiles(1000))
            .check()
            .unwrap();
        assert!(r.no_new_privs);
        assert!(r.capabilities_dropped);
    }

    #[test]
    fn landlock_without_no_new_privs_is_refused() {
        let e = Sandbox::new()
            .landlock(Landlock::new())
            .no_new_privs(false)
            .check()
            .unwrap_err();
        match e {
            Error::Sandbox(s) => assert_eq!(s.layer(), Layer::NoNewPrivs),
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn thread_count_is_parsed_from_proc_stat() {
        let stat = b"4242 (a) b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 7 0 5 0";
        assert_eq!(thread_count(stat), Some(7));
        let mut buf = [0u8; 1024];
        let n = read_small_file(c"/proc/self/stat", &mut buf).unwrap();
        assert!(thread_count(&buf[..n]).unwrap() >= 1);
    }

    #[test]
    fn this_thread_count_is_read() {
        // The test harness runs tests on several threads: this process is not single-threaded.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        let f = check_single_thread().unwrap_err();
        drop(tx);
        let _ = other.join();
        assert_eq!(f.layer, Layer::Threads);
    }
}
