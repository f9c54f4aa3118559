//! Handlers that lend a descriptor the server keeps: `BorrowedFd<'_>` and `&File`-like
//! references, alone, in tuples and in `Result`s. The client receives owned descriptors.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

struct Keeper {
    log: File,
    sock: UnixStream,
}

#[fdserver::fdserver]
impl Keeper {
    fn log(&self) -> &File {
        &self.log
    }

    fn raw(&mut self) -> BorrowedFd<'_> {
        self.log.as_fd()
    }

    fn both(&self, n: u32) -> std::io::Result<(u32, &UnixStream, BorrowedFd<'_>)> {
        Ok((n, &self.sock, self.log.as_fd()))
    }

    fn maybe(&self) -> Result<&OwnedFd, String> {
        Err("none".into())
    }
}

fn main() {
    let mut server = Keeper {
        log: File::open("/dev/null").unwrap(),
        sock: UnixStream::pair().unwrap().0,
    };
    if let Ok(mut client) = server.start() {
        let _: File = client.log().unwrap();
        let _: OwnedFd = client.raw().unwrap();
        let _: (u32, UnixStream, OwnedFd) = client.both(1).unwrap();
        let _: Result<OwnedFd, fdserver::Error> = client.maybe();
    }
}
