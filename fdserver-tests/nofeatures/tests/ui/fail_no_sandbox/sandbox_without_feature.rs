// `#[fdserver(sandbox)]` needs fdserver's `sandbox` feature; without it, the error is at the
// hook's attribute and says how to turn the feature on (the types it names do not exist
// either: rustc says so too).
struct Parser;

#[fdserver::fdserver]
impl Parser {
    fn count(&mut self, text: String) -> usize {
        text.lines().count()
    }

    #[fdserver(sandbox)]
    fn jail(&self) -> fdserver::Sandbox {
        fdserver::Sandbox::new()
    }
}

fn main() {
    let _ = Parser.start();
}
