//! The preloader server: listens, checks peers, and hands requests to templates.
//!
//! Threads: the main thread accepts (and watches SIGTERM/SIGINT through a signalfd); each
//! connection gets a thread for its handshake; each template key gets a thread that owns the
//! template process and feeds it requests in order. Nothing here writes through std's stdout or
//! stderr locks: templates are forked from a template thread while the other threads run, and a
//! lock held at that moment would stay locked forever in the template (see the crate docs on
//! fork safety). Logs go through [`log`], a lock-free `write(2)`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::template::Template;
use super::{Application, Preloader, PROTOCOL_VERSION};
use crate::channel::Channel;
use crate::client::{ServerHandle, StopOptions};
use crate::error::{Error, RemoteError, RemoteErrorKind};
use crate::server::Builder;
use crate::sys;

/// How long a connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

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

struct Job {
    conn: OwnedFd,
    cwd: Vec<u8>,
    argv: Vec<u8>,
    env: Vec<u8>,
    stdio: [OwnedFd; 3],
}

#[derive(Default)]
struct TemplateInfo {
    pid: Option<u32>,
    started: Option<Instant>,
}

struct Slot {
    tx: Sender<Job>,
    info: Arc<Mutex<TemplateInfo>>,
    thread: std::thread::JoinHandle<()>,
}

struct State<A> {
    app: A,
    huge_pages: bool,
    started: Instant,
    slots: Mutex<HashMap<String, Slot>>,
    stopping: AtomicBool,
    wake: UnixStream,
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

    let state = Arc::new(State {
        app: p.app.clone(),
        huge_pages: p.options.huge_pages,
        started: Instant::now(),
        slots: Mutex::new(HashMap::new()),
        stopping: AtomicBool::new(false),
        wake: wake_tx,
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
            let st = Arc::clone(&state);
            let spawned = std::thread::Builder::new()
                .name("preload-conn".into())
                .spawn(move || connection(st, stream));
            if let Err(e) = spawned {
                log(&format!("cannot start a connection thread: {e}"));
            }
        }
    }

    // Shut down: stop accepting, stop every template (their workers get SIGTERM), clean up.
    drop(listener);
    let _ = std::fs::remove_file(&paths.socket);
    let slots: Vec<Slot> = state
        .slots
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .map(|(_, s)| s)
        .collect();
    for slot in slots {
        drop(slot.tx); // the template thread stops its template and ends
        let _ = slot.thread.join();
    }
    let _ = std::fs::remove_file(&paths.pidfile);
    drop(pidfile);
    log("stopped");
    Ok(())
}

/// One client connection: greeting, request, hand-off.
fn connection<A: Application>(state: Arc<State<A>>, stream: UnixStream) {
    let mut ch = Channel::from(stream);
    ch.set_timeout(Some(REQUEST_TIMEOUT));
    let pid = sys::getpid().to_string();
    if ch
        .write_array(["fdserver-preload", PROTOCOL_VERSION, pid.as_str()])
        .is_err()
    {
        return;
    }
    let req = match ch.read_array() {
        Ok(Some(r)) => r,
        Ok(None) => return, // the client left: nothing to do
        Err(e) => {
            log(&format!("bad request: {e}"));
            return;
        }
    };
    match req.first().map(Vec::as_slice) {
        Some(b"run") if req.len() == 3 => {
            let parts = (|| -> Result<_, Error> {
                let argv = ch.read_scalar()?.ok_or(Error::Disconnected)?;
                let env = ch.read_scalar()?.ok_or(Error::Disconnected)?;
                let mut fd = || ch.recv_fd()?.ok_or(Error::Disconnected);
                let stdio = [fd()?, fd()?, fd()?];
                Ok((argv, env, stdio))
            })();
            let job = parts.map(|(argv, env, stdio)| Job {
                conn: ch.into_fd(),
                cwd: req[2].clone(),
                argv,
                env,
                stdio,
            });
            match job {
                Ok(job) => submit(&state, &String::from_utf8_lossy(&req[1]), job),
                Err(e) => log(&format!("incomplete run request: {e}")),
            }
        }
        Some(b"status") => {
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
        Some(b"stop") => {
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

/// Queues a job for the template of `key`, creating its thread on first use.
fn submit<A: Application>(state: &Arc<State<A>>, key: &str, job: Job) {
    let mut slots = state.slots.lock().unwrap_or_else(|e| e.into_inner());
    if state.stopping.load(Ordering::SeqCst) {
        reply_error(job.conn, "stopping", "the preloader server is stopping");
        return;
    }
    let job = match slots.get(key) {
        Some(slot) => match slot.tx.send(job) {
            Ok(()) => return,
            Err(e) => e.0, // its thread died; replace it
        },
        None => job,
    };
    let (tx, rx) = channel();
    let info = Arc::new(Mutex::new(TemplateInfo::default()));
    let st = Arc::clone(state);
    let k = key.to_owned();
    let i2 = Arc::clone(&info);
    let thread = match std::thread::Builder::new()
        .name(format!("preload-template-{key}"))
        .spawn(move || template_thread(st, k, rx, i2))
    {
        Ok(t) => t,
        Err(e) => {
            reply_error(job.conn, "server", &format!("cannot start a thread: {e}"));
            return;
        }
    };
    let _ = tx.send(job);
    slots.insert(key.to_owned(), Slot { tx, info, thread });
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

/// Owns one template process: starts it on demand, feeds it jobs in order, restarts it when it
/// died or a watched file changed.
fn template_thread<A: Application>(
    state: Arc<State<A>>,
    key: String,
    rx: Receiver<Job>,
    info: Arc<Mutex<TemplateInfo>>,
) {
    let mut current: Option<(ServerHandle, Stamps)> = None;
    let set_info = |pid: Option<u32>| {
        let mut i = info.lock().unwrap_or_else(|e| e.into_inner());
        i.pid = pid;
        i.started = pid.map(|_| Instant::now());
    };
    for job in rx {
        if let Some((handle, stamps)) = &mut current {
            let dead = !matches!(handle.try_wait(), Ok(None));
            if dead || changed(stamps) {
                let (handle, _) = current.take().expect("checked");
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
                set_info(None);
            }
        }
        if current.is_none() {
            let watched = stamps(state.app.watched_files(&key));
            let mut template = Template::new(state.app.clone(), key.clone(), state.huge_pages);
            // The template's workers may run for a long time: `stop` must not hurry them.
            let started = Builder::new()
                .stop_timeouts(Duration::from_secs(2), Duration::from_secs(2))
                .start_handle(&mut template);
            drop(template);
            match started {
                Ok(h) => {
                    log(&format!("template {key:?} preloaded (pid {})", h.pid()));
                    set_info(Some(h.pid()));
                    current = Some((h, watched));
                }
                Err(e) => {
                    let text = match &e {
                        Error::Remote(r) => r.message().to_owned(),
                        other => other.to_string(),
                    };
                    log(&format!("template {key:?}: preload failed: {text}"));
                    reply_error(job.conn, "preload", &format!("preload failed: {text}"));
                    continue;
                }
            }
        }
        let (handle, _) = current.as_mut().expect("started above");
        let Job {
            conn,
            cwd,
            argv,
            env,
            stdio,
        } = job;
        let sent = handle.with_channel(|ch| {
            ch.write_array([b"run".as_slice(), &cwd])?;
            ch.write_scalar(&argv)?;
            ch.write_scalar(&env)?;
            ch.send_fd(&conn)?;
            for fd in &stdio {
                ch.send_fd(fd)?;
            }
            let mut buf = crate::MessageBuf::new();
            ch.read_reply(&mut buf).map(drop)
        });
        drop(stdio);
        if let Err(e) = sent {
            log(&format!("template {key:?} failed a request: {e}"));
            reply_error(conn, "template", &format!("the template failed: {e}"));
            // The next job restarts it if it died.
        }
    }
    // The server is stopping.
    if let Some((mut handle, _)) = current {
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
    set_info(None);
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
