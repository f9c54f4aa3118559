//! tarpc 0.38 on tokio: a `#[tarpc::service]`, bincode over a length-delimited UNIX socket pair,
//! the server forked (it builds its own current-thread runtime in the child; a runtime cannot
//! cross a fork) and the client on a current-thread runtime kept for the whole sample, as a
//! program keeps its runtime. The client's dispatch task is spawned and awaited on stop, so the
//! helper sees end of stream and exits.

use std::hint::black_box;
use std::os::unix::net::UnixStream;

use ::tarpc::client::{self, NewClient, RpcError};
use ::tarpc::context;
use ::tarpc::serde_transport;
use ::tarpc::server::{BaseChannel, Channel};
use ::tarpc::tokio_serde::formats::Bincode;
use futures::StreamExt;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;
use tokio_util::codec::LengthDelimitedCodec;

use super::{reap, run_child};
use crate::lanes::{check_hello, Helper, StartOp, Stopwatch, NUMBER};
use crate::os;

#[::tarpc::service]
pub trait World {
    async fn hello(first_name: String, last_name: String) -> (String, u32);
}

#[derive(Clone)]
struct HelloService;

impl World for HelloService {
    async fn hello(
        self,
        _: context::Context,
        first_name: String,
        last_name: String,
    ) -> (String, u32) {
        (
            format!("Hello {first_name} {last_name}, how are you?"),
            NUMBER,
        )
    }
}

/// A current-thread runtime (no threads of its own, so the bench stays single-threaded).
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Makes a socket pair and forks the helper on one end (a runtime of its own serving it until
/// end of stream); returns its pid and the other end.
fn fork_server() -> (i32, UnixStream) {
    let (mine, sock) = UnixStream::pair().expect("socketpair");
    let pid = os::fork();
    if pid == 0 {
        drop(mine);
        run_child(move || {
            let rt = runtime();
            rt.block_on(async move {
                sock.set_nonblocking(true).expect("nonblocking");
                let stream = tokio::net::UnixStream::from_std(sock).expect("tokio stream");
                let framed = LengthDelimitedCodec::builder().new_framed(stream);
                let transport = serde_transport::new(framed, Bincode::default());
                BaseChannel::with_defaults(transport)
                    .execute(HelloService.serve())
                    .for_each(|response| async move {
                        tokio::spawn(response);
                    })
                    .await;
            });
            0
        });
    }
    (pid, mine)
}

type Dispatch = JoinHandle<()>;

/// Connects a client to `sock`; call inside the runtime.
async fn connect(sock: UnixStream) -> (WorldClient, Dispatch) {
    sock.set_nonblocking(true).expect("nonblocking");
    let stream = tokio::net::UnixStream::from_std(sock).expect("tokio stream");
    let framed = LengthDelimitedCodec::builder().new_framed(stream);
    let transport = serde_transport::new(framed, Bincode::default());
    let NewClient { client, dispatch } = WorldClient::new(client::Config::default(), transport);
    let dispatch = tokio::spawn(async move {
        let _ = dispatch.await;
    });
    (client, dispatch)
}

async fn call(client: &WorldClient) -> Result<(String, u32), RpcError> {
    client
        .hello(context::current(), "Joe".to_owned(), "Dalton".to_owned())
        .await
}

/// Row 1.
pub struct Hello {
    pid: i32,
    rt: Runtime,
    client: WorldClient,
    dispatch: Dispatch,
}

impl Hello {
    pub fn start() -> Hello {
        let (pid, mine) = fork_server();
        let rt = runtime();
        let (client, dispatch) = rt.block_on(connect(mine));
        Hello {
            pid,
            rt,
            client,
            dispatch,
        }
    }
}

impl Helper for Hello {
    fn pid(&self) -> i32 {
        self.pid
    }

    #[inline(never)]
    fn op(&mut self, warmup: bool) {
        let (greeting, number) = self.rt.block_on(call(&self.client)).expect("tarpc hello");
        if warmup {
            check_hello("tarpc", &greeting, number);
        }
        black_box((greeting, number));
    }

    fn stop(self: Box<Self>) {
        let Hello {
            pid,
            rt,
            client,
            dispatch,
        } = *self;
        drop(client);
        rt.block_on(dispatch).expect("tarpc dispatch");
        drop(rt);
        reap(pid, "tarpc");
    }
}

/// Row 3: fork the helper, connect, one call, close (the dispatch task ends), reap.
pub fn start_call_stop(rt: &Runtime) -> StartOp {
    let mut w = Stopwatch::start();
    let (pid, mine) = fork_server();
    let (client, dispatch, answer) = rt.block_on(async move {
        let (client, dispatch) = connect(mine).await;
        let answer = call(&client).await;
        (client, dispatch, answer)
    });
    w.probe(pid);
    let (greeting, number) = answer.expect("tarpc hello");
    check_hello("tarpc", &greeting, number);
    drop(client);
    rt.block_on(dispatch).expect("tarpc dispatch");
    reap(pid, "tarpc");
    w.finish()
}
