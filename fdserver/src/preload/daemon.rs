//! The preloader server: listens, checks peers, and hands requests to templates.
//!
//! Threads: the main thread accepts, and watches SIGTERM/SIGINT (a signalfd), inotify (its own
//! directory, and the directories of the templates' watched files: [`Events`]) and its idle
//! time. It hands each connection to a connection thread: an idle one if there is one (they
//! wait for the next connection for a while before exiting), else a new one, up to
//! [`MAX_CONNECTIONS`]; past that it stops accepting, and clients wait in the socket's listen
//! queue. A connection thread greets the client, reads its request's first message and, for a
//! command, takes the lock of the template of its key, (re)starts the template if needed (this
//! executable run again: [`start_template`]), and passes it the client's socket; the template
//! reads the rest of the request from the client itself. So a connection never waits for
//! another one except for the template it needs, and the accept loop never waits for a
//! template.
//!
//! Logs go through [`log`]: one `write(2)` per line, so that lines of the server's threads and
//! of its templates (which share the log) never interleave, and the log stays bounded.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::os::ArgvArea;
use super::template::{ARGV_SLOTS, ENV_KEY};
use super::{
    build_id, lock_within, Application, Dir, Kind, Preloader, Unlinked, ENV_ROLE, FIX_DIR,
    PROTOCOL_VERSION,
};
use crate::channel::Channel;
use crate::client::{ServerHandle, StopOptions};
use crate::error::{Error, RemoteError, RemoteErrorKind};
use crate::sys;

/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a client waiting behind a preload is checked for a hang-up.
const WATCH_WAITING_CLIENT: Duration = Duration::from_millis(20);
/// How long an idle connection thread waits for another connection before it exits.
const IDLE_THREAD_EXIT: Duration = Duration::from_secs(30);
/// How long a template may take to answer a command: it reads the rest of the request (within
/// 3 s in all, `template::REQUEST_BUDGET`), then forks. Well above that: only a wedged template
/// misses it.
const TEMPLATE_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a template may take to say whether it is busy (the idle timeout asks).
const TEMPLATE_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many connections are served at once (each by a thread); further clients wait in
/// the socket's listen queue until one ends.
pub(crate) const MAX_CONNECTIONS: usize = 64;
/// While at [`MAX_CONNECTIONS`], how often the accept loop looks whether one has ended.
const CAP_RECHECK: Duration = Duration::from_millis(50);
/// After a failed `accept` (out of descriptors, say), new connections wait this long at first,
/// then twice as long at each failure in a row, up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long a server started by a client waits for a previous one (exiting) to release the
/// pidfile.
const PIDFILE_WAIT: Duration = Duration::from_secs(10);
/// Without inotify, how often the server checks that its directory and files are still its own.
const CHECK_PERIOD: Duration = Duration::from_secs(5);
/// The log's bound: past it, its last `LOG_LIMIT` bytes move to `<id>.log.1` and it starts again
/// empty (checked whenever the server writes a line, and after each preload).
pub(crate) const LOG_LIMIT: u64 = 1 << 20;

/// Where the log is, for [`bound_log`]: the directory and the log's identity (the server's
/// stderr must be that file). Unset for `--preloader serve`, which logs to its terminal.
struct LogFiles {
    /// The server's open directory ([`Dir`], which lives until the process exits).
    dir: std::os::fd::RawFd,
    log: OsString,
    old: OsString,
}

static LOG_FILES: OnceLock<LogFiles> = OnceLock::new();

fn log(msg: &str) {
    let line = format!("[fdserver-preload {}] {msg}\n", sys::getpid());
    sys::write_raw(2, line.as_bytes());
    bound_log();
}

/// Keeps the log under [`LOG_LIMIT`]: when it is larger, copies its last `LOG_LIMIT` bytes to
/// `<id>.log.1` and truncates it (every writer, templates included, appends, so they go on at
/// its new end). Lines written between the copy and the truncation are lost.
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
        // SAFETY: the directory's descriptor stays open for the life of the server (see
        // `LogFiles::dir`).
        let dir = unsafe { BorrowedFd::borrow_raw(files.dir) };
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
            // Closed (by `serve`) once it said "ready": its reader is gone by then.
            let mut ready = Some(File::from(ready));
            match serve(p, &dir, &mut ready) {
                Ok(()) => sys::exit_now(0),
                Err(e) => {
                    if let Some(mut ready) = ready {
                        let _ = writeln!(ready, "{e}");
                    }
                    log(&format!("server failed: {e}"));
                    sys::exit_now(1)
                }
            }
        }
        _ => sys::exit_now(0),
    }
}

/// `--preloader serve`: the server in the foreground of this terminal, logging to it (and its
/// templates' output with it), until Ctrl-C or `--preloader stop`. It opens and checks the
/// directory as a client does (see [`Dir`]).
pub(crate) fn foreground<A: Application>(p: &Preloader<A>) -> io::Result<()> {
    let dir = p.dir().map_err(|u| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{}; to use the preloader, {FIX_DIR}", u.0),
        )
    })?;
    serve(p, &dir, &mut None)
}

/// A command for a template: the client's socket, positioned after its `["run", key, proof]` (the
/// template reads the arguments, environment, attributes and descriptors, working directory
/// included, from it).
struct Job {
    conn: OwnedFd,
}

#[derive(Default)]
struct TemplateInfo {
    pid: Option<u32>,
    started: Option<Instant>,
    /// A template being preloaded: since when, and its pidfd (so that a stop can end it).
    preloading: Option<(Instant, OwnedFd)>,
    /// A copy of the running template's pidfd, which the server's loop polls: a template that
    /// dies while idle is reaped and logged at once, and `status` tells the truth meanwhile.
    /// Taken (`None`) once its death has been seen.
    watch: Option<Arc<OwnedFd>>,
}

/// One template key: its status (read by `status` without waiting) and its process, owned by
/// whichever connection thread holds the lock (commands of one key go to their template one at
/// a time; a preload holds the lock, so its key's clients queue behind it).
struct Slot {
    info: Mutex<TemplateInfo>,
    template: Mutex<TemplateState>,
    /// Notified each time `template` is released (see [`Held`]): a client waiting for it
    /// also watches its own connection.
    released: (Mutex<()>, Condvar),
}

/// The lock of a slot's template, which tells waiters when it is released.
struct Held<'a> {
    guard: Option<MutexGuard<'a, TemplateState>>,
    slot: &'a Slot,
}

impl std::ops::Deref for Held<'_> {
    type Target = TemplateState;
    fn deref(&self) -> &TemplateState {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for Held<'_> {
    fn deref_mut(&mut self) -> &mut TemplateState {
        self.guard.as_mut().expect("held until dropped")
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let _g = self
            .slot
            .released
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.slot.released.1.notify_all();
    }
}

impl Slot {
    fn new() -> Slot {
        Slot {
            info: Mutex::new(TemplateInfo::default()),
            template: Mutex::new(TemplateState::default()),
            released: (Mutex::new(()), Condvar::new()),
        }
    }

    /// Takes the template's lock, waiting as long as it takes.
    fn lock(&self) -> Held<'_> {
        let guard = self.template.lock().unwrap_or_else(|e| e.into_inner());
        Held {
            guard: Some(guard),
            slot: self,
        }
    }

    /// Takes the template's lock if nobody holds it (a preload or a command being handed over
    /// does).
    fn try_lock(&self) -> Option<Held<'_>> {
        let guard = match self.template.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(Held {
            guard: Some(guard),
            slot: self,
        })
    }

    /// Takes the template's lock unless the client on `conn` hangs up first (`None`): a client
    /// killed while it waits behind a preload gets its descriptors (which travel in its request,
    /// in the socket) released at once, not when the preload ends.
    fn lock_unless_gone(&self, conn: BorrowedFd<'_>) -> Option<Held<'_>> {
        let mut waiting = self.released.0.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // Tried while holding `released.0`: a release cannot slip between this attempt and
            // the wait below.
            if let Some(held) = self.try_lock() {
                drop(waiting);
                return Some(held);
            }
            if super::os::peer_hung_up(conn) {
                return None;
            }
            // Woken by the release; the timeout bounds how late a hang-up is seen.
            waiting = self
                .released
                .1
                .wait_timeout(waiting, WATCH_WAITING_CLIENT)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[derive(Default)]
struct TemplateState {
    current: Option<(ServerHandle, Stamps)>,
    /// The server stopped this template: no more commands.
    closed: bool,
    /// The environment the last template of this key was started with (a command's own, see
    /// [`template_environment`]); a restart for a watched file reuses it.
    env: Option<Arc<Vec<(OsString, OsString)>>>,
    /// The last preload's failure: when it ended, and the error for the client. A command that
    /// was waiting for that preload gets this error rather than starting (and waiting for)
    /// another preload; a later command tries again.
    failed: Option<(Instant, &'static str, String)>,
}

struct State<A> {
    app: A,
    preload_timeout: Duration,
    /// Where the server's and templates' output goes, for `status` and messages.
    log: String,
    started: Instant,
    /// The watches of the templates' watched files (`None` without inotify).
    files: Option<FileWatches>,
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
    /// The idle timeout in force (for `status`).
    idle_timeout: Mutex<Duration>,
    /// Threads stopping wedged templates: joined before the server exits, so that none is left
    /// running unanswered.
    wedged: Mutex<Vec<std::thread::JoinHandle<()>>>,
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

/// Opens and locks the pidfile, waiting up to `wait` for a previous server that is exiting to
/// release it; returns it with its device and inode. A pidfile that was replaced while we waited
/// for its lock is left for the one now in its place.
fn lock_pidfile(dir: &Dir, wait: Duration) -> io::Result<(File, (u64, u64))> {
    let deadline = Instant::now() + wait;
    loop {
        let f = dir.open_file(Kind::Pid, libc::O_RDWR | libc::O_CREAT)?;
        if !lock_within(&f, deadline)? {
            let holder = super::pidfile_text(&f);
            let pidfile = dir.display(Kind::Pid);
            return Err(io::Error::other(if wait.is_zero() {
                format!(
                    "another preloader server is running (pid {holder}, it holds {}); stop it \
                     first with `--preloader stop`",
                    pidfile.display()
                )
            } else {
                format!(
                    "another preloader server (pid {holder}) still holds {} after {wait:?}; it \
                     exits by itself once its socket is gone, else stop it with `kill`",
                    pidfile.display()
                )
            }));
        }
        let meta = f.metadata()?;
        let id = (meta.dev(), meta.ino());
        if dir.stat(Kind::Pid)? == Some(id) {
            return Ok((f, id));
        }
    }
}

/// The server's inotify instance, read by the main loop alone: it watches the server's own
/// directory (through the open directory, so the inode that was checked) for changes to its
/// socket, pidfile or the directory itself, and the directories of the templates' watched files
/// (added by connection threads through [`FileWatches`]). Without inotify the directory is
/// checked every [`CHECK_PERIOD`], and watched files at each command only.
struct Events {
    inotify: Option<Inotify>,
    /// The watch of our directory.
    dir_wd: Option<WatchDescriptor>,
    /// Our socket's and pidfile's names.
    names: [OsString; 2],
    /// When the directory is checked next, without a watch on it.
    next_check: Option<Instant>,
}

/// What one read of [`Events`] found.
#[derive(Default)]
struct Seen {
    /// Something happened to our directory, socket or pidfile (or the periodic check is due).
    dir: bool,
    /// Templates one of whose watched files changed.
    keys: Vec<String>,
}

impl Events {
    /// The instance, with our directory watched, and the handle to add watched files.
    fn new(dir: &Dir) -> (Events, Option<FileWatches>) {
        let names = [dir.name(Kind::Sock), dir.name(Kind::Pid)];
        let inotify = match Inotify::init() {
            // Non-blocking and close-on-exec.
            Ok(i) => Some(i),
            Err(e) => {
                log(&format!(
                    "inotify unavailable ({e}): {} is checked every {CHECK_PERIOD:?}, watched \
                     files at each command only",
                    dir.path().display()
                ));
                None
            }
        };
        let dir_wd = inotify.as_ref().and_then(|i| {
            let added = i.watches().add(
                format!("/proc/self/fd/{}", dir.fd().as_raw_fd()),
                WatchMask::DELETE
                    | WatchMask::CREATE
                    | WatchMask::MOVED_FROM
                    | WatchMask::MOVED_TO
                    | WatchMask::ATTRIB
                    | WatchMask::DELETE_SELF
                    | WatchMask::MOVE_SELF
                    | WatchMask::ONLYDIR,
            );
            match added {
                Ok(wd) => Some(wd),
                Err(e) => {
                    log(&format!(
                        "cannot watch {} with inotify ({e}): checking it every {CHECK_PERIOD:?}",
                        dir.path().display()
                    ));
                    None
                }
            }
        });
        let files = inotify.as_ref().map(|i| FileWatches {
            watches: i.watches(),
            dirs: Mutex::new(HashMap::new()),
        });
        let events = Events {
            next_check: dir_wd.is_none().then(|| Instant::now() + CHECK_PERIOD),
            inotify,
            dir_wd,
            names,
        };
        (events, files)
    }

    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.inotify.as_ref().map(|i| i.as_fd())
    }

    /// Reads what happened (draining the queue when `readable`), and whether the periodic check
    /// of the directory is due.
    fn read(&mut self, readable: bool, files: Option<&FileWatches>) -> Seen {
        let mut seen = Seen::default();
        if let Some(next) = self.next_check {
            if Instant::now() >= next {
                self.next_check = Some(Instant::now() + CHECK_PERIOD);
                seen.dir = true;
            }
        }
        let Some(inotify) = &mut self.inotify else {
            return seen;
        };
        if !readable {
            return seen;
        }
        let mut buf = [0u8; 4096];
        while let Ok(events) = inotify.read_events(&mut buf) {
            let mut any = false;
            for e in events {
                any = true;
                if e.mask.contains(EventMask::Q_OVERFLOW) {
                    // Events were lost: look at everything.
                    seen.dir = true;
                    if let Some(f) = files {
                        f.all_keys(&mut seen.keys);
                    }
                    continue;
                }
                if Some(&e.wd) == self.dir_wd.as_ref() {
                    seen.dir |= match e.name {
                        // An event of the directory itself (moved, removed, mode).
                        None => true,
                        Some(n) => self.names.iter().any(|ours| ours == n),
                    };
                }
                // (A watched file may live in our directory too: the same watch then.)
                if let Some(f) = files {
                    f.changed(&e.wd, e.name, e.mask, &mut seen.keys);
                }
            }
            if !any {
                break;
            }
        }
        seen
    }
}

/// The templates' watched files, watched through their directories (editors replace files by
/// renaming over them, which a watch on the file itself would lose) on the server's inotify
/// instance ([`Events`]). A file whose directory cannot be watched is still checked at each
/// command: a command after an edit then preloads itself.
struct FileWatches {
    watches: inotify::Watches,
    /// Per watch (a directory): the file names in it, and the template key each belongs to.
    dirs: Mutex<HashMap<WatchDescriptor, Vec<(OsString, String)>>>,
}

impl FileWatches {
    /// Watches `files` for template `key` (again: adding a watch twice is harmless).
    fn watch(&self, key: &str, files: &[PathBuf]) {
        // MASK_ADD: a directory also watched for another reason (the server's own, say) keeps
        // what that watch asked for.
        let mask = WatchMask::CLOSE_WRITE
            | WatchMask::MOVED_TO
            | WatchMask::MOVED_FROM
            | WatchMask::DELETE
            | WatchMask::ATTRIB
            | WatchMask::MASK_ADD;
        for f in files {
            let (Some(dir), Some(name)) = (f.parent(), f.file_name()) else {
                continue;
            };
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            match self.watches.clone().add(dir, mask) {
                Ok(wd) => {
                    let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
                    let names = dirs.entry(wd).or_default();
                    let entry = (name.to_owned(), key.to_owned());
                    if !names.contains(&entry) {
                        names.push(entry);
                    }
                }
                Err(e) => log(&format!(
                    "cannot watch {} ({e}): changes to {} are seen at the next command only",
                    dir.display(),
                    f.display()
                )),
            }
        }
    }

    /// Adds to `keys` the templates that an event on watch `wd` concerns.
    fn changed(
        &self,
        wd: &WatchDescriptor,
        name: Option<&OsStr>,
        mask: EventMask,
        keys: &mut Vec<String>,
    ) {
        let mut dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        if mask.contains(EventMask::IGNORED) {
            // The directory is gone (its watch with it): the next preload watches it again.
            dirs.remove(wd);
            return;
        }
        let (Some(names), Some(name)) = (dirs.get(wd), name) else {
            return;
        };
        for (n, key) in names {
            if n == name && !keys.contains(key) {
                keys.push(key.clone());
            }
        }
    }

    fn all_keys(&self, keys: &mut Vec<String>) {
        let dirs = self.dirs.lock().unwrap_or_else(|e| e.into_inner());
        for (_, key) in dirs.values().flatten() {
            if !keys.contains(key) {
                keys.push(key.clone());
            }
        }
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
    /// preloading, busy or running a worker); otherwise sets when to look again.
    fn expired<A: Application>(&mut self, state: &State<A>) -> bool {
        let now = Instant::now();
        let again = now + self.timeout;
        if state.conns.load(Ordering::SeqCst) > 0 {
            self.next = Some(again);
            return false;
        }
        let mut since = state.last_activity();
        let slots: Vec<(String, Arc<Slot>)> = state
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, s)| (k.clone(), Arc::clone(s)))
            .collect();
        // Every template is asked, even once one is found busy: one that does not answer is
        // replaced here, whatever the others do.
        let mut busy = false;
        for (key, slot) in slots {
            let Some(mut t) = slot.try_lock() else {
                busy = true; // preloading, or a command being handed over
                continue;
            };
            let Some((handle, _)) = t.current.as_mut() else {
                continue;
            };
            match template_activity(handle) {
                Ok((0, ago)) => since = since.max(now.checked_sub(ago).unwrap_or(now)),
                // Running workers: look again later (their end counts as activity).
                Ok(_) => busy = true,
                Err(e) => {
                    log(&format!(
                        "template {key:?} (pid {}) did not say whether it is busy: {e}",
                        handle.pid()
                    ));
                    if matches!(e, Error::TimedOut { .. } | Error::Broken { .. }) {
                        // Wedged, and its channel is out of step (a late answer would be read
                        // as the next command's): replace it, as `run_job` does.
                        if let Some((handle, _)) = t.current.take() {
                            kill_wedged(state, handle);
                            set_info(&slot, None);
                        }
                    }
                }
            }
        }
        if busy {
            self.next = Some(again);
            return false;
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
        ch.set_read_timeout(Some(TEMPLATE_IDLE_TIMEOUT));
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

/// Serves from `dir` until stopped: started by a client (`ready` is the pipe it waits on, our
/// stdout and stderr the log; closed once "ready" is written), or in the foreground by
/// `--preloader serve` (no `ready`, logging to the terminal).
fn serve<A: Application>(p: &Preloader<A>, dir: &Dir, ready: &mut Option<File>) -> io::Result<()> {
    let foreground = ready.is_none();
    // In the foreground, a server that holds the pidfile is a running one: say so at once.
    let wait = if foreground {
        Duration::ZERO
    } else {
        PIDFILE_WAIT
    };
    let (mut pidfile, pid_id) = lock_pidfile(dir, wait)?;
    pidfile.set_len(0)?;
    writeln!(pidfile, "{}", sys::getpid())?;
    if !foreground {
        let _ = LOG_FILES.set(LogFiles {
            dir: dir.fd().as_raw_fd(),
            log: dir.name(Kind::Log),
            old: dir.name(Kind::OldLog),
        });
    }

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
    let (mut events, files) = Events::new(dir);
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    let (queue_tx, queue_rx) = channel::<UnixStream>();

    let state = Arc::new(State {
        app: p.app.clone(),
        preload_timeout: p.options.preload_timeout,
        log: if foreground {
            "the terminal of `--preloader serve`".to_owned()
        } else {
            dir.display(Kind::Log).display().to_string()
        },
        started: Instant::now(),
        files,
        slots: Mutex::new(HashMap::new()),
        stopping: AtomicBool::new(false),
        wake: wake_tx,
        idle: AtomicUsize::new(0),
        queue: Mutex::new(queue_rx),
        conns: AtomicUsize::new(0),
        last_activity: AtomicU64::new(0),
        idle_timeout: Mutex::new(Duration::ZERO),
        wedged: Mutex::new(Vec::new()),
    });
    let idle_timeout = super::idle_timeout(&p.options).unwrap_or_else(|why| {
        log(&why);
        p.options.idle_timeout
    });
    let mut idle = Idle {
        timeout: idle_timeout,
        next: (!idle_timeout.is_zero()).then(|| Instant::now() + idle_timeout),
    };
    if let Some(mut ready) = ready.take() {
        ready.write_all(b"ready\n")?;
    }
    *state.idle_timeout.lock().unwrap_or_else(|e| e.into_inner()) = idle_timeout;
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
    show_title(p.app.name(), state.started);

    let me = sys::geteuid();
    let mut busy_dead: Vec<(String, Arc<Slot>)> = Vec::new();
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
        sooner(events.next_check);
        let mut fds = vec![sigfd.as_fd(), wake_rx.as_fd()];
        let events_at = events.fd().map(|fd| {
            fds.push(fd);
            fds.len() - 1
        });
        let listen_at = accepting.then(|| {
            fds.push(listener.as_fd());
            fds.len() - 1
        });
        // The running templates' pidfds: one that ends while idle is reaped at once. Not while
        // out of descriptors: `poll` may then take no more than `RLIMIT_NOFILE` of them.
        let paused = paused_until.is_some_and(|t| now < t);
        let watched: Vec<(String, Arc<Slot>, Arc<OwnedFd>)> = if paused {
            Vec::new()
        } else {
            let slots = state.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .iter()
                .filter(|(_, s)| !busy_dead.iter().any(|(_, b)| Arc::ptr_eq(s, b)))
                .filter_map(|(k, s)| {
                    let w = s
                        .info
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .watch
                        .clone()?;
                    Some((k.clone(), Arc::clone(s), w))
                })
                .collect()
        };
        let watch_at = fds.len();
        fds.extend(watched.iter().map(|(_, _, fd)| fd.as_fd()));
        // Dead templates whose slot a connection thread held: looked at again shortly (their
        // pidfds stay readable, so they are not polled meanwhile).
        if !busy_dead.is_empty() {
            deadline =
                Some(deadline.map_or(now + BUSY_DEAD_RECHECK, |d| d.min(now + BUSY_DEAD_RECHECK)));
        }
        let ready = match sys::poll_in(&fds, deadline) {
            Ok(r) => r,
            // More descriptors polled than `RLIMIT_NOFILE` allows (someone lowered it under
            // our feet): out of descriptors, as for a failing `accept`: stop polling the
            // listener for a while, rather than fail.
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    && (listen_at.is_some() || !watched.is_empty()) =>
            {
                accept_failures += 1;
                backoff = (backoff * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
                paused_until = Some(Instant::now() + backoff);
                if accept_failures == 1 {
                    log(&format!(
                        "poll: {e} (out of descriptors): new connections wait"
                    ));
                }
                continue;
            }
            Err(e) => return Err(e),
        };
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
        busy_dead.retain(|(key, slot)| !reap_if_dead(key, slot));
        for (i, (key, slot, _)) in watched.iter().enumerate() {
            if ready[watch_at + i] && !reap_if_dead(key, slot) {
                busy_dead.push((key.clone(), Arc::clone(slot)));
            }
        }
        let seen = events.read(events_at.is_some_and(|i| ready[i]), state.files.as_ref());
        if seen.dir {
            if let Some(why) = dir.lost(sock_id, pid_id) {
                log(&format!(
                    "{why}: stopping (a new server will serve from there)"
                ));
                break;
            }
        }
        for key in seen.keys {
            log(&format!(
                "a watched file of template {key:?} changed: restarting it"
            ));
            restart_template(Arc::clone(&state), key);
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
    // successor take the pidfile, then let the templates go. Whatever stopped us (`--preloader
    // stop` or `restart`, a newer build, a lost socket or directory, the idle timeout), a
    // command that runs is the user's and finishes: each template sees its channel close,
    // takes no more commands and exits once its running workers have ended (a template still
    // preloading has none and is ended now).
    drop(listener);
    remove_own_files(dir, sock_id, pid_id);
    drop(pidfile);
    let slots: Vec<Arc<Slot>> = {
        let mut slots = state.slots.lock().unwrap_or_else(|e| e.into_inner());
        state.stopping.store(true, Ordering::SeqCst);
        slots.drain().map(|(_, s)| s).collect()
    };
    // A template still preloading is ended now (its pidfd names exactly that process), so that
    // its waiting clients hear "stopped" at once instead of after the preload.
    for slot in &slots {
        let info = slot.info.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, pidfd)) = &info.preloading {
            let _ = sys::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
        }
    }
    for slot in slots {
        // Waits for a command being handed over (or a preload) to finish.
        let mut t = slot.lock();
        t.closed = true;
        if let Some((handle, _)) = t.current.take() {
            // A template someone stopped (SIGSTOP) would never see its channel close: it is
            // continued first (it is our unreaped child, so its pidfd names exactly it).
            let _ = sys::pidfd_kill(handle.pidfd(), libc::SIGCONT);
            handle.detach();
        }
        set_info(&slot, None);
    }
    let wedged = std::mem::take(&mut *state.wedged.lock().unwrap_or_else(|e| e.into_inner()));
    for w in wedged {
        let _ = w.join();
    }
    log("stopped (running commands finish in their templates)");
    Ok(())
}

/// Removes the socket and pidfile if they are still the ones this server made (same device and
/// inode), under the start lock, so that no successor can be putting its own in place at the
/// same moment. If a client holds that lock, it is starting a successor, which takes over (or
/// replaces) both files itself: they are left alone.
fn remove_own_files(dir: &Dir, sock: (u64, u64), pid: (u64, u64)) {
    let locked = match dir.open_file(Kind::Lock, libc::O_RDWR) {
        // No start lock, so no client is starting a successor (one that creates it now waits
        // for our pidfile's lock, held until both files are gone). It is not created here: an
        // exiting server adds nothing to a directory that may be being removed.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((true, None)),
        opened => opened.and_then(|f| Ok((sys::flock(f.as_fd(), true, true)?, Some(f)))),
    };
    match locked {
        Ok((true, _lock)) => {
            for (kind, id) in [(Kind::Sock, sock), (Kind::Pid, pid)] {
                match dir.unlink_if(kind, id) {
                    Ok(Unlinked::Removed | Unlinked::Absent) => {}
                    Ok(Unlinked::Other) => log(&format!(
                        "{} is no longer ours (another file is there now): left in place",
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
    // The client proves it may inspect this server (see `os::Proof`) by sending back the nonce
    // behind this descriptor with its request. Without a proof, nothing that acts as the user
    // outside the client's own context (a command, a template's start, a stop) is done.
    let proof = match super::os::Proof::new() {
        Ok(p) => Some(p),
        Err(e) => {
            log(&format!(
                "cannot make a proof of inspection for a client: {e}"
            ));
            None
        }
    };
    let proof_fd = proof
        .as_ref()
        .map(|p| p.fd().to_string())
        .unwrap_or_default();
    if ch
        .write_array([
            "fdserver-preload",
            PROTOCOL_VERSION,
            pid.as_str(),
            build_id(),
            proof_fd.as_str(),
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
    // `["run", key, proof]`, `["preload", key, proof]`, `["stop", proof]`: the proof is last.
    let proven = |at: usize| match (&proof, req.get(at)) {
        (Some(p), Some(got)) => p.matches(got),
        _ => false,
    };
    let unproven = |what: &str| {
        let why = if proof.is_some() {
            format!(
                "it may not inspect the preloader server (pid {pid}): it is confined (a \
                 Landlock domain, a security module, another user namespace) where the server \
                 is not"
            )
        } else {
            format!(
                "the preloader server (pid {pid}) could not make a proof of inspection for it \
                 (memfd_create or getrandom failed: see its log), so it runs nothing"
            )
        };
        log(&format!(
            "refused {what} from a client that gave no proof of inspection ({why})"
        ));
        why
    };
    drop(proof_fd);
    match req.name() {
        b"run" if req.len() == 3 => {
            if !proven(2) {
                // The command runs in the client's own context, or not at all: the client runs
                // it in-process. No template is started for it.
                let why = unproven("a command");
                let _ = ch.write_error(&RemoteError::new(
                    RemoteErrorKind::Other("confined".into()),
                    why,
                ));
                return;
            }
            drop(proof);
            let key = String::from_utf8_lossy(req.get(1).unwrap_or(b"")).into_owned();
            let job = Job { conn: ch.into_fd() };
            run_job(state, &key, job);
        }
        b"preload" if req.len() == 3 => {
            if !proven(2) {
                let why = unproven("a preload");
                let _ = ch.write_error(&RemoteError::new(
                    RemoteErrorKind::Other("confined".into()),
                    why,
                ));
                return;
            }
            // `--preloader restart`: preload the template of this key now; `["ok", pid]`.
            let key = String::from_utf8_lossy(req.get(1).unwrap_or(b"")).into_owned();
            match preload_now(state, &key, ch.as_fd()) {
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
            let _ = ch.write_array(status_reply(state));
        }
        b"stop" if !proven(1) => {
            let why = unproven("a stop");
            let _ = ch.write_error(&RemoteError::new(
                RemoteErrorKind::Other("confined".into()),
                why,
            ));
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

/// How soon a dead template whose slot was busy is looked at again.
const BUSY_DEAD_RECHECK: Duration = Duration::from_millis(100);

fn set_info(slot: &Slot, pid: Option<u32>) {
    let mut i = slot.info.lock().unwrap_or_else(|e| e.into_inner());
    i.pid = pid;
    i.started = pid.map(|_| Instant::now());
    i.preloading = None;
    i.watch = None;
}

/// The template `handle` now runs for `slot`: its status, and its pidfd for the server's loop
/// to watch.
fn set_running(slot: &Slot, handle: &ServerHandle) {
    set_info(slot, Some(handle.pid()));
    let mut i = slot.info.lock().unwrap_or_else(|e| e.into_inner());
    i.watch = handle.pidfd().try_clone_to_owned().ok().map(Arc::new);
}

/// How the child behind `pidfd` ended, without reaping it (`waitid` with `WNOWAIT`): "killed
/// by signal 9 (SIGKILL)", "exit status 1"; `None` if it has not ended.
fn peek_end(pidfd: BorrowedFd<'_>) -> Option<String> {
    const P_PIDFD: libc::idtype_t = 3;
    // SAFETY: siginfo_t is plain data.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child's pidfd with a valid out-pointer; WNOWAIT leaves it
    // unreaped.
    let r = unsafe {
        libc::waitid(
            P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: filled by a successful waitid (si_pid 0: nothing ended).
    if r != 0 || unsafe { info.si_pid() } == 0 {
        return None;
    }
    // SAFETY: as above.
    let status = unsafe { info.si_status() };
    Some(match info.si_code {
        libc::CLD_EXITED => format!("exit status {status}"),
        _ => format!("killed by signal {status} ({})", signal_name(status)),
    })
}

/// A template's pidfd became readable (it ended): reap it, log how it ended and forget it, so
/// that it is neither a zombie nor shown as running. `false` if a connection thread holds the
/// slot (handing a command over, preloading): the caller tries again shortly.
fn reap_if_dead(key: &str, slot: &Slot) -> bool {
    let Some(mut t) = slot.try_lock() else {
        return false;
    };
    let Some((handle, _)) = &mut t.current else {
        return true; // already handled by a connection thread
    };
    // Logged before it is reaped: a client whose command it ran finds how it ended either in
    // `/proc` (a zombie still) or in the log (see `client::logged_end`).
    if let Some(how) = peek_end(handle.pidfd()) {
        log(&format!(
            "template {key:?} (pid {}) died ({how}): the next command of its key starts a new one",
            handle.pid()
        ));
    }
    if matches!(handle.try_wait(), Ok(None)) {
        return true; // a newer template, running (its own copy is watched)
    }
    let (handle, _) = t.current.take().expect("checked");
    retire(handle);
    set_info(slot, None);
    true
}

/// `["ok", server uptime ms, log, idle timeout ms (0: none), then per template: key, state,
/// pid, uptime ms, resident bytes, running workers]` (state: `running`, `preloading`,
/// `stopped`; empty fields unknown).
fn status_reply<A: Application>(state: &State<A>) -> Vec<String> {
    let idle = *state.idle_timeout.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = vec![
        "ok".to_owned(),
        state.started.elapsed().as_millis().to_string(),
        state.log.clone(),
        idle.as_millis().to_string(),
    ];
    let slots = state.slots.lock().unwrap_or_else(|e| e.into_inner());
    let mut keys: Vec<&String> = slots.keys().collect();
    keys.sort();
    for key in keys {
        let info = slots[key].info.lock().unwrap_or_else(|e| e.into_inner());
        // A template whose death the loop has not handled yet is not shown as running.
        let dead = info
            .watch
            .as_ref()
            .is_some_and(|fd| sys::poll_now(fd.as_fd()));
        let (what, pid, since) = match (&info.preloading, info.pid) {
            (Some((since, _)), _) => ("preloading", None, Some(*since)),
            (None, Some(_)) if dead => ("stopped", None, None),
            (None, Some(pid)) => ("running", Some(pid), info.started),
            (None, None) => ("stopped", None, None),
        };
        out.push(key.clone());
        out.push(what.to_owned());
        out.push(pid.map(|p| p.to_string()).unwrap_or_default());
        out.push(
            since
                .map(|s| s.elapsed().as_millis().to_string())
                .unwrap_or_default(),
        );
        out.push(
            pid.and_then(super::os::resident_bytes)
                .map(|b| b.to_string())
                .unwrap_or_default(),
        );
        out.push(
            pid.and_then(super::os::children)
                .map(|n| n.to_string())
                .unwrap_or_default(),
        );
    }
    out
}

/// The slot of `key`, created on first use; `None` once the server is stopping.
fn slot_of<A>(state: &State<A>, key: &str) -> Option<Arc<Slot>> {
    let mut slots = state.slots.lock().unwrap_or_else(|e| e.into_inner());
    if state.stopping.load(Ordering::SeqCst) {
        return None;
    }
    Some(Arc::clone(
        slots
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(Slot::new())),
    ))
}

/// Who needs a template started.
enum Requester<'a> {
    /// A command, on this connection (closed, and set to `None`, if it leaves during the
    /// preload). The template gets the command's environment.
    Command(&'a mut Option<OwnedFd>),
    /// `--preloader restart`, on this connection: the template gets its environment.
    Restart(BorrowedFd<'a>),
    /// The server itself (a watched file changed): the template gets the environment of the
    /// previous one.
    Background,
}

/// Makes sure `t` holds a live template of `key` whose watched files have not changed: retires
/// a dead or outdated one, starts (preloads) a new one. On failure, returns the error kind and
/// text for the client.
fn ensure_template<A: Application>(
    state: &Arc<State<A>>,
    slot: &Slot,
    t: &mut TemplateState,
    key: &str,
    requester: Requester<'_>,
) -> Result<(), (&'static str, String)> {
    if let Some((handle, _)) = &mut t.current {
        if handle.channel().is_broken() && matches!(handle.try_wait(), Ok(None)) {
            // A request to it timed out: its channel is out of step. Stop it now (in the
            // background), as a wedged one.
            let (handle, _) = t.current.take().expect("checked");
            log(&format!(
                "template {key:?} (pid {}) stopped answering: replaced",
                handle.pid()
            ));
            kill_wedged(state, handle);
            set_info(slot, None);
        }
    }
    if let Some((handle, stamps)) = &mut t.current {
        let ended = handle.try_wait();
        let dead = !matches!(ended, Ok(None));
        if dead || changed(stamps) {
            let how = match ended {
                Ok(Some(status)) => format!("died ({})", describe_status(status)),
                Ok(None) => "retired: a watched file changed".to_owned(),
                Err(e) => format!("died ({e})"),
            };
            let (handle, _) = t.current.take().expect("checked");
            log(&format!("template {key:?} (pid {}) {how}", handle.pid()));
            retire(handle);
            set_info(slot, None);
        }
    }
    if t.current.is_some() {
        return Ok(());
    }
    let files = state.app.watched_files(key);
    if let Some(w) = &state.files {
        w.watch(key, &files);
    }
    let watched = stamps(files);
    let (env, client) = match requester {
        Requester::Command(client) => {
            let env = match client.as_ref() {
                Some(c) => Some(template_environment(key, c.as_fd())?),
                None => None,
            };
            (env, Some(client))
        }
        Requester::Restart(conn) => (Some(template_environment(key, conn)?), None),
        Requester::Background => (None, None),
    };
    let env = env
        .map(Arc::new)
        .or_else(|| t.env.clone())
        .unwrap_or_else(|| Arc::new(std::env::vars_os().collect()));
    t.env = Some(Arc::clone(&env));
    match start_template(state, slot, key, &env, client) {
        Ok(h) => {
            log(&format!("template {key:?} preloaded (pid {})", h.pid()));
            set_running(slot, &h);
            t.current = Some((h, watched));
            t.failed = None;
            Ok(())
        }
        Err((kind, text)) => {
            log(&format!("template {key:?}: {text}"));
            set_info(slot, None);
            let text = format!("{text}; its output is in {}", state.log);
            t.failed = Some((Instant::now(), kind, text.clone()));
            Err((kind, text))
        }
    }
}

/// The environment a template of `key` starts (and preloads) with: that of the process at the
/// other end of `conn` (a command of that key), as a fresh run of the command would have it
/// (template keys stand for environments: `RAILS_ENV` and the configuration that goes with
/// it), without the variables that only inject code (`LD_PRELOAD`, `LD_AUDIT`: a client with
/// one runs in-process). If it cannot be read, the server's own (and the log says why).
///
/// Only a process confined nowhere more than this server gives its environment: a template
/// runs in the server's context, so a sandboxed process (of the same uid, that reaches the
/// socket) must not choose what it loads and runs there (`LD_LIBRARY_PATH`, `GCONV_PATH`, the
/// application's own configuration). For such a process, `Err(("confined", why))`: no template
/// is started for it, and the client runs its command in-process (a template would refuse its
/// command anyway).
fn template_environment(
    key: &str,
    conn: BorrowedFd<'_>,
) -> Result<Vec<(OsString, OsString)>, (&'static str, String)> {
    use super::context::{judge, unreadable, ProcessContext, Verdict};
    let verdict = match (
        ProcessContext::of_this_process(),
        ProcessContext::of_peer(conn),
    ) {
        (Ok(own), Ok(peer)) => {
            // Attributes and loader variables are not the point here (the template judges
            // them for each command): the same on both sides.
            let attrs = super::attrs::Attrs::of_this_process(0);
            judge(&own, &attrs, &[], &peer, &attrs, std::iter::empty())
        }
        (Err(e), _) | (_, Err(e)) => unreadable(&e),
    };
    match verdict {
        Verdict::InProcess(why) => {
            log(&format!(
                "template {key:?} not started for a confined client ({why}): it runs its \
                 command in-process"
            ));
            return Err(("confined", why));
        }
        // This server is the more confined (started inside a Landlock domain, under
        // `no_new_privs`...): no template is preloaded here for nothing; the client replaces
        // the server (not cached in `failed`: the `?` in `ensure_template` returns first).
        Verdict::Replace(why) => {
            log(&format!(
                "template {key:?} not started: this server is more confined than its client \
                 ({why}), which replaces it"
            ));
            return Err(("outranked", why));
        }
        Verdict::Faithful => {}
    }
    Ok(match super::context::environ_of_peer(conn) {
        Ok(env) => env,
        Err(e) => {
            log(&format!(
                "template {key:?} preloads with the server's environment: the command's cannot \
                 be read ({e})"
            ));
            std::env::vars_os().collect()
        }
    })
}

/// A template's wait status, for the log: "killed by signal 9 (SIGKILL)", "exit status 1".
fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(sig) => format!("killed by signal {sig} ({})", signal_name(sig)),
        None => status.to_string(),
    }
}

/// Starts a template for `key`: this executable again (`/proc/self/exe`, the very file this
/// server runs, even if it has been replaced since), with the role variable, its socket as
/// descriptor 3, our stdout and stderr (the log), and the title and room for workers' `argv`
/// as arguments. Waits for its preload, at most `preload_timeout`.
fn start_template<A: Application>(
    state: &State<A>,
    slot: &Slot,
    key: &str,
    env: &[(OsString, OsString)],
    client: Option<&mut Option<OwnedFd>>,
) -> Result<ServerHandle, (&'static str, String)> {
    let fail = |e: &dyn std::fmt::Display| {
        (
            "server",
            format!("the preloader server could not start a template for {key:?}: {e}"),
        )
    };
    let (mine, theirs) = Channel::pair().map_err(|e| fail(&e))?;
    let theirs_raw = theirs.as_raw_fd();
    // Its log (our stderr) as descriptor 4, for once it has preloaded; until then its output
    // goes through a pipe that a thread of ours copies into the log, bounded.
    let log_fd = sys::dup_at_least(io::stderr().as_fd(), 10).map_err(|e| fail(&e))?;
    let log_raw = log_fd.as_raw_fd();
    let (output, copied) = match copy_output_in_background(key) {
        Some((w, done)) => (Some(w), Some(done)),
        None => (None, None),
    };
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(format!("{}: template {key}", state.app.name()))
        .args(std::iter::repeat("").take(ARGV_SLOTS))
        .env_clear()
        .envs(
            env.iter()
                .filter(|(k, _)| {
                    k != ENV_ROLE
                        && k != ENV_KEY
                        && !super::context::INJECTED.iter().any(|i| k == OsStr::new(i))
                })
                .map(|(k, v)| (k, v)),
        )
        .env(ENV_ROLE, "template")
        .env(ENV_KEY, key)
        .stdin(Stdio::null());
    if let Some(w) = output {
        let copy = w.try_clone().map_err(|e| fail(&e))?;
        cmd.stdout(Stdio::from(copy)).stderr(Stdio::from(w));
    }
    // SAFETY: the closure only calls dup2, fcntl and prctl (async-signal-safe) on descriptors
    // open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if theirs_raw == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags == -1 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) == -1 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_raw, 3) == -1 {
                return Err(io::Error::last_os_error());
            }
            // (log_raw is at least 10: the channel is in place already.)
            if libc::dup2(log_raw, 4) == -1 {
                return Err(io::Error::last_os_error());
            }
            // Only 0 to 4: not what the server inherited from the client that started it, nor
            // the server's own sockets.
            super::os::cloexec_from(5);
            // While it preloads, nothing but this thread watches it: it dies with the server
            // (the template clears this once preloaded).
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| fail(&e))?;
    // Our copies of what the template was given: the copying thread sees the end of the pipe
    // once the template is done with it.
    drop(cmd);
    drop(log_fd);
    drop(theirs);
    let pid = child.id() as libc::pid_t;
    drop(child); // not waited for by std: the handle below reaps it
                 // The template's workers may run for a long time: `stop` must not hurry them.
    let mut handle = ServerHandle::new(
        pid,
        mine,
        StopOptions {
            after_close: Duration::from_secs(2),
            after_term: Duration::from_secs(2),
        },
    )
    .map_err(|e| fail(&e))?;
    if let Ok(fd) = handle.pidfd().try_clone_to_owned() {
        let mut info = slot.info.lock().unwrap_or_else(|e| e.into_inner());
        info.preloading = Some((Instant::now(), fd));
    }
    let timeout = state.preload_timeout;
    let deadline = Instant::now() + timeout;
    // While it preloads, the client that asked may leave: close its connection then (its
    // descriptors travel in the request), and go on preloading for the next command.
    if let Some(client) = client {
        while let Some(conn) = client.as_ref() {
            let ch = handle.channel();
            match super::os::readable_or_hung_up(ch.as_fd(), conn.as_fd(), deadline) {
                Ok((false, true)) => {
                    log(&format!(
                        "the client waiting for template {key:?} left during its preload"
                    ));
                    *client = None;
                }
                _ => break,
            }
        }
    }
    let left = deadline.saturating_duration_since(Instant::now());
    let ready = handle.await_ready(Some(left.max(Duration::from_millis(1))));
    // The template has closed the pipe (it writes to the log itself once preloaded, and a
    // failed one exits): its preload's output is all in the log, which is bounded again,
    // before anything else happens. (Unless the preload kept a copy of its stdout: then the
    // copying goes on in the background.)
    if let Some(done) = copied {
        let _ = done.recv_timeout(Duration::from_secs(1));
    }
    match ready {
        Ok(()) => Ok(handle),
        Err(e) => Err(preload_error(state, key, pid, timeout, e)),
    }
}

/// Starts a thread that copies what a template writes while it preloads (a pipe: its stdout
/// and stderr) into our stderr (the log, or the terminal of `--preloader serve`), keeping the
/// log bounded as it goes ([`bound_log`]) however much the preload prints, until the template
/// closes the pipe (once preloaded, it writes to the log itself). Whole lines at a time where
/// it can, so that they do not interleave with the server's own. Returns the pipe's write
/// end, and what says the copying ended; `None` if no thread could be started (the template
/// then writes to the log itself).
fn copy_output_in_background(key: &str) -> Option<(OwnedFd, Receiver<()>)> {
    let (from, to) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => {
            log(&format!(
                "template {key:?}: no pipe for its output ({e}): it writes to the log"
            ));
            return None;
        }
    };
    let (done_tx, done) = channel::<()>();
    let spawned = std::thread::Builder::new()
        .name("preload-output".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            let mut pending = 0;
            loop {
                // SAFETY: reading into the unused part of a live buffer.
                let n = unsafe {
                    libc::read(
                        from.as_raw_fd(),
                        buf[pending..].as_mut_ptr().cast(),
                        buf.len() - pending,
                    )
                };
                if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if n <= 0 {
                    break;
                }
                pending += n as usize;
                let cut = match buf[..pending].iter().rposition(|&b| b == b'\n') {
                    Some(i) => i + 1,
                    None if pending == buf.len() => pending,
                    None => 0,
                };
                if cut > 0 {
                    sys::write_raw(2, &buf[..cut]);
                    buf.copy_within(cut..pending, 0);
                    pending -= cut;
                    bound_log();
                }
            }
            if pending > 0 {
                sys::write_raw(2, &buf[..pending]);
                bound_log();
            }
            drop(from);
            let _ = done_tx.send(());
        });
    match spawned {
        Ok(_) => Some((to, done)),
        Err(e) => {
            log(&format!(
                "template {key:?}: no thread to copy its output ({e}): it writes to the log"
            ));
            None
        }
    }
}

/// The client's message for a failed preload: which process failed and how.
fn preload_error<A>(
    state: &State<A>,
    key: &str,
    pid: libc::pid_t,
    timeout: Duration,
    e: Error,
) -> (&'static str, String) {
    if state.stopping.load(Ordering::SeqCst) {
        return (
            "stopping",
            format!(
                "the preloader server was stopped while the template for {key:?} was preloading"
            ),
        );
    }
    let text = match e {
        Error::Remote(r) => format!(
            "the preload of template {key:?} (pid {pid}) failed: {}",
            r.message()
        ),
        Error::TimedOut { .. } => format!(
            "the template for {key:?} (pid {pid}) did not finish preloading within {timeout:?} \
             and was killed (raise `Options::preload_timeout` if it needs longer)"
        ),
        Error::ServerExited(status) => {
            use std::os::unix::process::ExitStatusExt;
            match status.signal() {
                Some(sig) => format!(
                    "the template for {key:?} (pid {pid}) crashed while preloading: killed by \
                     signal {sig} ({})",
                    signal_name(sig)
                ),
                None => format!(
                    "the template for {key:?} (pid {pid}) exited while preloading ({status})"
                ),
            }
        }
        other => format!("the template for {key:?} (pid {pid}) failed while preloading: {other}"),
    };
    ("preload", text)
}

/// The conventional name of a signal, for messages.
pub(crate) fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSYS => "SIGSYS",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "a signal",
    }
}

/// `--preloader restart`'s request: (re)starts the template of `key` unless it is running and
/// up to date; its pid. The client on `conn` waits for it (and is dropped if it leaves).
fn preload_now<A: Application>(
    state: &Arc<State<A>>,
    key: &str,
    conn: BorrowedFd<'_>,
) -> Result<u32, (&'static str, String)> {
    let stopping = || ("stopping", "the preloader server is stopping".to_owned());
    let slot = slot_of(state, key).ok_or_else(stopping)?;
    let Some(mut t) = slot.lock_unless_gone(conn) else {
        return Err(("gone", "the client left".to_owned()));
    };
    if t.closed {
        return Err(stopping());
    }
    ensure_template(state, &slot, &mut t, key, Requester::Restart(conn))?;
    Ok(t.current.as_ref().map_or(0, |(h, _)| h.pid()))
}

/// Hands a command to the template of `key`: starts it on first use, restarts it when it died
/// or a watched file changed.
fn run_job<A: Application>(state: &Arc<State<A>>, key: &str, job: Job) {
    let arrived = Instant::now();
    let Some(slot) = slot_of(state, key) else {
        reply_error(job.conn, "stopping", "the preloader server is stopping");
        return;
    };
    let Some(mut t) = slot.lock_unless_gone(job.conn.as_fd()) else {
        log(&format!(
            "a client of template {key:?} left while waiting for it"
        ));
        return;
    };
    if t.closed {
        drop(t);
        reply_error(job.conn, "stopping", "the preloader server is stopping");
        return;
    }
    if t.current.is_none() {
        if let Some((at, kind, text)) = &t.failed {
            if *at >= arrived {
                // This command waited for that preload: its outcome is this command's too (not
                // a second preload and a second wait).
                let (kind, text) = (*kind, text.clone());
                drop(t);
                reply_error(job.conn, kind, &text);
                return;
            }
        }
    }
    let mut client = Some(job.conn);
    let requester = Requester::Command(&mut client);
    if let Err((kind, text)) = ensure_template(state, &slot, &mut t, key, requester) {
        drop(t);
        if let Some(conn) = client {
            reply_error(conn, kind, &text);
        }
        return;
    }
    let Some(conn) = client else {
        return; // the client left during the preload
    };
    let (handle, _) = t.current.as_mut().expect("started above");
    let sent = handle.with_channel(|ch| {
        // A deadline makes the reply wait a `poll` for input, not a blocking `recvmsg`: a
        // blocked `recvmsg` is also woken each time the template consumes part of the request
        // (write space on the same socket), two useless context switches per command.
        ch.set_read_timeout(Some(TEMPLATE_REPLY_TIMEOUT));
        ch.write_array_with_fd(["run"], &conn)?;
        let mut buf = crate::MessageBuf::new();
        ch.read_reply(&mut buf).map(drop)
    });
    if let Err(e) = sent {
        log(&format!("template {key:?} failed a request: {e}"));
        let pid = handle.pid();
        if matches!(e, Error::TimedOut { .. } | Error::Broken { .. }) {
            // Wedged, and its channel is out of step (a late reply would answer the next
            // command): replace it.
            if let Some((handle, _)) = t.current.take() {
                // Not `retire`: a wedged template would keep its 24 h grace, and one more would
                // pile up at each command. Stop it now (in the background), as `stop` would.
                kill_wedged(state, handle);
                set_info(&slot, None);
            }
        }
        drop(t);
        let text = match &e {
            Error::Remote(r) => format!(
                "the template for {key:?} (pid {pid}) refused the command: {}",
                r.message()
            ),
            Error::ServerExited(status) => format!(
                "the template for {key:?} (pid {pid}) died while taking the command ({status})"
            ),
            other => {
                format!("the template for {key:?} (pid {pid}) failed to take the command: {other}")
            }
        };
        reply_error(
            conn,
            "template",
            &format!("{text}; its output is in {}", state.log),
        );
        // The next command restarts it if it died.
    }
}

fn reply_error(conn: OwnedFd, kind: &str, text: &str) {
    let mut ch = Channel::new(conn);
    ch.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = ch.write_error(&RemoteError::new(RemoteErrorKind::Other(kind.into()), text));
}

/// What identifies a watched file's content: size, modification and change times, inode
/// (a file replaced by a rename gets a new inode even with the same size and times).
type Stamps = Vec<(PathBuf, Option<(u64, i64, i64, i64, i64, u64)>)>;

fn stamps(files: Vec<PathBuf>) -> Stamps {
    files
        .into_iter()
        .map(|f| {
            let s = std::fs::metadata(&f).ok().map(|m| {
                (
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                    m.ino(),
                )
            });
            (f, s)
        })
        .collect()
}

fn changed(old: &Stamps) -> bool {
    let paths: Vec<PathBuf> = old.iter().map(|(p, _)| p.clone()).collect();
    stamps(paths) != *old
}

/// Restarts the template of `key` in the background after a watched file changed, so that the
/// next command finds it preloaded: retires the current one (its running workers finish) and
/// preloads a new one. Commands of that key that arrive meanwhile wait for the new one.
fn restart_template<A: Application>(state: Arc<State<A>>, key: String) {
    let spawned = std::thread::Builder::new()
        .name("preload-restart".into())
        .spawn(move || {
            let Some(slot) = slot_of(&state, &key) else {
                return;
            };
            let mut t = slot.lock();
            if t.closed {
                return;
            }
            let outdated = match &t.current {
                Some((_, stamps)) => changed(stamps),
                None => false, // never started, or failed: the next command starts it
            };
            if outdated {
                let again = Requester::Background;
                if let Err((_, text)) = ensure_template(&state, &slot, &mut t, &key, again) {
                    log(&format!("restarting template {key:?} failed: {text}"));
                }
            }
        });
    if let Err(e) = spawned {
        log(&format!("cannot start a thread to restart a template: {e}"));
    }
}

/// Shows `<name>: preloader server | started <when>` in `ps`, kept current by a thread that
/// wakes when the shown age changes (seconds for the first minute, then minutes, then hours).
fn show_title(name: &str, started: Instant) {
    let Some(area) = ArgvArea::of_this_process() else {
        return;
    };
    let name = name.to_owned();
    let title = move || {
        let age = started.elapsed().as_secs();
        let when = match age {
            0..=4 => "just now".to_owned(),
            5..=59 => format!("{age} s ago"),
            60..=3599 => format!("{} min ago", age / 60),
            _ => format!("{} h ago", age / 3600),
        };
        format!("{name}: preloader server | started {when}")
    };
    area.set_title(title().as_bytes());
    let _ = std::thread::Builder::new()
        .name("preload-title".into())
        .spawn(move || loop {
            let age = started.elapsed().as_secs();
            let step = match age {
                0..=59 => 5,
                60..=3599 => 60,
                _ => 3600,
            };
            // Production timing, not synchronisation: the title is cosmetic.
            std::thread::sleep(Duration::from_secs(step - age % step));
            area.set_title(title().as_bytes());
        });
}

/// Stops a template that stopped answering, in the background: close, SIGTERM after 2 s, SIGKILL
/// after 2 more, reaped. Its workers' clients then see their connection end and end the
/// workers' process groups.
fn kill_wedged<A>(state: &State<A>, handle: ServerHandle) {
    let spawned = std::thread::Builder::new()
        .name("preload-kill-wedged".into())
        .spawn(move || {
            let _ = handle.stop_with(StopOptions {
                after_close: Duration::from_secs(2),
                after_term: Duration::from_secs(2),
            });
        });
    match spawned {
        Ok(t) => {
            let mut wedged = state.wedged.lock().unwrap_or_else(|e| e.into_inner());
            wedged.retain(|t| !t.is_finished());
            wedged.push(t);
        }
        Err(e) => log(&format!(
            "cannot start a thread to stop a wedged template: {e}"
        )),
    }
}

/// Lets a template finish its running workers in the background, then reaps it.
fn retire(handle: ServerHandle) {
    let spawned = std::thread::Builder::new()
        .name("preload-retire".into())
        .spawn(move || {
            // Closing the channel ends its loop; its finalize waits for its workers. A stopped
            // template (SIGSTOP) is continued, or it would never see the channel close.
            let _ = sys::pidfd_kill(handle.pidfd(), libc::SIGCONT);
            let _ = handle.stop_with(StopOptions {
                after_close: Duration::from_secs(24 * 3600),
                after_term: Duration::from_secs(2),
            });
        });
    if let Err(e) = spawned {
        log(&format!("cannot start a retire thread: {e}"));
    }
}
