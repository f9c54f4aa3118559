//! Helpers shared by the `reliability_*` test binaries (each includes this with `mod`): raw
//! socket writes, descriptor passing by hand, pipes, pidfds, forked test processes, and
//! /proc probes for memory and descriptors.
#![allow(dead_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// `FDSERVER_SOAK=1` (or any number `n`) scales the CI counts up to the long-run counts.
pub fn soak() -> bool {
    std::env::var("FDSERVER_SOAK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `ci` normally, `long` with `FDSERVER_SOAK` set or when the test is run with `--ignored`
/// (the `*_long` variants pass `true`).
pub fn count(long_run: bool, ci: usize, long: usize) -> usize {
    if long_run || soak() {
        long
    } else {
        ci
    }
}

/// Writes all of `bytes` to `fd` with plain `write(2)` (no framing).
pub fn raw_write(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: a write from a live buffer to a borrowed, open descriptor.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        bytes = &bytes[n as usize..];
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes, or fewer at end of stream; returns how many arrived.
pub fn raw_read_full(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: a read into a live, writable buffer from a borrowed, open descriptor.
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        got += n as usize;
    }
    Ok(got)
}

/// Reads until end of stream (for pipes: until every write end is closed).
pub fn read_to_eof(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = raw_read_full(fd, &mut buf)?;
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            return Ok(out);
        }
    }
}

/// `shutdown(SHUT_WR)`: the peer sees end of stream while we can still read its answer.
pub fn shutdown_write(fd: BorrowedFd<'_>) {
    // SAFETY: shutdown(2) on a borrowed socket.
    let r = unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
    assert_eq!(r, 0, "shutdown: {}", io::Error::last_os_error());
}

/// One `sendmsg` of `data` with `fds` attached as a single `SCM_RIGHTS` control message.
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    assert!(fds.len() <= 16);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // 128 aligned bytes: CMSG_SPACE(16 * 4) = 80 fits.
    let mut cmsg = [0u64; 16];
    // SAFETY: an all-zero msghdr is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = std::mem::size_of_val(fds) as u32;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is a pure computation.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as _;
        // SAFETY: msg_control points at 128 aligned bytes, enough for CMSG_SPACE(16 * 4), so
        // the header and the payload written through CMSG_DATA are in bounds.
        unsafe {
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(hdr).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    // SAFETY: msg describes live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1; 2];
    // SAFETY: fds is a valid array of two ints.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Writes one byte to a pipe (a "go" or "I am here" token).
pub fn signal_byte(fd: BorrowedFd<'_>) {
    raw_write(fd, &[1]).expect("write token");
}

/// Waits for one byte (or end of stream: returns false).
pub fn wait_byte(fd: BorrowedFd<'_>) -> bool {
    let mut b = [0u8; 1];
    raw_read_full(fd, &mut b).expect("read token") == 1
}

/// `pidfd_open(2)` on any process we can see (not only children).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(pid, 0) returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends a signal through a pidfd.
pub fn pidfd_kill(pidfd: BorrowedFd<'_>, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal(pidfd, sig, NULL, 0) behaves like kill(2).
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Waits until `fd` is readable (a pidfd: the process exited), or `limit` passes.
/// Returns whether it became readable. Used only with generous limits, as a bound, never to
/// measure time.
pub fn wait_readable(fd: BorrowedFd<'_>, limit: Option<Duration>) -> bool {
    let ms = limit.map_or(-1, |d| d.as_millis().min(i32::MAX as u128) as libc::c_int);
    loop {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return r > 0;
    }
}

/// Blocking `waitpid` for a child of ours; returns the raw status.
pub fn waitpid(pid: libc::pid_t) -> libc::c_int {
    let mut status = 0;
    loop {
        // SAFETY: status is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return status;
        }
        let e = io::Error::last_os_error();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted, "waitpid({pid}): {e}");
    }
}

/// Forks a test process that runs `f` and exits with its return value (101 if it panics),
/// then waits for it and returns its raw wait status. `f` runs in the child of a
/// multi-threaded process: it must keep to syscalls, the system allocator and fdserver (no
/// `println!`, no locks other threads might hold).
pub fn in_forked_process(f: impl FnOnce() -> i32) -> libc::c_int {
    waitpid(spawn_forked(f))
}

/// Spawns a forked process running `f` without waiting for it; returns its pid. The parent's
/// copy of `f` (and whatever it captured, e.g. pipe ends) is dropped before this returns.
pub fn spawn_forked(f: impl FnOnce() -> i32) -> libc::pid_t {
    // SAFETY: the child runs `f` and ends with `_exit`, never returning into the test harness;
    // `f` keeps to what is safe after a fork in a multi-threaded process (see
    // `in_forked_process`). The stdio locks are held across the fork so that the child (and
    // the servers it forks) do not inherit them held by another thread.
    let guard = fdserver_tests::stdio_fork_guard();
    let pid = unsafe { libc::fork() };
    drop(guard);
    assert!(pid >= 0, "fork: {}", io::Error::last_os_error());
    if pid == 0 {
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: _exit is always allowed.
        unsafe { libc::_exit(code) };
    }
    pid
}

/// Describes a raw wait status for assertion messages.
pub fn describe_status(status: libc::c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status:#x}")
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, ...).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/pid/status");
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Resident set size of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS")
}

/// This process's pid.
pub fn my_pid() -> u32 {
    std::process::id()
}

/// Number of descriptors open in another process (through /proc, so the count is exact and
/// includes nothing of ours).
pub fn fd_count_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/pid/fd")
        .count()
}

/// Whether `fd` is an open descriptor in this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// `(st_dev, st_ino)` of a descriptor: identifies the open file behind it.
pub fn file_id(fd: impl AsFd) -> (u64, u64) {
    // SAFETY: an all-zero stat is a valid out-value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on a borrowed, open descriptor with a valid out-pointer.
    let r = unsafe { libc::fstat(fd.as_fd().as_raw_fd(), &mut st) };
    assert_eq!(r, 0, "fstat: {}", io::Error::last_os_error());
    (st.st_dev, st.st_ino)
}

/// Disables core dumps for this process (servers that die of SIGSEGV on purpose).
pub fn no_core_dumps() {
    let lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit with a valid pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &lim) };
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures are reproducible.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Runs `f` in a forked test process and returns its verdict: `Ok(())`, or the failure text
/// it reported through a pipe (its panic message, or its `Err`). The parent also checks the
/// process exited as the verdict says. See `in_forked_process` for what `f` may do.
pub fn verdict_in_forked_process(f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    let (r, w) = pipe();
    let status = in_forked_process(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let text = match r {
            Ok(Ok(())) => return 0,
            Ok(Err(e)) => e,
            Err(p) => format!(
                "panicked: {}",
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ),
        };
        let _ = raw_write(w.as_fd(), text.as_bytes());
        1
    });
    let text = String::from_utf8_lossy(&read_to_eof(r.as_fd()).expect("read verdict")).into_owned();
    match (
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        text.is_empty(),
    ) {
        (true, true) => Ok(()),
        (_, false) => Err(text),
        (false, true) => Err(format!(
            "test process ended with {}",
            describe_status(status)
        )),
    }
}

/// Whether this process has no children at all, exited or alive.
pub fn no_children() -> bool {
    // SAFETY: an all-zero siginfo_t is a valid out-value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: WNOHANG|WNOWAIT only peeks; info is a valid out-pointer.
    let r = unsafe {
        libc::waitid(
            libc::P_ALL,
            0,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
}

/// `server.start()`. (These tests once held the stdio locks around it, a workaround for a
/// runtime bug that `start` has since fixed: it takes them itself. Holding them across `start`
/// now leaves them held in the server, by a thread it does not have: see
/// `Builder::fork_on_calling_thread`.)
pub fn start_guarded<S: fdserver::Server>(server: &mut S) -> Result<S::Client, fdserver::Error> {
    server.start()
}

/// `builder.start(server)`.
pub fn start_guarded_with<S: fdserver::Server>(
    builder: fdserver::Builder,
    server: &mut S,
) -> Result<S::Client, fdserver::Error> {
    builder.start(server)
}
