//! Signals and terminals: signals sent to the client reach the worker's process group (and
//! only that worker), signals sent before the worker exists are queued, a pty client gives the
//! worker a terminal (isatty, window size, SIGWINCH, Ctrl-C, Ctrl-Z).

mod preload_common;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::ExitStatusExt;

use preload_common::*;

/// A signal sent to the client reaches the worker and the worker's children; the client dies
/// by the same signal.
fn signal_reaches_worker_and_children(tag: &str, sig: i32) {
    let pl = Pl::new(tag);
    let mut c = Running::spawn(pl.cmd(["wait", "child"]));
    let (cpid, wpid) = c.expect_two("child", "ready");
    assert!(alive(cpid) && alive(wpid));
    c.signal(sig);
    let status = c.wait();
    assert_eq!(status.signal(), Some(sig), "client status {status:?}");
    assert_gone(wpid, "worker");
    assert_gone(cpid, "worker's child");
    assert_eq!(pl.ok(&["echo", "next"]), "next\n");
    assert_eq!(zombies_under(pl.server().server), Vec::<u32>::new());
}

#[test]
fn sigint_reaches_worker_and_its_children() {
    let _wd = wd("sigint_reaches_worker_and_its_children");
    signal_reaches_worker_and_children("int", libc::SIGINT);
}

#[test]
fn sigterm_reaches_worker_and_its_children() {
    let _wd = wd("sigterm_reaches_worker_and_its_children");
    signal_reaches_worker_and_children("term", libc::SIGTERM);
}

#[test]
fn sighup_and_sigusr1_reach_the_worker() {
    let _wd = wd("sighup_and_sigusr1_reach_the_worker");
    signal_reaches_worker_and_children("hup", libc::SIGHUP);
    signal_reaches_worker_and_children("usr1", libc::SIGUSR1);
}

/// Two long commands at once: interrupting one leaves the other running; the other then gets
/// its own signal.
#[test]
fn interrupting_one_client_leaves_the_other_alone() {
    let _wd = wd("interrupting_one_client_leaves_the_other_alone");
    let pl = Pl::new("two");
    let mut a = Running::spawn(pl.cmd(["wait"]));
    let mut b = Running::spawn(pl.cmd(["wait"]));
    let wa = a.expect_pid("ready");
    let wb = b.expect_pid("ready");
    assert_ne!(wa, wb);

    a.signal(libc::SIGINT);
    assert_eq!(a.wait().signal(), Some(libc::SIGINT));
    assert_gone(wa, "interrupted worker");
    assert!(alive(wb), "the other worker is unaffected");
    assert!(b.running(), "the other client is unaffected");

    b.signal(libc::SIGTERM);
    assert_eq!(
        b.wait().signal(),
        Some(libc::SIGTERM),
        "the other worker died of its own signal, not the first one's"
    );
    assert_gone(wb, "second worker");
}

/// Signals that arrive before the worker exists (its template is still preloading) are queued
/// and delivered once the worker's pid is known.
fn queued_signal_is_delivered(tag: &str, sig: i32) {
    let mut pl = Pl::new(tag);
    let mut gate = Gate::new(&mut pl, "dev");
    let mut c = Running::spawn(pl.cmd(["wait"]));
    gate.wait_started();
    c.signal(sig);
    assert!(
        c.running(),
        "the client queues the signal, it does not die of it"
    );
    gate.release();
    let status = c.wait();
    assert_eq!(
        status.signal(),
        Some(sig),
        "the queued signal reached the worker: {status:?}"
    );
}

#[test]
fn queued_sigterm_is_delivered() {
    let _wd = wd("queued_sigterm_is_delivered");
    queued_signal_is_delivered("qterm", libc::SIGTERM);
}

#[test]
fn queued_sighup_is_delivered() {
    let _wd = wd("queued_sighup_is_delivered");
    queued_signal_is_delivered("qhup", libc::SIGHUP);
}

/// A worker on a pty client's terminal: isatty on 0 and 1, and the terminal's size.
#[test]
fn pty_client_gives_the_worker_a_tty() {
    let _wd = wd("pty_client_gives_the_worker_a_tty");
    let pl = Pl::new("tty");
    let (master, slave) = pty(91, 27);
    let mut client = spawn_on_pty(&pl, &["tty"], &slave);
    drop(slave);
    let mut acc = String::new();
    read_until(master.as_fd(), &mut acc, "\n");
    assert_eq!(acc.trim(), "isatty 1 1 size 91x27");
    assert!(client.wait().unwrap().success());

    // Not a tty through a pipe.
    assert_eq!(pl.ok(&["tty"]), "isatty 0 0 size none\n");
}

/// Resizing the client's terminal (the kernel sends SIGWINCH to the client, the foreground
/// process) reaches the worker, which then sees the new size. The worker first waits for a
/// SIGUSR2 relayed by the client (`winch ack`), so the client knows the worker's pid when the
/// resize comes; an explicit SIGWINCH to the client is relayed too.
#[test]
fn pty_resize_sends_winch_to_the_worker() {
    let _wd = wd("pty_resize_sends_winch_to_the_worker");
    let pl = Pl::new("winch");
    let (master, slave) = pty(80, 24);
    let mut client = spawn_on_pty(&pl, &["winch", "ack"], &slave);
    let mut acc = String::new();
    read_until(master.as_fd(), &mut acc, "waiting 80x24\n");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(client.id() as i32, libc::SIGUSR2) }, 0);
    read_until(master.as_fd(), &mut acc, "acked\n");
    set_winsize(master.as_fd(), 132, 43);
    read_until(master.as_fd(), &mut acc, "winch 132x43\n");
    assert!(client.wait().unwrap().success());

    let mut client = spawn_on_pty(&pl, &["winch", "ack"], &slave);
    drop(slave);
    let mut acc = String::new();
    read_until(master.as_fd(), &mut acc, "waiting 132x43\n");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(client.id() as i32, libc::SIGUSR2) }, 0);
    read_until(master.as_fd(), &mut acc, "acked\n");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(client.id() as i32, libc::SIGWINCH) }, 0);
    read_until(master.as_fd(), &mut acc, "winch 132x43\n");
    assert!(client.wait().unwrap().success());
}

/// A resize right after the worker started, possibly before the client has the worker's pid:
/// the worker has already read the old size, so the SIGWINCH must not be dropped.
#[test]
fn pty_resize_right_after_start_reaches_the_worker() {
    let _wd = wd("pty_resize_right_after_start_reaches_the_worker");
    let pl = Pl::new("winch0");
    let (master, slave) = pty(80, 24);
    for round in 0..20u16 {
        let cols = 100 + round;
        let mut client = spawn_on_pty(&pl, &["winch"], &slave);
        let mut acc = String::new();
        read_until(master.as_fd(), &mut acc, "waiting ");
        read_until(master.as_fd(), &mut acc, "\n");
        set_winsize(master.as_fd(), cols, 30);
        let want = format!("winch {cols}x30\n");
        let deadline = std::time::Instant::now() + SECS_5;
        let mut buf = [0u8; 256];
        while !acc.contains(&want) && std::time::Instant::now() < deadline {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !fdserver_tests::poll_readable(master.as_fd(), Some(left)) {
                break;
            }
            // SAFETY: read into a local buffer.
            let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            acc.push_str(&String::from_utf8_lossy(&buf[..n as usize]).replace('\r', ""));
        }
        if !acc.contains(&want) {
            let _ = client.kill();
            let _ = client.wait();
            panic!("round {round}: the resize to {cols}x30 never reached the worker: {acc:?}");
        }
        assert!(client.wait().unwrap().success());
    }
}

/// How long the racy resize test waits for a relayed SIGWINCH before calling it lost.
const SECS_5: std::time::Duration = std::time::Duration::from_secs(5);

/// Ctrl-C typed on the terminal interrupts the command (and only it).
#[test]
fn pty_ctrl_c_interrupts_the_command() {
    let _wd = wd("pty_ctrl_c_interrupts_the_command");
    let pl = Pl::new("ctrlc");
    let mut bystander = Running::spawn(pl.cmd(["wait"]));
    let wb = bystander.expect_pid("ready");
    let (master, slave) = pty(80, 24);
    let mut client = spawn_on_pty(&pl, &["wait"], &slave);
    drop(slave);
    let mut acc = String::new();
    read_until(master.as_fd(), &mut acc, "ready ");
    read_until(master.as_fd(), &mut acc, "\n");
    let wpid: u32 = acc.trim().strip_prefix("ready ").unwrap().parse().unwrap();
    write_master(&master, b"\x03");
    let status = client.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}");
    assert_gone(wpid, "interrupted worker");
    assert!(
        alive(wb) && bystander.running(),
        "the other command is unaffected"
    );
    bystander.signal(libc::SIGTERM);
    assert_eq!(bystander.wait().signal(), Some(libc::SIGTERM));
}

/// Ctrl-Z stops the worker and the client; continuing the client (`fg`) continues both. The
/// worker (`winch ack`) first waits for a SIGUSR2 relayed by the client, so the client knows
/// its pid when Ctrl-Z comes; after `fg`, a resize reaches the running worker.
#[test]
fn pty_ctrl_z_stops_and_fg_resumes() {
    let _wd = wd("pty_ctrl_z_stops_and_fg_resumes");
    let pl = Pl::new("ctrlz");
    pl.ok(&["echo", "warm"]);
    let template = pl.server().template("dev").unwrap();
    let (master, slave) = pty(80, 24);
    let client = spawn_on_pty(&pl, &["winch", "ack"], &slave);
    drop(slave);
    let pid = client.id() as i32;
    let mut acc = String::new();
    read_until(master.as_fd(), &mut acc, "waiting 80x24\n");
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR2) }, 0);
    read_until(master.as_fd(), &mut acc, "acked\n");
    let worker = only_child(template);

    write_master(&master, b"\x1a");
    let st = waitpid(pid, libc::WUNTRACED);
    assert!(
        libc::WIFSTOPPED(st),
        "the client stopped on Ctrl-Z (status {st:#x})"
    );
    // The client stopped the worker's group before itself; the kernel applies a stop
    // asynchronously and gives no event for it, so watch the worker's state (bounded).
    assert!(
        until(|| state(worker) == Some('T')),
        "the worker is stopped too (state {:?})",
        state(worker)
    );

    // `fg`.
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let st = waitpid(pid, libc::WCONTINUED);
    assert!(libc::WIFCONTINUED(st), "status {st:#x}");
    assert!(
        until(|| state(worker) != Some('T')),
        "the worker continues too"
    );
    set_winsize(master.as_fd(), 100, 30);
    read_until(master.as_fd(), &mut acc, "winch 100x30\n");
    let st = waitpid(pid, 0);
    assert!(
        libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
        "status {st:#x}"
    );
    std::mem::forget(client); // reaped above
}

/// Ctrl-Z while the command waits for its template's preload (the client does not know the
/// worker yet): once the worker exists it must be stopped along with the client, not run on
/// while its terminal's job is suspended.
#[test]
fn pty_ctrl_z_before_the_worker_exists_stops_it_too() {
    let _wd = wd("pty_ctrl_z_before_the_worker_exists_stops_it_too");
    let mut pl = Pl::new("ctrlz0");
    let mut gate = Gate::new(&mut pl, "dev");
    let (master, slave) = pty(80, 24);
    let client = spawn_on_pty(&pl, &["wait"], &slave);
    drop(slave);
    let pid = client.id() as i32;
    gate.wait_started();
    let template = pl.server().template("dev");
    assert_eq!(template, None, "still preloading");
    let server = pl.server().server;
    write_master(&master, b"\x1a");
    gate.release();
    let st = waitpid(pid, libc::WUNTRACED);
    assert!(libc::WIFSTOPPED(st), "status {st:#x}");
    let template = only_child(server);
    let worker = only_child(template);
    let stopped = until(|| state(worker) == Some('T'));
    let seen = state(worker);
    // Clean up either way: continue the client, interrupt the command.
    // SAFETY: kill(2) on our own child and its worker's group.
    unsafe {
        libc::kill(pid, libc::SIGCONT);
        libc::kill(-(worker as i32), libc::SIGCONT);
        libc::kill(-(worker as i32), libc::SIGKILL);
    }
    let _ = waitpid(pid, 0);
    std::mem::forget(client);
    assert!(stopped, "the worker was not stopped (state {seen:?})");
}

/// The only child of `pid` (waiting for it to appear, bounded).
fn only_child(pid: u32) -> u32 {
    let mut found = None;
    assert!(
        until(|| {
            found = match children_of(pid)[..] {
                [c] => Some(c),
                _ => None,
            };
            found.is_some()
        }),
        "no single child under {pid}: {:?}",
        children_of(pid)
    );
    found.unwrap()
}

/// Whether `cond` becomes true within the run limit (checked in a yielding loop: for kernel
/// state changes that have no event to wait on).
fn until(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::yield_now();
    }
    cond()
}

fn write_master(master: &std::os::fd::OwnedFd, data: &[u8]) {
    // SAFETY: write(2) of a valid buffer.
    let n = unsafe { libc::write(master.as_raw_fd(), data.as_ptr().cast(), data.len()) };
    assert_eq!(n, data.len() as isize);
}

/// `waitpid` on our child with `flags`, within the run limit (the child is watched on a pidfd
/// only for exit, so this relies on the watchdog for stops that never come).
fn waitpid(pid: i32, flags: i32) -> i32 {
    let mut st = 0;
    loop {
        // SAFETY: valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, flags) };
        if r == pid {
            return st;
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.kind(), std::io::ErrorKind::Interrupted, "waitpid: {e}");
    }
}
