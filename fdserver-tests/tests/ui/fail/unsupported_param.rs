struct Server;

#[fdserver::fdserver]
impl Server {
    fn greet(&mut self, name: &String) -> String {
        name.to_owned()
    }

    fn sum(&mut self, values: [u32; 4]) -> u32 {
        values.iter().sum()
    }

    fn invoke(&mut self, f: fn() -> u32) -> u32 {
        f()
    }

    fn merge(&mut self, other: Self) {
        let _ = other;
    }
}

fn main() {
    let _ = Server.start();
}
