struct Server;

#[fdserver::fdserver]
impl Server {
    fn maybe_log(&mut self, log: Option<std::fs::File>) -> bool {
        log.is_some()
    }
}

fn main() {
    let _ = Server.start();
}

struct Other;

#[fdserver::fdserver]
impl Other {
    fn maybe_data(&mut self, data: Option<Vec<u8>>) -> Option<std::os::fd::OwnedFd> {
        let _ = data;
        None
    }
}
