//! The sandbox builders are values: a call whose result is dropped restricts nothing.
#![deny(unused_must_use)]

use fdserver::sandbox::{Landlock, Limit, Preset, Sandbox, Seccomp};

fn main() {
    let sandbox = Sandbox::new();
    sandbox.limit(Limit::OpenFiles(64));
    Landlock::new().read_only("/usr");
    Seccomp::new().preset(Preset::NoNetwork);
}
