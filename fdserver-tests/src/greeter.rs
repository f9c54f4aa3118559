//! A typed server shared by the tests, the bench and the `typed-server` program (which serves it
//! on an inherited socket, for `fdserver::Spawn`): the seed's `hello`, plus a few handlers that
//! exercise borrowed parameters, lists, large replies and errors.

use std::io;
use std::path::Path;

/// The server. `calls` counts the calls it answered.
#[derive(Debug, Default)]
pub struct Greeter {
    calls: u64,
}

#[fdserver::fdserver]
impl Greeter {
    /// The seed's example: two borrowed strings in, a greeting and a pointless number out.
    pub fn hello(&mut self, first_name: &str, last_name: &str) -> (String, u32) {
        self.calls += 1;
        (
            format!("Hello {first_name} {last_name}, how are you?"),
            1234,
        )
    }

    /// How many calls this server answered, and its process id (message `status`; the method
    /// name `status` belongs to the generated pools).
    #[fdserver(name = "status")]
    pub fn stats(&self, ctx: &mut fdserver::Context<'_>) -> (u64, u32) {
        (self.calls, ctx.pid())
    }

    /// A reply of `n` bytes (`n` times `c`): past 64 KiB it travels as a scalar.
    pub fn big(&mut self, c: char, n: usize) -> String {
        c.to_string().repeat(n)
    }

    /// Reads a file's metadata: the error side is an `io::Error` (message `size`).
    #[fdserver(name = "size")]
    pub fn file_size(&mut self, path: &Path) -> io::Result<u64> {
        Ok(std::fs::metadata(path)?.len())
    }

    /// The descriptors open in the server (a list).
    pub fn fds(&self) -> Vec<i32> {
        crate::open_fds()
    }

    /// Never returns, whatever signal the loop catches (SIGTERM only sets a flag): a server
    /// stuck in a handler.
    pub fn hang(&mut self) {
        loop {
            std::thread::park();
        }
    }

    /// Exits the server process with `code` (without replying).
    pub fn exit(&mut self, code: i32) {
        std::process::exit(code)
    }
}
