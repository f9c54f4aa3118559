//! ipc-channel 0.23: typed channels (`IpcSender`/`IpcReceiver`, bincode over `SOCK_SEQPACKET`
//! socket pairs). The helper is forked after the channels are made (rows 1-4), or spawned by
//! exec of this binary and connected through an `IpcOneShotServer` as ipc-channel's
//! documentation does it (row 3's `ipc-channel-spawn`).
//!
//! Row 2's descriptor is an `IpcSender<()>` the helper keeps and sends a clone of (ipc-channel
//! moves channel descriptors with `SCM_RIGHTS` and has no API for other descriptors); the client
//! drops (closes) it, as the raw floor closes its `/dev/null`.

use std::hint::black_box;
use std::process::Command;

use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer};
use ipc_channel::ipc::{IpcReceiver, IpcSender};

use super::{reap, run_child};
use crate::lanes::{
    check_hello, Helper, StartOp, Stopwatch, BULK_CHUNKS, BULK_WARMUP_CHUNKS, CHUNK, NUMBER,
};
use crate::os;

type Request = (String, String);
type Reply = (String, u32);

/// The environment variable that makes this binary an `ipc-channel-spawn` helper.
pub const SPAWN_VAR: &str = "FDSERVER_BENCH_IPC_CHILD";

fn answer(first: &str, last: &str) -> Reply {
    (format!("Hello {first} {last}, how are you?"), NUMBER)
}

/// The helper's loop: answer every request until the client's sender is gone.
fn serve_hello(rx: &IpcReceiver<Request>, tx: &IpcSender<Reply>) -> i32 {
    while let Ok((first, last)) = rx.recv() {
        if tx.send(answer(&first, &last)).is_err() {
            return 1;
        }
    }
    0
}

fn call(tx: &IpcSender<Request>, rx: &IpcReceiver<Reply>) -> Reply {
    tx.send(("Joe".to_owned(), "Dalton".to_owned()))
        .expect("ipc send");
    rx.recv().expect("ipc recv")
}

/// Row 1.
pub struct Hello {
    pid: i32,
    tx: IpcSender<Request>,
    rx: IpcReceiver<Reply>,
}

impl Hello {
    pub fn start() -> Hello {
        let (tx, child_rx) = ipc::channel::<Request>().expect("ipc channel");
        let (child_tx, rx) = ipc::channel::<Reply>().expect("ipc channel");
        let pid = os::fork();
        if pid == 0 {
            drop((tx, rx));
            run_child(|| serve_hello(&child_rx, &child_tx));
        }
        Hello { pid, tx, rx }
    }
}

impl Helper for Hello {
    fn pid(&self) -> i32 {
        self.pid
    }

    #[inline(never)]
    fn op(&mut self, warmup: bool) {
        let (greeting, number) = call(&self.tx, &self.rx);
        if warmup {
            check_hello("ipc-channel", &greeting, number);
        }
        black_box((greeting, number));
    }

    fn stop(self: Box<Self>) {
        let Hello { pid, tx, rx } = *self;
        drop((tx, rx));
        reap(pid, "ipc-channel");
    }
}

/// Row 2.
pub struct FdBack {
    pid: i32,
    tx: IpcSender<()>,
    rx: IpcReceiver<IpcSender<()>>,
}

impl FdBack {
    pub fn start() -> FdBack {
        let (tx, child_rx) = ipc::channel::<()>().expect("ipc channel");
        let (child_tx, rx) = ipc::channel::<IpcSender<()>>().expect("ipc channel");
        let pid = os::fork();
        if pid == 0 {
            drop((tx, rx));
            run_child(|| {
                let Ok((keep, _keep_rx)) = ipc::channel::<()>() else {
                    return 2;
                };
                while child_rx.recv().is_ok() {
                    if child_tx.send(keep.clone()).is_err() {
                        return 1;
                    }
                }
                0
            });
        }
        FdBack { pid, tx, rx }
    }
}

impl Helper for FdBack {
    fn pid(&self) -> i32 {
        self.pid
    }

    #[inline(never)]
    fn op(&mut self, _warmup: bool) {
        self.tx.send(()).expect("ipc send");
        let fd = self.rx.recv().expect("ipc recv");
        drop(black_box(fd));
    }

    fn stop(self: Box<Self>) {
        let FdBack { pid, tx, rx } = *self;
        drop((tx, rx));
        reap(pid, "ipc-channel");
    }
}

/// Row 4: the count on a typed channel, the chunks on a bytes channel, an acknowledgement back.
pub struct Bulk {
    pid: i32,
    count: IpcSender<u64>,
    data: IpcBytesSender,
    ack: IpcReceiver<()>,
    chunk: Vec<u8>,
}

impl Bulk {
    pub fn start() -> Bulk {
        let (count, count_rx) = ipc::channel::<u64>().expect("ipc channel");
        let (data, data_rx): (IpcBytesSender, IpcBytesReceiver) =
            ipc::bytes_channel().expect("ipc bytes channel");
        let (ack_tx, ack) = ipc::channel::<()>().expect("ipc channel");
        let pid = os::fork();
        if pid == 0 {
            drop((count, data, ack));
            run_child(|| {
                while let Ok(n) = count_rx.recv() {
                    for _ in 0..n {
                        if data_rx.recv().is_err() {
                            return 1;
                        }
                    }
                    if ack_tx.send(()).is_err() {
                        return 1;
                    }
                }
                0
            });
        }
        Bulk {
            pid,
            count,
            data,
            ack,
            chunk: vec![0x5a; CHUNK],
        }
    }
}

impl Helper for Bulk {
    fn pid(&self) -> i32 {
        self.pid
    }

    #[inline(never)]
    fn op(&mut self, warmup: bool) {
        let n = if warmup {
            BULK_WARMUP_CHUNKS
        } else {
            BULK_CHUNKS
        };
        self.count.send(n).expect("ipc send count");
        for _ in 0..n {
            self.data.send(&self.chunk).expect("ipc send chunk");
        }
        self.ack.recv().expect("ipc ack");
    }

    fn stop(self: Box<Self>) {
        let Bulk {
            pid,
            count,
            data,
            ack,
            ..
        } = *self;
        drop((count, data, ack));
        reap(pid, "ipc-channel");
    }
}

/// Row 3, helper forked: channels, fork, one call, close, reap.
pub fn start_call_stop_forked() -> StartOp {
    let mut w = Stopwatch::start();
    let (tx, child_rx) = ipc::channel::<Request>().expect("ipc channel");
    let (child_tx, rx) = ipc::channel::<Reply>().expect("ipc channel");
    let pid = os::fork();
    if pid == 0 {
        drop((tx, rx));
        run_child(|| serve_hello(&child_rx, &child_tx));
    }
    drop((child_rx, child_tx));
    let (greeting, number) = call(&tx, &rx);
    w.probe(pid);
    check_hello("ipc-channel", &greeting, number);
    drop((tx, rx));
    reap(pid, "ipc-channel");
    w.finish()
}

type Boot = (IpcSender<Request>, IpcReceiver<Reply>);

/// Row 3, helper spawned: a one-shot server, exec of this binary, the helper connects and sends
/// its channels, one call, close, wait.
pub fn start_call_stop_spawned() -> StartOp {
    let mut w = Stopwatch::start();
    let (server, name) = IpcOneShotServer::<Boot>::new().expect("ipc one-shot server");
    let mut child = Command::new("/proc/self/exe")
        .env(SPAWN_VAR, name)
        .spawn()
        .expect("spawn the ipc-channel helper");
    let (_, (tx, rx)) = server.accept().expect("ipc accept");
    let (greeting, number) = call(&tx, &rx);
    w.probe(child.id() as i32);
    check_hello("ipc-channel-spawn", &greeting, number);
    drop((tx, rx));
    let status = child.wait().expect("wait for the ipc-channel helper");
    assert!(status.success(), "ipc-channel-spawn helper: {status}");
    w.finish()
}

/// `main` of a spawned helper (this binary with [`SPAWN_VAR`] set): connect, send the channels,
/// answer until the client is gone.
pub fn spawned_main(name: String) -> ! {
    let code = (|| {
        let boot = IpcSender::<Boot>::connect(name).ok()?;
        let (tx, child_rx) = ipc::channel::<Request>().ok()?;
        let (child_tx, rx) = ipc::channel::<Reply>().ok()?;
        boot.send((tx, rx)).ok()?;
        drop(boot);
        Some(serve_hello(&child_rx, &child_tx))
    })()
    .unwrap_or(2);
    std::process::exit(code)
}
