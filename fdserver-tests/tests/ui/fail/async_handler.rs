struct Server;

#[fdserver::fdserver]
impl Server {
    async fn fetch(&mut self, url: String) -> String {
        url
    }
}

fn main() {
    let _ = Server.start();
}
