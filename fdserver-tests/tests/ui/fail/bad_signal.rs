struct Server;

#[fdserver::fdserver]
impl Server {
    #[fdserver(signal = "SIGUSR3")]
    fn on_usr3(&mut self) {}

    #[fdserver(signal = usr1)]
    fn on_usr1(&mut self) {}

    #[fdserver(signal = "SIGSEGV")]
    fn on_segv(&mut self) {}

    #[fdserver(signal = "SIGHUP")]
    fn on_hup(&mut self) {}

    #[fdserver(signal = "SIGHUP")]
    fn on_hup_again(&mut self) {}
}

fn main() {
    let _ = Server.start();
}
