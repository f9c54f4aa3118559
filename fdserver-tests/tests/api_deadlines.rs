//! Issue 13, item 6: calls have a deadline by default, disabling it is explicit, and every
//! error says whether its server must be replaced (`needs_restart`).

use std::time::Duration;

use fdserver::{Builder, CallError, Error, RemoteErrorKind, Spawn, DEFAULT_CALL_TIMEOUT};
use fdserver_tests::greeter::{Greeter, GreeterClient};
use fdserver_tests::{watchdog, Probe, SECS};

#[test]
fn started_and_spawned_servers_have_the_default_deadline_unless_disabled() {
    let _wd = watchdog("default_deadline", SECS(60));
    let mut forked = Greeter::default().start().unwrap();
    assert_eq!(forked.channel().read_timeout(), Some(DEFAULT_CALL_TIMEOUT));
    assert_eq!(forked.channel().write_timeout(), Some(DEFAULT_CALL_TIMEOUT));
    let mut untimed: GreeterClient = Builder::new()
        .timeout(None)
        .start(&mut Greeter::default())
        .unwrap();
    assert_eq!(untimed.channel().read_timeout(), None);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_typed-server"));
    command.args(["--serve-fd", "3"]);
    let mut spawned: GreeterClient = Spawn::new(command).start().unwrap();
    assert_eq!(spawned.channel().read_timeout(), Some(DEFAULT_CALL_TIMEOUT));
    assert_eq!(DEFAULT_CALL_TIMEOUT, SECS(30));
    for c in [forked, untimed, spawned] {
        c.stop().unwrap();
    }
}

/// The errors a server that keeps serving sends do not ask for a restart; the ones after which
/// the connection is unusable do, each produced by a real server.
#[test]
fn needs_restart_tells_which_errors_leave_the_server_unusable() {
    let _wd = watchdog("needs_restart", SECS(60));
    // The default deadline while the server answers: a panic's report (with RUST_BACKTRACE set,
    // a symbolised backtrace) can take longer than the short deadline below on a loaded machine.
    let mut s = Builder::new().start_handle(&mut Probe::default()).unwrap();
    // Error replies: the server keeps serving.
    let e = s.call(["fail", "disk full"]).unwrap_err();
    assert_eq!(e.as_remote().unwrap().kind(), &RemoteErrorKind::Failed);
    assert!(!e.needs_restart(), "{e}");
    let e = s.call(["nope"]).unwrap_err();
    assert!(!e.needs_restart(), "{e}");
    let e = s.call(["panic"]).unwrap_err();
    assert_eq!(e.as_remote().unwrap().kind(), &RemoteErrorKind::Panicked);
    assert!(!e.needs_restart(), "{e}");
    assert_eq!(s.call(["echo", "still"]).unwrap(), ["still"]);
    // Refused before anything was sent.
    let e = s.call(["echo", "a\0b"]).unwrap_err();
    assert!(matches!(e, Error::ElementContainsNul { .. }), "{e}");
    assert!(!e.needs_restart());
    // A call that times out (the server swallows it without replying): a reply may still
    // come, so the connection is done.
    assert_eq!(s.call(["wait_for_next"]).unwrap(), ["waiting"]);
    s.set_timeout(Some(Duration::from_millis(300)));
    let e = s.call(["echo", "swallowed"]).unwrap_err();
    assert!(matches!(e, Error::TimedOut { .. }), "{e}");
    assert!(e.needs_restart());
    let e = s.call(["echo"]).unwrap_err();
    assert!(matches!(e, Error::Broken { .. }), "{e}");
    assert!(e.needs_restart());
    // Review F7: the text says what happened (not "mid-message") and what to do.
    assert!(
        matches!(&e, Error::Broken { cause: fdserver::BrokenCause::LateReply { call: Some(c) }, .. } if c == "echo"),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("earlier call (\"echo\") timed out before its reply arrived"),
        "{text}"
    );
    assert!(text.contains("would answer the next call"), "{text}");
    assert!(
        text.contains("stop this server and start a new one"),
        "{text}"
    );
    assert!(text.contains("a Pool replaces it by itself"), "{text}");
    assert!(!text.contains("mid-message"), "{text}");
    s.stop().unwrap();

    // A server that died.
    let mut s = Builder::new().start_handle(&mut Probe::default()).unwrap();
    let e = s.call(["exit", "3"]).unwrap_err();
    assert!(matches!(e, Error::ServerExited(_)), "{e}");
    assert!(e.needs_restart());
    s.stop().unwrap();

    // A typed client: the handler's own error never asks for a restart.
    let mut g = Greeter::default().start().unwrap();
    let e = g
        .file_size(std::path::Path::new("/nonexistent/x"))
        .unwrap_err();
    assert!(!e.needs_restart(), "{e}");
    let typed: CallError<String> = CallError::Handler("x".into());
    assert!(!typed.needs_restart());
    let e = g.exit(4).unwrap_err();
    assert!(e.needs_restart(), "{e}");
}
