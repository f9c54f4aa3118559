struct Server;

#[fdserver::fdserver]
impl Server {
    fn add(&mut self, (a, b): (u32, u32)) -> u32 {
        a + b
    }

    fn named(&mut self, ref name: String) -> usize {
        name.len()
    }
}

fn main() {
    let _ = Server.start();
}
