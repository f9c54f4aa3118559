//! The preloader server: listens, checks peers, and hands requests to templates.
//!
//! Threads: the main thread accepts (and watches SIGTERM/SIGINT through a signalfd, its
//! directory through inotify, and its idle time) and hands each connection to a connection
//! thread: an idle one if there is one (they wait for the next connection for a while before
//! exiting), else a new one, up to [`MAX_CONNECTIONS`]; past that it stops accepting, and
//! clients wait in the socket's listen queue. A connection thread greets the client, reads its
//! request's first message and, for a command, takes the lock of the template of its key,
//! (re)starts the template if needed, and passes it the client's socket; the template reads the
//! rest of the request from the client itself. So a connection never waits for another one
//! except for the template it needs, and the accept loop never waits.
//! Nothing here writes through std's stdout or stderr locks: templates are forked from a
//! connection thread while the other threads run, and a lock held at that moment would stay
//! locked forever in the template (see the crate docs on fork safety). Logs go through [`log`],
//! a lock-free `write(2)`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use inotify::{Inotify, WatchMask};

use super::template::Template;
use super::{build_id, lock_within, Application, Dir, Kind, Preloader, PROTOCOL_VERSION};
use crate::channel::Channel;
use crate::client::{ServerHandle, StopOptions};
use crate::error::{Error, RemoteError, RemoteErrorKind};
use crate::start::Builder;
use crate::sys;

/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle connection thread waits for another connection before it exits.
const IDLE_THREAD_EXIT: Duration = Duration::from_secs(30);
/// How long a template may take to answer a command: it reads the rest of the request (within
/// 3 s in all, `template::REQUEST_BUDGET`), then forks. Well above that: only a wedged template
/// misses it.
const TEMPLATE_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many connections are served at once (each by a thread); further clients wait in
/// the socket's listen queue until one ends.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// While at [`MAX_CONNECTIONS`], how often the accept loop looks whether one has ended.
const CAP_RECHECK: Duration = Duration::from_millis(50);
/// After a failed `accept` (out of descriptors, say), new connections wait this long at first,
/// then twice as long at each failure in a row, up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a new server waits for a previous one (exiting) to release the pidfile.
const PIDFILE_WAIT: Duration = Duration::from_secs(10);
/// Without inotify, how often the server checks that its directory and files are still its own.
const CHECK_PERIOD: Duration = Duration::from_secs(5);
/// The log's bound: past it, its last `LOG_LIMIT` bytes move to `<id>.log.1` and it starts again
/// empty (checked whenever the server writes a line, and after each preload).
pub(crate) const LOG_LIMIT: u64 = 1 << 20;

/// Where the log is, for [`bound_log`]: the directory and the log's identity (the server's
/// stderr must be that file).
struct LogFiles {
    dir: File,
    log: std::ffi::OsString,
    old: std::ffi::OsString,
}

static LOG_FILES: OnceLock<LogFiles> = OnceLock::new();

fn log(msg: &str) {
    let line = format!("[fdserver-preload {}] {msg}\n", sys::getpid());
    sys::write_raw(2, line.as_bytes());
    bound_log();
}

/// Keeps the log under [`LOG_LIMIT`]: when it is larger, copies its last `LOG_LIMIT` bytes to
/// `<id>.log.1` and truncates it (every writer appends, so they go on at its new end). Lines
/// written between the copy and the truncation are lost.
fn bound_log() {
    static ROTATING: AtomicBool = AtomicBool::new(false);
    let Some(files) = LOG_FILES.get() else { return };
    // SAFETY: fd 2 stays open for the life of the server; the File is never dropped.
    let stderr = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(2) });
    let Ok(meta) = stderr.metadata() else { return };
    if meta.len() <= LOG_LIMIT || ROTATING.swap(true, Ordering::SeqCst) {
        return;
    }
    let copy = || -> io::Result<()> {
        use std::io::{Read, Seek, SeekFrom};
        let dir = files.dir.as_fd();
        let mut from = super::os::open_at(dir, &files.log, libc::O_RDONLY)?;
        if (from.metadata()?.dev(), from.metadata()?.ino()) != (meta.dev(), meta.ino()) {
            return Ok(()); // our stderr is not (or no longer) that file
        }
        from.seek(SeekFrom::Start(meta.len() - LOG_LIMIT))?;
        let mut tail = Vec::with_capacity(LOG_LIMIT as usize);
        from.take(LOG_LIMIT).read_to_end(&mut tail)?;
        let mut to = super::os::open_at(
            dir,
            &files.old,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
        )?;
        to.write_all(&tail)?;
        stderr.set_len(0)
    };
    let result = copy();
    ROTATING.store(false, Ordering::SeqCst);
    if let Err(e) = result {
        let line = format!(
            "[fdserver-preload {}] cannot bound the log: {e}\n",
            sys::getpid()
        );
        sys::write_raw(2, line.as_bytes());
    }
}

/// Entry of a process started by a client with the role variable: fork into the background
/// (the launcher exits at once, so the client can reap it) and serve.
pub(crate) fn launch<A: Application>(p: &Preloader<A>, role: &OsStr) -> io::Result<()> {
    if role != "launch" {
        return Err(io::Error::other(format!("unknown role {role:?}")));
    }
    // SAFETY: fd 3 was set up by the client as the write end of the readiness pipe, and fd 4 as
    // the directory it opened and checked; nothing else in this fresh process owns them.
    let (ready, dir_fd) = unsafe { (OwnedFd::from_raw_fd(3), OwnedFd::from_raw_fd(4)) };
    sys::set_cloexec(ready.as_fd())?;
    sys::set_cloexec(dir_fd.as_fd())?;
    let path = PathBuf::from(std::env::var_os(super::ENV_DIR).unwrap_or_default());
    let dir = Dir::inherited(dir_fd, path, p.app.name()).map_err(io::Error::from)?;
    // SAFETY: this process is single-threaded (it has just started), so the child may do
    // anything.
    match unsafe { sys::fork() }? {
        0 => {
            sys::setsid()?;
            let mut ready = File::from(ready);
            match serve(p, &dir, &mut ready) {
                Ok(()) => sys::exit_now(0),
                Err(e) => {
                    let _ = writeln!(ready, "{e}");
                    log(&format!("server failed: {e}"));
                    sys::exit_now(1)
                }
            }
        }
        _ => sys::exit_now(0),
    }
}

/// A command for a template: the client's socket, positioned after its `["run", key, cwd]`
/// (the template reads the arguments, environment and descriptors from it), and the directory.
struct Job {
    conn: OwnedFd,
    cwd: Vec<u8>,
}

#[derive(Default)]
struct TemplateInfo {
    pid: Option<u32>,
    started: Option<Instant>,
}

/// One template key: its status (read by `status` without waiting) and its process, owned by
/// whichever connection thread holds the lock (commands of one key go to their template one at
/// a time; a preload holds the lock, so its key's clients queue behind it).
struct Slot {
    info: Mutex<TemplateInfo>,
    template: Mutex<TemplateState>,
}

#[derive(Default)]
struct TemplateState {
    current: Option<(ServerHandle, Stamps)>,
    /// The server stopped this template: no more commands.
    closed: bool,
}

struct State<A> {
    app: A,
    huge_pages: bool,
    started: Instant,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    stopping: AtomicBool,
    wake: UnixStream,
    /// Connection threads waiting for a connection, minus connections queued for them.
    idle: AtomicUsize,
    queue: Mutex<Receiver<UnixStream>>,
    /// Connections being served (at most [`MAX_CONNECTIONS`]).
    conns: AtomicUsize,
    /// When a connection last started or ended, in ms since `started`.
    last_activity: AtomicU64,
}

impl<A> State<A> {
    fn touch(&self) {
        self.last_activity
            .store(self.started.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    fn last_activity(&self) -> Instant {
        self.started + Duration::from_millis(self.last_activity.load(Ordering::SeqCst))
    }
}

/// Opens and locks the pidfile, waiting (up to [`PIDFILE_WAIT`]) for a previous server that is
/// exiting to release it; returns it with its device and inode. A pidfile that was replaced
/// while we waited for its lock is left for the one now in its place.
fn lock_pidfile(dir: &Dir) -> io::Result<(File, (u64, u64))> {
    let deadline = Instant::now() + PIDFILE_WAIT;
    loop {
        let f = dir.open_file(Kind::Pid, libc::O_RDWR | libc::O_CREAT)?;
        if !lock_within(&f, deadline)? {
            return Err(io::Error::other(format!(
                "another preloader server (pid {}) still holds {} after {PIDFILE_WAIT:?}; it \
                 exits by itself once its socket is gone, else stop it with `kill`",
                super::pidfile_text(&f),
                dir.display(Kind::Pid).display()
            )));
        }
        let meta = f.metadata()?;
        let id = (meta.dev(), meta.ino());
        if dir.stat(Kind::Pid)? == Some(id) {
            return Ok((f, id));
        }
    }
}

/// Watches the directory (inotify on the open directory) for changes to the server's socket,
/// pidfile or the directory itself; without inotify, a check every [`CHECK_PERIOD`].
struct DirWatch {
    inotify: Option<Inotify>,
    names: [std::ffi::OsString; 2],
    next_check: Option<Instant>,
}

impl DirWatch {
    fn new(dir: &Dir) -> DirWatch {
        let names = [dir.name(Kind::Sock), dir.name(Kind::Pid)];
        let watched = (|| -> io::Result<Inotify> {
            let inotify = Inotify::init()?; // non-blocking, close-on-exec
                                            // Through the open directory: the watch is on the inode that was checked.
            inotify.watches().add(
                format!("/proc/self/fd/{}", dir.fd().as_raw_fd()),
                WatchMask::DELETE
                    | WatchMask::CREATE
                    | WatchMask::MOVED_FROM
                    | WatchMask::MOVED_TO
                    | WatchMask::ATTRIB
                    | WatchMask::DELETE_SELF
                    | WatchMask::MOVE_SELF
                    | WatchMask::ONLYDIR,
            )?;
            Ok(inotify)
        })();
        match watched {
            Ok(inotify) => DirWatch {
                inotify: Some(inotify),
                names,
                next_check: None,
            },
            Err(e) => {
                log(&format!(
                    "cannot watch {} with inotify ({e}): checking it every {CHECK_PERIOD:?}",
                    dir.path().display()
                ));
                DirWatch {
                    inotify: None,
                    names,
                    next_check: Some(Instant::now() + CHECK_PERIOD),
                }
            }
        }
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(|i| i.as_fd())
    }

    /// Whether something that concerns us happened (drains the events), or the periodic check
    /// is due.
    fn changed(&mut self, readable: bool) -> bool {
        if let Some(next) = self.next_check {
            if Instant::now() >= next {
                self.next_check = Some(Instant::now() + CHECK_PERIOD);
                return true;
            }
            return false;
        }
        let Some(inotify) = &mut self.inotify else {
            return false;
        };
        if !readable {
            return false;
        }
        let mut relevant = false;
        let mut buf = [0u8; 4096];
        while let Ok(events) = inotify.read_events(&mut buf) {
            let mut any = false;
            for e in events {
                any = true;
                relevant |= match e.name {
                    // An event of the directory itself (moved, removed, mode), or an overflow.
                    None => true,
                    Some(n) => self.names.iter().any(|ours| ours == n),
                };
            }
            if !any {
                break;
            }
        }
        relevant
    }
}

/// The idle timeout's bookkeeping.
struct Idle {
    timeout: Duration,
    /// When to look again; `None`: never (timeout 0).
    next: Option<Instant>,
}

impl Idle {
    /// Whether the server has been idle for the whole timeout (no connection, no template
    /// busy or running a worker); otherwise sets when to look again.
    fn expired<A: Application>(&mut self, state: &State<A>) -> bool {
        let now = Instant::now();
        let again = now + self.timeout;
        if state.conns.load(Ordering::SeqCst) > 0 {
            self.next = Some(again);
            return false;
        }
        let mut since = state.last_activity();
        let slots: Vec<Arc<Slot>> = state
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for slot in slots {
            let Ok(mut t) = slot.template.try_lock() else {
                self.next = Some(again); // preloading, or a command being handed over
                return false;
            };
            let Some((handle, _)) = t.current.as_mut() else {
                continue;
            };
            match template_activity(handle) {
                Ok((0, ago)) => since = since.max(now.checked_sub(ago).unwrap_or(now)),
                Ok(_) => {
                    // Running workers: look again later (their end counts as activity).
                    self.next = Some(again);
                    return false;
                }
                Err(e) => log(&format!(
                    "template (pid {}) did not say whether it is busy: {e}",
                    handle.pid()
                )),
            }
        }
        if now >= since + self.timeout {
            return true;
        }
        self.next = Some(since + self.timeout);
        false
    }
}

/// A template's running workers and how long since one last started or ended.
fn template_activity(handle: &mut ServerHandle) -> Result<(usize, Duration), Error> {
    handle.with_channel(|ch| {
        ch.set_read_timeout(Some(Duration::from_secs(5)));
        ch.write_array(["idle"])?;
        let mut buf = crate::MessageBuf::new();
        let reply = ch.read_reply(&mut buf)?;
        let n = |i| reply.str(i).ok().and_then(|s| s.parse::<u64>().ok());
        match (n(1), n(2)) {
            (Some(running), Some(ms)) => Ok((running as usize, Duration::from_millis(ms))),
            _ => Err(Error::Protocol(crate::error::ProtocolError::BadReply(
                "expected [\"ok\", running, ms]".into(),
            ))),
        }
    })
}

fn serve<A: Application>(p: &Preloader<A>, dir: &Dir, ready: &mut File) -> io::Result<()> {
    let (mut pidfile, pid_id) = lock_pidfile(dir)?;
    pidfile.set_len(0)?;
    writeln!(pidfile, "{}", sys::getpid())?;
    let _ = LOG_FILES.set(LogFiles {
        dir: File::from(dir.fd().try_clone_to_owned()?),
        log: dir.name(Kind::Log),
        old: dir.name(Kind::OldLog),
    });

    // Before any thread exists: block the signals the main loop reads from a signalfd (threads
    // inherit the mask), ignore SIGHUP and SIGPIPE.
    let mut set = sys::sigset(false);
    for s in [libc::SIGTERM, libc::SIGINT, libc::SIGQUIT] {
        sys::sigset_add(&mut set, s);
    }
    sys::set_sigmask(&set);
    let sigfd = sys::signalfd(&set)?;
    let _ = sys::set_disposition(libc::SIGHUP, sys::Disposition::Ignore);
    let _ = sys::set_disposition(libc::SIGPIPE, sys::Disposition::Ignore);

    // We hold the pidfile's lock, so any socket there is a dead server's.
    dir.unlink(Kind::Sock).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot remove {}: {e}", dir.display(Kind::Sock).display()),
        )
    })?;
    let old = sys::umask(0o177); // the socket is created 0600
    let listener = UnixListener::bind(dir.socket_addr());
    sys::umask(old);
    let listener = listener.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {}: {e}",
                dir.display(Kind::Sock).display()
            ),
        )
    })?;
    listener.set_nonblocking(true)?;
    let sock_id = dir
        .stat(Kind::Sock)?
        .ok_or_else(|| io::Error::other("the socket vanished as it was created"))?;
    let mut watch = DirWatch::new(dir);
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    let (queue_tx, queue_rx) = channel::<UnixStream>();

    let state = Arc::new(State {
        app: p.app.clone(),
        huge_pages: p.options.huge_pages,
        started: Instant::now(),
        slots: Mutex::new(HashMap::new()),
        stopping: AtomicBool::new(false),
        wake: wake_tx,
        idle: AtomicUsize::new(0),
        queue: Mutex::new(queue_rx),
        conns: AtomicUsize::new(0),
        last_activity: AtomicU64::new(0),
    });
    let idle_timeout = super::idle_timeout(&p.options).unwrap_or_else(|why| {
        log(&why);
        p.options.idle_timeout
    });
    let mut idle = Idle {
        timeout: idle_timeout,
        next: (!idle_timeout.is_zero()).then(|| Instant::now() + idle_timeout),
    };
    ready.write_all(b"ready\n")?;
    log(&format!(
        "listening on {} (build {}, idle timeout {})",
        dir.display(Kind::Sock).display(),
        build_id(),
        if idle_timeout.is_zero() {
            "none".to_owned()
        } else {
            format!("{idle_timeout:?}")
        }
    ));

    let me = sys::geteuid();
    let mut accept_failures = 0u32;
    let mut backoff = Duration::ZERO;
    let mut paused_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let full = state.conns.load(Ordering::SeqCst) >= MAX_CONNECTIONS;
        let accepting = !full && paused_until.map_or(true, |t| now >= t);
        let mut deadline = idle.next;
        let mut sooner = |t: Option<Instant>| {
            if let Some(t) = t {
                deadline = Some(deadline.map_or(t, |d| d.min(t)));
            }
        };
        sooner(full.then(|| now + CAP_RECHECK));
        sooner(paused_until.filter(|_| !accepting));
        sooner(watch.next_check);
        let mut fds = vec![sigfd.as_fd(), wake_rx.as_fd()];
        let watch_at = watch.fd().map(|fd| {
            fds.push(fd);
            fds.len() - 1
        });
        let listen_at = accepting.then(|| {
            fds.push(listener.as_fd());
            fds.len() - 1
        });
        let ready = sys::poll_in(&fds, deadline)?;
        if ready[0] {
            if let Some(sig) = sys::read_signalfd(sigfd.as_fd())? {
                log(&format!("signal {sig}: stopping"));
                break;
            }
        }
        if ready[1] || state.stopping.load(Ordering::SeqCst) {
            log("stop requested");
            break;
        }
        if watch.changed(watch_at.is_some_and(|i| ready[i])) {
            if let Some(why) = dir.lost(sock_id, pid_id) {
                log(&format!(
                    "{why}: stopping (a new server will serve from there)"
                ));
                break;
            }
        }
        if idle.next.is_some_and(|t| Instant::now() >= t) && idle.expired(&state) {
            log(&format!("idle for {:?}: stopping", idle.timeout));
            break;
        }
        if !listen_at.is_some_and(|i| ready[i]) {
            continue;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                continue
            }
            Err(e) => {
                // Out of descriptors or memory: the connection stays queued, and the listener
                // stays readable. Stop polling it for a while (no spinning), and say so once.
                accept_failures += 1;
                backoff = (backoff * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
                paused_until = Some(Instant::now() + backoff);
                if accept_failures == 1 {
                    log(&format!(
                        "accept: {e}; new connections wait, retried with a back-off of up to \
                         {ACCEPT_BACKOFF_MAX:?} (logged once until accept works again)"
                    ));
                }
                continue;
            }
        };
        if accept_failures > 0 {
            log(&format!(
                "accept works again after {accept_failures} failed attempts"
            ));
            accept_failures = 0;
            backoff = Duration::ZERO;
        }
        paused_until = None;
        let _ = stream.set_nonblocking(false);
        match sys::peer_uid(stream.as_fd()) {
            Ok(uid) if uid == me => {}
            Ok(uid) => {
                log(&format!("refused a connection from uid {uid}"));
                let mut ch = Channel::from(stream);
                ch.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = ch.write_error(&RemoteError::new(
                    RemoteErrorKind::Other("permission".into()),
                    format!("this preloader server belongs to uid {me}; you are uid {uid}"),
                ));
                continue;
            }
            Err(e) => {
                log(&format!("SO_PEERCRED: {e}"));
                continue;
            }
        }
        state.conns.fetch_add(1, Ordering::SeqCst);
        state.touch();
        // An idle connection thread takes it; else a new thread.
        if claim_idle(&state.idle) {
            if queue_tx.send(stream).is_err() {
                log("the connection queue is closed");
                state.conns.fetch_sub(1, Ordering::SeqCst);
            }
            continue;
        }
        let st = Arc::clone(&state);
        let spawned = std::thread::Builder::new()
            .name("preload-conn".into())
            .spawn(move || connection_thread(st, stream));
        if let Err(e) = spawned {
            log(&format!("cannot start a connection thread: {e}"));
            state.conns.fetch_sub(1, Ordering::SeqCst);
        }
    }
    drop(queue_tx); // idle connection threads end

    // Shut down: stop accepting, remove our files (only if they are still ours), let a
    // successor take the pidfile, then stop every template (their workers get SIGTERM).
    drop(listener);
    remove_own_files(dir, sock_id, pid_id);
    drop(pidfile);
    let slots: Vec<Arc<Slot>> = {
        let mut slots = state.slots.lock().unwrap_or_else(|e| e.into_inner());
        state.stopping.store(true, Ordering::SeqCst);
        slots.drain().map(|(_, s)| s).collect()
    };
    for slot in slots {
        // Waits for a command being handed over (or a preload) to finish.
        let mut t = slot.template.lock().unwrap_or_else(|e| e.into_inner());
        t.closed = true;
        if let Some((handle, _)) = t.current.take() {
            shutdown_template(handle);
        }
        set_info(&slot, None);
    }
    log("stopped");
    Ok(())
}

/// Removes the socket and pidfile if they are still the ones this server made (same device and
/// inode), under the start lock, so that no successor can be putting its own in place at the
/// same moment. If a client holds that lock, it is starting a successor, which takes over (or
/// replaces) both files itself: they are left alone.
fn remove_own_files(dir: &Dir, sock: (u64, u64), pid: (u64, u64)) {
    let locked = dir
        .open_file(Kind::Lock, libc::O_RDWR | libc::O_CREAT)
        .and_then(|f| Ok((sys::flock(f.as_fd(), true, true)?, f)));
    match locked {
        Ok((true, _lock)) => {
            for (kind, id) in [(Kind::Sock, sock), (Kind::Pid, pid)] {
                match dir.unlink_if(kind, id) {
                    Ok(true) => {}
                    Ok(false) => log(&format!(
                        "{} is no longer ours: left in place",
                        dir.display(kind).display()
                    )),
                    Err(e) => log(&format!(
                        "cannot remove {}: {e}",
                        dir.display(kind).display()
                    )),
                }
            }
        }
        Ok((false, _)) => log("a client is starting a new server: leaving the files to it"),
        Err(e) => log(&format!("cannot take the start lock to clean up: {e}")),
    }
}

/// Takes one idle connection thread, if any (see [`State::idle`]).
fn claim_idle(idle: &AtomicUsize) -> bool {
    idle.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Serves `first`, then further connections from the queue until none comes for a while.
fn connection_thread<A: Application>(state: Arc<State<A>>, first: UnixStream) {
    let mut next = Some(first);
    loop {
        if let Some(stream) = next.take() {
            connection(&state, stream);
            state.touch();
            state.conns.fetch_sub(1, Ordering::SeqCst);
            state.idle.fetch_add(1, Ordering::SeqCst);
        }
        let got = state
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recv_timeout(IDLE_THREAD_EXIT);
        match got {
            Ok(stream) => next = Some(stream),
            // Leave, unless a connection is already on its way to a waiting thread and we are
            // the one counted for it: then wait again.
            Err(RecvTimeoutError::Timeout) => {
                if claim_idle(&state.idle) {
                    return;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Reads one array message straight from the socket, exactly its bytes (what follows stays in
/// the socket for the template), within `deadline`. `Ok(None)` at end of stream.
fn read_request(
    sock: std::os::fd::BorrowedFd<'_>,
    deadline: Instant,
) -> io::Result<Option<crate::MessageBuf>> {
    let mut header = [0u8; 2];
    if !read_exact_raw(sock, &mut header, deadline)? {
        return Ok(None);
    }
    // At most 65535 bytes: the length is a u16.
    let len = u16::from_be_bytes(header) as usize;
    let mut body = vec![0u8; len];
    if !read_exact_raw(sock, &mut body, deadline)? {
        return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
    }
    let mut buf = crate::MessageBuf::new();
    buf.decode_body(&body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(Some(buf))
}

/// Fills `buf` from the socket (descriptors that come along are closed). `Ok(false)` at end of
/// stream before the first byte.
fn read_exact_raw(
    sock: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
    deadline: Instant,
) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match sys::recv(sock, &mut buf[got..], true) {
            Ok(r) if r.n == 0 => {
                return if got == 0 {
                    Ok(false)
                } else {
                    Err(io::Error::from(io::ErrorKind::UnexpectedEof))
                }
            }
            Ok(r) => got += r.n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !sys::wait_fd(sock, libc::POLLIN, Some(deadline))? {
                    return Err(io::Error::from(io::ErrorKind::TimedOut));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// One client connection: greeting, request, hand-off.
fn connection<A: Application>(state: &Arc<State<A>>, stream: UnixStream) {
    let mut ch = Channel::from(stream);
    ch.set_timeout(Some(REQUEST_TIMEOUT));
    let pid = sys::getpid().to_string();
    if ch
        .write_array([
            "fdserver-preload",
            PROTOCOL_VERSION,
            pid.as_str(),
            build_id(),
        ])
        .is_err()
    {
        return;
    }
    // Read raw, never past the first message: for a command, the rest is the template's.
    let buf = match read_request(ch.as_fd(), Instant::now() + REQUEST_TIMEOUT) {
        Ok(Some(buf)) => buf,
        Ok(None) => return, // the client left: nothing to do
        Err(e) => {
            log(&format!("bad request: {e}"));
            return;
        }
    };
    let req = buf.message();
    match req.name() {
        b"run" if req.len() == 3 => {
            let key = String::from_utf8_lossy(req.get(1).unwrap_or(b"")).into_owned();
            let job = Job {
                cwd: req.get(2).unwrap_or(b"/").to_vec(),
                conn: ch.into_fd(),
            };
            run_job(state, &key, job);
        }
        b"preload" if req.len() == 2 => {
            // `--preloader restart`: start the template of this key now.
            let key = String::from_utf8_lossy(req.get(1).unwrap_or(b"")).into_owned();
            match template_for(state, &key, |_, t| {
                t.current.as_ref().map(|(h, _)| h.pid()).unwrap_or(0)
            }) {
                Ok(pid) => {
                    let _ = ch.write_ok([pid.to_string()]);
                }
                Err((kind, text)) => {
                    let _ = ch
                        .write_error(&RemoteError::new(RemoteErrorKind::Other(kind.into()), text));
                }
            }
        }
        b"status" => {
            let mut out = vec![
                "ok".to_owned(),
                state.started.elapsed().as_millis().to_string(),
            ];
            for (key, slot) in state.slots.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let info = slot.info.lock().unwrap_or_else(|e| e.into_inner());
                out.push(key.clone());
                out.push(info.pid.map(|p| p.to_string()).unwrap_or_default());
                out.push(
                    info.started
                        .map(|s| s.elapsed().as_millis().to_string())
                        .unwrap_or_default(),
                );
            }
            let _ = ch.write_array(out);
        }
        b"stop" => {
            state.stopping.store(true, Ordering::SeqCst);
            let _ = ch.write_array(["ok"]);
            let _ = (&state.wake).write_all(b"x");
        }
        _ => {
            let _ = ch.write_error(&RemoteError::new(
                RemoteErrorKind::Protocol,
                format!(
                    "unknown request {:?}",
                    req.iter()
                        .map(|e| String::from_utf8_lossy(e))
                        .collect::<Vec<_>>()
                ),
            ));
        }
    }
}

fn set_info(slot: &Slot, pid: Option<u32>) {
    let mut i = slot.info.lock().unwrap_or_else(|e| e.into_inner());
    i.pid = pid;
    i.started = pid.map(|_| Instant::now());
}

/// Runs `f` with the template of `key`, locked (commands of one key go to their template one at a
/// time): starts it on first use, restarts it when it died or a watched file changed. `Err`:
/// `(kind, text)` for the client, when the server is stopping or the preload failed.
fn template_for<A: Application, R>(
    state: &Arc<State<A>>,
    key: &str,
    f: impl FnOnce(&Slot, MutexGuard<'_, TemplateState>) -> R,
) -> Result<R, (&'static str, String)> {
    let stopping = || ("stopping", "the preloader server is stopping".to_owned());
    let slot = {
        let mut slots = state.slots.lock().unwrap_or_else(|e| e.into_inner());
        if state.stopping.load(Ordering::SeqCst) {
            return Err(stopping());
        }
        Arc::clone(slots.entry(key.to_owned()).or_insert_with(|| {
            Arc::new(Slot {
                info: Mutex::new(TemplateInfo::default()),
                template: Mutex::new(TemplateState::default()),
            })
        }))
    };
    let mut t = slot.template.lock().unwrap_or_else(|e| e.into_inner());
    if t.closed {
        return Err(stopping());
    }
    if let Some((handle, stamps)) = &mut t.current {
        let dead = !matches!(handle.try_wait(), Ok(None));
        if dead || changed(stamps) {
            let (handle, _) = t.current.take().expect("checked");
            log(&format!(
                "template {key:?} (pid {}) {}",
                handle.pid(),
                if dead {
                    "died"
                } else {
                    "retired: a watched file changed"
                }
            ));
            retire(handle);
            set_info(&slot, None);
        }
    }
    if t.current.is_none() {
        let watched = stamps(state.app.watched_files(key));
        let mut template = Template::new(state.app.clone(), key.to_owned(), state.huge_pages);
        // The template's workers may run for a long time: `stop` must not hurry them. These
        // are also the template's own schedule once its connection to this server ends (its
        // hang-up watch): a retired template (see `retire`) finishes its running workers, for
        // up to a day, before SIGTERM. Shutting down and replacing a wedged template pass
        // shorter periods to `stop_with`, and can signal it.
        let started = Builder::new()
            .stop_timeouts(Duration::from_secs(24 * 3600), Duration::from_secs(2))
            .start_handle(&mut template);
        drop(template);
        match started {
            Ok(h) => {
                // Also bounds the log, which the preload may have written to at length.
                log(&format!("template {key:?} preloaded (pid {})", h.pid()));
                set_info(&slot, Some(h.pid()));
                t.current = Some((h, watched));
            }
            Err(e) => {
                let text = match &e {
                    Error::Remote(r) => r.message().to_owned(),
                    other => other.to_string(),
                };
                log(&format!("template {key:?}: preload failed: {text}"));
                return Err(("preload", format!("preload failed: {text}")));
            }
        }
    }
    Ok(f(&slot, t))
}

/// Hands a command to the template of `key` (see [`template_for`]).
fn run_job<A: Application>(state: &Arc<State<A>>, key: &str, job: Job) {
    let Job { conn, cwd } = job;
    let mut conn = Some(conn);
    let handed = template_for(state, key, |slot, mut t| {
        let conn = conn.take().expect("taken once");
        let (handle, _) = t.current.as_mut().expect("started by template_for");
        let sent = handle.with_channel(|ch| {
            // A deadline makes the reply wait a `poll` for input, not a blocking `recvmsg`: a
            // blocked `recvmsg` is also woken each time the template consumes part of the
            // request (write space on the same socket), two useless context switches per
            // command.
            ch.set_read_timeout(Some(TEMPLATE_REPLY_TIMEOUT));
            ch.write_array([b"run".as_slice(), &cwd])?;
            ch.send_fd(&conn)?;
            let mut buf = crate::MessageBuf::new();
            ch.read_reply(&mut buf).map(drop)
        });
        if let Err(e) = sent {
            log(&format!("template {key:?} failed a request: {e}"));
            if matches!(e, Error::TimedOut { .. }) {
                // Wedged, and its channel is out of step (a late reply would answer the next
                // command): replace it.
                if let Some((handle, _)) = t.current.take() {
                    // Not `retire`: a wedged template would keep its 24 h grace, and one more
                    // would pile up at each command. Stop it now (in the background), as `stop`
                    // would.
                    kill_wedged(handle);
                    set_info(slot, None);
                }
            }
            drop(t);
            reply_error(conn, "template", &format!("the template failed: {e}"));
            // The next command restarts it if it died.
        }
    });
    if let Err((kind, text)) = handed {
        if let Some(conn) = conn {
            reply_error(conn, kind, &text);
        }
    }
}

fn reply_error(conn: OwnedFd, kind: &str, text: &str) {
    let mut ch = Channel::new(conn);
    ch.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = ch.write_error(&RemoteError::new(RemoteErrorKind::Other(kind.into()), text));
}

type Stamps = Vec<(PathBuf, Option<(u64, SystemTime)>)>;

fn stamps(files: Vec<PathBuf>) -> Stamps {
    files
        .into_iter()
        .map(|f| {
            let s = std::fs::metadata(&f)
                .ok()
                .map(|m| (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            (f, s)
        })
        .collect()
}

fn changed(old: &Stamps) -> bool {
    let paths: Vec<PathBuf> = old.iter().map(|(p, _)| p.clone()).collect();
    stamps(paths) != *old
}

/// Stops a template as the server stops: its workers get SIGTERM.
fn shutdown_template(mut handle: ServerHandle) {
    let _ = handle.with_channel(|ch| {
        ch.write_array(["shutdown"])?;
        let mut buf = crate::MessageBuf::new();
        ch.read_reply(&mut buf).map(drop)
    });
    let _ = handle.stop_with(StopOptions {
        after_close: Duration::from_secs(2),
        after_term: Duration::from_secs(1),
    });
}

/// Stops a template that stopped answering, in the background: close, SIGTERM after 2 s, SIGKILL
/// after 2 more, reaped. Its workers' clients then see their connection end and end the
/// workers' process groups.
fn kill_wedged(handle: ServerHandle) {
    let spawned = std::thread::Builder::new()
        .name("preload-kill-wedged".into())
        .spawn(move || {
            let _ = handle.stop_with(StopOptions {
                after_close: Duration::from_secs(2),
                after_term: Duration::from_secs(2),
            });
        });
    if let Err(e) = spawned {
        log(&format!(
            "cannot start a thread to stop a wedged template: {e}"
        ));
    }
}

/// Lets a template finish its running workers in the background, then reaps it.
fn retire(handle: ServerHandle) {
    let spawned = std::thread::Builder::new()
        .name("preload-retire".into())
        .spawn(move || {
            // Closing the channel ends its loop; its finalize waits for its workers.
            let _ = handle.stop_with(StopOptions {
                after_close: Duration::from_secs(24 * 3600),
                after_term: Duration::from_secs(2),
            });
        });
    if let Err(e) = spawned {
        log(&format!("cannot start a retire thread: {e}"));
    }
}
