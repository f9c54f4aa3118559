//! A preloaded application for the preloader's integration tests. Its commands probe what a
//! worker sees; its preload is steered by environment variables (a template preloads with the
//! environment of the command that started it).
//!
//! Preload: appends a line to `$APP_COUNTER` (counts preloads); prints `$APP_PRELOAD_OUTPUT`
//! bytes (before the gate below); fails if `$APP_FAIL_IF` exists; aborts if `$APP_CRASH_IF`
//! exists; with `$APP_PRELOAD_THREAD` set, starts a helper thread that prints that text to stdout
//! and joins it; records `$APP_CONF` (the `preload-conf` command prints it); with `$APP_KEEP_FD`
//! set, opens `/dev/null` and keeps it open (`kept-fd` prints its number).
//! `$APP_WATCH` is the watched file. The template key is `$APP_ENV` (default "dev").
//! `$APP_PRELOAD_TIMEOUT_MS` sets `Options::preload_timeout`, `$APP_HANDSHAKE_TIMEOUT_MS`
//! `Options::handshake_timeout`.
//!
//! Gate (for tests that need a preload in progress): if `$APP_GATE` names a directory and the
//! key equals `$APP_GATE_KEY`, the preload opens the FIFO `$APP_GATE/started` for writing, writes
//! `preloading <key>` to it, then reads the FIFO `$APP_GATE/release` until end of stream.
//!
//! Extra probe commands: `hexargs` (each argument's raw bytes in hex, one per line), `hexenv NAME`
//! (the variable's raw bytes in hex, or `<unset>`), `hexcwd` (the working directory's raw bytes
//! in hex), `fds` (this worker's open descriptors, one
//! `N -> target` line each, `N -> /dev/null (tombstone)` for the runtime's tombstones),
//! `thread-echo words...` (two helper threads each print the words with `println!`, joined
//! before the command returns).
//!
//! Parity probes (what a fresh process would show, compared with `FDSERVER_PRELOAD=0` runs):
//! `sigstate` (blocked, ignored and caught signals), `thread` (the running thread's name),
//! `stack KIB` (recurses through that much stack), `attrs` (umask, resource limits, nice value,
//! CPU affinity, I/O priority, timer slack, personality, no_new_privs, process name), `self`
//! (std's `env::args` and `/proc/self/cmdline`, in hex), `stop-self SIG` (sends itself the
//! signal, then says `continued`), `readline` (reads a line from stdin and echoes it), `create
//! NAME` (creates a file and prints its mode), `exists PATH`, `mapped NAME` (whether a mapping
//! of this process names it: a preloaded library), `ids` (real and effective gid,
//! supplementary groups).
//!
//! `run_without_preload`: `--version` prints `preload-app 1` without preloading; `--version
//! preloaded` prints whether this process preloaded.

use std::ffi::OsString;
use std::io::{Read, Write};

use fdserver::preload::{Application, Preloader};

#[derive(Clone, Default)]
struct App {
    preloaded_by: u32,
    key: String,
    /// `$APP_CONF` as the preload saw it.
    conf: Option<String>,
    /// The descriptor the preload kept open (`$APP_KEEP_FD`).
    kept: Option<i32>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

impl Application for App {
    fn name(&self) -> &str {
        "preload-app"
    }

    fn template_key(&self, env: &[(OsString, OsString)]) -> String {
        env.iter()
            .find(|(k, _)| k == "APP_ENV")
            .and_then(|(_, v)| v.to_str())
            .unwrap_or("dev")
            .to_owned()
    }

    fn preload(&mut self, key: &str) -> Result<(), fdserver::BoxError> {
        if let Some(path) = env("APP_CRASH_IF") {
            if std::path::Path::new(&path).exists() {
                std::process::abort();
            }
        }
        if let Some(path) = env("APP_FAIL_IF") {
            if std::path::Path::new(&path).exists() {
                return Err(format!("preload refused: {path} exists").into());
            }
        }
        if let Some(n) = env("APP_PRELOAD_OUTPUT").and_then(|s| s.parse::<usize>().ok()) {
            let mut out = std::io::stdout().lock();
            let line = [b'x'; 99];
            for _ in 0..n / 100 {
                out.write_all(&line)?;
                out.write_all(b"\n")?;
            }
        }
        if let Some(dir) = env("APP_GATE") {
            if env("APP_GATE_KEY").as_deref() == Some(key) {
                let dir = std::path::Path::new(&dir);
                let mut started = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("started"))?;
                writeln!(started, "preloading {key}")?;
                drop(started);
                let mut release = std::fs::File::open(dir.join("release"))?;
                let mut sink = Vec::new();
                release.read_to_end(&mut sink)?;
            }
        }
        if let Some(text) = env("APP_PRELOAD_THREAD") {
            // A helper thread that prints, joined: the preload finishes only if the thread can
            // take stdout's lock in the template.
            std::thread::spawn(move || println!("{text}"))
                .join()
                .map_err(|_| "the preload's helper thread panicked")?;
        }
        if let Some(path) = env("APP_COUNTER") {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            writeln!(f, "{key}")?;
        }
        self.preloaded_by = std::process::id();
        self.key = key.to_owned();
        self.conf = env("APP_CONF");
        if env("APP_KEEP_FD").is_some() {
            use std::os::fd::IntoRawFd;
            self.kept = Some(std::fs::File::open("/dev/null")?.into_raw_fd());
        }
        Ok(())
    }

    fn watched_files(&self, _key: &str) -> Vec<std::path::PathBuf> {
        env("APP_WATCH").map(Into::into).into_iter().collect()
    }

    fn run_without_preload(&mut self, args: &[OsString]) -> Option<i32> {
        if args.first()? != "--version" {
            return None;
        }
        println!("preload-app 1 (preloaded: {})", self.preloaded_by != 0);
        Some(0)
    }

    fn run(&mut self, args: Vec<OsString>) -> i32 {
        if let Some(code) = raw_command(&args) {
            return code;
        }
        if let Some(code) = parity_command(&args) {
            return code;
        }
        let args: Vec<String> = args
            .into_iter()
            .map(|a| a.into_string().unwrap_or_default())
            .collect();
        let rest = || args[1..].join(" ");
        match args.first().map(String::as_str).unwrap_or("") {
            "exit" => args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0),
            "echo" => {
                println!("{}", rest());
                0
            }
            "thread-echo" => {
                let text = rest();
                let threads: Vec<_> = (0..2)
                    .map(|i| {
                        let text = text.clone();
                        std::thread::spawn(move || println!("thread {i}: {text}"))
                    })
                    .collect();
                for t in threads {
                    if t.join().is_err() {
                        return 4;
                    }
                }
                0
            }
            "args" => {
                for a in &args[1..] {
                    println!("[{a}]");
                }
                0
            }
            "env" => {
                println!(
                    "{}",
                    std::env::var(&args[1]).unwrap_or_else(|_| "<unset>".into())
                );
                0
            }
            "cwd" => {
                println!("{}", std::env::current_dir().unwrap().display());
                0
            }
            "template" => {
                println!("{} {}", self.key, self.preloaded_by);
                0
            }
            "preload-conf" => {
                println!("{:?}", self.conf);
                0
            }
            "kept-fd" => {
                println!("{:?}", self.kept);
                0
            }
            "pid" => {
                println!("{}", std::process::id());
                0
            }
            "kill" => {
                let sig: i32 = args[1].parse().unwrap();
                // SAFETY: signalling ourselves.
                unsafe { libc::kill(libc::getpid(), sig) };
                99
            }
            "cat" => {
                let mut data = Vec::new();
                std::io::stdin().read_to_end(&mut data).unwrap();
                std::io::stdout().write_all(&data).unwrap();
                println!("<eof after {} bytes>", data.len());
                0
            }
            "lines" => {
                let n: u64 = args[1].parse().unwrap();
                let mut out = std::io::stdout().lock();
                for i in 0..n {
                    if writeln!(out, "line {i}").is_err() {
                        return 3;
                    }
                }
                0
            }
            "fail-after-lines" => {
                let n: u64 = args[1].parse().unwrap();
                for i in 0..n {
                    println!("line {i}");
                }
                eprintln!("failing");
                5
            }
            // Prints "ready", then waits (in a child too, if asked) until a signal kills it.
            "wait" => {
                let with_child = args.get(1).map(String::as_str) == Some("child");
                if with_child {
                    // SAFETY: single-threaded worker; the child only pauses.
                    let pid = unsafe { libc::fork() };
                    if pid == 0 {
                        println!("child {}", std::process::id());
                        std::io::stdout().flush().unwrap();
                        loop {
                            // SAFETY: pause just waits for a signal.
                            unsafe { libc::pause() };
                        }
                    }
                    // Wait for the child's line to be written before saying ready.
                }
                println!("ready {}", std::process::id());
                std::io::stdout().flush().unwrap();
                loop {
                    // SAFETY: pause just waits for a signal.
                    unsafe { libc::pause() };
                }
            }
            "tty" => {
                // SAFETY: isatty and TIOCGWINSZ only query descriptors.
                let (t0, t1) = unsafe { (libc::isatty(0), libc::isatty(1)) };
                println!("isatty {t0} {t1} size {}", winsize());
                0
            }
            "winch" => {
                // `winch ack`: before waiting for SIGWINCH, wait for a SIGUSR2 and print "acked":
                // the client relays signals once it knows the worker's pid, so after "acked" a
                // test knows that a resize will be relayed too.
                let ack = args.get(1).map(String::as_str) == Some("ack");
                let set = fdserver_sigset(libc::SIGWINCH);
                let usr2 = fdserver_sigset(libc::SIGUSR2);
                // SAFETY: blocking SIGWINCH and SIGUSR2 then waiting for them synchronously.
                unsafe {
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                    libc::pthread_sigmask(libc::SIG_BLOCK, &usr2, std::ptr::null_mut());
                }
                println!("waiting {}", winsize());
                std::io::stdout().flush().unwrap();
                let mut sig = 0;
                if ack {
                    // SAFETY: usr2 is initialised; sig is a valid out-pointer.
                    unsafe { libc::sigwait(&usr2, &mut sig) };
                    println!("acked");
                    std::io::stdout().flush().unwrap();
                }
                // SAFETY: set is initialised; sig is a valid out-pointer.
                unsafe { libc::sigwait(&set, &mut sig) };
                println!("winch {}", winsize());
                0
            }
            "call" => {
                let out = std::process::Command::new(std::env::current_exe().unwrap())
                    .args(&args[1..])
                    .output()
                    .unwrap();
                print!("inner: {}", String::from_utf8_lossy(&out.stdout));
                out.status.code().unwrap_or(100)
            }
            "panic" => panic!("worker panicked on purpose"),
            other => {
                eprintln!("unknown command {other:?}");
                64
            }
        }
    }
}

/// The commands that look at raw bytes or descriptors (before the arguments become strings).
fn raw_command(args: &[OsString]) -> Option<i32> {
    use std::os::unix::ffi::OsStrExt;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    match args.first()?.as_bytes() {
        b"hexargs" => {
            for a in &args[1..] {
                println!("{}", hex(a.as_bytes()));
            }
            Some(0)
        }
        b"hexenv" => {
            match std::env::var_os(args.get(1)?) {
                Some(v) => println!("{}", hex(v.as_bytes())),
                None => println!("<unset>"),
            }
            Some(0)
        }
        b"hexcwd" => {
            println!(
                "{}",
                hex(std::env::current_dir().unwrap().as_os_str().as_bytes())
            );
            Some(0)
        }
        b"fds" => {
            let listed: Vec<String> = std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect();
            // The directory's own descriptor is closed by now: keep only the open ones.
            for fd in listed {
                if let Ok(target) = std::fs::read_link(format!("/proc/self/fd/{fd}")) {
                    let n: i32 = fd.parse().unwrap_or(-1);
                    // The runtime's tombstones (an inherited number held, its file released).
                    let tomb = if fdserver_tests::is_tombstone(n) {
                        " (tombstone)"
                    } else {
                        ""
                    };
                    println!("{fd} -> {}{tomb}", target.display());
                }
            }
            Some(0)
        }
        _ => None,
    }
}

/// The parity probes (see the module docs).
fn parity_command(args: &[OsString]) -> Option<i32> {
    use std::os::unix::ffi::OsStrExt;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let arg = |i: usize| args.get(i).and_then(|a| a.to_str()).unwrap_or("");
    match args.first()?.as_bytes() {
        b"sigstate" => {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            for l in status.lines() {
                if ["SigBlk:", "SigIgn:", "SigCgt:"]
                    .iter()
                    .any(|k| l.starts_with(k))
                {
                    println!("{l}");
                }
            }
            Some(0)
        }
        b"ids" => {
            // SAFETY: plain queries of this process; a buffer of the size given.
            unsafe {
                let mut groups = [0 as libc::gid_t; 256];
                let n = libc::getgroups(groups.len() as i32, groups.as_mut_ptr());
                println!(
                    "gid {} egid {} groups {:?}",
                    libc::getgid(),
                    libc::getegid(),
                    &groups[..n.max(0) as usize]
                );
            }
            Some(0)
        }
        b"thread" => {
            println!("{:?}", std::thread::current().name());
            Some(0)
        }
        b"stack" => {
            let kib: usize = arg(1).parse().unwrap();
            println!("used {} KiB", recurse(kib * 1024 / 4096) * 4);
            Some(0)
        }
        b"attrs" => {
            // SAFETY: plain queries of this process; buffers of the sizes given.
            unsafe {
                let m = libc::umask(0);
                libc::umask(m);
                println!("umask {m:03o}");
                for r in 0..16 {
                    let mut l: libc::rlimit = std::mem::zeroed();
                    libc::getrlimit(r, &mut l);
                    println!("rlimit {r} {} {}", l.rlim_cur, l.rlim_max);
                }
                println!("nice {}", libc::getpriority(libc::PRIO_PROCESS, 0));
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
                let cpus: Vec<usize> = (0..64).filter(|&c| libc::CPU_ISSET(c, &set)).collect();
                println!("affinity {cpus:?}");
                println!("ioprio {}", libc::syscall(libc::SYS_ioprio_get, 1, 0));
                println!(
                    "timerslack {}",
                    libc::prctl(libc::PR_GET_TIMERSLACK, 0, 0, 0, 0)
                );
                println!("personality {:#x}", libc::personality(0xffff_ffff));
                println!("nnp {}", libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
                println!("sched {}", libc::sched_getscheduler(0));
            }
            println!(
                "comm {}",
                std::fs::read_to_string("/proc/self/comm").unwrap().trim()
            );
            Some(0)
        }
        b"self" => {
            let std_args: Vec<String> = std::env::args_os().map(|a| hex(a.as_bytes())).collect();
            println!("args {}", std_args.join(" "));
            println!(
                "cmdline {}",
                hex(&std::fs::read("/proc/self/cmdline").unwrap())
            );
            let environ = std::fs::read("/proc/self/environ").unwrap();
            let has = |k: &str| {
                environ
                    .split(|&b| b == 0)
                    .any(|kv| kv.starts_with(k.as_bytes()))
            };
            println!("environ has APP_PROBE {}", has("APP_PROBE="));
            Some(0)
        }
        b"stop-self" => {
            let sig: i32 = arg(1).parse().unwrap();
            // SAFETY: signalling our own process group.
            unsafe { libc::kill(0, sig) };
            println!("continued");
            Some(0)
        }
        b"sigwait-usr1" => {
            let set = fdserver_sigset(libc::SIGUSR1);
            let mut sig = 0;
            // SAFETY: set is initialised (SIGUSR1 is blocked: the test starts us so); sig is a
            // valid out-pointer.
            unsafe { libc::sigwait(&set, &mut sig) };
            println!("got SIGUSR1");
            Some(0)
        }
        b"readline" => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).unwrap();
            println!("read {:?}", line.trim_end());
            Some(0)
        }
        b"create" => {
            use std::os::unix::fs::PermissionsExt;
            let f = std::fs::File::create(arg(1)).unwrap();
            println!(
                "mode {:o}",
                f.metadata().unwrap().permissions().mode() & 0o777
            );
            Some(0)
        }
        b"exists" => {
            println!("{}", std::path::Path::new(arg(1)).exists());
            Some(0)
        }
        b"mapped" => {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            println!("{}", maps.contains(arg(1)));
            Some(0)
        }
        _ => None,
    }
}

/// Recurses `pages` times, each frame holding a 4 KiB array; returns how many frames it made.
#[inline(never)]
fn recurse(pages: usize) -> usize {
    let buf = [pages as u8; 4096];
    std::hint::black_box(&buf);
    if pages == 0 {
        return 0;
    }
    // Use the frame after the call, so that it is not a tail call.
    let below = recurse(pages - 1);
    std::hint::black_box(&buf);
    1 + below
}

fn fdserver_sigset(sig: i32) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set.
    unsafe {
        let mut set = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        set
    }
}

fn winsize() -> String {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) } == 0 {
        format!("{}x{}", ws.ws_col, ws.ws_row)
    } else {
        "none".to_owned()
    }
}

fn main() {
    let mut options = fdserver::preload::Options::default();
    if let Some(ms) = env("APP_PRELOAD_TIMEOUT_MS").and_then(|s| s.parse().ok()) {
        options.preload_timeout = std::time::Duration::from_millis(ms);
    }
    if let Some(ms) = env("APP_HANDSHAKE_TIMEOUT_MS").and_then(|s| s.parse().ok()) {
        options.handshake_timeout = std::time::Duration::from_millis(ms);
    }
    Preloader::new(App::default()).options(options).main()
}
