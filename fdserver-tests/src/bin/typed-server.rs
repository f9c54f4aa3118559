//! Serves `fdserver_tests::greeter::Greeter` on an inherited socket: `typed-server --serve-fd N`.
//! What `fdserver::Spawn` starts in the tests (`macro_any_peer`) and the bench (row 4e).
//!
//! `--exit-at-once CODE` exits before serving (a server that fails to start).

use fdserver::Channel;
use fdserver_tests::greeter::Greeter;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fd: i32 = match args.as_slice() {
        [flag, fd] if flag == "--serve-fd" => fd.parse().unwrap_or_else(|_| {
            eprintln!("typed-server: --serve-fd: not a number: {fd}");
            std::process::exit(2)
        }),
        [flag, code] if flag == "--exit-at-once" => std::process::exit(code.parse().unwrap_or(3)),
        _ => {
            eprintln!("usage: typed-server --serve-fd N | --exit-at-once CODE");
            std::process::exit(2)
        }
    };
    // SAFETY: the descriptor was handed to this process by its parent (fdserver::Spawn), and
    // nothing else in this process owns it.
    let channel = match unsafe { Channel::from_inherited_fd(fd) } {
        Ok(c) => c,
        Err(e) => {
            eprintln!("typed-server: --serve-fd {fd}: {e}");
            std::process::exit(2)
        }
    };
    match fdserver::serve(&mut Greeter::default(), channel) {
        Ok(end) => std::process::exit(end.exit_code()),
        Err(e) => {
            eprintln!("typed-server: {e}");
            std::process::exit(1)
        }
    }
}
