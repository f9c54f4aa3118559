struct Server;

#[fdserver::fdserver]
impl Server {
    #[fdserver(signal = "SIGKILL")]
    fn on_kill(&mut self) {}

    #[fdserver(signal = SIGSTOP)]
    fn on_stop(&mut self) {}
}

fn main() {
    let _ = Server.start();
}
