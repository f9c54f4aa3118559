//! Descriptors and processes (issue 2, Acceptance): a fresh server holds only 0, 1, 2 and its
//! socket (plus what `Builder::keep_fd` keeps); the parent leaks no descriptor over 1,000
//! start/stop cycles; no zombie after `stop`, drop, a crash or a failed start; descriptors that
//! arrive where they do not belong are closed.
//!
//! Every test here counts this process's descriptors or children, so every test takes
//! `serial()` and nothing else in this binary runs concurrently.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use fdserver::{Builder, Channel, Error, ProtocolError, Server, ServerHandle, Shutdown, Signal};
use fdserver_tests::{
    child_pids, fd_open, is_unreaped_child, is_zombie, open_fds, pipe, pipe_inheritable, read_n,
    send_with_fds, serial, watchdog, Probe, ProbeState, SECS,
};

/// What a server's `fds` request reports: its socket and every descriptor open in it that is
/// not a tombstone (issue 10, item 9: inherited descriptors it was not asked to keep are
/// released, their numbers held by tombstones).
fn server_fds(s: &mut ServerHandle) -> (RawFd, Vec<RawFd>) {
    let reply = s.call(["fds"]).unwrap();
    let nums: Vec<RawFd> = reply.iter().map(|x| x.parse().unwrap()).collect();
    (nums[0], nums[1..].to_vec())
}

/// The numbers the server holds tombstones over.
fn server_tombstones(s: &mut ServerHandle) -> Vec<RawFd> {
    let reply = s.call(["tombstones"]).unwrap();
    reply.iter().map(|x| x.parse().unwrap()).collect()
}

fn std_fds_open_here() -> Vec<RawFd> {
    (0..3).filter(|&fd| fd_open(fd)).collect()
}

/// A descriptor that is *not* close-on-exec, as a careless program leaves them.
fn inheritable_dup(fd: RawFd, min: RawFd) -> OwnedFd {
    // SAFETY: F_DUPFD (without CLOEXEC) on an open descriptor returns a new one or -1.
    let n = unsafe { libc::fcntl(fd, libc::F_DUPFD, min) };
    assert!(n >= min, "F_DUPFD: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    unsafe { OwnedFd::from_raw_fd(n) }
}

fn assert_no_children() {
    // Dropped handles are stopped in the background (issue 13): wait for those first.
    assert!(fdserver::__private::wait_background_stops(SECS(30)));
    assert_eq!(
        child_pids(),
        Vec::<u32>::new(),
        "child processes left behind"
    );
}

#[test]
fn a_fresh_server_has_only_0_1_2_and_its_socket() {
    let _s = serial();
    let _wd = watchdog("fresh_server_fds", SECS(30));
    // Extra inheritable descriptors in the parent: a pipe, a file, and one far up the table.
    let (pr, pw) = pipe_inheritable();
    let path = std::ffi::CString::new("/proc/self/status").unwrap();
    // SAFETY: open(2) with a valid C string, without O_CLOEXEC on purpose.
    let file = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    assert!(file >= 0);
    // SAFETY: a fresh descriptor nobody else owns.
    let file = unsafe { OwnedFd::from_raw_fd(file) };
    let high = inheritable_dup(pr.as_raw_fd(), 900);
    let (sock_a, _sock_b) = UnixStream::pair().unwrap(); // close-on-exec, but fork keeps it

    let mut s = Probe::default().start().unwrap();
    let (sock, fds) = server_fds(&mut s);
    let mut expected = std_fds_open_here();
    expected.push(sock);
    expected.sort_unstable();
    assert_eq!(fds, expected, "descriptors open in a fresh server");
    for extra in [
        pr.as_raw_fd(),
        pw.as_raw_fd(),
        file.as_raw_fd(),
        high.as_raw_fd(),
    ] {
        assert!(!fds.contains(&extra), "{extra} leaked into the server");
    }
    assert!(!fds.contains(&sock_a.as_raw_fd()));
    // Their numbers are held by tombstones (issue 10, item 9), which hold none of the files.
    let tombs = server_tombstones(&mut s);
    for extra in [
        pr.as_raw_fd(),
        pw.as_raw_fd(),
        file.as_raw_fd(),
        high.as_raw_fd(),
        sock_a.as_raw_fd(),
    ] {
        assert!(tombs.contains(&extra), "{extra} not tombstoned: {tombs:?}");
    }
    assert_eq!(s.stop().unwrap().status.code(), Some(0));
}

#[test]
fn keep_fd_keeps_exactly_the_requested_descriptors() {
    let _s = serial();
    let _wd = watchdog("keep_fd", SECS(30));
    let (r, w) = pipe(); // close-on-exec does not matter to fork
    let (_other_r, other_w) = pipe_inheritable();
    let high = inheritable_dup(w.as_raw_fd(), 700);
    let mut s = Builder::new()
        .keep_fd(&w)
        .keep_fd(&high)
        .keep_fd(&w) // twice is fine
        .start_handle(&mut Probe::default())
        .unwrap();
    let (sock, fds) = server_fds(&mut s);
    let mut expected = std_fds_open_here();
    expected.extend([sock, w.as_raw_fd(), high.as_raw_fd()]);
    expected.sort_unstable();
    assert_eq!(fds, expected);
    assert!(!fds.contains(&other_w.as_raw_fd()));
    // Kept under the same number, and usable.
    s.call(["write_kept", &w.as_raw_fd().to_string(), "low"])
        .unwrap();
    s.call(["write_kept", &high.as_raw_fd().to_string(), "high"])
        .unwrap();
    assert_eq!(read_n(r.as_fd(), 7), b"lowhigh");
    s.stop().unwrap();
}

#[test]
fn no_descriptor_or_process_leaks_after_1000_start_stop_cycles() {
    let _s = serial();
    let _wd = watchdog("thousand_cycles", SECS(60));
    // Warm up whatever the runtime or std initialise lazily once (the reaper that stops dropped
    // handles keeps an eventfd).
    Probe::default().start().unwrap().stop().unwrap();
    drop(Probe::default().start().unwrap());
    assert!(fdserver::__private::wait_background_stops(SECS(30)));
    let before = open_fds();
    for i in 0..1000 {
        let mut s = Probe::default().start().unwrap();
        if i % 100 == 0 {
            assert_eq!(s.call(["echo", "x"]).unwrap(), ["x"]);
        }
        match i % 4 {
            0 | 1 => assert_eq!(s.stop().unwrap().how, Shutdown::Graceful),
            2 => drop(s),
            _ => {
                s.signal(Signal::SIGKILL).unwrap();
                assert!(s.call(["echo"]).is_err());
                assert_eq!(s.stop().unwrap().how, Shutdown::AlreadyExited);
            }
        }
    }
    assert!(fdserver::__private::wait_background_stops(SECS(30)));
    assert_eq!(open_fds(), before, "descriptors leaked in the parent");
    assert_no_children();
}

#[test]
fn no_zombie_after_stop_drop_crash_quit_or_failed_start() {
    let _s = serial();
    let _wd = watchdog("no_zombie", SECS(30));

    let s = Probe::default().start().unwrap();
    let pid = s.pid();
    assert!(
        !is_zombie(pid) && is_unreaped_child(pid),
        "running, our child"
    );
    s.stop().unwrap();
    assert!(!is_zombie(pid), "zombie after stop");
    assert!(!is_unreaped_child(pid));
    assert_no_children();

    let s = Probe::default().start().unwrap();
    let pid = s.pid();
    drop(s);
    assert!(fdserver::__private::wait_background_stops(SECS(30)));
    assert!(!is_zombie(pid), "zombie after drop");
    assert!(!is_unreaped_child(pid));
    assert_no_children();

    // Crashed, and the handle dropped without a call noticing.
    let s = Probe::default().start().unwrap();
    let pid = s.pid();
    s.signal(Signal::SIGKILL).unwrap();
    assert!(fdserver_tests::poll_readable(s.pidfd(), Some(SECS(10))));
    assert!(is_unreaped_child(pid), "exited, not yet reaped");
    drop(s);
    assert!(!is_unreaped_child(pid), "zombie after a crash and drop");
    assert_no_children();

    // Quit, then stop.
    let mut s = Probe::default().start().unwrap();
    let pid = s.pid();
    s.call(["quit"]).unwrap();
    s.stop().unwrap();
    assert!(!is_unreaped_child(pid));
    assert_no_children();

    // Killed by stop's escalation.
    let mut s = Builder::new()
        .stop_timeouts(
            std::time::Duration::from_millis(50),
            std::time::Duration::from_millis(50),
        )
        .start_handle(&mut Probe::default())
        .unwrap();
    s.call(["hang"]).unwrap();
    assert_eq!(s.stop().unwrap().how, Shutdown::Killed);
    assert_no_children();

    // initialize_server failed: start reaped the child before returning the error.
    let mut failing = Probe(ProbeState {
        fail_init: Some("nope"),
        ..Default::default()
    });
    let before = open_fds();
    assert!(failing.start().is_err());
    assert_no_children();
    assert_eq!(open_fds(), before, "a failed start leaked descriptors");
}

#[test]
fn failed_calls_leak_nothing() {
    let _s = serial();
    let _wd = watchdog("failed_calls_leak_nothing", SECS(30));
    let mut s = Probe::default().start().unwrap();
    let before = open_fds();
    for _ in 0..20 {
        assert!(s.call(["fail", "x"]).is_err());
        assert!(s.call(["panic"]).is_err());
        assert!(s.call(["nope"]).is_err());
        let fd = s
            .with_channel(|ch| {
                ch.write_array(["fd_back", "x"])?;
                let mut buf = fdserver::MessageBuf::new();
                ch.read_reply(&mut buf)?;
                ch.recv_fd()
            })
            .unwrap();
        drop(fd);
    }
    assert_eq!(open_fds(), before);
    s.stop().unwrap();
}

#[test]
fn unexpected_and_surplus_descriptors_are_closed() {
    let _s = serial();
    let _wd = watchdog("surplus_fds_closed", SECS(30));
    let (a, b) = UnixStream::pair().unwrap();
    let mut ch = Channel::from(a);
    let (_r, w) = pipe();
    let before = open_fds();
    for round in 0..10 {
        // A descriptor where a message is expected.
        send_with_fds(b.as_fd(), &[0], &[w.as_raw_fd()]);
        assert!(matches!(
            ch.read_array(),
            Err(Error::Protocol(ProtocolError::UnexpectedFd))
        ));
        // Two, and then twelve, in one sendmsg where one is expected.
        let many = vec![w.as_raw_fd(); 2 + round];
        send_with_fds(b.as_fd(), &[0], &many);
        assert!(matches!(
            ch.recv_fd(),
            Err(Error::Protocol(ProtocolError::TooManyFds))
        ));
        let many = vec![w.as_raw_fd(); 12];
        send_with_fds(b.as_fd(), &[0], &many);
        assert!(matches!(
            ch.recv_fd(),
            Err(Error::Protocol(ProtocolError::TooManyFds))
        ));
        assert_eq!(open_fds(), before, "round {round}");
    }
    // And the channel is still in sync.
    send_with_fds(b.as_fd(), &[0], &[w.as_raw_fd()]);
    let got = ch.recv_fd().unwrap().unwrap();
    assert_eq!(open_fds().len(), before.len() + 1);
    drop(got);
    assert_eq!(open_fds(), before);
}

#[test]
fn a_server_started_from_a_server_handler_inherits_nothing_of_its_parent() {
    let _s = serial();
    let _wd = watchdog("nested_server", SECS(30));
    // A server whose handler starts a nested server: the nested one must not hold the outer
    // server's socket (or the outer one would never see end of stream).
    struct Outer;
    impl Server for Outer {
        type Client = ServerHandle;
        fn handle(
            &mut self,
            ctx: &mut fdserver::Context<'_>,
            _msg: fdserver::Message<'_>,
        ) -> Result<(), fdserver::RemoteError> {
            let outer_sock = ctx.channel().as_raw_fd();
            let mut inner = Probe::default().start()?;
            let reply = inner.call(["fds"])?;
            inner.stop()?;
            let mut out = vec![outer_sock.to_string()];
            out.extend(reply);
            ctx.reply(&out)?;
            Ok(())
        }
    }
    let mut s = Outer.start().unwrap();
    let reply = s.call(["nested"]).unwrap();
    let outer_sock: RawFd = reply[0].parse().unwrap();
    let inner_sock: RawFd = reply[1].parse().unwrap();
    let inner_fds: Vec<RawFd> = reply[2..].iter().map(|x| x.parse().unwrap()).collect();
    let mut expected = std_fds_open_here();
    expected.push(inner_sock);
    expected.sort_unstable();
    assert_eq!(inner_fds, expected);
    assert!(outer_sock == inner_sock || !inner_fds.contains(&outer_sock));
    assert_eq!(s.stop().unwrap().how, Shutdown::Graceful);
    assert_no_children();
}

// ---------------------------------------------------------------------------------------------
// Issue 10, item 8: control messages other than SCM_RIGHTS
// ---------------------------------------------------------------------------------------------

/// `SO_PASSPIDFD` (Linux 6.5; the generic value, as on x86-64 and arm64).
const SO_PASSPIDFD: libc::c_int = 76;

/// Sets a boolean `SOL_SOCKET` option; `false` if the kernel does not know it.
fn enable(sock: RawFd, opt: libc::c_int) -> bool {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid pointer to an int of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock,
            libc::SOL_SOCKET,
            opt,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::ENOPROTOOPT),
            "setsockopt({opt}): {e}"
        );
    }
    r == 0
}

/// (device, inode) of a descriptor, to tell which file a received descriptor is.
fn identity(fd: RawFd) -> (u64, u64) {
    // SAFETY: an all-zero stat is a valid out-value; fstat only writes it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an open descriptor with a valid out-pointer.
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    (st.st_dev, st.st_ino)
}

/// With `SO_PASSCRED` and/or `SO_PASSPIDFD` set on the receiving socket (by whoever holds it),
/// every read also brings credentials and/or a pidfd. Descriptor passing still works, the pidfds
/// are closed (none is left over after 50 rounds), and more descriptors than fit are still an
/// error with everything closed. Before the fix the 32-byte control buffer had room for
/// `SCM_RIGHTS` only: with `SO_PASSCRED` every received descriptor was truncated away
/// (`TooManyFds`), and with `SO_PASSPIDFD` one pidfd leaked per read.
#[test]
fn credentials_and_pidfds_attached_by_socket_options_break_nothing_and_leak_nothing() {
    let _s = serial();
    let _wd = watchdog("control_messages", SECS(60));
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    let want = identity(file.as_raw_fd());
    for opts in [
        &[libc::SO_PASSCRED][..],
        &[SO_PASSPIDFD],
        &[libc::SO_PASSCRED, SO_PASSPIDFD],
    ] {
        let (mut a, mut b) = Channel::pair().unwrap();
        if !opts.iter().all(|&o| enable(b.as_raw_fd(), o)) {
            eprintln!("skipping {opts:?}: not supported by this kernel");
            continue;
        }
        let before = open_fds();
        for i in 0..50 {
            let n = i.to_string();
            a.write_array(["round", n.as_str()]).unwrap();
            assert_eq!(b.read_strings().unwrap().unwrap(), ["round", n.as_str()]);
            a.write_scalar(n.as_bytes()).unwrap();
            assert_eq!(b.read_scalar().unwrap().unwrap(), n.as_bytes());
            a.send_fd(&file).unwrap();
            let got = b.recv_fd().unwrap().expect("a descriptor");
            assert_eq!(identity(got.as_raw_fd()), want, "{opts:?}");
            drop(got);
            a.write_ok_with_fd(["with", "fd"], &file).unwrap();
            let mut buf = fdserver::MessageBuf::new();
            let (reply, got) = b.read_reply_with_fd(&mut buf).unwrap();
            assert_eq!(reply.to_strings().unwrap(), ["ok", "with", "fd"]);
            assert_eq!(identity(got.as_raw_fd()), want, "{opts:?}");
        }
        assert_eq!(open_fds(), before, "descriptors leaked with {opts:?}");
        // Five descriptors on one byte: more than a read accepts; all closed, an error.
        let five = [file.as_raw_fd(); 5];
        send_with_fds(a.as_fd(), &[0], &five);
        assert!(
            matches!(b.recv_fd(), Err(Error::Protocol(ProtocolError::TooManyFds))),
            "{opts:?}"
        );
        assert_eq!(open_fds(), before, "descriptors leaked with {opts:?}");
    }
}

/// The same options on a client's end of a forked server: calls and replies carrying
/// descriptors work and leak nothing.
#[test]
fn a_client_socket_with_passcred_and_passpidfd_still_talks_to_its_server() {
    let _s = serial();
    let _wd = watchdog("control_messages_server", SECS(60));
    let mut s = Builder::new().start_handle(&mut Probe::default()).unwrap();
    let sock = s.channel().as_raw_fd();
    let pidfd = enable(sock, SO_PASSPIDFD);
    assert!(enable(sock, libc::SO_PASSCRED));
    let before = open_fds();
    for i in 0..20 {
        let text = format!("round {i}");
        assert_eq!(s.call(["echo", text.as_str()]).unwrap(), [text.as_str()]);
        let got = s
            .with_channel(|ch| {
                ch.write_array(["fd_back", text.as_str()])?;
                let mut buf = fdserver::MessageBuf::new();
                ch.read_reply(&mut buf)?;
                Ok(ch.recv_fd()?.expect("a descriptor"))
            })
            .unwrap();
        assert_eq!(read_n(got.as_fd(), text.len()), text.as_bytes());
    }
    assert_eq!(
        open_fds(),
        before,
        "descriptors leaked (SO_PASSPIDFD: {pidfd})"
    );
    assert!(s.stop().unwrap().status.success());
}

// ---------------------------------------------------------------------------------------------
// Issue 10, item 9: descriptors owned by the server value
// ---------------------------------------------------------------------------------------------

/// A server value that owns a file opened before `start`. `open_then_write` opens new files in
/// the server (kept open) until one gets a number above the owned file's, then writes through
/// the owned `File`; it answers whether any new file got the owned file's number, what the
/// write did, and what `metadata()` says through it.
struct OwnsAFile {
    log: std::fs::File,
    dir: std::path::PathBuf,
    opened: Vec<std::fs::File>,
}

impl Server for OwnsAFile {
    type Client = ServerHandle;

    fn handle(
        &mut self,
        ctx: &mut fdserver::Context<'_>,
        _msg: fdserver::Message<'_>,
    ) -> Result<(), fdserver::RemoteError> {
        use std::io::Write;
        let mine = self.log.as_raw_fd();
        let mut aliased = false;
        for i in 0..256 {
            let f = std::fs::File::create(self.dir.join(format!("other-{i}")))?;
            let n = f.as_raw_fd();
            aliased |= n == mine;
            self.opened.push(f);
            if n > mine {
                break;
            }
        }
        let wrote = match self.log.write_all(b"through the server value") {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
        };
        // What `fstat` tells through the tombstone (documented): `/dev/null`'s metadata.
        let meta = match self.log.metadata() {
            Ok(m) => {
                use std::os::unix::fs::FileTypeExt;
                format!(
                    "char device {}, {} bytes",
                    m.file_type().is_char_device(),
                    m.len()
                )
            }
            Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
        };
        ctx.reply([aliased.to_string(), wrote, meta])?;
        Ok(())
    }
}

/// The server value's `File` (opened before `start`, not kept) must not alias a file the server
/// opens later: its number stays taken, and writing through it fails with `EBADF`. Before the
/// fix the descriptor was closed in the child, the next `open` reused the number, and the write
/// "succeeded" into the other file.
#[test]
fn a_file_the_server_value_owns_fails_instead_of_aliasing_a_later_file() {
    let _s = serial();
    let _wd = watchdog("server_value_file", SECS(30));
    let dir = std::path::PathBuf::from(format!("/tmp/fdserver-owned-fd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let mut server = OwnsAFile {
        log: std::fs::File::create(dir.join("log")).unwrap(),
        dir: dir.clone(),
        opened: Vec::new(),
    };
    let mut s = server.start().unwrap();
    let reply = s.call(["open_then_write"]).unwrap();
    s.stop().unwrap();
    let written: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::read(p).is_ok_and(|b| !b.is_empty()))
        .map(|p| p.display().to_string())
        .collect();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        reply[0], "false",
        "a file opened in the server got the owned file's number"
    );
    assert_eq!(reply[1], format!("errno {}", libc::EBADF));
    assert!(written.is_empty(), "the write landed in {written:?}");
    // `metadata()` (fstat) works on an `O_PATH` descriptor: it describes `/dev/null`, not the
    // file the value owned (as the crate docs say).
    assert_eq!(reply[2], "char device true, 0 bytes");
}

/// Releasing still works through a tombstone: the server's inherited copy of a socket end no
/// longer keeps the peer from seeing end of stream once our own copy is closed.
#[test]
fn a_socket_end_a_server_inherited_does_not_keep_its_peer_from_end_of_stream() {
    let _s = serial();
    let _wd = watchdog("tombstoned_socket_eof", SECS(30));
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let mut s = Probe::default().start().unwrap();
    assert!(server_tombstones(&mut s).contains(&theirs.as_raw_fd()));
    drop(theirs);
    let mut buf = [0u8; 1];
    use std::io::Read;
    assert_eq!(ours.read(&mut buf).unwrap(), 0, "end of stream");
    assert_eq!(s.stop().unwrap().how, Shutdown::Graceful);
}
