//! Who may talk to the server: another uid is refused (SO_PEERCRED), and the private directory
//! must be private.

mod preload_common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;

use fdserver_tests::{fork_child, pipe, wait_child};
use preload_common::*;

const NOBODY: libc::uid_t = 65534;

/// A process of another uid that reaches the socket is refused with an error of kind
/// `permission` and the connection is closed; the server keeps serving its owner.
///
/// The socket is `0600` in a `0700` directory, so another uid cannot even reach it. To get past
/// the file permissions and reach the server's own check, the test (root) makes the socket
/// `0666`, opens it `O_PATH`, and a forked child becomes uid 65534 (dumpable again, so that it
/// may use `/proc/self/fd`) and connects through `/proc/self/fd/N`, which skips the directory.
#[test]
fn other_uid_is_refused() {
    let _wd = wd("other_uid_is_refused");
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to act as another uid");
        return;
    }
    let pl = Pl::new("uid");
    pl.ok(&["echo", "start"]);
    let server = pl.server().server;
    let sock = pl.files().sock;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600,
        "the socket is private"
    );
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let path = std::ffi::CString::new(sock.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: open(2) with a valid path; the result is checked and owned below.
    let opath = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    assert!(
        opath >= 0,
        "O_PATH open: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor owned by nobody else.
    let opath = unsafe { OwnedFd::from_raw_fd(opath) };

    // Everything the child needs is prepared before the fork.
    let proc_path = format!("/proc/self/fd/{}", opath.as_raw_fd());
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(proc_path.bytes()) {
        *d = s as libc::c_char;
    }
    let (r, w) = pipe();
    let (opath_raw, w_raw) = (opath.as_raw_fd(), w.as_raw_fd());
    let child = fork_child(&[opath_raw, w_raw], move || {
        let report = |data: &[u8]| {
            // SAFETY: write(2) of a valid buffer to our report pipe.
            unsafe { libc::write(w_raw, data.as_ptr().cast(), data.len()) };
        };
        // SAFETY: credential and socket calls in a single-threaded child; buffers are local.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(NOBODY) != 0
                || libc::setuid(NOBODY) != 0
                || libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) != 0
            {
                report(b"E:setuid");
                return 2;
            }
            let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            let tv = libc::timeval {
                tv_sec: 10,
                tv_usec: 0,
            };
            libc::setsockopt(
                s,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            if libc::connect(
                s,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            ) != 0
            {
                let e = *libc::__errno_location();
                report(format!("E:connect errno {e}").as_bytes());
                return 3;
            }
            report(b"C:");
            // Everything the server sends until it closes.
            let mut buf = [0u8; 4096];
            loop {
                let n = libc::read(s, buf.as_mut_ptr().cast(), buf.len());
                if n <= 0 {
                    if n < 0 {
                        report(b"\nE:read failed (no close from the server)");
                        return 4;
                    }
                    return 0;
                }
                report(&buf[..n as usize]);
            }
        }
    });
    drop(w);
    drop(opath);
    let got = read_to_eof(r, RUN_LIMIT).expect("the child's report");
    let status = wait_child(child);
    assert!(
        got.starts_with(b"C:"),
        "the other uid should reach the server: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(
        status.code(),
        Some(0),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let body = &got[2..];
    assert!(body.len() >= 2, "a reply before the close: {body:?}");
    let len = u16::from_be_bytes([body[0], body[1]]) as usize;
    assert_eq!(body.len(), 2 + len, "exactly one message, then the close");
    let mut buf = fdserver::MessageBuf::new();
    let msg = buf.decode_body(&body[2..]).unwrap();
    let parts = msg.to_strings().unwrap();
    assert_eq!(parts[0], "error", "{parts:?}");
    assert_eq!(parts[1], "permission", "{parts:?}");
    assert!(parts[2].contains("65534"), "{parts:?}");
    assert!(
        !parts.iter().any(|p| p.contains("fdserver-preload/")),
        "no greeting for a stranger: {parts:?}"
    );

    assert_eq!(pl.ok(&["echo", "owner"]), "owner\n");
    assert_eq!(pl.server().server, server);
    assert!(
        pl.log().contains("refused a connection from uid 65534"),
        "{}",
        pl.log()
    );
}

/// A preloader directory that others can enter is refused (the client says so and fails).
#[test]
fn non_private_directory_is_refused() {
    let _wd = wd("non_private_directory_is_refused");
    let pl = Pl::new("mode");
    std::fs::set_permissions(&pl.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = pl.run(&["echo", "hi"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.contains("0700"), "clear error: {:?}", out.stderr);
    assert!(!pl.files().sock.exists(), "no server in a public directory");
    std::fs::set_permissions(&pl.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert_eq!(pl.ok(&["echo", "hi"]), "hi\n");
}
