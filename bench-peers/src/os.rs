//! Thin libc helpers: CPU affinity and placement, `/proc` counters, blocking read/write loops a
//! forked child can use (no allocation, no panic), the touched heap of the start-vs-heap chart,
//! and the watchdog.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::RawFd;
use std::ptr;

/// Panics with the OS error if a libc call returned -1.
pub fn check(r: libc::c_int, what: &str) -> libc::c_int {
    if r == -1 {
        panic!("{what}: {}", io::Error::last_os_error());
    }
    r
}

/// The CPUs this process may run on when the bench started (its "unpinned" mask).
#[derive(Clone, Copy)]
pub struct CpuSet(libc::cpu_set_t);

impl CpuSet {
    /// The calling thread's mask.
    pub fn current() -> CpuSet {
        // SAFETY: an all-zero cpu_set_t is the empty set; sched_getaffinity fills it.
        let mut set: libc::cpu_set_t = unsafe { zeroed() };
        // SAFETY: `set` is a valid out-pointer of the size passed.
        check(
            unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) },
            "sched_getaffinity",
        );
        CpuSet(set)
    }

    /// The CPU numbers in the mask.
    pub fn cpus(&self) -> Vec<usize> {
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: `c` < CPU_SETSIZE, within the set.
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &self.0) })
            .collect()
    }

    /// A mask holding only `cpu`.
    pub fn only(cpu: usize) -> CpuSet {
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut one: libc::cpu_set_t = unsafe { zeroed() };
        // SAFETY: callers pass a CPU number taken from `cpus()`, < CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut one) };
        CpuSet(one)
    }

    /// Makes this the calling thread's mask (children forked or spawned afterwards inherit it).
    pub fn apply(&self) {
        // SAFETY: `self.0` is a valid cpu_set_t of the size passed.
        check(
            unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.0) },
            "sched_setaffinity",
        );
    }
}

/// The CPU the calling thread runs on now.
pub fn this_cpu() -> i32 {
    // SAFETY: no arguments; returns -1 on failure.
    unsafe { libc::sched_getcpu() }
}

/// This process's pid.
pub fn my_pid() -> i32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() }
}

fn read_proc(pid: i32, file: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()
}

/// The CPU `pid`'s main thread last ran on (`/proc/<pid>/stat`, field 39 `processor`).
pub fn last_cpu(pid: i32) -> Option<i32> {
    stat_cpu(&read_proc(pid, "stat")?)
}

/// Field 39 of a `/proc/<pid>/stat` line. The command name (field 2) may hold spaces and
/// parentheses, so fields are counted from its last `)`.
pub fn stat_cpu(stat: &str) -> Option<i32> {
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(39 - 3)?.parse().ok()
}

/// How often `pid`'s main thread moved between CPUs (`se.nr_migrations` in `/proc/<pid>/sched`;
/// `None` where the kernel does not show it).
pub fn migrations(pid: i32) -> Option<u64> {
    let sched = read_proc(pid, "sched")?;
    let line = sched.lines().find(|l| l.starts_with("se.nr_migrations"))?;
    line.rsplit(':').next()?.trim().parse().ok()
}

/// Voluntary and involuntary context switches of `pid` so far (`/proc/<pid>/status`).
pub fn ctxt_switches(pid: i32) -> (u64, u64) {
    let status = read_proc(pid, "status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        field("voluntary_ctxt_switches:"),
        field("nonvoluntary_ctxt_switches:"),
    )
}

/// This process's thread count (`Threads:` of `/proc/self/status`).
pub fn threads() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Threads of this process other than fdserver's own (its fork threads and its reaper, named
/// `fdserver ...`, which park between uses and hold no lock there).
pub fn foreign_threads() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return threads();
    };
    dir.filter_map(Result::ok)
        .filter(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            !comm.starts_with("fdserver ")
        })
        .count() as u64
}

/// `getrusage(who)`.
pub fn rusage(who: libc::c_int) -> libc::rusage {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { zeroed() };
    // SAFETY: `ru` is a valid out-pointer.
    check(unsafe { libc::getrusage(who, &mut ru) }, "getrusage");
    ru
}

/// The 1-, 5- and 15-minute load averages (`/proc/loadavg`).
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(f64::NAN));
    [
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
        it.next().unwrap_or(f64::NAN),
    ]
}

/// Reads exactly `buf.len()` bytes. `Ok(false)`: end of stream before the first byte. Any other
/// failure is `Err`. Child-safe (no allocation, no panic).
pub fn read_full(fd: RawFd, buf: &mut [u8]) -> Result<bool, i32> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n > 0 {
            got += n as usize;
        } else if n == 0 {
            return if got == 0 { Ok(false) } else { Err(0) };
        } else {
            let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if e != libc::EINTR {
                return Err(e);
            }
        }
    }
    Ok(true)
}

/// Writes all of `buf`. Child-safe.
pub fn write_full(fd: RawFd, buf: &[u8]) -> Result<(), i32> {
    let mut put = 0;
    while put < buf.len() {
        // SAFETY: the pointer and length describe the unwritten tail of `buf`.
        let n = unsafe { libc::write(fd, buf[put..].as_ptr().cast(), buf.len() - put) };
        if n >= 0 {
            put += n as usize;
        } else {
            let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if e != libc::EINTR {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Parent-side `read_full` that must get the bytes.
pub fn must_read(fd: RawFd, buf: &mut [u8]) {
    match read_full(fd, buf) {
        Ok(true) => {}
        Ok(false) => panic!("raw peer closed the socket"),
        Err(e) => panic!("raw read: {}", io::Error::from_raw_os_error(e)),
    }
}

/// Parent-side `write_full` that must succeed.
pub fn must_write(fd: RawFd, buf: &[u8]) {
    if let Err(e) = write_full(fd, buf) {
        panic!("raw write: {}", io::Error::from_raw_os_error(e));
    }
}

/// In a forked child: die with SIGKILL if the bench process dies, so nothing is orphaned even if
/// the child is stuck outside a read.
pub fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG, sig) only sets a process attribute.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
}

/// `fork`. The caller's child branch must end in `_exit`.
pub fn fork() -> libc::pid_t {
    // SAFETY: the bench is single-threaded when it forks (see main.rs), and every child branch
    // ends in `_exit` without unwinding into the parent's code.
    check(unsafe { libc::fork() }, "fork")
}

/// Ends a forked child without running the parent's exit handlers or flushing its stdio.
pub fn exit_child(code: i32) -> ! {
    // SAFETY: _exit is always allowed.
    unsafe { libc::_exit(code) }
}

/// Blocking `waitpid`; returns the raw status.
pub fn wait(pid: libc::pid_t) -> i32 {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return status;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            panic!("waitpid {pid}: {e}");
        }
    }
}

/// The watchdog: SIGALRM's default action ends the bench after `secs` unless re-armed or
/// disarmed (0); every forked child dies with it (`PR_SET_PDEATHSIG`), spawned ones see their
/// channel close. No thread, so the bench stays single-threaded for its forks.
pub fn watchdog(secs: u32) {
    // SAFETY: alarm only (re)sets this process's timer.
    unsafe { libc::alarm(secs) };
}

/// An anonymous private mapping of `bytes`, 2 MiB-aligned, every 4 KiB page written, with
/// transparent huge pages requested (`MADV_HUGEPAGE`) or refused (`MADV_NOHUGEPAGE`).
pub struct Heap {
    map: *mut libc::c_void,
    map_len: usize,
    start: *mut u8,
    bytes: usize,
}

const HUGE: usize = 2 << 20;

impl Heap {
    pub fn new(bytes: usize, huge: bool) -> Heap {
        let map_len = bytes + HUGE;
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let map = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            panic!("mmap {bytes}: {}", io::Error::last_os_error());
        }
        let start = (map as usize).next_multiple_of(HUGE) as *mut u8;
        let advice = if huge {
            libc::MADV_HUGEPAGE
        } else {
            libc::MADV_NOHUGEPAGE
        };
        // SAFETY: [start, start + bytes) lies inside the mapping (it has HUGE bytes of slack).
        check(
            unsafe { libc::madvise(start.cast(), bytes, advice) },
            "madvise",
        );
        for off in (0..bytes).step_by(4096) {
            // SAFETY: inside the mapping, which is readable and writable.
            unsafe { ptr::write_volatile(start.add(off), 1) };
        }
        Heap {
            map,
            map_len,
            start,
            bytes,
        }
    }

    /// KiB of this mapping backed by huge pages (`AnonHugePages` of its `/proc/self/smaps`
    /// entry).
    pub fn anon_huge_kib(&self) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ') {
                if let Some((a, b)) = range.split_once('-') {
                    if let (Ok(a), Ok(b)) =
                        (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
                    {
                        let s = self.start as usize;
                        inside = a <= s && s < b;
                        continue;
                    }
                }
            }
            if inside && line.starts_with("AnonHugePages:") {
                return line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
            }
        }
        0
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; nothing borrows it.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_counts_fields_after_the_command_name() {
        // A command name with spaces and a ')' of its own; field 39 is 7.
        let fields: Vec<String> = (3..=52)
            .map(|i| if i == 39 { "7".into() } else { i.to_string() })
            .collect();
        let line = format!("1234 (a) b (c) {}\n", fields.join(" "));
        assert_eq!(stat_cpu(&line), Some(7));
        assert_eq!(stat_cpu("1234 (truncated"), None);
        assert_eq!(stat_cpu("1234 (x) R 1 2"), None);
    }

    #[test]
    fn our_own_cpu_is_one_we_may_run_on() {
        let cpu = last_cpu(my_pid()).expect("/proc/self/stat");
        assert!(
            CpuSet::current().cpus().contains(&(cpu as usize)),
            "cpu {cpu}"
        );
    }
}
