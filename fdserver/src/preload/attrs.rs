//! The process attributes a freshly `exec`'d program inherits from its caller, which the client
//! reads from itself and the worker takes on before `run` (see the module docs of
//! `fdserver::preload` for the list and for what cannot be forwarded).
//!
//! The client sends them as one fixed-size little-endian record; the worker compares each with
//! its template's own value (read once per template) and changes only those that differ, so an
//! ordinary command costs the worker no system call here.

use std::os::fd::{AsRawFd, BorrowedFd};

/// `RLIMIT_NLIMITS` on Linux: every resource limit there is.
pub(crate) const RLIMITS: usize = 16;
/// A resource limit that could not be read (left alone, never compared).
pub(crate) const UNKNOWN_LIMIT: u64 = u64::MAX - 1;
/// Bytes of CPU mask we forward: 1024 CPUs.
const AFFINITY_BYTES: usize = 128;

/// What the worker takes on from the client.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Attrs {
    /// Signals ignored (`SIG_IGN`), bit `n - 1` for signal `n`.
    pub(crate) sig_ignored: u64,
    /// The signal mask, bit `n - 1` for signal `n`.
    pub(crate) sig_blocked: u64,
    pub(crate) umask: u32,
    /// `(soft, hard)` for each resource, `RLIM_INFINITY` as is.
    pub(crate) rlimits: [(u64, u64); RLIMITS],
    pub(crate) nice: i32,
    pub(crate) affinity: [u8; AFFINITY_BYTES],
    /// How many bytes of `affinity` the kernel filled (0: unknown, leave it).
    pub(crate) affinity_len: u32,
    pub(crate) sched_policy: i32,
    pub(crate) sched_priority: i32,
    /// `ioprio_get`'s value, or -1 if unknown.
    pub(crate) ioprio: i32,
    pub(crate) timer_slack: u64,
    pub(crate) personality: u32,
    pub(crate) no_new_privs: bool,
    /// How many seccomp filters confine the process (`Seccomp_filters` in `/proc/self/status`;
    /// 1 if only the mode is known).
    pub(crate) seccomp_filters: u32,
    /// The process name (`comm`, what `ps -o comm` and `top` show), NUL-padded.
    pub(crate) comm: [u8; 16],
}

/// The encoded size of [`Attrs`].
pub(crate) const ENCODED: usize =
    8 + 8 + 4 + RLIMITS * 16 + 4 + AFFINITY_BYTES + 4 + 4 + 4 + 4 + 8 + 4 + 1 + 4 + 16;

impl Attrs {
    /// This process's attributes. `sig_blocked` is the mask the caller had before it blocked
    /// anything itself. About 25 system calls and one read of `/proc/self/status`.
    pub(crate) fn of_this_process(sig_blocked: u64) -> Attrs {
        Attrs::with_status(&proc_status(), sig_blocked)
    }

    /// [`of_this_process`](Self::of_this_process), with `/proc/self/status` already read
    /// ([`proc_status`]; the client also looks at it for what only it checks, see
    /// `context::client_reason`).
    pub(crate) fn with_status(status: &str, sig_blocked: u64) -> Attrs {
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(str::trim)
        };
        let hex = |key: &str| field(key).and_then(|v| u64::from_str_radix(v, 16).ok());
        let sig_ignored = hex("SigIgn:").unwrap_or_else(ignored_by_sigaction);
        let umask = match field("Umask:").and_then(|v| u32::from_str_radix(v, 8).ok()) {
            Some(m) => m,
            None => {
                // SAFETY: umask cannot fail; the second call restores the value.
                unsafe {
                    let m = libc::umask(0o022);
                    libc::umask(m);
                    m as u32
                }
            }
        };
        let seccomp_filters = match field("Seccomp_filters:").and_then(|v| v.parse().ok()) {
            Some(n) => n,
            None => u32::from(field("Seccomp:").is_some_and(|v| v != "0")),
        };
        let mut rlimits = [(0u64, 0u64); RLIMITS];
        for (r, slot) in rlimits.iter_mut().enumerate() {
            // SAFETY: an all-zero rlimit is a valid out-value.
            let mut l: libc::rlimit = unsafe { std::mem::zeroed() };
            // SAFETY: valid out-pointer; an unknown resource just fails.
            if unsafe { libc::getrlimit(r as _, &mut l) } == 0 {
                *slot = (l.rlim_cur, l.rlim_max);
            } else {
                *slot = (UNKNOWN_LIMIT, UNKNOWN_LIMIT); // marker: unknown, leave it
            }
        }
        // SAFETY: errno access and getpriority are plain calls; -1 is a valid nice value, so
        // errno tells failure apart.
        let nice = unsafe {
            *libc::__errno_location() = 0;
            let n = libc::getpriority(libc::PRIO_PROCESS, 0);
            if n == -1 && *libc::__errno_location() != 0 {
                i32::MIN
            } else {
                n
            }
        };
        let mut affinity = [0u8; AFFINITY_BYTES];
        // SAFETY: the raw syscall writes at most AFFINITY_BYTES into the buffer.
        let got = unsafe {
            libc::syscall(
                libc::SYS_sched_getaffinity,
                0,
                AFFINITY_BYTES,
                affinity.as_mut_ptr(),
            )
        };
        let affinity_len = if got > 0 { got as u32 } else { 0 };
        // SAFETY: plain queries of this process.
        let sched_policy = unsafe { libc::sched_getscheduler(0) };
        // SAFETY: a zeroed sched_param is a valid out-value.
        let mut param: libc::sched_param = unsafe { std::mem::zeroed() };
        // SAFETY: valid out-pointer.
        unsafe { libc::sched_getparam(0, &mut param) };
        // SAFETY: ioprio_get(IOPRIO_WHO_PROCESS, self) takes integers only.
        let ioprio = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, 0) } as i32;
        // SAFETY: prctl queries with integer arguments.
        let timer_slack = unsafe { libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0) } as u64;
        // SAFETY: personality(0xffffffff) only queries.
        let personality = unsafe { libc::personality(0xffff_ffff) } as u32;
        // SAFETY: as above.
        let no_new_privs = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } == 1;
        let mut comm = [0u8; 16];
        // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer.
        unsafe { libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr(), 0, 0, 0) };
        Attrs {
            sig_ignored,
            sig_blocked,
            umask,
            rlimits,
            nice,
            affinity,
            affinity_len,
            sched_policy,
            sched_priority: param.sched_priority,
            ioprio,
            timer_slack,
            personality,
            no_new_privs,
            seccomp_filters,
            comm,
        }
    }

    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sig_ignored.to_le_bytes());
        out.extend_from_slice(&self.sig_blocked.to_le_bytes());
        out.extend_from_slice(&self.umask.to_le_bytes());
        for (s, h) in &self.rlimits {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&h.to_le_bytes());
        }
        out.extend_from_slice(&self.nice.to_le_bytes());
        out.extend_from_slice(&self.affinity);
        out.extend_from_slice(&self.affinity_len.to_le_bytes());
        out.extend_from_slice(&self.sched_policy.to_le_bytes());
        out.extend_from_slice(&self.sched_priority.to_le_bytes());
        out.extend_from_slice(&self.ioprio.to_le_bytes());
        out.extend_from_slice(&self.timer_slack.to_le_bytes());
        out.extend_from_slice(&self.personality.to_le_bytes());
        out.push(self.no_new_privs as u8);
        out.extend_from_slice(&self.seccomp_filters.to_le_bytes());
        out.extend_from_slice(&self.comm);
    }

    /// Decodes what [`encode`](Self::encode) wrote; `None` if `b` is not exactly that long.
    pub(crate) fn decode(b: &[u8]) -> Option<Attrs> {
        if b.len() != ENCODED {
            return None;
        }
        let mut r = Reader(b);
        let sig_ignored = r.u64();
        let sig_blocked = r.u64();
        let umask = r.u32();
        let mut rlimits = [(0, 0); RLIMITS];
        for slot in &mut rlimits {
            *slot = (r.u64(), r.u64());
        }
        let nice = r.u32() as i32;
        let mut affinity = [0u8; AFFINITY_BYTES];
        affinity.copy_from_slice(r.take(AFFINITY_BYTES));
        Some(Attrs {
            sig_ignored,
            sig_blocked,
            umask,
            rlimits,
            nice,
            affinity,
            affinity_len: r.u32(),
            sched_policy: r.u32() as i32,
            sched_priority: r.u32() as i32,
            ioprio: r.u32() as i32,
            timer_slack: r.u64(),
            personality: r.u32(),
            no_new_privs: r.take(1)[0] != 0,
            seccomp_filters: r.u32(),
            comm: r.take(16).try_into().ok()?,
        })
    }

    /// Takes on `want` where it differs from `self` (this process's attributes, as read by
    /// [`of_this_process`](Self::of_this_process) in the template). Signals are handled by the
    /// caller. Returns the names of the attributes that could not be changed (raising a hard
    /// limit or lowering the nice value needs privileges the template may not have).
    /// Async-signal-safe: no allocation (the names are static).
    pub(crate) fn apply(&self, want: &Attrs, failed: &mut Failed) {
        if want.umask != self.umask {
            // SAFETY: umask cannot fail.
            unsafe { libc::umask(want.umask as libc::mode_t) };
        }
        for (r, (&have, &w)) in self.rlimits.iter().zip(&want.rlimits).enumerate() {
            if have == w || w.0 == UNKNOWN_LIMIT {
                continue;
            }
            let l = libc::rlimit {
                rlim_cur: w.0,
                rlim_max: w.1,
            };
            // SAFETY: a valid rlimit; raising a hard limit fails with EPERM (reported).
            if unsafe { libc::setrlimit(r as _, &l) } != 0 {
                failed.push("resource limits");
            }
        }
        if want.nice != self.nice && want.nice != i32::MIN {
            // SAFETY: integer arguments only.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, want.nice) } != 0 {
                failed.push("nice value");
            }
        }
        if want.affinity_len > 0
            && (want.affinity_len != self.affinity_len || want.affinity != self.affinity)
        {
            // SAFETY: the buffer holds affinity_len valid bytes.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_sched_setaffinity,
                    0,
                    want.affinity_len as usize,
                    want.affinity.as_ptr(),
                )
            };
            if r != 0 {
                failed.push("CPU affinity");
            }
        }
        if (want.sched_policy, want.sched_priority) != (self.sched_policy, self.sched_priority)
            && want.sched_policy >= 0
        {
            let param = libc::sched_param {
                sched_priority: want.sched_priority,
            };
            // SAFETY: a valid sched_param.
            if unsafe { libc::sched_setscheduler(0, want.sched_policy, &param) } != 0 {
                failed.push("scheduling policy");
            }
        }
        if want.ioprio != self.ioprio && want.ioprio >= 0 {
            // SAFETY: ioprio_set(IOPRIO_WHO_PROCESS, self, value) takes integers only.
            if unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, want.ioprio) } != 0 {
                failed.push("I/O priority");
            }
        }
        if want.timer_slack != self.timer_slack {
            // SAFETY: integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, want.timer_slack, 0, 0, 0) };
        }
        if want.personality != self.personality && want.personality != u32::MAX {
            // SAFETY: integer argument only.
            if unsafe { libc::personality(want.personality as libc::c_ulong) } == -1 {
                failed.push("personality");
            }
        }
        if want.no_new_privs && !self.no_new_privs {
            // SAFETY: integer arguments only; one-way, always allowed.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        }
        if want.comm != self.comm {
            // SAFETY: PR_SET_NAME reads at most 16 bytes; `comm` is NUL-padded to 16.
            unsafe { libc::prctl(libc::PR_SET_NAME, want.comm.as_ptr(), 0, 0, 0) };
        }
    }
}

/// This process's `/proc/self/status` (empty if it cannot be read).
pub(crate) fn proc_status() -> String {
    proc_self_status()
}

/// Names of attributes the worker could not take on (it then hands the command back to the
/// client, which runs it in-process).
#[derive(Default)]
pub(crate) struct Failed {
    names: [&'static str; 8],
    len: usize,
}

impl Failed {
    pub(crate) fn push(&mut self, name: &'static str) {
        if self.names[..self.len].contains(&name) || self.len == self.names.len() {
            return;
        }
        self.names[self.len] = name;
        self.len += 1;
    }

    pub(crate) fn names(&self) -> &[&'static str] {
        &self.names[..self.len]
    }
}

/// The ignored signals, by asking `sigaction` for each (when `/proc` is not mounted).
/// `/proc/self/status` (empty if it cannot be read), in one `read`: procfs writes the whole file
/// into a buffer large enough (std's `read_to_string` starts with 32 bytes and doubles: nine
/// reads).
fn proc_self_status() -> String {
    let Ok(mut f) = std::fs::File::open("/proc/self/status") else {
        return String::new();
    };
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    loop {
        match std::io::Read::read(&mut f, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len < buf.len() {
                    // A short read of a seq_file: the rest, if any, comes with the next read.
                    if n < buf.len() / 2 {
                        break;
                    }
                } else {
                    buf.resize(buf.len() * 2, 0);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return String::new(),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).unwrap_or_default()
}

fn ignored_by_sigaction() -> u64 {
    let mut mask = 0;
    for sig in 1..=64 {
        // SAFETY: an all-zero sigaction is a valid out-value; a reserved signal just fails.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: no new action, valid out-pointer.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } == 0
            && old.sa_sigaction == libc::SIG_IGN
        {
            mask |= 1u64 << (sig - 1);
        }
    }
    mask
}

/// A signal set as a bit mask, bit `n - 1` for signal `n` (signals 1 to 64).
pub(crate) fn mask_of(set: &libc::sigset_t) -> u64 {
    let mut m = 0;
    for sig in 1..=64 {
        // SAFETY: sigismember reads an initialised set.
        if unsafe { libc::sigismember(set, sig) } == 1 {
            m |= 1u64 << (sig - 1);
        }
    }
    m
}

/// The signal set of a bit mask (see [`mask_of`]). Async-signal-safe.
pub(crate) fn set_of(mask: u64) -> libc::sigset_t {
    let mut set = crate::sys::sigset(false);
    for sig in 1..=64 {
        if mask & (1u64 << (sig - 1)) != 0 {
            crate::sys::sigset_add(&mut set, sig);
        }
    }
    set
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().expect("4 bytes"))
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().expect("8 bytes"))
    }
}

/// `fchdir` into a directory descriptor (the client's working directory). Async-signal-safe.
pub(crate) fn fchdir(dir: BorrowedFd<'_>) -> std::io::Result<()> {
    // SAFETY: fchdir on a valid descriptor.
    if unsafe { libc::fchdir(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_round_trip() {
        let a = Attrs::of_this_process(0x1234);
        let mut buf = Vec::new();
        a.encode(&mut buf);
        assert_eq!(buf.len(), ENCODED);
        let b = Attrs::decode(&buf).expect("decodes");
        assert!(a == b);
        assert_eq!(b.sig_blocked, 0x1234);
        // Rust's runtime ignores SIGPIPE.
        assert_ne!(b.sig_ignored & (1 << (libc::SIGPIPE - 1)), 0);
        assert!(Attrs::decode(&buf[1..]).is_none());
    }

    #[test]
    fn masks_round_trip() {
        let m = (1u64 << (libc::SIGINT - 1)) | (1u64 << 40);
        assert_eq!(mask_of(&set_of(m)), m);
    }
}
