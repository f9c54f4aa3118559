//! System calls the preloader needs beyond `crate::sys`.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Stops the SIGIO that `sys::set_async_owner` asked for on `fd` (`F_SETOWN 0`: no owner, so no
/// signal), so that a peer hanging up after we are done with it does not wake us.
pub(crate) fn stop_async(fd: BorrowedFd<'_>) {
    // SAFETY: fcntl on a valid descriptor with an integer argument.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETOWN, 0) };
}

/// Waits for any child to end and reaps it: `Some((pid, raw wait status))`, or `None` when this
/// process has no child left (or waiting failed).
pub(crate) fn reap_any_blocking() -> Option<(libc::pid_t, libc::c_int)> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, 0) };
        if r > 0 {
            return Some((r, status));
        }
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// Marks every descriptor from `first` on close-on-exec (`close_range` with
/// `CLOSE_RANGE_CLOEXEC`, Linux 5.11), so that a program we `exec` gets only what we gave it,
/// not what this process happened to inherit. Async-signal-safe (for `pre_exec`); on an older
/// kernel it does nothing.
pub(crate) fn cloexec_from(first: u32) {
    const CLOSE_RANGE_CLOEXEC: u32 = 1 << 2;
    // SAFETY: close_range only changes descriptor flags here.
    unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
}

/// Whether the peer of a connected socket has closed it (or shut down its writing side), without
/// consuming anything: data waiting to be read does not count (`POLLRDHUP`).
pub(crate) fn peer_hung_up(fd: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Waits until `a` is readable (or hung up) or `b`'s peer hangs up (data waiting on `b` does
/// not count), or the deadline passes: `(a ready, b hung up)`, both `false` on time-out.
pub(crate) fn readable_or_hung_up(
    a: BorrowedFd<'_>,
    b: BorrowedFd<'_>,
    deadline: std::time::Instant,
) -> std::io::Result<(bool, bool)> {
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ms = left.as_millis().clamp(0, i32::MAX as u128) as libc::c_int;
        let mut pfds = [
            libc::pollfd {
                fd: a.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), 2, ms) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let hung = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
        return Ok((pfds[0].revents != 0, pfds[1].revents & hung != 0));
    }
}

/// Waits until the first of `fds` is readable, or the peer of one of the others (connected
/// sockets) hangs up: data waiting on those does not count (`POLLRDHUP`).
pub(crate) fn wait_hang_up_or_readable(fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .enumerate()
        .map(|(i, fd)| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: if i == 0 {
                libc::POLLIN
            } else {
                libc::POLLRDHUP
            },
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: a valid array of pollfd of the given length.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if r >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// How a child changed state.
pub(crate) enum ChildEvent {
    /// Exited or was killed: the raw wait status.
    Ended(libc::pid_t, libc::c_int),
    /// Stopped by this signal.
    Stopped(libc::pid_t, libc::c_int),
}

/// Reaps one child that ended, or reports one that stopped (`WUNTRACED`), without waiting.
pub(crate) fn child_event() -> Option<ChildEvent> {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG | libc::WUNTRACED) };
        if r > 0 {
            return Some(if libc::WIFSTOPPED(status) {
                ChildEvent::Stopped(r, libc::WSTOPSIG(status))
            } else {
                ChildEvent::Ended(r, status)
            });
        }
        if r == -1 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        return None;
    }
}

/// How many descriptors besides 0, 1, 2 (those the client inherited) a command forwards.
pub(crate) const MAX_EXTRA_FDS: usize = 64;

/// One `recvmsg` with `MSG_CMSG_CLOEXEC | MSG_DONTWAIT` and room for the descriptors of a
/// request (4 + [`MAX_EXTRA_FDS`]), which are appended to `fds`, owned at once. Returns the bytes
/// read and whether descriptors were lost (`MSG_CTRUNC`: the kernel closed those that did not
/// fit).
pub(crate) fn recv_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<std::os::fd::OwnedFd>,
) -> std::io::Result<(usize, bool)> {
    use std::mem::size_of;
    use std::os::fd::FromRawFd;
    const MAX: usize = 4 + MAX_EXTRA_FDS;
    #[repr(C, align(8))]
    struct Cmsg([u8; 16 + MAX * 4 + 16]);
    let mut cmsg = Cmsg([0; 16 + MAX * 4 + 16]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE((MAX * size_of::<RawFd>()) as u32) } as _;
    // SAFETY: msg describes live, writable buffers for the duration of the call.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel filled msg_control; the CMSG_* macros walk exactly that range, and each
    // SCM_RIGHTS payload holds descriptors just installed in this process, owned by nobody.
    unsafe {
        let mut hdr = libc::CMSG_FIRSTHDR(&msg);
        while !hdr.is_null() {
            if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(hdr);
                let bytes = (*hdr).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(std::os::fd::OwnedFd::from_raw_fd(fd));
                }
            }
            hdr = libc::CMSG_NXTHDR(&msg, hdr);
        }
    }
    Ok((n as usize, msg.msg_flags & libc::MSG_CTRUNC != 0))
}

/// Puts each of `fds` at the descriptor number `targets` gives it (4-byte little-endian numbers,
/// one per descriptor), as the client had them, and closes the originals. A number this process
/// already uses (a descriptor the preload opened and kept) is left alone and reported in
/// `failed`. Async-signal-safe (no allocation: at most [`MAX_EXTRA_FDS`]).
pub(crate) fn install_fds(
    fds: &[std::os::fd::OwnedFd],
    targets: &[u8],
    failed: &mut super::attrs::Failed,
) {
    let target = |i: usize| -> RawFd {
        i32::from_le_bytes(targets[4 * i..4 * i + 4].try_into().expect("4 bytes"))
    };
    let n = fds.len().min(targets.len() / 4).min(MAX_EXTRA_FDS);
    if n == 0 {
        return;
    }
    let high = (0..n).map(target).max().unwrap_or(0).max(2) + 1;
    // First out of the way of every target (an original may sit on another's number), then
    // the originals closed, then each moved to its number.
    let mut tmp = [-1 as RawFd; MAX_EXTRA_FDS];
    for (i, fd) in fds[..n].iter().enumerate() {
        // SAFETY: fcntl on a valid descriptor.
        tmp[i] = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, high) };
    }
    for fd in &fds[..n] {
        crate::sys::close_raw(fd.as_raw_fd());
    }
    for (i, &t) in tmp[..n].iter().enumerate() {
        let want = target(i);
        // SAFETY: fcntl F_GETFD only queries.
        let in_use = unsafe { libc::fcntl(want, libc::F_GETFD) } != -1;
        if t < 0 || want < 3 || in_use {
            failed.push("descriptors (a number is in use by the template)");
        } else {
            // SAFETY: dup2 between descriptor numbers; it clears close-on-exec on the new one.
            unsafe { libc::dup2(t, want) };
        }
        if t >= 0 {
            crate::sys::close_raw(t);
        }
    }
}

/// The highest of the descriptor numbers in `targets` (4-byte little-endian numbers, as
/// [`install_fds`] takes them); 0 if there is none. Async-signal-safe.
pub(crate) fn max_target(targets: &[u8]) -> RawFd {
    targets
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .max()
        .unwrap_or(0)
}

/// The descriptors this process inherited besides 0, 1, 2: open and not close-on-exec (what
/// `exec` passed on), in ascending order. (A command forwards at most [`MAX_EXTRA_FDS`]: with
/// more, the client runs it in-process.)
pub(crate) fn inherited_fds() -> Vec<RawFd> {
    // The runtime's own listing (`getdents64` on `/proc/self/fd`, sorted, its directory left
    // out; a `poll` over the table where procfs is missing).
    let mut fds = Vec::new();
    crate::sys::list_open_fds(&mut fds);
    // SAFETY: fcntl F_GETFD only queries.
    fds.retain(|&fd| fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } == 0);
    fds
}

/// Sends `data` with all of `fds` attached to its first byte, in one `sendmsg` (more if the
/// socket takes only part of `data`), blocking. `MSG_NOSIGNAL`.
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    use std::mem::size_of;
    #[repr(C, align(8))]
    struct Cmsg([u8; 16 + (4 + MAX_EXTRA_FDS) * 4 + 16]);
    let mut cmsg = Cmsg([0; 16 + (4 + MAX_EXTRA_FDS) * 4 + 16]);
    assert!(fds.len() <= 4 + MAX_EXTRA_FDS && !data.is_empty());
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((fds.len() * size_of::<RawFd>()) as u32) } as usize;
    assert!(space <= cmsg.0.len());
    let mut sent = 0;
    while sent < data.len() {
        let mut iov = libc::iovec {
            iov_base: data[sent..].as_ptr() as *mut libc::c_void,
            iov_len: data.len() - sent,
        };
        // SAFETY: an all-zero msghdr is a valid empty value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if sent == 0 && !fds.is_empty() {
            msg.msg_control = cmsg.0.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            // SAFETY: msg_control points at `space` bytes of aligned storage, room for the
            // header and every descriptor.
            unsafe {
                let hdr = libc::CMSG_FIRSTHDR(&msg);
                (*hdr).cmsg_level = libc::SOL_SOCKET;
                (*hdr).cmsg_type = libc::SCM_RIGHTS;
                (*hdr).cmsg_len = libc::CMSG_LEN((fds.len() * size_of::<RawFd>()) as u32) as _;
                let out = libc::CMSG_DATA(hdr).cast::<RawFd>();
                for (i, fd) in fds.iter().enumerate() {
                    std::ptr::write_unaligned(out.add(i), fd.as_raw_fd());
                }
            }
        }
        // SAFETY: msg describes live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        sent += n as usize;
    }
    Ok(())
}

/// Where this process's arguments live (`/proc/self/stat`): the `argv` array the kernel built
/// at `execve` (which std's `env::args` reads) and the strings it points into (which
/// `/proc/<pid>/cmdline`, hence `ps`, shows), and the rest of the memory map that
/// `PR_SET_MM_MAP` needs.
#[derive(Clone, Copy)]
pub(crate) struct ArgvArea {
    argv: *mut *const libc::c_char,
    argc: usize,
    start: *mut u8,
    len: usize,
    map: [u64; 11],
}

// SAFETY: the pointers refer to this process's own initial stack, which lives as long as the
// process; nothing is shared between processes.
unsafe impl Send for ArgvArea {}
// SAFETY: as above.
unsafe impl Sync for ArgvArea {}

/// `PR_SET_MM` and `PR_SET_MM_MAP` (linux/prctl.h).
const PR_SET_MM: libc::c_int = 35;
const PR_SET_MM_MAP: libc::c_ulong = 14;

#[repr(C)]
struct PrctlMmMap {
    start_code: u64,
    end_code: u64,
    start_data: u64,
    end_data: u64,
    start_brk: u64,
    brk: u64,
    start_stack: u64,
    arg_start: u64,
    arg_end: u64,
    env_start: u64,
    env_end: u64,
    auxv: *mut u64,
    auxv_size: u32,
    exe_fd: u32,
}

impl ArgvArea {
    /// Reads this process's argument area, or `None` (no `/proc`, or a layout we do not
    /// recognise: then titles and arguments are left alone).
    pub(crate) fn of_this_process() -> Option<ArgvArea> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may contain anything, up to the last ')'):
        // field n (1-based, as in proc(5)) is at index n - 3.
        let rest: Vec<u64> = stat
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .map(|f| f.parse::<i64>().map(|v| v as u64).unwrap_or(0))
            .collect();
        let f = |n: usize| rest.get(n - 3).copied().unwrap_or(0);
        let (start_stack, arg_start, arg_end) = (f(28), f(48), f(49));
        if start_stack == 0 || arg_start == 0 || arg_end <= arg_start {
            return None;
        }
        // At `start_stack` the kernel put argc, then argv[0..argc], then NULL.
        // SAFETY: start_stack is the address of argc on our own initial stack, which stays
        // mapped for the life of the process.
        let argc = unsafe { *(start_stack as *const usize) };
        let argv = (start_stack as usize + 8) as *mut *const libc::c_char;
        // SAFETY: argv[0] is within the array the kernel built.
        if argc == 0 || unsafe { *argv } as u64 != arg_start {
            return None;
        }
        Some(ArgvArea {
            argv,
            argc,
            start: arg_start as *mut u8,
            len: (arg_end - arg_start) as usize,
            // start_code, end_code, start_data, end_data, start_brk, (brk), start_stack,
            // arg_start, arg_end, env_start, env_end
            map: [
                f(26),
                f(27),
                f(45),
                f(46),
                f(47),
                0,
                start_stack,
                arg_start,
                arg_end,
                f(50),
                f(51),
            ],
        })
    }

    /// Shows `title` in `ps` (the strings are overwritten, the rest of the area NUL-filled, which
    /// `ps` does not show) and makes `std::env::args` return `[title]`. Async-signal-safe.
    pub(crate) fn set_title(&self, title: &[u8]) {
        let n = title.len().min(self.len - 1);
        // SAFETY: [start, start + len) is our own argument area, writable stack memory; argv
        // has argc >= 1 slots (argv[argc] is the kernel's NULL).
        unsafe {
            std::ptr::copy_nonoverlapping(title.as_ptr(), self.start, n);
            std::ptr::write_bytes(self.start.add(n), 0, self.len - n);
            *self.argv = self.start as *const libc::c_char;
            if self.argc > 1 {
                *self.argv.add(1) = std::ptr::null();
            }
        }
    }

    /// Makes this process's arguments those of `argv` (NUL-separated, NUL-terminated, kept alive
    /// by the caller for the rest of the process) and its environment as `/proc` shows it `env`
    /// (same format): `std::env::args` returns them (as many as the `execve` had), and `/proc/<pid>/cmdline` and `environ` show exactly these bytes, where the
    /// kernel lets an unprivileged process say so (`PR_SET_MM_MAP`); otherwise the arguments
    /// are copied into the original area as far as they fit. Async-signal-safe.
    pub(crate) fn set_args(&self, argv: &[u8], env: &[u8]) {
        let mut i = 0;
        let mut at = 0;
        while at < argv.len() && i < self.argc {
            // SAFETY: `argv` is NUL-terminated, so each item starts a C string inside it; the
            // slot is within the kernel's array.
            unsafe { *self.argv.add(i) = argv.as_ptr().add(at).cast() };
            i += 1;
            at += argv[at..]
                .iter()
                .position(|&b| b == 0)
                .map_or(argv.len(), |p| p + 1);
        }
        if i < self.argc {
            // SAFETY: within the array.
            unsafe { *self.argv.add(i) = std::ptr::null() };
        }
        if !self.set_proc_ranges(argv, env) {
            // As far as it fits; a cut-off string still ends in NUL (the area's last byte).
            let n = argv.len().min(self.len - 1);
            // SAFETY: our own argument area (see set_title).
            unsafe {
                std::ptr::copy_nonoverlapping(argv.as_ptr(), self.start, n);
                std::ptr::write_bytes(self.start.add(n), 0, self.len - n);
            }
        }
    }

    /// `PR_SET_MM_MAP` with the argument and environment ranges moved to `argv` and `env`.
    fn set_proc_ranges(&self, argv: &[u8], env: &[u8]) -> bool {
        if argv.is_empty() || env.is_empty() {
            return false;
        }
        // SAFETY: brk(0) only returns the current break.
        let brk = unsafe { libc::syscall(libc::SYS_brk, 0) } as u64;
        let m = &self.map;
        let map = PrctlMmMap {
            start_code: m[0],
            end_code: m[1],
            start_data: m[2],
            end_data: m[3],
            start_brk: m[4],
            brk,
            start_stack: m[6],
            arg_start: argv.as_ptr() as u64,
            arg_end: argv.as_ptr() as u64 + argv.len() as u64,
            env_start: env.as_ptr() as u64,
            env_end: env.as_ptr() as u64 + env.len() as u64,
            auxv: std::ptr::null_mut(),
            auxv_size: 0,
            exe_fd: u32::MAX,
        };
        // SAFETY: a fully initialised prctl_mm_map of the size passed; every value but the
        // argument and environment ranges is the current one, and those point at live memory
        // that the caller keeps for the life of the process.
        let r = unsafe {
            libc::prctl(
                PR_SET_MM,
                PR_SET_MM_MAP,
                &map as *const PrctlMmMap,
                std::mem::size_of::<PrctlMmMap>(),
                0,
            )
        };
        r == 0
    }
}

/// The dispositions of the signals a process catches (`sigaction`s with a handler), as found
/// at some moment: the template reads them when it starts, before anything of fdserver's, so
/// that a worker can go back to what a fresh `main` of this program has (std's stack-overflow
/// handlers for SIGSEGV and SIGBUS, and whatever the program set up before
/// `Preloader::main`).
pub(crate) struct Handlers {
    caught: u64,
    actions: Vec<(libc::c_int, libc::sigaction)>,
}

impl Handlers {
    pub(crate) fn of_this_process() -> Handlers {
        let mut caught = 0;
        let mut actions = Vec::new();
        for sig in 1..=64 {
            // SAFETY: an all-zero sigaction is a valid out-value; a reserved signal just fails.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: no new action, valid out-pointer.
            if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } == 0
                && old.sa_sigaction != libc::SIG_DFL
                && old.sa_sigaction != libc::SIG_IGN
            {
                caught |= 1u64 << (sig - 1);
                actions.push((sig, old));
            }
        }
        Handlers { caught, actions }
    }

    /// Sets every signal to what a fresh run of the program started by the client would have:
    /// ignored if the client ignores it (an ignored signal stays ignored across `execve`),
    /// else the handler a fresh `main` had installed by the time it called `Preloader::main`,
    /// else the default action. `now_ignored` and `now_caught` are this process's current sets
    /// (only the signals that differ are changed). Async-signal-safe.
    pub(crate) fn reset_for(&self, client_ignored: u64, now_ignored: u64, now_caught: u64) {
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let bit = 1u64 << (sig - 1);
            if client_ignored & bit != 0 {
                if now_ignored & bit == 0
                    && crate::sys::set_disposition(sig, crate::sys::Disposition::Ignore).is_err()
                {
                    // The C library refuses its own signals (32, 33), which a caller may still
                    // have ignored across exec: ask the kernel directly.
                    raw_ignore(sig);
                }
            } else if self.caught & bit != 0 {
                if let Some((_, act)) = self.actions.iter().find(|(s, _)| *s == sig) {
                    // SAFETY: a sigaction read back from the kernel in this program.
                    unsafe { libc::sigaction(sig, act, std::ptr::null_mut()) };
                }
            } else if (now_ignored | now_caught) & bit != 0 {
                let _ = crate::sys::set_disposition(sig, crate::sys::Disposition::Default);
            }
        }
    }
}

/// `rt_sigaction(sig, SIG_IGN)` without the C library's checks. Async-signal-safe.
fn raw_ignore(sig: libc::c_int) {
    // The kernel's `struct sigaction` on x86_64 and aarch64: handler, flags, restorer, mask.
    #[repr(C)]
    struct KernelSigaction {
        handler: usize,
        flags: u64,
        restorer: usize,
        mask: u64,
    }
    let act = KernelSigaction {
        handler: libc::SIG_IGN,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: a valid kernel sigaction (SIG_IGN needs no restorer); no old action asked for.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            &act as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    };
}

/// The ignored and caught signals of this process right now (bits as in [`Handlers`]).
pub(crate) fn current_dispositions() -> (u64, u64) {
    let (mut ign, mut cgt) = (0, 0);
    for sig in 1..=64 {
        // SAFETY: as in Handlers::of_this_process.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: no new action, valid out-pointer.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            continue;
        }
        if old.sa_sigaction == libc::SIG_IGN {
            ign |= 1u64 << (sig - 1);
        } else if old.sa_sigaction != libc::SIG_DFL {
            cgt |= 1u64 << (sig - 1);
        }
    }
    (ign, cgt)
}

/// Sets this thread's name (the process name, `comm`, on the main thread): at most 15 bytes.
pub(crate) fn set_comm(name: &[u8]) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr(), 0, 0, 0) };
}

/// Resident memory of process `pid` in bytes (`/proc/<pid>/statm`), if readable.
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(pages * page)
}

/// The children of single-threaded process `pid` (its workers, for a template), if the kernel
/// lists them (`/proc/<pid>/task/<pid>/children`).
pub(crate) fn children(pid: u32) -> Option<usize> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    Some(text.split_whitespace().count())
}

/// `SO_PEERPIDFD` (Linux 6.5): a pidfd of the process that listens on the socket we connected to
/// (where the architecture uses the generic socket option numbers).
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "s390x"
))]
const SO_PEERPIDFD: Option<libc::c_int> = Some(77);
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "s390x"
)))]
const SO_PEERPIDFD: Option<libc::c_int> = None;

/// `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9): `pidfd_send_signal` signals the target's process
/// group, named by the kernel's `struct pid`, not by a number that could be recycled.
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Opens the directory `path` without following a symbolic link in its last component
/// (`O_DIRECTORY | O_NOFOLLOW`, close-on-exec).
pub(crate) fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: a valid NUL-terminated path; the result is checked and owned below.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, 0600)`.
pub(crate) fn open_at(dir: BorrowedFd<'_>, name: &OsStr, flags: libc::c_int) -> io::Result<File> {
    let c = cstr(name)?;
    // SAFETY: a valid directory descriptor and NUL-terminated name; the mode argument is read
    // only with O_CREAT. The result is checked and owned below.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// The device and inode of `name` in `dir` (not following a symbolic link); `None` if absent.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<(u64, u64)>> {
    let c = cstr(name)?;
    // SAFETY: stat is plain data; all-zero is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory descriptor, NUL-terminated name and out-pointer.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == -1 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some((st.st_dev, st.st_ino)))
}

/// `unlinkat(dir, name, 0)`; a name already gone is not an error.
pub(crate) fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: a valid directory descriptor and NUL-terminated name.
    match cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) }) {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The peer of a connected UNIX socket (`SO_PEERCRED`): its uid and pid (for a client, those of
/// the process that called `listen`).
pub(crate) fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<(u32, libc::pid_t)> {
    // SAFETY: ucred is plain data.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
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
    Ok((cred.uid, cred.pid))
}

/// A pidfd of the process listening at the other end of a connected UNIX socket: the kernel's
/// `SO_PEERPIDFD` where it has one; else a pidfd of the pid of `SO_PEERCRED`, kept only if the
/// connection is still up once the pidfd exists (that process holds the other end, so it was
/// alive, and its pid not recycled, when the pidfd was made).
pub(crate) fn peer_pidfd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    peer_pidfd_from(sock).map(|(fd, _)| fd)
}

/// [`peer_pidfd`], and whether the kernel gave it (`SO_PEERPIDFD`: the very process that
/// connected) rather than `pidfd_open` of the pid of `SO_PEERCRED` (a process that had that
/// pid while the connection was up).
pub(crate) fn peer_pidfd_from(sock: BorrowedFd<'_>) -> io::Result<(OwnedFd, bool)> {
    if let Some(opt) = SO_PEERPIDFD {
        let mut fd: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid out-pointers of the right size.
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&mut fd as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r == 0 && fd >= 0 {
            // SAFETY: the kernel returned a fresh (close-on-exec) pidfd that nothing else owns.
            return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, true));
        }
    }
    let (_, pid) = peer_cred(sock)?;
    if pid <= 1 {
        return Err(io::Error::other(format!("the peer's pid is {pid}")));
    }
    let pidfd = crate::sys::pidfd_open(pid)?;
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    if r != 0 {
        return Err(io::Error::other(
            "the peer closed the connection: its pid may have been recycled",
        ));
    }
    Ok((pidfd, false))
}

/// The inode of the socket at the other end of the connected UNIX socket `sock`, from the
/// kernel's socket diagnostics (`NETLINK_SOCK_DIAG`, `UNIX_DIAG_PEER`; the `unix_diag` module,
/// which the kernel loads on demand).
pub(crate) fn unix_peer_inode(sock: BorrowedFd<'_>) -> io::Result<u64> {
    const NETLINK_SOCK_DIAG: libc::c_int = 4;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_PEER: u32 = 4;
    const UNIX_DIAG_PEER: u16 = 2;
    #[repr(C)]
    struct Req {
        len: u32,
        kind: u16,
        flags: u16,
        seq: u32,
        pid: u32,
        family: u8,
        protocol: u8,
        pad: u16,
        states: u32,
        ino: u32,
        show: u32,
        cookie: [u32; 2],
    }
    // SAFETY: an all-zero stat is a valid out-value; fstat on a live descriptor.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    cvt(unsafe { libc::fstat(sock.as_raw_fd(), &mut st) })?;
    // SAFETY: plain socket creation; the result is checked and owned below.
    let nl = cvt(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    let nl = unsafe { OwnedFd::from_raw_fd(nl) };
    let req = Req {
        len: std::mem::size_of::<Req>() as u32,
        kind: SOCK_DIAG_BY_FAMILY,
        flags: libc::NLM_F_REQUEST as u16,
        seq: 1,
        pid: 0,
        family: libc::AF_UNIX as u8,
        protocol: 0,
        pad: 0,
        states: u32::MAX,
        ino: st.st_ino as u32,
        show: UDIAG_SHOW_PEER,
        cookie: [u32::MAX; 2],
    };
    // SAFETY: `req` is plain data of the given size; the address is the kernel's (zeroed).
    let sent = unsafe {
        let mut to: libc::sockaddr_nl = std::mem::zeroed();
        to.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            nl.as_raw_fd(),
            (&req as *const Req).cast(),
            std::mem::size_of::<Req>(),
            0,
            (&to as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    // SAFETY: a valid buffer of its size.
    let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let b = &buf[..n as usize];
    let u16_at = |i: usize| b.get(i..i + 2).map(|x| u16::from_ne_bytes([x[0], x[1]]));
    let u32_at = |i: usize| {
        b.get(i..i + 4)
            .map(|x| u32::from_ne_bytes([x[0], x[1], x[2], x[3]]))
    };
    let bad = || io::Error::other("unexpected answer from the kernel's socket diagnostics");
    let len = u32_at(0).ok_or_else(bad)? as usize;
    match u16_at(4).ok_or_else(bad)? {
        t if t == libc::NLMSG_ERROR as u16 => {
            let code = u32_at(16).ok_or_else(bad)? as i32;
            return Err(io::Error::from_raw_os_error(-code));
        }
        t if t == SOCK_DIAG_BY_FAMILY => {}
        _ => return Err(bad()),
    }
    // After the 16-byte header and the 16-byte `unix_diag_msg`: attributes (length, type,
    // data), each aligned to 4 bytes.
    let mut at = 32;
    while at + 4 <= len.min(b.len()) {
        let (alen, atype) = (
            u16_at(at).ok_or_else(bad)? as usize,
            u16_at(at + 2).ok_or_else(bad)?,
        );
        if alen < 4 {
            break;
        }
        if atype == UNIX_DIAG_PEER {
            return u32_at(at + 4).map(u64::from).ok_or_else(bad);
        }
        at += (alen + 3) & !3;
    }
    Err(io::Error::other("the socket has no peer"))
}

/// Whether the process whose `/proc/<pid>` directory is `dir` holds a descriptor of the socket
/// of inode `ino` (`fd/*` read as `socket:[<ino>]`).
pub(crate) fn holds_socket(dir: BorrowedFd<'_>, ino: u64) -> io::Result<bool> {
    let want = format!("socket:[{ino}]");
    let fds = std::fs::read_dir(format!("/proc/self/fd/{}/fd", dir.as_raw_fd()))?;
    for entry in fds {
        let entry = entry?;
        if let Ok(target) = std::fs::read_link(entry.path()) {
            if target.as_os_str().as_bytes() == want.as_bytes() {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Sends `sig` to the process group whose leader `pidfd` refers to, by the kernel's identity of
/// that group (it cannot reach a later group that reuses the number). `Ok(false)`: the group has
/// no process left. `Unsupported`: the kernel predates Linux 6.9.
pub(crate) fn pidfd_signal_group(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<bool> {
    // SAFETY: pidfd_send_signal(pidfd, sig, NULL, flags) on a valid descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            PIDFD_SIGNAL_PROCESS_GROUP,
        )
    };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ESRCH) => Ok(false),
        Some(libc::EINVAL) => Err(io::Error::new(io::ErrorKind::Unsupported, e)),
        _ => Err(e),
    }
}

/// The pid a pidfd refers to, from `/proc/self/fdinfo` (`None` once the process is reaped, or if
/// that cannot be read).
pub(crate) fn pidfd_pid(pidfd: BorrowedFd<'_>) -> Option<libc::pid_t> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .filter(|&p: &libc::pid_t| p > 0)
}

/// The ELF build-id note (`NT_GNU_BUILD_ID`) of the running executable, read from its loaded
/// image (no system call): the linker's hash of the linked contents. `None` if it has none.
pub(crate) fn build_id_note() -> Option<Vec<u8>> {
    struct Found(Option<Vec<u8>>);
    unsafe extern "C" fn first_object(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        // SAFETY: the loader passes a valid dl_phdr_info; `data` is the `Found` given below.
        let (info, found) = unsafe { (&*info, &mut *data.cast::<Found>()) };
        // The first object is the executable itself.
        // SAFETY: dlpi_phdr points at dlpi_phnum program headers of a loaded object.
        let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
        for ph in phdrs.iter().filter(|p| p.p_type == libc::PT_NOTE) {
            let align = (ph.p_align as usize).max(4);
            let base = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
            // SAFETY: a PT_NOTE segment is mapped (it lies within a PT_LOAD segment) for
            // p_memsz bytes at its load address.
            let notes =
                unsafe { std::slice::from_raw_parts(base as *const u8, ph.p_memsz as usize) };
            if let Some(id) = find_build_id(notes, align) {
                found.0 = Some(id.to_vec());
                break;
            }
        }
        1 // stop after the executable
    }
    let mut found = Found(None);
    // SAFETY: the callback only reads the loader's data for the duration of the call, and
    // `found` outlives it.
    unsafe { libc::dl_iterate_phdr(Some(first_object), (&mut found as *mut Found).cast()) };
    found.0
}

/// The descriptor of the `GNU` note of type 3 (build id) in a run of ELF notes.
fn find_build_id(mut notes: &[u8], align: usize) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let up = |n: usize| n.checked_add(align - 1).map(|v| v & !(align - 1));
    while notes.len() >= 12 {
        let word = |i: usize| u32::from_ne_bytes(notes[i..i + 4].try_into().unwrap()) as usize;
        let (namesz, descsz, kind) = (word(0), word(4), word(8) as u32);
        let name_end = 12usize.checked_add(namesz)?;
        let desc_start = up(name_end)?;
        let desc_end = desc_start.checked_add(descsz)?;
        if desc_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && &notes[12..name_end] == b"GNU\0" && descsz > 0 {
            return Some(&notes[desc_start..desc_end]);
        }
        notes = &notes[up(desc_end)?.min(notes.len())..];
    }
    None
}

/// A secret that only a process allowed to inspect this one (`PTRACE_MODE_READ_FSCREDS`) can
/// read: a fresh random nonce in a memfd this process holds. A client proves it may inspect the
/// server by opening `/proc/<server pid>/fd/<n>` (which the kernel allows only after that
/// check) and sending the nonce back. A process in a Landlock domain the server is not in, or
/// one a security module (AppArmor, SELinux) keeps from inspecting the server, cannot: the
/// kernel shows such confinement nowhere in `/proc`, so the server learns of it this way, from
/// the kernel, whatever the client runs.
pub(crate) struct Proof {
    fd: OwnedFd,
    nonce: [u8; 32],
}

impl Proof {
    /// A new nonce (16 bytes from `getrandom`, in hex) in a new memfd.
    pub(crate) fn new() -> io::Result<Proof> {
        let mut raw = [0u8; 16];
        let mut got = 0;
        while got < raw.len() {
            // SAFETY: a valid buffer of the given length.
            let n = unsafe { libc::getrandom(raw[got..].as_mut_ptr().cast(), raw.len() - got, 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            got += n as usize;
        }
        let mut nonce = [0u8; 32];
        for (i, b) in raw.iter().enumerate() {
            nonce[2 * i] = b"0123456789abcdef"[usize::from(b >> 4)];
            nonce[2 * i + 1] = b"0123456789abcdef"[usize::from(b & 15)];
        }
        // SAFETY: a NUL-terminated name; the result is checked and owned below.
        let fd = cvt(unsafe {
            libc::memfd_create(c"fdserver-preload-proof".as_ptr(), libc::MFD_CLOEXEC)
        })?;
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut f = File::from(fd);
        std::io::Write::write_all(&mut f, &nonce)?;
        Ok(Proof {
            fd: f.into(),
            nonce,
        })
    }

    /// The descriptor number the client opens under `/proc/<pid>/fd/`.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Whether `got` is the nonce (compared in constant time).
    pub(crate) fn matches(&self, got: &[u8]) -> bool {
        got.len() == self.nonce.len()
            && got
                .iter()
                .zip(&self.nonce)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// The client's side of [`Proof`]: reads the nonce the server `pid` holds at descriptor `fd`
/// (`/proc/<pid>/fd/<fd>`). Fails (`EACCES`, `EPERM`) where this process may not inspect the
/// server.
pub(crate) fn read_proof(pid: libc::pid_t, fd: &str) -> io::Result<Vec<u8>> {
    if pid <= 0 || fd.is_empty() || !fd.bytes().all(|b| b.is_ascii_digit()) {
        return Err(io::Error::other(format!(
            "no proof to read (server pid {pid}, descriptor {fd:?})"
        )));
    }
    let path = CString::new(format!("/proc/{pid}/fd/{fd}")).expect("no NUL");
    // SAFETY: a valid NUL-terminated path; the result is checked and owned below.
    let raw = cvt(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NONBLOCK,
        )
    })?;
    // SAFETY: a fresh descriptor that nothing else owns.
    let mut f = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut f, &mut buf)?;
    Ok(buf[..n].to_vec())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peer_of_a_socket_and_who_holds_it() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let b_ino = std::fs::File::from(b.as_fd().try_clone_to_owned().unwrap())
            .metadata()
            .unwrap()
            .ino();
        match super::unix_peer_inode(a.as_fd()) {
            Ok(peer) => assert_eq!(peer, b_ino),
            // A kernel without unix_diag: the fallback path keeps its older check.
            Err(e) => eprintln!("no socket diagnostics here: {e}"),
        }
        let me = std::fs::File::open("/proc/self").unwrap();
        assert!(super::holds_socket(me.as_fd(), b_ino).unwrap());
        drop(b);
        assert!(!super::holds_socket(me.as_fd(), b_ino).unwrap());
    }

    use super::*;

    #[test]
    fn argv_area_is_found() {
        let area = ArgvArea::of_this_process().expect("the test binary's arguments");
        assert!(area.argc >= 1 && area.len > 0);
    }

    #[test]
    fn finds_the_build_id_in_notes() {
        // A 4-byte "ABC\0" note of type 1, then the GNU build id (type 3) "\x01\x02\x03".
        let mut notes = Vec::new();
        for (name, kind, desc) in [
            (&b"ABC\0"[..], 1u32, &[9u8; 5][..]),
            (b"GNU\0", 3, &[1, 2, 3]),
        ] {
            notes.extend_from_slice(&(name.len() as u32).to_ne_bytes());
            notes.extend_from_slice(&(desc.len() as u32).to_ne_bytes());
            notes.extend_from_slice(&kind.to_ne_bytes());
            notes.extend_from_slice(name);
            notes.extend_from_slice(desc);
            while notes.len() % 4 != 0 {
                notes.push(0);
            }
        }
        assert_eq!(find_build_id(&notes, 4), Some(&[1u8, 2, 3][..]));
        assert_eq!(find_build_id(&notes[..20], 4), None, "truncated: nothing");
        assert_eq!(find_build_id(&[0xff; 40], 4), None, "garbage: nothing");
    }

    #[test]
    fn this_test_binary_has_a_build_id() {
        // Every mainstream Linux toolchain links with --build-id; if this fails, the preloader
        // falls back to the executable's file identity (see `super::super::build_id`).
        assert!(build_id_note().is_some_and(|id| id.len() >= 8));
    }
}
