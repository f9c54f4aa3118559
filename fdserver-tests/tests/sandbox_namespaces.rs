//! Namespaces (issue 15, item 6): a fresh network namespace (no network, host abstract sockets
//! out of reach), a fresh IPC namespace, and a user namespace that lets an unprivileged parent
//! have both. Creating them needs root (or the user namespace); tests say so when skipped.

mod sandbox_common;

use std::net::TcpListener;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

use fdserver::sandbox::{Layer, Namespace, Sandbox};
use fdserver_tests::{fork_child, wait_child, watchdog, SECS};
use sandbox_common::{root_or_skip, sandbox_layer, start, try_errno};

#[test]
fn a_network_namespace_has_no_network() {
    if !root_or_skip("a_network_namespace_has_no_network") {
        return;
    }
    let _wd = watchdog("a_network_namespace_has_no_network", SECS(30));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let name = format!("fdserver-netns-test-{}", std::process::id());
    let _abstract =
        UnixListener::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();

    let mut plain = start(Sandbox::new()).unwrap();
    assert_eq!(try_errno(&mut plain.server, &["connect_tcp", &port]), 0);
    assert_eq!(
        try_errno(&mut plain.server, &["connect_abstract", &name]),
        0
    );
    plain.stop_cleanly();

    let mut s = start(Sandbox::new().namespace(Namespace::Network)).unwrap();
    // Only a loopback interface, down: the host's 127.0.0.1 is unreachable.
    assert_eq!(
        try_errno(&mut s.server, &["connect_tcp", &port]),
        libc::ENETUNREACH
    );
    // Abstract UNIX sockets belong to the network namespace.
    assert_eq!(
        try_errno(&mut s.server, &["connect_abstract", &name]),
        libc::ECONNREFUSED
    );
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn an_ipc_namespace_hides_the_hosts_shared_memory() {
    if !root_or_skip("an_ipc_namespace_hides_the_hosts_shared_memory") {
        return;
    }
    let _wd = watchdog("an_ipc_namespace_hides_the_hosts_shared_memory", SECS(30));
    let key = 0x0fd5_0000 | (std::process::id() & 0xffff) as libc::key_t;
    // SAFETY: creates a private-to-this-test segment, removed below.
    let id = unsafe { libc::shmget(key, 4096, libc::IPC_CREAT | libc::IPC_EXCL | 0o600) };
    assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
    struct Remove(i32);
    impl Drop for Remove {
        fn drop(&mut self) {
            // SAFETY: removes the segment created above.
            unsafe { libc::shmctl(self.0, libc::IPC_RMID, std::ptr::null_mut()) };
        }
    }
    let _remove = Remove(id);

    let mut plain = start(Sandbox::new()).unwrap();
    assert_eq!(
        try_errno(&mut plain.server, &["shmget", &key.to_string()]),
        0
    );
    plain.stop_cleanly();

    let mut s = start(Sandbox::new().namespace(Namespace::Ipc)).unwrap();
    assert_eq!(
        try_errno(&mut s.server, &["shmget", &key.to_string()]),
        libc::ENOENT
    );
    s.assert_runtime_works();
    s.stop_cleanly();
}

/// Whether this kernel lets an unprivileged process create a user namespace.
fn unprivileged_userns() -> bool {
    let sysctl = |p: &str| std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned());
    sysctl("/proc/sys/kernel/unprivileged_userns_clone").as_deref() != Some("0")
        && sysctl("/proc/sys/user/max_user_namespaces").as_deref() != Some("0")
        && sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref() != Some("1")
}

/// Runs `f` in a child of the test that gave up root; returns its exit code.
fn as_unprivileged(f: impl FnOnce() -> i32) -> i32 {
    let pid = fork_child(&[], || {
        // SAFETY: plain integer arguments; this child is ours to change.
        let dropped = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(62_101, 62_101, 62_101) == 0
                && libc::setresuid(62_101, 62_101, 62_101) == 0
        };
        if !dropped {
            return 90;
        }
        f()
    });
    wait_child(pid).code().unwrap_or(-1)
}

#[test]
fn without_privilege_a_network_namespace_is_refused_before_the_fork() {
    if !root_or_skip("without_privilege_a_network_namespace_is_refused_before_the_fork") {
        return;
    }
    let _wd = watchdog(
        "without_privilege_a_network_namespace_is_refused_before_the_fork",
        SECS(30),
    );
    let code = as_unprivileged(|| {
        let e = Sandbox::new()
            .namespace(Namespace::Network)
            .check()
            .unwrap_err();
        let ok = sandbox_layer(&e) == Layer::Namespaces
            && e.to_string().contains("CAP_SYS_ADMIN")
            && e.to_string().contains("Namespace::User");
        i32::from(!ok)
    });
    assert_eq!(code, 0);
}

#[test]
fn a_user_namespace_gives_an_unprivileged_parent_a_network_namespace() {
    if !root_or_skip("a_user_namespace_gives_an_unprivileged_parent_a_network_namespace") {
        return;
    }
    if !unprivileged_userns() {
        eprintln!(
            "SKIPPED a_user_namespace_gives_an_unprivileged_parent_a_network_namespace: \
             unprivileged user namespaces are disabled on this machine"
        );
        return;
    }
    let _wd = watchdog(
        "a_user_namespace_gives_an_unprivileged_parent_a_network_namespace",
        SECS(30),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let code = as_unprivileged(|| {
        let mut s = start(
            Sandbox::new()
                .namespace(Namespace::User)
                .namespace(Namespace::Network),
        )
        .unwrap();
        // Inside, the server is still its own user, with no capability left.
        assert_eq!(s.server.call(["ids"]).unwrap()[0], "62101 62101 62101");
        assert_eq!(&s.server.call(["caps"]).unwrap()[..3], ["0", "0", "0"]);
        assert!(s.server.sandbox().unwrap().bounding_set_cleared);
        assert_eq!(
            try_errno(&mut s.server, &["connect_tcp", &port]),
            libc::ENETUNREACH
        );
        s.assert_runtime_works();
        s.stop_cleanly();
        0
    });
    assert_eq!(code, 0);
}

#[test]
fn a_user_namespace_and_an_identity_are_refused_together() {
    let e = Sandbox::new()
        .namespace(Namespace::User)
        .identity(fdserver::sandbox::Identity::new(1, 1))
        .check()
        .unwrap_err();
    assert_eq!(sandbox_layer(&e), Layer::Namespaces);
}
