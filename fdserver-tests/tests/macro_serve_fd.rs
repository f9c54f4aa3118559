//! A `#[fdserver]` server served on an inherited descriptor (fd 3), as `--serve-fd 3` does: the
//! test re-runs its own binary with one end of a socket pair as fd 3 and talks to it as a
//! program in another language would, with raw MessageChannel messages.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use fdserver::{fdserver, Channel, MessageBuf};
use fdserver_tests::{watchdog, SECS};

const ENV: &str = "FDSERVER_TEST_SERVE_FD";

struct Greeter;

#[fdserver]
impl Greeter {
    fn hello(&mut self, first_name: String, last_name: String) -> (String, u32) {
        (
            format!("Hello {first_name} {last_name}, how are you?"),
            1234,
        )
    }

    fn write_to(&mut self, out: File, text: String) -> std::io::Result<()> {
        use std::io::Write;
        (&out).write_all(text.as_bytes())
    }
}

/// The server side: does nothing unless started by `serve_on_inherited_fd`.
#[test]
fn serve_fd_child() {
    let Ok(fd) = std::env::var(ENV) else { return };
    // SAFETY: the parent put the socket at this descriptor for us; nothing else owns it.
    let channel = unsafe { Channel::from_inherited_fd(fd.parse().unwrap()) }.unwrap();
    let end = fdserver::serve(&mut Greeter, channel).unwrap();
    std::process::exit(end.exit_code());
}

#[test]
fn serve_on_inherited_fd() {
    let _wd = watchdog("serve_on_inherited_fd", SECS(30));
    let (mine, theirs) = UnixStream::pair().unwrap();
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "serve_fd_child",
        "--test-threads=1",
        "--nocapture",
    ])
    .env(ENV, "3")
    .stdout(Stdio::null());
    // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let r = if theirs_fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(theirs_fd, 3)
            };
            if r == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(theirs);

    let mut ch = Channel::new(mine);
    let mut buf = MessageBuf::new();
    ch.write_array(["hello", "Joe", "Dalton"]).unwrap();
    let reply = ch.read_reply(&mut buf).unwrap().to_strings().unwrap();
    assert_eq!(reply, ["ok", "Hello Joe Dalton, how are you?", "1234"]);

    ch.write_array(["hello", "Joe"]).unwrap();
    let e = ch.read_reply(&mut buf).unwrap_err();
    assert_eq!(
        e.to_string(),
        "server error: bad_arguments: hello: expected 2 arguments (first_name, last_name), got 1"
    );

    // A descriptor after the array.
    let mut fds = [0; 2];
    // SAFETY: room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: just opened; owned here only.
    let (mut r, w) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    ch.write_array(["write_to", "through fd 3"]).unwrap();
    ch.send_fd(&w).unwrap();
    drop(w);
    assert_eq!(
        ch.read_reply(&mut buf).unwrap().to_strings().unwrap(),
        ["ok"]
    );
    let mut got = vec![0; 12];
    r.read_exact(&mut got).unwrap();
    assert_eq!(got, b"through fd 3");

    drop(ch); // end of stream: the server's loop ends and it exits 0
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
