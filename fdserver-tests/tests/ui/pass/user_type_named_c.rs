//! A user type named `C` (the generated clients' type parameter is `__FdserverC`, so it cannot
//! capture the user's `C`).

use std::fmt;
use std::str::FromStr;

pub struct C(u32);

impl fmt::Display for C {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for C {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<C, Self::Err> {
        s.parse().map(C)
    }
}

fdserver::display_fromstr_arg!(C);

struct Server;

#[fdserver::fdserver]
impl Server {
    fn take(&mut self, c: C) -> C {
        C(c.0 + 1)
    }
}

fn main() {
    let mut client = Server.start().unwrap();
    assert_eq!(client.take(C(1)).unwrap().0, 2);
}
