//! Descriptors: closing all but some, close-on-exec, pipes, `dup2`, locks, raw writes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

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

/// Runs `f` while descriptor 1 is closed, then puts the same open file back on 1 with the same
/// close-on-exec flag. Returns `false` without running `f` if descriptor 1 is open but could not
/// be set aside (descriptor table full). Async-signal-safe apart from `f` (`fcntl`, `close`,
/// `dup3`).
///
/// A forked server uses it to empty std's stdout buffer, which holds the parent's pending partial
/// line, without writing it: std treats `EBADF` on stdout as success and drops the bytes.
pub(crate) fn with_stdout_closed(f: impl FnOnce()) -> bool {
    // SAFETY: fcntl with integer arguments on descriptor 1, whatever it is.
    let saved = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if saved < 0 {
        // Not open: writes fail with EBADF anyway, which is what `f` needs.
        let closed = io::Error::last_os_error().raw_os_error() == Some(libc::EBADF);
        if closed {
            f();
        }
        return closed;
    }
    // SAFETY: F_GETFD only reads descriptor 1's flags.
    let flags = unsafe { libc::fcntl(1, libc::F_GETFD) };
    // SAFETY: descriptor 1 is not owned by any Rust value here (std's stdout writes to the number
    // 1 without owning it), and `saved` keeps the open file alive until it is put back.
    unsafe { libc::close(1) };
    f();
    let cloexec = if flags >= 0 && flags & libc::FD_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    // SAFETY: `saved` is the descriptor just duplicated; number 1 is free (closed above) and
    // nothing else runs in this process meanwhile (the caller is a freshly forked child).
    unsafe {
        libc::dup3(saved, 1, cloexec);
        libc::close(saved);
    }
    true
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

/// A pipe, both ends close-on-exec: `(read, write)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: fds is a valid array of two ints.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: pipe2 succeeded: two fresh descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
