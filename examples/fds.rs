//! File descriptors both ways, and a signal handler, with `#[fdserver]`.
//!
//! ```text
//! cargo run --example fds
//! ```
//!
//! * `open_log` returns a `File` the **server** opened: the client writes into it.
//! * `write_line` takes a descriptor the **client** owns (one end of a socket pair) and writes
//!   into it from the server.
//! * `SIGHUP` runs `reopen` on the server loop, with `&mut self`, between messages; it reports on
//!   a socket handed over earlier, so the example knows when it ran without sleeping.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use fdserver::Signal;

struct Logger {
    dir: PathBuf,
    events: Option<UnixStream>,
    reopened: u32,
}

#[fdserver::fdserver]
impl Logger {
    /// Creates `name` in the server's log directory and hands the open file to the client.
    fn open_log(&mut self, name: String) -> io::Result<File> {
        File::create(self.dir.join(name))
    }

    /// Writes a line into a descriptor the client passes in.
    fn write_line(&mut self, mut out: UnixStream, text: String) -> io::Result<()> {
        writeln!(out, "{text} (written by server pid {})", std::process::id())
    }

    /// Where the server reports events.
    fn subscribe(&mut self, events: UnixStream) {
        self.events = Some(events);
    }

    /// How many times the logs were reopened.
    fn reopened(&self) -> u32 {
        self.reopened
    }

    /// The classic use of SIGHUP: reopen log files.
    #[fdserver(signal = "SIGHUP")]
    fn reopen(&mut self) {
        self.reopened += 1;
        if let Some(events) = &mut self.events {
            let _ = writeln!(events, "reopened logs (#{})", self.reopened);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("fdserver-fds-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut server = Logger {
        dir: dir.clone(),
        events: None,
        reopened: 0,
    }
    .start()?;
    println!("server pid {}", server.pid());

    // Server -> client: a file the server opened.
    let mut log = server.open_log("app.log")?;
    writeln!(log, "written by the client (pid {})", std::process::id())?;
    drop(log);

    // Client -> server: one end of a socket pair; the server writes, we read.
    let (mine, theirs) = UnixStream::pair()?;
    server.write_line(&theirs, "hello through a passed descriptor")?;
    let mut line = String::new();
    BufReader::new(&mine).read_line(&mut line)?;
    print!("{line}");

    // A signal, handled on the server loop; the handler tells us when it ran.
    let (events, server_end) = UnixStream::pair()?;
    server.subscribe(server_end)?;
    server.signal(Signal::SIGHUP)?;
    let mut events = BufReader::new(events);
    let mut line = String::new();
    events.read_line(&mut line)?;
    print!("{line}");
    println!("reopened() = {}", server.reopened()?);

    let stopped = server.stop()?;
    println!("{stopped}");
    print!("app.log: {}", std::fs::read_to_string(dir.join("app.log"))?);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
