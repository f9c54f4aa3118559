struct Server;

#[fdserver::fdserver(typed_errors)]
impl Server {
    fn parse(&mut self, text: String) -> Result<u32, std::num::ParseIntError> {
        text.parse()
    }
}

struct Other;

#[fdserver::fdserver]
impl Other {
    #[fdserver(typed_errors)]
    #[fdserver(signal = "SIGHUP")]
    fn reload(&mut self) {}
}

fn main() {
    let _ = Server.start();
    let _ = Other.start();
}
