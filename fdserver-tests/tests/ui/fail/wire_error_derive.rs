#[derive(Debug, fdserver::WireError)]
enum Reserved {
    Failed,
    #[wire_error(code = "io")]
    Disk,
    NotFound,
    #[wire_error(code = "not_found")]
    Missing,
    #[wire_error(name = "x")]
    Unknown,
}

#[derive(Debug, fdserver::WireError)]
enum Generic<T> {
    Bad(T),
}

#[derive(Debug, fdserver::WireError)]
struct NotInline {
    data: Vec<u8>,
}

impl std::fmt::Display for Reserved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::fmt::Display for NotInline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

fn main() {
    let _ = fdserver::WireError::to_remote(&NotInline { data: vec![] });
}
