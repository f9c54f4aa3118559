//! The fdserver lanes. Rows 1 and 3 use the `#[fdserver]` server [`HelloServer`] and its typed
//! client, as users write it. Rows 2 and 4 use the raw `Channel` of the hand-written
//! [`BenchServer`] (the compare bench's server), because the typed API has no way to send a
//! descriptor the server keeps (a handler returns an owned one: [`FdTypedServer`], lane
//! `fdserver-typed-dup`) nor to stream scalars in one request.

use std::fmt::Write as _;
use std::fs::File;
use std::hint::black_box;
use std::os::fd::{AsFd, OwnedFd};

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
    fn hello(&mut self, first_name: String, last_name: String) -> (String, u32) {
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
    pub fn start() -> TypedHello {
        TypedHello(HelloServer.start().expect("start fdserver server"))
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
    fn hello(&mut self, first_name: String, last_name: String) -> (String, u32) {
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

/// Rows 2 and 4: the hand-written server. Its buffers are allocated before the fork.
pub struct BenchServer {
    greeting: String,
    devnull: Option<OwnedFd>,
    sink: Vec<u8>,
}

impl BenchServer {
    fn new() -> Self {
        BenchServer {
            greeting: String::with_capacity(128),
            devnull: None,
            sink: Vec::with_capacity(CHUNK),
        }
    }
}

impl Server for BenchServer {
    type Client = ServerHandle;

    fn initialize_server(&mut self) -> Result<(), fdserver::BoxError> {
        os::die_with_parent();
        let file = File::options().read(true).write(true).open("/dev/null")?;
        self.devnull = Some(file.into());
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
            // Row 2: ["fd"] → ["ok"] + one descriptor
            b"fd" => {
                let fd = self.devnull.as_ref().expect("opened in initialize_server");
                ctx.channel().write_ok_with_fd([""; 0], fd.as_fd())?;
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

/// Row 2: `["fd"]` answered by `["ok"]` + one descriptor, received and closed.
pub struct FdCall {
    handle: ServerHandle,
    buf: MessageBuf,
}

impl FdCall {
    pub fn start() -> FdCall {
        FdCall {
            handle: start_bench_server(),
            buf: MessageBuf::new(),
        }
    }
}

impl Helper for FdCall {
    fn pid(&self) -> i32 {
        self.handle.pid() as i32
    }

    #[inline(never)]
    fn op(&mut self, _warmup: bool) {
        let ch = self.handle.channel();
        ch.write_array(["fd"]).expect("fd request");
        let fd = ch.read_reply_with_fd(&mut self.buf).expect("fd reply").1;
        drop(black_box(fd));
    }

    fn stop(self: Box<Self>) {
        stop_handle(self.handle);
    }
}

/// Row 2 through the typed API: the handler can only return an owned descriptor, so it
/// duplicates the one it keeps.
pub struct FdTypedServer {
    devnull: Option<File>,
}

#[fdserver::fdserver]
impl FdTypedServer {
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

/// Lane `fdserver-typed-dup`.
pub struct TypedFd(FdTypedServerClient);

impl TypedFd {
    pub fn start() -> TypedFd {
        TypedFd(
            FdTypedServer { devnull: None }
                .start()
                .expect("start fdserver server"),
        )
    }
}

impl Helper for TypedFd {
    fn pid(&self) -> i32 {
        self.0.pid() as i32
    }

    #[inline(never)]
    fn op(&mut self, _warmup: bool) {
        drop(black_box(self.0.fd().expect("fd")));
    }

    fn stop(self: Box<Self>) {
        let stopped = self.0.stop().expect("stop");
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
