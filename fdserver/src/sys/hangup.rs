//! The hang-up watch: a process that serves one client over a socket ends itself once that client
//! is gone, on the same schedule as [`ServerHandle::stop`](crate::ServerHandle::stop), without
//! depending on anyone being able to signal it.
//!
//! A small thread (started with `pthread_create`, all signals blocked, a 64 KiB stack reserved
//! once in the parent, no lock and no allocation of its own) waits in `ppoll` for the socket's
//! hang-up only: `POLLHUP` (the peer closed its end, its process died, or it shut the connection
//! down both ways) or `POLLERR`. It asks for no event, so data arriving on the socket never wakes
//! it: the kernel filters wake-ups by event, and a call costs nothing more. A half-close
//! (`shutdown(SHUT_WR)` by a peer that still reads) is not a hang-up. Once the hang-up is seen,
//! the thread waits `after_close`, sends SIGTERM to the process's main thread (the loop's),
//! waits `after_term`, and sends SIGKILL: if the process has exited by then (its loop saw the end
//! of stream), the thread went with it. Its only system calls are `futex` (once, at start),
//! `ppoll`, `clock_gettime`, `getpid` and `tgkill`, which a sandbox's seccomp filter allows.
//!
//! `PR_SET_PDEATHSIG` would not do: it fires when the *thread* that forked the process exits, so
//! a server started from a short-lived thread would die with that thread, and it says nothing
//! about a client that closed the connection but lives on.
//!
//! One watch per process (a forked server serves one client); the forked server starts it before
//! `initialize_server`, so a long initialisation is covered too, except in a sandboxed server,
//! which starts it inside its sandbox after `initialize_server`. A program started by
//! [`Spawn`](crate::Spawn) runs one too: `Spawn` names the socket it hands over in an
//! environment variable ([`SPAWN_WATCH_ENV`]), and `serve` on that socket starts the watch (the
//! program serves that one client, as a forked server does); `serve` on any other socket does
//! not (it may run in a process that must outlive its peer). [`HangupWatch::start`] may be
//! called later instead (a sandbox that needs a single thread while it applies its layers starts
//! it inside them).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

static SOCK: AtomicI32 = AtomicI32::new(-1);
static AFTER_CLOSE_NS: AtomicU64 = AtomicU64::new(0);
static AFTER_TERM_NS: AtomicU64 = AtomicU64::new(0);
/// Set to 1 by the watch thread once it runs its own code (a futex word `start` waits on).
static RUNNING: AtomicU32 = AtomicU32::new(0);
/// The process whose watch runs (0: none). A pid, not a flag: a process forked from a server
/// inherits its memory but not its threads, and may start a watch of its own.
static WATCHING_PID: AtomicI32 = AtomicI32::new(0);

/// The watch thread's stack size.
const STACK: usize = 64 * 1024;

/// A stack for the watch threads of the servers this process forks, reserved once here and
/// never touched in this process: in each child its pages are fresh zero pages (no copy, and no
/// `mmap`/`mprotect` on the child's path). 0: not reserved (yet, or it failed: glibc then
/// allocates the stack in the child).
static STACK_BASE: AtomicUsize = AtomicUsize::new(0);

/// The schedule on which a process ends itself once its client hung up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HangupWatch {
    /// From the hang-up to SIGTERM.
    pub(crate) after_close: Duration,
    /// From SIGTERM to SIGKILL.
    pub(crate) after_term: Duration,
}

impl HangupWatch {
    /// Prepares, in the parent, what [`start`](Self::start) needs in a forked child (its stack:
    /// reserved once per process). Cheap after the first call.
    pub(crate) fn prepare() {
        if STACK_BASE.load(Ordering::SeqCst) != 0 {
            return;
        }
        // SAFETY: an anonymous private mapping, owned by nobody else; never unmapped (it serves
        // every server this process forks).
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return;
        }
        if STACK_BASE
            .compare_exchange(0, p as usize, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // Another thread reserved one first.
            // SAFETY: our own mapping, used by nobody.
            unsafe { libc::munmap(p, STACK) };
        }
    }

    /// Starts watching `sock`, whose descriptor must stay open (under the same number) for the
    /// rest of the process's life. Fails if a watch already runs in this process, or if the
    /// thread cannot be created.
    ///
    /// With `until_running`, returns once the thread runs its own code: from then on it makes no
    /// system call but `ppoll`, `clock_gettime`, `getpid` and `tgkill` (so that a seccomp filter
    /// applied right after, to every thread, does not meet the C library's thread start-up calls
    /// in it). Without, returns once the thread exists: it starts up while the caller goes on
    /// (on another CPU, off the start's critical path), and a hang-up that comes first is seen
    /// at its first `ppoll` all the same.
    pub(crate) fn start(&self, sock: BorrowedFd<'_>, until_running: bool) -> io::Result<()> {
        // SAFETY: getpid cannot fail.
        let me = unsafe { libc::getpid() };
        if WATCHING_PID.swap(me, Ordering::SeqCst) == me {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a hang-up watch already runs in this process",
            ));
        }
        SOCK.store(sock.as_raw_fd(), Ordering::SeqCst);
        AFTER_CLOSE_NS.store(nanos(self.after_close), Ordering::SeqCst);
        AFTER_TERM_NS.store(nanos(self.after_term), Ordering::SeqCst);
        RUNNING.store(0, Ordering::SeqCst);
        let r = spawn_detached(watch_main);
        if r.is_err() {
            WATCHING_PID.store(0, Ordering::SeqCst);
            return r;
        }
        while until_running && RUNNING.load(Ordering::SeqCst) == 0 {
            // SAFETY: FUTEX_WAIT on a static, aligned u32 while it still holds 0; no timeout.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    RUNNING.as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    0u32,
                    ptr::null::<libc::timespec>(),
                )
            };
        }
        Ok(())
    }
}

/// The environment variable through which [`Spawn`](crate::Spawn) asks the program it starts to
/// run the hang-up watch in [`serve`](crate::serve): `DEV:INO:AFTER_CLOSE_NS:AFTER_TERM_NS`, the
/// device and inode numbers of the socket it hands over and the grace periods. `serve` honours it
/// only on that socket (a program that inherited the variable but serves another socket, or that
/// calls `serve` on a socket of its own, gets no watch).
pub(crate) const SPAWN_WATCH_ENV: &str = "FDSERVER_HANGUP_WATCH";

impl HangupWatch {
    /// The value of [`SPAWN_WATCH_ENV`] that makes `serve` on `sock` (the program's end of it)
    /// run this watch.
    pub(crate) fn to_env(self, sock: BorrowedFd<'_>) -> io::Result<String> {
        let (dev, ino) = socket_identity(sock)?;
        Ok(format!(
            "{dev}:{ino}:{}:{}",
            nanos(self.after_close),
            nanos(self.after_term)
        ))
    }

    /// The watch [`SPAWN_WATCH_ENV`] asks for, if it names `sock`.
    pub(crate) fn from_env(sock: BorrowedFd<'_>) -> Option<HangupWatch> {
        let value = std::env::var(SPAWN_WATCH_ENV).ok()?;
        let mut parts = value.split(':').map(|p| p.parse::<u64>().ok());
        let (Some(dev), Some(ino), Some(close), Some(term), None) = (
            parts.next().flatten(),
            parts.next().flatten(),
            parts.next().flatten(),
            parts.next().flatten(),
            parts.next(),
        ) else {
            return None;
        };
        (socket_identity(sock).ok()? == (dev, ino)).then_some(HangupWatch {
            after_close: Duration::from_nanos(close),
            after_term: Duration::from_nanos(term),
        })
    }
}

/// The device and inode numbers of `fd`'s file: the same for every descriptor of one socket,
/// in every process.
fn socket_identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `stat` into the buffer we own; the descriptor is borrowed, open.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so it filled the struct.
    let st = unsafe { st.assume_init() };
    // `dev_t` and `ino_t` are not `u64` on every target.
    #[allow(clippy::unnecessary_cast)]
    Ok((st.st_dev as u64, st.st_ino as u64))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Starts a detached thread running `f`, on the stack [`HangupWatch::prepare`] reserved (or one
/// glibc allocates). The thread inherits the caller's signal mask.
fn spawn_detached(f: extern "C" fn(*mut libc::c_void) -> *mut libc::c_void) -> io::Result<()> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    let stack = STACK_BASE.load(Ordering::SeqCst);
    // SAFETY: pthread_attr_init initialises `attr`; the setters only read and write it; it is
    // destroyed once pthread_create has copied what it needs. `f` is a plain function that
    // takes no data (its arguments are in statics). The reserved stack is STACK bytes of this
    // process's memory that nothing else uses (in a forked child: the parent never touches it,
    // and this is the only thread of the child that does).
    unsafe {
        let e = libc::pthread_attr_init(attr.as_mut_ptr());
        if e != 0 {
            return Err(io::Error::from_raw_os_error(e));
        }
        if stack != 0 {
            libc::pthread_attr_setstack(attr.as_mut_ptr(), stack as *mut libc::c_void, STACK);
        } else {
            libc::pthread_attr_setstacksize(attr.as_mut_ptr(), STACK);
        }
        libc::pthread_attr_setdetachstate(attr.as_mut_ptr(), libc::PTHREAD_CREATE_DETACHED);
        let mut thread = std::mem::MaybeUninit::<libc::pthread_t>::uninit();
        let e = libc::pthread_create(thread.as_mut_ptr(), attr.as_ptr(), f, ptr::null_mut());
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        if e != 0 {
            return Err(io::Error::from_raw_os_error(e));
        }
    }
    Ok(())
}

/// The watch thread. Only system calls, and only those every seccomp preset of a sandboxed
/// server allows (`futex` once, then `ppoll`, `clock_gettime`, `getpid`, `tgkill`): no lock, no
/// allocation, no panic.
extern "C" fn watch_main(_: *mut libc::c_void) -> *mut libc::c_void {
    let fd = SOCK.load(Ordering::SeqCst);
    RUNNING.store(1, Ordering::SeqCst);
    // SAFETY: FUTEX_WAKE on a static, aligned u32.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            RUNNING.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            1,
        )
    };
    loop {
        // No event asked for: only POLLHUP, POLLERR (and POLLNVAL) are reported, and data
        // arriving on the socket does not wake this thread.
        let mut pfd = libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no timeout, no signal mask change.
        let r = unsafe { libc::ppoll(&mut pfd, 1, ptr::null(), ptr::null()) };
        if r > 0 {
            if pfd.revents & libc::POLLNVAL != 0 {
                return ptr::null_mut(); // no socket to watch (not expected)
            }
            break; // POLLHUP or POLLERR: the client is gone
        }
        if r < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return ptr::null_mut();
        }
    }
    let mut at = now();
    for (wait, sig) in [
        (AFTER_CLOSE_NS.load(Ordering::SeqCst), libc::SIGTERM),
        (AFTER_TERM_NS.load(Ordering::SeqCst), libc::SIGKILL),
    ] {
        at = add(at, wait);
        sleep_until(at);
        // To the server's main thread, which runs its loop: in a forked child its thread id is
        // the process id. (In a spawned program whose `serve` runs on another thread, the
        // process-wide handler `serve` installed passes SIGTERM on to the serving thread. SIGKILL
        // ends the whole process whichever thread it is sent to.)
        // SAFETY: getpid and tgkill take integers; signalling our own process.
        unsafe {
            let pid = libc::getpid();
            libc::syscall(libc::SYS_tgkill, pid, pid, sig);
        }
    }
    ptr::null_mut()
}

fn now() -> libc::timespec {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t
}

fn add(t: libc::timespec, ns: u64) -> libc::timespec {
    let total = t.tv_nsec as u64 + ns % 1_000_000_000;
    let secs = (ns / 1_000_000_000).saturating_add(total / 1_000_000_000);
    libc::timespec {
        tv_sec: t
            .tv_sec
            .saturating_add(secs.min(i64::MAX as u64) as libc::time_t),
        tv_nsec: (total % 1_000_000_000) as libc::c_long,
    }
}

/// Sleeps until `t` (`CLOCK_MONOTONIC`), with `ppoll` on no descriptor (which sandboxes allow
/// where they refuse `clock_nanosleep`).
fn sleep_until(t: libc::timespec) {
    loop {
        let n = now();
        let (mut sec, mut nsec) = (t.tv_sec - n.tv_sec, t.tv_nsec - n.tv_nsec);
        if nsec < 0 {
            sec -= 1;
            nsec += 1_000_000_000;
        }
        if sec < 0 || (sec == 0 && nsec == 0) {
            return;
        }
        let left = libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        };
        // SAFETY: no descriptors (a null array of length 0), a valid timeout, no mask change.
        unsafe { libc::ppoll(ptr::null_mut(), 0, &left, ptr::null()) };
    }
}
