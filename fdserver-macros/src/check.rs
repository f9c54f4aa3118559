//! Rules that involve several methods: unique message names, names that would collide with the
//! generated client methods or `start`, valid and unique signals, at most one hook of each kind.

use std::collections::HashMap;

use proc_macro2::Ident;
use syn::ext::IdentExt;

use crate::errors::Errors;
use crate::model::Server;

/// Methods every generated client has; a handler with one of these names would collide.
pub const CLIENT_METHODS: &[&str] = &[
    "pid",
    "stop",
    "stop_with",
    "channel",
    "handle",
    "handle_mut",
    "into_handle",
    "set_timeout",
    "signal",
    "from",
    "into_connection",
];

/// Methods of the generated pools (`{Server}Pool`, `{Server}AsyncPool`: their own, those of
/// `fdserver::Pool` / `fdserver::AsyncPool` they deref to, and `Clone`'s): a handler stub of
/// the same name would shadow them (`pool.clone()` calling the handler).
pub const POOL_METHODS: &[&str] = &[
    "get",
    "call",
    "call_idempotent",
    "call_retrying",
    "status",
    "size",
    "revive",
    "stop",
    "start",
    "start_with",
    "clone",
    "deref",
];

/// Signals a server may handle on its loop (the names of `fdserver::Signal`'s variants).
pub const CATCHABLE: &[&str] = &[
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGTRAP",
    "SIGABRT",
    "SIGUSR1",
    "SIGUSR2",
    "SIGPIPE",
    "SIGALRM",
    "SIGTERM",
    "SIGSTKFLT",
    "SIGCHLD",
    "SIGCONT",
    "SIGTSTP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGURG",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGVTALRM",
    "SIGPROF",
    "SIGWINCH",
    "SIGIO",
    "SIGPWR",
    "SIGSYS",
];

pub fn check(server: &mut Server, errs: &mut Errors) {
    check_start(server, errs);
    check_handlers(server, errs);
    check_signals(server, errs);
    check_hooks(server, errs);
}

fn check_start(server: &mut Server, errs: &mut Errors) {
    let clash: Vec<Ident> = server
        .method_names
        .iter()
        .filter(|i| i.unraw() == "start" || i.unraw() == "start_async")
        .cloned()
        .collect();
    for ident in clash {
        server.gen_start = false;
        let name = ident.unraw().to_string();
        let what = if name == "start" {
            "it forks the server and returns its client"
        } else {
            "with fdserver's `tokio` feature: it starts the server and returns its async client"
        };
        errs.at(
            ident.span(),
            format_args!(
                "`{name}` is generated on `{}` by `#[fdserver]` ({what}); rename this method (a \
                 handler can keep the message name with `#[fdserver(name = \"{name}\")]`)",
                server.self_name
            ),
        );
        for h in &mut server.handlers {
            if h.ident == ident {
                h.valid = false;
            }
        }
    }
}

fn check_handlers(server: &mut Server, errs: &mut Errors) {
    let client = server.client.clone();
    let pool = server.pool.clone();
    let mut seen: HashMap<String, Ident> = HashMap::new();
    for h in &mut server.handlers {
        if !h.valid {
            continue;
        }
        let method = h.ident.unraw().to_string();
        if CLIENT_METHODS.contains(&method.as_str()) {
            errs.at(
                h.ident.span(),
                format_args!(
                    "a handler named `{method}` would collide with the generated method \
                     `{client}::{method}` (generated client methods: {}); rename the method and \
                     keep the message name with `#[fdserver(name = \"{method}\")]`",
                    CLIENT_METHODS.join(", ")
                ),
            );
            h.valid = false;
            continue;
        }
        if POOL_METHODS.contains(&method.as_str()) {
            errs.at(
                h.ident.span(),
                format_args!(
                    "a handler named `{method}` would shadow the pool method `{pool}::{method}` \
                     (methods of the generated pools: {}); rename the method and keep the \
                     message name with `#[fdserver(name = \"{method}\")]`",
                    POOL_METHODS.join(", ")
                ),
            );
            h.valid = false;
            continue;
        }
        if let Some(first) = seen.get(&h.wire) {
            errs.at(
                h.wire_span,
                format_args!(
                    "duplicate message name \"{}\": `{first}` already handles it; give one of \
                     them another name with `#[fdserver(name = \"...\")]`",
                    h.wire
                ),
            );
            h.valid = false;
            continue;
        }
        seen.insert(h.wire.clone(), h.ident.clone());
    }
}

/// The `fdserver::Signal` variant for a signal name, or an error message.
fn signal_variant(name: &str) -> Result<&'static str, String> {
    if let Some(v) = CATCHABLE.iter().find(|s| **s == name) {
        return Ok(v);
    }
    let reason = match name {
        "SIGKILL" | "SIGSTOP" => {
            format!("`{name}` cannot be caught: the kernel never delivers it to a handler")
        }
        "SIGSEGV" | "SIGBUS" | "SIGFPE" | "SIGILL" => format!(
            "`{name}` cannot be handled on the server loop: it is raised by a faulting \
             instruction and cannot wait until the current message is done"
        ),
        "SIGIOT" => "`SIGIOT` is an alias: write `SIGABRT`".to_owned(),
        "SIGPOLL" => "`SIGPOLL` is an alias: write `SIGIO`".to_owned(),
        "SIGUNUSED" => "`SIGUNUSED` is an alias: write `SIGSYS`".to_owned(),
        _ => {
            let upper = name.to_ascii_uppercase();
            let guess = if upper.starts_with("SIG") {
                upper
            } else {
                format!("SIG{upper}")
            };
            if guess != name && CATCHABLE.contains(&guess.as_str()) {
                format!("unknown signal `{name}`; did you mean `{guess}`?")
            } else if name.starts_with("SIGRT") {
                format!("`{name}`: real-time signals are not supported")
            } else {
                format!(
                    "unknown signal `{name}`; expected one of {}",
                    CATCHABLE.join(", ")
                )
            }
        }
    };
    Err(reason)
}

fn check_signals(server: &mut Server, errs: &mut Errors) {
    let mut seen: HashMap<&'static str, Ident> = HashMap::new();
    for s in &mut server.signal_handlers {
        for spec in &s.signals {
            match signal_variant(&spec.name) {
                Ok(variant) => {
                    if let Some(first) = seen.get(variant) {
                        errs.at(
                            spec.span,
                            format_args!(
                                "`{variant}` is already handled by `{first}`: a signal has one handler"
                            ),
                        );
                        s.valid = false;
                        continue;
                    }
                    seen.insert(variant, s.ident.clone());
                    s.variants.push(Ident::new(variant, spec.span));
                }
                Err(reason) => {
                    errs.at(spec.span, reason);
                    s.valid = false;
                }
            }
        }
    }
}

fn check_hooks(server: &mut Server, errs: &mut Errors) {
    let mut seen = HashMap::new();
    for h in &mut server.hooks {
        if let Some(first) = seen.get(&h.kind) {
            errs.at(
                h.attr_span,
                format_args!("there is already a `{}` hook: `{first}`", h.kind.key()),
            );
            h.valid = false;
            continue;
        }
        seen.insert(h.kind, h.ident.clone());
    }
}
