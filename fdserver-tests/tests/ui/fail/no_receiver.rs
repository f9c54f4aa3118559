//! A method without a receiver is not silently skipped: it is an error with a fix-it, unless
//! it is a constructor (returns `Self` or the server type) or marked `#[fdserver(skip)]`.

struct Calc;

#[fdserver::fdserver]
impl Calc {
    fn add(a: i32, b: i32) -> i32 {
        a + b
    }

    fn log(line: String) {
        let _ = line;
    }

    // Left alone: constructors, and an explicitly skipped helper.
    fn new() -> Self {
        Calc
    }

    fn open(path: std::path::PathBuf) -> std::io::Result<Calc> {
        let _ = path;
        Ok(Calc)
    }

    #[fdserver(skip)]
    fn double(x: i32) -> i32 {
        2 * x
    }
}

fn main() {
    let _ = Calc::double(1);
    let _ = Calc::open("/".into());
    let _ = Calc::new().start();
}
