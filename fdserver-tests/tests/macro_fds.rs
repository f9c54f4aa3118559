//! `#[fdserver]` descriptors both ways: parameters and results of type `File`, `OwnedFd`,
//! `UnixStream` and a user `From<OwnedFd>` type, alone and mixed with other values.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use fdserver::{fdserver, Error, MessageBuf, RemoteErrorKind};
use fdserver_tests::{watchdog, SECS};

/// A pipe: (read end, write end), close-on-exec.
fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 just opened both; nothing else owns them.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// A descriptor type of the user's own.
struct Pipe(OwnedFd);

impl From<OwnedFd> for Pipe {
    fn from(fd: OwnedFd) -> Self {
        Pipe(fd)
    }
}

impl AsFd for Pipe {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

fdserver::fd_arg!(Pipe);

#[derive(Default)]
struct Files {
    dir: PathBuf,
    peer: Option<UnixStream>,
    kept: Option<OwnedFd>,
}

#[fdserver]
impl Files {
    /// Creates `name` in the server's directory and hands it over, open for writing.
    fn open_log(&mut self, name: String) -> io::Result<File> {
        File::create(self.dir.join(name))
    }

    fn read_file(&mut self, name: String) -> io::Result<String> {
        std::fs::read_to_string(self.dir.join(name))
    }

    /// Writes `text` into a descriptor the client passes.
    fn write_to(&mut self, mut out: File, text: String) -> io::Result<usize> {
        out.write_all(text.as_bytes())?;
        Ok(text.len())
    }

    /// Two descriptors around inline values: read everything from `input`, write it to `output`.
    fn copy(
        &mut self,
        prefix: String,
        mut input: File,
        mut output: UnixStream,
        suffix: String,
    ) -> io::Result<u64> {
        output.write_all(prefix.as_bytes())?;
        let n = io::copy(&mut input, &mut output)?;
        output.write_all(suffix.as_bytes())?;
        Ok(n)
    }

    fn keep(&mut self, fd: OwnedFd) {
        self.kept = Some(fd);
    }

    /// Gives back a duplicate of the kept descriptor.
    fn give_back(&mut self) -> Result<OwnedFd, String> {
        match &self.kept {
            Some(fd) => fd.try_clone().map_err(|e| e.to_string()),
            None => Err("nothing kept".into()),
        }
    }

    /// A socket pair: the server keeps one end and returns the other, with other values around it.
    fn connect(&mut self, greeting: String) -> io::Result<(String, UnixStream, Vec<u8>, u32)> {
        let (mine, theirs) = UnixStream::pair()?;
        self.peer = Some(mine);
        Ok((greeting, theirs, b"\0payload\xff".to_vec(), 77))
    }

    /// Reads a line from the kept end of `connect`'s pair.
    fn read_peer(&mut self) -> io::Result<String> {
        let peer = self
            .peer
            .as_mut()
            .ok_or_else(|| io::Error::other("not connected"))?;
        let mut line = String::new();
        BufReader::new(peer).read_line(&mut line)?;
        Ok(line)
    }

    /// The kept descriptor, lent: the client gets its own copy, the server keeps it (no `dup`).
    fn lend(&self) -> Result<BorrowedFd<'_>, String> {
        self.kept
            .as_ref()
            .map(|fd| fd.as_fd())
            .ok_or_else(|| "nothing kept".into())
    }

    /// The kept end of `connect`'s pair, lent as a reference, between other values.
    fn lend_peer(&mut self, tag: String) -> io::Result<(String, &UnixStream, u32)> {
        let peer = self
            .peer
            .as_ref()
            .ok_or_else(|| io::Error::other("not connected"))?;
        Ok((tag, peer, 5))
    }

    fn user_fd(&mut self, p: Pipe, text: String) -> io::Result<Pipe> {
        File::from(p.0.try_clone()?).write_all(text.as_bytes())?;
        Ok(p)
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fdserver-macro-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn descriptor_results() {
    let _wd = watchdog("descriptor_results", SECS(30));
    let dir = temp_dir("results");
    let mut c = Files {
        dir: dir.clone(),
        ..Files::default()
    }
    .start()
    .unwrap();

    // `io::Result<File>`: the client gets the file the server opened.
    let mut log = c.open_log("a.log").unwrap();
    log.write_all(b"written by the client\n").unwrap();
    drop(log);
    assert_eq!(c.read_file("a.log").unwrap(), "written by the client\n");

    // The error side of `io::Result<File>`: no descriptor follows, the stream stays in step.
    let e = c.open_log("no/such/dir/x").unwrap_err();
    assert!(
        matches!(&e, Error::Remote(r) if r.kind() == &RemoteErrorKind::Io),
        "{e:?}"
    );
    assert_eq!(std::io::Error::from(e).kind(), std::io::ErrorKind::NotFound);

    // A tuple with a descriptor between inline values and a scalar.
    let (greeting, mut stream, payload, n) = c.connect("hi").unwrap();
    assert_eq!(
        (greeting.as_str(), payload.as_slice(), n),
        ("hi", &b"\0payload\xff"[..], 77)
    );
    stream.write_all(b"over the passed socket\n").unwrap();
    assert_eq!(c.read_peer().unwrap(), "over the passed socket\n");

    // `Result<OwnedFd, String>` both ways.
    let e = c.give_back().unwrap_err();
    assert!(
        matches!(&e, Error::Remote(r) if r.message() == "nothing kept"),
        "{e:?}"
    );
    let (mut r, w) = pipe();
    c.keep(w.as_fd()).unwrap();
    drop(w);
    let back = c.give_back().unwrap();
    File::from(back).write_all(b"via the returned fd").unwrap();
    assert!(c.stop().unwrap().status.success());
    // Every write end is closed now (ours, the server's): read to the end.
    let mut got = String::new();
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, "via the returned fd");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn borrowed_descriptor_results_lend_what_the_server_keeps() {
    let _wd = watchdog("borrowed_descriptor_results", SECS(30));
    let mut c = Files::default().start().unwrap();
    let e = c.lend().unwrap_err();
    assert!(
        matches!(&e, Error::Remote(r) if r.message() == "nothing kept"),
        "{e:?}"
    );
    let (mut r, w) = pipe();
    c.keep(w.as_fd()).unwrap();
    drop(w);
    // `BorrowedFd<'_>` on the server, `OwnedFd` on the client, as often as asked: the server's
    // own descriptor stays open (each lent copy is closed here, and the pipe only ends once the
    // server's goes too).
    for i in 0..3 {
        let lent: OwnedFd = c.lend().unwrap();
        File::from(lent)
            .write_all(format!("{i}").as_bytes())
            .unwrap();
    }
    // `&UnixStream` inside a tuple: the client gets a `UnixStream`, the server keeps its end.
    let (_greeting, mut theirs, _, _) = c.connect("hi").unwrap();
    let (tag, lent, n): (String, UnixStream, u32) = c.lend_peer("t").unwrap();
    assert_eq!((tag.as_str(), n), ("t", 5));
    drop(lent);
    theirs.write_all(b"still connected\n").unwrap();
    assert_eq!(c.read_peer().unwrap(), "still connected\n");
    assert!(c.stop().unwrap().status.success());
    let mut got = String::new();
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, "012");
}

#[test]
fn descriptor_parameters() {
    let _wd = watchdog("descriptor_parameters", SECS(30));
    let mut c = Files::default().start().unwrap();

    // `impl AsFd`: by reference, by value.
    let (mut r, w) = pipe();
    assert_eq!(c.write_to(&w, "by reference|").unwrap(), 13);
    assert_eq!(c.write_to(w, "by value").unwrap(), 8);
    let mut got = vec![0; 21];
    r.read_exact(&mut got).unwrap();
    assert_eq!(got, b"by reference|by value");

    // Two descriptors of different types between inline values.
    let (input_r, mut input_w) = pipe();
    input_w.write_all(b"[data]").unwrap();
    drop(input_w);
    let (mut out_mine, out_theirs) = UnixStream::pair().unwrap();
    assert_eq!(c.copy("<", input_r, out_theirs, ">").unwrap(), 6);
    let mut got = String::new();
    out_mine.read_to_string(&mut got).unwrap();
    assert_eq!(got, "<[data]>");

    // A user `From<OwnedFd>` type, as parameter and result.
    let (mut r, w) = pipe();
    let back = c.user_fd(Pipe(w.into()), "user type").unwrap();
    assert_ne!(back.0.as_raw_fd(), -1);
    drop(back);
    let mut got = String::new();
    assert!(c.stop().unwrap().status.success());
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, "user type");
}

#[test]
fn missing_and_superfluous_descriptors_from_raw_clients() {
    let _wd = watchdog("raw_descriptors", SECS(30));
    let mut c = Files::default().start().unwrap();
    let mut buf = MessageBuf::new();
    let (mut r, w) = pipe();

    // Wrong inline count: the descriptor is still consumed, then the error comes back.
    let ch = c.channel();
    ch.write_array(["write_to"]).unwrap();
    ch.send_fd(&w).unwrap();
    let e = ch.read_reply(&mut buf).unwrap_err();
    assert!(
        matches!(&e, Error::Remote(re) if re.message() == "write_to: expected 1 argument (text), got 0"),
        "{e:?}"
    );

    // A raw, correct request: array then descriptor.
    ch.write_array(["write_to", "raw"]).unwrap();
    ch.send_fd(&w).unwrap();
    assert_eq!(
        ch.read_reply(&mut buf).unwrap().to_strings().unwrap(),
        ["ok", "3"]
    );
    let mut got = [0; 3];
    r.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"raw");

    // Data where a descriptor was expected: the server cannot resynchronise the stream, so it
    // says why in a last message (issue 10, item 10), closes the connection and exits with
    // status 1.
    ch.write_array(["write_to", "x"]).unwrap();
    ch.write_array(["not a descriptor"]).unwrap();
    let e = ch.read_reply(&mut buf).unwrap_err();
    assert!(
        matches!(&e, Error::Remote(re) if re.kind() == &RemoteErrorKind::Protocol
            && re.message().starts_with("write_to: parameter `out`: ")
            && re.message().contains("expected a file descriptor")),
        "{e:?}"
    );
    let e = c
        .handle_mut()
        .with_channel(|ch| ch.read_reply(&mut buf).map(|_| ()))
        .unwrap_err();
    assert!(
        matches!(&e, Error::ServerExited(s) if s.code() == Some(1)),
        "{e:?}"
    );
    let stopped = c.stop().unwrap();
    assert_eq!(stopped.status.code(), Some(1), "{stopped}");
}

// ---------------------------------------------------------------------------------------------
// Issue 10, item 4: out-of-band values that fail after the request went out
// ---------------------------------------------------------------------------------------------

/// Longer than a scalar's `u32` length can say. Zeroed memory the kernel maps on demand: never
/// touched, it costs address space, not RAM.
const OVER_4_GIB: usize = (u32::MAX as usize) + 1;

struct OutOfBand;

#[fdserver]
impl OutOfBand {
    fn len(&mut self, data: Vec<u8>) -> u64 {
        data.len() as u64
    }

    fn take(&mut self, _file: File) -> u32 {
        1
    }

    /// A result whose scalar cannot be sent.
    fn huge(&mut self) -> Vec<u8> {
        vec![0u8; OVER_4_GIB]
    }

    fn echo(&mut self, text: String) -> String {
        text
    }
}

/// A scalar argument over 4 GiB is refused before the request's first byte, so the channel stays
/// in step. Before the fix the request array went out, the scalar failed, and the next call's
/// array was read by the server as that scalar (a hang without a deadline).
#[test]
fn a_scalar_argument_over_4_gib_fails_before_the_request_and_the_next_call_works() {
    let _wd = watchdog("oversized_scalar_argument", SECS(60));
    let mut c = fdserver::Builder::new()
        .timeout(Some(SECS(10)))
        .start(&mut OutOfBand)
        .unwrap();
    let huge = vec![0u8; OVER_4_GIB];
    // Review F7: the error names the call and the parameter.
    match c.len(&huge) {
        Err(e @ Error::Encode { .. }) => {
            let text = e.to_string();
            assert!(text.contains("call \"len\": parameter `data`"), "{text}");
            assert!(text.contains(&OVER_4_GIB.to_string()), "{text}");
            assert!(!e.needs_restart());
        }
        other => panic!("expected Encode, got {other:?}"),
    }
    drop(huge);
    assert_eq!(c.len(b"abc").unwrap(), 3);
    assert_eq!(c.echo("still in step").unwrap(), "still in step");
}

/// A handler's scalar result over 4 GiB is an ordinary `failed` error reply, checked before
/// `["ok"]`, and the server keeps serving. Before the fix `["ok"]` went out, the scalar failed,
/// and the error reply followed as a second answer.
#[test]
fn a_scalar_result_over_4_gib_is_an_error_reply_and_the_server_keeps_serving() {
    let _wd = watchdog("oversized_scalar_result", SECS(60));
    let mut c = fdserver::Builder::new()
        .timeout(Some(SECS(10)))
        .start(&mut OutOfBand)
        .unwrap();
    let err = c.huge().unwrap_err();
    let remote = err
        .as_remote()
        .unwrap_or_else(|| panic!("expected an error reply: {err:?}"));
    assert_eq!(remote.kind(), &RemoteErrorKind::Failed);
    assert!(remote.message().contains("4294967296"), "{remote}");
    assert_eq!(c.echo("next").unwrap(), "next");
}

/// A descriptor argument the kernel refuses to pass (`ETOOMANYREFS`: more descriptors in
/// flight than the sender's descriptor limit allows) fails after the request array went out:
/// the channel is then broken, and the next call says so at once. Before the fix the next call's
/// array went out as the descriptor the server was waiting for.
///
/// Runs in a forked process that drops root (root may exceed the in-flight limit).
#[test]
fn a_descriptor_argument_that_fails_after_the_request_breaks_the_channel() {
    let _wd = watchdog("descriptor_send_fails_mid_call", SECS(60));
    let pid = fdserver_tests::fork_child(&[], || {
        let Ok(mut c) = fdserver::Builder::new()
            .timeout(Some(SECS(10)))
            .start(&mut OutOfBand)
        else {
            return 1;
        };
        let (a, _b) = UnixStream::pair().unwrap();
        // SAFETY: raw credential and limit system calls; this process has one thread.
        unsafe {
            if libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534) != 0
                || libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) != 0
            {
                return 2;
            }
            let lim = libc::rlimit {
                rlim_cur: 16,
                rlim_max: 16,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return 3;
            }
        }
        // Put descriptors in flight (nobody reads `_b`) until the kernel refuses more.
        let mut refused = false;
        for _ in 0..64 {
            let sent = fdserver::Channel::new(a.try_clone().unwrap()).send_fd(io::stdin());
            if let Err(Error::Io(e)) = sent {
                if e.raw_os_error() == Some(libc::ETOOMANYREFS) {
                    refused = true;
                    break;
                }
                return 4;
            }
        }
        if !refused {
            return 5;
        }
        match c.take(io::stdin()) {
            Err(Error::Io(e)) if e.raw_os_error() == Some(libc::ETOOMANYREFS) => {}
            _ => return 6,
        }
        if !matches!(c.echo("next"), Err(Error::Broken { .. })) {
            return 7;
        }
        // The server is still waiting for the descriptor; closing the connection ends it.
        match c.stop() {
            Ok(st) if st.status.success() => 0,
            _ => 8,
        }
    });
    assert_eq!(fdserver_tests::wait_child(pid).code(), Some(0));
}

/// Issue 10, item 10: a scalar over the server's limit cannot be skipped, so the server closes
/// the connection, but first tells the client why, as an error reply of kind `protocol` naming
/// the message and the parameter. Before the fix the client saw only `ServerExited(exit 1)`.
#[test]
fn a_scalar_over_the_servers_limit_is_answered_with_a_protocol_error_before_the_close() {
    let _wd = watchdog("scalar_over_limit_last_word", SECS(60));
    let mut c = fdserver::Builder::new()
        .max_scalar_size(16)
        .timeout(Some(SECS(10)))
        .start(&mut OutOfBand)
        .unwrap();
    assert_eq!(c.len(&[7u8; 16]).unwrap(), 16);
    let e = c.len(&[7u8; 100]).unwrap_err();
    let remote = e
        .as_remote()
        .unwrap_or_else(|| panic!("expected a reply: {e:?}"));
    assert_eq!(remote.kind(), &RemoteErrorKind::Protocol, "{remote}");
    assert!(
        remote.message().starts_with("len: parameter `data`: ")
            && remote
                .message()
                .contains("100 bytes exceeds the limit of 16"),
        "{remote}"
    );
    assert!(
        matches!(c.echo("after"), Err(Error::ServerExited(st)) if st.code() == Some(1)),
        "the server closed the connection"
    );
}
