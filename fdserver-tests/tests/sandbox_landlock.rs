//! The Landlock layer (issue 15, item 4): read-only and read-write path sets, everything else
//! denied with EACCES, the signal and abstract-socket scopes, the ABI reported; descriptors the
//! server holds or receives keep working.

mod sandbox_common;

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

use fdserver::sandbox::{Landlock, Layer, Sandbox};
use fdserver_tests::{watchdog, SECS};
use sandbox_common::{sandbox_layer, start, try_errno, TempDir};

fn landlock(l: Landlock) -> Sandbox {
    Sandbox::new().landlock(l)
}

#[test]
fn no_rules_means_no_filesystem_at_all() {
    let _wd = watchdog("no_rules_means_no_filesystem_at_all", SECS(30));
    let dir = TempDir::new("nofs");
    std::fs::write(dir.path("existing"), b"x").unwrap();
    let mut s = start(landlock(Landlock::new())).unwrap();
    let report = s.server.sandbox().unwrap().landlock.clone().unwrap();
    assert!(report.kernel_abi >= 6, "{report}");
    assert!(report.fully_enforced);
    for path in [
        "/etc/passwd",
        "/",
        "/proc/self/status",
        &dir.path("existing"),
    ] {
        assert_eq!(
            try_errno(&mut s.server, &["open", path]),
            libc::EACCES,
            "{path}"
        );
    }
    assert_eq!(
        try_errno(&mut s.server, &["create", &dir.path("new")]),
        libc::EACCES
    );
    assert!(!std::path::Path::new(&dir.path("new")).exists());
    // Executing needs the file to be readable and executable under the rules.
    assert_eq!(try_errno(&mut s.server, &["exec"]), libc::EACCES);
    // Descriptors passed in and out are not paths: they keep working.
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn read_only_and_read_write_paths() {
    let _wd = watchdog("read_only_and_read_write_paths", SECS(30));
    let ro = TempDir::new("ro");
    let rw = TempDir::new("rw");
    let other = TempDir::new("other");
    std::fs::write(ro.path("data"), b"x").unwrap();
    std::fs::write(other.path("data"), b"x").unwrap();
    let single = TempDir::new("single");
    std::fs::write(single.path("allowed"), b"x").unwrap();
    std::fs::write(single.path("sibling"), b"x").unwrap();
    let mut s = start(landlock(
        Landlock::new()
            .read_only(&ro.0)
            .read_write(&rw.0)
            .read_only(single.0.join("allowed")),
    ))
    .unwrap();
    let sv = &mut s.server;
    // Read-only: read, but not create or truncate.
    assert_eq!(try_errno(sv, &["open", &ro.path("data")]), 0);
    assert_eq!(try_errno(sv, &["open", ro.0.to_str().unwrap()]), 0);
    assert_eq!(try_errno(sv, &["create", &ro.path("data")]), libc::EACCES);
    assert_eq!(try_errno(sv, &["create", &ro.path("new")]), libc::EACCES);
    // Read-write: create, write, read back.
    assert_eq!(try_errno(sv, &["create", &rw.path("new")]), 0);
    assert_eq!(try_errno(sv, &["grow", &rw.path("grown"), "100"]), 0);
    assert_eq!(std::fs::metadata(rw.path("grown")).unwrap().len(), 100);
    assert_eq!(try_errno(sv, &["open", &rw.path("new")]), 0);
    // A rule on a single file grants that file only.
    assert_eq!(try_errno(sv, &["open", &single.path("allowed")]), 0);
    assert_eq!(
        try_errno(sv, &["open", &single.path("sibling")]),
        libc::EACCES
    );
    // Everything else: denied.
    assert_eq!(try_errno(sv, &["open", &other.path("data")]), libc::EACCES);
    assert_eq!(try_errno(sv, &["open", "/etc/passwd"]), libc::EACCES);
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn signals_to_processes_outside_the_sandbox_are_denied() {
    let _wd = watchdog(
        "signals_to_processes_outside_the_sandbox_are_denied",
        SECS(30),
    );
    let mut s = start(landlock(Landlock::new())).unwrap();
    let me = std::process::id().to_string();
    let itself = s.server.pid().to_string();
    assert_eq!(try_errno(&mut s.server, &["kill", &me]), libc::EPERM);
    assert_eq!(try_errno(&mut s.server, &["kill", &itself]), 0);
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn abstract_sockets_outside_the_sandbox_are_out_of_reach() {
    let _wd = watchdog(
        "abstract_sockets_outside_the_sandbox_are_out_of_reach",
        SECS(30),
    );
    let name = format!("fdserver-sandbox-test-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(&name).unwrap();
    let _listener = UnixListener::bind_addr(&addr).unwrap();
    // Without the sandbox the server reaches it...
    let mut plain = start(Sandbox::new()).unwrap();
    assert_eq!(
        try_errno(&mut plain.server, &["connect_abstract", &name]),
        0
    );
    plain.stop_cleanly();
    // ...with it, not.
    let mut s = start(landlock(Landlock::new())).unwrap();
    assert_eq!(
        try_errno(&mut s.server, &["connect_abstract", &name]),
        libc::EPERM
    );
    s.stop_cleanly();
}

#[test]
fn a_missing_path_fails_start_before_the_fork() {
    let _wd = watchdog("a_missing_path_fails_start_before_the_fork", SECS(30));
    let e = start(landlock(
        Landlock::new().read_only("/nonexistent/fdserver-sandbox-test"),
    ))
    .err()
    .expect("start refused");
    assert_eq!(sandbox_layer(&e), Layer::Landlock);
    let text = e.to_string();
    assert!(
        text.contains("/nonexistent/fdserver-sandbox-test"),
        "{text}"
    );
    // Review F7: the path once, then why.
    assert_eq!(
        text.matches("/nonexistent/fdserver-sandbox-test").count(),
        1,
        "{text}"
    );
    assert!(text.contains("No such file or directory"), "{text}");
}

#[test]
fn best_effort_on_a_kernel_with_everything_is_fully_enforced() {
    let _wd = watchdog(
        "best_effort_on_a_kernel_with_everything_is_fully_enforced",
        SECS(30),
    );
    let report = landlock(Landlock::new().best_effort()).check().unwrap();
    let l = report.landlock.unwrap();
    assert!(l.fully_enforced, "{l}");
    assert!(l.not_enforced.is_empty());
    assert!(l.to_string().contains("fully enforced"), "{l}");
}
