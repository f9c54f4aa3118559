//! Signals and terminals: signals sent to the client reach the worker's process group (and
//! only that worker); before the worker exists the client does what the command would have done
//! (dies, stops); a pty client gives the worker a terminal (isatty, window size, SIGWINCH,
//! Ctrl-C, Ctrl-Z); the worker's stops are the job's stops.

mod preload_common;

use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};

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

/// Issue 12, item 1. A terminating signal that arrives while the template preloads (before the
/// worker exists) ends the client at once, by that signal, as it ends the same program run
/// without the preloader during its preload; the preload goes on in the background and serves
/// the next command. (It used to be queued until the worker existed, so a short command ran to
/// completion and exited 0.)
fn signal_during_preload_ends_the_client(tag: &str, sig: i32) {
    let mut pl = Pl::new(tag);
    let mut gate = Gate::new(&mut pl, "dev");
    // Without the preloader, for reference: the process dies by the signal mid-preload.
    let mut cold = pl.cmd(["echo", "never"]);
    cold.env("FDSERVER_PRELOAD", "0")
        .stdout(std::process::Stdio::null());
    let mut cold = cold.spawn().unwrap();
    gate.wait_started();
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(cold.id() as i32, sig) }, 0);
    assert_eq!(cold.wait().unwrap().signal(), Some(sig), "the cold run");
    std::fs::remove_dir_all(pl.path("gate")).unwrap();
    let mut gate = Gate::new(&mut pl, "dev");

    // Preloaded: the same, while the preload is still held at the gate.
    let mut c = Running::spawn(pl.cmd(["echo", "never"]));
    gate.wait_started();
    // A second command of the key, queued behind the preload, is killed the same way.
    let queued = Running::spawn(pl.cmd(["echo", "never"]));
    assert!(
        poll_accepted(&pl, 2),
        "the second client is waiting in the server"
    );
    c.signal(sig);
    let status = c.wait();
    assert_eq!(
        status.signal(),
        Some(sig),
        "the client died by the signal: {status:?}"
    );
    // Its stdout (which travels in its request) is released at once, not when the preload
    // ends: the preload is still held at the gate.
    assert_eq!(
        c.line(),
        None,
        "the command did not run, and its stdout is closed"
    );
    let mut queued = queued;
    queued.signal(sig);
    assert_eq!(queued.wait().signal(), Some(sig));
    assert_eq!(
        queued.line(),
        None,
        "the queued client's stdout is closed too"
    );
    // The preload was not cancelled: once done, it serves the next command, warm.
    gate.release();
    assert_eq!(pl.ok(&["echo", "next"]), "next\n");
    assert_eq!(
        pl.preloads(),
        vec!["dev"],
        "one preload, finished in the background"
    );
}

#[test]
fn sigterm_during_preload_ends_the_client() {
    let _wd = wd("sigterm_during_preload_ends_the_client");
    signal_during_preload_ends_the_client("qterm", libc::SIGTERM);
}

#[test]
fn sigint_and_sighup_during_preload_end_the_client() {
    let _wd = wd("sigint_and_sighup_during_preload_end_the_client");
    signal_during_preload_ends_the_client("qint", libc::SIGINT);
    signal_during_preload_ends_the_client("qhup", libc::SIGHUP);
}

/// Waits until the server holds at least `n` accepted connections (see
/// [`server_connections`]).
fn poll_accepted(pl: &Pl, n: usize) -> bool {
    wait_for_server_connections(pl, |c| c >= n)
}

/// A signal that does nothing by default (SIGWINCH), or one the program started with blocked,
/// is not lost before the worker exists: it is relayed once the worker's pid is known.
#[test]
fn blocked_signal_before_the_worker_exists_reaches_it() {
    let _wd = wd("blocked_signal_before_the_worker_exists_reaches_it");
    let mut pl = Pl::new("qblk");
    let mut gate = Gate::new(&mut pl, "dev");
    let mut cmd = pl.cmd(["sigwait-usr1"]);
    // The program starts with SIGUSR1 blocked (inherited across exec, as from a parent that
    // blocked it): it stays pending for the command, which waits for it with sigwait.
    // SAFETY: sigprocmask is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGUSR1);
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
    let mut c = Running::spawn(cmd);
    gate.wait_started();
    c.signal(libc::SIGUSR1);
    gate.release();
    assert_eq!(c.line().as_deref(), Some("got SIGUSR1"));
    assert!(c.wait().success());
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

/// Ctrl-Z in a job-control shell stops the job (the worker stops by SIGTSTP, the client, the
/// shell's job, by the same); `fg` continues both, and a resize then reaches the running
/// worker. Compared with the same script run without the preloader. The command (`winch ack`)
/// first waits for a SIGUSR2 relayed by the client, so the client knows the worker when Ctrl-Z
/// comes.
#[test]
fn pty_ctrl_z_stops_and_fg_resumes() {
    let _wd = wd("pty_ctrl_z_stops_and_fg_resumes");
    let pl = Pl::new("ctrlz");
    pl.ok(&["echo", "warm"]);
    let template = pl.server().template("dev").unwrap();
    for preload in ["1", "0"] {
        let (master, slave) = pty(80, 24);
        let script = r#""$0" winch ack; echo "rc $?"; read _; fg; echo "rc $?""#;
        let mut shell = spawn_shell_on_pty(&pl, script, &slave, &[("FDSERVER_PRELOAD", preload)]);
        drop(slave);
        let mut acc = String::new();
        read_until(master.as_fd(), &mut acc, "waiting 80x24\n");
        let client = only_child(shell.id());
        // SAFETY: kill(2) on the shell's job (our grandchild), which runs until we say so.
        assert_eq!(unsafe { libc::kill(client as i32, libc::SIGUSR2) }, 0);
        read_until(master.as_fd(), &mut acc, "acked\n");
        let worker = if preload == "1" {
            only_child(template)
        } else {
            client
        };

        write_master(&master, b"\x1a");
        read_until(master.as_fd(), &mut acc, "rc 148\n");
        assert_eq!(
            state(client),
            Some('T'),
            "FDSERVER_PRELOAD={preload}: the job is stopped"
        );
        assert_eq!(
            state(worker),
            Some('T'),
            "FDSERVER_PRELOAD={preload}: the command is stopped"
        );

        write_master(&master, b"\n"); // the shell's `fg`
        assert!(
            until(|| state(worker) != Some('T')),
            "the command continues"
        );
        set_winsize(master.as_fd(), 100, 30);
        read_until(master.as_fd(), &mut acc, "winch 100x30\n");
        read_until(master.as_fd(), &mut acc, "rc 0\n");
        assert!(shell.wait().unwrap().success());
    }
}

/// Ctrl-Z while the command waits for its template's preload (the client does not know the
/// worker yet) suspends the job at once, as it suspends the program run without the preloader
/// mid-preload; the worker, once forked, waits until the job is continued, so a suspended job
/// does not run; `fg` then runs it.
#[test]
fn pty_ctrl_z_before_the_worker_exists_suspends_at_once() {
    let _wd = wd("pty_ctrl_z_before_the_worker_exists_suspends_at_once");
    for preload in ["1", "0"] {
        let mut pl = Pl::new("ctrlz0");
        let mut gate = Gate::new(&mut pl, "dev");
        let (master, slave) = pty(80, 24);
        let script = r#""$0" readline; echo "rc $?"; read _; fg; echo "rc $?""#;
        let mut shell = spawn_shell_on_pty(&pl, script, &slave, &[("FDSERVER_PRELOAD", preload)]);
        drop(slave);
        gate.wait_started();
        write_master(&master, b"\x1a");
        // Stopped while the preload is still held at the gate: at once.
        let mut acc = String::new();
        read_until(master.as_fd(), &mut acc, "rc 148\n");
        if preload == "1" {
            gate.release();
            let template = only_child(pl.server().server);
            let worker = only_child(template);
            // The worker exists but waits: still the template's title (it takes on the
            // command's arguments only once it goes on), sleeping (in its read of the client's
            // go-ahead).
            let parked = until(|| {
                state(worker) == Some('S')
                    && std::fs::read(format!("/proc/{worker}/cmdline"))
                        .is_ok_and(|c| c.starts_with(b"preload-app: template dev"))
            });
            assert!(
                parked,
                "the worker of a suspended job waits (state {:?})",
                state(worker)
            );
            write_master(&master, b"\n"); // `fg`: the command runs
        } else {
            // The process itself is stopped mid-preload: continue it, then let the preload end.
            write_master(&master, b"\n");
            gate.release();
        }
        // The command runs now, in the foreground: it reads the terminal.
        write_master(&master, b"hello\n");
        read_until(master.as_fd(), &mut acc, "read \"hello\"\n");
        read_until(master.as_fd(), &mut acc, "rc 0\n");
        assert!(shell.wait().unwrap().success());
    }
}

/// Issue 12, item 2. A command that stops itself (a program that handles Ctrl-Z itself sends
/// itself SIGTSTP), or that the client relays SIGTTIN or SIGSTOP-like signals to, stops the
/// job: the client stops by the same signal, so the shell sees the job stopped, and continuing
/// the client continues the command, exactly as without the preloader. (The worker used to be
/// in an orphaned process group, where the kernel discards these signals: it ran on.)
#[test]
fn stops_of_the_command_stop_the_job() {
    let _wd = wd("stops_of_the_command_stop_the_job");
    let pl = Pl::new("stopself");
    for preload in ["1", "0"] {
        for sig in [libc::SIGTSTP, libc::SIGTTIN, libc::SIGTTOU, libc::SIGSTOP] {
            let mut cmd = pl.cmd(["stop-self", &sig.to_string()]);
            cmd.env("FDSERVER_PRELOAD", preload);
            let c = Running::spawn(cmd);
            let pid = c.pid() as i32;
            let st = waitpid(pid, libc::WUNTRACED);
            assert!(
                libc::WIFSTOPPED(st) && libc::WSTOPSIG(st) == sig,
                "FDSERVER_PRELOAD={preload}, signal {sig}: the job stopped (status {st:#x})"
            );
            // SAFETY: kill(2) on our own child.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
            assert_eq!(c.line().as_deref(), Some("continued"));
            let st = waitpid(pid, 0);
            assert!(
                libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
                "status {st:#x}"
            );
            drop(c); // reaped above
        }
    }
    // Sent to the client from outside: relayed, the worker stops, so does the client.
    let c = Running::spawn(pl.cmd(["wait"]));
    let worker = c.expect_pid("ready");
    c.signal(libc::SIGTTIN);
    let st = waitpid(c.pid() as i32, libc::WUNTRACED);
    assert!(
        libc::WIFSTOPPED(st) && libc::WSTOPSIG(st) == libc::SIGTTIN,
        "status {st:#x}"
    );
    assert_eq!(state(worker), Some('T'), "the worker is stopped");
    c.signal(libc::SIGCONT);
    assert!(
        until(|| state(worker) != Some('T')),
        "and continued with the client"
    );
    c.signal(libc::SIGTERM);
    let st = waitpid(c.pid() as i32, 0);
    assert!(libc::WIFSIGNALED(st) && libc::WTERMSIG(st) == libc::SIGTERM);
    drop(c); // reaped above
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
