// `fdserver::Json<T>` needs fdserver's `serde` feature; without it, the error says how to turn
// it on.
struct Report {
    words: u32,
}

struct Server;

#[fdserver::fdserver]
impl Server {
    fn report(&mut self, report: fdserver::Json<Report>) -> u32 {
        report.words
    }
}

fn main() {
    let _ = Server.start();
}
