//! Issue 12, items 8-10: what users of Spring expect around the preloader: `--preloader
//! status`, process titles, watched files restarting the template in the background,
//! diagnostics (the verbose line, a foreground server, errors that say who failed and where
//! the log is).

mod preload_common;

use preload_common::*;

fn cmdline(pid: u32) -> String {
    String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
        .trim_end_matches('\0')
        .replace('\0', " ")
}

/// Item 8. Status shows the app, the socket and log paths, the server and each template (pid,
/// uptime, memory, running commands; or that it is preloading); `ps` shows titles for the
/// server and the template, and the worker's own arguments.
#[test]
fn status_and_process_titles() {
    let _wd = wd("status_and_process_titles");
    let mut pl = Pl::new("status");
    let mut gate = Gate::new(&mut pl, "dev");
    let mut first = Running::spawn(pl.cmd(["echo", "first"]));
    gate.wait_started();
    let text = pl.ok(&["--preloader", "status"]);
    assert!(
        text.contains("template \"dev\": preloading (for "),
        "{text}"
    );
    gate.release();
    assert_eq!(first.line().as_deref(), Some("first"));
    assert!(first.wait().success());

    let mut c = Running::spawn(pl.cmd(["wait", "a b"]));
    let worker = c.expect_pid("ready");
    let text = pl.ok(&["--preloader", "status"]);
    let st = pl.server();
    let tpid = st.template("dev").unwrap();
    let files = pl.files();
    for want in [
        format!("preload-app: preloader server pid {}, up ", st.server),
        format!("socket: {}", files.sock.display()),
        format!("log:    {}", files.log.display()),
        format!("template \"dev\": pid {tpid}, up "),
        " MiB resident, 1 running command".to_owned(),
    ] {
        assert!(text.contains(&want), "{want:?} in:\n{text}");
    }
    assert!(
        cmdline(st.server).starts_with("preload-app: preloader server | started "),
        "{}",
        cmdline(st.server)
    );
    assert_eq!(cmdline(tpid), "preload-app: template dev");
    assert_eq!(
        cmdline(worker),
        format!("{APP} wait a b"),
        "the command's own argv"
    );
    c.signal(libc::SIGTERM);
    c.wait();
    assert!(pl
        .ok(&["--preloader", "status"])
        .contains(", 0 running commands"));
}

/// Item 9. Changing a watched file restarts the template at once, in the background: the
/// second preload starts without any command (it reaches the gate), and the first command
/// after it is served by the new template without preloading again.
#[test]
fn watched_file_change_preloads_in_the_background() {
    let _wd = wd("watched_file_change_preloads_in_the_background");
    let mut pl = Pl::new("watch");
    let watched = pl.path("config.txt");
    std::fs::write(&watched, "v1").unwrap();
    pl.set("APP_WATCH", &watched);
    let mut gate = Gate::new(&mut pl, "dev");
    let mut first = Running::spawn(pl.cmd(["template"]));
    gate.wait_started();
    gate.release();
    let old = first.line().unwrap();
    assert!(first.wait().success());

    // An editor's save: a new file renamed over the old one.
    let tmp = pl.path("config.txt.new");
    std::fs::write(&tmp, "v2").unwrap();
    std::fs::rename(&tmp, &watched).unwrap();
    assert_eq!(
        gate.wait_started(),
        "preloading dev",
        "restarted without a command"
    );
    gate.release();
    // The new template is up once status shows another pid (a bounded wait on status).
    let old_pid: u32 = old.split_once(' ').unwrap().1.parse().unwrap();
    let deadline = std::time::Instant::now() + RUN_LIMIT;
    let new_pid = loop {
        match pl.server().template("dev") {
            Some(p) if p != old_pid => break p,
            _ => assert!(std::time::Instant::now() < deadline, "no new template"),
        }
    };
    assert_eq!(pl.ok(&["template"]).trim(), format!("dev {new_pid}"));
    assert_eq!(
        pl.preloads(),
        vec!["dev", "dev"],
        "no preload for the command itself"
    );
    assert_gone(old_pid, "the retired template");
}

/// Item 10. `FDSERVER_PRELOAD_VERBOSE=1`: each command says on stderr how it runs, and in which
/// template.
#[test]
fn verbose_line_says_how_the_command_ran() {
    let _wd = wd("verbose_line_says_how_the_command_ran");
    let pl = Pl::new("verbose");
    pl.ok(&["echo", "warm"]);
    let tpid = pl.server().template("dev").unwrap();
    let (warm, cold) = pl.both(&["echo", "hi"], |c| {
        c.env("FDSERVER_PRELOAD_VERBOSE", "1");
    });
    assert_eq!(
        (warm.stdout.as_str(), cold.stdout.as_str()),
        ("hi\n", "hi\n")
    );
    assert!(
        warm.stderr.contains(&format!(
            "running preloaded: template \"dev\" (pid {tpid}, preloaded "
        )),
        "{warm:?}"
    );
    assert!(
        cold.stderr.contains("running in-process, not preloaded"),
        "{cold:?}"
    );
    // Off by default.
    assert_eq!(pl.run(&["echo", "hi"]).stderr, "");
}

/// Item 10. `--preloader serve` runs the server in the foreground, logging to the terminal
/// (here a pipe), with its templates' output; clients use it; `--preloader stop` ends it.
#[test]
fn foreground_server_logs_to_its_terminal() {
    let _wd = wd("foreground_server_logs_to_its_terminal");
    let mut pl = Pl::new("fg");
    pl.set("APP_PRELOAD_OUTPUT", "200");
    let mut sh = pl.command("sh");
    sh.args(["-c", r#"exec "$0" --preloader serve 2>&1"#, APP]);
    let mut server = Running::spawn(sh);
    let first = server.line().unwrap();
    assert!(first.contains("listening on"), "{first}");
    assert_eq!(pl.ok(&["echo", "hi"]), "hi\n");
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|l: &String| l.contains("template \"dev\" preloaded"))
    {
        seen.push(server.line().expect("server output"));
    }
    assert!(
        seen.iter().any(|l| l.starts_with("xxxx")),
        "the preload's output: {seen:?}"
    );
    let text = pl.ok(&["--preloader", "status"]);
    assert!(
        text.contains("log:    the terminal of `--preloader serve`"),
        "{text}"
    );
    pl.stop();
    assert!(server.wait().success());
    assert!(pl.log().is_empty(), "nothing went to the log file");
}

/// Item 10. A template that crashes while preloading: the message names the template, its
/// pid and signal, points to the log and says what to do.
#[test]
fn template_crash_message_names_the_process_and_the_log() {
    let _wd = wd("template_crash_message_names_the_process_and_the_log");
    let mut pl = Pl::new("crashmsg");
    let flag = pl.path("crash");
    std::fs::write(&flag, "").unwrap();
    pl.set("APP_CRASH_IF", &flag);
    let out = pl.run(&["echo", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let log = pl.files().log.display().to_string();
    for want in [
        "the template for \"dev\" (pid ",
        "crashed while preloading: killed by signal 6 (SIGABRT)",
        &format!("its output is in {log}"),
        "run the command again",
    ] {
        assert!(out.stderr.contains(want), "{want:?} in {:?}", out.stderr);
    }
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(pl.ok(&["echo", "ok"]), "ok\n");
}

/// Item 10. Errors about the preloader's files name the file.
#[test]
fn file_errors_name_the_file() {
    let _wd = wd("file_errors_name_the_file");
    let pl = Pl::new("fileerr");
    let log = pl.files().log;
    std::fs::create_dir(&log).unwrap(); // a directory where the log file goes
    let out = pl.run(&["echo", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains(&format!(
            "cannot open the preloader's log {}",
            log.display()
        )),
        "{:?}",
        out.stderr
    );
}

/// Review finding 4: a template preloads with the environment of a command of its key (the
/// one that started it), not with the server's (the first command's, whatever its key): the
/// template "test" sees the `test` command's configuration.
#[test]
fn templates_preload_with_their_commands_environment() {
    let _wd = wd("templates_preload_with_their_commands_environment");
    let pl = Pl::new("tplenv");
    let conf = |key: &str, value: &str| {
        let mut c = pl.cmd(["preload-conf"]);
        c.env("APP_ENV", key).env("APP_CONF", value);
        output(c, RUN_LIMIT).stdout
    };
    assert_eq!(conf("dev", "first"), "Some(\"first\")\n");
    assert_eq!(conf("test", "second"), "Some(\"second\")\n");
    // Warm: the template keeps what it preloaded with.
    assert_eq!(conf("test", "third"), "Some(\"second\")\n");
}

/// Review finding 16: with `FDSERVER_PRELOAD_VERBOSE`, the command that starts the server says
/// so; `FDSERVER_PRELOAD=OFF` (any case) turns the preloader off like `off`.
#[test]
fn verbose_says_when_it_started_the_server_and_off_ignores_case() {
    let _wd = wd("verbose_says_when_it_started_the_server_and_off_ignores_case");
    let pl = Pl::new("vstart");
    for off in ["OFF", "False", "No"] {
        let mut c = pl.cmd(["echo", "x"]);
        c.env("FDSERVER_PRELOAD", off);
        assert_eq!(output(c, RUN_LIMIT).stdout, "x\n");
        assert_eq!(pl.status(), None, "FDSERVER_PRELOAD={off} starts no server");
    }
    let mut c = pl.cmd(["echo", "x"]);
    c.env("FDSERVER_PRELOAD_VERBOSE", "1");
    let out = output(c, RUN_LIMIT);
    let server = pl.server().server;
    assert!(
        out.stderr.contains(&format!(
            "started a preloader server (pid {server}) for this command"
        )),
        "{out:?}"
    );
    let mut c = pl.cmd(["echo", "x"]);
    c.env("FDSERVER_PRELOAD_VERBOSE", "1");
    assert!(!output(c, RUN_LIMIT).stderr.contains("started a"));
}
