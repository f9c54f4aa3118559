//! Thin libc helpers shared by both sides of the bench: CPU affinity, the preloaded heap of row 6,
//! and blocking read/write loops that a forked child can use (no allocation, no panic).

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

/// A CPU affinity mask. Set on the calling thread before forking, so the child inherits it.
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

    /// The `n`-th CPU of this mask (counting from 0), alone.
    pub fn nth_only(&self, n: usize) -> CpuSet {
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut one: libc::cpu_set_t = unsafe { zeroed() };
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| {
                // SAFETY: `c` < CPU_SETSIZE, within the set.
                unsafe { libc::CPU_ISSET(c, &self.0) }
            })
            .nth(n)
            .expect("enough CPUs in the mask");
        // SAFETY: `cpu` < CPU_SETSIZE, within the set.
        unsafe { libc::CPU_SET(cpu, &mut one) };
        CpuSet(one)
    }

    /// How many CPUs the mask holds.
    pub fn count(&self) -> usize {
        // SAFETY: counts the bits of an initialised set.
        unsafe { libc::CPU_COUNT(&self.0) as usize }
    }

    /// Makes this the calling thread's mask (children forked afterwards inherit it).
    pub fn apply(&self) {
        // SAFETY: `self.0` is a valid cpu_set_t of the size passed.
        check(
            unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &self.0) },
            "sched_setaffinity",
        );
    }
}

/// Reads exactly `buf.len()` bytes. `Ok(false)`: end of stream before the first byte. Any other
/// failure (error, end of stream mid-buffer, `SO_RCVTIMEO` expiring) is `Err`. Child-safe.
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

/// Sets `SO_RCVTIMEO` and `SO_SNDTIMEO` on a socket: a blocked raw read or write fails after
/// `secs` instead of hanging, at no cost per operation.
pub fn set_socket_timeouts(fd: RawFd, secs: i64) {
    let tv = libc::timeval {
        tv_sec: secs,
        tv_usec: 0,
    };
    for opt in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
        // SAFETY: `tv` is a valid timeval of the size passed.
        check(
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&tv as *const libc::timeval).cast(),
                    size_of::<libc::timeval>() as libc::socklen_t,
                )
            },
            "setsockopt(SO_*TIMEO)",
        );
    }
}

/// In a forked child: die with SIGKILL if the bench process dies, so nothing is orphaned even if
/// the child is stuck outside a read.
pub fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG, sig) only sets a process attribute.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
}

/// Row 6: an anonymous private mapping of `bytes`, 2 MiB-aligned, every 4 KiB page written, with
/// transparent huge pages requested (`MADV_HUGEPAGE`) or refused (`MADV_NOHUGEPAGE`).
pub struct Heap {
    map: *mut libc::c_void,
    map_len: usize,
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
        Heap { map, map_len }
    }
}

impl Drop for Heap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`; nothing borrows it.
        unsafe { libc::munmap(self.map, self.map_len) };
    }
}

/// `AnonHugePages` and `Rss` of this process, in KiB (from /proc/self/smaps_rollup).
pub fn rss_and_huge_kib() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Rss:"), field("AnonHugePages:"))
}

/// `getrusage(who)`.
pub fn rusage(who: libc::c_int) -> libc::rusage {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { zeroed() };
    // SAFETY: `ru` is a valid out-pointer.
    check(unsafe { libc::getrusage(who, &mut ru) }, "getrusage");
    ru
}
