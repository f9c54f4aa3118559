//! The preloader server: listens, checks peers, and hands requests to templates.
//!
//! Threads: the main thread accepts (and watches SIGTERM/SIGINT through a signalfd) and hands
//! each connection to a connection thread: an idle one if there is one (they wait for the next
//! connection for a while before exiting), else a new one. A connection thread greets the
//! client, reads its request's first message and, for a command, takes the lock of the
//! template of its key, (re)starts the template if needed, and passes it the client's socket;
//! the template reads the rest of the request from the client itself. So a connection never
//! waits for another one except for the template it needs, and the accept loop never waits.
//! Nothing here writes through std's stdout or stderr locks: templates are forked from a
//! connection thread while the other threads run, and a lock held at that moment would stay
//! locked forever in the template (see the crate docs on fork safety). Logs go through [`log`],
//! a lock-free `write(2)`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::template::Template;
use super::{Application, Preloader, PROTOCOL_VERSION};
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

fn log(msg: &str) {
    let line = format!("[fdserver-preload {}] {msg}\n", sys::getpid());
    sys::write_raw(2, line.as_bytes());
}

/// Entry of a process started by a client with the role variable: fork into the background
/// (the launcher exits at once, so the client can reap it) and serve.
pub(crate) fn launch<A: Application>(p: &Preloader<A>, role: &OsStr) -> io::Result<()> {
    if role != "launch" {
        return Err(io::Error::other(format!("unknown role {role:?}")));
    }
    // SAFETY: fd 3 was set up by the client as the write end of the readiness pipe, and nothing
    // else in this fresh process owns it.
    let ready = unsafe { OwnedFd::from_raw_fd(3) };
    sys::set_cloexec(ready.as_fd())?;
    // SAFETY: this process is single-threaded (it has just started), so the child may do
    // anything.
    match unsafe { sys::fork() }? {
        0 => {
            sys::setsid()?;
            let mut ready = File::from(ready);
            match serve(p, &mut ready) {
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
}

fn serve<A: Application>(p: &Preloader<A>, ready: &mut File) -> io::Result<()> {
    let paths = p.paths()?;
    let mut pidfile = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&paths.pidfile)?;
    if !sys::flock(pidfile.as_fd(), true, true)? {
        return Err(io::Error::other("another preloader server is running"));
    }
    pidfile.set_len(0)?;
    writeln!(pidfile, "{}", sys::getpid())?;

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

    let _ = std::fs::remove_file(&paths.socket);
    let old = sys::umask(0o177); // the socket is created 0600
    let listener = UnixListener::bind(&paths.socket);
    sys::umask(old);
    let listener = listener?;
    listener.set_nonblocking(true)?;
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
    });
    ready.write_all(b"ready\n")?;
    log(&format!("listening on {}", paths.socket.display()));

    let me = sys::geteuid();
    loop {
        let ready = sys::poll_in(&[listener.as_fd(), sigfd.as_fd(), wake_rx.as_fd()], None)?;
        if ready[1] {
            if let Some(sig) = sys::read_signalfd(sigfd.as_fd())? {
                log(&format!("signal {sig}: stopping"));
                break;
            }
        }
        if ready[2] || state.stopping.load(Ordering::SeqCst) {
            log("stop requested");
            break;
        }
        if ready[0] {
            let stream = match listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log(&format!("accept: {e}"));
                    continue;
                }
            };
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
            // An idle connection thread takes it; else a new thread.
            if claim_idle(&state.idle) {
                if queue_tx.send(stream).is_err() {
                    log("the connection queue is closed");
                }
                continue;
            }
            let st = Arc::clone(&state);
            let spawned = std::thread::Builder::new()
                .name("preload-conn".into())
                .spawn(move || connection_thread(st, stream));
            if let Err(e) = spawned {
                log(&format!("cannot start a connection thread: {e}"));
            }
        }
    }
    drop(queue_tx); // idle connection threads end

    // Shut down: stop accepting, stop every template (their workers get SIGTERM), clean up.
    drop(listener);
    let _ = std::fs::remove_file(&paths.socket);
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
    let _ = std::fs::remove_file(&paths.pidfile);
    drop(pidfile);
    log("stopped");
    Ok(())
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
        .write_array(["fdserver-preload", PROTOCOL_VERSION, pid.as_str()])
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

/// Hands a command to the template of `key`: starts it on first use, restarts it when it died
/// or a watched file changed.
fn run_job<A: Application>(state: &Arc<State<A>>, key: &str, job: Job) {
    let slot = {
        let mut slots = state.slots.lock().unwrap_or_else(|e| e.into_inner());
        if state.stopping.load(Ordering::SeqCst) {
            drop(slots);
            reply_error(job.conn, "stopping", "the preloader server is stopping");
            return;
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
        drop(t);
        reply_error(job.conn, "stopping", "the preloader server is stopping");
        return;
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
                drop(t);
                reply_error(job.conn, "preload", &format!("preload failed: {text}"));
                return;
            }
        }
    }
    let (handle, _) = t.current.as_mut().expect("started above");
    let Job { conn, cwd } = job;
    let sent = handle.with_channel(|ch| {
        // A deadline makes the reply wait a `poll` for input, not a blocking `recvmsg`: a
        // blocked `recvmsg` is also woken each time the template consumes part of the request
        // (write space on the same socket), two useless context switches per command.
        ch.set_read_timeout(Some(TEMPLATE_REPLY_TIMEOUT));
        ch.write_array([b"run".as_slice(), &cwd])?;
        ch.send_fd(&conn)?;
        let mut buf = crate::MessageBuf::new();
        ch.read_reply(&mut buf).map(drop)
    });
    if let Err(e) = sent {
        log(&format!("template {key:?} failed a request: {e}"));
        if matches!(e, Error::TimedOut) {
            // Wedged, and its channel is out of step (a late reply would answer the next
            // command): replace it.
            if let Some((handle, _)) = t.current.take() {
                // Not `retire`: a wedged template would keep its 24 h grace, and one more would
                // pile up at each command. Stop it now (in the background), as `stop` would.
                kill_wedged(handle);
                set_info(&slot, None);
            }
        }
        drop(t);
        reply_error(conn, "template", &format!("the template failed: {e}"));
        // The next command restarts it if it died.
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
