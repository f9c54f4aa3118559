//! The seed example: a server whose `hello(first_name, last_name)` replies
//! `"Hello <first> <last>, how are you?"` and the number 1234.
//!
//! ```text
//! cargo run --example hello                 # start the server, call it, print, stop it
//! cargo run --example hello -- --serve-fd 3 # serve on an inherited socket (fd 3)
//! ```
//!
//! With `--serve-fd N` the program serves on socket N, handed over by another program that
//! talks Passenger's MessageChannel: send `["hello", "Joe", "Dalton"]`, read
//! `["ok", "Hello Joe Dalton, how are you?", "1234"]`. A Rust program gets the typed client for
//! it with `fdserver::Spawn::new(command).start()` (`command`: this program with
//! `--serve-fd 3`), or `MyServerClient::from(channel)` over a socket it already has.

use fdserver::Channel;

struct MyServer;

#[fdserver::fdserver]
impl MyServer {
    /// Greets someone, with a pointless number.
    fn hello(&mut self, first_name: &str, last_name: &str) -> (String, u32) {
        (
            format!("Hello {first_name} {last_name}, how are you?"),
            1234,
        )
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, fd] if flag == "--serve-fd" => {
            let fd: i32 = fd
                .parse()
                .map_err(|_| format!("--serve-fd: not a number: {fd}"))?;
            // SAFETY: the descriptor was handed to this process by its parent, and nothing else
            // in this process owns it.
            let channel = unsafe { Channel::from_inherited_fd(fd) }
                .map_err(|e| format!("--serve-fd {fd}: {e}"))?;
            let end = fdserver::serve(&mut MyServer, channel)?;
            std::process::exit(end.exit_code());
        }
        [] => {
            let mut server = MyServer.start()?; // forks; returns the generated MyServerClient
            let (reply, pointless_number) = server.hello("Joe", "Dalton")?;
            println!("{reply}");
            println!("{pointless_number}");
            let stopped = server.stop()?;
            println!("{stopped}");
            Ok(())
        }
        _ => Err("usage: hello [--serve-fd N]".into()),
    }
}
