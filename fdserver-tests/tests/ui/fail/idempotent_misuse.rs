struct Server;

#[fdserver::fdserver]
impl Server {
    #[fdserver(idempotent)]
    fn fetch(&self, key: String) -> String {
        key
    }

    #[fdserver(signal = "SIGHUP", idempotent)]
    fn reload(&mut self) {}

    #[fdserver(initialize, idempotent)]
    fn init(&mut self) {}

    #[fdserver(idempotent, idempotent)]
    fn twice(&self) {}
}

fn main() {}
