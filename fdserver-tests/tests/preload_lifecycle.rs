//! Preloader lifecycle: auto-start, racing cold starts, `status`/`stop`, running without the
//! preloader, watched-file restarts, template restarts, a preloading template not blocking the
//! server, large preload output.

mod preload_common;

use preload_common::*;

/// Auto-start: the first command cold-starts a server; `status` lists it and its template; the
/// files are where the library says; warm runs reuse the same template.
#[test]
fn first_run_starts_the_server_and_status_lists_it() {
    let _wd = wd("first_run_starts_the_server_and_status_lists_it");
    let pl = Pl::new("auto");
    assert_eq!(pl.status(), None, "no server before the first command");
    assert!(!pl.files().sock.exists());

    let out = pl.ok(&["template"]);
    let (key, tpid) = out.trim().split_once(' ').expect("`key pid`");
    assert_eq!(key, "dev");
    let tpid: u32 = tpid.parse().unwrap();

    let st = pl.server();
    assert_eq!(st.version, fdserver::preload::PROTOCOL_VERSION);
    assert_eq!(st.templates, vec![("dev".to_owned(), Some(tpid))]);
    assert!(alive(st.server), "server {} should be running", st.server);
    assert_eq!(
        ppid(tpid),
        Some(st.server),
        "the template is the server's child"
    );
    let files = pl.files();
    assert!(files.sock.exists(), "socket at {}", files.sock.display());
    assert_eq!(
        std::fs::read_to_string(&files.pid).unwrap().trim(),
        st.server.to_string(),
        "pidfile names the server"
    );

    // Warm runs: same template, one preload.
    for _ in 0..3 {
        assert_eq!(pl.ok(&["template"]).trim(), format!("dev {tpid}"));
    }
    assert_eq!(pl.preloads(), vec!["dev"]);
    assert_eq!(pl.server().server, st.server);
    assert_eq!(zombies_under(st.server), Vec::<u32>::new());
}

/// Several clients racing a cold start start exactly one server and one template.
#[test]
fn racing_cold_starts_start_one_server() {
    let _wd = wd("racing_cold_starts_start_one_server");
    let pl = Pl::new("race");
    let clients: Vec<Running> = (0..6)
        .map(|_| Running::spawn(pl.cmd(["template"])))
        .collect();
    let mut seen = Vec::new();
    for mut c in clients {
        let line = c.line().expect("template line");
        assert!(c.wait().success());
        seen.push(line);
    }
    seen.dedup();
    assert_eq!(seen.len(), 1, "all clients ran on one template: {seen:?}");
    assert_eq!(pl.preloads(), vec!["dev"], "exactly one preload");
    let st = pl.server();
    assert_eq!(st.templates.len(), 1);
    assert_eq!(
        pl.log().matches("listening on").count(),
        1,
        "exactly one server started:\n{}",
        pl.log()
    );
}

/// `stop` ends the server and its templates and removes the socket and pidfile; `status` then
/// says none runs; a second `stop` is a no-op; the next command starts a new server.
#[test]
fn stop_and_status() {
    let _wd = wd("stop_and_status");
    let pl = Pl::new("stop");
    assert!(pl.stop().contains("no preloader server was running"));
    pl.ok(&["echo", "hi"]);
    let st = pl.server();
    let tpid = st.template("dev").unwrap();

    assert!(pl.stop().contains("preloader server stopped"));
    assert_gone(st.server, "server after stop");
    assert_gone(tpid, "template after stop");
    let files = pl.files();
    assert!(!files.sock.exists(), "socket removed");
    assert!(!files.pid.exists(), "pidfile removed");
    assert_eq!(pl.status(), None);
    assert!(pl.stop().contains("no preloader server was running"));

    assert_eq!(pl.ok(&["echo", "again"]), "again\n");
    let st2 = pl.server();
    assert_ne!(st2.server, st.server, "a new server");
    assert_eq!(pl.preloads(), vec!["dev", "dev"]);
}

/// `--preloader stop` while a command runs: the server stops at once, the running command goes
/// on (as a command run without the preloader would: stopping the preloader is no reason to
/// end a user's command): its template takes no more commands and exits once it ends, and the
/// client still relays signals and reports the exit. (Review of issues 11 and 12, finding 13:
/// `stop` used to SIGTERM every running command.)
#[test]
fn stop_lets_running_commands_finish() {
    let _wd = wd("stop_lets_running_commands_finish");
    let pl = Pl::new("stopr");
    let mut c = Running::spawn(pl.cmd(["wait"]));
    let wpid = c.expect_pid("ready");
    let st = pl.server();
    let tpid = st.template("dev").expect("a template");
    pl.stop();
    assert_gone(st.server, "server after stop");
    assert!(alive(wpid) && c.running(), "the running command goes on");
    assert!(alive(tpid), "its template waits for it");
    assert_eq!(pl.status(), None, "no server after stop");
    // The next command starts a new server; the old command still gets its signals.
    assert_eq!(pl.ok(&["echo", "next"]), "next\n");
    c.signal(libc::SIGINT);
    assert_eq!(signal_of(&c.wait()), Some(libc::SIGINT));
    assert_gone(wpid, "worker");
    assert_gone(tpid, "the retired template, once its command ended");
}

/// A template someone stopped (`kill -STOP`, a debugger that detached badly) does not outlive
/// `--preloader stop`: the server continues each template it lets go, so that an idle one sees
/// its channel close and exits.
#[test]
fn stop_ends_a_stopped_idle_template() {
    let _wd = wd("stop_ends_a_stopped_idle_template");
    let pl = Pl::new("stopstp");
    pl.ok(&["echo", "warm"]);
    let st = pl.server();
    let tpid = st.template("dev").expect("a template");
    // SAFETY: tpid is the template this test's server started (listed by its status).
    unsafe { libc::kill(tpid as i32, libc::SIGSTOP) };
    assert!(wait_until(|| state(tpid) == Some('T')), "template stopped");
    pl.stop();
    assert_gone(st.server, "server after stop");
    assert_gone(tpid, "the stopped template after stop");
}

/// `--preloader stop` of a server someone stopped (SIGSTOP), with its stopped template: the
/// stop continues the server (SIGCONT after SIGTERM, as `kill` does for a stopped job), which
/// then stops as usual, in its grace period, and lets its template go (continuing it too).
/// Without the SIGCONT, the server only died of the SIGKILL after the grace period, without
/// cleaning up (no "stopped" line in its log).
#[test]
fn stop_continues_a_stopped_server() {
    let _wd = wd("stop_continues_a_stopped_server");
    let pl = Pl::new("stopsrv");
    pl.ok(&["echo", "warm"]);
    let st = pl.server();
    let tpid = st.template("dev").expect("a template");
    for pid in [tpid, st.server] {
        // SAFETY: this test's own server and its template (listed by its status).
        unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
        assert!(wait_until(|| state(pid) == Some('T')), "{pid} stopped");
    }
    pl.stop();
    assert_gone(st.server, "the stopped server after stop");
    assert_gone(tpid, "its stopped template after stop");
    let log = pl.log();
    assert!(
        log.contains("stopped (running commands finish in their templates)"),
        "the server stopped by itself: {log}"
    );
}

/// A stopped template whose server is killed (SIGKILL: it cannot continue its templates) is
/// continued by the kernel (its parent-death signal is SIGCONT once preloaded), sees its
/// channel close and exits.
#[test]
fn a_stopped_template_exits_when_its_server_is_killed() {
    let _wd = wd("a_stopped_template_exits_when_its_server_is_killed");
    let pl = Pl::new("killstp");
    pl.ok(&["echo", "warm"]);
    let st = pl.server();
    let tpid = st.template("dev").expect("a template");
    // SAFETY: this test's own server and its template (listed by its status).
    unsafe { libc::kill(tpid as i32, libc::SIGSTOP) };
    assert!(wait_until(|| state(tpid) == Some('T')), "template stopped");
    // SAFETY: as above.
    unsafe { libc::kill(st.server as i32, libc::SIGKILL) };
    assert_gone(st.server, "killed server");
    assert_gone(tpid, "the stopped template of a killed server");
    pl.stop();
}

/// `--preloader restart` while a command runs: a new server and template at once, and the
/// running command finishes in its old template (finding 13 of the review).
#[test]
fn restart_lets_running_commands_finish() {
    let _wd = wd("restart_lets_running_commands_finish");
    let pl = Pl::new("restr");
    let mut c = Running::spawn(pl.cmd(["wait"]));
    let wpid = c.expect_pid("ready");
    let old = pl.server();
    let tpid = old.template("dev").expect("a template");
    pl.ok(&["--preloader", "restart"]);
    let new = pl.server();
    assert_ne!(new.server, old.server, "a new server");
    assert_ne!(new.template("dev"), Some(tpid), "a new template");
    assert!(alive(wpid) && c.running(), "the running command goes on");
    c.signal(libc::SIGTERM);
    assert_eq!(signal_of(&c.wait()), Some(libc::SIGTERM));
    assert_gone(tpid, "the old template, once its command ended");
}

/// A template retired by a stop still does for its running commands what it did before: when a
/// client dies (SIGKILL: it cannot end its worker itself) the worker's group is ended, and a
/// worker that stops (Ctrl-Z relayed) is reported, so that the client, the shell's job, stops
/// too. (Found with finding 2 of the review: a retired template only waited for its workers.)
#[test]
fn a_retired_template_still_serves_its_running_commands() {
    let _wd = wd("a_retired_template_still_serves_its_running_commands");
    let pl = Pl::new("retsrv");
    let mut stopping = Running::spawn(pl.cmd(["wait"]));
    let stopping_pid = stopping.expect_pid("ready");
    let mut killed = Running::spawn(pl.cmd(["wait"]));
    let killed_pid = killed.expect_pid("ready");
    let tpid = pl.server().template("dev").expect("a template");
    pl.stop();

    killed.signal(libc::SIGKILL);
    killed.wait();
    assert_gone(killed_pid, "the worker of a client that died");

    stopping.signal(libc::SIGTSTP);
    assert!(
        wait_until(|| state(stopping.pid()) == Some('T')),
        "the client stops with its worker: {:?}",
        state(stopping.pid())
    );
    assert_eq!(state(stopping_pid), Some('T'), "the worker is stopped");
    stopping.signal(libc::SIGCONT);
    stopping.signal(libc::SIGINT);
    assert_eq!(signal_of(&stopping.wait()), Some(libc::SIGINT));
    assert_gone(tpid, "the retired template, once its commands ended");
}

/// `FDSERVER_PRELOAD=0` runs in-process: a preload on every run, no server.
#[test]
fn disabled_preloader_runs_in_process() {
    let _wd = wd("disabled_preloader_runs_in_process");
    let mut pl = Pl::new("off");
    pl.set("FDSERVER_PRELOAD", "0");
    let mut pids = Vec::new();
    for i in 1..=3 {
        let mut r = Running::spawn(pl.cmd(["template"]));
        let line = r.line().unwrap();
        let client = r.pid();
        assert!(r.wait().success());
        assert_eq!(
            line,
            format!("dev {client}"),
            "preloaded by the client itself"
        );
        assert_eq!(pl.preloads().len(), i, "one preload per run");
        pids.push(client);
    }
    let out = pl.run(&["exit", "7"]);
    assert_eq!(out.status.code(), Some(7));
    assert!(!pl.files().sock.exists(), "no server was started");
    pl.set("FDSERVER_PRELOAD", "");
    assert_eq!(pl.status(), None);
}

/// A watched file that changes makes the next command run on a new template (one more
/// preload); the old template finishes its running worker first, then exits.
#[test]
fn watched_file_change_restarts_the_template_after_running_workers() {
    let _wd = wd("watched_file_change_restarts_the_template_after_running_workers");
    let mut pl = Pl::new("watch");
    let watched = pl.path("config.txt");
    std::fs::write(&watched, "one").unwrap();
    pl.set("APP_WATCH", &watched);

    let t1 = pl.ok(&["template"]);
    let mut long = Running::spawn(pl.cmd(["wait"]));
    let wpid = long.expect_pid("ready");
    let old = pl.server().template("dev").unwrap();
    assert_eq!(t1.trim(), format!("dev {old}"));

    // Change the size (mtime granularity cannot hide it).
    std::fs::write(&watched, "two, longer").unwrap();
    let t2 = pl.ok(&["template"]);
    let new = pl.server().template("dev").unwrap();
    assert_ne!(old, new, "a new template after the change");
    assert_eq!(t2.trim(), format!("dev {new}"));
    assert_eq!(pl.preloads(), vec!["dev", "dev"]);

    // The old template waits for its worker.
    assert!(alive(wpid), "the running worker is not cut short");
    assert!(long.running());
    assert!(
        alive(old),
        "the retired template waits for its running worker"
    );

    long.signal(libc::SIGINT);
    assert_eq!(signal_of(&long.wait()), Some(libc::SIGINT));
    assert_gone(wpid, "worker");
    assert_gone(old, "retired template once its worker finished");

    // No further change: no further preload.
    pl.ok(&["template"]);
    assert_eq!(pl.preloads().len(), 2);
}

/// A template that died is replaced on the next command.
#[test]
fn dead_template_is_restarted_on_next_command() {
    let _wd = wd("dead_template_is_restarted_on_next_command");
    let pl = Pl::new("tdead");
    pl.ok(&["echo", "x"]);
    let st = pl.server();
    let old = st.template("dev").unwrap();
    // SAFETY: kill(2) on the test's own template process.
    assert_eq!(unsafe { libc::kill(old as i32, libc::SIGKILL) }, 0);
    assert_gone(old, "killed template");

    let out = pl.ok(&["template"]);
    let new = pl.server().template("dev").unwrap();
    assert_ne!(new, old);
    assert_eq!(out.trim(), format!("dev {new}"));
    assert_eq!(pl.preloads(), vec!["dev", "dev"]);
    assert_eq!(pl.server().server, st.server, "same server");
    assert_eq!(zombies_under(st.server), Vec::<u32>::new());
}

/// One template per key: APP_ENV selects it.
#[test]
fn one_template_per_key() {
    let _wd = wd("one_template_per_key");
    let pl = Pl::new("keys");
    let a = pl.ok(&["template"]);
    let mut test = pl.cmd(["template"]);
    test.env("APP_ENV", "test");
    let b = output(test, RUN_LIMIT);
    assert!(b.status.success(), "{b:?}");
    assert!(a.starts_with("dev "));
    assert!(b.stdout.starts_with("test "));
    let st = pl.server();
    assert_eq!(st.templates.len(), 2, "{st:?}");
    let mut keys = pl.preloads();
    keys.sort();
    assert_eq!(keys, vec!["dev", "test"]);
}

/// While one template preloads (held at a gate), the server keeps serving: other keys run and
/// `status` answers; a second client of the preloading key queues and is served once the
/// preload ends.
#[test]
fn preloading_template_does_not_block_the_server() {
    let _wd = wd("preloading_template_does_not_block_the_server");
    let mut pl = Pl::new("slow");
    let mut gate = Gate::new(&mut pl, "slow");
    let mut slow1 = pl.cmd(["echo", "slow one"]);
    slow1.env("APP_ENV", "slow");
    let mut slow1 = Running::spawn(slow1);
    assert_eq!(gate.wait_started(), "preloading slow");

    // Served while "slow" preloads.
    assert_eq!(pl.ok(&["echo", "fast"]), "fast\n");
    let st = pl.server();
    assert!(st.template("dev").is_some());
    let mut slow2 = pl.cmd(["echo", "slow two"]);
    slow2.env("APP_ENV", "slow");
    let mut slow2 = Running::spawn(slow2);
    assert!(slow1.running() && slow2.running());

    gate.release();
    assert_eq!(slow1.line().as_deref(), Some("slow one"));
    assert_eq!(slow2.line().as_deref(), Some("slow two"));
    assert!(slow1.wait().success());
    assert!(slow2.wait().success());
    let mut keys = pl.preloads();
    keys.sort();
    assert_eq!(keys, vec!["dev", "slow"], "one preload per key");
}

/// Preload output much larger than a pipe buffer does not hang the cold start, and none of it
/// reaches the client's stdout (it goes to the server's log).
#[test]
fn large_preload_output_does_not_hang() {
    let _wd = wd("large_preload_output_does_not_hang");
    let mut pl = Pl::new("bigout");
    pl.set("APP_PRELOAD_OUTPUT", "1000000");
    // Cold, through a pipe to another process as well.
    let out = pl.sh(r#""$0" echo done | cat"#);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, "done\n");
    assert_eq!(pl.ok(&["echo", "warm"]), "warm\n");
    assert!(
        std::fs::metadata(pl.files().log).unwrap().len() >= 990_000,
        "the preload output went to the log"
    );
}

/// Issue 10, item 1: a preload whose helper thread prints finishes (the template does not keep
/// std's stdout lock from its fork), and a command's helper threads can print in the worker.
/// Before the fix the helper thread blocked for good on the lock the template's main thread had
/// kept since the fork, and the client waited for a template that never became ready (here:
/// killed by `RUN_LIMIT`).
#[test]
fn threads_that_print_in_a_preload_and_in_a_command_do_not_block() {
    let _wd = wd("threads_that_print_in_a_preload_and_in_a_command_do_not_block");
    let mut pl = Pl::new("thrprint");
    pl.set(
        "APP_PRELOAD_THREAD",
        "printed by the preload's helper thread",
    );
    let out = pl.ok(&["thread-echo", "hello", "there"]);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["thread 0: hello there", "thread 1: hello there"]);
    assert!(
        pl.log().contains("printed by the preload's helper thread"),
        "the helper thread's line reached the server's log: {:?}",
        pl.log()
    );
    // Warm, the same again from the same template.
    assert_eq!(pl.ok(&["thread-echo", "warm"]).lines().count(), 2);
    assert_eq!(pl.preloads(), ["dev"]);
}

/// `stop` while a template is still preloading: the server stops within the grace period and
/// the preloading template does not outlive it; the command that waited for it does not fail:
/// it starts a new server, whose preload it waits for (review finding 11: it used to fail with
/// "the preloader server was stopped while the template for "dev" was preloading; run the
/// command again").
#[test]
fn stop_during_preload_ends_the_template_and_the_command_still_runs() {
    let _wd = wd("stop_during_preload_ends_the_template_and_the_command_still_runs");
    let mut pl = Pl::new("stoppre");
    let mut gate = Gate::new(&mut pl, "dev");
    let mut c = Running::spawn(pl.cmd(["echo", "ran"]));
    gate.wait_started();
    let st = pl.server();
    let preloading = children_of(st.server);
    assert_eq!(
        preloading.len(),
        1,
        "one template preloading: {preloading:?}"
    );
    let tpid = preloading[0];

    pl.stop();
    assert_gone(st.server, "server after stop");
    let template_gone = fdserver_tests::wait_pid_gone(tpid, RUN_LIMIT);
    // The command started a new server, whose template preloads (at the gate again).
    gate.wait_started();
    gate.release();
    assert!(
        template_gone,
        "the preloading template {tpid} outlived `stop`"
    );
    assert_eq!(c.line().as_deref(), Some("ran"));
    assert!(c.wait().success());
    assert_ne!(pl.server().server, st.server, "a new server");
}

/// A retired template reports each worker's end to its client as it happens: a short command
/// started after a long one does not wait for the long one.
#[test]
fn a_retired_template_reports_workers_as_they_end_not_in_start_order() {
    let _wd = wd("retired_template_reports_in_end_order");
    let mut pl = Pl::new("retord");
    let watched = pl.path("config.txt");
    std::fs::write(&watched, "one").unwrap();
    pl.set("APP_WATCH", &watched);
    pl.ok(&["template"]);

    let mut older = Running::spawn(pl.cmd(["wait"]));
    let older_pid = older.expect_pid("ready");
    let mut newer = Running::spawn(pl.cmd(["wait"]));
    let newer_pid = newer.expect_pid("ready");

    // Retire the template (its watched file changed): it now only waits for its workers.
    std::fs::write(&watched, "two, longer").unwrap();
    pl.ok(&["template"]);

    newer.signal(libc::SIGINT);
    assert_eq!(signal_of(&newer.wait()), Some(libc::SIGINT));
    assert_gone(newer_pid, "the newer worker");
    assert!(
        alive(older_pid) && older.running(),
        "the newer command ended while the older one still runs"
    );

    older.signal(libc::SIGINT);
    assert_eq!(signal_of(&older.wait()), Some(libc::SIGINT));
    assert_gone(older_pid, "the older worker");
}
