//! Fork safety (issue 2, "Fork safety"): servers started while 8 other threads of the parent
//! allocate and print all start, serve and shut down cleanly. A lock held by another thread at
//! the moment of `fork` stays held forever in the child, so any lock on the runtime's own path in
//! the child shows up here as a server that hangs at exit and has to be killed.
//!
//! Servers are started with the plain `Builder::start_handle` (no test-side workaround). This
//! binary holds a single test, so the test harness does not print (and hold the stdout lock)
//! while it runs. The same test with threads holding the real stdout/stderr locks is in
//! `runtime_stdio.rs`.

use std::time::Duration;

use fdserver::{Builder, Shutdown};
use fdserver_tests::{watchdog, BusyThreads, Probe, SECS};

#[test]
fn servers_start_and_stop_cleanly_while_other_threads_allocate_and_print() {
    let _wd = watchdog("fork_safety", SECS(60));
    let busy = BusyThreads::start(8, false);
    for i in 0..200 {
        let mut s = Builder::new()
            .stop_timeouts(SECS(5), Duration::from_millis(200))
            .start_handle(&mut Probe::default())
            .unwrap_or_else(|e| panic!("start {i}: {e}"));
        let n = i.to_string();
        assert_eq!(s.call(["echo", &n]).unwrap(), [n]);
        let st = s.stop().unwrap();
        assert_eq!(st.how, Shutdown::Graceful, "server {i}: {st}");
        assert_eq!(st.status.code(), Some(0), "server {i}: {st}");
    }
    assert!(busy.work() > 0, "the busy threads ran");
}
