//! Support shared by the integration tests: a watchdog so that a hung test fails instead of
//! stalling CI, and probes for descriptors and zombies.

use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Aborts the whole test process (failing the run, with a message naming the test) if it is
/// still alive after `limit`. Dropping the returned guard disarms it.
///
/// Every test that forks takes one: `let _wd = fdserver_tests::watchdog("name", SECS(30));`.
/// Aborting also closes every socket this process holds, so its servers see end of stream and
/// exit: nothing is orphaned.
pub fn watchdog(name: &str, limit: Duration) -> Watchdog {
    let state = Arc::new((Mutex::new(false), Condvar::new()));
    let s2 = Arc::clone(&state);
    let name = name.to_owned();
    let thread = std::thread::spawn(move || {
        let (lock, cv) = &*s2;
        let done = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (done, timeout) = cv
            .wait_timeout_while(done, limit, |done| !*done)
            .unwrap_or_else(|e| e.into_inner());
        if !*done && timeout.timed_out() {
            eprintln!("WATCHDOG: test `{name}` still running after {limit:?}: aborting");
            std::process::abort();
        }
    });
    Watchdog {
        state,
        thread: Some(thread),
    }
}

/// Guard returned by [`watchdog`].
pub struct Watchdog {
    state: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let (lock, cv) = &*self.state;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Shorthand for `Duration::from_secs`.
#[allow(non_snake_case)]
pub fn SECS(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The descriptors open in this process, sorted (the directory handle used to list them is
/// left out).
pub fn open_fds() -> Vec<RawFd> {
    let dir = std::fs::read_dir("/proc/self/fd").expect("read /proc/self/fd");
    let mut fds: Vec<RawFd> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd_is_open(fd))
        .collect();
    // The ReadDir's own descriptor was listed but is closed by now: fd_is_open filtered it.
    fds.sort_unstable();
    fds
}

fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Whether `pid` is a zombie (exited, not reaped).
pub fn is_zombie(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether a process with this pid exists (zombie or not).
pub fn process_exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` is a child of this process that is still unreaped (`waitpid` would find it).
pub fn is_unreaped_child(pid: u32) -> bool {
    // SAFETY: an all-zero siginfo_t is a valid out-value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: WNOHANG|WNOWAIT only peeks at the child's state; `info` is a valid out-pointer.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    r == 0
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises tests that count this process's descriptors or children. Put such tests in a test
/// binary of their own where every test takes this lock, so nothing else opens descriptors
/// concurrently.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
