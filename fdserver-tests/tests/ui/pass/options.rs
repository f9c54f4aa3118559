//! Attribute options, `#[cfg]` on handlers, docs, raw identifiers, a hand-written client name and
//! visibility, and an impl block mixing handlers with other items.
#![deny(missing_docs, dead_code, deprecated)]
//! A crate with strict lints: the generated items are documented and allowed to be unused.

/// The server. Private to the crate, and so is its client (`client_vis`).
pub(crate) struct Counter {
    n: i64,
}

#[fdserver::fdserver(client = CounterHandle, client_vis = "pub(crate)")]
impl Counter {
    /// An associated constant: left alone.
    pub const START: i64 = 0;

    /// A constructor (no receiver): left alone.
    pub fn new() -> Self {
        Counter { n: Self::START }
    }

    /// Adds `by` and returns the new value.
    fn add(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }

    #[cfg(any())]
    fn never(&mut self) {}

    #[cfg(all())]
    fn always(&self) -> bool {
        true
    }

    fn r#match(&self, r#in: String) -> bool {
        r#in == "x"
    }

    #[fdserver(name = "reset-to")]
    fn reset(&mut self, value: i64) {
        self.n = value;
    }

    /// Deprecated handlers are served without warnings; calling the stub warns.
    #[deprecated = "use `add`"]
    fn increment(&mut self) -> i64 {
        self.n += 1;
        self.n
    }

    #[fdserver(skip)]
    #[allow(dead_code)]
    fn helper(&self) -> i64 {
        self.n
    }

    #[cfg(all())]
    #[fdserver(signal = "SIGUSR1")]
    fn on_usr1(&mut self) {
        self.n = 0;
    }

    #[cfg(any())]
    #[fdserver(signal = "SIGUSR2")]
    fn on_usr2(&mut self) {}
}

fn main() {
    let mut c: CounterHandle = Counter::new().start().unwrap();
    assert_eq!(c.add(2).unwrap(), 2);
    assert!(c.always().unwrap());
    assert!(c.r#match("x").unwrap());
    c.reset(10).unwrap();
    assert_eq!(c.add(1).unwrap(), 11);
    #[allow(deprecated)]
    let n = c.increment().unwrap();
    assert_eq!(n, 12);
    assert_eq!(
        <Counter as fdserver::Server>::SIGNALS,
        &[fdserver::Signal::SIGUSR1]
    );
    let _ = format!("{c:?}");
    c.stop().unwrap();
}
