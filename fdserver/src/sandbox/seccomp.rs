//! Seccomp: system calls the server may not make, as BPF filters compiled by `seccompiler`
//! (rust-vmm's, pure Rust, used by Firecracker) in the parent and installed last in the child.

use std::collections::BTreeMap;
use std::fmt;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::{fail, Fail, Layer};
use crate::error::Error;

/// A system call number (`libc::SYS_*`).
pub type Syscall = libc::c_long;

/// Groups of system calls a sandboxed server should never need.
///
/// | preset | denies | the server can still |
/// |---|---|---|
/// | `NoNetwork` | `socket` of any family but `AF_UNIX` | use sockets it holds or receives; create UNIX sockets |
/// | `NoExec` | `execve`, `execveat` | everything else |
/// | `NoNewProcesses` | `fork`, `vfork`, `clone` without `CLONE_THREAD`; `clone3` fails with `ENOSYS` (its flags cannot be inspected), so the C library falls back to `clone` and threads still work | start threads |
///
/// Every preset also denies `io_uring_setup`, `io_uring_enter` and `io_uring_register`:
/// io_uring performs operations (opening sockets among them) without passing through seccomp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Preset {
    /// No network sockets.
    NoNetwork,
    /// No `execve`.
    NoExec,
    /// No new processes (threads are allowed).
    NoNewProcesses,
}

impl Preset {
    fn as_str(self) -> &'static str {
        match self {
            Preset::NoNetwork => "no network",
            Preset::NoExec => "no exec",
            Preset::NoNewProcesses => "no new processes",
        }
    }
}

/// What a denied system call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// It fails with this errno (the default: `EPERM`), and the server goes on.
    Errno(i32),
    /// The whole server is killed at once by SIGSYS (`SECCOMP_RET_KILL_PROCESS`, Linux 4.14);
    /// its client sees [`Error::ServerExited`](crate::Error::ServerExited).
    Kill,
}

impl Default for Violation {
    fn default() -> Self {
        Violation::Errno(libc::EPERM)
    }
}

impl Violation {
    fn action(self) -> SeccompAction {
        match self {
            Violation::Errno(e) => SeccompAction::Errno(e as u32),
            Violation::Kill => SeccompAction::KillProcess,
        }
    }
}

/// A seccomp filter for a sandboxed server: presets, an explicit deny list, and optionally an
/// allow list (everything else denied).
///
/// ```
/// use fdserver::sandbox::{Preset, Sandbox, Seccomp, Violation};
///
/// // Deny-list: these fail with EPERM, everything else is allowed.
/// let parser = Seccomp::new()
///     .preset(Preset::NoNetwork)
///     .preset(Preset::NoExec)
///     .preset(Preset::NoNewProcesses)
///     .deny([libc::SYS_ptrace]);
///
/// // Allow-list: only fdserver's own system calls (`Seccomp::RUNTIME`) and these; anything
/// // else kills the server.
/// let strict = Seccomp::new()
///     .allow_only([libc::SYS_lseek, libc::SYS_newfstatat])
///     .on_violation(Violation::Kill);
/// # let _ = (Sandbox::new().seccomp(parser), strict);
/// ```
///
/// The filters are installed on every thread (`SECCOMP_FILTER_FLAG_TSYNC`), check the
/// architecture (a 32-bit system call on x86_64 kills the server), and on a kernel that runs
/// x32 binaries also deny the x32 numbers of every denied call. The filter's behaviour on
/// `clone3` is fixed: wherever it would be denied, it fails with `ENOSYS` instead, so that
/// thread creation falls back to `clone`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "a Seccomp does nothing until it is given to Sandbox::seccomp"]
pub struct Seccomp {
    presets: Vec<Preset>,
    deny: Vec<Syscall>,
    allow_only: Option<Vec<Syscall>>,
    violation: Violation,
}

impl Seccomp {
    /// The system calls fdserver's runtime makes in a server once the sandbox is applied: its
    /// loop's (reading and writing its socket, passing descriptors both ways, `sendmmsg` for a
    /// reply that carries one, waiting in `poll`, its signal handling, memory, shutting its
    /// socket down for writing when the loop ends, exit), std's for the standard streams, and
    /// those of its hang-up watch thread (`ppoll`, `clock_gettime`, `getpid`, `tgkill`).
    /// [`allow_only`](Self::allow_only) always allows them, and [`deny`](Self::deny) refuses
    /// to deny them (`start` fails, naming the call and what the runtime needs it for).
    ///
    /// The list was checked by running every kind of typed call, descriptor passing both
    /// ways, large (`ok_scalar`) replies, signals, `stop` (also of a server stuck in a
    /// handler) and a client killed mid-call under `strace -f`, and is tested under
    /// `allow_only` with [`Violation::Kill`]. It does not cover what your own code makes std
    /// do: starting a thread (`clone3`/`clone`, `set_robust_list`, `rseq`, ...),
    /// `std::thread::sleep` (`clock_nanosleep`), `File::read_to_string` (`statx`, `lseek`), or
    /// a panic while `RUST_BACKTRACE` is set (the backtrace is symbolised from the binary:
    /// `openat`, `statx`, ...). Add those to the allow list if your handlers need them.
    #[cfg(target_arch = "x86_64")]
    pub const RUNTIME: &'static [Syscall] = &[
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_sendmmsg,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_poll,
        libc::SYS_ppoll,
        libc::SYS_close,
        libc::SYS_shutdown,
        libc::SYS_fcntl,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigaction,
        libc::SYS_sigaltstack,
        libc::SYS_restart_syscall,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_tgkill,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_brk,
        libc::SYS_madvise,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_clock_gettime,
        libc::SYS_getrandom,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ];

    /// The system calls fdserver's server loop makes once the sandbox is applied.
    #[cfg(not(target_arch = "x86_64"))]
    pub const RUNTIME: &'static [Syscall] = &[
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_recvmsg,
        libc::SYS_sendmsg,
        libc::SYS_sendmmsg,
        libc::SYS_recvfrom,
        libc::SYS_sendto,
        libc::SYS_ppoll,
        libc::SYS_close,
        libc::SYS_shutdown,
        libc::SYS_fcntl,
        libc::SYS_rt_sigreturn,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigaction,
        libc::SYS_sigaltstack,
        libc::SYS_restart_syscall,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_tgkill,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_brk,
        libc::SYS_madvise,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_clock_gettime,
        libc::SYS_getrandom,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ];

    /// A filter that denies nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Denies a group of system calls.
    pub fn preset(mut self, preset: Preset) -> Self {
        if !self.presets.contains(&preset) {
            self.presets.push(preset);
        }
        self
    }

    /// Denies these system calls (`libc::SYS_*`), whatever their arguments.
    ///
    /// The calls fdserver's runtime makes in the server ([`RUNTIME`](Self::RUNTIME)) cannot be
    /// denied: denying `tgkill` would disable the hang-up watch (a server stuck in a handler
    /// would outlive its client), `sendmsg` or `poll` the server loop. `start` (and
    /// [`Sandbox::check`](super::Sandbox::check)) then fails with [`Error::Sandbox`] naming the
    /// call and what the runtime needs it for.
    ///
    /// ```
    /// use fdserver::sandbox::{Layer, Sandbox, Seccomp};
    ///
    /// let e = Sandbox::new()
    ///     .seccomp(Seccomp::new().deny([libc::SYS_ptrace, libc::SYS_tgkill]))
    ///     .check()
    ///     .unwrap_err();
    /// assert!(matches!(&e, fdserver::Error::Sandbox(s) if s.layer() == Layer::Seccomp));
    /// assert!(e.to_string().contains("`tgkill`"));
    /// ```
    pub fn deny(mut self, syscalls: impl IntoIterator<Item = Syscall>) -> Self {
        self.deny.extend(syscalls);
        self
    }

    /// Denies every system call but these and [`RUNTIME`](Self::RUNTIME) (repeatable: the
    /// lists add up). Presets and [`deny`](Self::deny) still apply on top.
    pub fn allow_only(mut self, syscalls: impl IntoIterator<Item = Syscall>) -> Self {
        self.allow_only
            .get_or_insert_with(Vec::new)
            .extend(syscalls);
        self
    }

    /// What a denied call does (default: fail with `EPERM`).
    pub fn on_violation(mut self, violation: Violation) -> Self {
        self.violation = violation;
        self
    }

    pub(crate) fn prepare(&self) -> Result<(Filters, SeccompReport), Error> {
        self.prepare_for(x32_enabled())
    }

    /// `prepare`, for a kernel that does (`x32`) or does not run x32 system calls.
    fn prepare_for(&self, x32: bool) -> Result<(Filters, SeccompReport), Error> {
        let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|_| {
            fail(
                Layer::Seccomp,
                format!(
                    "fdserver's seccomp filters support x86_64, aarch64 and riscv64, not {}",
                    std::env::consts::ARCH
                ),
            )
        })?;
        if let Violation::Errno(e) = self.violation {
            if !(1..=4095).contains(&e) {
                return Err(fail(
                    Layer::Seccomp,
                    format!("Violation::Errno({e}): an errno is between 1 and 4095"),
                ));
            }
        }
        let violation = self.violation.action();
        let compile = |rules: BTreeMap<i64, Vec<SeccompRule>>,
                       mismatch: SeccompAction,
                       matched: SeccompAction|
         -> Result<BpfProgram, Error> {
            SeccompFilter::new(rules, mismatch, matched, arch)
                .and_then(BpfProgram::try_from)
                .map_err(|e| fail(Layer::Seccomp, format!("compiling the filter: {e}")))
        };

        // The deny list: presets and explicit denials.
        let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        let mut clone3_enosys = false;
        let cond = |arg: u8, len: SeccompCmpArgLen, op: SeccompCmpOp, value: u64| {
            SeccompCondition::new(arg, len, op, value)
                .and_then(|c| SeccompRule::new(vec![c]))
                .expect("a valid condition")
        };
        // An empty rule list matches the call whatever its arguments; conditions only narrow it.
        let add = |deny: &mut BTreeMap<i64, Vec<SeccompRule>>,
                   nr: i64,
                   rule: Option<SeccompRule>| {
            match (deny.get_mut(&nr), rule) {
                (Some(rules), _) if rules.is_empty() => {}
                (Some(rules), Some(r)) => rules.push(r),
                (Some(rules), None) => rules.clear(),
                (None, r) => {
                    deny.insert(nr, r.into_iter().collect());
                }
            }
        };
        if !self.presets.is_empty() {
            for nr in io_uring() {
                add(&mut deny, nr, None);
            }
        }
        for preset in &self.presets {
            match preset {
                Preset::NoNetwork => add(
                    &mut deny,
                    libc::SYS_socket,
                    Some(cond(
                        0,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Ne,
                        libc::AF_UNIX as u64,
                    )),
                ),
                Preset::NoExec => {
                    add(&mut deny, libc::SYS_execve, None);
                    add(&mut deny, libc::SYS_execveat, None);
                }
                Preset::NoNewProcesses => {
                    #[cfg(target_arch = "x86_64")]
                    {
                        add(&mut deny, libc::SYS_fork, None);
                        add(&mut deny, libc::SYS_vfork, None);
                    }
                    add(
                        &mut deny,
                        libc::SYS_clone,
                        Some(cond(
                            0,
                            SeccompCmpArgLen::Qword,
                            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
                            0,
                        )),
                    );
                    clone3_enosys = true;
                }
            }
        }
        for &nr in &self.deny {
            if nr == libc::SYS_seccomp || nr == libc::SYS_prctl {
                return Err(fail(
                    Layer::Seccomp,
                    "denying seccomp or prctl is not supported: fdserver installs its filters \
                     with them (and they can only restrict the server further)",
                ));
            }
            if let Some((name, why)) = runtime_call(nr) {
                return Err(fail(
                    Layer::Seccomp,
                    format!(
                        "the deny list has `{name}` (system call {nr}), which fdserver's runtime \
                         makes in the sandboxed server: {why}; remove it from `Seccomp::deny` \
                         (`Seccomp::RUNTIME` lists every call the runtime needs)"
                    ),
                ));
            }
            add(&mut deny, nr, None);
        }
        let denied: Vec<Syscall> = deny.keys().copied().collect();
        if x32 {
            // x32 system calls carry the same architecture tag as x86_64 ones: deny the x32
            // number of every denied call, and the x32-only entries (512 to 547) outright.
            const X32: i64 = 0x4000_0000;
            let mirrored: Vec<(i64, Vec<SeccompRule>)> =
                deny.iter().map(|(nr, r)| (nr | X32, r.clone())).collect();
            deny.extend(mirrored);
            for nr in 512..=547 {
                deny.insert(nr | X32, Vec::new());
            }
        }

        // The allow list, with the runtime's own calls.
        let allowed = self.allow_only.as_ref().map(|list| {
            let mut all: Vec<Syscall> = Self::RUNTIME
                .iter()
                .copied()
                .chain(list.iter().copied())
                .collect();
            all.sort_unstable();
            all.dedup();
            all
        });
        if let Some(list) = &allowed {
            if !list.contains(&libc::SYS_clone3) {
                clone3_enosys = true;
            }
        }

        // Installed in this order: each installation is a prctl and a seccomp call, which the
        // filters already in place must allow (the allow list, which does not, goes last).
        let mut programs = Vec::new();
        if clone3_enosys {
            let mut rules = BTreeMap::new();
            rules.insert(libc::SYS_clone3, Vec::new());
            programs.push(compile(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
            )?);
        }
        if !deny.is_empty() {
            programs.push(compile(deny, SeccompAction::Allow, violation.clone())?);
        }
        if let Some(list) = &allowed {
            let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
                list.iter().map(|&nr| (nr, Vec::new())).collect();
            // clone3 passes this filter so that the one above can answer ENOSYS.
            rules.insert(libc::SYS_clone3, Vec::new());
            programs.push(compile(rules, violation.clone(), SeccompAction::Allow)?);
        }
        let report = SeccompReport {
            presets: self.presets.clone(),
            denied,
            allowed,
            violation: self.violation,
            x32_denied: x32,
            instructions: programs.iter().map(Vec::len).sum(),
        };
        Ok((Filters { programs }, report))
    }
}

/// Why fdserver's runtime needs each call of [`Seccomp::RUNTIME`] (its name, and what for):
/// what [`Seccomp::deny`] says when it refuses one.
fn runtime_call(nr: Syscall) -> Option<(&'static str, &'static str)> {
    const MEMORY: &str = "the memory allocator needs it (requests and replies of any size are \
                          buffered in memory)";
    const STDIO: &str = "the server's standard streams use it (panic messages, the final flush \
                         of stdout), and std's I/O on descriptors";
    Some(match nr {
        libc::SYS_read => ("read", STDIO),
        libc::SYS_write => ("write", STDIO),
        libc::SYS_readv => ("readv", STDIO),
        libc::SYS_writev => ("writev", STDIO),
        libc::SYS_recvmsg => (
            "recvmsg",
            "the server loop reads requests, and the descriptors they carry, with it",
        ),
        libc::SYS_sendmsg => (
            "sendmsg",
            "the server loop writes replies that carry descriptors, and scalars, with it",
        ),
        libc::SYS_sendmmsg => (
            "sendmmsg",
            "a reply that carries a descriptor (a typed result holding a `File` or an \
             `OwnedFd`) goes out in one sendmmsg",
        ),
        libc::SYS_recvfrom => ("recvfrom", "std's socket reads use it"),
        libc::SYS_sendto => (
            "sendto",
            "the server loop writes replies with it (`send`: a message without descriptors), \
             and `start` waits for the \"ready\" message it sends; std's socket writes use it \
             too",
        ),
        #[cfg(target_arch = "x86_64")]
        libc::SYS_poll => (
            "poll",
            "the server loop waits in it for the next request and for signals",
        ),
        libc::SYS_ppoll => (
            "ppoll",
            "the hang-up watch thread waits in it for the client to go, then for its grace \
             periods (and poll is ppoll on some architectures)",
        ),
        libc::SYS_close => (
            "close",
            "descriptors received in requests, and those handed back in replies, are closed \
             with it",
        ),
        libc::SYS_shutdown => (
            "shutdown",
            "the loop shuts its socket down for writing when it ends, so that the client sees \
             end of stream at once",
        ),
        libc::SYS_fcntl => (
            "fcntl",
            "std and the runtime read and set descriptor flags with it (closing a descriptor \
             checks it first in debug builds)",
        ),
        libc::SYS_rt_sigreturn => (
            "rt_sigreturn",
            "every signal handler returns through it: the loop's own (SIGTERM, SIGINT and the \
             server's declared signals) included",
        ),
        libc::SYS_rt_sigprocmask => (
            "rt_sigprocmask",
            "the runtime masks and unmasks signals with it",
        ),
        libc::SYS_rt_sigaction => (
            "rt_sigaction",
            "the runtime sets and restores signal dispositions with it (`serve` restores the \
             caller's when its loop ends)",
        ),
        libc::SYS_sigaltstack => (
            "sigaltstack",
            "std sets up and removes threads' signal stacks with it",
        ),
        libc::SYS_restart_syscall => (
            "restart_syscall",
            "the kernel resumes a call that a handled signal interrupted with it",
        ),
        libc::SYS_getpid => (
            "getpid",
            "the hang-up watch and the signal handler find their own process with it",
        ),
        libc::SYS_gettid => (
            "gettid",
            "the signal handler checks with it whether it runs on the loop's thread",
        ),
        libc::SYS_tgkill => (
            "tgkill",
            "the hang-up watch thread sends the server SIGTERM and then SIGKILL with it once the \
             client is gone (without it a server stuck in a handler outlives its client), and a \
             signal caught on another thread is forwarded to the loop's with it",
        ),
        libc::SYS_mmap => ("mmap", MEMORY),
        libc::SYS_munmap => ("munmap", MEMORY),
        libc::SYS_mremap => ("mremap", MEMORY),
        libc::SYS_mprotect => ("mprotect", MEMORY),
        libc::SYS_brk => ("brk", MEMORY),
        libc::SYS_madvise => ("madvise", MEMORY),
        libc::SYS_futex => (
            "futex",
            "std's locks (stdout's, stderr's) and the start of the hang-up watch wait on futexes",
        ),
        libc::SYS_sched_yield => ("sched_yield", "std's locks yield with it"),
        libc::SYS_clock_gettime => (
            "clock_gettime",
            "deadlines and the hang-up watch's grace periods read the clock with it where the \
             vDSO does not answer",
        ),
        libc::SYS_getrandom => ("getrandom", "std's hash maps seed themselves with it"),
        libc::SYS_exit => ("exit", "the hang-up watch thread ends with it"),
        libc::SYS_exit_group => ("exit_group", "the server ends with it"),
        _ => return None,
    })
}

fn io_uring() -> [i64; 3] {
    [
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ]
}

/// Whether this kernel runs x32 system calls (`getpid` with the x32 bit set).
fn x32_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: getpid takes no arguments; with the x32 bit it either runs or fails ENOSYS.
        let r = unsafe { libc::syscall(0x4000_0000 | libc::SYS_getpid) };
        r >= 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The compiled filters, in installation order.
pub(crate) struct Filters {
    programs: Vec<BpfProgram>,
}

impl Filters {
    pub(crate) fn apply(&self) -> Result<(), Fail> {
        for program in &self.programs {
            if let Err(e) = seccompiler::apply_filter_all_threads(program) {
                return Err(match e {
                    seccompiler::Error::Prctl(io) => Fail::errno(
                        Layer::Seccomp,
                        "prctl(PR_SET_NO_NEW_PRIVS)",
                        io.raw_os_error().unwrap_or(libc::EIO),
                    ),
                    seccompiler::Error::Seccomp(io) => Fail::errno(
                        Layer::Seccomp,
                        "seccomp(SECCOMP_SET_MODE_FILTER)",
                        io.raw_os_error().unwrap_or(libc::EIO),
                    ),
                    seccompiler::Error::ThreadSync(_) => Fail::check(
                        Layer::Seccomp,
                        "another thread could not take the filter (SECCOMP_FILTER_FLAG_TSYNC)",
                    ),
                    _ => Fail::check(Layer::Seccomp, "installing the filter failed"),
                });
            }
        }
        Ok(())
    }
}

/// What the seccomp layer enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SeccompReport {
    /// The presets in force.
    pub presets: Vec<Preset>,
    /// Every system call the deny list matches (some only with certain arguments: `socket`,
    /// `clone`), presets included.
    pub denied: Vec<Syscall>,
    /// With [`Seccomp::allow_only`]: every system call allowed, the runtime's included.
    pub allowed: Option<Vec<Syscall>>,
    /// What a denied call does.
    pub violation: Violation,
    /// Whether the x32 numbers are denied too (on kernels that run x32 binaries).
    pub x32_denied: bool,
    /// BPF instructions over all filters (each runs on every system call).
    pub instructions: usize,
}

impl fmt::Display for SeccompReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let presets: Vec<&str> = self.presets.iter().map(|p| p.as_str()).collect();
        let calls = |n: usize| if n == 1 { "call" } else { "calls" };
        match &self.allowed {
            Some(list) => write!(f, "allow list of {} {}", list.len(), calls(list.len()))?,
            None => f.write_str("deny list")?,
        }
        if !presets.is_empty() {
            write!(f, ", presets: {}", presets.join(", "))?;
        }
        write!(
            f,
            ", {} {} denied, on violation: {}, {} BPF instructions",
            self.denied.len(),
            calls(self.denied.len()),
            match self.violation {
                Violation::Errno(libc::EPERM) => "fail with EPERM".to_owned(),
                Violation::Errno(libc::EACCES) => "fail with EACCES".to_owned(),
                Violation::Errno(e) => format!("fail with errno {e}"),
                Violation::Kill => "kill the server".to_owned(),
            },
            self.instructions
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_compile_to_filters() {
        let (filters, report) = Seccomp::new()
            .preset(Preset::NoNetwork)
            .preset(Preset::NoExec)
            .preset(Preset::NoNewProcesses)
            .prepare()
            .unwrap();
        // clone3's ENOSYS filter, then the deny list.
        assert_eq!(filters.programs.len(), 2);
        assert!(report.denied.contains(&libc::SYS_execve));
        assert!(report.denied.contains(&libc::SYS_socket));
        assert!(report.denied.contains(&libc::SYS_io_uring_setup));
        assert!(!report.denied.contains(&libc::SYS_clone3));
    }

    #[test]
    fn allow_list_includes_the_runtime() {
        let (filters, report) = Seccomp::new()
            .allow_only([libc::SYS_lseek])
            .prepare()
            .unwrap();
        assert_eq!(filters.programs.len(), 2);
        let allowed = report.allowed.unwrap();
        assert!(allowed.contains(&libc::SYS_lseek));
        assert!(Seccomp::RUNTIME.iter().all(|nr| allowed.contains(nr)));
    }

    #[test]
    fn the_report_counts_calls_in_english() {
        let (_, one) = Seccomp::new()
            .deny([libc::SYS_uname])
            .prepare_for(false)
            .unwrap();
        let text = one.to_string();
        assert!(text.starts_with("deny list, 1 call denied, "), "{text}");
        let (_, two) = Seccomp::new()
            .deny([libc::SYS_uname, libc::SYS_ptrace])
            .prepare_for(false)
            .unwrap();
        assert!(two.to_string().contains(", 2 calls denied, "), "{two}");
    }

    #[test]
    fn x32_numbers_are_denied_where_the_kernel_runs_them() {
        let (plain, _) = Seccomp::new()
            .preset(Preset::NoExec)
            .prepare_for(false)
            .unwrap();
        let (x32, report) = Seccomp::new()
            .preset(Preset::NoExec)
            .prepare_for(true)
            .unwrap();
        assert!(report.x32_denied);
        // The filter compares the call number with execve's x32 number, and the x32-only
        // entries (512..=547), only where the kernel runs x32.
        let compares = |f: &Filters, nr: i64| {
            f.programs
                .iter()
                .flatten()
                .any(|insn| i64::from(insn.k) == 0x4000_0000 | nr)
        };
        for nr in [libc::SYS_execve, 520, 547] {
            assert!(compares(&x32, nr), "{nr}");
            assert!(!compares(&plain, nr), "{nr}");
        }
    }

    #[test]
    fn every_runtime_call_says_why_it_is_needed() {
        for &nr in Seccomp::RUNTIME {
            assert!(runtime_call(nr).is_some(), "system call {nr}");
        }
        // And nothing else claims to be the runtime's.
        for nr in 0..1024 {
            assert_eq!(
                runtime_call(nr).is_some(),
                Seccomp::RUNTIME.contains(&nr),
                "system call {nr}"
            );
        }
    }

    #[test]
    fn denying_a_runtime_call_is_refused_naming_it() {
        for &nr in Seccomp::RUNTIME {
            let e = Seccomp::new().deny([nr]).prepare().err().expect("refused");
            let (name, _) = runtime_call(nr).unwrap();
            let text = e.to_string();
            assert!(text.contains(&format!("`{name}`")), "{text}");
            assert!(text.contains("Seccomp::RUNTIME"), "{text}");
        }
        let e = Seccomp::new()
            .deny([libc::SYS_ptrace, libc::SYS_tgkill])
            .prepare()
            .err()
            .expect("refused");
        assert!(e.to_string().contains("hang-up watch"), "{e}");
    }

    #[test]
    fn no_preset_denies_a_runtime_call() {
        for preset in [Preset::NoNetwork, Preset::NoExec, Preset::NoNewProcesses] {
            let (_, report) = Seccomp::new().preset(preset).prepare().unwrap();
            for nr in &report.denied {
                assert!(!Seccomp::RUNTIME.contains(nr), "{preset:?} denies {nr}");
            }
        }
    }

    #[test]
    fn denying_the_installers_is_refused() {
        assert!(Seccomp::new().deny([libc::SYS_prctl]).prepare().is_err());
        assert!(Seccomp::new()
            .on_violation(Violation::Errno(0))
            .prepare()
            .is_err());
    }
}
