//! Support shared by the integration tests: a watchdog so that a hung test fails instead of
//! stalling CI, and probes for descriptors and zombies.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Aborts the whole test process (failing the run, with a message naming the test) if it is
/// still alive after `limit`. Dropping the returned guard disarms it.
///
/// Every test that forks takes one: `let _wd = fdserver_tests::watchdog("name", SECS(30));`.
/// Aborting also closes every socket this process holds, so its servers see end of stream and
/// exit (a server stuck inside a handler is the exception: it outlives the test process).
pub fn watchdog(name: &str, limit: Duration) -> Watchdog {
    let state = Arc::new((Mutex::new(false), Condvar::new()));
    let s2 = Arc::clone(&state);
    let name = name.to_owned();
    let thread = std::thread::spawn(move || {
        let (lock, cv) = &*s2;
        let done = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (done, timeout) = cv
            .wait_timeout_while(done, limit, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        if !*done && timeout.timed_out() {
            eprintln!("WATCHDOG: test `{name}` still running after {limit:?}: aborting");
            std::process::abort();
        }
    });
    Watchdog {
        state,
        thread: Some(thread),
    }
}

/// Guard returned by [`watchdog`].
pub struct Watchdog {
    state: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.state;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Shorthand for `Duration::from_secs`.
#[allow(non_snake_case)]
pub fn SECS(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The descriptors open in this process, sorted (the directory handle used to list them is
/// left out).
pub fn open_fds() -> Vec<RawFd> {
    let dir = std::fs::read_dir("/proc/self/fd").expect("read /proc/self/fd");
    let listed: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The ReadDir's own descriptor was listed; the iterator (and with it the directory) is
    // consumed and closed by now, so fd_is_open filters it out. (Filtering lazily while the
    // directory was still open kept it in the list.)
    let mut fds: Vec<RawFd> = listed.into_iter().filter(|&fd| fd_is_open(fd)).collect();
    fds.sort_unstable();
    fds
}

fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Whether `fd` is one of the runtime's tombstones: an `O_PATH` descriptor of `/dev/null`
/// (what a forked server finds over each inherited descriptor it was not asked to keep).
pub fn is_tombstone(fd: RawFd) -> bool {
    // SAFETY: F_GETFL only queries the descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    flags != -1
        && flags & libc::O_PATH != 0
        && std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|t| t == std::path::Path::new("/dev/null"))
}

/// Whether `pid` is a zombie (exited, not reaped).
pub fn is_zombie(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether a process with this pid exists (zombie or not).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` is a child of this process that has not been reaped: still running, or a
/// zombie (`waitid(WNOHANG | WNOWAIT)` finds it either way).
pub fn is_unreaped_child(pid: u32) -> bool {
    // SAFETY: an all-zero siginfo_t is a valid out-value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: WNOHANG|WNOWAIT only peeks at the child's state; `info` is a valid out-pointer.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    r == 0
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises tests that count this process's descriptors or children. Put such tests in a test
/// binary of their own where every test takes this lock, so nothing else opens descriptors
/// concurrently.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Helpers for the runtime integration tests (`tests/runtime_*.rs`).
// ---------------------------------------------------------------------------------------------

/// Forks a child process that runs `f` and `_exit`s with its return value (101 if it panics).
/// Returns the child's pid in the parent; reap it with [`wait_child`].
///
/// Before `f` runs, the child closes every descriptor but 0, 1, 2 and those in `keep`, so that it
/// does not hold copies of other concurrently running tests' sockets and pipes (which would keep
/// them from seeing end of stream), and arranges to be killed if the test process dies (so an
/// aborted test leaves nothing running).
///
/// The child of a multi-threaded process (every test binary is one) may allocate (glibc resets
/// its malloc locks in the child) and use stdout and stderr (their locks are held across the
/// fork, see [`stdio_fork_guard`]), but must not take other global locks.
pub fn fork_child<F: FnOnce() -> i32>(keep: &[RawFd], f: F) -> libc::pid_t {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    keep.dedup();
    // SAFETY: getpid cannot fail.
    let parent = unsafe { libc::getpid() };
    let guard = stdio_fork_guard();
    // SAFETY: the child closes descriptors and sets its death signal (async-signal-safe), runs
    // `f` (see the contract above) and ends in `_exit`, never returning into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    // Parent: release the locks. Child: it owns them now (same thread), release them too.
    drop(guard);
    if pid == 0 {
        // SAFETY: prctl/getppid/_exit are async-signal-safe. If the test process is already
        // gone, the death signal would never come: leave at once.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            if libc::getppid() != parent {
                libc::_exit(102);
            }
        }
        close_fds_except(&keep);
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
        // SAFETY: `_exit` is async-signal-safe and ends the child without unwinding into the
        // harness or running the parent's atexit handlers.
        unsafe { libc::_exit(code) }
    }
    pid
}

/// Closes every descriptor >= 3 but those in `keep` (sorted), with `close_range(2)`.
fn close_fds_except(keep: &[RawFd]) {
    let close_range = |first: u32, last: u32| {
        // SAFETY: close_range(first, last, 0) only closes descriptors of this process.
        let r = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        assert_eq!(r, 0, "close_range");
    };
    let mut from = 3u32;
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

/// A [`fdserver::Channel`] pair with a forked peer: the child runs `f` on its end (and keeps
/// the descriptors in `keep`), the parent gets the other end and the child's pid. Each process
/// holds only its own end, so either side sees end of stream when the other closes.
pub fn fork_peer<F: FnOnce(fdserver::Channel) -> i32>(
    keep: &[RawFd],
    f: F,
) -> (fdserver::Channel, libc::pid_t) {
    let (mine, theirs) = fdserver::Channel::pair().expect("socketpair");
    let mut keep = keep.to_vec();
    keep.push(theirs.as_raw_fd());
    // In the child, `mine` is closed by fork_child (it is not in `keep`). In the parent the
    // closure, and with it `theirs`, is dropped when fork_child returns.
    let pid = fork_child(&keep, move || f(theirs));
    (mine, pid)
}

/// One raw `sendmsg` of `data` with every descriptor of `fds` in a single `SCM_RIGHTS` control
/// message (what a misbehaving peer might send).
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[RawFd]) {
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut cmsg = vec![0u64; space.div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` bytes of 8-aligned storage, enough for one
        // header and `fds.len()` ints.
        unsafe {
            let hdr = libc::CMSG_FIRSTHDR(&msg);
            (*hdr).cmsg_level = libc::SOL_SOCKET;
            (*hdr).cmsg_type = libc::SCM_RIGHTS;
            (*hdr).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(hdr).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    // SAFETY: msg describes live buffers for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    assert_eq!(
        n,
        data.len() as isize,
        "sendmsg: {}",
        std::io::Error::last_os_error()
    );
}

/// One raw `recvmsg` into `buf` with room for up to 16 descriptors: the byte count and the
/// descriptors that arrived.
pub fn recv_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> (usize, Vec<OwnedFd>) {
    let mut cmsg = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cmsg) as _;
    // SAFETY: msg describes live, writable buffers for the duration of the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    assert!(n >= 0, "recvmsg: {}", std::io::Error::last_os_error());
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control; the CMSG_* macros walk exactly that range, and
    // each SCM_RIGHTS payload holds descriptors just installed in this process, owned by nobody.
    unsafe {
        let mut hdr = libc::CMSG_FIRSTHDR(&msg);
        while !hdr.is_null() {
            if (*hdr).cmsg_level == libc::SOL_SOCKET && (*hdr).cmsg_type == libc::SCM_RIGHTS {
                let count = ((*hdr).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                let data = libc::CMSG_DATA(hdr).cast::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            hdr = libc::CMSG_NXTHDR(&msg, hdr);
        }
    }
    (n as usize, fds)
}

/// Reaps the child `pid` (blocking) and returns its exit status.
pub fn wait_child(pid: libc::pid_t) -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return std::process::ExitStatus::from_raw(status);
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::Interrupted,
            "waitpid({pid}): {e}"
        );
    }
}

/// The pids of this process's children (running or zombie), from `/proc`.
pub fn child_pids() -> Vec<u32> {
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() } as u32;
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name: state, ppid, ...
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Waits, with a pidfd and `poll`, until process `pid` (not necessarily our child) has exited,
/// or `limit` passes. Returns whether it exited. A pid that no longer exists counts as exited.
pub fn wait_pid_gone(pid: u32, limit: Duration) -> bool {
    // SAFETY: pidfd_open(pid, 0) returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ESRCH),
            "pidfd_open({pid}): {e}"
        );
        return true;
    }
    // SAFETY: the syscall returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    poll_readable(fd.as_fd(), Some(limit))
}

/// Waits until `fd` is readable (or hung up), or `limit` passes (`None`: forever). Retries `EINTR`.
pub fn poll_readable(fd: BorrowedFd<'_>, limit: Option<Duration>) -> bool {
    let deadline = limit.map(|l| std::time::Instant::now() + l);
    loop {
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                left.as_millis().min(i32::MAX as u128) as libc::c_int
            }
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout) };
        match r {
            1.. => return true,
            0 if timeout == 0 || deadline.is_some_and(|d| std::time::Instant::now() >= d) => {
                return false
            }
            0 => {}
            _ => {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "poll: {e}");
            }
        }
    }
}

/// A pipe, both ends close-on-exec: `(read end, write end)`.
pub fn pipe() -> (OwnedFd, OwnedFd) {
    pipe_flags(libc::O_CLOEXEC)
}

/// A pipe whose ends are *not* close-on-exec (as a careless program might leave them).
pub fn pipe_inheritable() -> (OwnedFd, OwnedFd) {
    pipe_flags(0)
}

fn pipe_flags(flags: libc::c_int) -> (OwnedFd, OwnedFd) {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a writable array of two ints, as pipe2(2) requires.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), flags) };
    assert_eq!(r, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: pipe2 succeeded: both descriptors are open and owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Sets or clears `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) {
    // SAFETY: F_GETFL/F_SETFL on a descriptor the caller borrows.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        assert!(flags >= 0, "F_GETFL: {}", std::io::Error::last_os_error());
        let new = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        assert_eq!(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, new), 0);
    }
}

/// Whether `fd` is a descriptor open in this process.
pub fn fd_open(fd: RawFd) -> bool {
    fd_is_open(fd)
}

/// Deterministic pseudo-random bytes (xorshift64*), so binary-data tests need no dependency and
/// are reproducible.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The test servers' shared message handlers ("the probe protocol"), so that servers with
/// different [`fdserver::Server::SIGNALS`] answer the same requests:
///
/// | request | effect |
/// |---|---|
/// | `echo args...` | `["ok", args...]` |
/// | `pid` | `["ok", pid]` |
/// | `fds` | `["ok", socket fd, open fds...]` as listed in `/proc/self/fd`, tombstones left out |
/// | `tombstones` | `["ok", fds...]`: the inherited numbers the runtime put tombstones over |
/// | `count` | `["ok", signals handled so far]` |
/// | `fail text` | error reply, kind `failed` |
/// | `panic` | the handler panics before replying |
/// | `partial_panic` | replies `["ok", "partial"]`, then panics |
/// | `reply_then_fail` | replies `["ok", "partial"]`, then returns an error (kind `failed`) |
/// | `quit` | replies `["ok"]` and ends the loop |
/// | `hang` | replies `["ok"]`, ignores SIGTERM, never reads again |
/// | `pause` | replies `["ok", "pausing"]`, then waits in `pause(2)` until a caught signal |
/// | `exit code` | `_exit(code)` without replying |
/// | `scalar_echo` + a scalar | `["ok"]`, then the scalar back |
/// | `fd_write text` + a descriptor | writes `text` into the descriptor, then `["ok"]` |
/// | `fd_back text` | `["ok"]`, then a pipe's read end holding `text` |
/// | `mixed` | `["ok"]`, then `["array"]`, scalar `one`, a pipe read end holding `fd`, scalar `two` |
/// | `wait_for_next` | `["ok", "waiting"]`, then reads one more message and returns without reply |
/// | `write_kept fd text` | writes `text` into descriptor `fd` (kept with `Builder::keep_fd`) |
/// | `print text` | writes `text` to `std::io::stdout()` without flushing, then `["ok"]` |
/// | anything else | error reply, kind `unknown_message` |
pub fn probe_handle(
    state: &mut ProbeState,
    ctx: &mut fdserver::Context<'_>,
    msg: fdserver::Message<'_>,
) -> Result<(), fdserver::RemoteError> {
    use fdserver::RemoteError;
    use std::io::Write;
    match msg.name() {
        b"echo" => ctx.reply(msg.args())?,
        b"pid" => ctx.reply([ctx.pid().to_string()])?,
        b"fds" => {
            let sock = ctx.channel().as_raw_fd();
            let mut out = vec![sock.to_string()];
            out.extend(
                open_fds()
                    .iter()
                    .filter(|&&fd| !is_tombstone(fd))
                    .map(|fd| fd.to_string()),
            );
            ctx.reply(&out)?;
        }
        b"tombstones" => {
            let out: Vec<String> = open_fds()
                .into_iter()
                .filter(|&fd| is_tombstone(fd))
                .map(|fd| fd.to_string())
                .collect();
            ctx.reply(&out)?;
        }
        b"count" => ctx.reply([state.signals.to_string()])?,
        b"fail" => return Err(RemoteError::failed(msg.str(1)?)),
        b"panic" => panic!("probe panics on request"),
        b"partial_panic" => {
            ctx.reply(["partial"])?;
            panic!("probe panics after replying");
        }
        b"reply_then_fail" => {
            ctx.reply(["partial"])?;
            return Err(RemoteError::failed("failed after replying"));
        }
        b"quit" => {
            ctx.quit();
            ctx.reply([""; 0])?;
        }
        b"hang" => {
            ctx.reply([""; 0])?;
            // SAFETY: setting SIGTERM's disposition to "ignore" is always valid.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            loop {
                // SAFETY: pause only waits for a signal.
                unsafe { libc::pause() };
            }
        }
        b"pause" => {
            ctx.reply(["pausing"])?;
            // SAFETY: pause only waits for a signal (it returns after a caught one's handler).
            unsafe { libc::pause() };
        }
        b"exit" => {
            let code: i32 = msg.str(1)?.parse().map_err(RemoteError::bad_arguments)?;
            // SAFETY: ends this server process at once, as a crash would.
            unsafe { libc::_exit(code) }
        }
        b"scalar_echo" => {
            let data = ctx
                .channel()
                .read_scalar()?
                .ok_or_else(|| RemoteError::failed("eof"))?;
            ctx.reply([""; 0])?;
            ctx.channel().write_scalar(&data)?;
        }
        b"fd_write" => {
            let fd = ctx
                .channel()
                .recv_fd()?
                .ok_or_else(|| RemoteError::failed("eof"))?;
            std::fs::File::from(fd).write_all(msg.get(1).unwrap_or(b""))?;
            ctx.reply([""; 0])?;
        }
        b"fd_back" => {
            let (r, w) = pipe();
            std::fs::File::from(w).write_all(msg.get(1).unwrap_or(b""))?;
            ctx.reply([""; 0])?;
            ctx.channel().send_fd(&r)?;
        }
        b"mixed" => {
            let (r, w) = pipe();
            std::fs::File::from(w).write_all(b"fd")?;
            ctx.reply([""; 0])?;
            let ch = ctx.channel();
            ch.write_array(["array"])?;
            ch.write_scalar(b"one")?;
            ch.send_fd(&r)?;
            ch.write_scalar(b"two")?;
        }
        b"wait_for_next" => {
            ctx.reply(["waiting"])?;
            let _ = ctx.channel().read_array()?;
        }
        b"print" => {
            // Straight to the process's stdout (not the test harness's capture), unflushed.
            std::io::stdout().write_all(msg.get(1).unwrap_or(b""))?;
            ctx.reply([""; 0])?;
        }
        b"write_kept" => {
            let fd: RawFd = msg.str(1)?.parse().map_err(RemoteError::bad_arguments)?;
            write_raw(fd, msg.get(2).unwrap_or(b""));
            ctx.reply([""; 0])?;
        }
        other => return Err(RemoteError::unknown_message(other)),
    }
    Ok(())
}

/// State shared by the probe servers.
#[derive(Debug, Default, Clone)]
pub struct ProbeState {
    /// A pipe write end kept open in the server (`Builder::keep_fd`): `finalize_server` writes
    /// `F`, each handled signal writes `S` and its number followed by `;`.
    pub report: Option<RawFd>,
    /// How many signals the server handled.
    pub signals: u32,
    /// `initialize_server` fails with this message.
    pub fail_init: Option<&'static str>,
}

impl ProbeState {
    /// Records a handled signal (counter + report pipe).
    pub fn on_signal(&mut self, signal: fdserver::Signal) {
        self.signals += 1;
        if let Some(fd) = self.report {
            write_raw(fd, format!("S{};", signal as i32).as_bytes());
        }
    }

    /// What `finalize_server` does.
    pub fn on_finalize(&mut self) {
        if let Some(fd) = self.report {
            write_raw(fd, b"F");
        }
    }
}

/// Writes all of `data` to the raw descriptor `fd` (which the caller keeps open).
pub fn write_raw(fd: RawFd, data: &[u8]) {
    // SAFETY: the caller guarantees `fd` is open for the duration of the call; ManuallyDrop
    // keeps the File from closing it.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    use std::io::Write;
    f.write_all(data).expect("write to report descriptor");
}

/// A hand-written server answering the probe protocol (see [`probe_handle`]), with no signals
/// of its own.
#[derive(Debug, Default, Clone)]
pub struct Probe(pub ProbeState);

impl fdserver::Server for Probe {
    type Client = fdserver::ServerHandle;

    fn handle(
        &mut self,
        ctx: &mut fdserver::Context<'_>,
        msg: fdserver::Message<'_>,
    ) -> Result<(), fdserver::RemoteError> {
        probe_handle(&mut self.0, ctx, msg)
    }

    fn initialize_server(&mut self) -> Result<(), fdserver::BoxError> {
        match self.0.fail_init {
            Some(m) => Err(m.into()),
            None => Ok(()),
        }
    }

    fn finalize_server(&mut self) {
        self.0.on_finalize();
    }
}

/// Reads exactly `n` bytes from `fd` (blocking).
pub fn read_n(fd: BorrowedFd<'_>, n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut f = std::fs::File::from(fd.try_clone_to_owned().expect("dup"));
    let mut v = vec![0u8; n];
    f.read_exact(&mut v).expect("read_exact");
    v
}

/// Takes this process's stdout and stderr locks (flushing stdout first), to hold across a raw
/// `fork` as [`fork_child`] does: a lock another thread held at that moment would stay locked
/// forever in the child; held by the forking thread, the child's only thread owns it (the locks
/// are reentrant) and releases it. The flush keeps the child from writing this process's pending
/// output a second time. (`Builder::start_handle` takes the same locks around its own fork.)
pub fn stdio_fork_guard() -> (std::io::StdoutLock<'static>, std::io::StderrLock<'static>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.flush();
    (out, std::io::stderr().lock())
}

/// Threads that churn the allocator and "print" until dropped, to start servers under (see
/// `tests/runtime_fork_safety.rs`).
pub struct BusyThreads {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    work: std::sync::Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl BusyThreads {
    /// Starts `n` threads. Each allocates and frees blocks of many sizes (small bins, large
    /// bins, mmap-sized) and formats lines, which it "prints": with `real_stdio`, while holding
    /// the process's `stdout` and `stderr` locks (as a thread in the middle of a long
    /// `println!` does; it writes nothing, to keep the test output clean), otherwise into a log
    /// buffer behind a `Mutex` of its own.
    pub fn start(n: usize, real_stdio: bool) -> BusyThreads {
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let work = Arc::new(AtomicU64::new(0));
        let log = Arc::new(Mutex::new(Vec::<u8>::new()));
        let threads = (0..n)
            .map(|t| {
                let (stop, work, log) = (Arc::clone(&stop), Arc::clone(&work), Arc::clone(&log));
                std::thread::spawn(move || {
                    let mut keep: Vec<Vec<u8>> = Vec::new();
                    let mut i = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        let stdio = real_stdio
                            .then(|| (std::io::stdout().lock(), std::io::stderr().lock()));
                        let size = [16, 200, 4096, 70_000, 300_000][(i + t) % 5];
                        keep.push(vec![t as u8; size]);
                        if keep.len() > 32 {
                            keep.drain(..16);
                        }
                        let line = format!("thread {t} iteration {i}\n");
                        match stdio {
                            Some((mut out, mut err)) => {
                                let _ = out.write_all(b"");
                                let _ = out.flush();
                                let _ = err.write_all(b"");
                            }
                            None => {
                                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                                log.extend_from_slice(line.as_bytes());
                                if log.len() > 1 << 16 {
                                    log.clear();
                                }
                            }
                        }
                        i += 1;
                        work.fetch_add(1, Ordering::Relaxed);
                        if i % 64 == 0 {
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        BusyThreads {
            stop,
            work,
            threads,
        }
    }

    /// How many iterations the threads have done so far.
    pub fn work(&self) -> u64 {
        self.work.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for BusyThreads {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
