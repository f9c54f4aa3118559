struct Server {
    name: String,
}

#[fdserver::fdserver]
impl Server {
    fn name(&mut self) -> &str {
        &self.name
    }

    fn nested(&mut self) -> (u32, (u32, u32)) {
        (1, (2, 3))
    }

    fn iter(&mut self) -> impl Iterator<Item = u32> {
        0..3
    }

    fn log(&mut self) -> &mut std::fs::File {
        unimplemented!()
    }
}

fn main() {
    let _ = Server { name: String::new() }.start();
}
