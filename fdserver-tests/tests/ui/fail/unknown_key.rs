struct Server;

#[fdserver::fdserver(client = "Client", timeout = 5)]
impl Server {
    #[fdserver(rename = "other")]
    fn greet(&mut self) -> String {
        String::new()
    }

    #[fdserver(skip, name = "x")]
    fn helper(&mut self) {}

    #[fdserver(initialize, finalize)]
    fn hooks(&mut self) {}
}

fn main() {
    let mut client: Client = Server.start().unwrap();
    let _: String = client.greet().unwrap();
}
