#[fdserver::fdserver]
struct Server;

struct Other;

#[fdserver::fdserver]
impl std::fmt::Display for Other {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Other")
    }
}

struct Generic<T>(T);

#[fdserver::fdserver]
impl<T: Copy> Generic<T> {
    fn value(&mut self) -> u32 {
        0
    }
}

fn main() {
    let _ = Other.to_string();
    let _ = Generic(1u8).value();
}
