struct Store;

#[fdserver::fdserver]
impl Store {
    fn status(&mut self) -> u32 {
        5
    }

    fn clone(&mut self) -> u32 {
        6
    }

    fn call_retrying(&mut self) -> u32 {
        8
    }

    #[fdserver(name = "get")]
    fn lookup(&mut self) -> u32 {
        7
    }
}

fn main() {}
