//! Sockets: the socket pair, `sendmsg`/`recvmsg` with descriptors (`SCM_RIGHTS`), peer credentials.

use std::io::{self, IoSlice};
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::time::Duration;

use super::{cvt, cvt_size};

/// How many descriptors one `recvmsg` accepts before the control message counts as truncated.
pub(crate) const MAX_FDS_PER_RECV: usize = 4;

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

/// A connected `SOCK_SEQPACKET` UNIX socket pair, both ends close-on-exec, with a send buffer
/// (`SO_SNDBUF`) of about `send_buffer` bytes: the kernel refuses (`EMSGSIZE`) any record longer
/// than that buffer minus 32 bytes, whoever writes it. Returns the pair and the buffer size the
/// kernel set (at most `send_buffer`; less where `net.core.wmem_max` caps it).
pub(crate) fn seqpacket_pair(send_buffer: usize) -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: `fds` is a valid, writable array of two ints, as socketpair(2) requires.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    // SAFETY: socketpair succeeded, so both fds are open and owned by nobody else.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The kernel doubles the value asked for.
    let ask = (send_buffer / 2) as libc::c_int;
    let mut largest = 0;
    for sock in [&a, &b] {
        // SAFETY: a valid int option value of the right size.
        cvt(unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&ask as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
        let mut got: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: valid out-pointers of the right size.
        cvt(unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&mut got as *mut libc::c_int).cast(),
                &mut len,
            )
        })?;
        largest = largest.max(got.max(0) as usize);
    }
    Ok((a, b, largest))
}

/// Sends each of `records` as one record (`SOCK_SEQPACKET`) with `MSG_NOSIGNAL`, in one
/// `sendmmsg`. Returns how many went (a record goes whole or not at all).
pub(crate) fn send_records(
    sock: BorrowedFd<'_>,
    records: &[IoSlice<'_>],
    dontwait: bool,
) -> io::Result<usize> {
    const MAX: usize = 8;
    let n = records.len().min(MAX);
    // SAFETY: all-zero mmsghdr values are valid empty messages; the fields are filled below.
    let mut msgs: [libc::mmsghdr; MAX] = unsafe { std::mem::zeroed() };
    for (m, r) in msgs.iter_mut().zip(&records[..n]) {
        m.msg_hdr.msg_iov = r as *const IoSlice<'_> as *mut libc::iovec; // ABI-compatible
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut flags = libc::MSG_NOSIGNAL;
    if dontwait {
        flags |= libc::MSG_DONTWAIT;
    }
    // SAFETY: msgs and the buffers they point at are live for the duration of the call.
    let sent = unsafe { libc::sendmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), n as _, flags as _) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// Aligned storage for the control message of a send: one `SCM_RIGHTS` descriptor.
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

/// `SCM_PIDFD` (`SO_PASSPIDFD`, Linux 6.5): a pidfd of the sender, installed in the receiver.
const SCM_PIDFD: libc::c_int = 0x04;

/// Room for the security label of `SCM_SECURITY` (`SO_PASSSEC`) in [`RecvCmsgBuf`] (SELinux
/// contexts are well under this).
const SECURITY_LABEL_ROOM: usize = 256;

/// Aligned storage for the control messages of a receive. Besides our `SCM_RIGHTS` (up to
/// `MAX_FDS_PER_RECV` descriptors), the kernel attaches to every read whatever options set on
/// the socket ask for, whoever set them: `SCM_CREDENTIALS` (`SO_PASSCRED`), `SCM_PIDFD`
/// (`SO_PASSPIDFD`), `SCM_SECURITY` (`SO_PASSSEC`). All must fit, or the kernel truncates the
/// control data (`MSG_CTRUNC`) and our descriptors with it.
#[repr(C, align(8))]
struct RecvCmsgBuf([u8; 512]);

const fn cmsg_space(payload: usize) -> usize {
    // CMSG_SPACE: the header and the payload, each rounded up to the alignment of `size_t`.
    let align = size_of::<usize>();
    size_of::<libc::cmsghdr>().next_multiple_of(align) + payload.next_multiple_of(align)
}

const _: () = {
    assert!(size_of::<CmsgBuf>() >= cmsg_space(size_of::<RawFd>()));
    assert!(
        size_of::<RecvCmsgBuf>()
            >= cmsg_space(MAX_FDS_PER_RECV * size_of::<RawFd>())
                + cmsg_space(size_of::<libc::ucred>())
                + cmsg_space(size_of::<RawFd>())
                + cmsg_space(SECURITY_LABEL_ROOM)
    );
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
    let mut flags = libc::MSG_NOSIGNAL;
    if dontwait {
        flags |= libc::MSG_DONTWAIT;
    }
    if let ([one], None) = (iov, fd) {
        // One buffer and no descriptor: `send`, which the kernel takes without a `msghdr` and an
        // iovec array to copy in and check.
        // SAFETY: the pointer and length describe a live buffer for the duration of the call.
        return cvt_size(unsafe {
            libc::send(sock.as_raw_fd(), one.as_ptr().cast(), one.len(), flags)
        });
    }
    let mut cmsg = CmsgBuf([0; 64]);
    // SAFETY: an all-zero msghdr is a valid "empty" value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec; // IoSlice is ABI-compatible with iovec
    msg.msg_iovlen = iov.len() as _;
    if let Some(fd) = fd {
        attach_fd(&mut msg, &mut cmsg, fd);
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
    /// A record (`SOCK_SEQPACKET`) was longer than the buffers (`MSG_TRUNC`): the kernel dropped
    /// the rest of it.
    pub record_cut: bool,
}

impl Received {
    pub fn fd_count(&self) -> usize {
        self.fds.iter().filter(|f| f.is_some()).count()
    }
}

/// One `recvmsg` into `buf` with `MSG_CMSG_CLOEXEC`; every descriptor that arrives is wrapped in
/// an `OwnedFd` at once. Descriptors of `SCM_RIGHTS` are returned (up to `MAX_FDS_PER_RECV`;
/// more count as truncated and are closed); a pidfd the kernel attaches because of
/// `SO_PASSPIDFD` is closed here, and credentials and security labels are ignored.
pub(crate) fn recv(sock: BorrowedFd<'_>, buf: &mut [u8], dontwait: bool) -> io::Result<Received> {
    recv2(sock, buf, &mut [], dontwait)
}

/// [`recv`] into `buf`, then, for what does not fit there, into `spare` (whose bytes the kernel
/// writes, from its start, as many as the returned count exceeds `buf.len()`).
pub(crate) fn recv2(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    spare: &mut [MaybeUninit<u8>],
    dontwait: bool,
) -> io::Result<Received> {
    // Not zeroed (512 bytes on every receive): the kernel writes the control messages it
    // returns and sets `msg_controllen` to their length, and only those bytes are read below.
    let mut cmsg = MaybeUninit::<RecvCmsgBuf>::uninit();
    let mut iov = [
        libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        },
        libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: spare.len(),
        },
    ];
    // SAFETY: an all-zero msghdr is a valid "empty" value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // One buffer where one will do: the kernel imports a single one faster.
    let (first, count) = match (buf.is_empty(), spare.is_empty()) {
        (true, false) => (1, 1),
        (_, true) => (0, 1),
        (false, false) => (0, 2),
    };
    msg.msg_iov = iov[first..].as_mut_ptr();
    msg.msg_iovlen = count;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<RecvCmsgBuf>() as _;
    let mut flags = libc::MSG_CMSG_CLOEXEC;
    if dontwait {
        flags |= libc::MSG_DONTWAIT;
    }
    // SAFETY: msg describes live, writable buffers (buf, spare, cmsg) for the duration of the
    // call.
    let n = cvt_size(unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, flags) })?;
    let mut out = Received {
        n,
        fds: Default::default(),
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        record_cut: msg.msg_flags & libc::MSG_TRUNC != 0,
    };
    let mut slot = 0;
    // SAFETY: the kernel filled msg_control/msg_controllen; the CMSG_* macros walk exactly that
    // range (so only bytes the kernel wrote are read), and each SCM_RIGHTS or SCM_PIDFD payload holds (cmsg_len - CMSG_LEN(0)) /
    // sizeof(int) fds that the kernel just installed in this process and that nothing else owns
    // yet.
    unsafe {
        let mut hdr = libc::CMSG_FIRSTHDR(&msg);
        while !hdr.is_null() {
            let level = (*hdr).cmsg_level;
            let kind = (*hdr).cmsg_type;
            if level == libc::SOL_SOCKET && (kind == libc::SCM_RIGHTS || kind == SCM_PIDFD) {
                let data = libc::CMSG_DATA(hdr);
                let bytes = (*hdr).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / size_of::<RawFd>() {
                    let fd = ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    let owned = OwnedFd::from_raw_fd(fd);
                    if kind == SCM_PIDFD {
                        // Not asked for by the protocol (the socket's SO_PASSPIDFD, set by
                        // someone else): closed right here.
                        drop(owned);
                    } else if slot < MAX_FDS_PER_RECV {
                        out.fds[slot] = Some(owned);
                        slot += 1;
                    } else {
                        out.truncated = true; // dropped (closed) right here
                    }
                }
            }
            // SCM_CREDENTIALS and SCM_SECURITY carry no descriptor: nothing to close.
            hdr = libc::CMSG_NXTHDR(&msg, hdr);
        }
    }
    Ok(out)
}

/// Sets the socket's receive time-out (`SO_RCVTIMEO`; `None`: wait forever): a blocking
/// `recvmsg` that waits that long fails with `EAGAIN`.
pub(crate) fn set_recv_timeout(sock: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<()> {
    let t = timeout.unwrap_or_default();
    let mut tv = libc::timeval {
        tv_sec: t.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    if timeout.is_some_and(|t| !t.is_zero()) && tv.tv_sec == 0 && tv.tv_usec == 0 {
        tv.tv_usec = 1; // under a microsecond: not "forever"
    }
    // SAFETY: a valid timeval of the size given.
    cvt(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Whether `sock` is a `SOCK_SEQPACKET` socket (`false` if it cannot be told).
pub(crate) fn is_seqpacket(sock: BorrowedFd<'_>) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && v == libc::SOCK_SEQPACKET
}

/// Whether the peer of a connected socket has shut down its writing side or closed it (`poll`
/// reports `POLLRDHUP`), right now.
pub(crate) fn peer_done_writing(sock: BorrowedFd<'_>) -> bool {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let r = unsafe { libc::poll(&mut pfd, 1, 0) };
    r > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}

/// `shutdown(2)`: ends the connection in one or both directions for every descriptor of the
/// socket (unlike `close`, which ends it only when the last one goes). Errors (not connected
/// any more) are ignored.
pub(crate) fn shutdown(sock: BorrowedFd<'_>, how: libc::c_int) {
    // SAFETY: shutdown on a borrowed socket, integer arguments.
    unsafe { libc::shutdown(sock.as_raw_fd(), how) };
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
