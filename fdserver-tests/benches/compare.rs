//! fdserver against the raw syscall floor (issue 5). Placeholder until the suite lands.
fn main() {}
