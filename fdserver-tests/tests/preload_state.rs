//! Stale state heals itself: a removed socket or directory, an old server exiting after its
//! successor started, a rebuilt program, an idle server; and the server's resource bounds
//! (accept failures, connection cap, log size).

mod preload_common;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use fdserver_tests::{poll_readable, wait_pid_gone};
use preload_common::*;

/// A pidfd of `pid`, to signal a server the test saw without risking a recycled number.
fn pidfd(pid: u32) -> OwnedFd {
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    assert!(
        fd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh descriptor that nothing else owns.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) }
}

fn pidfd_kill(fd: &OwnedFd, sig: i32) {
    // SAFETY: pidfd_send_signal on a valid pidfd.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

/// Item 5: the socket file removed (a tmp cleaner): the next command starts a new server on
/// its own (the old one, whose socket is gone, exits by itself), and `status` shows it.
#[test]
fn removed_socket_heals_by_itself() {
    let _wd = wd("removed_socket_heals_by_itself");
    let pl = Pl::new("nosock");
    pl.ok(&["echo", "x"]);
    let old = pl.server();
    std::fs::remove_file(pl.files().sock).unwrap();
    assert_eq!(pl.ok(&["echo", "again"]), "again\n");
    let new = pl.server();
    assert_ne!(new.server, old.server);
    assert_gone(old.server, "the server whose socket was removed");
    assert_gone(old.template("dev").unwrap(), "its template");
    assert_eq!(pl.ok(&["echo", "warm"]), "warm\n");
    assert_eq!(pl.server().server, new.server);
}

/// Item 6: an exiting server adds nothing to its directory, which may be being removed (a tmp
/// cleaner, `rm -r`): it used to create its start lock again to clean up under it, so that
/// removing the directory failed now and then with "Directory not empty".
#[test]
fn an_exiting_server_creates_nothing_in_its_directory() {
    let _wd = wd("an_exiting_server_creates_nothing_in_its_directory");
    let pl = Pl::new("nocreate");
    pl.ok(&["echo", "x"]);
    let st = pl.server();
    let files = pl.files();
    std::fs::remove_file(&files.lock).unwrap();
    std::fs::remove_file(&files.sock).unwrap();
    assert_gone(st.server, "the server whose socket was removed");
    assert!(
        !files.lock.exists(),
        "the exiting server created its start lock"
    );
    assert!(
        !files.pid.exists(),
        "the exiting server removed its own pidfile"
    );
}

/// Item 5: `stop` while a server holds the pidfile but has lost its socket (here it is stopped,
/// so it cannot notice): a clear error naming its pid; once it runs again it exits by itself,
/// and `stop` then finds nothing to stop.
#[test]
fn stop_explains_a_server_that_lost_its_socket() {
    let _wd = wd("stop_explains_a_server_that_lost_its_socket");
    let pl = Pl::new("stopnosock");
    pl.ok(&["echo", "x"]);
    let st = pl.server();
    let fd = pidfd(st.server);
    pidfd_kill(&fd, libc::SIGSTOP);
    std::fs::remove_file(pl.files().sock).unwrap();
    let out = pl.run(&["--preloader", "stop"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&format!("(pid {}, from", st.server))
            && out.stderr.contains("has no socket"),
        "{out:?}"
    );
    pidfd_kill(&fd, libc::SIGCONT);
    assert!(
        poll_readable(fd.as_fd(), Some(RUN_LIMIT)),
        "it exits by itself"
    );
    assert!(pl.stop().contains("no preloader server was running"));
}

/// Item 6: the runtime directory removed (logout, tmp cleaner): the server and its template
/// exit by themselves, promptly; the next command starts afresh.
#[test]
fn removed_directory_makes_the_server_exit() {
    let _wd = wd("removed_directory_makes_the_server_exit");
    let pl = Pl::new("nodir");
    pl.ok(&["echo", "x"]);
    let st = pl.server();
    std::fs::remove_dir_all(&pl.dir).unwrap();
    assert_gone(st.server, "the server whose directory was removed");
    assert_gone(st.template("dev").unwrap(), "its template");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&pl.dir)
        .unwrap();
    assert_eq!(pl.ok(&["echo", "back"]), "back\n");
}

/// Item 6: the runtime directory replaced (moved away, a new one made in its place): the old
/// server exits, and does not touch the new directory.
#[test]
fn replaced_directory_makes_the_server_exit() {
    let _wd = wd("replaced_directory_makes_the_server_exit");
    let pl = Pl::new("movedir");
    pl.ok(&["echo", "x"]);
    let st = pl.server();
    let moved = pl.dir.with_extension("old");
    std::fs::rename(&pl.dir, &moved).unwrap();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&pl.dir)
        .unwrap();
    assert_gone(st.server, "the server whose directory was replaced");
    assert_gone(st.template("dev").unwrap(), "its template");
    assert_eq!(std::fs::read_dir(&pl.dir).unwrap().count(), 0);
    std::fs::remove_dir_all(&moved).unwrap();
    assert_eq!(pl.ok(&["echo", "back"]), "back\n");
}

/// Item 6: the directory opened to others (clients no longer use it): the server exits.
#[test]
fn a_directory_opened_to_others_makes_the_server_exit() {
    let _wd = wd("a_directory_opened_to_others_makes_the_server_exit");
    let pl = Pl::new("chmod");
    pl.ok(&["echo", "x"]);
    let st = pl.server();
    std::fs::set_permissions(&pl.dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    assert_gone(st.server, "the server whose directory was opened to others");
    assert!(pl.log().contains("open to other users"), "{}", pl.log());
    std::fs::set_permissions(&pl.dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    assert_eq!(pl.ok(&["echo", "back"]), "back\n");
}

/// Item 7: an old server that exits after a newer one took its place (its socket and pidfile
/// were removed while it was stopped, a command started a successor) leaves the successor's
/// files alone: the next commands still go to the successor.
#[test]
fn an_exiting_server_leaves_its_successors_files() {
    let _wd = wd("an_exiting_server_leaves_its_successors_files");
    let pl = Pl::new("succ");
    pl.ok(&["echo", "x"]);
    let old = pl.server();
    let old_fd = pidfd(old.server);
    pidfd_kill(&old_fd, libc::SIGSTOP);
    let files = pl.files();
    std::fs::remove_file(&files.sock).unwrap();
    std::fs::remove_file(&files.pid).unwrap();
    assert_eq!(pl.ok(&["echo", "y"]), "y\n");
    let new = pl.server();
    assert_ne!(new.server, old.server);
    // The old one wakes up, sees its files gone (or is told to stop) and exits.
    pidfd_kill(&old_fd, libc::SIGCONT);
    pidfd_kill(&old_fd, libc::SIGTERM);
    assert!(
        poll_readable(old_fd.as_fd(), Some(RUN_LIMIT)),
        "old server exits"
    );
    assert!(
        files.sock.exists() && files.pid.exists(),
        "the successor's files stay"
    );
    assert_eq!(pl.ok(&["echo", "z"]), "z\n");
    assert_eq!(pl.server().server, new.server, "still the successor");
    assert_eq!(pl.preloads().len(), 2, "no third server");
}

/// The build id in a running server's greeting.
fn build_of(pl: &Pl, sock: &std::path::Path) -> String {
    let _ = pl;
    let mut ch = fdserver::Channel::from(UnixStream::connect(sock).unwrap());
    ch.set_timeout(Some(RUN_LIMIT));
    let hello = ch.read_strings().unwrap().unwrap();
    hello[3].clone()
}

/// Item 8: the program rebuilt at the same path (here: the test application with its ELF
/// build id changed, replaced the way a linker does, by a new file renamed over the old):
/// the next command stops the old build's server and starts its own.
#[test]
fn a_rebuilt_program_restarts_the_server() {
    let _wd = wd("a_rebuilt_program_restarts_the_server");
    let pl = Pl::new("rebuild");
    let app = pl.path("app");
    // Executables are written by a `cp` process, never through a descriptor of this one: a
    // descriptor open for writing here would be inherited by whatever another test thread forks
    // meanwhile, and until that child's exec every exec of the file fails with ETXTBSY.
    let cp = |from: &std::path::Path, to: &std::path::Path| {
        let st = std::process::Command::new("cp").arg(from).arg(to).status();
        assert!(
            st.unwrap().success(),
            "cp {} {}",
            from.display(),
            to.display()
        );
    };
    cp(std::path::Path::new(APP), &app);
    let run = |args: &[&str]| {
        let mut c = pl.command(&app);
        c.args(args);
        let out = output(c, RUN_LIMIT);
        assert!(out.status.success(), "{out:?}");
        out.stdout
    };
    assert_eq!(run(&["echo", "one"]), "one\n");
    // A command of the old build that runs across the rebuild (review finding 2: the new
    // build's first command used to end it, with SIGTERM).
    let mut running = Running::spawn({
        let mut c = pl.command(&app);
        c.arg("wait");
        c
    });
    let running_worker = running.expect_pid("ready");
    let sock = std::fs::read_dir(&pl.dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "sock"))
        .unwrap();
    let old_server: u32 = run(&["--preloader", "status"])
        .split_once("server pid ")
        .and_then(|(_, rest)| rest.split(',').next())
        .unwrap()
        .parse()
        .unwrap();
    let build = build_of(&pl, &sock);
    // "Rebuild": the same program with another build id, written beside and renamed over it.
    let id: Vec<u8> = (0..build.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&build[i..i + 2], 16).unwrap())
        .collect();
    let mut bytes = std::fs::read(&app).unwrap();
    let at = bytes
        .windows(id.len())
        .position(|w| w == id)
        .expect("the build id in the executable");
    bytes[at] ^= 0xff;
    let data = pl.path("app.bytes");
    std::fs::write(&data, &bytes).unwrap();
    let new = pl.path("app.new");
    cp(&data, &new);
    std::fs::set_permissions(&new, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&new, &app).unwrap();

    assert_eq!(run(&["echo", "two"]), "two\n");
    assert_gone(old_server, "the old build's server");
    assert_ne!(
        build_of(&pl, &sock),
        build,
        "the new server is the new build"
    );
    assert_eq!(pl.preloads().len(), 2, "the new build preloaded");
    assert_eq!(run(&["echo", "three"]), "three\n");
    assert_eq!(pl.preloads().len(), 2, "and serves warm");
    assert!(
        alive(running_worker) && running.running(),
        "the old build's running command goes on"
    );
    running.signal(libc::SIGINT);
    assert_eq!(signal_of(&running.wait()), Some(libc::SIGINT));
    run(&["--preloader", "stop"]);
}

/// Item 9: an idle timeout (here 1 s, from the environment): the server and its template exit
/// once nothing ran for that long.
#[test]
fn an_idle_server_exits_with_its_templates() {
    let _wd = wd("an_idle_server_exits_with_its_templates");
    let mut pl = Pl::new("idle");
    pl.set("FDSERVER_PRELOAD_IDLE_TIMEOUT", "1s");
    // The pids are taken while a command keeps the server busy: after a plain command, a
    // loaded machine could let the second go by before `status` asks.
    let mut c = Running::spawn(pl.cmd(["wait"]));
    c.expect_pid("ready");
    let st = pl.server();
    c.signal(libc::SIGTERM);
    c.wait();
    assert_gone(st.server, "the idle server");
    assert_gone(st.template("dev").unwrap(), "its template");
    assert!(pl.log().contains("idle for 1s: stopping"), "{}", pl.log());
    assert!(!pl.files().sock.exists() && !pl.files().pid.exists());
    assert_eq!(pl.ok(&["echo", "back"]), "back\n");
}

/// Item 9: an invalid idle timeout is reported once, by the client that starts the server,
/// and the default applies; the command runs.
#[test]
fn an_invalid_idle_timeout_is_reported_and_ignored() {
    let _wd = wd("an_invalid_idle_timeout_is_reported_and_ignored");
    let mut pl = Pl::new("idlebad");
    pl.set("FDSERVER_PRELOAD_IDLE_TIMEOUT", "soon");
    let out = pl.run(&["echo", "x"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, "x\n");
    assert!(
        out.stderr
            .contains("FDSERVER_PRELOAD_IDLE_TIMEOUT=\"soon\" is not a duration"),
        "{out:?}"
    );
    let again = pl.run(&["echo", "y"]);
    assert!(again.stderr.is_empty(), "said once, at start: {again:?}");
    assert!(pl.log().contains("idle timeout 10800s"), "{}", pl.log());
}

/// Item 9: a running command keeps the server from idling out; it exits once the command ended
/// and the timeout passed again.
#[test]
fn the_idle_timeout_waits_for_running_commands() {
    let _wd = wd("the_idle_timeout_waits_for_running_commands");
    let mut pl = Pl::new("idlerun");
    pl.set("FDSERVER_PRELOAD_IDLE_TIMEOUT", "500ms");
    let mut c = Running::spawn(pl.cmd(["wait"]));
    c.expect_pid("ready");
    let st = pl.server();
    assert!(
        !wait_pid_gone(st.server, Duration::from_millis(1500)),
        "the server idled out under a running command"
    );
    c.signal(libc::SIGTERM);
    c.wait();
    assert_gone(st.server, "the server, once idle");
}

/// Item 9, with templates: a template that does not answer the idle check (here stopped with
/// SIGSTOP) is replaced at once, while another template's running command keeps the server up;
/// the next command of its key gets a new template. (The check used to time out, log, and leave
/// the template in place with its channel out of step: every later command of the key failed.)
#[test]
fn a_template_that_misses_the_idle_check_is_replaced() {
    let _wd = wd("a_template_that_misses_the_idle_check_is_replaced");
    let mut pl = Pl::new("idlewedge");
    pl.set("FDSERVER_PRELOAD_IDLE_TIMEOUT", "500ms");
    let mut busy = Running::spawn(pl.cmd(["wait"]));
    busy.expect_pid("ready");
    let other = |args: &[&str]| {
        let mut c = pl.cmd(args);
        c.env("APP_ENV", "other");
        output(c, RUN_LIMIT)
    };
    assert_eq!(other(&["echo", "x"]).stdout, "x\n");
    let st = pl.server();
    let wedged = st.template("other").expect("the other template");
    // SAFETY: kill(2) on a process of this test's server.
    assert_eq!(unsafe { libc::kill(wedged as i32, libc::SIGSTOP) }, 0);
    assert_gone(wedged, "the template that stopped answering");
    assert!(alive(st.server), "the busy server is still up");
    let out = other(&["echo", "back"]);
    assert_eq!(out.stdout, "back\n", "{out:?}");
    assert_ne!(pl.server().template("other"), Some(wedged));
    busy.signal(libc::SIGTERM);
    busy.wait();
}

/// Item 9: `--preloader restart` replaces the server and preloads the template, so the next
/// command is warm.
#[test]
fn restart_replaces_the_server_and_preloads() {
    let _wd = wd("restart_replaces_the_server_and_preloads");
    let pl = Pl::new("restart");
    pl.ok(&["echo", "x"]);
    let old = pl.server();
    let out = pl.ok(&["--preloader", "restart"]);
    assert!(
        out.contains("restarted") && out.contains("\"dev\" preloaded"),
        "{out:?}"
    );
    assert_gone(old.server, "the old server");
    let new = pl.server();
    assert_ne!(new.server, old.server);
    assert!(new.template("dev").is_some(), "preloaded: {new:?}");
    assert_eq!(pl.preloads().len(), 2);
    assert_eq!(pl.ok(&["echo", "warm"]), "warm\n");
    assert_eq!(pl.preloads().len(), 2, "the next command is warm");
}

/// The server's soft descriptor limit.
fn set_nofile(pid: u32, soft: u64) {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit on a process of ours with a valid old-value pointer.
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
    assert_eq!(r, 0);
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above, with a valid new value.
    let r = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The lowest descriptor number `pid` has free: as its soft limit, no new descriptor fits.
fn lowest_free_fd(pid: u32) -> u64 {
    let used: Vec<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap()
}

/// Item 3: out of descriptors, `accept` fails: the server backs off (no spinning) and logs it
/// once, not at every failed attempt; once descriptors are back, the waiting client is served.
#[test]
fn accept_failures_back_off_and_log_once() {
    let _wd = wd("accept_failures_back_off_and_log_once");
    let pl = Pl::new("emfile");
    pl.ok(&["echo", "x"]);
    let server = pl.server().server;
    // The server closes the connections of `echo` and `status` after their clients are done:
    // a descriptor it closes after the limit is set would let `accept` succeed.
    assert!(
        wait_for_server_connections(&pl, |n| n == 0),
        "the server still holds a connection"
    );
    set_nofile(server, lowest_free_fd(server));
    let waiting = UnixStream::connect(pl.files().sock).unwrap();
    // A while out of descriptors (a spinning loop logs thousands of lines meanwhile).
    assert!(!poll_readable(
        waiting.as_fd(),
        Some(Duration::from_millis(500))
    ));
    set_nofile(server, 1024);
    assert!(
        poll_readable(waiting.as_fd(), Some(RUN_LIMIT)),
        "served once descriptors are back"
    );
    let log = pl.log();
    let failures = log.lines().filter(|l| l.contains("accept:")).count();
    assert_eq!(failures, 1, "logged once: {log}");
    assert!(log.contains("accept works again"), "{log}");
    drop(waiting);
    assert_eq!(pl.ok(&["echo", "y"]), "y\n");
}

/// Item 3: connections beyond the cap (64) wait in the listen queue instead of taking a thread
/// each; when one ends, a waiting one is served.
#[test]
fn connections_beyond_the_cap_wait_for_a_free_one() {
    let _wd = wd("connections_beyond_the_cap_wait_for_a_free_one");
    let pl = Pl::new("cap");
    pl.ok(&["echo", "x"]);
    let server = pl.server().server;
    let sock = pl.files().sock;
    let mut held: Vec<UnixStream> = (0..64)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    for c in &held {
        assert!(poll_readable(c.as_fd(), Some(RUN_LIMIT)), "greeted");
    }
    let extra = UnixStream::connect(&sock).unwrap();
    assert!(
        !poll_readable(extra.as_fd(), Some(Duration::from_millis(300))),
        "the 65th connection waits"
    );
    let threads = std::fs::read_dir(format!("/proc/{server}/task"))
        .unwrap()
        .count();
    assert!(threads <= 64 + 4, "{threads} threads for 65 connections");
    drop(held.pop());
    assert!(
        poll_readable(extra.as_fd(), Some(RUN_LIMIT)),
        "served once a connection ended"
    );
    drop(held);
    drop(extra);
    assert_eq!(pl.ok(&["echo", "y"]), "y\n");
}

/// Item 3: the log is bounded: a preload that prints 2.5 MB leaves at most 1 MiB in the log
/// (and the previous 1 MiB in `.log.1`).
#[test]
fn the_log_is_bounded() {
    let _wd = wd("the_log_is_bounded");
    let mut pl = Pl::new("logsize");
    pl.set("APP_PRELOAD_OUTPUT", "2500000");
    pl.ok(&["echo", "x"]);
    let log = std::fs::metadata(pl.files().log).unwrap().len();
    assert!(log <= 1 << 20, "log of {log} bytes");
    let old = pl.files().log.with_extension("log.1");
    let old_len = std::fs::metadata(&old).unwrap().len();
    assert!(
        old_len <= 1 << 20 && old_len > 0,
        ".log.1 of {old_len} bytes"
    );
    assert_eq!(pl.ok(&["echo", "y"]), "y\n");
}

/// Review finding 2: a server that exits by itself (here its socket was removed, as a tmp
/// cleaner does) lets running commands finish: its template exits once they end. (It used to
/// stop its templates, whose workers got SIGTERM.) The log says the socket was removed, not
/// that it was "no longer ours" (finding 16).
#[test]
fn a_server_that_lost_its_socket_lets_running_commands_finish() {
    let _wd = wd("a_server_that_lost_its_socket_lets_running_commands_finish");
    let pl = Pl::new("lostrun");
    let mut c = Running::spawn(pl.cmd(["wait"]));
    let wpid = c.expect_pid("ready");
    let old = pl.server();
    let tpid = old.template("dev").unwrap();
    std::fs::remove_file(pl.files().sock).unwrap();
    assert_gone(old.server, "the server whose socket was removed");
    assert!(alive(wpid) && c.running(), "the running command goes on");
    let log = pl.log();
    assert!(log.contains("was removed"), "{log}");
    assert!(
        !log.contains("no longer ours"),
        "the socket is absent, not another's: {log}"
    );
    assert_eq!(pl.ok(&["echo", "next"]), "next\n");
    c.signal(libc::SIGINT);
    assert_eq!(signal_of(&c.wait()), Some(libc::SIGINT));
    assert_gone(tpid, "the old template, once its command ended");
}

/// Review finding 12: `status` shows the idle timeout the server runs with, which it read when
/// it started: a different `FDSERVER_PRELOAD_IDLE_TIMEOUT` later does not change it.
#[test]
fn status_shows_the_idle_timeout_in_force() {
    let _wd = wd("status_shows_the_idle_timeout_in_force");
    let mut pl = Pl::new("idleshow");
    pl.set("FDSERVER_PRELOAD_IDLE_TIMEOUT", "2m");
    pl.ok(&["echo", "x"]);
    pl.set("FDSERVER_PRELOAD_IDLE_TIMEOUT", "5m");
    let out = pl.ok(&["--preloader", "status"]);
    assert!(
        out.contains("idle timeout: 2 min (set when the server started)"),
        "{out}"
    );
}

/// Review finding 16: the server keeps only what it uses: not the readiness pipe (its reader,
/// the client that started it, is gone), and one descriptor of its directory.
#[test]
fn the_server_keeps_no_readiness_pipe_and_one_directory() {
    let _wd = wd("the_server_keeps_no_readiness_pipe_and_one_directory");
    let pl = Pl::new("srvfds");
    pl.ok(&["echo", "x"]);
    let server = pl.server().server;
    let links: Vec<String> = std::fs::read_dir(format!("/proc/{server}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| Some(std::fs::read_link(e.path()).ok()?.display().to_string()))
        .collect();
    assert!(
        !links.iter().any(|l| l.starts_with("pipe:")),
        "no pipe: {links:?}"
    );
    let dir = std::fs::canonicalize(&pl.dir)
        .unwrap()
        .display()
        .to_string();
    assert_eq!(
        links.iter().filter(|l| **l == dir).count(),
        1,
        "one descriptor of the directory: {links:?}"
    );
}

/// Review finding 15: the log stays bounded while a preload runs, however much it prints: the
/// server copies the template's output into the log (it used to go straight to the file, 30
/// MB for a preload that printed 30 MB, until the preload ended).
#[test]
fn the_log_is_bounded_while_a_preload_runs() {
    let _wd = wd("the_log_is_bounded_while_a_preload_runs");
    let mut pl = Pl::new("logpre");
    pl.set("APP_PRELOAD_OUTPUT", "3000000");
    let mut gate = Gate::new(&mut pl, "dev");
    let mut c = Running::spawn(pl.cmd(["echo", "x"]));
    gate.wait_started(); // printed everything, held before it ends
    let log = std::fs::metadata(pl.files().log).unwrap().len();
    // The copying may be a pipe's worth (64 KiB) behind, and a line over.
    assert!(
        log <= (1 << 20) + (64 << 10) + 100,
        "log of {log} bytes while the preload runs"
    );
    gate.release();
    assert_eq!(c.line().as_deref(), Some("x"));
    assert!(c.wait().success());
}
