// A `Json<T>` result without fdserver's `serde` feature: one error, at the result type.
struct Report {
    words: u32,
}

struct Server;

#[fdserver::fdserver]
impl Server {
    fn report(&mut self) -> fdserver::Json<Report> {
        fdserver::Json(Report { words: 1 })
    }
}

fn main() {
    let _ = Server.start().map(|mut c| c.report().map(|r| r.0.words));
}
