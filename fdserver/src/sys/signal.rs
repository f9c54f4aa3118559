//! Signals: the runtime's recording handler, the loop's race-free wait, signal sets, masks and
//! dispositions, `signalfd`.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI16, AtomicI32, AtomicU64, Ordering};

use super::cvt;

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

/// The socket a forked server's loop waits on in a blocking `recvmsg` when idle (-1: none; see
/// [`set_idle_socket`]), its file status flags without `O_NONBLOCK`, and whether
/// [`flag_handler`] has made it non-blocking since the loop last looked ([`arm_idle_wake`]).
///
/// A `recvmsg` blocked on a `SOCK_SEQPACKET` socket wakes for arriving data only (its wait
/// filters the peer's write-space wake-ups, which a stream socket's does not), so the loop can
/// wait for the next request inside `recvmsg` itself, one system call instead of `poll` and
/// `recvmsg`. A caught signal must still end that wait, with no race between the loop's look at
/// the pending signals and the call: the handler sets `O_NONBLOCK` on the socket. A `recvmsg`
/// that has not started yet then returns `EAGAIN` at once; one already blocked is interrupted
/// and, `SA_RESTART` restarting it, reads the flags again and returns `EAGAIN`. The loop clears
/// the flag (only after a signal, so no system call per message) before it looks at the
/// pending signals.
static IDLE_SOCK: AtomicI32 = AtomicI32::new(-1);
static IDLE_FLAGS: AtomicI32 = AtomicI32::new(0);
static IDLE_NONBLOCK: AtomicBool = AtomicBool::new(false);

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
        let idle = IDLE_SOCK.load(Ordering::SeqCst);
        if idle >= 0 {
            IDLE_NONBLOCK.store(true, Ordering::SeqCst);
            let flags = IDLE_FLAGS.load(Ordering::SeqCst) | libc::O_NONBLOCK;
            // SAFETY: fcntl(F_SETFL) is async-signal-safe and takes integers.
            unsafe { libc::fcntl(idle, libc::F_SETFL, flags) };
        }
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

/// Bit `n` set = signal `n` ends the running loop (SIGTERM and SIGINT unless the server handles
/// them itself). Set by the loop when it starts, cleared when it ends.
static STOP_SIGNALS: AtomicU64 = AtomicU64::new(0);

/// Sets which signals end the running loop (see [`stop_requested`]).
pub(crate) fn set_stop_signals(mask: u64) {
    STOP_SIGNALS.store(mask, Ordering::SeqCst);
}

/// The signal that ends the running loop, if one arrived and was not yet taken.
pub(crate) fn stop_requested() -> Option<libc::c_int> {
    let hits = PENDING.load(Ordering::SeqCst) & STOP_SIGNALS.load(Ordering::SeqCst);
    (hits != 0).then(|| hits.trailing_zeros() as libc::c_int)
}

/// What woke [`wait_loop_socket`].
pub(crate) enum Wake {
    /// The socket is ready (or hung up: the next operation will tell).
    Ready,
    /// The deadline passed.
    TimedOut,
    /// A signal that ends the loop arrived (see [`stop_requested`]).
    Stop(libc::c_int),
}

/// Waits until the loop's socket (see [`set_wait_socket`]) is ready for `events`, the deadline
/// passes, or a signal that ends the loop arrives: the wait of every read and write the loop and
/// its handlers make on their channel, so that SIGTERM ends the loop in every state (half a
/// message read, a reply blocked on a client that does not read). Race-free like
/// [`wait_readable_or_signal`]: the wake-up slot is armed before the check. Other caught signals
/// stay pending for the loop and the wait goes on.
pub(crate) fn wait_loop_socket(
    events: libc::c_short,
    deadline: Option<std::time::Instant>,
) -> io::Result<Wake> {
    WAIT_FDS[0].events.store(events, Ordering::SeqCst);
    let wake = loop {
        arm_wait();
        if let Some(sig) = stop_requested() {
            break Ok(Wake::Stop(sig));
        }
        let timeout = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break Ok(Wake::TimedOut);
                }
                // Rounded up, so as never to wake before the deadline and spin.
                left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: as in `wait_readable_or_signal`.
        let r = unsafe { libc::poll(WAIT_FDS.as_ptr() as *mut libc::pollfd, 2, timeout) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break Err(e);
        }
        if WAIT_FDS[0].revents.load(Ordering::SeqCst) != 0 {
            break Ok(Wake::Ready);
        }
        // Woken by the slot (a signal, looked at on the next round) or by the time-out.
    };
    WAIT_FDS[0].events.store(libc::POLLIN, Ordering::SeqCst);
    wake
}

/// Makes the loop wait for requests in a blocking `recvmsg` on `sock` (`Some`), woken by caught
/// signals through `O_NONBLOCK` (see [`IDLE_SOCK`]), or stops that (`None`, restoring the flags).
/// Returns whether it is on: not if the socket is non-blocking already (someone else's choice)
/// or its flags cannot be read.
pub(crate) fn set_idle_socket(sock: Option<BorrowedFd<'_>>) -> bool {
    let Some(sock) = sock else {
        let fd = IDLE_SOCK.swap(-1, Ordering::SeqCst);
        if fd >= 0 && IDLE_NONBLOCK.swap(false, Ordering::SeqCst) {
            // SAFETY: fcntl with integer arguments on the loop's socket, still open.
            unsafe { libc::fcntl(fd, libc::F_SETFL, IDLE_FLAGS.load(Ordering::SeqCst)) };
        }
        return false;
    };
    // SAFETY: F_GETFL only reads the descriptor's flags.
    let flags = unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 || flags & libc::O_NONBLOCK != 0 {
        return false;
    }
    IDLE_FLAGS.store(flags, Ordering::SeqCst);
    IDLE_NONBLOCK.store(false, Ordering::SeqCst);
    IDLE_SOCK.store(sock.as_raw_fd(), Ordering::SeqCst);
    true
}

/// Arms the loop's idle `recvmsg`: makes its socket blocking again if a signal made it
/// non-blocking. Call before looking at [`take_pending`] (see [`IDLE_SOCK`]).
pub(crate) fn arm_idle_wake() {
    if IDLE_NONBLOCK.load(Ordering::SeqCst) && IDLE_NONBLOCK.swap(false, Ordering::SeqCst) {
        let fd = IDLE_SOCK.load(Ordering::SeqCst);
        // SAFETY: fcntl with integer arguments on the loop's socket.
        unsafe { libc::fcntl(fd, libc::F_SETFL, IDLE_FLAGS.load(Ordering::SeqCst)) };
    }
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
