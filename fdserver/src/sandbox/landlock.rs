//! Landlock: the filesystem (and signals, abstract UNIX sockets) restricted to what is listed.
//!
//! The ruleset is built in the parent with the `landlock` crate (the Landlock maintainers'
//! own, which handles the differences between ABIs): the paths are opened there, so a missing
//! one fails `start` before the fork; the child inherits the ruleset's descriptor and only makes
//! the one `landlock_restrict_self` call.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, BitFlags, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};

use super::{fail, Fail, Layer};
use crate::error::Error;

/// The highest Landlock ABI whose rights fdserver asks for: every filesystem right up to ABI 5
/// (device ioctls) and the scopes of ABI 6. Fixed rather than "whatever the kernel has", as
/// the `landlock` crate recommends, so that a kernel upgrade never changes what a server may do.
const TARGET: ABI = ABI::V6;
const TARGET_NUM: i32 = 6;

/// Landlock rules for a sandboxed server: it may read the `read_only` paths, read and write the
/// `read_write` ones, read and execute the `executable` ones, each with everything beneath, and
/// nothing else on the filesystem. It may also not signal processes outside the sandbox nor
/// connect to abstract UNIX sockets created outside it (Landlock's scopes).
///
/// | rule | grants (on a directory: to everything beneath it) |
/// |---|---|
/// | `read_only` | read files, list directories |
/// | `read_write` | that, and write, truncate, create and remove files, directories, symbolic links, FIFOs and sockets, rename and link within the granted trees, device ioctls |
/// | `executable` | read and execute files, list directories |
///
/// Everything fdserver asks of Landlock needs ABI 6 (Linux 6.12); `start` fails on an older
/// kernel unless you accept less with [`best_effort`](Self::best_effort), and then
/// [`SandboxReport::landlock`](super::SandboxReport::landlock) says what is missing.
/// Descriptors opened before the sandbox keep working whatever the rules.
///
/// ```
/// use fdserver::sandbox::{Landlock, Sandbox};
///
/// let sandbox = Sandbox::new().landlock(
///     Landlock::new()
///         .read_only("/usr/share/zoneinfo")
///         .read_write(std::env::temp_dir()),
/// );
/// # let _ = sandbox;
/// // `Landlock::new()` alone: no filesystem access at all.
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "a Landlock does nothing until it is given to Sandbox::landlock"]
pub struct Landlock {
    read_only: Vec<PathBuf>,
    read_write: Vec<PathBuf>,
    executable: Vec<PathBuf>,
    best_effort: bool,
}

impl Landlock {
    /// No filesystem access at all (add paths with the methods below).
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows reading `path` (and, for a directory, everything beneath it).
    pub fn read_only(mut self, path: impl AsRef<Path>) -> Self {
        self.read_only.push(path.as_ref().to_owned());
        self
    }

    /// Allows reading and writing `path` (and everything beneath it).
    pub fn read_write(mut self, path: impl AsRef<Path>) -> Self {
        self.read_write.push(path.as_ref().to_owned());
        self
    }

    /// Allows reading and executing `path` (and everything beneath it).
    pub fn executable(mut self, path: impl AsRef<Path>) -> Self {
        self.executable.push(path.as_ref().to_owned());
        self
    }

    /// Accepts a kernel whose Landlock lacks some of what fdserver asks for (or has no Landlock
    /// at all): the rest is enforced, and the report says what is not.
    pub fn best_effort(mut self) -> Self {
        self.best_effort = true;
        self
    }

    /// The ruleset's descriptor (none when `best_effort` found no Landlock), and the report.
    pub(crate) fn prepare(&self) -> Result<(Option<OwnedFd>, LandlockReport), Error> {
        let kernel_abi = kernel_abi();
        let level = if self.best_effort {
            CompatLevel::BestEffort
        } else {
            CompatLevel::HardRequirement
        };
        let handled = AccessFs::from_all(TARGET);
        let scopes = Scope::from_all(TARGET);
        let mut report = LandlockReport {
            kernel_abi,
            fully_enforced: kernel_abi >= TARGET_NUM,
            not_enforced: Vec::new(),
        };
        if kernel_abi < TARGET_NUM {
            report.not_enforced = missing(kernel_abi);
            if !self.best_effort {
                return Err(fail(
                    Layer::Landlock,
                    format!(
                        "{}; fdserver's Landlock rules need ABI {TARGET_NUM} (Linux 6.12), \
                         and without it could not restrict: {}. Use a newer kernel, or accept \
                         less with Landlock::best_effort()",
                        describe_kernel(kernel_abi),
                        report.not_enforced.join(", ")
                    ),
                ));
            }
            if kernel_abi <= 0 {
                // Nothing to create; the report says so.
                return Ok((None, report));
            }
        }
        let err =
            |what: &str, e: landlock::RulesetError| fail(Layer::Landlock, format!("{what}: {e}"));
        let mut ruleset = Ruleset::default()
            .set_compatibility(level)
            .handle_access(handled)
            .map_err(|e| err("handling the filesystem rights", e))?
            .scope(scopes)
            .map_err(|e| err("adding the scopes", e))?
            .create()
            .map_err(|e| err("landlock_create_ruleset", e))?;
        let read = AccessFs::ReadFile | AccessFs::ReadDir;
        let write = AccessFs::from_write(TARGET) & !(AccessFs::MakeChar | AccessFs::MakeBlock);
        let exec = read | AccessFs::Execute;
        let groups: [(&[PathBuf], BitFlags<AccessFs>); 3] = [
            (&self.read_only, read),
            (&self.read_write, read | write),
            (&self.executable, exec),
        ];
        for (paths, access) in groups {
            for path in paths {
                let fd = PathFd::new(path).map_err(|e| {
                    // The crate's text repeats the path; say it once.
                    let why = match &e {
                        landlock::PathFdError::OpenCall { source, .. } => source.to_string(),
                        other => other.to_string(),
                    };
                    fail(
                        Layer::Landlock,
                        format!("cannot open {} for a rule: {why}", path.display()),
                    )
                })?;
                // A rule on a file can only carry the rights that apply to files.
                let access = if is_dir(fd.as_fd().as_raw_fd()) {
                    access
                } else {
                    access & AccessFs::from_file(TARGET)
                };
                ruleset = ruleset
                    .add_rule(PathBeneath::new(fd, access))
                    .map_err(|e| {
                        fail(
                            Layer::Landlock,
                            format!("adding the rule for {}: {e}", path.display()),
                        )
                    })?;
            }
        }
        // The crate holds no descriptor for a ruleset it could not create (best effort on a
        // kernel without the rights asked for).
        Ok((ruleset.into(), report))
    }
}

fn is_dir(fd: RawFd) -> bool {
    // SAFETY: an all-zero stat is a valid out-value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a descriptor we own, writing into `st`.
    unsafe { libc::fstat(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR }
}

/// The running kernel's Landlock ABI: `landlock_create_ruleset(NULL, 0, VERSION)`; 0 when
/// Landlock is not built in, -1 when it is disabled at boot.
pub(crate) fn kernel_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer and size 0, this flag only returns the ABI version.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if r >= 0 {
        return r as i32;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EOPNOTSUPP) => -1,
        _ => 0,
    }
}

fn describe_kernel(abi: i32) -> String {
    match abi {
        i32::MIN..=-1 => "this kernel has Landlock but it is disabled (add `landlock` to the \
                          `lsm=` boot parameter)"
            .to_owned(),
        0 => {
            "this kernel has no Landlock (Linux 5.13 or later, built with CONFIG_SECURITY_LANDLOCK)"
                .to_owned()
        }
        n => format!("this kernel's Landlock is ABI {n}"),
    }
}

/// What a kernel with Landlock ABI `abi` cannot restrict of what fdserver asks for.
fn missing(abi: i32) -> Vec<&'static str> {
    let all: [(i32, &'static str); 6] = [
        (1, "the filesystem (Landlock itself)"),
        (2, "renaming and linking across directories"),
        (3, "truncating files"),
        (5, "ioctl on devices"),
        (6, "signals to processes outside the sandbox"),
        (6, "connecting to abstract UNIX sockets outside the sandbox"),
    ];
    all.iter()
        .filter(|(needs, _)| abi < *needs)
        .map(|&(_, what)| what)
        .collect()
}

/// Applies the ruleset to the calling thread (and everything it starts later), then closes it.
/// `no_new_privs` is already set (step 3).
pub(crate) fn apply(ruleset: OwnedFd) -> Result<(), Fail> {
    // SAFETY: landlock_restrict_self(ruleset_fd, flags) takes integers only; the descriptor
    // is a Landlock ruleset we own.
    let r = unsafe {
        libc::syscall(
            libc::SYS_landlock_restrict_self,
            ruleset.as_raw_fd(),
            0 as libc::c_uint,
        )
    };
    if r != 0 {
        return Err(Fail::os(Layer::Landlock, "landlock_restrict_self"));
    }
    Ok(())
}

/// What Landlock enforces for a server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LandlockReport {
    /// The running kernel's Landlock ABI (0: no Landlock; -1: disabled at boot).
    pub kernel_abi: i32,
    /// Whether everything fdserver asks of Landlock is enforced.
    pub fully_enforced: bool,
    /// What is not restricted, on an older kernel (only with `best_effort`).
    pub not_enforced: Vec<&'static str>,
}

impl fmt::Display for LandlockReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel ABI {}, rules of ABI {TARGET_NUM}",
            self.kernel_abi
        )?;
        if self.fully_enforced {
            f.write_str(", fully enforced")
        } else {
            write!(f, ", NOT restricted: {}", self.not_enforced.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_kernels_are_reported_with_what_they_miss() {
        assert_eq!(missing(6), Vec::<&str>::new());
        assert_eq!(
            missing(4),
            [
                "ioctl on devices",
                "signals to processes outside the sandbox",
                "connecting to abstract UNIX sockets outside the sandbox"
            ]
        );
        assert_eq!(missing(0).len(), 6);
    }

    #[test]
    fn a_missing_path_fails_before_the_fork() {
        if kernel_abi() < TARGET_NUM {
            return;
        }
        let e = Landlock::new()
            .read_only("/nonexistent/fdserver-test")
            .prepare()
            .expect_err("missing path refused");
        let text = e.to_string();
        assert!(text.contains("/nonexistent/fdserver-test"), "{text}");
    }
}
