//! Resource limits (issue 15, item 3): address space, open files, CPU time, file size and
//! processes, each set soft = hard, each hit by the server with the documented result while it
//! keeps serving (CPU time ends it, as documented).

mod sandbox_common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use fdserver::sandbox::{Identity, Layer, Limit, Sandbox};
use fdserver::Shutdown;
use fdserver_tests::{fork_child, poll_readable, wait_child, watchdog, SECS};
use sandbox_common::{root_or_skip, sandbox_layer, start, try_errno, TempDir};

/// This process's virtual size, which a forked server starts with.
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmSize");
    kib << 10
}

fn rlimit(s: &mut fdserver::ServerHandle, which: &str) -> (u64, u64) {
    let r = s.call(["rlimit", which]).unwrap();
    (r[0].parse().unwrap(), r[1].parse().unwrap())
}

#[test]
fn address_space_limit_fails_large_allocations() {
    let _wd = watchdog("address_space_limit_fails_large_allocations", SECS(30));
    // Room for what the server inherits, plus 256 MiB.
    let limit = vm_size() + (256 << 20);
    let mut s = start(Sandbox::new().limit(Limit::AddressSpace(limit))).unwrap();
    assert_eq!(rlimit(&mut s.server, "as"), (limit, limit));
    assert_eq!(
        try_errno(&mut s.server, &["alloc", &(1u64 << 30).to_string()]),
        libc::ENOMEM
    );
    assert_eq!(
        try_errno(&mut s.server, &["alloc", &(16u64 << 20).to_string()]),
        0
    );
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn open_files_limit_stops_new_descriptors_not_the_server() {
    let _wd = watchdog(
        "open_files_limit_stops_new_descriptors_not_the_server",
        SECS(30),
    );
    let mut s = start(Sandbox::new().limit(Limit::OpenFiles(64))).unwrap();
    assert_eq!(rlimit(&mut s.server, "nofile"), (64, 64));
    let r = s.server.call(["dup_many", "200"]).unwrap();
    assert_eq!(r[0], libc::EMFILE.to_string());
    let made: usize = r[1].parse().unwrap();
    assert!((1..64).contains(&made), "{made} descriptors");
    // Receiving and sending descriptors still works below the limit.
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn file_size_limit_fails_the_write_with_efbig() {
    let _wd = watchdog("file_size_limit_fails_the_write_with_efbig", SECS(30));
    let dir = TempDir::new("fsize");
    let mut s = start(Sandbox::new().limit(Limit::FileSize(1000))).unwrap();
    assert_eq!(
        try_errno(&mut s.server, &["grow", &dir.path("big"), "5000"]),
        libc::EFBIG
    );
    assert_eq!(std::fs::metadata(dir.path("big")).unwrap().len(), 1000);
    assert_eq!(
        try_errno(&mut s.server, &["grow", &dir.path("small"), "500"]),
        0
    );
    // SIGXFSZ did not kill it.
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn cpu_time_limit_ends_the_server_with_sigxcpu() {
    let _wd = watchdog("cpu_time_limit_ends_the_server_with_sigxcpu", SECS(60));
    let mut s = start(Sandbox::new().limit(Limit::CpuTime(Duration::from_secs(1)))).unwrap();
    assert_eq!(rlimit(&mut s.server, "cpu"), (1, 2));
    s.server.call(["spin"]).unwrap();
    // It spins until the kernel stops it: wait for its exit on the pidfd.
    assert!(poll_readable(s.server.pidfd(), Some(SECS(50))));
    let stopped = s.server.stop().unwrap();
    assert_eq!(stopped.how, Shutdown::AlreadyExited);
    assert_eq!(stopped.status.signal(), Some(libc::SIGXCPU), "{stopped}");
}

#[test]
fn processes_limit_fails_fork_with_eagain() {
    if !root_or_skip("processes_limit_fails_fork_with_eagain") {
        return;
    }
    let _wd = watchdog("processes_limit_fails_fork_with_eagain", SECS(30));
    // A user id of its own: the limit counts every process of the user, system-wide.
    let uid = 61_000 + std::process::id() % 1000;
    let mut s = start(
        Sandbox::new()
            .identity(Identity::new(uid, uid))
            // Two: the server's loop thread and the runtime's hang-up watch thread.
            .limit(Limit::Processes(2)),
    )
    .unwrap();
    assert_eq!(rlimit(&mut s.server, "nproc"), (2, 2));
    assert_eq!(try_errno(&mut s.server, &["fork"]), libc::EAGAIN);
    s.assert_runtime_works();
    s.stop_cleanly();
}

#[test]
fn processes_limit_for_a_root_server_is_refused() {
    if !root_or_skip("processes_limit_for_a_root_server_is_refused") {
        return;
    }
    let e = Sandbox::new()
        .limit(Limit::Processes(10))
        .check()
        .unwrap_err();
    assert_eq!(sandbox_layer(&e), Layer::Limits);
    assert!(e.to_string().contains("uid 0"), "{e}");
}

#[test]
fn raising_a_hard_limit_needs_privilege() {
    if !root_or_skip("raising_a_hard_limit_needs_privilege") {
        return;
    }
    let _wd = watchdog("raising_a_hard_limit_needs_privilege", SECS(30));
    // In a child that gave up root: a limit above its hard limit is refused before any fork.
    let pid = fork_child(&[], || {
        // SAFETY: plain integer arguments; this child is ours to change.
        if unsafe {
            libc::setresgid(65534, 65534, 65534) != 0 || libc::setresuid(65534, 65534, 65534) != 0
        } {
            return 2;
        }
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: writes one rlimit.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
        let above = Sandbox::new().limit(Limit::OpenFiles(r.rlim_max + 1));
        let below = Sandbox::new().limit(Limit::OpenFiles(r.rlim_max));
        match (above.check(), below.check()) {
            (Err(e), Ok(_)) if sandbox_layer(&e) == Layer::Limits => 0,
            _ => 1,
        }
    });
    assert_eq!(wait_child(pid).code(), Some(0));
}
