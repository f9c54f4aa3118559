//! The generated typed client on any peer (issue 14, item 6): over a bare `Channel` to a peer
//! written by hand the way a Passenger `MessageChannel` program speaks, to `serve` on a thread,
//! and to a server *program* started with `fdserver::Spawn` (exec, not fork) with the same
//! stop/kill/reap guarantees as a forked server.
//!
//! Every test takes `serial()`: some count this process's descriptors and children.

use std::io;
use std::process::Command;

use fdserver::{Channel, Error, MessageBuf, RemoteErrorKind, Shutdown, Signal, Spawn};
use fdserver_tests::greeter::{Greeter, GreeterClient};
use fdserver_tests::{
    fork_child, fork_peer, is_unreaped_child, open_fds, pipe, process_exists, read_n, serial,
    wait_child, wait_pid_gone, watchdog, SECS,
};

const SERVER: &str = env!("CARGO_BIN_EXE_typed-server");

/// What a program started by this process inherits besides what it is given: the descriptors
/// this process itself inherited without close-on-exec (from whatever ran the tests).
fn inherited_by_children() -> Vec<i32> {
    open_fds()
        .into_iter()
        // SAFETY: F_GETFD only queries the descriptor table.
        .filter(|&fd| fd > 2 && unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC == 0)
        .collect()
}

/// The descriptors a spawned server should have: 0, 1, 2, its socket at `fd`, and what every
/// child of this process inherits.
fn expected_fds(fd: i32) -> Vec<i32> {
    let mut v = vec![0, 1, 2, fd];
    v.extend(inherited_by_children());
    v.sort_unstable();
    v.dedup();
    v
}

fn spawn(fd: i32) -> GreeterClient {
    let mut command = Command::new(SERVER);
    command.args(["--serve-fd", &fd.to_string()]);
    Spawn::new(command)
        .fd(fd)
        .stop_timeouts(SECS(5), SECS(5))
        .start()
        .expect("spawn typed-server")
}

/// A peer that is not fdserver: it reads requests and writes replies with raw channel calls,
/// as a Ruby program using Passenger's `MessageChannel` would (`read`, `write`, `write_scalar`).
fn passenger_peer(mut ch: Channel) -> i32 {
    let mut buf = MessageBuf::new();
    while let Ok(true) = ch.read_into(&mut buf) {
        let msg = buf.message();
        let args: Vec<String> = msg
            .args()
            .map(|a| String::from_utf8_lossy(a).into())
            .collect();
        let r = match (msg.name(), args.as_slice()) {
            (b"hello", [first, last]) => {
                ch.write_array(["ok", &format!("Hello {first} {last}, how are you?"), "1234"])
            }
            // A large reply, as the protocol says: ["ok_scalar"] then the body as a scalar.
            (b"big", [c, n]) => {
                let n: usize = n.parse().unwrap();
                let mut body = b"ok\0".to_vec();
                body.extend(c.repeat(n).bytes());
                body.push(0);
                ch.write_array(["ok_scalar"])
                    .and_then(|()| ch.write_scalar(&body))
            }
            // An io error reply with its kind and errno, as a C++ peer would send one.
            (b"size", [_]) => ch.write_array([
                "error",
                "io",
                "Permission denied (os error 13)",
                "permission_denied",
                "13",
            ]),
            // A list reply: one scalar, each item followed by NUL.
            (b"fds", []) => ch
                .write_array(["ok"])
                .and_then(|()| ch.write_scalar(b"0\x001\x002\x00")),
            (b"status", []) => ch.write_array(["ok", "not a number", "1"]),
            (name, _) => ch.write_array([
                "error",
                "unknown_message",
                &format!("no {:?}", String::from_utf8_lossy(name)),
            ]),
        };
        if r.is_err() {
            return 1;
        }
    }
    0
}

#[test]
fn typed_client_on_a_hand_written_channel_peer() {
    let _serial = serial();
    let _wd = watchdog("typed_client_on_a_hand_written_channel_peer", SECS(30));
    let (mine, pid) = fork_peer(&[], passenger_peer);
    let mut client = GreeterClient::from(mine);

    assert_eq!(
        client.hello("Joe", "Dalton").unwrap(),
        ("Hello Joe Dalton, how are you?".to_string(), 1234)
    );
    let big = client.big('x', 1 << 20).unwrap();
    assert_eq!(big.len(), 1 << 20);
    assert!(big.bytes().all(|b| b == b'x'));
    assert_eq!(client.fds().unwrap(), [0, 1, 2]);

    let e = client.file_size("/etc/shadow").unwrap_err();
    assert_eq!(e.as_remote().unwrap().kind(), &RemoteErrorKind::Io);
    let e = io::Error::from(e);
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));

    // A reply that does not decode as the stub expects is a protocol error, and the channel
    // stays in step.
    let e = client.stats().unwrap_err();
    assert!(
        matches!(&e, Error::Protocol(fdserver::ProtocolError::BadReply(m)) if m.contains("status: value 1")),
        "{e:?}"
    );
    assert_eq!(client.hello("a", "b").unwrap().1, 1234);

    // The client gives its channel back; closing it ends the peer.
    let channel: Channel = client.into_connection();
    drop(channel);
    assert!(wait_child(pid).success());
}

#[test]
fn typed_client_on_serve_in_a_thread() {
    let _serial = serial();
    let _wd = watchdog("typed_client_on_serve_in_a_thread", SECS(30));
    let (client_end, server_end) = Channel::pair().unwrap();
    let server = std::thread::spawn(move || {
        let mut greeter = Greeter::default();
        fdserver::serve(&mut greeter, server_end).map(|end| (end, greeter))
    });
    let mut client = GreeterClient::from(client_end);
    client.set_timeout(Some(SECS(10)));
    assert_eq!(client.hello("Joe", "Dalton").unwrap().1, 1234);
    let (calls, pid) = client.stats().unwrap();
    assert_eq!((calls, pid), (1, std::process::id()));
    assert_eq!(client.big('é', 40_000).unwrap().chars().count(), 40_000);
    drop(client);
    let (end, greeter) = server.join().unwrap().unwrap();
    assert_eq!(end, fdserver::LoopEnd::Disconnected);
    assert!(format!("{greeter:?}").contains("calls: 1"));
}

#[test]
fn exec_spawned_server_is_driven_and_stopped_like_a_forked_one() {
    let _serial = serial();
    let _wd = watchdog("exec_spawned_server", SECS(60));
    let fds_before = open_fds();
    let mut client = spawn(3);
    let pid = client.pid();
    assert_ne!(pid, std::process::id());

    assert_eq!(
        client.hello("Joe", "Dalton").unwrap(),
        ("Hello Joe Dalton, how are you?".to_string(), 1234)
    );
    // It is the program we started, not a fork of us...
    assert_eq!(client.stats().unwrap(), (1, pid));
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, std::path::Path::new(SERVER).canonicalize().unwrap());
    // ...and it inherited the standard streams and its socket, nothing else.
    assert_eq!(client.fds().unwrap(), expected_fds(3));

    assert_eq!(client.big('z', 1 << 20).unwrap().len(), 1 << 20);
    let e = io::Error::from(client.file_size("/definitely/not/here").unwrap_err());
    assert_eq!(
        (e.kind(), e.raw_os_error()),
        (io::ErrorKind::NotFound, Some(libc::ENOENT))
    );

    let stopped = client.stop().unwrap();
    assert_eq!(stopped.how, Shutdown::Graceful, "{stopped}");
    assert_eq!(stopped.status.code(), Some(0));
    assert!(!is_unreaped_child(pid), "the server was not reaped");
    assert!(!process_exists(pid), "the server is still there");
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
}

#[test]
fn exec_spawned_server_on_another_fd_killed_and_dropped() {
    let _serial = serial();
    let _wd = watchdog("exec_spawned_killed", SECS(60));
    let mut client = spawn(7);
    assert_eq!(client.fds().unwrap(), expected_fds(7));

    // Killed: the next call says how it ended, within milliseconds; stop reaps it.
    client.signal(Signal::SIGKILL).unwrap();
    let e = client.hello("a", "b").unwrap_err();
    assert!(
        matches!(&e, Error::ServerExited(s) if std::os::unix::process::ExitStatusExt::signal(s) == Some(9)),
        "{e:?}"
    );
    let pid = client.pid();
    assert_eq!(client.stop().unwrap().how, Shutdown::AlreadyExited);
    assert!(!is_unreaped_child(pid));

    // Dropped: stopped and reaped as well.
    let client = spawn(3);
    let pid = client.pid();
    drop(client);
    // Stopped in the background (issue 13).
    assert!(fdserver::__private::wait_background_stops(
        std::time::Duration::from_secs(20)
    ));
    assert!(!is_unreaped_child(pid));
    assert!(!process_exists(pid));
}

#[test]
fn exec_spawn_failures_are_clear() {
    let _serial = serial();
    let _wd = watchdog("exec_spawn_failures_are_clear", SECS(30));
    let fds_before = open_fds();

    let e = Spawn::new(Command::new("/definitely/not/a/program"))
        .start_handle()
        .unwrap_err();
    assert!(
        matches!(&e, Error::Io(io) if io.kind() == io::ErrorKind::NotFound),
        "{e:?}"
    );
    // The text says which program could not be started (review F7).
    let text = e.to_string();
    assert!(
        text.contains("cannot start the server program \"/definitely/not/a/program\""),
        "{text}"
    );
    assert!(text.contains("No such file or directory"), "{text}");

    let e = Spawn::new(Command::new(SERVER))
        .fd(2)
        .start_handle()
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("descriptors 0, 1 and 2 are the standard streams"),
        "{e}"
    );

    // A program that exits before serving: the first call reports its status.
    let mut command = Command::new(SERVER);
    command.args(["--exit-at-once", "7"]);
    let mut client: GreeterClient = Spawn::new(command).start().unwrap();
    let e = client.hello("a", "b").unwrap_err();
    assert!(
        matches!(&e, Error::ServerExited(s) if s.code() == Some(7)),
        "{e:?}"
    );
    let pid = client.pid();
    drop(client);
    assert!(!is_unreaped_child(pid));
    assert_eq!(open_fds(), fds_before, "descriptors leaked");
}

/// A program that runs but never serves makes the first call wait for it; with a deadline
/// (as the `Spawn` docs advise) the call times out instead, and `stop` still ends and reaps it.
/// The handle knows nothing of a sandbox the program might apply itself.
#[test]
fn a_spawned_program_that_never_serves_times_out_with_a_deadline() {
    let _serial = serial();
    let _wd = watchdog(
        "a_spawned_program_that_never_serves_times_out_with_a_deadline",
        SECS(30),
    );
    let mut command = Command::new("sleep");
    command.arg("100");
    let ms = std::time::Duration::from_millis(200);
    let mut client: GreeterClient = Spawn::new(command)
        .timeout(Some(ms))
        .stop_timeouts(ms, ms)
        .start()
        .unwrap();
    assert!(client.handle().sandbox().is_none());
    let e = client.hello("a", "b").unwrap_err();
    assert!(matches!(&e, Error::TimedOut { .. }), "{e:?}");
    let pid = client.pid();
    let stopped = client.stop().unwrap();
    // `sleep` ignores its socket's end of stream; SIGTERM ends it.
    assert_eq!(stopped.how, Shutdown::Terminated, "{stopped}");
    assert!(!is_unreaped_child(pid));
}

/// `Command::spawn` reports a failed `exec` through a pipe it opens at the lowest free
/// descriptor; when that is the number the server's socket goes to, the child's `dup2` would
/// replace the pipe and the failure would read as success. `Spawn` keeps the number busy.
#[test]
fn a_failed_exec_is_reported_when_the_socket_goes_where_spawn_reports_it() {
    let _serial = serial();
    let _wd = watchdog("failed_exec_lowest_free_fd", SECS(30));
    // `Spawn` opens a socket pair (the two lowest free numbers), then `Command::spawn` its pipe
    // (the next two: read end, write end). The child writes an exec failure to the write end:
    // the fourth lowest free number.
    let fourth = {
        let probes: Vec<std::fs::File> = (0..4)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        std::os::fd::AsRawFd::as_raw_fd(&probes[3])
    }; // closed again
    assert!(fourth >= 6);
    let e = Spawn::new(Command::new("/definitely/not/a/program"))
        .fd(fourth)
        .start_handle()
        .unwrap_err();
    assert!(
        matches!(&e, Error::Io(io) if io.kind() == io::ErrorKind::NotFound),
        "{e:?}"
    );
}

/// Review F4: a spawned program stuck in a handler ends when its parent is SIGKILLed, on the
/// grace periods (here 0.2 s + 0.2 s), as a forked server does: `Spawn` asks the program's
/// `serve` for the hang-up watch. Before the fix the program lived on for good.
#[test]
fn a_spawned_server_stuck_in_a_handler_ends_when_its_parent_is_sigkilled() {
    let _serial = serial();
    let _wd = watchdog("spawned_server_parent_killed", SECS(60));
    let (r, w) = pipe();
    let w_raw = std::os::fd::AsRawFd::as_raw_fd(&w);
    let parent = fork_child(&[w_raw], move || {
        let mut command = Command::new(SERVER);
        command.args(["--serve-fd", "3"]);
        let Ok(mut client) = Spawn::new(command)
            .stop_timeouts(
                std::time::Duration::from_millis(200),
                std::time::Duration::from_millis(200),
            )
            .start::<GreeterClient>()
        else {
            return 1;
        };
        // Served: the program runs `serve` (and its watch) by now.
        if client.hello("a", "b").is_err() {
            return 2;
        }
        fdserver_tests::write_raw(w_raw, &client.pid().to_le_bytes());
        if client.channel().write_array(["hang"]).is_err() {
            return 3;
        }
        std::mem::forget(client);
        // SAFETY: this intermediate parent dies by SIGKILL, without stopping its server.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        4
    });
    drop(w);
    let pid = u32::from_le_bytes(read_n(std::os::fd::AsFd::as_fd(&r), 4).try_into().unwrap());
    let st = wait_child(parent);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "{st}"
    );
    let gone = wait_pid_gone(pid, SECS(20));
    if !gone {
        // SAFETY: kill takes integers; the program this test started (not reaped by anyone
        // but init, so the pid is its until it is gone).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(gone, "spawned server {pid} outlived its SIGKILLed parent");
}
