//! The code generated for borrowed parameters, lists, typed errors and `#[derive(WireError)]`
//! names everything by absolute path too: it compiles without the prelude.
#![no_implicit_prelude]

extern crate fdserver;
extern crate std;

use std::ffi::OsStr;
use std::option::Option;
use std::path::{Path, PathBuf};
use std::string::String;
use std::vec::Vec;

#[derive(Debug, fdserver::WireError)]
enum Oops {
    Bad { code: u32, path: PathBuf },
    Worse(Option<String>),
    Gone,
}

impl std::fmt::Display for Oops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[derive(Debug, fdserver::WireError)]
struct Plain(u8);

impl std::fmt::Display for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

struct Server;

#[fdserver::fdserver(typed_errors)]
impl Server {
    fn borrowed(&mut self, s: &str, b: &[u8], p: &Path, o: &OsStr) -> usize {
        s.len() + b.len() + p.as_os_str().len() + o.len()
    }

    fn lists(&mut self, words: Vec<&str>, n: Vec<u32>, paths: Vec<PathBuf>) -> Vec<String> {
        let _ = (words, n, paths);
        Vec::new()
    }

    fn typed(&mut self, fail: bool) -> std::result::Result<u32, Oops> {
        if fail {
            std::result::Result::Err(Oops::Gone)
        } else {
            std::result::Result::Ok(1)
        }
    }

    fn io(&mut self) -> std::io::Result<()> {
        std::result::Result::Ok(())
    }

    fn plain(&mut self) -> std::result::Result<(), Plain> {
        std::result::Result::Err(Plain(1))
    }
}

fn main() {
    let _unused = |c: &mut ServerClient| -> std::result::Result<(), fdserver::Error> {
        let _: usize = c.borrowed("a", b"b", "c", "d")?;
        let _: Vec<String> = c.lists(&["a"], &[1, 2], &["/p"])?;
        let _: std::result::Result<u32, fdserver::CallError<Oops>> = c.typed(true);
        let _: std::result::Result<(), fdserver::CallError<std::io::Error>> = c.io();
        let _ = c.plain();
        std::result::Result::Ok(())
    };
    let _channel_client = |ch: fdserver::Channel| {
        <ServerClient<fdserver::Channel> as std::convert::From<_>>::from(ch)
    };
    let _ = Server;
}
