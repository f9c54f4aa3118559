//! The seccomp layer (issue 15, item 5): each preset denies what it says with EPERM while the
//! server keeps serving, passing descriptors and handling signals; an explicit deny list; an
//! allow list under which fdserver's own runtime still works; `Violation::Kill`.

mod sandbox_common;

use std::os::unix::process::ExitStatusExt;

use fdserver::sandbox::{Preset, Sandbox, Seccomp, Violation};
use fdserver::Error;
use fdserver_tests::{watchdog, SECS};
use sandbox_common::{start, start_jail, try_errno, Jail};

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
