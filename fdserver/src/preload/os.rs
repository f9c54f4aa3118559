//! System calls the preloader needs beyond `crate::sys`.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
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
    Ok(pidfd)
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
