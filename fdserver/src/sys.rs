//! The operating-system layer: every raw syscall the runtime makes lives here, each behind a small
//! function, so that a second platform only has to provide this module.
//!
//! Everything in this module that the forked child calls before its server loop
//! (`reset_signal_dispositions`, `close_fds_except`, `set_disposition`, `set_loop_thread`,
//! `set_sigmask`, `exit_now`)
//! is async-signal-safe: no allocation, no locks.

use std::io::{self, IoSlice};
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI16, AtomicI32, AtomicU64, Ordering};
use std::time::Instant;

/// How many descriptors one `recvmsg` accepts before the control message counts as truncated.
pub(crate) const MAX_FDS_PER_RECV: usize = 4;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// A connected `SOCK_STREAM` UNIX socket pair, both ends close-on-exec.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a valid, writable array of two ints, as socketpair(2) requires.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair succeeded, so both fds are open and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Aligned storage for a control message holding up to `MAX_FDS_PER_RECV` descriptors.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

const _: () = {
    // CMSG_SPACE(4 * sizeof(int)) = 16 (header) + 16 = 32 on 64-bit Linux; keep room to spare.
    assert!(size_of::<CmsgBuf>() >= 16 + MAX_FDS_PER_RECV * size_of::<RawFd>() + 8);
};

/// Points `msg`'s control data at `cmsg`, holding one `SCM_RIGHTS` descriptor: `fd`.
fn attach_fd(msg: &mut libc::msghdr, cmsg: &mut CmsgBuf, fd: BorrowedFd<'_>) {
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `space` bytes of aligned storage, so CMSG_FIRSTHDR returns
    // a valid header pointer and CMSG_DATA has room for one int.
    unsafe {
        let hdr = libc::CMSG_FIRSTHDR(msg);
        (*hdr).cmsg_level = libc::SOL_SOCKET;
        (*hdr).cmsg_type = libc::SCM_RIGHTS;
        (*hdr).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        ptr::write_unaligned(libc::CMSG_DATA(hdr).cast::<RawFd>(), fd.as_raw_fd());
    }
}

/// Sends `iov` (all of it or a prefix: the return value says how much) with `MSG_NOSIGNAL`.
/// With `fd`, attaches it as one `SCM_RIGHTS` descriptor.
pub(crate) fn send(
    sock: BorrowedFd<'_>,
    iov: &[IoSlice<'_>],
    fd: Option<BorrowedFd<'_>>,
    dontwait: bool,
) -> io::Result<usize> {
    let mut cmsg = CmsgBuf([0; 64]);
    // SAFETY: an all-zero msghdr is a valid "empty" value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec; // IoSlice is ABI-compatible with iovec
    msg.msg_iovlen = iov.len() as _;
    if let Some(fd) = fd {
        attach_fd(&mut msg, &mut cmsg, fd);
    }
    let mut flags = libc::MSG_NOSIGNAL;
    if dontwait {
        flags |= libc::MSG_DONTWAIT;
    }
    // SAFETY: msg describes live buffers (iov, cmsg) for the duration of the call.
    cvt_size(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, flags) })
}

/// Sends `frame`, then one data byte `00` carrying `fd`, as two messages of one `sendmmsg`:
/// two socket writes, so the descriptor stays attached to its own byte as the wire format
/// requires, for the price of one system call. Returns how many bytes of `frame` went out and
/// whether the descriptor did.
pub(crate) fn send_frame_then_fd(
    sock: BorrowedFd<'_>,
    frame: &[u8],
    fd: BorrowedFd<'_>,
    dontwait: bool,
) -> io::Result<(usize, bool)> {
    let mut cmsg = CmsgBuf([0; 64]);
    let zero = [0u8; 1];
    let mut iov = [
        libc::iovec {
            iov_base: frame.as_ptr() as *mut libc::c_void,
            iov_len: frame.len(),
        },
        libc::iovec {
            iov_base: zero.as_ptr() as *mut libc::c_void,
            iov_len: 1,
        },
    ];
    // SAFETY: all-zero mmsghdr values are valid empty messages; the fields are filled below.
    let mut msgs: [libc::mmsghdr; 2] = unsafe { std::mem::zeroed() };
    msgs[0].msg_hdr.msg_iov = &mut iov[0];
    msgs[0].msg_hdr.msg_iovlen = 1;
    msgs[1].msg_hdr.msg_iov = &mut iov[1];
    msgs[1].msg_hdr.msg_iovlen = 1;
    attach_fd(&mut msgs[1].msg_hdr, &mut cmsg, fd);
    let mut flags = libc::MSG_NOSIGNAL;
    if dontwait {
        flags |= libc::MSG_DONTWAIT;
    }
    // SAFETY: msgs, iov, zero and cmsg are live for the duration of the call.
    let n = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), 2, flags as _) };
    match n {
        -1 => Err(io::Error::last_os_error()),
        2 => Ok((frame.len(), true)),
        1 => Ok((msgs[0].msg_len as usize, false)),
        _ => Ok((0, false)),
    }
}

/// What one `recvmsg` brought.
pub(crate) struct Received {
    /// Data bytes read (0 = end of stream).
    pub n: usize,
    /// Descriptors that arrived, already owned (so dropping closes them).
    pub fds: [Option<OwnedFd>; MAX_FDS_PER_RECV],
    /// The kernel had more descriptors than fitted (`MSG_CTRUNC`); it closed the rest.
    pub truncated: bool,
}

impl Received {
    pub fn fd_count(&self) -> usize {
        self.fds.iter().filter(|f| f.is_some()).count()
    }
}

/// One `recvmsg` into `buf` with `MSG_CMSG_CLOEXEC`; every descriptor that arrives is wrapped in
/// an `OwnedFd` at once.
pub(crate) fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], dontwait: bool) -> io::Result<Received> {
    let mut cmsg = CmsgBuf([0; 64]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid "empty" value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure computation.
    msg.msg_controllen =
        unsafe { libc::CMSG_SPACE((MAX_FDS_PER_RECV * size_of::<RawFd>()) as u32) } as _;
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if dontwait {
        flags |= libc::MSG_DONTWAIT;
    }
    // SAFETY: msg describes live, writable buffers (buf, cmsg) for the duration of the call.
    let n = cvt_size(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) })?;
    let mut out = Received {
        n,
        fds: Default::default(),
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    };
    let mut slot = 0;
    // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG_* macros walk exactly that
    // range, and each SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / sizeof(int) fds that
    // the kernel just installed in this process and that nothing else owns yet.
    unsafe {
        let mut hdr = libc::CMSG_FIRSTHDR(&msg);
        while !hdr.is_null() {
            if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(hdr);
                let bytes = (*hdr).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / size_of::<RawFd>() {
                    let fd = ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    let owned = OwnedFd::from_raw_fd(fd);
                    if slot < MAX_FDS_PER_RECV {
                        out.fds[slot] = Some(owned);
                        slot += 1;
                    } else {
                        out.truncated = true; // dropped (closed) right here
                    }
                }
            }
            hdr = libc::CMSG_NXTHDR(&msg, hdr);
        }
    }
    Ok(out)
}

/// Waits until `fd` is ready for `events` or the deadline passes. Returns `false` on time-out.
/// `EINTR` is retried with the remaining time.
pub(crate) fn wait_fd(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    deadline: Option<Instant>,
) -> io::Result<bool> {
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    0
                } else {
                    // Round up so that we never wake before the deadline and spin.
                    left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int
                }
            }
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        match cvt(unsafe { libc::poll(&mut pfd, 1, timeout) }) {
            Ok(0) => {
                if timeout == 0 || deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(false);
                }
            }
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

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

/// Closes every descriptor `>= 3` except those in `keep` (sorted ascending, deduplicated).
/// Async-signal-safe: uses `close_range(2)`, and falls back to closing one by one up to the
/// descriptor limit on kernels that lack it.
pub(crate) fn close_fds_except(keep: &[RawFd]) {
    let mut from: u32 = 3;
    for &k in keep {
        if k < 3 {
            continue;
        }
        let k = k as u32;
        if k > from {
            close_range(from, k - 1);
        }
        from = from.max(k + 1);
    }
    close_range(from, u32::MAX);
}

fn close_range(first: u32, last: u32) {
    // SAFETY: close_range takes (first, last, flags) and only closes descriptors.
    let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if r == 0 {
        return;
    }
    // ENOSYS (kernel < 5.9) or EINVAL: close one by one, up to the soft descriptor limit.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid out-pointer.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 20) as u32
    } else {
        1024
    };
    let mut fd = first;
    while fd <= last && fd < max {
        // SAFETY: closing a descriptor number; EBADF for unused numbers is harmless.
        unsafe { libc::close(fd as RawFd) };
        fd += 1;
    }
}

/// Sets close-on-exec on a descriptor (used for inherited descriptors).
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD on a valid descriptor.
    unsafe {
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFD))?;
        if flags & libc::FD_CLOEXEC == 0 {
            cvt(libc::fcntl(
                fd.as_raw_fd(),
                libc::F_SETFD,
                flags | libc::FD_CLOEXEC,
            ))?;
        }
    }
    Ok(())
}

/// Whether `fd` is an open descriptor.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries; EBADF means "not open".
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

// ---------------------------------------------------------------------------------------------
// Signals
// ---------------------------------------------------------------------------------------------

/// Bit `n` set = signal `n` arrived and has not been handled yet. Written only by
/// [`flag_handler`] (async-signal-safe: atomics and at most three system calls).
static PENDING: AtomicU64 = AtomicU64::new(0);

/// The thread running a server loop (0: none). A caught signal delivered to another thread is
/// forwarded to it, so that a loop waiting in `poll` always wakes.
static LOOP_TID: AtomicI32 = AtomicI32::new(0);

/// The two `pollfd`s the loop's `poll` reads: its socket, and a wake-up slot that is `-1`
/// (ignored by `poll`) while the loop looks at [`PENDING`] and that [`flag_handler`] sets to
/// [`NEVER_OPEN_FD`], which `poll` reports at once as `POLLNVAL`. A signal that lands after the
/// check but before `poll` starts thus makes `poll` return at once (the kernel reads the array
/// after the system call began), and one that lands during `poll` interrupts it (EINTR). This
/// closes the check-then-wait race without blocking the signals, so the loop needs neither a
/// signal mask change nor a `sigpending` per message, and waits without a timer.
#[repr(C)]
struct PollSlot {
    fd: AtomicI32,
    events: AtomicI16,
    revents: AtomicI16,
}

// The kernel reads `WAIT_FDS` as `struct pollfd[2]`: same size, alignment and field order.
const _: () = assert!(
    size_of::<PollSlot>() == size_of::<libc::pollfd>()
        && std::mem::align_of::<PollSlot>() == std::mem::align_of::<libc::pollfd>()
);

static WAIT_FDS: [PollSlot; 2] = [
    PollSlot {
        fd: AtomicI32::new(-1),
        events: AtomicI16::new(0),
        revents: AtomicI16::new(0),
    },
    PollSlot {
        fd: AtomicI32::new(-1),
        events: AtomicI16::new(0),
        revents: AtomicI16::new(0),
    },
];

/// A descriptor number no process can have open: Linux caps the descriptor table
/// (`fs.nr_open`) at `INT_MAX` rounded down to a multiple of 64, so every open descriptor is
/// below this one, and `poll` reports it as `POLLNVAL` without waiting.
const NEVER_OPEN_FD: i32 = i32::MAX;

extern "C" fn flag_handler(sig: libc::c_int) {
    // SAFETY: errno is thread-local; saving and restoring it keeps the interrupted code's value.
    let errno = unsafe { *libc::__errno_location() };
    let loop_tid = LOOP_TID.load(Ordering::SeqCst);
    // SAFETY: gettid, getpid and tgkill are async-signal-safe system calls without pointers.
    let forwarded = loop_tid != 0
        && unsafe { libc::gettid() } != loop_tid
        && unsafe {
            libc::syscall(
                libc::SYS_tgkill,
                libc::getpid() as libc::c_long,
                loop_tid as libc::c_long,
                sig as libc::c_long,
            )
        } == 0;
    // Another thread took it (a thread the user started with the signal unblocked): it was
    // sent on to the loop's thread, where this handler records it, once. Recording it here too
    // would let the loop handle it twice.
    if !forwarded {
        if (0..64).contains(&sig) {
            PENDING.fetch_or(1u64 << sig, Ordering::SeqCst);
        }
        WAIT_FDS[1].fd.store(NEVER_OPEN_FD, Ordering::SeqCst);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Makes the calling thread the one whose waits caught signals must wake (`true`), or no thread
/// (`false`). Async-signal-safe.
pub(crate) fn set_loop_thread(on: bool) {
    // SAFETY: gettid cannot fail.
    let tid = if on { unsafe { libc::gettid() } } else { 0 };
    LOOP_TID.store(tid, Ordering::SeqCst);
}

/// Makes the calling thread the loop thread if no other thread is one; `false` if another is.
pub(crate) fn claim_loop_thread() -> bool {
    // SAFETY: gettid cannot fail.
    let tid = unsafe { libc::gettid() };
    LOOP_TID
        .compare_exchange(0, tid, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
}

/// Whether a caught signal arrived and was not yet taken by [`take_pending`].
pub(crate) fn signals_pending() -> bool {
    PENDING.load(Ordering::SeqCst) != 0
}

/// Makes `sock` the descriptor the loop's waits watch (once, when a loop starts).
pub(crate) fn set_wait_socket(sock: BorrowedFd<'_>) {
    WAIT_FDS[0].fd.store(sock.as_raw_fd(), Ordering::SeqCst);
    WAIT_FDS[0].events.store(libc::POLLIN, Ordering::SeqCst);
}

/// Arms the loop's wait: call before checking [`take_pending`], then call
/// [`wait_readable_or_signal`]. See [`WAIT_FDS`].
pub(crate) fn arm_wait() {
    WAIT_FDS[1].fd.store(-1, Ordering::SeqCst);
}

/// Takes (and clears) the set of signals that arrived since the last call.
pub(crate) fn take_pending() -> u64 {
    // Load first: the common case (nothing) then does not write the page, which in a freshly
    // forked child would be a copy-on-write fault.
    if PENDING.load(Ordering::SeqCst) == 0 {
        return 0;
    }
    PENDING.swap(0, Ordering::SeqCst)
}

/// Highest signal number on this system.
pub(crate) fn sigmax() -> libc::c_int {
    libc::SIGRTMAX()
}

/// An empty or full signal set.
pub(crate) fn sigset(full: bool) -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset/sigfillset initialise the whole set.
    unsafe {
        if full {
            libc::sigfillset(set.as_mut_ptr());
        } else {
            libc::sigemptyset(set.as_mut_ptr());
        }
        set.assume_init()
    }
}

pub(crate) fn sigset_add(set: &mut libc::sigset_t, sig: libc::c_int) {
    // SAFETY: set is initialised; invalid numbers only make sigaddset return EINVAL.
    unsafe { libc::sigaddset(set, sig) };
}

pub(crate) fn sigset_del(set: &mut libc::sigset_t, sig: libc::c_int) {
    // SAFETY: as above.
    unsafe { libc::sigdelset(set, sig) };
}

/// `pthread_sigmask(SIG_SETMASK)`; returns the previous mask.
pub(crate) fn set_sigmask(set: &libc::sigset_t) -> libc::sigset_t {
    let mut old = sigset(false);
    // SAFETY: both pointers are valid sigsets; SIG_SETMASK cannot fail with valid arguments.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, set, &mut old) };
    old
}

/// The calling thread's signal mask.
pub(crate) fn get_sigmask() -> libc::sigset_t {
    let empty = sys_empty();
    let mut old = sigset(false);
    // SAFETY: SIG_BLOCK with an empty set changes nothing and reports the current mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &empty, &mut old) };
    old
}

fn sys_empty() -> libc::sigset_t {
    sigset(false)
}

/// A saved disposition, to restore after serving in the current process.
pub(crate) type SavedAction = libc::sigaction;

/// Sets `sig` to the default action, to ignore, or to the runtime's flag handler.
/// Returns the previous disposition.
pub(crate) fn set_disposition(sig: libc::c_int, how: Disposition) -> io::Result<SavedAction> {
    // SAFETY: an all-zero sigaction is valid (empty mask, no flags); we fill in the handler.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = match how {
        Disposition::Default => libc::SIG_DFL,
        Disposition::Ignore => libc::SIG_IGN,
        Disposition::Flag => flag_handler as *const () as usize,
    };
    // SA_RESTART: the flag handler's signals stay unblocked while handlers run, and their
    // blocking reads and writes should not fail with EINTR because of it. (`poll`, where the
    // loop waits, is never restarted: it reports EINTR.)
    act.sa_flags = match how {
        Disposition::Flag => libc::SA_RESTART,
        _ => 0,
    };
    // SAFETY: act.sa_mask must be initialised; sigemptyset does that.
    unsafe { libc::sigemptyset(&mut act.sa_mask) };
    // SAFETY: an all-zero sigaction is a valid out-value.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; sigaction is async-signal-safe.
    cvt(unsafe { libc::sigaction(sig, &act, &mut old) })?;
    Ok(old)
}

/// Whether SIGCHLD is ignored (`SIG_IGN`) or set with `SA_NOCLDWAIT`: then the kernel reaps
/// children itself and their exit status is lost.
pub(crate) fn children_autoreaped() -> bool {
    // SAFETY: an all-zero sigaction is a valid out-value; a null `act` only queries.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: querying the disposition of SIGCHLD.
    if unsafe { libc::sigaction(libc::SIGCHLD, ptr::null(), &mut old) } != 0 {
        return false;
    }
    old.sa_sigaction == libc::SIG_IGN || old.sa_flags & libc::SA_NOCLDWAIT != 0
}

/// Restores a disposition saved by [`set_disposition`].
pub(crate) fn restore_disposition(sig: libc::c_int, old: &SavedAction) {
    // SAFETY: `old` came from sigaction(2).
    unsafe { libc::sigaction(sig, old, ptr::null_mut()) };
}

#[derive(Clone, Copy)]
pub(crate) enum Disposition {
    Default,
    Ignore,
    Flag,
}

/// Resets every catchable signal up to `max` (from [`sigmax`], computed before the fork) to its
/// default action, except those in `skip` (bit `n`: signal `n`), which the caller sets itself
/// right after. The first step of a forked server; async-signal-safe.
///
/// One `sigaction` per signal (about 0.15 µs each here, 10 µs in all) is cheaper in a freshly
/// forked child than finding out which ones need it: reading `/proc/self/status` there costs
/// about 30 µs, because procfs first creates the new process's entries.
pub(crate) fn reset_signal_dispositions(max: libc::c_int, skip: u64) {
    // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask and no flags.
    let act: libc::sigaction = unsafe { std::mem::zeroed() };
    for sig in 1..=max {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || (sig < 64 && skip & (1u64 << sig) != 0) {
            continue;
        }
        // Signals reserved by the C library (32, 33 on glibc) answer EINVAL: fine.
        // SAFETY: a valid sigaction; no old action asked for.
        unsafe { libc::sigaction(sig, &act, ptr::null_mut()) };
    }
}

/// Waits until the socket given to [`set_wait_socket`] is readable or a caught signal arrives, with no
/// check-then-wait race as long as [`arm_wait`] was called before the caller last looked at
/// [`take_pending`] (see [`WAIT_FDS`]). Returns `true` if readable (or hung up: the read will
/// tell), `false` if woken by a signal.
pub(crate) fn wait_readable_or_signal() -> io::Result<bool> {
    // SAFETY: `WAIT_FDS` is laid out as two `pollfd`s (checked above) and lives forever; the
    // kernel writes only the `revents` fields (every one, each call). No timeout: no timer.
    let r = unsafe { libc::poll(WAIT_FDS.as_ptr() as *mut libc::pollfd, 2, -1) };
    if r == -1 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(WAIT_FDS[0].revents.load(Ordering::SeqCst) != 0)
}

/// The calling process's pid.
pub(crate) fn getpid() -> u32 {
    // SAFETY: getpid cannot fail.
    unsafe { libc::getpid() as u32 }
}

// ---------------------------------------------------------------------------------------------
// Used by the preloader
// ---------------------------------------------------------------------------------------------

/// Writes all of `data` to a raw descriptor without taking any lock (std's stdout/stderr locks
/// may be held by another thread at a `fork`). Errors are ignored: this is for logs.
pub(crate) fn write_raw(fd: RawFd, data: &[u8]) {
    let mut off = 0;
    while off < data.len() {
        // SAFETY: the pointer and length describe live bytes of `data`.
        let r = unsafe { libc::write(fd, data[off..].as_ptr().cast(), data.len() - off) };
        if r > 0 {
            off += r as usize;
        } else if r == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        } else {
            return;
        }
    }
}

/// A `signalfd(2)` (close-on-exec, non-blocking) for the signals in `set`, which the caller must
/// keep blocked.
pub(crate) fn signalfd(set: &libc::sigset_t) -> io::Result<OwnedFd> {
    // SAFETY: -1 asks for a new descriptor; `set` is an initialised sigset.
    let fd = cvt(unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) })?;
    // SAFETY: signalfd returned a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads one pending signal number from a signalfd, if any.
pub(crate) fn read_signalfd(fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    // SAFETY: signalfd_siginfo is plain data; all-zero is valid.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: reading exactly one signalfd_siginfo into a valid buffer.
        let r = unsafe {
            libc::read(
                fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size_of::<libc::signalfd_siginfo>(),
            )
        };
        if r == size_of::<libc::signalfd_siginfo>() as isize {
            return Ok(Some(info.ssi_signo as i32));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// `flock(2)`; `Ok(false)` when `nonblocking` and the lock is held elsewhere.
pub(crate) fn flock(fd: BorrowedFd<'_>, exclusive: bool, nonblocking: bool) -> io::Result<bool> {
    let mut op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    if nonblocking {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock on a valid descriptor.
        if unsafe { libc::flock(fd.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if nonblocking => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// The uid of the process at the other end of a connected UNIX socket (`SO_PEERCRED`).
pub(crate) fn peer_uid(sock: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid out-pointers of the right size.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.uid)
}

/// The effective uid of this process.
pub(crate) fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
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

/// `dup2(2)` onto a fixed descriptor number (the copy is not close-on-exec).
pub(crate) fn dup2(from: BorrowedFd<'_>, to: RawFd) -> io::Result<()> {
    loop {
        // SAFETY: dup2 on a valid source descriptor.
        match cvt(unsafe { libc::dup2(from.as_raw_fd(), to) }) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Closes a descriptor number owned by no Rust value (after `dup2` games in a child).
pub(crate) fn close_raw(fd: RawFd) {
    // SAFETY: closing a number; the caller guarantees no Rust value owns it.
    unsafe { libc::close(fd) };
}

/// Asks for SIGIO when `fd` becomes readable or hangs up (`O_ASYNC` + `F_SETOWN`).
pub(crate) fn set_async_owner(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a valid descriptor with integer arguments.
    unsafe {
        cvt(libc::fcntl(fd.as_raw_fd(), libc::F_SETOWN, libc::getpid()))?;
        let flags = cvt(libc::fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
        cvt(libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETFL,
            flags | libc::O_ASYNC,
        ))?;
    }
    Ok(())
}

/// Whether `fd` is readable or hung up right now (no waiting).
pub(crate) fn poll_now(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0
}

/// Waits on several descriptors for `POLLIN`; returns which ones are ready (hang-ups count).
pub(crate) fn poll_in(fds: &[BorrowedFd<'_>], deadline: Option<Instant>) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(i32::MAX as u128) as libc::c_int,
        };
        // SAFETY: pfds is a valid array of pollfd of the given length.
        match cvt(unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as _, timeout) }) {
            Ok(_) => return Ok(pfds.iter().map(|p| p.revents != 0).collect()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Blocking reap of any child (`waitpid(-1, WNOHANG)`): `Some((pid, raw status))`.
pub(crate) fn reap_any() -> Option<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if r > 0 {
            return Some((r, status));
        }
        if r == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// `PR_SET_PDEATHSIG`: the signal this process gets when the thread that forked it exits (0 to
/// clear). Linux-only; elsewhere a no-op would do.
pub(crate) fn set_parent_death_signal(sig: libc::c_int) {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) };
}

/// A pipe, both ends close-on-exec: `(read, write)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded: two fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets the process umask, returning the old one.
pub(crate) fn umask(mask: u32) -> u32 {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// Asks for transparent huge pages on this process's private anonymous memory (heap and
/// anonymous mappings) and collapses what is already there (`MADV_COLLAPSE`, Linux 6.1+; ignored
/// where unsupported). A process with a large preloaded heap then forks with a fraction of the
/// page-table work. Returns the bytes advised. Not async-signal-safe (it reads
/// `/proc/self/maps`): call it from ordinary code.
pub(crate) fn advise_huge_pages() -> io::Result<usize> {
    const HUGE: usize = 2 << 20;
    const MADV_COLLAPSE: libc::c_int = 25;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut advised = 0;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let path = fields.nth(3).unwrap_or("");
        if perms != "rw-p" || !(path.is_empty() || path == "[heap]") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) else {
            continue;
        };
        let start = a.next_multiple_of(HUGE);
        let end = b / HUGE * HUGE;
        if end <= start {
            continue;
        }
        // SAFETY: madvise on a range of our own mappings only changes paging advice.
        unsafe {
            if libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) == 0 {
                advised += end - start;
                libc::madvise(start as *mut libc::c_void, end - start, MADV_COLLAPSE);
            }
        }
    }
    Ok(advised)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_advice_succeeds_on_our_own_memory() {
        let big = vec![1u8; 8 << 20];
        assert!(advise_huge_pages().expect("/proc/self/maps") >= 2 << 20);
        assert_eq!(big.iter().map(|&b| b as usize).sum::<usize>(), 8 << 20);
    }
}
