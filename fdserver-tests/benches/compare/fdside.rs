//! The fdserver side of the bench: one hand-written server answering every row's message, and
//! the client operations timed against the raw baselines.
//!
//! Rows 1 and 1t use the `#[fdserver]` server [`HelloServer`] and its generated typed client
//! (`client.hello("Joe", "Dalton")`); the other rows use the hand-written [`BenchServer`], whose
//! handlers need the raw channel (a reply followed by a descriptor it keeps, scalars read in a
//! loop).

use std::fmt::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use fdserver::{Builder, Context, Message, MessageBuf, RemoteError, Server, ServerHandle};

use crate::count_alloc::{allocs, fmt_u64};

/// The server. Its buffers are allocated before the fork, so that in steady state a handler
/// allocates nothing itself: every allocation the server reports is the runtime's.
pub struct BenchServer {
    greeting: String,
    devnull: Option<OwnedFd>,
    sink: Vec<u8>,
}

impl BenchServer {
    pub fn new(chunk: usize) -> Self {
        BenchServer {
            greeting: String::with_capacity(128),
            devnull: None,
            sink: Vec::with_capacity(chunk),
        }
    }
}

impl Server for BenchServer {
    type Client = ServerHandle;

    fn initialize_server(&mut self) -> Result<(), fdserver::BoxError> {
        crate::os::die_with_parent();
        Ok(())
    }

    fn handle(&mut self, ctx: &mut Context<'_>, msg: Message<'_>) -> Result<(), RemoteError> {
        match msg.name() {
            // Row 1: ["hello", first, last] → ["ok", "Hello <first> <last>, how are you?", "1234"]
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
                if self.devnull.is_none() {
                    // Opened on first use, so that rows 4 and 6 do not pay for it.
                    let file = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open("/dev/null")?;
                    self.devnull = Some(file.into());
                }
                let fd = self.devnull.as_ref().expect("opened above");
                ctx.channel().write_ok_with_fd([""; 0], fd.as_fd())?;
            }
            // Row 3: ["sink", n] + n scalars → ["ok"]
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
            // Allocation probe: this process's allocation count, formatted without allocating.
            b"allocs" => {
                let mut digits = [0u8; 20];
                ctx.reply([fmt_u64(allocs(), &mut digits)])?;
            }
            other => return Err(RemoteError::unknown_message(other)),
        }
        Ok(())
    }
}

/// Forks a server with the default options (no deadlines: the bench's watchdog guards against
/// hangs, because a deadline costs syscalls, see row 1t), or with a per-read/write client
/// `deadline` (row 1t).
pub fn start(server: &mut BenchServer, deadline: Option<Duration>) -> ServerHandle {
    match deadline {
        None => server.start().expect("start fdserver server"),
        Some(d) => Builder::new()
            .timeout(Some(d))
            .start(server)
            .expect("start fdserver server"),
    }
}

/// Row 1's server, written with the macro: the call is the typed stub `client.hello(..)`.
pub struct HelloServer;

#[fdserver::fdserver]
impl HelloServer {
    /// The seed's example handler (borrowed arguments: only the greeting is allocated).
    fn hello(&mut self, first_name: &str, last_name: &str) -> (String, u32) {
        (
            format!("Hello {first_name} {last_name}, how are you?"),
            1234,
        )
    }

    /// This process's allocation count (the probe for the allocation report).
    fn allocs(&self) -> u64 {
        allocs()
    }

    #[fdserver(initialize)]
    fn init(&mut self) -> std::io::Result<()> {
        crate::os::die_with_parent();
        Ok(())
    }
}

/// Starts [`HelloServer`], optionally with a per-read/write client deadline (row 1t).
pub fn start_hello(deadline: Option<Duration>) -> HelloServerClient {
    match deadline {
        None => HelloServer.start().expect("start hello server"),
        Some(d) => Builder::new()
            .timeout(Some(d))
            .start(&mut HelloServer)
            .expect("start hello server"),
    }
}

/// Row 1: the typed call, as users write it.
#[inline(never)]
pub fn typed_hello_call(client: &mut HelloServerClient) -> (String, u32) {
    client.hello("Joe", "Dalton").expect("hello")
}

/// The typed server's allocation count.
pub fn typed_server_allocs(client: &mut HelloServerClient) -> u64 {
    client.allocs().expect("allocs")
}

/// The untyped client of [`BenchServer`].
pub type HelloClient = ServerHandle;

/// The same call on the hand-written server through the untyped `call` (rows 4 and 6, traces).
#[inline(never)]
pub fn hello_call(client: &mut HelloClient) -> (String, u32) {
    let mut reply = client.call(["hello", "Joe", "Dalton"]).expect("hello");
    assert_eq!(reply.len(), 2, "hello reply arity");
    let number = reply[1].parse().expect("hello number");
    (reply.swap_remove(0), number)
}

/// Row 2: a call whose reply carries one descriptor (closed when dropped).
#[inline(never)]
pub fn fd_call(client: &mut ServerHandle, buf: &mut MessageBuf) -> OwnedFd {
    let ch = client.channel();
    ch.write_array(["fd"]).expect("fd request");
    ch.read_reply_with_fd(buf).expect("fd reply").1
}

/// Row 3: `n` scalars of `chunk` to the server, then its acknowledgement.
#[inline(never)]
pub fn bulk(client: &mut ServerHandle, buf: &mut MessageBuf, chunk: &[u8], n: u64) {
    let ch = client.channel();
    let mut digits = [0u8; 20];
    ch.write_array([&b"sink"[..], fmt_u64(n, &mut digits)])
        .expect("sink request");
    for _ in 0..n {
        ch.write_scalar(chunk).expect("write_scalar");
    }
    ch.read_reply(buf).expect("sink reply");
}

/// Row 4 / 6: start, first call answered, stop returning.
#[inline(never)]
pub fn start_call_stop(server: &mut BenchServer) {
    let mut client = start(server, None);
    let (greeting, _) = hello_call(&mut client);
    debug_assert_eq!(greeting, "Hello Joe Dalton, how are you?");
    let stopped = client.stop().expect("stop");
    assert!(stopped.status.success(), "server exit: {stopped}");
}

/// Row 7: `start_call_stop` with these options (a sandbox), instead of the defaults.
pub fn start_call_stop_with(server: &mut BenchServer, builder: Builder) {
    let mut client = builder.start(server).expect("start fdserver server");
    let (greeting, _) = hello_call(&mut client);
    debug_assert_eq!(greeting, "Hello Joe Dalton, how are you?");
    let stopped = client.stop().expect("stop");
    assert!(stopped.status.success(), "server exit: {stopped}");
}

/// The server's allocation count so far.
pub fn server_allocs(client: &mut ServerHandle) -> u64 {
    let reply = client.call(["allocs"]).expect("allocs");
    reply[0].parse().expect("allocs number")
}

/// Row 4e: a server *program* started with `fdserver::Spawn` (exec), first call, stop.
#[inline(never)]
pub fn spawn_call_stop() {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_typed-server"));
    command.args(["--serve-fd", "3"]);
    let mut client: fdserver_tests::greeter::GreeterClient = fdserver::Spawn::new(command)
        .start()
        .expect("spawn typed-server");
    let (greeting, _) = client.hello("Joe", "Dalton").expect("hello");
    debug_assert_eq!(greeting, "Hello Joe Dalton, how are you?");
    let stopped = client.stop().expect("stop");
    assert!(stopped.status.success(), "server exit: {stopped}");
}

/// Row 4e's baseline: the same typed server forked (`start`), first call, stop.
#[inline(never)]
pub fn fork_typed_call_stop() {
    let mut client = fdserver_tests::greeter::Greeter::default()
        .start()
        .expect("start greeter");
    let (greeting, _) = client.hello("Joe", "Dalton").expect("hello");
    debug_assert_eq!(greeting, "Hello Joe Dalton, how are you?");
    let stopped = client.stop().expect("stop");
    assert!(stopped.status.success(), "server exit: {stopped}");
}

/// How many descriptors this process has open (what a server it forks inherits).
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1))
}
