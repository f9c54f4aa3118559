//! Issue 13, items 2 and 4: the async client (fdserver's `tokio` feature): typed async calls
//! with the handlers' own signatures, readiness through the runtime, async start and stop.
#![cfg(feature = "async")]

use std::io::{Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use fdserver::{AsyncChannel, CallError, Error, Shutdown};
use fdserver_tests::{watchdog, SECS};

#[derive(Debug, fdserver::WireError)]
enum BankError {
    InsufficientFunds { available: u64 },
}

impl std::fmt::Display for BankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

#[derive(Default)]
struct Everything {
    balance: u64,
}

#[fdserver::fdserver]
impl Everything {
    fn hello(&mut self, first_name: &str, last_name: &str) -> (String, u32) {
        (
            format!("Hello {first_name} {last_name}, how are you?"),
            1234,
        )
    }

    /// Bytes in, bytes out (scalars both ways).
    fn reverse(&mut self, data: &[u8]) -> Vec<u8> {
        data.iter().rev().copied().collect()
    }

    /// A descriptor in (written to), a descriptor out (a new pipe's read end).
    fn echo_through_pipe(&mut self, log: std::fs::File, text: &str) -> std::io::Result<OwnedFd> {
        let mut log = log;
        log.write_all(text.as_bytes())?;
        let (r, w) = fdserver_tests::pipe();
        std::fs::File::from(w).write_all(text.as_bytes())?;
        Ok(r)
    }

    /// A reply over 64 KiB (travels as a scalar).
    fn big(&mut self, n: usize) -> String {
        "x".repeat(n)
    }

    #[fdserver(typed_errors)]
    fn withdraw(&mut self, amount: u64) -> Result<u64, BankError> {
        if amount > self.balance {
            return Err(BankError::InsufficientFunds {
                available: self.balance,
            });
        }
        self.balance -= amount;
        Ok(self.balance)
    }

    fn fail(&self) -> Result<(), String> {
        Err("no luck".into())
    }

    fn pid_of(&self, ctx: &mut fdserver::Context<'_>) -> u32 {
        ctx.pid()
    }

    /// Sleeps (the handler's own work taking time) then answers.
    fn slow(&self, millis: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(millis));
        millis
    }

    fn exit(&self, code: i32) {
        std::process::exit(code)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_async_calls_have_the_handlers_signatures() {
    let _wd = watchdog("async_typed_calls", SECS(60));
    let mut s = Everything { balance: 100 }.start_async().await.unwrap();
    assert_eq!(
        s.hello("Joe", "Dalton").await.unwrap(),
        ("Hello Joe Dalton, how are you?".to_string(), 1234)
    );
    assert_eq!(s.reverse(b"abc").await.unwrap(), b"cba");
    let mut log = tempfile();
    let fd = s
        .echo_through_pipe(log.try_clone().unwrap(), "piped")
        .await
        .unwrap();
    let mut back = String::new();
    std::fs::File::from(fd).read_to_string(&mut back).unwrap();
    assert_eq!(back, "piped");
    log.rewind().unwrap();
    let mut logged = String::new();
    log.read_to_string(&mut logged).unwrap();
    assert_eq!(logged, "piped");
    assert_eq!(s.big(200_000).await.unwrap().len(), 200_000);
    assert_eq!(s.withdraw(30).await.unwrap(), 70);
    assert!(matches!(
        s.withdraw(500).await,
        Err(CallError::Handler(BankError::InsufficientFunds {
            available: 70
        }))
    ));
    let e = s.fail().await.unwrap_err();
    assert_eq!(e.to_string(), "server error: failed: no luck");
    assert!(!e.needs_restart());
    assert_eq!(s.hello("still", "serving").await.unwrap().1, 1234);
    let stopped = s.stop().await.unwrap();
    assert_eq!(stopped.how, Shutdown::Graceful);
}

fn tempfile() -> std::fs::File {
    let path = std::env::temp_dir().join(format!("fdserver-async-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}

#[tokio::test(flavor = "current_thread")]
async fn a_dead_server_is_server_exited_and_needs_a_restart() {
    let _wd = watchdog("async_dead_server", SECS(60));
    let mut s = Everything::default().start_async().await.unwrap();
    let e = s.exit(7).await.unwrap_err();
    assert!(
        matches!(&e, Error::ServerExited(st) if st.code() == Some(7)),
        "{e:?}"
    );
    assert!(e.needs_restart());
    let stopped = s.stop().await.unwrap();
    assert_eq!(stopped.how, Shutdown::AlreadyExited);
}

#[tokio::test(flavor = "current_thread")]
async fn the_async_client_drives_any_peer_on_an_async_channel() {
    let _wd = watchdog("async_any_peer", SECS(60));
    let (client_end, server_end) = fdserver::Channel::pair().unwrap();
    let server =
        std::thread::spawn(move || fdserver::serve(&mut Everything::default(), server_end));
    let mut client = EverythingAsyncClient::from(AsyncChannel::new(client_end).unwrap());
    assert_eq!(client.hello("Any", "Peer").await.unwrap().1, 1234);
    assert_eq!(client.reverse(b"xy").await.unwrap(), b"yx");
    drop(client);
    server.join().unwrap().unwrap();
}

/// A call that takes long does not block the runtime: other tasks (and a timer) run
/// meanwhile, on a current-thread runtime.
#[tokio::test(flavor = "current_thread")]
async fn a_slow_call_does_not_block_the_runtime() {
    let _wd = watchdog("async_not_blocking", SECS(60));
    let mut s = Everything::default().start_async().await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let ticker = tokio::spawn(async move {
        // Runs while the call below is outstanding (a blocked thread would stall it).
        tokio::task::yield_now().await;
        let _ = tx.send(());
    });
    {
        let call = s.slow(300);
        tokio::pin!(call);
        tokio::select! {
            _ = rx => {}
            r = &mut call => panic!("the call finished before the other task ran: {r:?}"),
        }
        assert_eq!(call.await.unwrap(), 300);
    }
    ticker.await.unwrap();
    s.stop().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn raw_async_channel_round_trip() {
    let _wd = watchdog("async_raw_channel", SECS(60));
    let (mut a, mut b) = AsyncChannel::pair().unwrap();
    a.write_array(["x", "y"]).await.unwrap();
    let file = tempfile();
    a.send_fd(file.as_fd()).await.unwrap();
    a.write_scalar(&[7u8; 100_000]).await.unwrap();
    let mut buf = fdserver::MessageBuf::new();
    assert!(b.read_array(&mut buf).await.unwrap());
    assert_eq!(buf.message().to_strings().unwrap(), ["x", "y"]);
    assert!(b.recv_fd().await.unwrap().is_some());
    assert_eq!(b.read_scalar().await.unwrap().unwrap().len(), 100_000);
    drop(a);
    assert!(!b.read_array(&mut buf).await.unwrap());
}

/// Review F5 (issue 14, item 5), async: a result larger than the client's scalar limit arrives
/// (typed, `ok_scalar` body and a `Vec<u8>` scalar, and through the raw handle's `call`), and
/// the channel stays in step. Before the fix it failed with `ScalarTooLarge` after the handler
/// ran, and broke the channel.
#[tokio::test(flavor = "current_thread")]
async fn an_async_result_over_the_clients_scalar_limit_arrives() {
    let _wd = watchdog("async_result_over_the_limit", SECS(60));
    let mut s = Everything::default().start_async().await.unwrap();
    s.channel().set_max_scalar_size(1000);
    assert_eq!(s.big(200_000).await.unwrap().len(), 200_000);
    assert_eq!(s.reverse(&[7; 999]).await.unwrap().len(), 999);
    let data: Vec<u8> = (0..=255).cycle().take(5000).collect();
    // The argument is 5000 bytes for the server (whose limit is the default), the result 5000
    // for this client.
    let back = s.reverse(&data).await.unwrap();
    assert_eq!(back.len(), 5000);
    assert_eq!(back[0], data[4999]);
    let reply = s.handle_mut().call(["big", "100000"]).await.unwrap();
    assert_eq!(reply[0].len(), 100_000);
    assert_eq!(s.channel().max_scalar_size(), 1000);
    assert_eq!(s.hello("still", "serving").await.unwrap().1, 1234);
    assert_eq!(s.stop().await.unwrap().how, Shutdown::Graceful);
}
