//! The fdserver lanes. Rows 1, 2 and 3 use `#[fdserver]` servers and their typed clients, as
//! users write them: [`HelloServer`], and [`FdTypedServer`], whose handler lends the descriptor
//! it keeps (`BorrowedFd<'_>`; lane `fdserver-typed-dup` returns an owned duplicate instead, a
//! `dup` per call). Row 4 uses the raw `Channel` of the hand-written [`BenchServer`] (the compare
//! bench's server): the typed API has no way to stream scalars in one request.

use std::fmt::Write as _;
use std::fs::File;
use std::hint::black_box;
use std::os::fd::{AsFd, BorrowedFd};

use fdserver::{Context, Message, MessageBuf, RemoteError, Server, ServerHandle};

use crate::lanes::{
    check_hello, Helper, StartOp, Stopwatch, BULK_CHUNKS, BULK_WARMUP_CHUNKS, CHUNK, GREETING,
    NUMBER,
};
use crate::os::{self, Heap};

/// Rows 1 and 3: the seed's example server.
pub struct HelloServer;

#[fdserver::fdserver]
impl HelloServer {
    fn hello(&mut self, first_name: &str, last_name: &str) -> (String, u32) {
        (
            format!("Hello {first_name} {last_name}, how are you?"),
            NUMBER,
        )
    }

    #[fdserver(initialize)]
    fn init(&mut self) {
        os::die_with_parent();
    }
}

/// Row 1's helper.
pub struct TypedHello(HelloServerClient);

impl TypedHello {
    /// `seqpacket`: the default pair; else a stream one (lane `fdserver-stream`).
    pub fn start(seqpacket: bool) -> TypedHello {
        TypedHello(
            fdserver::Builder::new()
                .seqpacket(seqpacket)
                .start(&mut HelloServer)
                .expect("start fdserver server"),
        )
    }
}

impl Helper for TypedHello {
    fn pid(&self) -> i32 {
        self.0.pid() as i32
    }

    #[inline(never)]
    fn op(&mut self, warmup: bool) {
        let (greeting, number) = self.0.hello("Joe", "Dalton").expect("hello");
        if warmup {
            check_hello("fdserver", &greeting, number);
        }
        black_box((greeting, number));
    }

    fn stop(self: Box<Self>) {
        let stopped = self.0.stop().expect("stop");
        assert!(stopped.status.success(), "server exit: {stopped}");
    }
}

/// Row 3: start, first call answered, stop returning (graceful, exit 0).
pub fn start_call_stop() -> StartOp {
    let mut w = Stopwatch::start();
    let mut client = HelloServer.start().expect("start fdserver server");
    let (greeting, number) = client.hello("Joe", "Dalton").expect("hello");
    w.probe(client.pid() as i32);
    check_hello("fdserver", &greeting, number);
    let stopped = client.stop().expect("stop");
    assert!(stopped.status.success(), "server exit: {stopped}");
    w.finish()
}

/// The start-vs-heap chart: the same server, whose value holds a touched heap.
pub struct HeapHelloServer {
    pub heap: Heap,
}

#[fdserver::fdserver]
impl HeapHelloServer {
    fn hello(&mut self, first_name: &str, last_name: &str) -> (String, u32) {
        (
            format!("Hello {first_name} {last_name}, how are you?"),
            NUMBER,
        )
    }

    #[fdserver(initialize)]
    fn init(&mut self) {
        os::die_with_parent();
    }
}

/// Start + first call + stop of a server holding `server.heap`.
pub fn heap_start_call_stop(server: &mut HeapHelloServer) {
    let mut client = server.start().expect("start fdserver server");
    let (greeting, number) = client.hello("Joe", "Dalton").expect("hello");
    debug_assert_eq!((greeting.as_str(), number), (GREETING, NUMBER));
    black_box((greeting, number));
    let stopped = client.stop().expect("stop");
    assert!(stopped.status.success(), "server exit: {stopped}");
}

/// Row 4: the hand-written server. Its buffers are allocated before the fork.
pub struct BenchServer {
    greeting: String,
    sink: Vec<u8>,
}

impl BenchServer {
    fn new() -> Self {
        BenchServer {
            greeting: String::with_capacity(128),
            sink: Vec::with_capacity(CHUNK),
        }
    }
}

impl Server for BenchServer {
    type Client = ServerHandle;

    fn initialize_server(&mut self) -> Result<(), fdserver::BoxError> {
        os::die_with_parent();
        Ok(())
    }

    fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
        match msg.name() {
            b"hello" if msg.len() == 3 => {
                self.greeting.clear();
                let _ = write!(
                    self.greeting,
                    "Hello {} {}, how are you?",
                    msg.str(1)?,
                    msg.str(2)?
                );
                ctx.reply([self.greeting.as_str(), "1234"])?;
            }
            // Row 4: ["sink", n] + n scalars → ["ok"]
            b"sink" => {
                let n: u64 = msg
                    .str(1)?
                    .parse()
                    .map_err(|e| RemoteError::bad_arguments(format!("sink count: {e}")))?;
                for _ in 0..n {
                    if !ctx.channel().read_scalar_into(&mut self.sink)? {
                        return Err(RemoteError::failed("end of stream inside sink"));
                    }
                }
                ctx.reply([""; 0])?;
            }
            other => return Err(RemoteError::unknown_message(other)),
        }
        Ok(())
    }
}

fn start_bench_server() -> ServerHandle {
    BenchServer::new().start().expect("start fdserver server")
}

fn stop_handle(handle: ServerHandle) {
    let stopped = handle.stop().expect("stop");
    assert!(stopped.status.success(), "server exit: {stopped}");
}

/// Row 2: a typed call answered by one descriptor the server keeps; the client receives it
/// and closes it.
pub struct FdTypedServer {
    devnull: Option<File>,
}

#[fdserver::fdserver]
impl FdTypedServer {
    /// Lane `fdserver`: lends the descriptor it keeps.
    fn fd_kept(&self) -> BorrowedFd<'_> {
        self.devnull.as_ref().expect("opened in init").as_fd()
    }

    /// Lane `fdserver-typed-dup`: returns an owned duplicate (a `dup` per call).
    fn fd(&mut self) -> std::io::Result<File> {
        self.devnull.as_ref().expect("opened in init").try_clone()
    }

    #[fdserver(initialize)]
    fn init(&mut self) -> std::io::Result<()> {
        os::die_with_parent();
        self.devnull = Some(File::options().read(true).write(true).open("/dev/null")?);
        Ok(())
    }
}

/// Lanes `fdserver` (`kept`) and `fdserver-typed-dup`.
pub struct TypedFd {
    client: FdTypedServerClient,
    kept: bool,
}

impl TypedFd {
    /// `seqpacket`: the default pair; else a stream one (lane `fdserver-stream`).
    pub fn start(kept: bool, seqpacket: bool) -> TypedFd {
        TypedFd {
            client: fdserver::Builder::new()
                .seqpacket(seqpacket)
                .start(&mut FdTypedServer { devnull: None })
                .expect("start fdserver server"),
            kept,
        }
    }
}

impl Helper for TypedFd {
    fn pid(&self) -> i32 {
        self.client.pid() as i32
    }

    #[inline(never)]
    fn op(&mut self, _warmup: bool) {
        if self.kept {
            drop(black_box(self.client.fd_kept().expect("fd")));
        } else {
            drop(black_box(self.client.fd().expect("fd")));
        }
    }

    fn stop(self: Box<Self>) {
        let stopped = self.client.stop().expect("stop");
        assert!(stopped.status.success(), "server exit: {stopped}");
    }
}

/// Row 4: `["sink", n]`, `n` scalars of 64 KiB, then the server's `["ok"]`.
pub struct Bulk {
    handle: ServerHandle,
    buf: MessageBuf,
    chunk: Vec<u8>,
}

impl Bulk {
    pub fn start() -> Bulk {
        Bulk {
            handle: start_bench_server(),
            buf: MessageBuf::new(),
            chunk: vec![0x5a; CHUNK],
        }
    }
}

impl Helper for Bulk {
    fn pid(&self) -> i32 {
        self.handle.pid() as i32
    }

    #[inline(never)]
    fn op(&mut self, warmup: bool) {
        let n = if warmup {
            BULK_WARMUP_CHUNKS
        } else {
            BULK_CHUNKS
        };
        let ch = self.handle.channel();
        let count = n.to_string();
        ch.write_array(["sink", count.as_str()])
            .expect("sink request");
        for _ in 0..n {
            ch.write_scalar(&self.chunk).expect("write_scalar");
        }
        ch.read_reply(&mut self.buf).expect("sink reply");
    }

    fn stop(self: Box<Self>) {
        stop_handle(self.handle);
    }
}
