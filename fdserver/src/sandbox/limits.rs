//! Resource limits (`setrlimit`): both the soft and the hard limit are set, so the server cannot
//! raise them again.

use std::fmt;
use std::time::Duration;

use super::{fail, privileges, Caller, Fail, Layer};
use crate::error::Error;

/// A resource limit for a sandboxed server. Each sets the soft and the hard limit.
///
/// | limit | over it | the server keeps serving? |
/// |---|---|---|
/// | `AddressSpace(bytes)` | `mmap`/`brk` fail with `ENOMEM`: `Vec::try_reserve` returns `Err`, an infallible allocation aborts the server | with `try_reserve`, yes |
/// | `OpenFiles(n)` | opening, duplicating or receiving a descriptor numbered `n` or more fails (`EMFILE`; a received one is a truncated control message, an error) | yes |
/// | `CpuTime(d)` | at `d` of CPU time (counted from the fork) the server gets SIGXCPU, which ends it; SIGKILL a second later if it handles that | no: it ends |
/// | `FileSize(bytes)` | a write that would grow a file past `bytes` fails with `EFBIG` (SIGXFSZ is ignored, unless the server handles it) | yes |
/// | `Processes(n)` | `fork`/`clone` fail with `EAGAIN` once the server's *user* has `n` processes, counted system-wide, the server included | yes |
///
/// `Processes` counts threads too, and a forked server always has two: its loop's and the
/// runtime's hang-up watch (which ends it once its client is gone), so `Processes(2)` lets it
/// start no process or thread of its own. It counts every process of the server's real user
/// id, not just the server's
/// children, and the kernel never applies it to root (uid 0): use it with an
/// [`Identity`](super::Identity) of a user of its own (`start` refuses it for uid 0). To forbid
/// new processes outright, [`Preset::NoNewProcesses`](super::Preset::NoNewProcesses) is simpler.
/// `OpenFiles` leaves open the descriptors the server already holds, even numbered above `n`.
///
/// ```
/// use std::time::Duration;
/// use fdserver::sandbox::{Limit, Sandbox};
///
/// let sandbox = Sandbox::new()
///     .limit(Limit::AddressSpace(1 << 30))
///     .limit(Limit::OpenFiles(64))
///     .limit(Limit::CpuTime(Duration::from_secs(60)))
///     .limit(Limit::FileSize(0));              // may not write to any file
/// # let _ = sandbox;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// `RLIMIT_AS`: bytes of virtual address space.
    AddressSpace(u64),
    /// `RLIMIT_NOFILE`: one more than the highest descriptor number that can be opened.
    OpenFiles(u64),
    /// `RLIMIT_CPU`: CPU time, in whole seconds (rounded up).
    CpuTime(Duration),
    /// `RLIMIT_FSIZE`: the largest file, in bytes, the server may create or grow.
    FileSize(u64),
    /// `RLIMIT_NPROC`: processes (and threads) of the server's real user id.
    Processes(u64),
}

impl Limit {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Limit::AddressSpace(_) => "address space",
            Limit::OpenFiles(_) => "open files",
            Limit::CpuTime(_) => "CPU time",
            Limit::FileSize(_) => "file size",
            Limit::Processes(_) => "processes",
        }
    }

    /// `(soft, hard)`.
    fn values(&self) -> (u64, u64) {
        match *self {
            Limit::AddressSpace(n)
            | Limit::OpenFiles(n)
            | Limit::FileSize(n)
            | Limit::Processes(n) => (n, n),
            // SIGXCPU at the soft limit; SIGKILL at the hard one, should it be handled.
            Limit::CpuTime(d) => {
                let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
                (secs, secs.saturating_add(1))
            }
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::AddressSpace(n) => write!(f, "address space {n} bytes"),
            Limit::OpenFiles(n) => write!(f, "open files {n}"),
            Limit::CpuTime(_) => write!(f, "CPU time {} s", self.values().0),
            Limit::FileSize(n) => write!(f, "file size {n} bytes"),
            Limit::Processes(n) => write!(f, "processes {n}"),
        }
    }
}

/// The limits to set in the child.
pub(crate) struct Rlimits {
    list: Vec<Limit>,
}

fn get(limit: &Limit) -> libc::rlimit {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through the pointer.
    unsafe { libc::getrlimit(resource(limit), &mut r) };
    r
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

/// The `RLIMIT_*` constant (its type differs between C libraries).
fn resource(limit: &Limit) -> Resource {
    match limit {
        Limit::AddressSpace(_) => libc::RLIMIT_AS,
        Limit::OpenFiles(_) => libc::RLIMIT_NOFILE,
        Limit::CpuTime(_) => libc::RLIMIT_CPU,
        Limit::FileSize(_) => libc::RLIMIT_FSIZE,
        Limit::Processes(_) => libc::RLIMIT_NPROC,
    }
}

/// Checks the limits before the fork: the kernel exempts uid 0 from `Processes`, and only
/// `CAP_SYS_RESOURCE` may raise a hard limit.
pub(crate) fn prepare(limits: &[Limit], final_uid: u32, me: &Caller) -> Result<Rlimits, Error> {
    for l in limits {
        if let Limit::Processes(_) = l {
            if final_uid == 0 {
                return Err(fail(
                    Layer::Limits,
                    "the processes limit does not apply to root (the kernel exempts uid 0): run \
                     the server as a user of its own (Sandbox::identity), or forbid new \
                     processes with Preset::NoNewProcesses",
                ));
            }
        }
        if let Limit::CpuTime(d) = l {
            if d.is_zero() {
                return Err(fail(
                    Layer::Limits,
                    "a CPU time limit of 0 means no limit to the kernel: give at least 1 second",
                ));
            }
        }
        let (_, hard) = l.values();
        let current = get(l).rlim_max;
        if hard > current && !me.has_cap(privileges::CAP_SYS_RESOURCE) {
            return Err(fail(
                Layer::Limits,
                format!(
                    "{l} is above this process's hard limit ({current}), and raising it needs \
                     CAP_SYS_RESOURCE: ask for {current} or less, or start the server as root"
                ),
            ));
        }
    }
    Ok(Rlimits {
        list: limits.to_vec(),
    })
}

impl Rlimits {
    pub(crate) fn apply(&self) -> Result<(), Fail> {
        for l in &self.list {
            let (soft, hard) = l.values();
            let r = libc::rlimit {
                rlim_cur: soft as libc::rlim_t,
                rlim_max: hard as libc::rlim_t,
            };
            // SAFETY: setrlimit reads one rlimit through the pointer.
            if unsafe { libc::setrlimit(resource(l), &r) } != 0 {
                return Err(Fail::os(Layer::Limits, set_what(l)));
            }
            if let Limit::FileSize(_) = l {
                ignore_sigxfsz()?;
            }
        }
        Ok(())
    }
}

fn set_what(l: &Limit) -> &'static str {
    match l {
        Limit::AddressSpace(_) => "setrlimit(RLIMIT_AS)",
        Limit::OpenFiles(_) => "setrlimit(RLIMIT_NOFILE)",
        Limit::CpuTime(_) => "setrlimit(RLIMIT_CPU)",
        Limit::FileSize(_) => "setrlimit(RLIMIT_FSIZE)",
        Limit::Processes(_) => "setrlimit(RLIMIT_NPROC)",
    }
}

/// A write past the file-size limit raises SIGXFSZ, whose default action ends the process: make
/// it fail with `EFBIG` instead, unless the server handles the signal itself.
fn ignore_sigxfsz() -> Result<(), Fail> {
    // SAFETY: an all-zero sigaction is a valid out-value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action only queries the current one.
    if unsafe { libc::sigaction(libc::SIGXFSZ, std::ptr::null(), &mut old) } != 0 {
        return Err(Fail::os(Layer::Limits, "sigaction(SIGXFSZ)"));
    }
    if old.sa_sigaction != libc::SIG_DFL {
        return Ok(());
    }
    // SAFETY: an all-zero sigaction with SIG_IGN is a valid action.
    let mut ign: libc::sigaction = unsafe { std::mem::zeroed() };
    ign.sa_sigaction = libc::SIG_IGN;
    // SAFETY: valid new action; the old one is not wanted.
    if unsafe { libc::sigaction(libc::SIGXFSZ, &ign, std::ptr::null_mut()) } != 0 {
        return Err(Fail::os(Layer::Limits, "sigaction(SIGXFSZ)"));
    }
    Ok(())
}
