//! The generated code names everything by absolute path: it compiles without the prelude.
#![no_implicit_prelude]

extern crate fdserver;
extern crate std;

use std::fs::File;
use std::option::Option;
use std::path::PathBuf;
use std::string::String;
use std::vec::Vec;

struct Server {
    count: u32,
}

#[fdserver::fdserver]
impl Server {
    fn hello(&mut self, first_name: String, last_name: String) -> (String, u32) {
        self.count += 1;
        let mut s = String::new();
        s.push_str(&first_name);
        s.push_str(&last_name);
        (s, self.count)
    }

    fn unit(&self) {}

    fn optional(&mut self, n: Option<u32>, p: Option<PathBuf>) -> Option<String> {
        let _ = (n, p);
        Option::None
    }

    fn bytes(&mut self, data: Vec<u8>, log: File) -> std::io::Result<(Vec<u8>, File)> {
        std::result::Result::Ok((data, log))
    }

    fn ctx(&mut self, ctx: &mut fdserver::Context<'_>) -> u32 {
        ctx.pid()
    }

    #[fdserver(signal = "SIGUSR1")]
    fn on_usr1(&mut self) {}

    #[fdserver(initialize)]
    fn init(&mut self) -> std::result::Result<(), String> {
        std::result::Result::Ok(())
    }

    #[fdserver(before_fork)]
    fn before(&mut self) {}

    #[fdserver(finalize)]
    fn fin(&mut self) {}
}

fn main() {
    let _unused = |c: &mut ServerClient| -> std::result::Result<(), fdserver::Error> {
        let (_greeting, _n) = c.hello("a", "b")?;
        c.unit()?;
        let _: Option<String> = c.optional(Option::Some(1), Option::None)?;
        let f = File::open("/dev/null").map_err(fdserver::Error::Io)?;
        let (_data, _file): (Vec<u8>, File) = c.bytes(b"x", &f)?;
        let _: u32 = c.ctx()?;
        std::result::Result::Ok(())
    };
    let _start = Server::start;
    let _ = Server { count: 0 };
}
