//! `#[fdserver(sandbox)]` hooks compile without the prelude, returning a `Sandbox` or an
//! `Option` of one, and the impl keeps its other hooks.
#![no_implicit_prelude]

extern crate fdserver;
extern crate std;

use fdserver::sandbox::{Landlock, Preset, Sandbox, Seccomp};
use std::option::Option;

struct Always;

#[fdserver::fdserver]
impl Always {
    fn ping(&mut self) {}

    #[fdserver(initialize)]
    fn init(&mut self) {}

    #[fdserver(sandbox)]
    fn sandbox(&self) -> Sandbox {
        Sandbox::new()
            .landlock(Landlock::new())
            .seccomp(Seccomp::new().preset(Preset::NoNetwork))
    }
}

struct Sometimes {
    strict: bool,
}

#[fdserver::fdserver]
impl Sometimes {
    fn ping(&mut self) {}

    #[fdserver(sandbox)]
    fn policy(self: &Self) -> Option<Sandbox> {
        if self.strict {
            Option::Some(Sandbox::new().landlock(Landlock::new()))
        } else {
            Option::None
        }
    }
}

fn main() {
    let _ = fdserver::Server::sandbox(&Always);
    let _ = fdserver::Server::sandbox(&Sometimes { strict: true });
}
