//! Issue 13, items 3 and 6, for `AsyncServerHandle::call` (the raw async call) and for the
//! deadline of a whole call (review of issue 13, findings 1-3): a dropped raw call leaves its
//! reply pending exactly as a typed call does (the next call, raw or typed, reads and drops it;
//! a pool replaces the server), and a peer that trickles its reply cannot stretch a call past
//! its deadline, async or blocking.
#![cfg(feature = "async")]

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use fdserver::{
    AsyncChannel, AsyncPool, AsyncServerHandle, Builder, Channel, Error, MessageBuf, PoolOptions,
    ServerState,
};
use fdserver_tests::{pipe, wait_pid_gone, watchdog, SECS};

#[derive(Default)]
struct Gate;

#[fdserver::fdserver]
impl Gate {
    fn echo(&self, text: &str) -> String {
        text.to_string()
    }

    /// Blocks until a byte can be read from `fd` (a pipe the test holds), then answers `tag`.
    fn wait_then(&self, fd: i32, tag: &str) -> String {
        let mut b = [0u8];
        // SAFETY: a read of one byte into a local buffer.
        unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
        tag.to_string()
    }

    /// A reply in two frames (`["ok"]`, then a scalar).
    fn blob(&self) -> Vec<u8> {
        b"blob".to_vec()
    }
}

/// Lets the gated handler finish (one byte into the pipe).
fn open_gate(wr: &OwnedFd) {
    fdserver_tests::write_raw(wr.as_raw_fd(), b"x");
}

async fn gated_server(rd: &OwnedFd) -> AsyncServerHandle {
    Builder::new()
        .keep_fd(rd)
        .start_async(&mut Gate)
        .await
        .unwrap()
}

/// Finding 2: raw call dropped while its reply is due; the next raw call gets its own reply.
#[tokio::test(flavor = "current_thread")]
async fn a_dropped_raw_call_leaves_its_reply_to_be_dropped_by_the_next_raw_call() {
    let _wd = watchdog("raw_then_raw", SECS(60));
    let (rd, wr) = pipe();
    let mut h = gated_server(&rd).await;
    let fd = rd.as_raw_fd().to_string();
    let cut = tokio::time::timeout(Duration::ZERO, h.call(["wait_then", &fd, "FIRST"])).await;
    assert!(cut.is_err(), "the call should still be waiting");
    open_gate(&wr);
    assert_eq!(h.call(["echo", "SECOND"]).await.unwrap(), ["SECOND"]);
    assert_eq!(h.call(["echo", "THIRD"]).await.unwrap(), ["THIRD"]);
    h.stop().await.unwrap();
}

/// Finding 2: a raw call dropped, then typed calls; a typed call dropped, then a raw call.
#[tokio::test(flavor = "current_thread")]
async fn raw_and_typed_calls_drop_each_others_abandoned_replies() {
    let _wd = watchdog("raw_typed_mix", SECS(60));
    let (rd, wr) = pipe();
    let mut c = GateAsyncClient::from(gated_server(&rd).await);
    let fd = rd.as_raw_fd().to_string();
    let cut = tokio::time::timeout(
        Duration::ZERO,
        c.handle_mut().call(["wait_then", &fd, "RAW"]),
    )
    .await;
    assert!(cut.is_err());
    open_gate(&wr);
    assert_eq!(c.echo("typed 1").await.unwrap(), "typed 1");
    assert_eq!(c.echo("typed 2").await.unwrap(), "typed 2");
    let cut = tokio::time::timeout(Duration::ZERO, c.wait_then(rd.as_raw_fd(), "TYPED")).await;
    assert!(cut.is_err());
    open_gate(&wr);
    assert_eq!(c.handle_mut().call(["echo", "raw"]).await.unwrap(), ["raw"]);
    assert_eq!(c.echo("typed 3").await.unwrap(), "typed 3");
}

/// Finding 1 (blocker): `AsyncPool<AsyncServerHandle>`, a caller's call dropped; the next
/// caller gets its own reply, from a replaced server.
#[tokio::test(flavor = "current_thread")]
async fn a_raw_pool_never_hands_the_next_caller_an_abandoned_reply() {
    let _wd = watchdog("raw_pool_cancel", SECS(60));
    let (rd, wr) = pipe();
    let pool: AsyncPool<AsyncServerHandle> = AsyncPool::start(
        PoolOptions::new(1).builder(Builder::new().keep_fd(&rd)),
        Gate,
    )
    .await
    .unwrap();
    let first = pool.status()[0].pid.unwrap();
    let fd = rd.as_raw_fd().to_string();
    {
        let mut s = pool.get().await.unwrap();
        let cut = tokio::time::timeout(Duration::ZERO, s.call(["wait_then", &fd, "FIRST"])).await;
        assert!(cut.is_err());
    }
    assert_eq!(pool.status()[0].state, ServerState::Down);
    assert!(pool.status()[0]
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("cancelled")));
    open_gate(&wr);
    let mut s = pool.get().await.unwrap();
    assert_eq!(s.call(["echo", "SECOND"]).await.unwrap(), ["SECOND"]);
    assert_ne!(s.pid(), first);
    drop(s);
    assert!(wait_pid_gone(first, SECS(20)));
}

/// A fake peer that reads one request and writes `frames` one byte every `gap`.
fn dribbling_peer(mut ch: Channel, frames: Vec<u8>, gap: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = MessageBuf::new();
        if !ch.read_into(&mut buf).unwrap_or(false) {
            return;
        }
        let fd = ch.into_fd();
        for b in frames {
            // The dribble itself is what is tested (a peer this slow), not a synchronisation.
            std::thread::sleep(gap);
            // SAFETY: a write of one byte from a local; a failure (the client gave up and
            // closed) ends the peer.
            if unsafe { libc::send(fd.as_raw_fd(), [b].as_ptr().cast(), 1, libc::MSG_NOSIGNAL) }
                != 1
            {
                return;
            }
        }
    })
}

fn ok_frame(values: &[&[u8]]) -> Vec<u8> {
    let mut frame = Vec::new();
    fdserver::wire::encode_array(
        &mut frame,
        std::iter::once(&b"ok"[..]).chain(values.iter().copied()),
    )
    .unwrap();
    frame
}

/// `["ok"]` then the scalar `blob`: a reply of two frames, as `Gate::blob` sends it.
fn blob_frames() -> Vec<u8> {
    let mut frames = ok_frame(&[]);
    frames.extend_from_slice(&fdserver::wire::scalar_header(4).unwrap());
    frames.extend_from_slice(b"blob");
    frames
}

/// Finding 3: the async deadline covers the whole call, not each receive.
#[tokio::test(flavor = "current_thread")]
async fn an_async_call_times_out_however_its_reply_trickles() {
    let _wd = watchdog("async_dribble", SECS(60));
    let (a, b) = Channel::pair().unwrap();
    // 9 bytes over 9 × 60 ms: every receive gets a byte well within 300 ms.
    let peer = dribbling_peer(b, ok_frame(&[b"hey"]), Duration::from_millis(60));
    let mut ch = AsyncChannel::new(a).unwrap();
    ch.set_timeout(Some(Duration::from_millis(300)));
    let mut c = GateAsyncClient::from(ch);
    let e = c.echo("hey").await.unwrap_err();
    assert!(matches!(e, Error::TimedOut { .. }), "{e}");
    assert!(e.to_string().contains("300ms"), "{e}");
    drop(c);
    peer.join().unwrap();
}

/// Finding 3: the same for a raw async call on a started server's handle, with a reply of two
/// frames (each of which would fit in the deadline on its own).
#[tokio::test(flavor = "current_thread")]
async fn a_typed_async_call_of_two_frames_has_one_deadline() {
    let _wd = watchdog("async_dribble_frames", SECS(60));
    let (a, b) = Channel::pair().unwrap();
    // 14 bytes over 14 × 40 ms = 560 ms; ["ok"] alone (6 bytes) takes 240 ms.
    let peer = dribbling_peer(b, blob_frames(), Duration::from_millis(40));
    let mut ch = AsyncChannel::new(a).unwrap();
    ch.set_timeout(Some(Duration::from_millis(400)));
    let mut c = GateAsyncClient::from(ch);
    let e = c.blob().await.unwrap_err();
    assert!(matches!(e, Error::TimedOut { .. }), "{e}");
    drop(c);
    peer.join().unwrap();
}

/// The blocking client, the same peers: one deadline for the whole call too.
#[test]
fn a_blocking_call_times_out_however_its_reply_trickles() {
    let _wd = watchdog("sync_dribble", SECS(60));
    let (a, b) = Channel::pair().unwrap();
    let peer = dribbling_peer(b, ok_frame(&[b"hey"]), Duration::from_millis(60));
    let mut a = a;
    a.set_timeout(Some(Duration::from_millis(300)));
    let mut c = GateClient::from(a);
    let e = c.echo("hey").unwrap_err();
    assert!(matches!(e, Error::TimedOut { .. }), "{e}");
    drop(c);
    peer.join().unwrap();

    let (a, b) = Channel::pair().unwrap();
    let peer = dribbling_peer(b, blob_frames(), Duration::from_millis(40));
    let mut a = a;
    a.set_timeout(Some(Duration::from_millis(400)));
    let mut c = GateClient::from(a);
    let e = c.blob().unwrap_err();
    assert!(matches!(e, Error::TimedOut { .. }), "{e}");
    assert!(e.to_string().contains("400ms"), "{e}");
    drop(c);
    peer.join().unwrap();
}

/// Macro hygiene (finding 8): a user type named `C` as a handler's parameter and return type;
/// the generated clients' type parameter (sync and async) must not capture it.
mod user_type_named_c {
    use std::fmt;
    use std::str::FromStr;

    pub struct C(pub u32);

    impl fmt::Display for C {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{}", self.0)
        }
    }

    impl FromStr for C {
        type Err = std::num::ParseIntError;
        fn from_str(s: &str) -> Result<C, Self::Err> {
            s.parse().map(C)
        }
    }

    fdserver::display_fromstr_arg!(C);

    pub struct Counter;

    #[fdserver::fdserver]
    impl Counter {
        fn next(&mut self, c: C) -> C {
            C(c.0 + 1)
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_user_type_named_c_is_not_captured() {
        let _wd = fdserver_tests::watchdog("user_type_c", fdserver_tests::SECS(60));
        let mut sync = Counter.start().unwrap();
        assert_eq!(sync.next(C(1)).unwrap().0, 2);
        let mut client = Counter.start_async().await.unwrap();
        assert_eq!(client.next(C(2)).await.unwrap().0, 3);
    }
}
