//! System calls the preloader needs beyond `crate::sys`.

use std::os::fd::{AsRawFd, BorrowedFd};

/// Stops the SIGIO that `sys::set_async_owner` asked for on `fd` (`F_SETOWN 0`: no owner, so no
/// signal), so that a peer hanging up after we are done with it does not wake us.
pub(crate) fn stop_async(fd: BorrowedFd<'_>) {
    // SAFETY: fcntl on a valid descriptor with an integer argument.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETOWN, 0) };
}

/// The signals this process ignores or catches, bit `n - 1` for signal `n`, read from
/// `/proc/self/status`; every signal if that cannot be read. Not async-signal-safe (it
/// allocates): call it before forking, and reset in the child with [`reset_dispositions`].
pub(crate) fn non_default_signals() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/self/status") else {
        return u64::MAX;
    };
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    match (field("SigIgn:"), field("SigCgt:")) {
        (Some(ign), Some(cgt)) => ign | cgt,
        _ => u64::MAX,
    }
}

/// Resets the signals of `mask` (as from [`non_default_signals`]) to their default action.
/// Async-signal-safe.
pub(crate) fn reset_dispositions(mask: u64) {
    for sig in 1..=crate::sys::sigmax() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP || sig > 64 {
            continue;
        }
        if mask & (1u64 << (sig - 1)) != 0 {
            // Signals reserved by the C library (32, 33 on glibc) answer EINVAL: fine.
            let _ = crate::sys::set_disposition(sig, crate::sys::Disposition::Default);
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_dispositions() {
        // Rust's runtime ignores SIGPIPE (13): bit 12.
        let mask = non_default_signals();
        assert_ne!(mask, u64::MAX);
        assert_ne!(mask & (1 << (libc::SIGPIPE - 1)), 0);
    }
}
