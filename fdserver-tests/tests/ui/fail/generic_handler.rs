struct Server;

#[fdserver::fdserver]
impl Server {
    fn echo<T: std::fmt::Display>(&mut self, value: T) -> String {
        value.to_string()
    }
}

fn main() {
    let _ = Server.start();
}
