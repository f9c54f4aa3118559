//! Issue 13, item 8: the `Send`/`Sync` table of the crate docs ("Threads and async") holds:
//! every claim there is a compile-time assertion here.

struct Probe;

#[fdserver::fdserver]
impl Probe {
    fn ping(&self) {}
}

fn send_sync<T: Send + Sync>() {}

#[test]
fn clients_pools_and_errors_are_send_and_sync() {
    send_sync::<fdserver::ServerHandle>();
    send_sync::<ProbeClient>();
    send_sync::<ProbeClient<fdserver::Channel>>();
    send_sync::<fdserver::Channel>();
    send_sync::<fdserver::Pool<ProbeClient>>();
    send_sync::<ProbePool>();
    send_sync::<fdserver::Pooled<ProbeClient>>();
    send_sync::<fdserver::Builder>();
    send_sync::<fdserver::PoolOptions>();
    send_sync::<fdserver::Error>();
    send_sync::<fdserver::CallError<String>>();
}

#[cfg(feature = "async")]
#[test]
fn async_clients_and_pools_are_send_and_sync() {
    send_sync::<fdserver::AsyncServerHandle>();
    send_sync::<fdserver::AsyncChannel>();
    send_sync::<ProbeAsyncClient>();
    send_sync::<ProbeAsyncClient<fdserver::AsyncChannel>>();
    send_sync::<fdserver::AsyncPool<ProbeAsyncClient>>();
    send_sync::<ProbeAsyncPool>();
    send_sync::<fdserver::AsyncPooled<ProbeAsyncClient>>();
}

/// The futures of the async API can be spawned on a multi-thread runtime: `Send`, and those of
/// `start_async` `'static` too (they do not borrow the server value).
#[cfg(feature = "async")]
#[allow(dead_code)]
fn futures_are_send(client: &mut ProbeAsyncClient, pool: &ProbeAsyncPool) {
    fn send<T: Send>(_: &T) {}
    fn send_static<T: Send + 'static>(_: &T) {}
    send(&client.ping());
    send(&pool.ping());
    send_static(&Probe.start_async());
    send(&fdserver::AsyncPool::get(pool));
}
