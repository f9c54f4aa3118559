struct Server;

#[fdserver::fdserver]
impl Server {
    fn stop(&mut self) {}

    fn pid(&mut self) -> u32 {
        0
    }

    fn start(&mut self) {}
}

fn main() {
    // The user's own `start` shadows the trait's; the trait method still works.
    let client = fdserver::Server::start(&mut Server).unwrap();
    let _: u32 = client.pid();
}
