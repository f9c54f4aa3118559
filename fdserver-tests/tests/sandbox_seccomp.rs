//! The seccomp layer (issue 15, item 5): each preset denies what it says with EPERM while the
//! server keeps serving, passing descriptors and handling signals; an explicit deny list; an
//! allow list under which fdserver's own runtime still works (the typed API included, with
//! `Violation::Kill`); deny lists that would take the runtime's own calls away are refused.

mod sandbox_common;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;

use fdserver::sandbox::{Preset, Sandbox, Seccomp, Syscall, Violation};
use fdserver::{Error, Signal};
use fdserver_tests::{pipe, read_n, watchdog, write_raw, SECS};
use sandbox_common::{sandbox_layer, start, start_jail, try_errno, Jail};

fn seccomp(s: Seccomp) -> Sandbox {
    Sandbox::new().seccomp(s)
}

#[test]
fn no_network_denies_network_sockets_but_not_unix_ones() {
    let _wd = watchdog(
        "no_network_denies_network_sockets_but_not_unix_ones",
        SECS(30),
    );
    let mut s = start(seccomp(Seccomp::new().preset(Preset::NoNetwork))).unwrap();
    for family in [
        libc::AF_INET,
        libc::AF_INET6,
        libc::AF_NETLINK,
        libc::AF_PACKET,
    ] {
        assert_eq!(
            try_errno(&mut s.server, &["socket", &family.to_string()]),
            libc::EPERM,
            "family {family}"
        );
    }
    assert_eq!(
        try_errno(&mut s.server, &["socket", &libc::AF_UNIX.to_string()]),
        0
    );
    // io_uring would open sockets without passing through seccomp.
    assert_eq!(try_errno(&mut s.server, &["io_uring"]), libc::EPERM);
    // Not denied by this preset.
    assert_eq!(try_errno(&mut s.server, &["thread"]), 0);
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn no_exec_denies_execve() {
    let _wd = watchdog("no_exec_denies_execve", SECS(30));
    let mut s = start(seccomp(Seccomp::new().preset(Preset::NoExec))).unwrap();
    assert_eq!(try_errno(&mut s.server, &["exec"]), libc::EPERM);
    let inet = libc::AF_INET.to_string();
    assert_eq!(try_errno(&mut s.server, &["socket", &inet]), 0);
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn no_new_processes_denies_fork_but_not_threads() {
    let _wd = watchdog("no_new_processes_denies_fork_but_not_threads", SECS(30));
    let mut s = start(seccomp(Seccomp::new().preset(Preset::NoNewProcesses))).unwrap();
    assert_eq!(try_errno(&mut s.server, &["fork"]), libc::EPERM);
    // clone3's flags cannot be inspected: it is refused as "not implemented", for processes...
    assert_eq!(try_errno(&mut s.server, &["clone3"]), libc::ENOSYS);
    // ...and threads, which glibc's pthread_create then starts with clone(CLONE_THREAD).
    assert_eq!(try_errno(&mut s.server, &["thread"]), 0);
    assert_eq!(try_errno(&mut s.server, &["fork"]), libc::EPERM);
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn every_preset_together() {
    let _wd = watchdog("every_preset_together", SECS(30));
    let mut s = start(seccomp(
        Seccomp::new()
            .preset(Preset::NoNetwork)
            .preset(Preset::NoExec)
            .preset(Preset::NoNewProcesses),
    ))
    .unwrap();
    let report = s.server.sandbox().unwrap().seccomp.clone().unwrap();
    assert_eq!(report.presets.len(), 3);
    assert!(report.allowed.is_none());
    let inet = libc::AF_INET.to_string();
    assert_eq!(try_errno(&mut s.server, &["socket", &inet]), libc::EPERM);
    assert_eq!(try_errno(&mut s.server, &["exec"]), libc::EPERM);
    assert_eq!(try_errno(&mut s.server, &["fork"]), libc::EPERM);
    assert_eq!(try_errno(&mut s.server, &["thread"]), 0);
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn an_explicit_deny_list_with_a_chosen_errno() {
    let _wd = watchdog("an_explicit_deny_list_with_a_chosen_errno", SECS(30));
    let mut s = start(seccomp(
        Seccomp::new()
            .deny([libc::SYS_uname])
            .on_violation(Violation::Errno(libc::EACCES)),
    ))
    .unwrap();
    assert_eq!(try_errno(&mut s.server, &["uname"]), libc::EACCES);
    // Nothing else is denied: no preset, so io_uring is not either.
    assert_eq!(try_errno(&mut s.server, &["fork"]), 0);
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn the_runtime_works_under_an_allow_list_of_nothing_else() {
    let _wd = watchdog(
        "the_runtime_works_under_an_allow_list_of_nothing_else",
        SECS(30),
    );
    // The probe handlers make pipes (fd_back); the runtime needs nothing beyond RUNTIME.
    let mut s = start(seccomp(Seccomp::new().allow_only([libc::SYS_pipe2]))).unwrap();
    let report = s.server.sandbox().unwrap().seccomp.clone().unwrap();
    assert!(report.allowed.as_ref().unwrap().contains(&libc::SYS_pipe2));
    assert_eq!(try_errno(&mut s.server, &["open", "/"]), libc::EPERM);
    assert_eq!(try_errno(&mut s.server, &["uname"]), libc::EPERM);
    let unix = libc::AF_UNIX.to_string();
    assert_eq!(try_errno(&mut s.server, &["socket", &unix]), libc::EPERM);
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn the_runtime_survives_an_allow_list_that_kills() {
    let _wd = watchdog("the_runtime_survives_an_allow_list_that_kills", SECS(30));
    // Any call outside RUNTIME and pipe2 would kill the server: messages, descriptors, a
    // signal, end of stream and exit must all stay inside.
    let mut s = start(seccomp(
        Seccomp::new()
            .allow_only([libc::SYS_pipe2])
            .on_violation(Violation::Kill),
    ))
    .unwrap();
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn the_runtime_survives_an_allow_list_that_kills_on_a_stream_pair() {
    let _wd = watchdog(
        "the_runtime_survives_an_allow_list_that_kills_on_a_stream_pair",
        SECS(30),
    );
    // On a stream pair a reply and its descriptor leave in one `sendmmsg`, which RUNTIME must
    // allow (on the default record pair they are one `sendmsg`).
    let mut jail = Jail::new(seccomp(
        Seccomp::new()
            .allow_only([libc::SYS_pipe2])
            .on_violation(Violation::Kill),
    ));
    jail.stream = true;
    let mut s = start_jail(jail).unwrap();
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn kill_ends_the_server_with_sigsys_at_the_first_violation() {
    let _wd = watchdog(
        "kill_ends_the_server_with_sigsys_at_the_first_violation",
        SECS(30),
    );
    let mut s = start(seccomp(
        Seccomp::new()
            .preset(Preset::NoExec)
            .on_violation(Violation::Kill),
    ))
    .unwrap();
    s.assert_runtime_works();
    let e = s.server.call(["exec"]).unwrap_err();
    match e {
        Error::ServerExited(status) => assert_eq!(status.signal(), Some(libc::SIGSYS)),
        other => panic!("expected the server to be killed, got {other:?}"),
    }
}

#[test]
fn denying_a_call_of_the_runtime_fails_start_naming_it() {
    let _wd = watchdog(
        "denying_a_call_of_the_runtime_fails_start_naming_it",
        SECS(30),
    );
    // Each would break the server: no hang-up watch (a server stuck in a handler would outlive
    // its client), no replies, no loop, no typed descriptor results.
    for (nr, name, why) in [
        (libc::SYS_tgkill, "tgkill", "hang-up watch"),
        (libc::SYS_sendmsg, "sendmsg", "writes replies"),
        (libc::SYS_sendto, "sendto", "writes replies"),
        (libc::SYS_recvmsg, "recvmsg", "reads requests"),
        (libc::SYS_sendmmsg, "sendmmsg", "carries a descriptor"),
        #[cfg(target_arch = "x86_64")]
        (libc::SYS_poll, "poll", "waits"),
    ] {
        let e = start(seccomp(Seccomp::new().deny([libc::SYS_uname, nr])))
            .err()
            .unwrap_or_else(|| panic!("deny({name}) was accepted"));
        assert_eq!(sandbox_layer(&e), fdserver::sandbox::Layer::Seccomp);
        let text = e.to_string();
        assert!(text.contains(&format!("`{name}`")), "{text}");
        assert!(text.contains(why), "{text}");
        assert!(text.contains("remove it from `Seccomp::deny`"), "{text}");
    }
}

#[test]
fn a_server_that_cannot_send_ready_fails_start_saying_why() {
    let _wd = watchdog(
        "a_server_that_cannot_send_ready_fails_start_saying_why",
        SECS(30),
    );
    // The server's own filter, installed in initialize_server, refuses the runtime's sends
    // (`send` for a message alone, `sendmsg` with descriptors): "ready" cannot go, but the
    // reason still reaches `start` (written with plain `write`).
    let jail = Jail {
        deny_in_init: vec![libc::SYS_sendmsg, libc::SYS_sendto],
        ..Jail::new(seccomp(Seccomp::new().preset(Preset::NoExec)))
    };
    let e = start_jail(jail).err().expect("start failed");
    let text = e.to_string();
    assert!(
        text.contains("could not send its \"ready\" message"),
        "{text}"
    );
    assert!(text.contains("Operation not permitted"), "{text}");
    assert!(text.contains("Seccomp::RUNTIME"), "{text}");
    // With `write` refused too, the server still fails, with a non-zero status (the reason
    // goes to its stderr). No report pipe: finalize_server writes nothing.
    let mut jail = Jail {
        deny_in_init: vec![libc::SYS_sendmsg, libc::SYS_sendto, libc::SYS_write],
        ..Jail::new(seccomp(Seccomp::new().preset(Preset::NoExec)))
    };
    match fdserver::Builder::new()
        .start(&mut jail)
        .expect_err("start failed")
    {
        Error::ServerExited(status) => assert_eq!(status.code(), Some(1), "{status}"),
        other => panic!("expected the server to exit with status 1, got {other:?}"),
    }
}

/// Reads everything from `fd` with plain `read` calls (std's `File::read_to_string` would `statx`
/// and `lseek` first, which the strict server's allow list does not have).
fn read_all(fd: &impl AsRawFd) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // SAFETY: reads at most `chunk.len()` bytes into `chunk` from a descriptor the caller
        // keeps open.
        let n = unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
        match n {
            0 => return Ok(out),
            n if n > 0 => out.extend_from_slice(&chunk[..n as usize]),
            _ => return Err(io::Error::last_os_error()),
        }
    }
}

/// A typed server whose sandbox allows fdserver's runtime calls (`Seccomp::RUNTIME`) and
/// nothing else, and kills the server on any other call. Its handlers make no system call of
/// their own but `read`, `write` and `close`, so whatever kills it is the runtime's: the typed
/// reply paths with a descriptor (one `sendmsg` on the default record pair, one `sendmmsg` on a
/// stream pair: see `the_runtime_survives_an_allow_list_that_kills_on_a_stream_pair`), alone
/// and with a value large enough to go
/// as `ok_scalar`; descriptors received as `File` and `OwnedFd`; large replies and arguments;
/// lists; io errors; a declared signal; finalize.
#[derive(Debug, Default)]
struct Strict {
    /// Opened by `initialize` (before the sandbox): what `give*` hand out.
    files: Vec<File>,
    /// A pipe kept open in the server: the signal handler writes `S`, finalize `F`.
    report: RawFd,
}

#[fdserver::fdserver]
impl Strict {
    fn give(&mut self) -> io::Result<File> {
        self.files
            .pop()
            .ok_or_else(|| io::Error::other("no file left"))
    }

    fn give_owned(&mut self) -> io::Result<OwnedFd> {
        self.give().map(OwnedFd::from)
    }

    fn give_with(&mut self, n: usize) -> io::Result<(String, File)> {
        Ok(("y".repeat(n), self.give()?))
    }

    fn take(&mut self, input: File) -> io::Result<Vec<u8>> {
        read_all(&input)
    }

    fn take_owned(&mut self, input: OwnedFd, tag: &str) -> io::Result<String> {
        Ok(format!(
            "{tag}:{}",
            String::from_utf8_lossy(&read_all(&input)?)
        ))
    }

    fn big(&mut self, n: usize) -> String {
        "x".repeat(n)
    }

    fn blob(&mut self, data: &[u8]) -> usize {
        data.len()
    }

    fn list(&mut self, items: Vec<String>) -> Vec<String> {
        items
    }

    fn missing(&mut self) -> io::Result<File> {
        Err(io::Error::from_raw_os_error(libc::ENOENT))
    }

    #[fdserver(signal = "SIGUSR1")]
    fn usr1(&mut self) {
        write_raw(self.report, b"S");
    }

    #[fdserver(initialize)]
    fn open_files(&mut self) -> Result<(), fdserver::BoxError> {
        for _ in 0..8 {
            self.files.push(File::open("/proc/self/status")?);
        }
        Ok(())
    }

    #[fdserver(finalize)]
    fn done(&mut self) {
        write_raw(self.report, b"F");
    }

    #[fdserver(sandbox)]
    fn strict(&self) -> Sandbox {
        Sandbox::new().seccomp(
            Seccomp::new()
                .allow_only(Vec::<Syscall>::new())
                .on_violation(Violation::Kill),
        )
    }
}

/// The server's `/proc/self/status`, read through a descriptor it handed over.
fn status_of(f: impl Into<OwnedFd>) -> String {
    String::from_utf8(read_all(&f.into()).unwrap()).unwrap()
}

#[test]
fn the_typed_api_works_under_an_allow_list_of_nothing_that_kills() {
    let _wd = watchdog(
        "the_typed_api_works_under_an_allow_list_of_nothing_that_kills",
        SECS(30),
    );
    let (report, wr) = pipe();
    let mut server = Strict {
        report: wr.as_raw_fd(),
        ..Strict::default()
    };
    let mut c = fdserver::Builder::new()
        .keep_fd(&wr)
        .start(&mut server)
        .unwrap();
    drop(wr);
    let pid = c.pid();
    let report_of = c.handle().sandbox().unwrap().seccomp.clone().unwrap();
    assert_eq!(report_of.violation, Violation::Kill);
    // A descriptor as the whole result: the runtime's reply is one system call. The file is the
    // server's own status, which shows its filter.
    let status = status_of(c.give().unwrap());
    assert!(status.contains(&format!("Pid:\t{pid}\n")), "{status}");
    assert!(status.contains("Seccomp:\t2\n"), "{status}");
    status_of(c.give_owned().unwrap());
    // With a small value, then with one that makes the reply go as `ok_scalar`.
    let (s, f) = c.give_with(10).unwrap();
    assert_eq!(s, "y".repeat(10));
    status_of(f);
    let (s, f) = c.give_with(1 << 20).unwrap();
    assert_eq!(s.len(), 1 << 20);
    status_of(f);
    // Descriptors to the server.
    let (rd, mut w) = pipe().map_pair();
    w.write_all(b"to the server").unwrap();
    drop(w);
    assert_eq!(c.take(File::from(rd)).unwrap(), b"to the server");
    let (rd, mut w) = pipe().map_pair();
    w.write_all(b"owned").unwrap();
    drop(w);
    assert_eq!(c.take_owned(rd, "tag").unwrap(), "tag:owned");
    // Large values both ways, lists, an error.
    assert_eq!(c.big(3 << 20).unwrap().len(), 3 << 20);
    assert_eq!(c.blob(&vec![7; 5 << 20]).unwrap(), 5 << 20);
    let items: Vec<String> = (0..10_000).map(|i| i.to_string()).collect();
    assert_eq!(c.list(&items).unwrap(), items);
    let e = c.missing().unwrap_err();
    assert_eq!(io::Error::from(e).raw_os_error(), Some(libc::ENOENT));
    // A declared signal, then more calls.
    c.signal(Signal::SIGUSR1).unwrap();
    assert_eq!(read_n(report.as_fd(), 1), b"S");
    status_of(c.give().unwrap());
    // Stop: end of stream, finalize, exit 0.
    let stopped = c.stop().unwrap();
    assert!(stopped.status.success(), "{stopped}");
    assert_eq!(read_n(report.as_fd(), 1), b"F");
}

/// A pipe as (read end, write end as a `File`).
trait MapPair {
    fn map_pair(self) -> (OwnedFd, File);
}

impl MapPair for (OwnedFd, OwnedFd) {
    fn map_pair(self) -> (OwnedFd, File) {
        (self.0, File::from(self.1))
    }
}

/// A typed server whose own filter (installed in `initialize_server`, outside fdserver's
/// sandbox) refuses what the runtime's reply with a descriptor uses: `sendmsg` on the default
/// `SOCK_SEQPACKET` pair (the reply and its descriptor are one record), `sendmmsg` on a stream
/// pair. Replies without a descriptor (`send`) still go out.
struct RefusesReplies;

#[fdserver::fdserver]
impl RefusesReplies {
    #[fdserver(initialize)]
    fn init(&mut self) -> io::Result<()> {
        sandbox_common::deny_on_this_thread(&[libc::SYS_sendmmsg, libc::SYS_sendmsg])
    }

    fn give(&mut self) -> io::Result<File> {
        File::open("/dev/null")
    }

    fn ping(&mut self) -> u32 {
        7
    }
}

/// Review F7: a reply the runtime cannot send (a filter refusing its `sendmmsg`) is reported as
/// the runtime's failure, pointing at the filter, not as the handler's own `io` error (which
/// read as though its `open` had been refused). The server keeps serving (nothing of the reply
/// went out).
#[test]
fn a_reply_the_runtime_cannot_send_says_so() {
    let _wd = watchdog("a_reply_the_runtime_cannot_send_says_so", SECS(30));
    let mut c = RefusesReplies.start().expect("start");
    let e = c.give().unwrap_err();
    let remote = e.as_remote().unwrap_or_else(|| panic!("{e:?}"));
    assert_eq!(remote.kind(), &fdserver::RemoteErrorKind::Failed, "{e}");
    let text = e.to_string();
    assert!(
        text.contains(
            "give: the handler returned, but the server runtime could not send its reply"
        ),
        "{text}"
    );
    assert!(text.contains("Operation not permitted"), "{text}");
    assert!(text.contains("seccomp filter"), "{text}");
    assert!(text.contains("Seccomp::RUNTIME"), "{text}");
    assert_eq!(c.ping().unwrap(), 7);
    c.stop().unwrap();
}
