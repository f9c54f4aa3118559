//! The raw floor, written directly on libc (the same code as the workspace's `compare` bench,
//! `fdserver-tests/benches/compare/raw.rs`): a forked child on a `socketpair`, blocking
//! `read`/`write`, `sendmsg`/`recvmsg` with `SCM_RIGHTS`, and the start protocol done by hand.
//!
//! Children never panic and never allocate after the fork (their buffers are allocated before
//! it); they exit when the parent closes its end. The bench's watchdog (`os::watchdog`) ends
//! everything if a child gets stuck.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::ptr;

use crate::lanes::{Helper, StartOp, Stopwatch, BULK_CHUNKS, BULK_WARMUP_CHUNKS, CHUNK};
use crate::os::{self, must_read, must_write, read_full, write_full};

/// A forked raw peer and the parent's end of its socket.
pub struct RawChild {
    pid: libc::pid_t,
    sock: Option<OwnedFd>,
}

impl RawChild {
    /// Forks a child that runs `body` on its end of a fresh socket pair and `_exit`s with what
    /// it returns.
    pub fn spawn(body: impl FnOnce(RawFd) -> i32) -> RawChild {
        let (mine, theirs) = UnixStream::pair().expect("socketpair");
        // SAFETY: the child only makes raw syscalls (no locks, no allocation) and ends in _exit.
        let pid = os::check(unsafe { libc::fork() }, "fork");
        if pid == 0 {
            drop(mine);
            os::die_with_parent();
            let code = body(theirs.as_raw_fd());
            // SAFETY: _exit is always allowed; nothing of the parent's state is unwound.
            unsafe { libc::_exit(code) };
        }
        drop(theirs);
        RawChild {
            pid,
            sock: Some(mine.into()),
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The parent's end of the socket.
    pub fn fd(&self) -> RawFd {
        self.sock.as_ref().expect("open until finish").as_raw_fd()
    }

    /// Closes the socket (the child sees end of stream and exits) and reaps the child (waiting
    /// on a pidfd; if it has not exited within 10 s it is killed). Returns its raw wait status.
    pub fn finish(mut self) -> i32 {
        self.reap()
    }

    fn reap(&mut self) -> i32 {
        self.sock = None;
        if self.pid == 0 {
            return 0;
        }
        let pid = std::mem::replace(&mut self.pid, 0);
        // SAFETY: pidfd_open(pid, 0) on our own unreaped child.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
        if pidfd >= 0 {
            let mut pfd = libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, 10_000) };
            if ready == 0 {
                eprintln!("raw child {pid} did not exit within 10 s: killing it");
                // SAFETY: `pid` is our unreaped child, so its number cannot have been reused.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            // SAFETY: closing the pidfd we opened.
            unsafe { libc::close(pidfd) };
        }
        os::wait(pid)
    }
}

impl Drop for RawChild {
    fn drop(&mut self) {
        self.reap();
    }
}

// ---------------------------------------------------------------------------------------------
// Row 1: 16-byte ping-pong
// ---------------------------------------------------------------------------------------------

/// Child: echo 16-byte messages until end of stream.
pub fn pingpong_child() -> RawChild {
    RawChild::spawn(|fd| {
        let mut b = [0u8; 16];
        loop {
            match read_full(fd, &mut b) {
                Ok(true) => {}
                Ok(false) => return 0,
                Err(_) => return 1,
            }
            if write_full(fd, &b).is_err() {
                return 1;
            }
        }
    })
}

/// Parent: one 16-byte round trip.
#[inline(never)]
pub fn pingpong(fd: RawFd) {
    let mut b = *b"ping-0123456789!";
    must_write(fd, &b);
    must_read(fd, &mut b);
}

// ---------------------------------------------------------------------------------------------
// Row 2: SCM_RIGHTS round trip
// ---------------------------------------------------------------------------------------------

#[repr(C, align(8))]
struct Cmsg([u8; 32]);

/// `sendmsg` of one data byte `00` carrying `fd` (the MessageChannel fd format).
fn send_fd(sock: RawFd, fd: RawFd) -> Result<(), i32> {
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cmsg = Cmsg([0; 32]);
    // SAFETY: an all-zero msghdr is empty; every pointer below refers to live locals.
    unsafe {
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as _;
        let hdr = libc::CMSG_FIRSTHDR(&msg);
        (*hdr).cmsg_level = libc::SOL_SOCKET;
        (*hdr).cmsg_type = libc::SCM_RIGHTS;
        (*hdr).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        ptr::write_unaligned(libc::CMSG_DATA(hdr).cast::<RawFd>(), fd);
        loop {
            if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) == 1 {
                return Ok(());
            }
            let e = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if e != libc::EINTR {
                return Err(e);
            }
        }
    }
}

/// `recvmsg` of one byte with room for one descriptor (`MSG_CMSG_CLOEXEC`).
fn recv_fd(sock: RawFd) -> OwnedFd {
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut cmsg = Cmsg([0; 32]);
    // SAFETY: as in `send_fd`; the kernel fills `cmsg`, and the descriptor it installed is
    // owned by nobody else until wrapped.
    unsafe {
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.0.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as _;
        let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n != 1 {
            panic!("raw recvmsg: {n} ({})", io::Error::last_os_error());
        }
        let hdr = libc::CMSG_FIRSTHDR(&msg);
        assert!(
            !hdr.is_null() && (*hdr).cmsg_type == libc::SCM_RIGHTS,
            "raw recvmsg: no descriptor"
        );
        OwnedFd::from_raw_fd(ptr::read_unaligned(libc::CMSG_DATA(hdr).cast::<RawFd>()))
    }
}

/// Child: for every 16-byte request, send back one descriptor (its /dev/null).
pub fn fdpass_child() -> RawChild {
    RawChild::spawn(|fd| {
        // SAFETY: open(2) with a NUL-terminated path.
        let devnull = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if devnull < 0 {
            return 2;
        }
        let mut b = [0u8; 16];
        loop {
            match read_full(fd, &mut b) {
                Ok(true) => {}
                Ok(false) => return 0,
                Err(_) => return 1,
            }
            if send_fd(fd, devnull).is_err() {
                return 1;
            }
        }
    })
}

/// Parent: a 16-byte request, a descriptor back, closed on drop.
#[inline(never)]
pub fn fd_roundtrip(sock: RawFd) -> OwnedFd {
    must_write(sock, b"give me a fd 123");
    recv_fd(sock)
}

// ---------------------------------------------------------------------------------------------
// Row 4: bulk
// ---------------------------------------------------------------------------------------------

/// Child: read an 8-byte count `n`, then `n` chunks of `chunk` bytes, then answer one byte.
pub fn sink_child(chunk: usize) -> RawChild {
    let mut buf = vec![0u8; chunk]; // allocated before the fork
    RawChild::spawn(move |fd| {
        let mut n = [0u8; 8];
        loop {
            match read_full(fd, &mut n) {
                Ok(true) => {}
                Ok(false) => return 0,
                Err(_) => return 1,
            }
            for _ in 0..u64::from_be_bytes(n) {
                if !matches!(read_full(fd, &mut buf), Ok(true)) {
                    return 1;
                }
            }
            if write_full(fd, b"k").is_err() {
                return 1;
            }
        }
    })
}

/// Parent: send `n` chunks and wait for the acknowledgement.
#[inline(never)]
pub fn bulk(sock: RawFd, chunk: &[u8], n: u64) {
    must_write(sock, &n.to_be_bytes());
    for _ in 0..n {
        must_write(sock, chunk);
    }
    let mut ack = [0u8; 1];
    must_read(sock, &mut ack);
}

// ---------------------------------------------------------------------------------------------
// Row 3 and the heap chart: start a helper, one call, stop
// ---------------------------------------------------------------------------------------------

/// fdserver's start protocol done raw: `socketpair`, `fork`; the child sends a 16-byte
/// "ready", answers 16-byte pings until end of stream and `_exit`s; the parent reads "ready",
/// makes one round trip, closes its end and waits for the child (on a pidfd, then `waitpid`, as
/// fdserver does).
#[inline(never)]
pub fn fork_protocol(watch: Option<&mut Stopwatch>) {
    let child = RawChild::spawn(|fd| {
        if write_full(fd, b"ready-0123456789").is_err() {
            return 1;
        }
        let mut b = [0u8; 16];
        loop {
            match read_full(fd, &mut b) {
                Ok(true) => {}
                Ok(false) => return 0,
                Err(_) => return 1,
            }
            if write_full(fd, &b).is_err() {
                return 1;
            }
        }
    });
    let mut ready = [0u8; 16];
    must_read(child.fd(), &mut ready);
    pingpong(child.fd());
    if let Some(w) = watch {
        w.probe(child.pid());
    }
    assert_eq!(child.finish(), 0, "raw child exit status");
}

/// Row 3.
pub fn start_call_stop() -> StartOp {
    let mut w = Stopwatch::start();
    fork_protocol(Some(&mut w));
    w.finish()
}

// ---------------------------------------------------------------------------------------------
// The helpers of rows 1, 2 and 4
// ---------------------------------------------------------------------------------------------

/// Row 1: a 16-byte ping-pong.
pub struct PingPong(RawChild);

impl PingPong {
    pub fn start() -> PingPong {
        PingPong(pingpong_child())
    }
}

impl Helper for PingPong {
    fn pid(&self) -> i32 {
        self.0.pid()
    }

    fn op(&mut self, _warmup: bool) {
        pingpong(self.0.fd());
    }

    fn stop(self: Box<Self>) {
        assert_eq!(self.0.finish(), 0, "raw child exit status");
    }
}

/// Row 2: a 16-byte request answered by one descriptor.
pub struct FdPass(RawChild);

impl FdPass {
    pub fn start() -> FdPass {
        FdPass(fdpass_child())
    }
}

impl Helper for FdPass {
    fn pid(&self) -> i32 {
        self.0.pid()
    }

    fn op(&mut self, _warmup: bool) {
        drop(std::hint::black_box(fd_roundtrip(self.0.fd())));
    }

    fn stop(self: Box<Self>) {
        assert_eq!(self.0.finish(), 0, "raw child exit status");
    }
}

/// Row 4: a count, the chunks, one acknowledgement byte.
pub struct Bulk {
    child: RawChild,
    chunk: Vec<u8>,
}

impl Bulk {
    pub fn start() -> Bulk {
        Bulk {
            child: sink_child(CHUNK),
            chunk: vec![0x5a; CHUNK],
        }
    }
}

impl Helper for Bulk {
    fn pid(&self) -> i32 {
        self.child.pid()
    }

    fn op(&mut self, warmup: bool) {
        let n = if warmup {
            BULK_WARMUP_CHUNKS
        } else {
            BULK_CHUNKS
        };
        bulk(self.child.fd(), &self.chunk, n);
    }

    fn stop(self: Box<Self>) {
        assert_eq!(self.child.finish(), 0, "raw child exit status");
    }
}
