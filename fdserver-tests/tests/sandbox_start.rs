//! How a sandbox is declared, applied and reported (issue 15): by the Builder, by the server,
//! by `#[fdserver(sandbox)]`, by `serve`; refused before the fork when it cannot work; a
//! failure in the server (a thread started in `initialize_server`) fails `start` naming the
//! layer and leaves no process behind; a sandboxed server ends when its client is gone.
//!
//! Every test takes `serial()` and checks this process's children, so they run one at a time.

mod sandbox_common;

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;

use fdserver::sandbox::{Identity, Landlock, Layer, Limit, Preset, Sandbox, Seccomp, Syscall};
use fdserver::{Builder, Channel, Error, Server};
use fdserver_tests::{
    child_pids, fork_child, pipe, read_n, serial, wait_child, wait_pid_gone, watchdog, SECS,
};
use sandbox_common::{sandbox_layer, start, start_jail, try_errno, Jail};

fn no_children() {
    // Dropped handles are stopped in the background (issue 13): wait for those first.
    assert!(fdserver::__private::wait_background_stops(SECS(30)));
    assert_eq!(child_pids(), Vec::<u32>::new(), "a server was left behind");
}

#[test]
fn a_thread_started_in_initialize_fails_start_and_nothing_is_left() {
    let _s = serial();
    let _wd = watchdog(
        "a_thread_started_in_initialize_fails_start_and_nothing_is_left",
        SECS(30),
    );
    let jail = Jail {
        sandbox: Some(Sandbox::new().landlock(Landlock::new())),
        thread_in_init: true,
        ..Jail::default()
    };
    let e = start_jail(jail).err().expect("start refused");
    assert_eq!(sandbox_layer(&e), Layer::Threads);
    assert!(e.to_string().contains("initialize_server"), "{e}");
    no_children();
    // Without the sandbox the same server starts.
    let s = start_jail(Jail {
        thread_in_init: true,
        ..Jail::default()
    })
    .unwrap();
    drop(s);
    no_children();
}

#[test]
fn a_description_that_cannot_work_fails_before_the_fork() {
    let _s = serial();
    let _wd = watchdog(
        "a_description_that_cannot_work_fails_before_the_fork",
        SECS(30),
    );
    let cases = [
        (
            Sandbox::new().landlock(Landlock::new().read_write("/nonexistent/fdserver")),
            Layer::Landlock,
        ),
        (
            Sandbox::new()
                .seccomp(Seccomp::new().preset(Preset::NoExec))
                .no_new_privs(false),
            Layer::NoNewPrivs,
        ),
        (
            Sandbox::new().identity(Identity::user("no-such-user-fdserver")),
            Layer::Identity,
        ),
        (
            Sandbox::new().limit(Limit::CpuTime(std::time::Duration::ZERO)),
            Layer::Limits,
        ),
    ];
    for (sandbox, layer) in cases {
        let e = start(sandbox.clone()).err().expect("refused");
        assert_eq!(sandbox_layer(&e), layer, "{sandbox:?}: {e}");
        // The message names the layer.
        assert!(e.to_string().contains(layer.as_str()), "{e}");
        no_children();
    }
}

#[test]
fn the_builder_or_the_server_declares_it_never_both() {
    let _s = serial();
    let _wd = watchdog("the_builder_or_the_server_declares_it_never_both", SECS(30));
    // Builder only.
    let mut plain = Jail::default();
    let mut h = Builder::new()
        .sandbox(Sandbox::new().landlock(Landlock::new()))
        .start(&mut plain)
        .unwrap();
    assert!(h.sandbox().unwrap().landlock.is_some());
    assert_eq!(try_errno(&mut h, &["open", "/"]), libc::EACCES);
    h.stop().unwrap();
    // Both: refused, nothing merged.
    let mut declared = Jail::new(Sandbox::new().landlock(Landlock::new()));
    let e = Builder::new()
        .sandbox(Sandbox::new().limit(Limit::OpenFiles(64)))
        .start(&mut declared)
        .expect_err("refused");
    assert_eq!(sandbox_layer(&e), Layer::Description);
    no_children();
    // No sandbox: no report.
    let h = Jail::default().start().unwrap();
    assert!(h.sandbox().is_none());
    h.stop().unwrap();
}

#[test]
fn no_descriptor_is_left_behind_in_the_parent() {
    let _s = serial();
    let _wd = watchdog("no_descriptor_is_left_behind_in_the_parent", SECS(30));
    let sandbox = || {
        Sandbox::new()
            .landlock(Landlock::new().read_only("/usr"))
            .seccomp(Seccomp::new().preset(Preset::NoExec))
    };
    // Warm up whatever std opens once, and let earlier tests' dropped servers be reaped.
    start(sandbox()).unwrap().stop_cleanly();
    assert!(fdserver::__private::wait_background_stops(SECS(30)));
    let before = fdserver_tests::open_fds();
    start(sandbox()).unwrap().stop_cleanly();
    // A start that fails in the server, and one refused before the fork.
    let failing = Jail {
        sandbox: Some(sandbox()),
        thread_in_init: true,
        ..Jail::default()
    };
    assert!(start_jail(failing).is_err());
    assert!(start(Sandbox::new().landlock(Landlock::new().read_only("/nonexistent/x"))).is_err());
    assert!(fdserver::__private::wait_background_stops(SECS(30)));
    assert_eq!(fdserver_tests::open_fds(), before);
    no_children();
}

#[test]
fn the_report_lists_the_layers_in_the_order_they_are_applied() {
    let _s = serial();
    let report = Sandbox::new()
        .seccomp(Seccomp::new().preset(Preset::NoExec))
        .landlock(Landlock::new())
        .limit(Limit::OpenFiles(100))
        .check()
        .unwrap();
    let text = report.to_string();
    let at = |what: &str| {
        text.find(what)
            .unwrap_or_else(|| panic!("{what:?} missing from:\n{text}"))
    };
    assert!(at("limit: open files 100") < at("no_new_privs: on"));
    assert!(at("no_new_privs") < at("capabilities: none"));
    assert!(at("capabilities") < at("landlock: kernel ABI"));
    assert!(at("landlock") < at("seccomp: deny list, presets: no exec"));
}

struct Parser {
    strict: bool,
}

#[fdserver::fdserver]
impl Parser {
    /// Reads a file by path: only possible without the sandbox.
    fn size_of(&mut self, path: PathBuf) -> std::io::Result<u64> {
        Ok(std::fs::read(path)?.len() as u64)
    }

    /// Parses what it is handed.
    fn words(&mut self, input: OwnedFd) -> std::io::Result<u64> {
        let mut text = String::new();
        std::fs::File::from(input).read_to_string(&mut text)?;
        Ok(text.split_whitespace().count() as u64)
    }

    #[fdserver(sandbox)]
    fn sandbox(&self) -> Option<Sandbox> {
        self.strict.then(|| {
            Sandbox::new()
                .landlock(Landlock::new())
                .seccomp(Seccomp::new().preset(Preset::NoNetwork))
        })
    }
}

#[test]
fn a_macro_server_declares_its_sandbox_with_a_method() {
    let _s = serial();
    let _wd = watchdog(
        "a_macro_server_declares_its_sandbox_with_a_method",
        SECS(30),
    );
    let feed = |text: &[u8]| {
        let (rd, wr) = pipe();
        fdserver_tests::write_raw(wr.as_raw_fd(), text);
        rd
    };
    let mut open = Parser { strict: false }.start().unwrap();
    assert!(open.handle().sandbox().is_none());
    assert!(open.size_of("/etc/passwd").is_ok());
    open.stop().unwrap();

    let mut strict = Parser { strict: true }.start().unwrap();
    assert!(strict.handle().sandbox().unwrap().landlock.is_some());
    let e = strict.size_of("/etc/passwd").unwrap_err();
    assert!(e.to_string().contains("Permission denied"), "{e}");
    assert_eq!(strict.words(feed(b"three small words")).unwrap(), 3);
    strict.stop().unwrap();
    no_children();
}

#[test]
fn serve_sandboxes_the_calling_process_after_initialize() {
    let _s = serial();
    let _wd = watchdog(
        "serve_sandboxes_the_calling_process_after_initialize",
        SECS(30),
    );
    let (mine, theirs) = Channel::pair().unwrap();
    let keep = [theirs.as_raw_fd()];
    // The forked test child has one thread, as serve's sandbox requires.
    let pid = fork_child(&keep, move || {
        let mut jail = Jail::new(Sandbox::new().landlock(Landlock::new()));
        match fdserver::serve(&mut jail, theirs) {
            Ok(end) => end.exit_code(),
            Err(e) => {
                eprintln!("serve: {e}");
                10
            }
        }
    });
    let mut ch = mine;
    ch.write_array(["open", "/"]).unwrap();
    assert_eq!(
        ch.read_strings().unwrap().unwrap(),
        ["ok", &libc::EACCES.to_string()]
    );
    drop(ch);
    assert_eq!(wait_child(pid).code(), Some(0));

    // With a second thread, serve refuses and says why.
    let (mine, theirs) = Channel::pair().unwrap();
    let keep = [theirs.as_raw_fd()];
    let pid = fork_child(&keep, move || {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        let mut jail = Jail::new(Sandbox::new().landlock(Landlock::new()));
        let r = fdserver::serve(&mut jail, theirs);
        drop(tx);
        let _ = other.join();
        match r {
            Err(Error::Sandbox(e)) if e.layer() == Layer::Threads => 0,
            _ => 1,
        }
    });
    drop(mine);
    assert_eq!(wait_child(pid).code(), Some(0));
    no_children();
}

#[test]
fn a_sandboxed_server_ends_when_its_client_is_killed() {
    let _s = serial();
    let _wd = watchdog(
        "a_sandboxed_server_ends_when_its_client_is_killed",
        SECS(30),
    );
    // A client process starts a fully sandboxed server, reports its pid, and is SIGKILLed.
    let (rd, wr) = pipe();
    let client = fork_child(&[wr.as_raw_fd()], || {
        let s = start(
            Sandbox::new()
                .landlock(Landlock::new())
                .seccomp(
                    Seccomp::new()
                        .preset(Preset::NoNetwork)
                        .preset(Preset::NoExec)
                        .preset(Preset::NoNewProcesses),
                )
                .limit(Limit::OpenFiles(64)),
        )
        .unwrap();
        fdserver_tests::write_raw(wr.as_raw_fd(), &s.server.pid().to_le_bytes());
        // Wait to be killed.
        loop {
            // SAFETY: pause only waits for a signal.
            unsafe { libc::pause() };
        }
    });
    let server = u32::from_le_bytes(read_n(rd.as_fd(), 4).try_into().unwrap());
    // SAFETY: `client` is our unreaped child.
    unsafe { libc::kill(client, libc::SIGKILL) };
    let _ = wait_child(client);
    // The server, idle in its loop, sees end of stream and exits (it is not our child, so it
    // is watched through a pidfd).
    assert!(
        wait_pid_gone(server, SECS(10)),
        "the server outlived its client"
    );
    no_children();
}

#[test]
fn a_sandboxed_server_stuck_in_a_handler_ends_when_its_client_is_killed() {
    let _s = serial();
    let _wd = watchdog(
        "a_sandboxed_server_stuck_in_a_handler_ends_when_its_client_is_killed",
        SECS(60),
    );
    // The CPU limit bounds the spin should the server outlive this test. Under the allow list
    // (whose violations fail with EPERM rather than kill), a call of the hang-up watch missing
    // from Seccomp::RUNTIME would leave the server running.
    let cpu = Limit::CpuTime(std::time::Duration::from_secs(20));
    for sandbox in [
        Sandbox::new().landlock(Landlock::new()).limit(cpu),
        Sandbox::new()
            .seccomp(Seccomp::new().allow_only(Vec::<Syscall>::new()))
            .limit(cpu),
    ] {
        let (rd, wr) = pipe();
        let client = fork_child(&[wr.as_raw_fd()], || {
            let mut jail = Jail::new(sandbox);
            let secs = std::time::Duration::from_secs(1);
            let mut server = Builder::new()
                .stop_timeouts(secs, secs)
                .start(&mut jail)
                .unwrap();
            // Once the server replied, it spins: only then may the test kill this client.
            server.call(["spin"]).unwrap();
            fdserver_tests::write_raw(wr.as_raw_fd(), &server.pid().to_le_bytes());
            loop {
                // SAFETY: pause only waits for a signal.
                unsafe { libc::pause() };
            }
        });
        let server = u32::from_le_bytes(read_n(rd.as_fd(), 4).try_into().unwrap());
        // SAFETY: `client` is our unreaped child.
        unsafe { libc::kill(client, libc::SIGKILL) };
        let _ = wait_child(client);
        // The server's hang-up watch ends it: SIGTERM after 1 s (the spinning handler goes
        // on), SIGKILL 1 s later.
        assert!(
            wait_pid_gone(server, SECS(10)),
            "the server outlived its client"
        );
    }
    no_children();
}
