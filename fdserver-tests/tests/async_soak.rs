//! Issue 13's soak: 100,000 async calls (in the normal suite, so CI runs it) with this
//! process's and the server's memory and descriptors flat. In a test binary of its own, every
//! test holding `serial()`: they count this process's descriptors.
#![cfg(feature = "async")]

use fdserver_tests::{open_fds, serial, watchdog, SECS};

/// The resident memory of this process, KiB.
fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `calls` async calls on one server (every 1,000th with a 64 KiB scalar both ways), after a
/// warm-up: this process's memory and descriptors, and the server's, stay flat.
async fn many_async_calls(calls: u64) {
    let mut s = WorkerAsyncClientHolder::start().await;
    let payload = vec![5u8; 64 << 10];
    for i in 0..2_000u64 {
        s.call(i, &payload).await;
    }
    let (fds0, rss0) = (open_fds(), rss_kib());
    let server = s.pid();
    let (sfds0, srss0) = (server_fds(server), server_rss(server));
    for i in 0..calls {
        s.call(i, &payload).await;
    }
    let (fds1, rss1) = (open_fds(), rss_kib());
    let (sfds1, srss1) = (server_fds(server), server_rss(server));
    eprintln!(
        "async calls: {calls}: client RSS {rss0} -> {rss1} KiB, fds {} -> {}; server RSS \
         {srss0} -> {srss1} KiB, fds {sfds0} -> {sfds1}",
        fds0.len(),
        fds1.len()
    );
    assert_eq!(fds1, fds0, "descriptors leaked in the client");
    assert_eq!(sfds1, sfds0, "descriptors leaked in the server");
    assert!(rss1 <= rss0 + 1024, "client RSS {rss0} -> {rss1} KiB");
    assert!(srss1 <= srss0 + 1024, "server RSS {srss0} -> {srss1} KiB");
    s.stop().await;
}

fn server_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn server_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

struct Echo;

#[fdserver::fdserver]
impl Echo {
    fn tag(&self, tag: u64) -> u64 {
        tag
    }

    fn echo_bytes(&self, data: &[u8]) -> Vec<u8> {
        data.to_vec()
    }
}

struct WorkerAsyncClientHolder(EchoAsyncClient);

impl WorkerAsyncClientHolder {
    async fn start() -> Self {
        WorkerAsyncClientHolder(Echo.start_async().await.unwrap())
    }

    fn pid(&self) -> u32 {
        self.0.pid()
    }

    async fn call(&mut self, i: u64, payload: &[u8]) {
        if i % 1000 == 999 {
            assert_eq!(
                self.0.echo_bytes(payload).await.unwrap().len(),
                payload.len()
            );
        } else {
            assert_eq!(self.0.tag(i).await.unwrap(), i);
        }
    }

    async fn stop(self) {
        self.0.stop().await.unwrap();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The acceptance soak at its full size (100,000 calls, about 5 s in a debug build): part of
/// the normal suite, so CI runs it.
#[test]
fn hundred_thousand_async_calls_flat() {
    let _s = serial();
    let _wd = watchdog("async_calls_flat", SECS(300));
    runtime().block_on(many_async_calls(100_000));
}
