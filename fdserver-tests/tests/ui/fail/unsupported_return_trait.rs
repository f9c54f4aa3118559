struct Server;

#[fdserver::fdserver]
impl Server {
    fn list(&mut self) -> Vec<String> {
        Vec::new()
    }
}

fn main() {
    let _ = Server.start();
}
