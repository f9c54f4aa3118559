//! The fork threads: where [`Builder::start`](crate::Builder::start) forks.
//!
//! A forked child is a copy of the thread that called `fork`, thread-locals included. Forked
//! from a tokio worker (or from inside `block_on`, a `spawn_blocking` thread, a rayon pool
//! worker), the server would believe it runs inside its parent's runtime: building a runtime
//! panics ("Cannot start a runtime from within a runtime"), and `Handle::current()` finds a
//! runtime whose threads do not exist in the child. No library can clear another library's
//! thread-locals, so `start` forks from a thread that never entered anything: a thread of
//! fdserver's own, one per server type (named `fdserver <Type>`), started on first use and parked
//! between forks. Its thread-locals are fresh, all its signals are blocked, and it runs nothing
//! but forks. In the child it is the only thread, so the server's loop runs on it: a panic in
//! the server reads `thread 'fdserver MyServer' (4242) panicked at ...`, 4242 being the
//! server's pid (a forked process's only thread has the process's id), and `ps` shows the
//! server as `fdserver MyServ` (the kernel keeps 15 bytes of a thread name).
//!
//! The caller waits for the fork (its job runs on the fork thread while the caller blocks on a
//! condition variable); the parent's side of the fork returns at once. The fork thread takes
//! on the caller's CPU affinity first, so that a server started from a thread pinned to a CPU
//! runs there, as one forked by that thread would (one `sched_getaffinity` per start, and a
//! `sched_setaffinity` when it changes). What it costs per start
//! is two thread wake-ups (BENCHMARKS.md, row 4f).
//!
//! A fork thread inherits the confinement of the thread that created it (the first to start a
//! server of its type): its seccomp filters, Landlock domain, `no_new_privs`, nice value. A
//! thread that confined itself alone (seccomp without `TSYNC`, Landlock's `restrict_self` on
//! one thread) must not get a server forked from a less confined thread: when the caller's
//! `no_new_privs` flag or seccomp mode differs from the fork thread's, `start` forks on the
//! calling thread instead (two `prctl` per start). Differences the kernel does not show (two
//! different filters, two Landlock domains) cannot be seen: confine the whole process before
//! starting servers, or use `Builder::fork_on_calling_thread` (see its docs).
//!
//! One registry per process: a server that starts servers of its own (in the child, where the
//! parent's fork threads do not exist) gets fork threads of its own. The registry is a
//! lock-free list, so that a fork while another thread was looking a thread up cannot leave the
//! child a lock that stays locked.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};
use std::sync::Mutex;
use std::thread::Thread;

use crate::sys;

/// The stack of a fork thread: the server's loop and handlers run on it in the child, so it is
/// as large as a main thread's usual stack (virtual memory: only the pages used are touched).
const STACK: usize = 8 << 20;

/// One fork thread.
struct ForkThread {
    /// The process that owns the thread (a child inherits the list, not the threads).
    pid: u32,
    /// The server type's name, as `std::any::type_name` gives it.
    type_name: &'static str,
    /// Serialises the callers of this thread (one fork at a time per thread).
    turn: Mutex<()>,
    /// The thread, to wake it.
    thread: Thread,
    /// Its confinement ([`sys::thread_confinement`]), inherited from the thread that created it.
    confinement: (i32, i32),
    /// The job in hand (null: none), on its caller's stack.
    job: AtomicPtr<Job>,
    next: *mut ForkThread,
}

// SAFETY: `next` is written once, before the node is published, and never changed; everything
// else is Sync.
unsafe impl Sync for ForkThread {}
// SAFETY: as above.
unsafe impl Send for ForkThread {}

/// A job, on its caller's stack until the caller sees it done.
struct Job {
    run: *mut (dyn FnMut() + 'static),
    /// The caller, to wake it.
    caller: Thread,
    /// `PENDING`, `RETURNED` or `PANICKED`.
    state: AtomicU8,
    /// The caller's CPU affinity, which the fork thread takes on before the job: a child
    /// inherits its forking thread's, and a caller pinned to a CPU expects its server there.
    affinity: Option<libc::cpu_set_t>,
}

const PENDING: u8 = 0;
const RETURNED: u8 = 1;
const PANICKED: u8 = 2;

static THREADS: AtomicPtr<ForkThread> = AtomicPtr::new(ptr::null_mut());

/// Runs `job` on the fork thread of server type `type_name` and waits for it to return:
/// `Ok(true)`. `Ok(false)` without running it when the calling thread is confined otherwise
/// than that fork thread (the caller then forks itself). Fails only if the thread cannot be
/// created.
///
/// The job runs while this thread waits, with every signal blocked, on a thread that never ran
/// anything but such jobs. If it forks, the child continues on that thread. The hand-off is
/// one wake-up each way (`park`/`unpark`: a futex).
pub(crate) fn run_on_fork_thread(
    type_name: &'static str,
    run: &mut (dyn FnMut() + '_),
) -> io::Result<bool> {
    let thread = fork_thread(type_name)?;
    if sys::thread_confinement() != thread.confinement {
        return Ok(false);
    }
    let _turn = thread.turn.lock().unwrap_or_else(|p| p.into_inner());
    let job = Job {
        // SAFETY: the lifetime is erased so that the pointer can be handed to the fork thread;
        // it is dereferenced only until the fork thread reports the job done, and this function
        // does not return before that, so the closure outlives every use.
        run: unsafe {
            std::mem::transmute::<*mut (dyn FnMut() + '_), *mut (dyn FnMut() + 'static)>(run)
        },
        caller: std::thread::current(),
        state: AtomicU8::new(PENDING),
        affinity: sys::thread_affinity(),
    };
    thread
        .job
        .store(&job as *const Job as *mut Job, Ordering::Release);
    thread.thread.unpark();
    let state = loop {
        match job.state.load(Ordering::Acquire) {
            PENDING => std::thread::park(),
            done => break done,
        }
    };
    if state == PANICKED {
        // The job's own panic was printed on the fork thread; the caller gets one too.
        panic!("fdserver: a start job panicked on the fork thread of {type_name}");
    }
    Ok(true)
}

/// The fork thread of `type_name` in this process, started if need be.
fn fork_thread(type_name: &'static str) -> io::Result<&'static ForkThread> {
    let pid = sys::getpid();
    let mut p = THREADS.load(Ordering::Acquire);
    while !p.is_null() {
        // SAFETY: nodes are leaked, never freed: every published pointer stays valid.
        let node = unsafe { &*p };
        if node.pid == pid && node.type_name == type_name {
            return Ok(node);
        }
        p = node.next;
    }
    // Not found: start one. Two threads may race to start the same one; both nodes are
    // published and the first found serves (the other stays parked: a small, bounded leak).
    // The node is published only once its thread runs; the thread finds it through this slot.
    let node_slot: &'static AtomicPtr<ForkThread> =
        Box::leak(Box::new(AtomicPtr::new(ptr::null_mut())));
    // The thread starts with every signal blocked (threads inherit the mask) and keeps them
    // so: it must never be the thread the kernel picks for a signal meant for the process, and
    // a child it forks starts with them all blocked, as the child's path requires.
    let old_mask = sys::set_sigmask(&sys::sigset(true));
    let builder = std::thread::Builder::new()
        .name(format!("fdserver {}", short_type_name(type_name)))
        .stack_size(STACK);
    let spawned = spawn_uncaptured(move || {
        builder
            .spawn(move || serve_jobs(node_slot))
            .map(|handle| handle.thread().clone())
    });
    sys::set_sigmask(&old_mask);
    let thread = spawned?;
    let node_ptr: *mut ForkThread = Box::leak(Box::new(ForkThread {
        pid,
        type_name,
        turn: Mutex::new(()),
        thread,
        // The thread was created from this one (through a pthread of its own, which inherits
        // the same): it has this thread's confinement.
        confinement: sys::thread_confinement(),
        job: AtomicPtr::new(ptr::null_mut()),
        next: ptr::null_mut(),
    }));
    node_slot.store(node_ptr, Ordering::Release);
    // SAFETY: the node is leaked; from here on it is only read through shared references.
    let node: &'static ForkThread = unsafe { &*node_ptr };
    node.thread.unpark();
    let mut head = THREADS.load(Ordering::Acquire);
    loop {
        // SAFETY: not yet published: this thread is its only writer.
        unsafe { (*node_ptr).next = head };
        match THREADS.compare_exchange(head, node_ptr, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Ok(node),
            Err(now) => head = now,
        }
    }
}

/// Runs `spawn` (which starts a std thread) on a short-lived thread that is not a std thread,
/// and returns its result.
///
/// A std thread inherits its creator's *output capture* (the test harness's per-test buffer of
/// `print!` output, a `Mutex` that another thread may hold at a fork): a fork thread created by
/// a test would send its servers' output, panic messages included, to that test's buffer, and a
/// server forked while another thread held its lock would block for good on its first print. A
/// thread started with `pthread_create` has no capture, nor do the threads it starts.
pub(crate) fn spawn_uncaptured<T: Send>(
    spawn: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    struct Job<'a, T> {
        spawn: Option<Box<dyn FnOnce() -> io::Result<T> + Send + 'a>>,
        result: Option<io::Result<T>>,
    }
    extern "C" fn run<T>(arg: *mut libc::c_void) -> *mut libc::c_void {
        // SAFETY: `arg` is the `Job` below, alive until the creator has joined this thread.
        let job = unsafe { &mut *arg.cast::<Job<'_, T>>() };
        let spawn = job.spawn.take().expect("run once");
        job.result = Some(
            catch_unwind(AssertUnwindSafe(spawn))
                .unwrap_or_else(|_| Err(io::Error::other("spawning the fork thread panicked"))),
        );
        ptr::null_mut()
    }
    let mut job = Job {
        spawn: Some(Box::new(spawn)),
        result: None,
    };
    let mut thread = std::mem::MaybeUninit::<libc::pthread_t>::uninit();
    // SAFETY: `run` receives a pointer to `job`, which outlives the thread (joined below before
    // `job` goes out of scope).
    let e = unsafe {
        libc::pthread_create(
            thread.as_mut_ptr(),
            ptr::null(),
            run::<T>,
            (&mut job as *mut Job<'_, T>).cast(),
        )
    };
    if e != 0 {
        return Err(io::Error::from_raw_os_error(e));
    }
    // SAFETY: a joinable thread created above, joined once.
    let e = unsafe { libc::pthread_join(thread.assume_init(), ptr::null_mut()) };
    if e != 0 {
        return Err(io::Error::from_raw_os_error(e));
    }
    job.result
        .unwrap_or_else(|| Err(io::Error::other("the fork thread was not spawned")))
}

/// The fork thread's loop: run each job, report, wait for the next.
fn serve_jobs(node_slot: &'static AtomicPtr<ForkThread>) {
    // The affinity this thread has now (set for the last job), to skip setting it again.
    let mut current: Option<libc::cpu_set_t> = sys::thread_affinity();
    let node = loop {
        let p = node_slot.load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: leaked, never freed.
            break unsafe { &*p };
        }
        std::thread::park();
    };
    loop {
        let job = node.job.swap(ptr::null_mut(), Ordering::Acquire);
        if job.is_null() {
            std::thread::park();
            continue;
        }
        // SAFETY: the caller waits until the job's state changes (see `run_on_fork_thread`).
        let job = unsafe { &*job };
        if let Some(want) = &job.affinity {
            // A set the kernel refuses (CPUs gone offline since) leaves the last one.
            if current
                .as_ref()
                .map_or(true, |have| !cpu_sets_equal(have, want))
                && sys::set_thread_affinity(want)
            {
                current = Some(*want);
            }
        }
        // SAFETY: as above: the closure is alive and used by no one else meanwhile.
        let returned = catch_unwind(AssertUnwindSafe(|| unsafe { (*job.run)() })).is_ok();
        // The caller may return (and the job go) as soon as the state changes: wake it through
        // a handle of our own.
        let caller = job.caller.clone();
        job.state.store(
            if returned { RETURNED } else { PANICKED },
            Ordering::Release,
        );
        caller.unpark();
    }
}

fn cpu_sets_equal(a: &libc::cpu_set_t, b: &libc::cpu_set_t) -> bool {
    // SAFETY: CPU_EQUAL only compares the two sets' bytes.
    unsafe { libc::CPU_EQUAL(a, b) }
}

/// `a::b::Server<c::D>` → `Server<D>`: a type name without its module paths.
pub(crate) fn short_type_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find("::") {
        out.push_str(&rest[..i]);
        // What was just written ends with a module's name: drop it.
        while out.ends_with(|c: char| c.is_alphanumeric() || c == '_') {
            out.pop();
        }
        rest = &rest[i + 2..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::short_type_name;

    #[test]
    fn short_type_names() {
        assert_eq!(short_type_name("MyServer"), "MyServer");
        assert_eq!(short_type_name("a::b::MyServer"), "MyServer");
        assert_eq!(short_type_name("a::Wrap<b::c::D, e::F>"), "Wrap<D, F>");
        assert_eq!(short_type_name("&mut a::B"), "&mut B");
    }
}
