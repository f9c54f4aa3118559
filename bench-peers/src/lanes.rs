//! The rows and the lanes (one implementation of a row: fdserver, a peer, or the raw floor), and
//! the two shapes a lane takes: a helper started once per sample that then answers `k` timed
//! operations (rows 1, 2, 4), or a timed start-call-stop (row 3).
//!
//! **Adding a row** (for example issue 14's typed call with borrowed arguments): add a [`Row`]
//! variant (with its id, title and per-op unit), list it in [`Row::ALL`], and give each lane that
//! can do it a case in [`start_helper`]; a lane without a case prints "—". Tables, samples CSV,
//! counts and charts pick the row up from [`Row::ALL`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{fdside, os, peers, raw};

/// A row of the table: one kind of operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Row {
    /// `hello("Joe", "Dalton")` → `("Hello Joe Dalton, how are you?", 1234)`.
    Call,
    /// A request answered by one descriptor, which the client closes.
    Fd,
    /// Start a helper, one `hello` call, stop it (and reap it).
    Start,
    /// 256 MiB in 64 KiB chunks, then one acknowledgement.
    Bulk,
}

impl Row {
    pub const ALL: [Row; 4] = [Row::Call, Row::Fd, Row::Start, Row::Bulk];

    pub fn id(self) -> &'static str {
        match self {
            Row::Call => "1",
            Row::Fd => "2",
            Row::Start => "3",
            Row::Bulk => "4",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Row::Call => "small request/response",
            Row::Fd => "one descriptor back per round trip",
            Row::Start => "start a helper, one call, stop",
            Row::Bulk => "bulk 256 MiB in 64 KiB chunks",
        }
    }

    pub fn from_id(id: &str) -> Option<Row> {
        Row::ALL.into_iter().find(|r| r.id() == id)
    }

    /// Operations per sample in a full run (quick runs divide by 4).
    pub fn ops_per_sample(self) -> u64 {
        match self {
            Row::Call | Row::Fd => 2000,
            Row::Start => 12,
            Row::Bulk => 1,
        }
    }

    /// Untimed operations on a fresh helper before a sample's timed ones.
    pub fn warmup_ops(self) -> u64 {
        match self {
            Row::Call | Row::Fd => 50,
            Row::Start | Row::Bulk => 1,
        }
    }
}

/// 64 KiB chunks, 4096 of them per bulk operation (256 MiB).
pub const CHUNK: usize = 64 << 10;
pub const BULK_CHUNKS: u64 = 4096;
/// A bulk warm-up transfer, in chunks.
pub const BULK_WARMUP_CHUNKS: u64 = 64;

/// An implementation of the rows.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lane {
    /// fdserver as its users write it: the `#[fdserver]` typed client where the row allows it,
    /// else the raw `Channel` of a hand-written `Server` (row 4, as the compare bench).
    Fdserver,
    /// Rows 1 and 2 of `Fdserver` on a `SOCK_STREAM` pair (`Builder::seqpacket(false)`): the
    /// read-ahead stream channel, which a server whose socket is handed to stream readers uses.
    FdserverStream,
    /// Row 2 through the typed API: the handler returns an owned descriptor (`io::Result<File>`),
    /// so it duplicates its descriptor on every call.
    FdserverTyped,
    /// The raw syscall floor (hand-written libc, forked child).
    Raw,
    /// ipc-channel, helper forked after the channels are made.
    Ipc,
    /// ipc-channel, helper spawned (exec of this binary) and connected through an
    /// `IpcOneShotServer`, as ipc-channel's documentation does it. Row 3 only.
    IpcSpawn,
    /// tarpc 0.38 on a current-thread tokio runtime per process, bincode over a UNIX socket pair,
    /// helper forked.
    Tarpc,
    /// procspawn (spawn a function in a new process, join it). Row 3 only: it has no
    /// persistent-call API.
    Procspawn,
}

impl Lane {
    pub const ALL: [Lane; 8] = [
        Lane::Fdserver,
        Lane::FdserverStream,
        Lane::FdserverTyped,
        Lane::Raw,
        Lane::Ipc,
        Lane::IpcSpawn,
        Lane::Tarpc,
        Lane::Procspawn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Lane::Fdserver => "fdserver",
            Lane::FdserverStream => "fdserver-stream",
            Lane::FdserverTyped => "fdserver-typed-dup",
            Lane::Raw => "raw",
            Lane::Ipc => "ipc-channel",
            Lane::IpcSpawn => "ipc-channel-spawn",
            Lane::Tarpc => "tarpc",
            Lane::Procspawn => "procspawn",
        }
    }

    pub fn from_name(name: &str) -> Option<Lane> {
        Lane::ALL.into_iter().find(|l| l.name() == name)
    }

    /// Whether this lane implements `row`.
    pub fn does(self, row: Row) -> bool {
        matches!(
            (self, row),
            (Lane::Fdserver | Lane::Raw | Lane::Ipc, _)
                | (Lane::FdserverTyped, Row::Fd)
                | (Lane::FdserverStream, Row::Call | Row::Fd)
                | (Lane::IpcSpawn | Lane::Procspawn, Row::Start)
                | (Lane::Tarpc, Row::Call | Row::Start)
        )
    }
}

/// A helper started for one sample of rows 1, 2 and 4.
pub trait Helper {
    /// The helper process (for its placement and counters).
    fn pid(&self) -> i32;
    /// One operation of the row. A `warmup` operation (untimed) also checks the answer, and in
    /// row 4 sends a short transfer ([`BULK_WARMUP_CHUNKS`]).
    fn op(&mut self, warmup: bool);
    /// Stops the helper and reaps it.
    fn stop(self: Box<Self>);
}

/// Starts `lane`'s helper for `row` (rows 1, 2, 4).
pub fn start_helper(row: Row, lane: Lane) -> Box<dyn Helper> {
    match (row, lane) {
        (Row::Call, Lane::Fdserver) => Box::new(fdside::TypedHello::start(true)),
        (Row::Call, Lane::FdserverStream) => Box::new(fdside::TypedHello::start(false)),
        (Row::Fd, Lane::Fdserver) => Box::new(fdside::TypedFd::start(true, true)),
        (Row::Fd, Lane::FdserverStream) => Box::new(fdside::TypedFd::start(true, false)),
        (Row::Fd, Lane::FdserverTyped) => Box::new(fdside::TypedFd::start(false, true)),
        (Row::Bulk, Lane::Fdserver) => Box::new(fdside::Bulk::start()),
        (Row::Call, Lane::Raw) => Box::new(raw::PingPong::start()),
        (Row::Fd, Lane::Raw) => Box::new(raw::FdPass::start()),
        (Row::Bulk, Lane::Raw) => Box::new(raw::Bulk::start()),
        (Row::Call, Lane::Ipc) => Box::new(peers::ipc_lane::Hello::start()),
        (Row::Fd, Lane::Ipc) => Box::new(peers::ipc_lane::FdBack::start()),
        (Row::Bulk, Lane::Ipc) => Box::new(peers::ipc_lane::Bulk::start()),
        (Row::Call, Lane::Tarpc) => Box::new(peers::tarpc_lane::Hello::start()),
        _ => unreachable!("{lane:?} has no helper for row {row:?}"),
    }
}

/// One timed start-call-stop (row 3) and where it ran.
pub struct StartOp {
    /// Time of start + call + stop, without the placement probe in between.
    pub elapsed: Duration,
    /// The helper's CPU at its call and the bench's CPU just after it.
    pub helper_cpu: i32,
    pub client_cpu: i32,
}

static PROBES: AtomicBool = AtomicBool::new(true);

/// Turns the placement probes of row 3 off (`--counts`: their `/proc` reads would be counted as
/// the client's system calls).
pub fn set_probes(on: bool) {
    PROBES.store(on, Ordering::Relaxed);
}

/// Times start + call + stop around a probe of the helper's placement, taken between the call
/// and the stop and left out of the time.
pub struct Stopwatch {
    t0: Instant,
    paused: Duration,
    pub helper_cpu: i32,
    pub client_cpu: i32,
}

impl Stopwatch {
    pub fn start() -> Stopwatch {
        Stopwatch {
            t0: Instant::now(),
            paused: Duration::ZERO,
            helper_cpu: -1,
            client_cpu: -1,
        }
    }

    /// Records where `pid` and the bench run, off the clock (not while counting system calls:
    /// see [`set_probes`]).
    pub fn probe(&mut self, pid: i32) {
        if !PROBES.load(Ordering::Relaxed) {
            return;
        }
        let t = Instant::now();
        self.client_cpu = os::this_cpu();
        self.helper_cpu = os::last_cpu(pid).unwrap_or(-1);
        self.paused += t.elapsed();
    }

    /// Records a placement the helper reported itself (procspawn), off the clock.
    pub fn reported(&mut self, helper_cpu: i32) {
        let t = Instant::now();
        self.client_cpu = os::this_cpu();
        self.helper_cpu = helper_cpu;
        self.paused += t.elapsed();
    }

    pub fn finish(self) -> StartOp {
        StartOp {
            elapsed: self.t0.elapsed() - self.paused,
            helper_cpu: self.helper_cpu,
            client_cpu: self.client_cpu,
        }
    }
}

/// Row 3: one start-call-stop of `lane`. The tarpc lane keeps one runtime per sample, as a
/// program would keep its runtime; pass it in `rt`.
pub fn start_call_stop(lane: Lane, rt: Option<&tokio::runtime::Runtime>) -> StartOp {
    match lane {
        Lane::Fdserver => fdside::start_call_stop(),
        Lane::Raw => raw::start_call_stop(),
        Lane::Ipc => peers::ipc_lane::start_call_stop_forked(),
        Lane::IpcSpawn => peers::ipc_lane::start_call_stop_spawned(),
        Lane::Tarpc => peers::tarpc_lane::start_call_stop(rt.expect("tarpc runtime")),
        Lane::Procspawn => peers::procspawn_lane::start_call_stop(),
        Lane::FdserverTyped | Lane::FdserverStream => unreachable!("no row 3 for {lane:?}"),
    }
}

/// The expected answer of every `hello`.
pub const GREETING: &str = "Hello Joe Dalton, how are you?";
pub const NUMBER: u32 = 1234;

/// Panics unless `(greeting, number)` is the expected answer.
pub fn check_hello(lane: &str, greeting: &str, number: u32) {
    assert!(
        greeting == GREETING && number == NUMBER,
        "{lane}: wrong answer {greeting:?}, {number}"
    );
}
