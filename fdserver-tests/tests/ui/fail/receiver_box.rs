struct Server;

#[fdserver::fdserver]
impl Server {
    fn boxed(self: Box<Self>) -> u32 {
        1
    }
}

fn main() {
    let _ = Server.start();
}
