//! Descriptors: closing all but some, tombstones, close-on-exec, pipes, `dup2`, locks, raw
//! writes.

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

/// Appends the numbers of this process's open descriptors to `out` (sorted ascending): from
/// `/proc/self/fd` (read with `getdents64`, nothing allocated but `out`'s growth), or where
/// procfs is missing, by one `poll` over every number below the descriptor limit (capped at
/// 65536). The directory's own descriptor is left out.
///
/// Measured at a start (the parent's pages fault again after every `fork`): about 16 µs of CPU
/// with a few descriptors, plus 0.5 µs per open descriptor (procfs builds a dentry for each); a
/// `poll` over 1024 numbers costs about 27 µs there, and reading the table's size from
/// `/proc/self/status` then polling it about 22 µs.
/// The child then spends about as much per descriptor on its `dup3`, so the listing's
/// per-descriptor cost changes nothing in kind.
pub(crate) fn list_open_fds(out: &mut Vec<RawFd>) {
    let start = out.len();
    if list_from_proc(out).is_err() {
        out.truncate(start);
        list_by_poll(out);
    }
    out[start..].sort_unstable();
}

fn list_from_proc(out: &mut Vec<RawFd>) -> io::Result<()> {
    // SAFETY: a NUL-terminated path; the flags ask for a close-on-exec directory descriptor.
    let dir = cvt(unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor nobody else owns; closed when `_guard` drops.
    let _guard = unsafe { OwnedFd::from_raw_fd(dir) };
    #[repr(C, align(8))]
    struct Buf([u8; 4096]);
    let mut buf = Buf([0; 4096]);
    loop {
        // SAFETY: getdents64 writes at most `len` bytes of records into `buf`.
        let n =
            unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.0.as_mut_ptr(), buf.0.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(());
        }
        let mut off = 0;
        while off < n as usize {
            // struct linux_dirent64: d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name[].
            let reclen = u16::from_ne_bytes([buf.0[off + 16], buf.0[off + 17]]) as usize;
            let name = &buf.0[off + 19..off + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            let mut fd: Option<RawFd> = None;
            for &b in name {
                fd = match (fd, b) {
                    (acc, b'0'..=b'9') => acc
                        .unwrap_or(0)
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(RawFd::from(b - b'0'))),
                    _ => None,
                };
                if fd.is_none() {
                    break;
                }
            }
            if let Some(fd) = fd {
                if fd != dir {
                    out.push(fd);
                }
            }
            off += reclen;
        }
    }
}

fn list_by_poll(out: &mut Vec<RawFd>) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid out-pointer.
    let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 16) as RawFd
    } else {
        1024
    };
    let mut pfds: Vec<libc::pollfd> = (0..max)
        .map(|fd| libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        })
        .collect();
    // SAFETY: a valid array of `max` pollfds; zero timeout. Closed numbers report POLLNVAL.
    if unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 0) } >= 0 {
        out.extend(
            pfds.iter()
                .filter(|p| p.revents & libc::POLLNVAL == 0)
                .map(|p| p.fd),
        );
    }
}

/// Opens the source of tombstones: `/dev/null` with `O_PATH` (close-on-exec). Every `read`,
/// `write`, `ioctl` or `mmap` on such a descriptor fails with `EBADF`, and it is no directory
/// (`openat` relative to it fails with `ENOTDIR`). `None` if it cannot be opened.
/// Async-signal-safe.
pub(crate) fn open_tombstone() -> Option<RawFd> {
    // SAFETY: a NUL-terminated path; O_PATH opens no file for I/O.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    (fd >= 0).then_some(fd)
}

/// Puts the tombstone `tomb` (from [`open_tombstone`]) over descriptor number `fd`
/// (close-on-exec): whatever `fd` referred to is released (a socket's peer sees end of stream
/// once no other copy remains), and the number stays taken, so it is never reused while
/// something still holds it. Async-signal-safe.
pub(crate) fn tombstone(tomb: RawFd, fd: RawFd) {
    if tomb != fd {
        // SAFETY: dup3 over a number the caller owns (an inherited descriptor nobody in this
        // process uses as what it was).
        unsafe { libc::dup3(tomb, fd, libc::O_CLOEXEC) };
    }
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

/// Writes all of `data` to a raw descriptor with plain `write` calls, without taking any lock
/// (std's stdout/stderr locks may be held by another thread at a `fork`). Returns whether all
/// of it was written; callers writing logs ignore it.
pub(crate) fn write_raw(fd: RawFd, data: &[u8]) -> bool {
    let mut off = 0;
    while off < data.len() {
        // SAFETY: the pointer and length describe live bytes of `data`.
        let r = unsafe { libc::write(fd, data[off..].as_ptr().cast(), data.len() - off) };
        if r > 0 {
            off += r as usize;
        } else if r == -1 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        } else {
            return false;
        }
    }
    true
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

/// An `eventfd` (counter 0, non-blocking, close-on-exec): a wake-up a thread can `poll` for.
pub(crate) fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd with constant flags returns a new descriptor or -1.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A close-on-exec duplicate of `fd` at the lowest free number `>= min` (`F_DUPFD_CLOEXEC`);
/// never replaces an open descriptor.
pub(crate) fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a valid descriptor with integer arguments.
    let new = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// In a child between `fork` and `exec` (async-signal-safe: two syscalls, no allocation): makes
/// `fd` available as `target` across `exec`: `dup2` (whose copy is not close-on-exec), or, when
/// it already is `target`, clears its close-on-exec flag.
pub(crate) fn inherit_at(fd: RawFd, target: RawFd) -> io::Result<()> {
    if fd == target {
        // SAFETY: fcntl on a descriptor number with integer arguments.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) })?;
        return Ok(());
    }
    loop {
        // SAFETY: dup2 between descriptor numbers; `target` is ours to replace in this child.
        match cvt(unsafe { libc::dup2(fd, target) }) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_by_poll_finds_what_procfs_lists() {
        // Other tests of this binary may open or close descriptors meanwhile: compare a listing
        // by each method made while a few descriptors of ours are open, on our numbers only.
        let (r, w) = pipe().unwrap();
        let high = {
            // SAFETY: F_DUPFD_CLOEXEC on an open descriptor returns a new one or -1.
            let n = unsafe { libc::fcntl(r.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 700) };
            assert!(n >= 700);
            // SAFETY: a fresh descriptor nobody else owns.
            unsafe { OwnedFd::from_raw_fd(n) }
        };
        let mine = [r.as_raw_fd(), w.as_raw_fd(), high.as_raw_fd()];
        let (mut by_proc, mut by_poll) = (Vec::new(), Vec::new());
        list_from_proc(&mut by_proc).unwrap();
        list_by_poll(&mut by_poll);
        for fd in mine {
            assert!(by_proc.contains(&fd), "{fd} not in {by_proc:?}");
            assert!(by_poll.contains(&fd), "{fd} not in {by_poll:?}");
        }
        drop(high);
        let mut after = Vec::new();
        list_open_fds(&mut after);
        assert!(!after.contains(&mine[2]));
        assert!(after.windows(2).all(|p| p[0] < p[1]), "sorted: {after:?}");
    }
}
