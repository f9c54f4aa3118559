//! Interop (issue 2, "Serve in the current process on ... an inherited fd"): the `hello` example
//! run as `hello --serve-fd 3`, spawned the way a Ruby or Python program would spawn it (a
//! socket-pair end on fd 3, `O_NONBLOCK` set), spoken to in raw Passenger MessageChannel bytes,
//! and by a small Python port of Passenger's MessageChannel when `python3` is installed; and a
//! Ruby MessageChannel written from Passenger's format (`tests/ruby/`) driving `hello` and the
//! typed servers of `src/bin/ruby-peer.rs` (every value form, descriptors with `send_io` and
//! `recv_io`, large replies, errors) when `ruby` is installed (`.ci/run` installs it where it
//! can).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use fdserver_tests::{set_nonblocking, watchdog, SECS};

/// The `hello` example binary: next to this test binary's `deps/` directory when the workspace
/// was built with `cargo test --workspace`, otherwise built once here.
fn hello_binary() -> &'static Path {
    static HELLO: OnceLock<PathBuf> = OnceLock::new();
    HELLO.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // .../<target>/<profile>/deps/<test binary>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in <target>/<profile>/deps");
        let hello = profile_dir.join("examples").join("hello");
        if hello.is_file() {
            return hello;
        }
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        // Build into a target directory of its own: the `cargo test` that runs us may still hold
        // the lock on ours.
        let target_dir = profile_dir
            .parent()
            .expect("<target> directory")
            .join("fdserver-tests-interop");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "--example",
                "hello",
                "--profile",
                profile,
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(&workspace)
            .stdin(Stdio::null())
            .status()
            .expect("run cargo build --example hello");
        assert!(status.success(), "cargo build --example hello: {status}");
        let dir = if profile == "dev" { "debug" } else { profile };
        let built = target_dir.join(dir).join("examples").join("hello");
        assert!(
            built.is_file(),
            "{} missing after the build",
            built.display()
        );
        built
    })
}

/// Spawns `hello --serve-fd 3` with one end of a socket pair as its fd 3, non-blocking; returns
/// the process and our end.
fn spawn_hello() -> (std::process::Child, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    // Ruby hands sockets over non-blocking: the server must cope.
    set_nonblocking(theirs.as_fd(), true);
    let raw = theirs.as_raw_fd();
    let mut cmd = Command::new(hello_binary());
    cmd.args(["--serve-fd", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // calls (dup2, fcntl) on descriptors that are open in it.
    unsafe {
        cmd.pre_exec(move || {
            if raw == 3 {
                // dup2 onto itself keeps close-on-exec: clear it by hand.
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("spawn hello --serve-fd 3");
    drop(theirs);
    (child, ours)
}

/// The frame of an array message, built by hand from the format (not with fdserver's encoder).
fn frame(elements: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = elements
        .iter()
        .flat_map(|e| e.iter().copied().chain([0]))
        .collect();
    let mut out = (body.len() as u16).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// Reads one array message the way Passenger does: exactly the header, then exactly the body.
fn read_frame(sock: &mut UnixStream) -> Option<Vec<Vec<u8>>> {
    let mut hdr = [0u8; 2];
    match sock.read_exact(&mut hdr) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Err(e) => panic!("read: {e}"),
    }
    let mut body = vec![0u8; u16::from_be_bytes(hdr) as usize];
    sock.read_exact(&mut body).unwrap();
    assert_eq!(body.last(), Some(&0), "body ends with NUL");
    body.pop();
    Some(body.split(|&b| b == 0).map(<[u8]>::to_vec).collect())
}

#[test]
fn hello_serves_passenger_bytes_on_inherited_nonblocking_fd_3() {
    let _wd = watchdog("hello_serve_fd_3", SECS(60));
    let (mut child, mut sock) = spawn_hello();
    let request = frame(&[b"hello", b"Joe", b"Dalton"]);
    assert_eq!(request, b"\x00\x11hello\x00Joe\x00Dalton\x00");
    sock.write_all(&request).unwrap();
    // The exact reply bytes.
    let expected = frame(&[b"ok", b"Hello Joe Dalton, how are you?", b"1234"]);
    let mut got = vec![0u8; expected.len()];
    sock.read_exact(&mut got).unwrap();
    assert_eq!(got, expected);

    // Several requests written at once, in one write, are answered in order.
    let mut batch = Vec::new();
    for (first, last) in [("Lucky", "Luke"), ("Averell", "Dalton"), ("Rantanplan", "")] {
        batch.extend(frame(&[b"hello", first.as_bytes(), last.as_bytes()]));
    }
    sock.write_all(&batch).unwrap();
    for (first, last) in [("Lucky", "Luke"), ("Averell", "Dalton"), ("Rantanplan", "")] {
        let greeting = format!("Hello {first} {last}, how are you?");
        assert_eq!(
            read_frame(&mut sock).unwrap(),
            [b"ok".to_vec(), greeting.into_bytes(), b"1234".to_vec()]
        );
    }

    // A request split into pieces (the server waits on its non-blocking socket with poll).
    for piece in request.chunks(3) {
        sock.write_all(piece).unwrap();
    }
    assert_eq!(read_frame(&mut sock).unwrap()[0], b"ok");

    // Errors follow the documented convention, and the server keeps serving.
    sock.write_all(&frame(&[b"goodbye"])).unwrap();
    let err = read_frame(&mut sock).unwrap();
    assert_eq!(err.len(), 3, "{err:?}");
    assert_eq!(
        (&err[0][..], &err[1][..]),
        (&b"error"[..], &b"unknown_message"[..])
    );
    sock.write_all(&frame(&[b"hello", b"only one"])).unwrap();
    let err = read_frame(&mut sock).unwrap();
    assert_eq!(
        (&err[0][..], &err[1][..]),
        (&b"error"[..], &b"bad_arguments"[..])
    );
    sock.write_all(&request).unwrap();
    assert_eq!(read_frame(&mut sock).unwrap()[0], b"ok");

    // Closing the socket makes it exit 0.
    drop(sock);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn hello_exits_0_when_its_peer_closes_without_a_word() {
    let _wd = watchdog("hello_exits_on_close", SECS(60));
    let (mut child, sock) = spawn_hello();
    drop(sock);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn hello_talks_to_fdservers_own_channel_on_fd_3() {
    let _wd = watchdog("hello_with_fdserver_channel", SECS(60));
    let (mut child, sock) = spawn_hello();
    let mut ch = fdserver::Channel::from(sock);
    ch.write_array(["hello", "Joe", "Dalton"]).unwrap();
    let mut buf = fdserver::MessageBuf::new();
    let reply = ch.read_reply(&mut buf).unwrap().to_strings().unwrap();
    assert_eq!(reply, ["ok", "Hello Joe Dalton, how are you?", "1234"]);
    let err = ch
        .write_array(["bogus"])
        .and_then(|()| ch.read_reply(&mut buf).map(|_| ()));
    let err = err.unwrap_err();
    assert_eq!(
        err.as_remote().map(|r| r.kind().clone()),
        Some(fdserver::RemoteErrorKind::UnknownMessage)
    );
    drop(ch);
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// A Python port of Passenger's MessageChannel (`write`, `read`: struct.pack('>H'), NUL-joined,
/// reading exactly the missing bytes), spawning `hello --serve-fd N` itself.
const PYTHON_CLIENT: &str = r#"
import os, socket, struct, subprocess, sys

class MessageChannel:
    def __init__(self, sock):
        self.sock = sock

    def write(self, *args):
        data = b"".join(a.encode("utf-8") + b"\0" for a in args)
        self.sock.sendall(struct.pack(">H", len(data)) + data)

    def _read_exactly(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def read(self):
        hdr = self._read_exactly(2)
        if hdr is None:
            return None
        (size,) = struct.unpack(">H", hdr)
        body = self._read_exactly(size)
        if body is None:
            return None
        return [e.decode("utf-8") for e in body.split(b"\0")[:-1]]

ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
theirs.setblocking(False)
proc = subprocess.Popen([sys.argv[1], "--serve-fd", str(theirs.fileno())],
                        pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
theirs.close()
ours.settimeout(20)  # fail rather than hang
ch = MessageChannel(ours)
ch.write("hello", "Joe", "Dalton")
reply = ch.read()
assert reply == ["ok", "Hello Joe Dalton, how are you?", "1234"], reply
ch.write("hello", "Zoë", "Dalton")
reply = ch.read()
assert reply == ["ok", "Hello Zoë Dalton, how are you?", "1234"], reply
ch.write("nope")
reply = ch.read()
assert reply[:2] == ["error", "unknown_message"], reply
# Pipelined in batches small enough for the socket buffers (writing everything before reading
# anything would deadlock any peer that answers as it reads).
for batch in range(20):
    for i in range(10):
        ch.write("hello", str(batch * 10 + i), "x" * 3000)
    for i in range(10):
        assert ch.read()[1] == "Hello %d %s, how are you?" % (batch * 10 + i, "x" * 3000)
ours.close()
code = proc.wait(timeout=20)
assert code == 0, code
print("python interop ok")
"#;

#[test]
fn python_port_of_passengers_message_channel_talks_to_hello() {
    let _wd = watchdog("python_interop", SECS(60));
    let hello = hello_binary();
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(PYTHON_CLIENT)
        .arg(hello)
        .stdin(Stdio::null());
    // If this test process dies (the watchdog aborts it), Python dies with it, and `hello` then
    // sees end of stream: nothing is left running.
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only affects the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("python3 not found on PATH: skipping the Python interop test");
            return;
        }
        Err(e) => panic!("running python3: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("python interop ok"),
        "python client failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
}

/// Writes a line to this process's stderr directly, past the test harness's output capture:
/// a skipped test says so in the run's output.
fn say_skipped(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[test]
fn ruby_message_channel_drives_hello_and_typed_servers() {
    let _wd = watchdog("ruby_interop", SECS(120));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ruby/drive.rb");
    let peer = env!("CARGO_BIN_EXE_ruby-peer");
    let hello = hello_binary();
    let mut cmd = Command::new("ruby");
    cmd.arg(&script).arg(hello).arg(peer).stdin(Stdio::null());
    // The peer's `Json<T>` handler exists with the `serde` feature only.
    if cfg!(feature = "serde") {
        cmd.arg("json");
    }
    // If this test process dies (the watchdog aborts it), Ruby dies with it, and the servers it
    // started then see end of stream: nothing is left running.
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and only affects the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            say_skipped(
                "SKIPPED ruby_message_channel_drives_hello_and_typed_servers: `ruby` is not \
                 installed (`apt-get install ruby`; .ci/run installs it where it can)",
            );
            return;
        }
        Err(e) => panic!("running ruby: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.ends_with("ALL OK\n"),
        "the Ruby peer failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    // Every check ran (a check missing from the output would be a script that stopped early).
    let checks = stdout.lines().filter(|l| l.starts_with("ok  ")).count();
    let expected = if cfg!(feature = "serde") { 42 } else { 40 };
    assert_eq!(checks, expected, "checks passed:\n{stdout}");
}
