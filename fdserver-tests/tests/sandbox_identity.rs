//! Identity, capabilities and no_new_privs (issue 15, items 1 and 2): the server runs as the
//! given user and groups and cannot switch back, holds no capability in any set, has
//! no_new_privs; an unprivileged parent gets a clear refusal for what needs root and a working
//! sandbox for the rest. Most tests need root and say so when skipped.

mod sandbox_common;

use std::os::unix::fs::PermissionsExt;

use fdserver::sandbox::{Identity, Landlock, Layer, Limit, Preset, Sandbox, Seccomp};
use fdserver_tests::{fork_child, wait_child, watchdog, SECS};
use sandbox_common::{root_or_skip, sandbox_layer, start, start_jail, try_errno, Jail, TempDir};

/// `["caps"]`: effective, permitted, inheritable, bounding count, ambient count, nnp.
fn caps(s: &mut fdserver::ServerHandle) -> Vec<String> {
    s.call(["caps"]).unwrap()
}

#[test]
fn identity_is_changed_and_cannot_be_undone() {
    if !root_or_skip("identity_is_changed_and_cannot_be_undone") {
        return;
    }
    let _wd = watchdog("identity_is_changed_and_cannot_be_undone", SECS(30));
    let mut s =
        start(Sandbox::new().identity(Identity::new(62_001, 62_002).groups([62_003, 62_004])))
            .unwrap();
    let report = s.server.sandbox().unwrap().clone();
    assert_eq!(
        report.identity,
        Some((62_001, 62_002, vec![62_003, 62_004]))
    );
    let ids = s.server.call(["ids"]).unwrap();
    assert_eq!(
        ids,
        ["62001 62001 62001", "62002 62002 62002", "62003,62004"]
    );
    // No way back: no saved root id, no CAP_SETUID/CAP_SETGID.
    assert_eq!(try_errno(&mut s.server, &["setuid", "0"]), libc::EPERM);
    assert_eq!(try_errno(&mut s.server, &["setgid", "0"]), libc::EPERM);
    assert_eq!(
        caps(&mut s.server),
        ["0", "0", "0", "0", "0", "1"],
        "effective, permitted, inheritable, bounding, ambient, no_new_privs"
    );
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn supplementary_groups_are_cleared_by_default() {
    if !root_or_skip("supplementary_groups_are_cleared_by_default") {
        return;
    }
    let _wd = watchdog("supplementary_groups_are_cleared_by_default", SECS(30));
    // Give the parent's copy of root some groups first, in a child of the test.
    let pid = fork_child(&[], || {
        let groups = [0, 4, 27];
        // SAFETY: sets this child's own groups.
        if unsafe { libc::setgroups(3, groups.as_ptr()) } != 0 {
            return 2;
        }
        let Ok(mut s) = start(Sandbox::new().identity(Identity::new(62_011, 62_011))) else {
            return 3;
        };
        let ids = s.server.call(["ids"]).unwrap();
        if ids != ["62011 62011 62011", "62011 62011 62011", ""] {
            eprintln!("unexpected ids {ids:?}");
            return 1;
        }
        s.stop_cleanly();
        0
    });
    assert_eq!(wait_child(pid).code(), Some(0));
}

#[test]
fn identity_by_user_name() {
    if !root_or_skip("identity_by_user_name") {
        return;
    }
    let _wd = watchdog("identity_by_user_name", SECS(30));
    let mut s = start(Sandbox::new().identity(Identity::user("nobody"))).unwrap();
    let (uid, gid, groups) = s.server.sandbox().unwrap().identity.clone().unwrap();
    assert_ne!(uid, 0);
    assert!(groups.is_empty());
    let ids = s.server.call(["ids"]).unwrap();
    assert_eq!(ids[0], format!("{uid} {uid} {uid}"));
    assert_eq!(ids[1], format!("{gid} {gid} {gid}"));
    s.stop_cleanly();

    let e = Sandbox::new()
        .identity(Identity::user("no-such-user-fdserver"))
        .check()
        .unwrap_err();
    assert_eq!(sandbox_layer(&e), Layer::Identity);
    assert!(e.to_string().contains("no-such-user-fdserver"), "{e}");
}

#[test]
fn a_root_server_without_identity_still_loses_every_capability() {
    if !root_or_skip("a_root_server_without_identity_still_loses_every_capability") {
        return;
    }
    let _wd = watchdog(
        "a_root_server_without_identity_still_loses_every_capability",
        SECS(30),
    );
    // A file owned by another user, readable by nobody else: root reads it only through
    // CAP_DAC_OVERRIDE.
    let dir = TempDir::new("caps");
    let secret = dir.path("secret");
    std::fs::write(&secret, b"x").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&secret, Some(62_021), Some(62_021)).unwrap();

    let mut plain = start(Sandbox::new()).unwrap();
    assert_eq!(try_errno(&mut plain.server, &["open", &secret]), 0);
    plain.stop_cleanly();

    let mut s = start(Sandbox::new().limit(Limit::OpenFiles(1024))).unwrap();
    assert!(s.server.sandbox().unwrap().bounding_set_cleared);
    assert_eq!(caps(&mut s.server), ["0", "0", "0", "0", "0", "1"]);
    assert_eq!(try_errno(&mut s.server, &["open", &secret]), libc::EACCES);
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn no_new_privs_can_be_turned_off_only_without_landlock_and_seccomp() {
    let _wd = watchdog(
        "no_new_privs_can_be_turned_off_only_without_landlock_and_seccomp",
        SECS(30),
    );
    if root_or_skip("no_new_privs_can_be_turned_off_only_without_landlock_and_seccomp") {
        let mut s = start(
            Sandbox::new()
                .limit(Limit::OpenFiles(1024))
                .no_new_privs(false),
        )
        .unwrap();
        assert!(!s.server.sandbox().unwrap().no_new_privs);
        assert_eq!(caps(&mut s.server)[5], "0");
        s.stop_cleanly();
    }
    for refused in [
        Sandbox::new().landlock(Landlock::new()).no_new_privs(false),
        Sandbox::new()
            .seccomp(Seccomp::new().preset(Preset::NoExec))
            .no_new_privs(false),
    ] {
        assert_eq!(
            sandbox_layer(&refused.check().unwrap_err()),
            Layer::NoNewPrivs
        );
    }
}

#[test]
fn the_parent_death_signal_survives_the_change_of_user() {
    if !root_or_skip("the_parent_death_signal_survives_the_change_of_user") {
        return;
    }
    let _wd = watchdog(
        "the_parent_death_signal_survives_the_change_of_user",
        SECS(30),
    );
    // The kernel clears it when the effective uid changes; the sandbox re-arms it.
    let mut s = start_jail(Jail {
        sandbox: Some(Sandbox::new().identity(Identity::new(62_031, 62_031))),
        death_signal: Some(libc::SIGTERM),
        ..Jail::default()
    })
    .unwrap();
    assert_eq!(
        s.server.call(["pdeathsig"]).unwrap(),
        [libc::SIGTERM.to_string()]
    );
    s.stop_cleanly();
}

/// Runs `f` in a child of the test that gave up root first; `f` returns its exit code.
fn as_unprivileged(f: impl FnOnce() -> i32) -> i32 {
    let pid = fork_child(&[], || {
        // SAFETY: plain integer arguments; this child is ours to change.
        let dropped = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(62_041, 62_041, 62_041) == 0
                && libc::setresuid(62_041, 62_041, 62_041) == 0
        };
        if !dropped {
            return 90;
        }
        f()
    });
    wait_child(pid).code().unwrap_or(-1)
}

#[test]
fn an_unprivileged_parent_is_refused_an_identity_before_the_fork() {
    if !root_or_skip("an_unprivileged_parent_is_refused_an_identity_before_the_fork") {
        return;
    }
    let _wd = watchdog(
        "an_unprivileged_parent_is_refused_an_identity_before_the_fork",
        SECS(30),
    );
    let code = as_unprivileged(|| {
        let e = start(Sandbox::new().identity(Identity::new(62_042, 62_042)))
            .err()
            .expect("refused");
        let ok = sandbox_layer(&e) == Layer::Identity && e.to_string().contains("CAP_SETUID");
        // Nothing was forked.
        let none = fdserver_tests::child_pids().is_empty();
        i32::from(!(ok && none))
    });
    assert_eq!(code, 0);
}

#[test]
fn an_unprivileged_parent_gets_landlock_seccomp_and_no_capabilities() {
    if !root_or_skip("an_unprivileged_parent_gets_landlock_seccomp_and_no_capabilities") {
        return;
    }
    let _wd = watchdog(
        "an_unprivileged_parent_gets_landlock_seccomp_and_no_capabilities",
        SECS(30),
    );
    let code = as_unprivileged(|| {
        let mut s = start(
            Sandbox::new()
                .landlock(Landlock::new())
                .seccomp(Seccomp::new().preset(Preset::NoExec)),
        )
        .unwrap();
        // The bounding set cannot be emptied without CAP_SETPCAP: kept, and reported.
        let report = s.server.sandbox().unwrap().clone();
        assert!(!report.bounding_set_cleared);
        assert!(report.to_string().contains("bounding set kept"), "{report}");
        let c = caps(&mut s.server);
        assert_eq!(&c[..3], ["0", "0", "0"]);
        assert_eq!(c[5], "1");
        assert_eq!(try_errno(&mut s.server, &["open", "/"]), libc::EACCES);
        assert_eq!(try_errno(&mut s.server, &["exec"]), libc::EPERM);
        s.assert_runtime_works();
        s.stop_cleanly();
        0
    });
    assert_eq!(code, 0);
}
