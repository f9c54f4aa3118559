//! `#[fdserver]` signal handlers and lifecycle hooks through real forked servers. Signal
//! handlers and `finalize` report on a pipe the test reads, so nothing waits on a timer.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::FromRawFd;

use fdserver::{fdserver, Context, Error, RemoteErrorKind, Shutdown, Signal};
use fdserver_tests::{watchdog, SECS};

fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2: {}", io::Error::last_os_error());
    // SAFETY: pipe2 just opened both; nothing else owns them.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

/// Reads one line (blocking until the server writes it).
fn line(r: &mut BufReader<File>) -> String {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    s.trim_end().to_owned()
}

#[derive(Default)]
struct Life {
    events: Option<File>,
    forks: u32,
    initialized_in: Option<u32>,
    usr1: u32,
    last_signal: Option<Signal>,
}

impl Life {
    fn event(&mut self, what: &str) {
        if let Some(f) = &mut self.events {
            let _ = writeln!(f, "{what}");
        }
    }
}

#[fdserver]
impl Life {
    /// Hands the server the pipe it reports events on.
    fn subscribe(&mut self, events: File) {
        self.events = Some(events);
        self.event("subscribed");
    }

    /// (times `before_fork` ran, whether `initialize` ran in this process, SIGUSR1 count).
    fn state(&self, ctx: &mut Context<'_>) -> (u32, bool, u32) {
        (
            self.forks,
            self.initialized_in == Some(ctx.pid()),
            self.usr1,
        )
    }

    fn last_signal(&self) -> Option<String> {
        self.last_signal.map(|s| s.as_str().to_owned())
    }

    #[fdserver(signal = "SIGUSR1")]
    fn on_usr1(&mut self) {
        self.usr1 += 1;
        let n = self.usr1;
        self.event(&format!("usr1 {n}"));
    }

    #[fdserver(signal = SIGUSR2, signal = "SIGHUP")]
    fn on_other(&mut self, signal: Signal, ctx: &mut Context<'_>) {
        self.last_signal = Some(signal);
        let pid = ctx.pid();
        self.event(&format!("{} in {pid}", signal.as_str()));
    }

    #[fdserver(signal = "SIGTERM")]
    fn on_term(&mut self, ctx: &mut Context<'_>) {
        self.event("term");
        ctx.quit();
    }

    #[fdserver(before_fork)]
    fn count_fork(&mut self) {
        self.forks += 1;
    }

    #[fdserver(initialize)]
    fn init(&mut self) -> io::Result<()> {
        self.initialized_in = Some(std::process::id());
        Ok(())
    }

    #[fdserver(finalize)]
    fn fin(&mut self) {
        self.event("finalize");
    }
}

#[test]
fn signal_handlers_run_on_the_loop() {
    let _wd = watchdog("signal_handlers_run_on_the_loop", SECS(30));
    let (r, w) = pipe();
    let mut events = BufReader::new(r);
    let mut c = Life::default().start().unwrap();
    c.subscribe(w).unwrap();
    assert_eq!(line(&mut events), "subscribed");

    for n in 1..=3 {
        c.signal(Signal::SIGUSR1).unwrap();
        assert_eq!(line(&mut events), format!("usr1 {n}"));
    }
    // The handler's effect is visible to the next message.
    assert_eq!(c.state().unwrap().2, 3);

    // One method for two signals, taking the signal and the context.
    c.signal(Signal::SIGUSR2).unwrap();
    assert_eq!(line(&mut events), format!("SIGUSR2 in {}", c.pid()));
    assert_eq!(c.last_signal().unwrap().as_deref(), Some("SIGUSR2"));
    // A declared SIGHUP handler runs (a forked server otherwise ignores SIGHUP).
    c.signal(Signal::SIGHUP).unwrap();
    assert_eq!(line(&mut events), format!("SIGHUP in {}", c.pid()));
    assert_eq!(c.last_signal().unwrap().as_deref(), Some("SIGHUP"));

    // A SIGTERM handler that quits: the loop ends, `finalize` runs, the exit is clean.
    c.signal(Signal::SIGTERM).unwrap();
    assert_eq!(line(&mut events), "term");
    assert_eq!(line(&mut events), "finalize");
    let e = c.state().unwrap_err();
    assert!(matches!(e, Error::ServerExited(s) if s.success()), "{e:?}");
    let stopped = c.stop().unwrap();
    assert_eq!(stopped.how, Shutdown::AlreadyExited);
}

#[test]
fn hooks_run_where_they_should() {
    let _wd = watchdog("hooks_run_where_they_should", SECS(30));
    let (r, w) = pipe();
    let mut events = BufReader::new(r);
    let mut life = Life::default();
    let mut c = life.start().unwrap();
    // `before_fork` ran in the parent, before the fork: both copies saw it.
    assert_eq!(life.forks, 1);
    // `initialize` ran in the child (its pid, not ours).
    assert_eq!(c.state().unwrap(), (1, true, 0));
    assert_eq!(life.initialized_in, None);

    c.subscribe(w).unwrap();
    assert_eq!(line(&mut events), "subscribed");
    let stopped = c.stop().unwrap();
    assert_eq!(stopped.how, Shutdown::Graceful);
    // `finalize` ran in the child after its loop ended.
    assert_eq!(line(&mut events), "finalize");

    // A second start runs `before_fork` again.
    let c = life.start().unwrap();
    assert_eq!(life.forks, 2);
    c.stop().unwrap();
}

struct Picky {
    config: Option<String>,
}

#[fdserver]
impl Picky {
    #[fdserver(initialize)]
    fn load(&mut self) -> Result<(), String> {
        match &self.config {
            Some(_) => Ok(()),
            None => Err("no configuration given".into()),
        }
    }

    fn config(&self) -> String {
        self.config.clone().unwrap_or_default()
    }
}

#[test]
fn failing_initialize_fails_start() {
    let _wd = watchdog("failing_initialize_fails_start", SECS(30));
    let e = Picky { config: None }.start().unwrap_err();
    assert!(
        matches!(&e, Error::Remote(r) if r.kind() == &RemoteErrorKind::Initialize
            && r.message() == "no configuration given"),
        "{e:?}"
    );
    let mut c = Picky {
        config: Some("ok".into()),
    }
    .start()
    .unwrap();
    assert_eq!(c.config().unwrap(), "ok");
    c.stop().unwrap();
}
