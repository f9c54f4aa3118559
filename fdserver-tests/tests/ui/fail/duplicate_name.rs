struct Server;

#[fdserver::fdserver]
impl Server {
    fn status(&mut self) -> u32 {
        1
    }

    #[fdserver(name = "status")]
    fn status_v2(&mut self) -> u32 {
        2
    }
}

fn main() {
    let mut client = Server.start().unwrap();
    let _: u32 = client.status().unwrap();
}
