//! A `#[fdserver]` server served on an inherited descriptor (fd 3), as `--serve-fd 3` does: the
//! test re-runs its own binary with one end of a socket pair as fd 3 and talks to it as a
//! program in another language would, with raw MessageChannel messages.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
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

/// What the server side serves: the Greeter, or (`PASSER` set) a server whose handler hands
/// the client's socket on.
const PASSER: &str = "FDSERVER_TEST_SERVE_FD_PASSER";

/// `echo` answers its arguments; `take_next` hands the socket on as a Passenger handler does
/// (`as_fd`), and the code it is handed to reads the next frame from it, raw and without
/// waiting: the serve loop must have left it there.
struct Passer;

impl fdserver::Server for Passer {
    type Client = fdserver::ServerHandle;

    fn handle(
        &mut self,
        ctx: &mut fdserver::Context<'_>,
        msg: fdserver::Message<'_>,
    ) -> Result<(), fdserver::RemoteError> {
        match msg.name() {
            b"echo" => ctx.reply(msg.args())?,
            b"take_next" => {
                let sock = ctx.channel().as_fd().as_raw_fd();
                let mut frame = [0u8; 64];
                let mut got = 0;
                let mut want = 2;
                while got < want {
                    // SAFETY: a receive into a live buffer, on the socket the channel lends.
                    let n = unsafe {
                        libc::recv(
                            sock,
                            frame[got..want].as_mut_ptr().cast(),
                            want - got,
                            libc::MSG_DONTWAIT,
                        )
                    };
                    if n <= 0 {
                        return Err(fdserver::RemoteError::failed(format!(
                            "the next frame is not in the socket (recv: {n}, {})",
                            io::Error::last_os_error()
                        )));
                    }
                    got += n as usize;
                    if got == 2 {
                        want = 2 + u16::from_be_bytes([frame[0], frame[1]]) as usize;
                    }
                }
                let mut buf = MessageBuf::new();
                buf.decode_body(&frame[2..want])
                    .map_err(fdserver::RemoteError::failed)?;
                let text = buf
                    .message()
                    .to_strings()
                    .map_err(fdserver::RemoteError::failed)?;
                ctx.reply([text.join(" ")])?;
            }
            other => return Err(fdserver::RemoteError::unknown_message(other)),
        }
        Ok(())
    }
}

/// The server side: does nothing unless started by `serve_on_inherited_fd` (or
/// `serve_leaves_the_next_message_in_the_socket_for_a_handler_that_hands_it_on`).
#[test]
fn serve_fd_child() {
    let Ok(fd) = std::env::var(ENV) else { return };
    // SAFETY: the parent put the socket at this descriptor for us; nothing else owns it.
    let channel = unsafe { Channel::from_inherited_fd(fd.parse().unwrap()) }.unwrap();
    let end = if std::env::var_os(PASSER).is_some() {
        fdserver::serve(&mut Passer, channel).unwrap()
    } else {
        fdserver::serve(&mut Greeter, channel).unwrap()
    };
    std::process::exit(end.exit_code());
}

/// Runs this binary's `serve_fd_child` on one end of a socket pair (as its fd 3), with `env`
/// set too, and returns it and the other end.
fn spawn_server(env: &[(&str, &str)]) -> (std::process::Child, UnixStream) {
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
    .envs(env.iter().copied())
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
    let child = cmd.spawn().unwrap();
    drop(theirs);
    (child, mine)
}

/// Issue 16 (hand-off paths): a server on an inherited descriptor reads exactly what each
/// message needs (its peer may be any program, and its handlers may hand the socket on), so a
/// request written together with the next ones leaves those in the socket for whoever reads it
/// next.
#[test]
fn serve_leaves_the_next_message_in_the_socket_for_a_handler_that_hands_it_on() {
    let _wd = watchdog("serve_fd_handoff", SECS(30));
    let (mut child, mine) = spawn_server(&[(PASSER, "1")]);
    let mut ch = Channel::new(mine);
    // Three requests in one write: the loop reads the first; its handler hands the socket on
    // and the second is read raw from it; the loop serves the third.
    let mut bytes = Vec::new();
    for m in [
        &["take_next"][..],
        &["echo", "read", "raw"],
        &["echo", "after"],
    ] {
        fdserver::wire::encode_array(&mut bytes, m.iter()).unwrap();
    }
    fdserver_tests::write_raw(ch.as_raw_fd(), &bytes);
    let mut buf = MessageBuf::new();
    let reply = ch.read_reply(&mut buf).unwrap().to_strings().unwrap();
    assert_eq!(
        reply,
        ["ok", "echo read raw"],
        "the handed-on socket held the next message"
    );
    let reply = ch.read_reply(&mut buf).unwrap().to_strings().unwrap();
    assert_eq!(reply, ["ok", "after"]);
    drop(ch);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn serve_on_inherited_fd() {
    let _wd = watchdog("serve_on_inherited_fd", SECS(30));
    let (mut child, mine) = spawn_server(&[]);

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
