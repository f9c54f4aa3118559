use fdserver::sandbox::Sandbox;

struct Server;

#[fdserver::fdserver]
impl Server {
    fn ping(&mut self) {}

    #[fdserver(sandbox)]
    fn sandbox(&self) -> String {
        String::from("no network, please")
    }
}

struct Mutable;

#[fdserver::fdserver]
impl Mutable {
    #[fdserver(sandbox)]
    fn sandbox(&mut self) -> Sandbox {
        Sandbox::new()
    }
}

struct Params;

#[fdserver::fdserver]
impl Params {
    #[fdserver(sandbox)]
    fn sandbox(&self, strict: bool) -> Sandbox {
        let _ = strict;
        Sandbox::new()
    }
}

struct Twice;

#[fdserver::fdserver]
impl Twice {
    #[fdserver(sandbox)]
    fn first(&self) -> Sandbox {
        Sandbox::new()
    }

    #[fdserver(sandbox)]
    fn second(&self) -> Option<Sandbox> {
        None
    }
}

struct Both;

#[fdserver::fdserver]
impl Both {
    #[fdserver(sandbox, initialize)]
    fn setup(&self) -> Sandbox {
        Sandbox::new()
    }
}

struct Nothing;

#[fdserver::fdserver]
impl Nothing {
    #[fdserver(sandbox)]
    fn sandbox(&self) {}
}

fn main() {}
