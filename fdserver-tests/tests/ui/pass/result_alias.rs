//! A user's own `Result` alias (which broke tarpc's generated code) and other shadowing names.
use std::fmt;

#[derive(Debug)]
pub struct MyError(String);

impl fmt::Display for MyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Result<T> = std::result::Result<T, MyError>;

// Names a careless expansion could pick up instead of the real ones.
#[allow(dead_code)]
struct Option;
#[allow(dead_code)]
struct Some;
#[allow(dead_code)]
struct Ok;
#[allow(dead_code)]
struct Error;
#[allow(non_upper_case_globals, dead_code)]
const msg: u32 = 0;
#[allow(non_upper_case_globals, dead_code)]
const ctx: u32 = 0;

pub struct Server;

#[fdserver::fdserver]
impl Server {
    fn checked(&mut self, n: u32) -> Result<u32> {
        if n > 10 {
            Err(MyError("too big".into()))
        } else {
            std::result::Result::Ok(n * 2)
        }
    }

    fn plain(&mut self, s: String) -> Result<(String, usize)> {
        let n = s.len();
        std::result::Result::Ok((s, n))
    }

    fn io(&mut self) -> std::io::Result<()> {
        std::result::Result::Ok(())
    }
}

fn main() {
    let mut client = Server.start().unwrap();
    assert_eq!(client.checked(4).unwrap(), 8);
    let err = client.checked(11).unwrap_err();
    assert_eq!(err.to_string(), "server error: failed: too big");
    assert_eq!(client.plain("abc").unwrap(), ("abc".to_string(), 3));
    client.io().unwrap();
    client.stop().unwrap();
}
