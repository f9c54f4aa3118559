struct Server;

#[fdserver::fdserver]
impl Server {
    fn state(&mut self) -> u32 {
        1
    }

    #[fdserver(name = "state")]
    fn state_v2(&mut self) -> u32 {
        2
    }
}

fn main() {
    let mut client = Server.start().unwrap();
    let _: u32 = client.state().unwrap();
}
