struct Server;

#[fdserver::fdserver]
impl Server {
    fn add(&mut self, (a, b): (u32, u32)) -> u32 {
        a + b
    }

    fn ignore(&mut self, _: u32) {}
}

fn main() {
    let _ = Server.start();
}
