//! Typed servers for the Ruby MessageChannel peer (`tests/ruby/`, run by
//! `runtime_interop::ruby_message_channel_drives_hello_and_typed_servers`), served on an
//! inherited socket: `ruby-peer --serve-fd N [--max-scalar BYTES] [bank]`.
//!
//! `Peer` covers every value form a peer meets on the wire: elements, scalars (arguments and
//! results), lists, descriptors both ways, large results (`["ok_scalar"]`), io and string
//! errors, `Json<T>` with the `serde` feature. `bank` serves `Bank`, whose errors are a
//! `#[derive(WireError)]` enum.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::Path;

use fdserver::Channel;

struct Peer;

#[cfg(feature = "serde")]
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum Shape {
    Circle { r: f64 },
    Rect(u32, u32),
    Empty,
}

#[cfg(feature = "serde")]
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Doc {
    name: String,
    tags: Vec<String>,
    shapes: Vec<Shape>,
    meta: std::collections::HashMap<String, Option<i64>>,
    nested: Option<Box<Doc>>,
}

#[fdserver::fdserver]
impl Peer {
    fn hello(&mut self, first: &str, last: &str) -> (String, u32) {
        (format!("Hello {first} {last}, how are you?"), 1234)
    }

    /// A scalar argument.
    fn blob(&mut self, data: &[u8]) -> usize {
        data.len()
    }

    /// A scalar result: `["ok"]`, then the scalar.
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        vec![b'z'; n]
    }

    /// Inline while it fits in an array message, else `["ok_scalar"]` and a scalar.
    fn big(&mut self, n: usize) -> String {
        "x".repeat(n)
    }

    /// A large value and a descriptor: `["ok_scalar"]`, the scalar, then the descriptor.
    fn big_and_file(&mut self, n: usize, path: &Path) -> io::Result<(String, File)> {
        Ok(("y".repeat(n), File::open(path)?))
    }

    fn bigvec(&mut self, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("item{i}")).collect()
    }

    fn sum(&mut self, v: Vec<u32>) -> u64 {
        v.iter().map(|&x| u64::from(x)).sum()
    }

    fn words(&mut self, v: Vec<String>, o: Option<u32>) -> (usize, Option<u32>) {
        (v.len(), o)
    }

    fn blen(&mut self, b: &[u8], o: &OsStr) -> (usize, usize) {
        (b.len(), o.len())
    }

    /// A descriptor argument.
    fn fdlen(&mut self, f: File) -> io::Result<u64> {
        Ok(f.metadata()?.len())
    }

    /// A descriptor result (or an io error).
    fn open(&mut self, path: &Path) -> io::Result<File> {
        File::open(path)
    }

    fn io_kind(&mut self, which: &str) -> io::Result<u32> {
        Err(match which {
            "enoent" => io::Error::from_raw_os_error(libc::ENOENT),
            "eacces" => io::Error::from_raw_os_error(libc::EACCES),
            "custom_denied" => io::Error::new(io::ErrorKind::PermissionDenied, "custom nope"),
            _ => io::Error::new(io::ErrorKind::InvalidInput, format!("unknown {which}")),
        })
    }

    fn strerr(&mut self) -> Result<u32, String> {
        Err("plain string error".into())
    }

    #[cfg(feature = "serde")]
    fn echo_doc(&mut self, d: fdserver::Json<Doc>) -> fdserver::Json<Doc> {
        d
    }
}

#[derive(Debug, fdserver::WireError)]
pub enum BankError {
    InsufficientFunds { available: u64 },
    NoSuchAccount(String),
    Frozen,
}

impl std::fmt::Display for BankError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BankError::InsufficientFunds { available } => write!(f, "only {available} available"),
            BankError::NoSuchAccount(a) => write!(f, "no account {a:?}"),
            BankError::Frozen => write!(f, "account frozen"),
        }
    }
}

impl std::error::Error for BankError {}

struct Bank {
    balance: u64,
}

#[fdserver::fdserver(typed_errors)]
impl Bank {
    fn withdraw(&mut self, account: &str, amount: u64) -> Result<u64, BankError> {
        match account {
            "joe" if amount > self.balance => Err(BankError::InsufficientFunds {
                available: self.balance,
            }),
            "joe" => {
                self.balance -= amount;
                Ok(self.balance)
            }
            "frozen" => Err(BankError::Frozen),
            other => Err(BankError::NoSuchAccount(other.to_string())),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || -> ! {
        eprintln!("usage: ruby-peer --serve-fd N [--max-scalar BYTES] [bank]");
        std::process::exit(2)
    };
    let mut fd = None;
    let mut max_scalar = None;
    let mut bank = false;
    let mut rest = args.iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--serve-fd" => fd = rest.next().and_then(|v| v.parse::<i32>().ok()),
            "--max-scalar" => max_scalar = rest.next().and_then(|v| v.parse::<u64>().ok()),
            "bank" => bank = true,
            _ => usage(),
        }
    }
    let Some(fd) = fd else { usage() };
    // SAFETY: the descriptor was handed to this process by its parent, and nothing else in this
    // process owns it.
    let mut channel = match unsafe { Channel::from_inherited_fd(fd) } {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ruby-peer: --serve-fd {fd}: {e}");
            std::process::exit(2)
        }
    };
    if let Some(max) = max_scalar {
        channel.set_max_scalar_size(max);
    }
    let end = if bank {
        fdserver::serve(&mut Bank { balance: 100 }, channel)
    } else {
        fdserver::serve(&mut Peer, channel)
    };
    match end {
        Ok(end) => std::process::exit(end.exit_code()),
        Err(e) => {
            eprintln!("ruby-peer: {e}");
            std::process::exit(1)
        }
    }
}
