use std::collections::HashMap;

struct Server;

#[fdserver::fdserver]
impl Server {
    fn lookup(&mut self, table: HashMap<String, String>) -> usize {
        table.len()
    }
}

fn main() {
    let _ = Server.start();
}
