//! `_: T` parameters: the client still sends the value, under a generated name (`argN`) that
//! cannot clash with the handler's other parameters; and associated functions next to the
//! handlers: constructors need no mark, other helpers `#[fdserver(skip)]`.

use std::fs::File;
use std::path::PathBuf;

struct Server {
    greeting: String,
}

#[fdserver::fdserver]
impl Server {
    fn new() -> Self {
        Server {
            greeting: "hi".into(),
        }
    }

    fn with_greeting(greeting: &str) -> Result<Server, String> {
        Ok(Server {
            greeting: greeting.to_owned(),
        })
    }

    #[fdserver(skip)]
    fn shout(s: &str) -> String {
        s.to_uppercase()
    }

    fn second(&mut self, _: u32, b: u32) -> u32 {
        b
    }

    /// The generated name for `_` would be `arg2`, which is taken.
    fn clash(&mut self, arg1: String, _: u32, arg2: String) -> String {
        format!("{arg1}{arg2}")
    }

    fn out_of_band(&mut self, _: PathBuf, _: File, _: Vec<u8>) -> String {
        Self::shout(&self.greeting)
    }
}

fn main() {
    let _ = Server::new();
    let mut s = Server::with_greeting("hello").unwrap().start().unwrap();
    assert_eq!(s.second(1, 2).unwrap(), 2);
    assert_eq!(s.clash("a", 7, "b").unwrap(), "ab");
    let null = File::open("/dev/null").unwrap();
    assert_eq!(s.out_of_band("/", &null, b"data").unwrap(), "HELLO");
    // The generated name is the one errors use.
    let err = s.handle_mut().call(["second", "x", "2"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "server error: bad_arguments: second: parameter `arg1`: invalid digit found in string \
         (got \"x\")"
    );
    let err = s.handle_mut().call(["clash", "a"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "server error: bad_arguments: clash: expected 3 arguments (arg1, arg2_, arg2), got 1"
    );
    s.stop().unwrap();
}
