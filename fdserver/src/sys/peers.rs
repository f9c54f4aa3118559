//! In-process channels: the socket pairs and pipes whose both ends this process holds (an event
//! loop's wake-up channel, such as tokio's signal self-pipe), found among inherited descriptors
//! so that a forked server gets private ones at the same numbers.
//!
//! A pipe's two ends share one inode (`fstat`). A socket's peer is found with the kernel's
//! `sock_diag` netlink interface (`UNIX_DIAG_PEER`, Linux 3.3, `CONFIG_UNIX_DIAG`): one request
//! per socket, all sent in one message, answered in one or a few reads. Where it is missing
//! (the module not built, a seccomp profile that refuses netlink), no socket pair is found.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

/// What `fstat` and `fcntl` say of one descriptor, as far as pairing goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FdKind {
    pub(crate) fd: RawFd,
    /// `S_IFSOCK` or `S_IFIFO` (anything else is not looked at).
    pub(crate) mode: libc::mode_t,
    pub(crate) dev: u64,
    pub(crate) ino: u64,
    /// `fcntl(F_GETFL)`.
    pub(crate) status_flags: libc::c_int,
    /// `fcntl(F_GETFD) & FD_CLOEXEC != 0`.
    pub(crate) cloexec: bool,
}

/// A channel whose both ends are inherited, each under one or more numbers (an event loop
/// duplicates its end of a wake-up channel): recreated in the child at the same numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InProcess {
    /// A pipe (`ends[0]` the read end), or a UNIX socket pair of this type.
    pub(crate) kind: ChannelKind,
    /// The numbers of each end, with their close-on-exec flag.
    pub(crate) ends: [Vec<(RawFd, bool)>; 2],
}

/// What an [`InProcess`] channel is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelKind {
    Pipe,
    /// `SOCK_STREAM`, `SOCK_SEQPACKET` or `SOCK_DGRAM`.
    Sockets(libc::c_int),
}

impl InProcess {
    /// Every descriptor number of the channel.
    pub(crate) fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.ends.iter().flatten().map(|&(fd, _)| fd)
    }

    /// In a forked child: a fresh, private channel of the same kind at the same numbers,
    /// non-blocking (only non-blocking ones are recreated) and close-on-exec as they were.
    /// Async-signal-safe (`pipe2` or `socketpair`, `dup3`, `fcntl`, `close`). Fails, leaving
    /// the numbers as they were, if the new channel cannot be created.
    pub(crate) fn recreate(&self) -> io::Result<()> {
        let mut new = [-1 as RawFd; 2];
        match self.kind {
            ChannelKind::Pipe => {
                // SAFETY: `new` is a writable array of two ints.
                cvt(unsafe { libc::pipe2(new.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
            }
            ChannelKind::Sockets(ty) => {
                // SAFETY: as above.
                cvt(unsafe {
                    libc::socketpair(
                        libc::AF_UNIX,
                        ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        0,
                        new.as_mut_ptr(),
                    )
                })?;
            }
        }
        for (end, &fresh) in self.ends.iter().zip(&new) {
            for &(target, cloexec) in end {
                if fresh == target {
                    // The number was free (closed by another thread after the listing): the
                    // new end is already there; only its flag may differ.
                    if !cloexec {
                        // SAFETY: fcntl on our own new descriptor.
                        unsafe { libc::fcntl(fresh, libc::F_SETFD, 0) };
                    }
                    continue;
                }
                let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
                // SAFETY: dup3 over a number this child owns (an inherited descriptor no code
                // of the child uses as what it was: it is being replaced by its private copy).
                unsafe { libc::dup3(fresh, target, flags) };
            }
        }
        for fresh in new {
            if !self.fds().any(|fd| fd == fresh) {
                // SAFETY: our own temporary descriptor.
                unsafe { libc::close(fresh) };
            }
        }
        Ok(())
    }
}

/// `fstat` and `fcntl` of `fd`, if it is a socket or a FIFO.
pub(crate) fn fd_kind(fd: RawFd) -> Option<FdKind> {
    // SAFETY: an all-zero stat is a valid out-value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st`.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    let mode = st.st_mode & libc::S_IFMT;
    if mode != libc::S_IFSOCK && mode != libc::S_IFIFO {
        return None;
    }
    // SAFETY: fcntl with integer arguments.
    let status_flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    let fd_flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if status_flags < 0 || fd_flags < 0 {
        return None;
    }
    Some(FdKind {
        fd,
        mode,
        dev: st.st_dev,
        ino: st.st_ino,
        status_flags,
        cloexec: fd_flags & libc::FD_CLOEXEC != 0,
    })
}

/// The non-blocking in-process channels among `kinds`: anonymous pipes whose read end and
/// write end are both there, and UNIX socket pairs whose two ends are both there, each end
/// under any number of descriptors. Blocking ones are left alone (a program's own socket pair
/// between two threads is blocking unless it runs an event loop; a forked server finds a
/// tombstone there, as for any other inherited descriptor).
pub(crate) fn in_process_channels(kinds: &[FdKind], out: &mut Vec<InProcess>) {
    let nonblocking: Vec<&FdKind> = kinds
        .iter()
        .filter(|k| k.status_flags & libc::O_NONBLOCK != 0)
        .collect();
    // Pipes: the descriptors of one anonymous pipe inode, by access mode.
    let pipe_dev = pipefs_dev();
    let mut inodes: Vec<u64> = nonblocking
        .iter()
        .filter(|k| k.mode == libc::S_IFIFO && Some(k.dev) == pipe_dev)
        .map(|k| k.ino)
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    for ino in inodes {
        let end = |mode: libc::c_int| -> Vec<(RawFd, bool)> {
            nonblocking
                .iter()
                .filter(|k| k.mode == libc::S_IFIFO && Some(k.dev) == pipe_dev && k.ino == ino)
                .filter(|k| k.status_flags & libc::O_ACCMODE == mode)
                .map(|k| (k.fd, k.cloexec))
                .collect()
        };
        let (read, write) = (end(libc::O_RDONLY), end(libc::O_WRONLY));
        if !read.is_empty() && !write.is_empty() {
            out.push(InProcess {
                kind: ChannelKind::Pipe,
                ends: [read, write],
            });
        }
    }
    // Sockets: only UNIX ones, then their peers from the kernel, one question per socket.
    let unix: Vec<(&FdKind, libc::c_int)> = nonblocking
        .iter()
        .filter(|k| k.mode == libc::S_IFSOCK)
        .filter(|k| sockopt(k.fd, libc::SO_DOMAIN) == Some(libc::AF_UNIX))
        .filter_map(|k| sockopt(k.fd, libc::SO_TYPE).map(|ty| (*k, ty)))
        .collect();
    let mut inodes: Vec<u32> = unix.iter().map(|(k, _)| k.ino as u32).collect();
    inodes.sort_unstable();
    inodes.dedup();
    if inodes.len() < 2 {
        return;
    }
    let Ok(peers) = unix_peers(&inodes) else {
        return;
    };
    let peer_of = |ino: u32| peers[inodes.binary_search(&ino).ok()?];
    for (i, &a) in inodes.iter().enumerate() {
        let Some(b) = peers[i] else { continue };
        // Each pair once (from its smaller inode), and only when both ends name each other
        // and are both here.
        if b <= a || peer_of(b) != Some(a) {
            continue;
        }
        let end = |ino: u32| -> (Vec<(RawFd, bool)>, Option<libc::c_int>) {
            let fds: Vec<(&FdKind, libc::c_int)> = unix
                .iter()
                .filter(|(k, _)| k.ino as u32 == ino)
                .copied()
                .collect();
            let ty = fds.first().map(|&(_, ty)| ty);
            (fds.iter().map(|(k, _)| (k.fd, k.cloexec)).collect(), ty)
        };
        let ((ends_a, ty_a), (ends_b, ty_b)) = (end(a), end(b));
        match (ty_a, ty_b) {
            (Some(ty), Some(ty_b)) if ty == ty_b => out.push(InProcess {
                kind: ChannelKind::Sockets(ty),
                ends: [ends_a, ends_b],
            }),
            _ => {}
        }
    }
}

/// The device of anonymous pipes (pipefs), learnt once from a pipe of our own: a FIFO on any
/// other device is a named one that other processes may open.
fn pipefs_dev() -> Option<u64> {
    static DEV: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *DEV.get_or_init(|| {
        let (r, _w) = super::pipe().ok()?;
        fd_kind(r.as_raw_fd()).map(|k| k.dev)
    })
}

fn sockopt(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(v)
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_PEER: u32 = 0x4;
const UNIX_DIAG_PEER: u16 = 2;

#[repr(C)]
#[derive(Clone, Copy)]
struct NlMsgHdr {
    len: u32,
    ty: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UnixDiagReq {
    family: u8,
    protocol: u8,
    pad: u16,
    states: u32,
    ino: u32,
    show: u32,
    cookie: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    hdr: NlMsgHdr,
    req: UnixDiagReq,
}

/// The peer inode of each UNIX socket inode in `inodes` (`None`: unconnected, or not found),
/// from `sock_diag`.
fn unix_peers(inodes: &[u32]) -> io::Result<Vec<Option<u32>>> {
    // SAFETY: socket() with constant arguments.
    let sock = cvt(unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    })?;
    // SAFETY: a fresh descriptor owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    let requests: Vec<Request> = inodes
        .iter()
        .enumerate()
        .map(|(i, &ino)| Request {
            hdr: NlMsgHdr {
                len: size_of::<Request>() as u32,
                ty: SOCK_DIAG_BY_FAMILY,
                flags: libc::NLM_F_REQUEST as u16,
                seq: i as u32,
                pid: 0,
            },
            req: UnixDiagReq {
                family: libc::AF_UNIX as u8,
                protocol: 0,
                pad: 0,
                states: u32::MAX,
                ino,
                show: UDIAG_SHOW_PEER,
                // INET_DIAG_NOCOOKIE: look the socket up by inode alone.
                cookie: [u32::MAX, u32::MAX],
            },
        })
        .collect();
    let bytes = requests.len() * size_of::<Request>();
    // SAFETY: `requests` is a contiguous array of plain-data structs of `bytes` bytes.
    let sent = unsafe {
        libc::send(
            sock.as_raw_fd(),
            requests.as_ptr().cast(),
            bytes,
            libc::MSG_NOSIGNAL,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut peers = vec![None; inodes.len()];
    let mut answered = 0;
    #[repr(C, align(8))]
    struct Buf([u8; 16384]);
    let mut buf = Buf([0; 16384]);
    while answered < inodes.len() {
        // SAFETY: recv writes at most `buf.0.len()` bytes into `buf`.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.0.as_mut_ptr().cast(), buf.0.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let data = &buf.0[..n as usize];
        let mut off = 0;
        while off + size_of::<NlMsgHdr>() <= data.len() {
            let len = u32::from_ne_bytes(data[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(data[off + 4..off + 6].try_into().unwrap());
            let seq = u32::from_ne_bytes(data[off + 8..off + 12].try_into().unwrap()) as usize;
            if len < size_of::<NlMsgHdr>() || off + len > data.len() {
                break;
            }
            let body = &data[off + size_of::<NlMsgHdr>()..off + len];
            if seq < peers.len() {
                answered += 1;
                if ty == SOCK_DIAG_BY_FAMILY {
                    peers[seq] = peer_attribute(body);
                }
                // NLMSG_ERROR (ENOENT: not a UNIX socket, or gone): no peer.
            }
            off += len.next_multiple_of(4);
        }
        if n == 0 {
            break;
        }
    }
    Ok(peers)
}

/// The `UNIX_DIAG_PEER` attribute of a `unix_diag_msg` body.
fn peer_attribute(body: &[u8]) -> Option<u32> {
    // struct unix_diag_msg: family, type, state, pad (u8 each), ino u32, cookie [u32; 2].
    let mut off = 16;
    while off + 4 <= body.len() {
        let len = u16::from_ne_bytes([body[off], body[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([body[off + 2], body[off + 3]]);
        if len < 4 || off + len > body.len() {
            return None;
        }
        if ty == UNIX_DIAG_PEER && len >= 8 {
            return Some(u32::from_ne_bytes(
                body[off + 4..off + 8].try_into().unwrap(),
            ));
        }
        off += len.next_multiple_of(4);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    fn nonblocking_pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [-1; 2];
        // SAFETY: a writable array of two ints.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: fresh descriptors.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn finds_a_nonblocking_socket_pair_and_pipe_but_not_blocking_or_lone_ends() {
        let (a, b) = nonblocking_pair();
        let a2 = a.try_clone().unwrap(); // one end under two numbers
        let (c, _far) = nonblocking_pair(); // its peer is not in the list
        let (d, e) = crate::sys::socketpair().unwrap(); // blocking
        let mut p = [-1; 2];
        // SAFETY: a writable array of two ints.
        assert_eq!(
            unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) },
            0
        );
        // SAFETY: fresh descriptors.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
        let kinds: Vec<FdKind> = [&a, &b, &a2, &c, &d, &e, &r, &w]
            .iter()
            .filter_map(|fd| fd_kind(fd.as_raw_fd()))
            .collect();
        assert_eq!(kinds.len(), 8);
        let mut found = Vec::new();
        in_process_channels(&kinds, &mut found);
        let mut sets: Vec<Vec<RawFd>> = found
            .iter()
            .map(|c| {
                let mut v: Vec<RawFd> = c.fds().collect();
                v.sort_unstable();
                v
            })
            .collect();
        sets.sort();
        let mut want = vec![
            vec![r.as_raw_fd(), w.as_raw_fd()],
            vec![a.as_raw_fd(), b.as_raw_fd(), a2.as_raw_fd()],
        ];
        for v in &mut want {
            v.sort_unstable();
        }
        want.sort();
        assert_eq!(sets, want, "{found:?}");
    }
}
