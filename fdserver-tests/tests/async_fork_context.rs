//! Issue 13, item 1: `start` works from any context: a tokio worker thread (multi-thread and
//! current-thread runtimes), inside `block_on`, `spawn_blocking`, a plain thread pool; the server
//! starts with no runtime context of its parent's and builds and uses runtimes of its own, in
//! its `initialize` hook and in its handlers.

use std::time::Duration;

use fdserver_tests::{watchdog, SECS};

/// A server that builds tokio runtimes in the child: one in `initialize` (kept, used by
/// `in_init_runtime`), and a fresh one per `fresh_runtime` call.
#[derive(Default)]
struct RuntimeUser {
    runtime: Option<tokio::runtime::Runtime>,
}

#[fdserver::fdserver]
impl RuntimeUser {
    #[fdserver(initialize)]
    fn init(&mut self) -> std::io::Result<()> {
        // A runtime whose worker threads run in the server.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        self.runtime = Some(rt);
        Ok(())
    }

    /// Whether the handler's thread is inside a runtime (it must not be: the parent's context
    /// does not follow the fork).
    fn in_runtime(&self) -> bool {
        tokio::runtime::Handle::try_current().is_ok()
    }

    /// Runs a task on the runtime built in `initialize`: a timer and a spawned task.
    fn in_init_runtime(&mut self, n: u64) -> u64 {
        let rt = self.runtime.as_ref().expect("built in initialize");
        rt.block_on(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            tokio::spawn(async move { n * 2 }).await.unwrap()
        })
    }

    /// Builds a current-thread runtime in the handler and uses it.
    fn fresh_runtime(&mut self, n: u64) -> u64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            tokio::task::yield_now().await;
            n + 1
        })
    }
}

/// Starts a server, checks every runtime property, stops it.
fn exercise() {
    let mut s = RuntimeUser::default().start().expect("start");
    assert!(
        !s.in_runtime().expect("in_runtime"),
        "the server inherited a runtime context"
    );
    assert_eq!(s.in_init_runtime(21).expect("in_init_runtime"), 42);
    assert_eq!(s.fresh_runtime(41).expect("fresh_runtime"), 42);
    let stopped = s.stop().expect("stop");
    assert!(stopped.status.success(), "{stopped}");
}

#[test]
fn start_from_a_multi_thread_runtime_worker() {
    let _wd = watchdog("start_from_multi_thread_worker", SECS(60));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // On a worker thread, not on the thread that called block_on.
        tokio::spawn(async { exercise() }).await.unwrap();
    });
}

#[test]
fn start_from_a_current_thread_runtime() {
    let _wd = watchdog("start_from_current_thread", SECS(60));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async { exercise() });
}

#[test]
fn start_inside_block_on() {
    let _wd = watchdog("start_inside_block_on", SECS(60));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Directly in the future given to block_on (the thread that called it).
        exercise();
    });
}

#[test]
fn start_from_spawn_blocking() {
    let _wd = watchdog("start_from_spawn_blocking", SECS(60));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        tokio::task::spawn_blocking(exercise).await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_tokio_test_multi_thread() {
    let _wd = watchdog("start_from_tokio_test_multi_thread", SECS(60));
    exercise();
}

#[tokio::test]
async fn start_from_tokio_test_current_thread() {
    let _wd = watchdog("start_from_tokio_test_current_thread", SECS(60));
    exercise();
}

/// A pool of plain threads that each start servers, in parallel, from short-lived threads
/// (the threads end before their servers are used).
#[test]
fn start_from_a_thread_pool() {
    let _wd = watchdog("start_from_thread_pool", SECS(60));
    let clients: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(|| RuntimeUser::default().start().expect("start")))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    // The threads that started them are gone: the servers live on and serve.
    for mut s in clients {
        assert!(!s.in_runtime().unwrap());
        assert_eq!(s.fresh_runtime(1).unwrap(), 2);
        assert!(s.stop().unwrap().status.success());
    }
}

/// The server value is moved off the calling thread's stack before the server creates threads:
/// glibc hands the stacks of a forked process's missing threads (the caller's among them) to
/// the next threads it creates, which would overwrite a value left there.
#[derive(Clone)]
struct StackValue {
    pattern: [u64; 512],
}

#[fdserver::fdserver]
impl StackValue {
    #[fdserver(initialize)]
    fn init(&mut self) {
        // Threads whose stacks are the size of the caller's (std's default) and which write all
        // over them: the likely users of the caller's reclaimed stack.
        let threads: Vec<_> = (0..8)
            .map(|i| {
                std::thread::spawn(move || {
                    let mut junk = [0u8; 256 * 1024];
                    for (j, b) in junk.iter_mut().enumerate() {
                        *b = (i + j) as u8;
                    }
                    std::hint::black_box(&junk);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    /// Whether the value still holds the pattern it was started with.
    fn intact(&self) -> bool {
        self.pattern
            .iter()
            .enumerate()
            .all(|(i, &v)| v == pattern_word(i))
    }
}

fn pattern_word(i: usize) -> u64 {
    0x5a5a_0000_0000_0000 | i as u64
}

#[test]
fn the_server_value_survives_the_servers_threads() {
    let _wd = watchdog("server_value_survives_threads", SECS(60));
    for _ in 0..4 {
        // Started from short-lived threads, with the value on their stacks.
        let mut s = std::thread::spawn(|| {
            let mut value = StackValue {
                pattern: std::array::from_fn(pattern_word),
            };
            value.start().expect("start")
        })
        .join()
        .unwrap();
        assert!(
            s.intact().expect("intact"),
            "the server value was overwritten"
        );
        s.stop().unwrap();
    }
}

/// Descriptor numbers of channels the parent holds both ends of.
struct Channels {
    nonblocking: (i32, i32),
    blocking: (i32, i32),
}

#[fdserver::fdserver]
impl Channels {
    /// Sends a byte through the non-blocking pair and reads it back, in the server; then tries
    /// the blocking pair. Returns what each step saw.
    fn probe(&mut self) -> (String, String) {
        let (a, b) = self.nonblocking;
        let private = match (write_byte(a), read_byte(b)) {
            (Ok(()), Ok(Some(x))) => format!("got {}", x as char),
            (w, r) => format!("write {w:?}, read {r:?}"),
        };
        let tombstoned = match write_byte(self.blocking.0) {
            Err(e) if e.raw_os_error() == Some(libc::EBADF) => "EBADF".to_string(),
            other => format!("{other:?}"),
        };
        (private, tombstoned)
    }
}

fn write_byte(fd: i32) -> std::io::Result<()> {
    // SAFETY: a write of one byte from a local buffer.
    match unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) } {
        1 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// One byte, or `None` if nothing is there (the descriptor is non-blocking).
fn read_byte(fd: i32) -> std::io::Result<Option<u8>> {
    let mut b = [0u8];
    // SAFETY: a read of one byte into a local buffer.
    match unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) } {
        1 => Ok(Some(b[0])),
        _ => {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::WouldBlock {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// An event loop's wake-up channel (a non-blocking socket pair whose both ends the parent
/// holds, like tokio's signal self-pipe) is private to the server and works there; the parent's
/// copy sees nothing of it. A blocking pair is an ordinary inherited descriptor: a tombstone.
#[test]
fn a_wake_up_channel_of_the_parent_is_private_to_the_server() {
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    let _wd = watchdog("wake_up_channel_private", SECS(60));
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let (c, d) = UnixStream::pair().unwrap();
    let mut s = Channels {
        nonblocking: (a.as_raw_fd(), b.as_raw_fd()),
        blocking: (c.as_raw_fd(), d.as_raw_fd()),
    }
    .start()
    .unwrap();
    let (private, tombstoned) = s.probe().unwrap();
    assert_eq!(private, "got x");
    assert_eq!(tombstoned, "EBADF");
    // Nothing the server wrote reached the parent's pair.
    assert_eq!(read_byte(b.as_raw_fd()).unwrap(), None);
    s.stop().unwrap();
}

/// `Builder::fork_on_calling_thread(true)` does what it says: the server is a copy of the
/// calling thread, its runtime context included (what every start did before the fork thread).
#[test]
fn fork_on_calling_thread_copies_the_callers_runtime_context() {
    let _wd = watchdog("fork_on_calling_thread", SECS(60));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut s: RuntimeUserClient = fdserver::Builder::new()
            .fork_on_calling_thread(true)
            .start(&mut RuntimeUser::default())
            .expect("start");
        assert!(
            s.in_runtime().unwrap(),
            "the caller's context should have been copied"
        );
        s.stop().unwrap();
    });
}
