struct Server;

#[fdserver::fdserver]
impl Server {
    #[fdserver(before_fork)]
    fn prepare(&mut self, verbose: bool) {
        let _ = verbose;
    }

    #[fdserver(finalize)]
    fn done(&mut self) -> Result<(), String> {
        Ok(())
    }

    #[fdserver(initialize)]
    fn init(&mut self) -> u32 {
        0
    }

    #[fdserver(signal = "SIGUSR1")]
    fn on_usr1(&mut self, count: u32) -> bool {
        count > 0
    }

    #[fdserver(name = "x")]
    fn associated() {}
}

fn main() {
    let _ = Server.start();
}
