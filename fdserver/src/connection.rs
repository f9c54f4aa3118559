//! [`Connection`]: what a generated client talks through, a forked or spawned server's
//! [`ServerHandle`] or any [`Channel`].

use crate::channel::Channel;
use crate::client::ServerHandle;
use crate::error::Error;

/// What the typed client of an `#[fdserver]` server talks through: `MyServerClient<C>` works
/// over any `C: Connection`. [`ServerHandle`] (the default, for servers fdserver started) adds
/// the process (`pid`, `stop`, `signal`); a bare [`Channel`] drives any peer that speaks the
/// protocol: a server another program started, one run with [`serve`](crate::serve) on an
/// inherited socket, a Ruby or C++ program.
///
/// ```
/// use fdserver::Channel;
///
/// struct Greeter;
///
/// #[fdserver::fdserver]
/// impl Greeter {
///     fn hello(&mut self, name: &str) -> String {
///         format!("Hello {name}")
///     }
/// }
///
/// // A server on a thread of this process, the client on the other end of a socket pair.
/// let (client_end, server_end) = Channel::pair()?;
/// let server = std::thread::spawn(move || fdserver::serve(&mut Greeter, server_end));
/// let mut client = GreeterClient::from(client_end); // GreeterClient<Channel>
/// assert_eq!(client.hello("Joe")?, "Hello Joe");
/// drop(client); // end of stream: the loop ends
/// server.join().unwrap()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Connection {
    /// The channel.
    fn channel(&mut self) -> &mut Channel;

    /// Runs one call's channel operations. A call that times out leaves its reply in flight,
    /// so the channel must then be marked broken (the next call would read that reply as its
    /// own); [`ServerHandle`] also turns a dead server into [`Error::ServerExited`].
    fn with_channel<R>(
        &mut self,
        f: impl FnOnce(&mut Channel) -> Result<R, Error>,
    ) -> Result<R, Error>;

    /// The peer's process id, where known (for `tracing` spans).
    #[doc(hidden)]
    fn __pid(&self) -> Option<u32> {
        None
    }
}

impl Connection for ServerHandle {
    fn channel(&mut self) -> &mut Channel {
        ServerHandle::channel(self)
    }

    fn with_channel<R>(
        &mut self,
        f: impl FnOnce(&mut Channel) -> Result<R, Error>,
    ) -> Result<R, Error> {
        ServerHandle::with_channel(self, f)
    }

    fn __pid(&self) -> Option<u32> {
        Some(self.pid())
    }
}

impl Connection for Channel {
    fn channel(&mut self) -> &mut Channel {
        self
    }

    fn with_channel<R>(
        &mut self,
        f: impl FnOnce(&mut Channel) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let r = f(self);
        if matches!(r, Err(Error::TimedOut { .. })) {
            self.mark_broken();
        }
        r
    }
}
