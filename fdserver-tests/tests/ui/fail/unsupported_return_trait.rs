use std::collections::HashMap;

struct Server;

#[fdserver::fdserver]
impl Server {
    fn table(&mut self) -> HashMap<String, u32> {
        HashMap::new()
    }
}

fn main() {
    let _ = Server.start();
}
