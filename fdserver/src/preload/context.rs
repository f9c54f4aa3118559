//! What a command runs *in*, beyond the attributes a worker takes on (`attrs`): its sandbox
//! (capabilities, `no_new_privs`, seccomp, namespaces, cgroup, groups), whether it is traced,
//! the loader's variables, its terminal's job control. A worker cannot take any of these on: it
//! is forked from a template that lives in the server's context. So when the client's context
//! differs from the template's, the preloader does not run the command in a worker:
//!
//! * the client is more confined, or just elsewhere (another namespace, a tracer, a background
//!   job on its terminal...): the command runs in the client, as with `FDSERVER_PRELOAD=0`
//!   ([`Verdict::InProcess`]);
//! * the template is more confined than the client, and the client is nowhere more confined
//!   than the template (a server started by a command under `ulimit`, `nice`, `setpriv`, or
//!   in a limited cgroup): the client replaces the server with one started under its own,
//!   wider, context ([`Verdict::Replace`]); the old one's running commands finish.
//!
//! The security-relevant part of the client's context is read by the template from the kernel
//! (`/proc/<pid>` of the peer of the client's socket, pinned by its pidfd), never taken from
//! what the client says: any process of the user's uid that can reach the socket may send a
//! command, including one in a sandbox. What `/proc` cannot show (a Landlock domain, a security
//! module's ptrace rule) the server checks before: the client must prove it may inspect the
//! server (`os::Proof`). The rest (tracer, loader variables, terminal) is checked by the client
//! itself, before it contacts the server.
//!
//! Cost on the warm path: in the template, one read of the client's `/proc/<pid>/status` and
//! `cgroup` and a `readlinkat` per namespace (about 20 system calls); in the client, one `kcmp`
//! pair and up to three `ioctl`s on its terminal.

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use super::os;

/// The namespaces compared, as `/proc/<pid>/ns` names them.
const NAMESPACES: [&str; 10] = [
    "cgroup",
    "ipc",
    "mnt",
    "net",
    "pid",
    "pid_for_children",
    "time",
    "time_for_children",
    "user",
    "uts",
];

/// Capability sets in `/proc/<pid>/status` order.
const CAP_SETS: [&str; 5] = ["CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"];
/// `CAP_SYS_NICE` and `CAP_SYS_RESOURCE` (linux/capability.h).
const CAP_SYS_NICE: u32 = 23;
const CAP_SYS_RESOURCE: u32 = 24;

/// Variables a process reads once, when it starts (the dynamic loader, the C library's tunables
/// and allocator): a worker, forked long after, cannot honour a value that differs from its
/// template's.
pub(crate) fn is_loader_var(name: &[u8]) -> bool {
    name.starts_with(b"LD_") || name == b"GLIBC_TUNABLES" || name.starts_with(b"MALLOC_")
}

/// Loader variables that only inject code (preloaded libraries, audit modules): never needed to
/// run the program, so the server and its templates start without them, and a client that has
/// one runs in-process.
pub(crate) const INJECTED: [&str; 2] = ["LD_PRELOAD", "LD_AUDIT"];

/// The loader variables among `KEY=VALUE` entries, sorted (see [`is_loader_var`]).
pub(crate) fn loader_entries<'a>(entries: impl Iterator<Item = &'a [u8]>) -> Vec<&'a [u8]> {
    let mut out: Vec<&[u8]> = entries
        .filter(|kv| {
            let name = kv.split(|&b| b == b'=').next().unwrap_or(kv);
            is_loader_var(name)
        })
        .collect();
    out.sort_unstable();
    out
}

/// What the client and the template are compared on, read from `/proc/<pid>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProcessContext {
    pid: i32,
    no_new_privs: bool,
    seccomp_filters: u32,
    /// Inheritable, permitted, effective, bounding, ambient.
    caps: [u64; 5],
    tracer: u32,
    /// The `Uid:` line (real, effective, saved, filesystem).
    uids: String,
    /// The `Gid:` line (real, effective, saved, filesystem).
    gids: String,
    groups: Vec<u32>,
    /// The inode of each of [`NAMESPACES`].
    ns: [u64; NAMESPACES.len()],
    /// Why the namespaces could not be read (`EACCES`: the reader may not inspect this
    /// process: it is not dumpable, or the reader is confined where it is not).
    ns_error: Option<String>,
    /// `/proc/<pid>/cgroup`.
    cgroup: String,
    /// The security module's label (`/proc/<pid>/attr/current`: an AppArmor profile, an
    /// SELinux context), or why it could not be read (`EINVAL` without such a module).
    lsm: String,
}

impl ProcessContext {
    /// This process's context.
    pub(crate) fn of_this_process() -> Result<ProcessContext, String> {
        let dir = open_proc(c"/proc/self")
            .map_err(|e| format!("cannot read /proc/self (is /proc mounted?): {e}"))?;
        ProcessContext::read(dir.as_fd(), crate::sys::getpid() as i32)
    }

    /// The context of the process at the other end of `sock` (the one that connected), from
    /// the kernel. Its `/proc` directory is opened by the pid `SO_PEERCRED` gives, then pinned:
    /// the peer must still be running once it is open (checked on its pidfd), so that the pid
    /// was not recycled in between, and what is read through the open directory is the
    /// peer's.
    pub(crate) fn of_peer(sock: BorrowedFd<'_>) -> Result<ProcessContext, String> {
        let (dir, pid) = peer_dir(sock)?;
        ProcessContext::read(dir.as_fd(), pid)
    }

    fn read(dir: BorrowedFd<'_>, pid: i32) -> Result<ProcessContext, String> {
        let status = read_at(dir, c"status").map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        let status = String::from_utf8_lossy(&status);
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
        };
        let hex = |key: &str| field(key).and_then(|v| u64::from_str_radix(v, 16).ok());
        let mut caps = [0u64; 5];
        for (slot, key) in caps.iter_mut().zip(CAP_SETS) {
            *slot = hex(key).ok_or_else(|| format!("/proc/{pid}/status has no {key}"))?;
        }
        let seccomp_filters = match field("Seccomp_filters:").and_then(|v| v.parse().ok()) {
            Some(n) => n,
            None => u32::from(field("Seccomp:").is_some_and(|v| v != "0")),
        };
        let mut groups: Vec<u32> = field("Groups:")
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|g| g.parse().ok())
            .collect();
        groups.sort_unstable();
        let mut ns = [0u64; NAMESPACES.len()];
        let mut ns_error = None;
        for (slot, name) in ns.iter_mut().zip(NAMESPACES) {
            *slot = match ns_inode(dir, name) {
                Ok(ino) => ino,
                // A kernel without this namespace type: nothing to compare.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => 0,
                Err(e) => {
                    ns_error = Some(format!("/proc/{pid}/ns/{name}: {e}"));
                    break;
                }
            };
        }
        let cgroup = match read_at(dir, c"cgroup") {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => String::new(),
            Err(e) => return Err(format!("/proc/{pid}/cgroup: {e}")),
        };
        let lsm = match read_at(dir, c"attr/current") {
            Ok(b) => String::from_utf8_lossy(&b)
                .trim_end_matches(['\0', '\n'])
                .to_owned(),
            Err(e) => format!("({})", io_errno_name(&e)),
        };
        Ok(ProcessContext {
            pid,
            uids: field("Uid:").unwrap_or("").to_owned(),
            lsm,
            no_new_privs: field("NoNewPrivs:") == Some("1"),
            seccomp_filters,
            caps,
            tracer: field("TracerPid:")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            gids: field("Gid:").unwrap_or("").to_owned(),
            groups,
            ns,
            ns_error,
            cgroup,
        })
    }

    fn has_cap(&self, cap: u32) -> bool {
        self.caps[2] & (1u64 << cap) != 0
    }
}

/// What to do with a command, once the template has compared the client with itself.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Run it in a worker.
    Faithful,
    /// Run it in the client: why.
    InProcess(String),
    /// The template is more confined than the client: the client replaces the server (why).
    Replace(String),
}

/// Compares what the template is (`own`, its attributes, its loader variables) with the client
/// (`client`, read from the kernel; `want`, the attributes it sent; `env`, its environment).
pub(crate) fn judge<'a>(
    own: &ProcessContext,
    own_attrs: &super::attrs::Attrs,
    own_loader: &[Vec<u8>],
    client: &ProcessContext,
    want: &super::attrs::Attrs,
    env: impl Iterator<Item = &'a [u8]>,
) -> Verdict {
    let mut confined: Vec<String> = Vec::new();
    let mut outranked: Vec<String> = Vec::new();
    if client.tracer != 0 {
        confined.push(format!(
            "it is traced (by pid {}: a debugger, strace...), which a worker would not be",
            client.tracer
        ));
    }
    match client.seccomp_filters.cmp(&own.seccomp_filters) {
        std::cmp::Ordering::Equal => {}
        std::cmp::Ordering::Greater => confined.push(format!(
            "it runs under {} seccomp filter(s), the preloader's template under {}",
            client.seccomp_filters, own.seccomp_filters
        )),
        std::cmp::Ordering::Less if client.seccomp_filters == 0 => outranked.push(format!(
            "the preloader's template runs under {} seccomp filter(s), this command under none",
            own.seccomp_filters
        )),
        std::cmp::Ordering::Less => confined.push(format!(
            "it runs under other seccomp filters than the preloader's template ({} against {})",
            client.seccomp_filters, own.seccomp_filters
        )),
    }
    match (client.no_new_privs, own.no_new_privs) {
        (true, false) => confined.push(
            "it runs with no_new_privs (the mark of a sandbox such as Landlock, which a worker \
             cannot take on)"
                .into(),
        ),
        (false, true) => outranked
            .push("the preloader's template runs with no_new_privs, this command without".into()),
        _ => {}
    }
    let (mut fewer, mut more) = (false, false);
    for (c, o) in client.caps.iter().zip(&own.caps) {
        fewer |= o & !c != 0;
        more |= c & !o != 0;
    }
    if fewer {
        confined.push("it has fewer capabilities than the preloader's template".into());
    } else if more {
        outranked.push("the preloader's template has fewer capabilities than this command".into());
    }
    if client.uids != own.uids {
        // The process judged is not of the server's user (on a kernel without `SO_PEERPIDFD`,
        // the client's pid may have been recycled by another user's process).
        confined.push(format!(
            "its user ids ({}) are not the preloader template's ({})",
            client.uids, own.uids
        ));
    }
    let lsm_hidden = ["(EACCES)", "(EPERM)"].contains(&client.lsm.as_str());
    if client.lsm != own.lsm && !lsm_hidden {
        confined.push(format!(
            "its security label ({}) is not the preloader template's ({}): a worker would run \
             under the template's",
            client.lsm, own.lsm
        ));
    }
    if client.gids != own.gids {
        confined.push(format!(
            "its group ids ({}) are not the preloader template's ({})",
            client.gids, own.gids
        ));
    } else if client.groups != own.groups {
        if own
            .groups
            .iter()
            .all(|g| client.groups.binary_search(g).is_ok())
        {
            outranked.push(
                "the preloader's template has fewer supplementary groups than this command".into(),
            );
        } else {
            confined.push(
                "its supplementary groups are not the preloader template's (newgrp, sg, or a \
                 group change since the server started)"
                    .into(),
            );
        }
    }
    // Namespaces that cannot be read cannot be compared. The client has proven that it may
    // inspect the server (the server runs no command without that proof: see `os::Proof`), so
    // the template that may not inspect it is the confined one (started in a Landlock domain,
    // say): the client replaces the server with one started in its own context.
    let mut unverified = Vec::new();
    if let Some(e) = client.ns_error.as_ref().or(own.ns_error.as_ref()) {
        unverified.push(format!(
            "the preloader's template may not inspect this command's process ({e})"
        ));
    } else if lsm_hidden && client.lsm != own.lsm {
        unverified.push(format!(
            "the preloader's template may not read this command's security label \
             (/proc/{}/attr/current: {})",
            client.pid, client.lsm
        ));
    }
    for ((c, o), name) in client.ns.iter().zip(&own.ns).zip(NAMESPACES) {
        if c != o && unverified.is_empty() {
            confined.push(format!(
                "it runs in another {name} namespace than the preloader's template"
            ));
        }
    }
    if client.cgroup != own.cgroup {
        let cg = cgroup::compare(&client.cgroup, &own.cgroup);
        if let Some(why) = cg.client_limited {
            confined.push(format!("its cgroup limits it ({why})"));
        }
        if let Some(why) = cg.own_limited {
            outranked.push(format!("the preloader template's cgroup limits it ({why})"));
        }
    }
    for (r, (w, o)) in want.rlimits.iter().zip(&own_attrs.rlimits).enumerate() {
        let unknown = super::attrs::UNKNOWN_LIMIT;
        if w.1 > o.1 && w.1 != unknown && o.1 != unknown && !own.has_cap(CAP_SYS_RESOURCE) {
            outranked.push(format!(
                "the preloader's template has a lower hard {} ({} against {})",
                rlimit_name(r),
                limit_text(o.1),
                limit_text(w.1)
            ));
        }
    }
    if want.nice != i32::MIN && own_attrs.nice != i32::MIN && want.nice < own_attrs.nice {
        let nice_limit = own_attrs.rlimits[libc::RLIMIT_NICE as usize].0;
        let allowed = own.has_cap(CAP_SYS_NICE)
            || (nice_limit != super::attrs::UNKNOWN_LIMIT
                && (20 - i64::from(want.nice)) as u64 <= nice_limit);
        if !allowed {
            outranked.push(format!(
                "the preloader's template runs at nice {}, this command at {}",
                own_attrs.nice, want.nice
            ));
        }
    }
    let theirs = loader_entries(env);
    if theirs.len() != own_loader.len() || theirs.iter().zip(own_loader).any(|(a, b)| *a != b) {
        let names = |v: &mut dyn Iterator<Item = &[u8]>| -> Vec<String> {
            v.map(|kv| {
                String::from_utf8_lossy(kv.split(|&b| b == b'=').next().unwrap_or(kv)).into_owned()
            })
            .collect()
        };
        let mut differ = names(
            &mut theirs
                .iter()
                .copied()
                .filter(|e| !own_loader.iter().any(|o| o == e)),
        );
        differ.extend(names(
            &mut own_loader
                .iter()
                .map(Vec::as_slice)
                .filter(|o| !theirs.contains(o)),
        ));
        differ.sort();
        differ.dedup();
        confined.push(format!(
            "its {} differ(s) from the preloader template's (read when a process starts)",
            differ.join(", ")
        ));
    }
    if !confined.is_empty() {
        Verdict::InProcess(confined.join("; "))
    } else if !outranked.is_empty() {
        Verdict::Replace(outranked.join("; "))
    } else if !unverified.is_empty() {
        Verdict::Replace(unverified.join("; "))
    } else {
        Verdict::Faithful
    }
}

/// A context that could not be read: a client whose `/proc` the template may not read
/// (`EACCES`: a non-dumpable client, or a template confined by something the client is not,
/// such as a Landlock domain) runs in-process.
pub(crate) fn unreadable(why: &str) -> Verdict {
    Verdict::InProcess(format!(
        "the preloader's template cannot inspect this command's process ({why})"
    ))
}

fn rlimit_name(r: usize) -> &'static str {
    const NAMES: [&str; 16] = [
        "RLIMIT_CPU",
        "RLIMIT_FSIZE",
        "RLIMIT_DATA",
        "RLIMIT_STACK",
        "RLIMIT_CORE",
        "RLIMIT_RSS",
        "RLIMIT_NPROC",
        "RLIMIT_NOFILE",
        "RLIMIT_MEMLOCK",
        "RLIMIT_AS",
        "RLIMIT_LOCKS",
        "RLIMIT_SIGPENDING",
        "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE",
        "RLIMIT_RTPRIO",
        "RLIMIT_RTTIME",
    ];
    NAMES.get(r).copied().unwrap_or("resource limit")
}

fn limit_text(v: u64) -> String {
    if v == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        v.to_string()
    }
}

/// Why this process, as a client, should run its command itself rather than in a worker,
/// found without contacting the server: it is traced (`status` is its `/proc/self/status`), a
/// library is injected into it (`LD_PRELOAD`, `LD_AUDIT`), it inherited more descriptors than
/// a command forwards, or it is a background job of its terminal.
pub(crate) fn client_reason(
    status: &str,
    env: &[(OsString, OsString)],
    inherited: usize,
) -> Option<String> {
    let tracer = status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .map(str::trim);
    if let Some(t) = tracer.filter(|t| *t != "0") {
        return Some(format!(
            "this process is traced (by pid {t}: a debugger, strace...), which a worker would \
             not be"
        ));
    }
    for (k, v) in env {
        if INJECTED.iter().any(|i| k == OsStr::new(i)) && !v.is_empty() {
            return Some(format!(
                "{} is set: the preloader's processes do not load it",
                k.to_string_lossy()
            ));
        }
    }
    if inherited > os::MAX_EXTRA_FDS {
        return Some(format!(
            "it inherited {inherited} descriptors besides 0, 1 and 2; a command forwards at \
             most {}",
            os::MAX_EXTRA_FDS
        ));
    }
    background_on_terminal()
}

/// Whether this process is a background job of the terminal it would read (stdin) or, with
/// `stty tostop`, write (stdout, stderr): the kernel stops such a job (SIGTTIN, SIGTTOU) only
/// for a process in the terminal's session, which a worker is not. Up to four `ioctl`s.
pub(crate) fn background_on_terminal() -> Option<String> {
    // SAFETY: getpgrp has no preconditions.
    let me = unsafe { libc::getpgrp() };
    for fd in 0..3 {
        // SAFETY: tcgetpgrp queries a descriptor; it fails (ENOTTY) unless the descriptor is
        // our controlling terminal.
        let fg = unsafe { libc::tcgetpgrp(fd) };
        if fg <= 0 || fg == me {
            continue;
        }
        if fd == 0 {
            return Some("it is a background job of the terminal it reads".into());
        }
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: a valid out-pointer.
        if unsafe { libc::tcgetattr(fd, &mut t) } == 0 && t.c_lflag & libc::TOSTOP != 0 {
            return Some(
                "it is a background job of the terminal it writes, which has `stty tostop`".into(),
            );
        }
    }
    None
}

/// Whether this client is confined relative to the server `server` (a pid from
/// `SO_PEERCRED`): it may not inspect the server (`kcmp`, a `ptrace` read check), as happens to
/// a process in a Landlock domain the server is not in, or one an LSM restricts. Checked on
/// this process first, so that a `kcmp` that is missing or filtered everywhere (a container's
/// seccomp profile) proves nothing.
pub(crate) fn confined_against(server: libc::pid_t) -> Option<String> {
    const KCMP_VM: libc::c_long = 1;
    if server <= 0 {
        return None;
    }
    let me = crate::sys::getpid() as libc::pid_t;
    // SAFETY: kcmp with integer arguments only compares.
    let kcmp =
        |other: libc::pid_t| unsafe { libc::syscall(libc::SYS_kcmp, me, other, KCMP_VM, 0, 0) };
    if kcmp(me) < 0 || kcmp(server) >= 0 {
        return None;
    }
    let e = io::Error::last_os_error();
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)).then(|| {
        format!(
            "it may not inspect the preloader server (pid {server}: {e}): it is confined (a \
             Landlock domain, a security module) where the server is not"
        )
    })
}

/// The `/proc` directory of the process at the other end of `sock` (the one that connected),
/// and its pid: opened by the pid `SO_PEERCRED` gives, then pinned: the peer must still be
/// running once it is open (checked on its pidfd), so that the pid was not recycled in between
/// and what is read through the open directory is the peer's.
fn peer_dir(sock: BorrowedFd<'_>) -> Result<(OwnedFd, i32), String> {
    let (_, pid) =
        os::peer_cred(sock).map_err(|e| format!("cannot tell who the client is: {e}"))?;
    if pid <= 0 {
        return Err("the client runs in a pid namespace this process cannot see".into());
    }
    let path = CString::new(format!("/proc/{pid}")).expect("no NUL");
    let dir = open_proc(&path).map_err(|e| format!("cannot read /proc/{pid}: {e}"))?;
    let (pidfd, from_kernel) =
        os::peer_pidfd_from(sock).map_err(|e| format!("cannot pin the client: {e}"))?;
    if crate::sys::poll_now(pidfd.as_fd()) {
        return Err("the client exited".into());
    }
    if !from_kernel {
        // Without `SO_PEERPIDFD` (before Linux 6.5) the pid is that of the process that
        // connected, which may have exited, and its pid been reused, while another process
        // holds the connection: the process judged must hold the client's end itself. Without
        // socket diagnostics (`unix_diag`), the older check only (see the module docs).
        if let Ok(ino) = os::unix_peer_inode(sock) {
            if !holds(dir.as_fd(), ino) {
                return Err(format!(
                    "the process that connected (pid {pid}) does not hold the connection (it \
                     was passed on, and the pid may have been reused)"
                ));
            }
        }
    }
    Ok((dir, pid))
}

/// Whether the process of `/proc` directory `dir` holds the socket of inode `ino` (unknown:
/// no).
fn holds(dir: BorrowedFd<'_>, ino: u64) -> bool {
    os::holds_socket(dir, ino).unwrap_or(false)
}

/// The environment of the process at the other end of `sock` (`/proc/<pid>/environ`: what it
/// was started with), for a template started for it: the template then preloads with the
/// environment of a command of its key, as the same command run without the preloader would.
/// Entries without `=` are left out.
pub(crate) fn environ_of_peer(sock: BorrowedFd<'_>) -> Result<Vec<(OsString, OsString)>, String> {
    let (dir, pid) = peer_dir(sock)?;
    let bytes =
        read_at(dir.as_fd(), c"environ").map_err(|e| format!("/proc/{pid}/environ: {e}"))?;
    Ok(bytes
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let eq = kv.iter().position(|&b| b == b'=').filter(|&i| i > 0)?;
            Some((
                OsStr::from_bytes(&kv[..eq]).to_owned(),
                OsStr::from_bytes(&kv[eq + 1..]).to_owned(),
            ))
        })
        .collect())
}

/// `open(path, O_PATH | O_DIRECTORY | O_CLOEXEC)`.
fn open_proc(path: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: a valid NUL-terminated path; the result is checked and owned below.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads a file of a `/proc/<pid>` directory.
fn read_at(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<Vec<u8>> {
    // SAFETY: a valid directory descriptor and NUL-terminated name; the result is checked and
    // owned below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut out = Vec::with_capacity(2048);
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// The inode of namespace `name` of the process whose `/proc` directory is `dir`
/// (`readlinkat` of `ns/<name>`, which reads `<type>:[<inode>]`).
fn ns_inode(dir: BorrowedFd<'_>, name: &str) -> io::Result<u64> {
    let path = CString::new(format!("ns/{name}")).expect("no NUL");
    let mut buf = [0u8; 64];
    // SAFETY: a valid directory descriptor, NUL-terminated path and a buffer of its size.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            path.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let text = &buf[..n as usize];
    let inode = text
        .iter()
        .position(|&b| b == b'[')
        .and_then(|i| std::str::from_utf8(&text[i + 1..text.len().saturating_sub(1)]).ok())
        .and_then(|s| s.parse().ok());
    inode.ok_or_else(|| io::Error::other(format!("unexpected link {:?}", OsStr::from_bytes(text))))
}

/// Whether a cgroup that one process is in and another is not limits the first.
mod cgroup {
    use std::path::{Path, PathBuf};

    /// What [`compare`] found.
    #[derive(Debug, Default)]
    pub(super) struct Limits {
        /// A limit on the client that the template is not under (a limit file and its value).
        pub(super) client_limited: Option<String>,
        /// A limit on the template that the client is not under.
        pub(super) own_limited: Option<String>,
    }

    /// Compares two `/proc/<pid>/cgroup` texts: for each hierarchy where the two processes are
    /// in different cgroups, looks at the cgroups between each one's and their common ancestor
    /// for a limit (a limit file with another value than "none"). A cgroup that cannot be
    /// read counts as a limit.
    pub(super) fn compare(client: &str, own: &str) -> Limits {
        let mounts = Mounts::read();
        let mut out = Limits::default();
        let parse = |text: &str| -> Vec<(String, String)> {
            text.lines()
                .filter_map(|l| {
                    let mut it = l.splitn(3, ':');
                    let (_, ctrl, path) = (it.next()?, it.next()?, it.next()?);
                    Some((ctrl.to_owned(), path.to_owned()))
                })
                .collect()
        };
        let (theirs, ours) = (parse(client), parse(own));
        for (ctrl, path) in &theirs {
            let Some((_, mine)) = ours.iter().find(|(c, _)| c == ctrl) else {
                out.client_limited.get_or_insert_with(|| {
                    format!("a cgroup hierarchy {ctrl:?} the template is not in")
                });
                continue;
            };
            if mine == path {
                continue;
            }
            let common = common_ancestor(path, mine);
            if out.client_limited.is_none() {
                out.client_limited = limited_below(&mounts, ctrl, path, &common);
            }
            if out.own_limited.is_none() {
                out.own_limited = limited_below(&mounts, ctrl, mine, &common);
            }
        }
        out
    }

    fn common_ancestor(a: &str, b: &str) -> String {
        let mut common = String::new();
        for (x, y) in a.split('/').zip(b.split('/')) {
            if x != y {
                break;
            }
            if !x.is_empty() {
                common.push('/');
                common.push_str(x);
            }
        }
        if common.is_empty() {
            "/".into()
        } else {
            common
        }
    }

    /// The first limit found in the cgroups from `path` up to (not including) `common`.
    fn limited_below(mounts: &Mounts, ctrl: &str, path: &str, common: &str) -> Option<String> {
        let controllers: Vec<&str> = ctrl.split(',').filter(|c| !c.is_empty()).collect();
        let files = limit_files(&controllers)?;
        if files.is_empty() {
            return None; // a hierarchy that limits nothing (name=systemd, freezer...)
        }
        let Some(base) = mounts.find(ctrl) else {
            return Some(format!(
                "cannot find where the {ctrl:?} hierarchy is mounted"
            ));
        };
        let mut p = PathBuf::from(path);
        while p.as_os_str() != common && p.as_os_str() != "/" {
            let Some(dir) = base.under(&p) else {
                return Some(format!("{} is outside the mounted hierarchy", p.display()));
            };
            for (file, unlimited) in &files {
                match std::fs::read_to_string(dir.join(file)) {
                    Ok(v) if unlimited(v.trim(), &dir) => {}
                    Ok(v) => return Some(format!("{}: {}", dir.join(file).display(), v.trim())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Some(format!("{}: {e}", dir.join(file).display())),
                }
            }
            if !p.pop() {
                break;
            }
        }
        None
    }

    type Unlimited = fn(&str, &Path) -> bool;

    /// The limit files of these controllers (cgroup v1 names, or v2's for none), each with what
    /// "no limit" looks like. `None`: a controller we do not know, which counts as a limit.
    fn limit_files(controllers: &[&str]) -> Option<Vec<(&'static str, Unlimited)>> {
        fn max(v: &str, _: &Path) -> bool {
            v == "max"
        }
        fn cpu_max(v: &str, _: &Path) -> bool {
            v.starts_with("max")
        }
        fn empty(v: &str, _: &Path) -> bool {
            v.is_empty()
        }
        fn huge(v: &str, _: &Path) -> bool {
            v.parse::<u64>().is_ok_and(|n| n >= 1 << 62)
        }
        fn minus_one(v: &str, _: &Path) -> bool {
            v == "-1"
        }
        fn all_devices(v: &str, _: &Path) -> bool {
            v == "a *:* rwm"
        }
        fn as_parent(v: &str, dir: &Path) -> bool {
            // A cpuset's CPUs: a limit where they narrow the parent's (empty: inherited).
            v.is_empty()
                || dir
                    .parent()
                    .and_then(|p| std::fs::read_to_string(p.join("cpuset.cpus")).ok())
                    .is_some_and(|p| p.trim() == v)
        }
        if controllers.is_empty() {
            // cgroup v2: every controller's files in one directory.
            return Some(vec![
                ("memory.max", max),
                ("memory.high", max),
                ("memory.swap.max", max),
                ("pids.max", max),
                ("cpu.max", cpu_max),
                ("io.max", empty),
                ("cpuset.cpus", as_parent),
            ]);
        }
        let mut files: Vec<(&'static str, Unlimited)> = Vec::new();
        for c in controllers {
            match *c {
                "memory" => {
                    files.push(("memory.limit_in_bytes", huge));
                    files.push(("memory.memsw.limit_in_bytes", huge));
                }
                "pids" => files.push(("pids.max", max)),
                "cpu" => files.push(("cpu.cfs_quota_us", minus_one)),
                "cpuset" => files.push(("cpuset.cpus", as_parent)),
                "blkio" => {
                    for f in [
                        "blkio.throttle.read_bps_device",
                        "blkio.throttle.write_bps_device",
                        "blkio.throttle.read_iops_device",
                        "blkio.throttle.write_iops_device",
                    ] {
                        files.push((f, empty));
                    }
                }
                "devices" => files.push(("devices.list", all_devices)),
                "cpuacct" | "freezer" | "perf_event" | "net_cls" | "net_prio" => {}
                named if named.starts_with("name=") => {}
                _ => return None,
            }
        }
        Some(files)
    }

    /// Where each cgroup hierarchy is mounted (`/proc/self/mountinfo`).
    struct Mounts(Vec<Mount>);

    struct Mount {
        /// The controllers (v1, comma-separated as in `/proc/<pid>/cgroup`), empty for v2.
        ctrl: String,
        /// The cgroup the mount shows at its mount point.
        root: String,
        at: PathBuf,
    }

    impl Mount {
        /// The directory of cgroup `path` under this mount.
        fn under(&self, path: &Path) -> Option<PathBuf> {
            let rel = path.strip_prefix(&self.root).ok()?;
            Some(self.at.join(rel))
        }
    }

    impl Mounts {
        fn read() -> Mounts {
            let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let mut out = Vec::new();
            for line in text.lines() {
                let Some((pre, post)) = line.split_once(" - ") else {
                    continue;
                };
                let pre: Vec<&str> = pre.split(' ').collect();
                let post: Vec<&str> = post.split(' ').collect();
                let (Some(root), Some(at), Some(fstype)) = (pre.get(3), pre.get(4), post.first())
                else {
                    continue;
                };
                let ctrl = match *fstype {
                    "cgroup2" => String::new(),
                    "cgroup" => {
                        let opts = post.get(2).copied().unwrap_or("");
                        let mut known: Vec<&str> = opts
                            .split(',')
                            .filter(|o| {
                                !matches!(
                                    *o,
                                    "rw" | "ro"
                                        | "relatime"
                                        | "noatime"
                                        | "nosuid"
                                        | "nodev"
                                        | "noexec"
                                        | "clone_children"
                                        | "xattr"
                                        | "noprefix"
                                ) && !o.starts_with("release_agent=")
                            })
                            .collect();
                        known.sort_unstable();
                        known.join(",")
                    }
                    _ => continue,
                };
                out.push(Mount {
                    ctrl,
                    root: unescape(root),
                    at: PathBuf::from(unescape(at)),
                });
            }
            Mounts(out)
        }

        fn find(&self, ctrl: &str) -> Option<&Mount> {
            let mut want: Vec<&str> = ctrl.split(',').filter(|c| !c.is_empty()).collect();
            want.sort_unstable();
            let want = want.join(",");
            self.0.iter().find(|m| m.ctrl == want)
        }
    }

    /// `/proc/self/mountinfo` escapes space, tab, newline and backslash as `\ooo`.
    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
                let n = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
                out.push(n);
                i += 4;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ancestors() {
            assert_eq!(common_ancestor("/a/b/c", "/a/b/d"), "/a/b");
            assert_eq!(common_ancestor("/a", "/b"), "/");
            assert_eq!(common_ancestor("/", "/x"), "/");
            assert_eq!(unescape(r"/a\040b"), "/a b");
        }

        #[test]
        fn same_cgroups_are_not_limits() {
            let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
            let l = compare(&text, &text);
            assert!(l.client_limited.is_none() && l.own_limited.is_none());
        }
    }
}

/// The name of `e`'s error number ("EINVAL"), or its text.
fn io_errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EINVAL) => "EINVAL".into(),
        Some(libc::ENOENT) => "ENOENT".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::EPERM) => "EPERM".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_context() {
        let c = ProcessContext::of_this_process().expect("read /proc/self");
        assert!(c.ns.iter().any(|&n| n != 0), "{c:?}");
        assert_eq!(c, ProcessContext::of_this_process().unwrap());
    }

    /// Judges `client` against `own` with the same attributes and no loader variables.
    fn verdict(own: &ProcessContext, client: &ProcessContext) -> Verdict {
        let attrs = super::super::attrs::Attrs::of_this_process(0);
        judge(own, &attrs, &[], client, &attrs, std::iter::empty())
    }

    #[test]
    fn judging_contexts() {
        let own = ProcessContext::of_this_process().unwrap();
        assert_eq!(verdict(&own, &own), Verdict::Faithful);
        let nnp = ProcessContext {
            no_new_privs: true,
            ..own.clone()
        };
        assert!(matches!(verdict(&own, &nnp), Verdict::InProcess(w) if w.contains("no_new_privs")));
        assert!(matches!(verdict(&nnp, &own), Verdict::Replace(w) if w.contains("no_new_privs")));
        // More confined in one way, less in another: in-process (never a replacement that the
        // next command would undo).
        let mixed = ProcessContext {
            no_new_privs: true,
            caps: own.caps.map(|c| c | 1 << 40),
            ..own.clone()
        };
        assert!(matches!(verdict(&own, &mixed), Verdict::InProcess(_)));
        let fewer = ProcessContext {
            caps: [0; 5],
            ..own.clone()
        };
        if own.caps != [0; 5] {
            assert!(
                matches!(verdict(&own, &fewer), Verdict::InProcess(w) if w.contains("capabilities"))
            );
            assert!(matches!(verdict(&fewer, &own), Verdict::Replace(_)));
        }
        let mut ns = own.clone();
        ns.ns[2] += 1;
        assert!(matches!(verdict(&own, &ns), Verdict::InProcess(w) if w.contains("mnt namespace")));
        let traced = ProcessContext {
            tracer: 1,
            ..own.clone()
        };
        assert!(matches!(verdict(&own, &traced), Verdict::InProcess(w) if w.contains("traced")));
        let seccomp = ProcessContext {
            seccomp_filters: own.seccomp_filters + 1,
            ..own.clone()
        };
        assert!(matches!(verdict(&own, &seccomp), Verdict::InProcess(_)));
        let groups = ProcessContext {
            groups: vec![123_456],
            ..own.clone()
        };
        assert!(!matches!(verdict(&own, &groups), Verdict::Faithful));
        // Namespaces that may not be read: in-process, unless the template is found more
        // confined anyway.
        let hidden = ProcessContext {
            ns_error: Some("EACCES".into()),
            ..own.clone()
        };
        assert!(
            matches!(verdict(&own, &hidden), Verdict::Replace(w) if w.contains("may not inspect"))
        );
        let label = ProcessContext {
            lsm: "sandbox (enforce)".into(),
            ..own.clone()
        };
        assert!(
            matches!(verdict(&own, &label), Verdict::InProcess(w) if w.contains("security label"))
        );
        let other_user = ProcessContext {
            uids: "4242\t4242\t4242\t4242".into(),
            ..own.clone()
        };
        assert!(
            matches!(verdict(&own, &other_user), Verdict::InProcess(w) if w.contains("user ids"))
        );
        let mine_nnp = ProcessContext {
            no_new_privs: true,
            ..own.clone()
        };
        assert!(matches!(verdict(&mine_nnp, &hidden), Verdict::Replace(_)));
    }

    #[test]
    fn limits_and_loader_variables_are_judged() {
        let own = ProcessContext::of_this_process().unwrap();
        let attrs = super::super::attrs::Attrs::of_this_process(0);
        let mut lower = attrs.clone();
        lower.rlimits[libc::RLIMIT_NOFILE as usize] = (10, 20);
        let mut wider = attrs.clone();
        wider.rlimits[libc::RLIMIT_NOFILE as usize] = (10, 30);
        let unprivileged = ProcessContext {
            caps: [0, 0, 0, own.caps[3], 0],
            ..own.clone()
        };
        let v = judge(
            &unprivileged,
            &lower,
            &[],
            &unprivileged,
            &wider,
            std::iter::empty(),
        );
        assert!(matches!(v, Verdict::Replace(w) if w.contains("RLIMIT_NOFILE (20 against 30)")));
        let v = judge(
            &unprivileged,
            &wider,
            &[],
            &unprivileged,
            &lower,
            std::iter::empty(),
        );
        assert_eq!(v, Verdict::Faithful, "a worker lowers its limits itself");
        let env: Vec<&[u8]> = vec![b"LD_LIBRARY_PATH=/x"];
        let v = judge(&own, &attrs, &[], &own, &attrs, env.into_iter());
        assert!(matches!(v, Verdict::InProcess(w) if w.contains("LD_LIBRARY_PATH")));
        let same = vec![b"LD_LIBRARY_PATH=/x".to_vec()];
        let env: Vec<&[u8]> = vec![b"PATH=/bin", b"LD_LIBRARY_PATH=/x"];
        let v = judge(&own, &attrs, &same, &own, &attrs, env.into_iter());
        assert_eq!(v, Verdict::Faithful);
    }

    #[test]
    fn loader_variables() {
        let env: Vec<&[u8]> = vec![
            b"PATH=/bin",
            b"LD_LIBRARY_PATH=/x",
            b"GLIBC_TUNABLES=a",
            b"MALLOC_ARENA_MAX=2",
        ];
        assert_eq!(
            loader_entries(env.into_iter()),
            vec![
                b"GLIBC_TUNABLES=a".as_slice(),
                b"LD_LIBRARY_PATH=/x",
                b"MALLOC_ARENA_MAX=2"
            ]
        );
    }
}
