//! Processes: fork, exit, pidfds and the exit watch, reaping, signalling, process attributes.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{cvt, pipe, poll_now, set_sigmask, sigset, write_raw};

/// `pidfd_open(2)`: a descriptor that becomes readable when the process exits. Close-on-exec.
pub(crate) fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes (pid, flags) and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a fresh fd (pidfds are always close-on-exec).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// What a parent waits on for one child's exit, and signals it through: a pidfd, or where the
/// system has none (kernels before 5.3, valgrind, seccomp profiles that refuse the call), the
/// read end of a pipe into which a watcher thread writes a byte once `waitid(WEXITED | WNOWAIT)`
/// saw the child exit. Either way the descriptor becomes readable when the child has exited and
/// the child is left for the owner to reap. With a pidfd, signalling it can never hit another
/// process; with the watcher, not as long as nothing else in the process reaps the child.
pub(crate) struct ExitWatch {
    fd: OwnedFd,
    pid: libc::pid_t,
    is_pidfd: bool,
    /// The watcher thread, if any (joined on drop once it has reported, so that its end of
    /// the pipe is closed by the time the watch is gone).
    watcher: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        if let Some(watcher) = self.watcher.take() {
            // Once it has written its byte it only has to close its end and return; before
            // that (a child still running) it is left to finish on its own.
            if poll_now(self.fd.as_fd()) {
                let _ = watcher.join();
            }
        }
    }
}

/// Tests set this to exercise the watcher-thread fallback on a kernel that has pidfds.
static FORCE_EXIT_WATCH_THREAD: AtomicBool = AtomicBool::new(false);

/// Makes every [`ExitWatch`] created from now on use the watcher thread (for tests).
pub(crate) fn force_exit_watch_thread(on: bool) {
    FORCE_EXIT_WATCH_THREAD.store(on, Ordering::SeqCst);
}

impl ExitWatch {
    /// Starts watching `pid`, an unreaped child of this process.
    pub(crate) fn new(pid: libc::pid_t) -> io::Result<ExitWatch> {
        if !FORCE_EXIT_WATCH_THREAD.load(Ordering::SeqCst) {
            match pidfd_open(pid) {
                Ok(fd) => {
                    return Ok(ExitWatch {
                        fd,
                        pid,
                        is_pidfd: true,
                        watcher: None,
                    })
                }
                // ENOSYS: no pidfds here (old kernel, valgrind); EPERM: a seccomp profile that
                // refuses system calls it does not know (older container runtimes).
                Err(e) if !matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EPERM)) => {
                    return Err(e)
                }
                Err(_) => {}
            }
        }
        let (rd, wr) = pipe()?;
        // The watcher starts with every signal blocked (threads inherit the mask), so that it is
        // never the thread the kernel picks for a signal meant for the process.
        let old_mask = set_sigmask(&sigset(true));
        let spawned = std::thread::Builder::new()
            .name("fdserver-exit-watch".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                wait_exited_without_reaping(pid);
                // A byte, not just closing: a process forked meanwhile may hold a copy of this
                // end, and the read end must become readable whoever else holds one.
                write_raw(wr.as_raw_fd(), &[0]);
            });
        set_sigmask(&old_mask);
        Ok(ExitWatch {
            fd: rd,
            pid,
            is_pidfd: false,
            watcher: Some(spawned?),
        })
    }

    /// Readable once the child has exited.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Sends `sig` to the child; a child that already exited (but is not reaped) is `Ok`.
    ///
    /// Without a pidfd this is `kill(pid)`, which is safe as long as nothing else in the
    /// process reaps the child (a `waitpid(-1)` elsewhere would let the pid be recycled); a
    /// child the watcher saw exit is not signalled at all.
    pub(crate) fn kill(&self, sig: libc::c_int) -> io::Result<()> {
        if self.is_pidfd {
            return pidfd_kill(self.fd.as_fd(), sig);
        }
        if poll_now(self.fd.as_fd()) {
            return Ok(()); // it has exited
        }
        // SAFETY: kill takes no pointers. The pid is our unreaped child (see above).
        if unsafe { libc::kill(self.pid, sig) } == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Blocks until child `pid` has exited, without reaping it (or until waiting is impossible,
/// e.g. someone else reaped it).
fn wait_exited_without_reaping(pid: libc::pid_t) {
    loop {
        // SAFETY: an all-zero siginfo_t is a valid out-value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid with a valid out-pointer; WNOWAIT leaves the child waitable.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            return;
        }
    }
}

/// Non-blocking reap of `pid`: `Some(raw wait status)` if it has exited.
pub(crate) fn try_reap(pid: libc::pid_t) -> io::Result<Option<libc::c_int>> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        match r {
            0 => return Ok(None),
            -1 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            _ => return Ok(Some(status)),
        }
    }
}

/// Blocking reap of `pid` (call only once its pidfd is readable, or to finish a SIGKILL).
pub(crate) fn reap(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r != -1 {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends `sig` through the pidfd, so that a recycled pid is never signalled.
pub(crate) fn pidfd_kill(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal(pidfd, sig, NULL, 0) is the documented "like kill(2)" form.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        // ESRCH: it already exited (a zombie we have yet to reap). That is what we wanted.
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// `fork(2)`. Returns 0 in the child, the child's pid in the parent.
///
/// # Safety
/// The child of a multi-threaded process may only call async-signal-safe functions until it
/// execs or reaches code whose author accepted that risk (see the crate docs on fork safety).
pub(crate) unsafe fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: forwarded to the caller's contract.
    let pid = unsafe { libc::fork() };
    if pid == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

/// `_exit(2)`: ends the process without running atexit handlers or destructors.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and always allowed.
    unsafe { libc::_exit(code) }
}

/// The calling process's pid.
pub(crate) fn getpid() -> u32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() as u32 }
}

/// The effective uid of this process.
pub(crate) fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// `setpgid(0, 0)`: a new process group led by the caller, in the same session.
/// Async-signal-safe.
pub(crate) fn new_process_group() -> io::Result<()> {
    // SAFETY: setpgid takes integers only.
    cvt(unsafe { libc::setpgid(0, 0) }).map(drop)
}

/// `setsid(2)`: a new session and process group led by the caller.
pub(crate) fn setsid() -> io::Result<()> {
    // SAFETY: setsid takes no arguments.
    cvt(unsafe { libc::setsid() }).map(drop)
}

/// Sends `sig` to a process group.
pub(crate) fn kill_group(pgid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill with a negative pid signals the group; no memory is involved.
    cvt(unsafe { libc::kill(-pgid, sig) }).map(drop)
}

/// Sends `sig` to a process.
pub(crate) fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: as above.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// `PR_SET_PDEATHSIG`: the signal this process gets when the thread that forked it exits (0 to
/// clear). Linux-only; elsewhere a no-op would do.
pub(crate) fn set_parent_death_signal(sig: libc::c_int) {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
}

/// Sets the process umask, returning the old one.
pub(crate) fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// The calling thread's visible confinement: its `no_new_privs` flag and its seccomp mode
/// (`prctl(PR_GET_NO_NEW_PRIVS)`, `prctl(PR_GET_SECCOMP)`). Both are per thread: a thread that
/// confined itself alone (a seccomp filter without `TSYNC`) differs here from the others.
pub(crate) fn thread_confinement() -> (i32, i32) {
    // SAFETY: both prctl requests take no pointer and only read the calling thread's state.
    unsafe {
        (
            libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0),
            libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0),
        )
    }
}

/// The calling thread's CPU affinity (`sched_getaffinity`), or `None` if it cannot be read.
pub(crate) fn thread_affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: an all-zero cpu_set_t is an empty set; sched_getaffinity fills at most its size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is the calling thread; the pointer and size describe `set`.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    (r == 0).then_some(set)
}

/// Sets the calling thread's CPU affinity (`sched_setaffinity`); `false` if the kernel refused.
pub(crate) fn set_thread_affinity(set: &libc::cpu_set_t) -> bool {
    // SAFETY: pid 0 is the calling thread; the pointer and size describe a valid cpu_set_t.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) == 0 }
}
