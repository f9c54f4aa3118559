struct Server;

#[fdserver::fdserver]
impl Server {
    fn count(&mut self, n: &u32) -> u32 {
        *n
    }

    fn forever(&mut self, name: &'static str) -> usize {
        name.len()
    }

    fn edit(&mut self, text: &mut str) -> usize {
        text.len()
    }

    fn list(&mut self, items: Option<Vec<String>>) -> usize {
        items.map_or(0, |i| i.len())
    }

    fn bytes(&mut self, data: Option<&[u8]>) -> usize {
        data.map_or(0, <[u8]>::len)
    }
}

fn main() {
    let _ = Server.start();
}
