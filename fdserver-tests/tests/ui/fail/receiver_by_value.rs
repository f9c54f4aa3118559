struct Server;

#[fdserver::fdserver]
impl Server {
    fn consume(self) -> u32 {
        1
    }

    fn ok(&mut self) -> u32 {
        2
    }
}

fn main() {
    // The rest of the server is still generated: no cascading errors here.
    let mut client = Server.start().unwrap();
    let _: u32 = client.ok().unwrap();
}
