//! The `#[fdserver]` attribute macro. Use it through the `fdserver` crate, as
//! `#[fdserver::fdserver]`; its documentation lives there.
//!
//! The expansion runs in four steps, like serde_derive and thiserror:
//!
//! 1. **parse** (`attr.rs`): the outer arguments and the `#[fdserver(...)]` helper attributes,
//!    which are stripped from the impl block;
//! 2. **model** (`model.rs`): handlers, signal handlers and hooks, each checked on its own
//!    (receiver, generics, `async`, parameter patterns and types, return types);
//! 3. **check** (`check.rs`): rules across methods (duplicate message names, collisions with
//!    generated names, signals);
//! 4. **codegen** (`expand.rs`): the `fdserver::Server` impl, an inherent `start`, and the typed
//!    client.
//!
//! Errors never stop the expansion: the user's impl is always emitted, with a `compile_error!`
//! per problem at its precise span, and the generated items for everything that is valid, so
//! one mistake does not cascade into errors elsewhere.

use proc_macro::TokenStream;

mod attr;
mod check;
mod derive;
mod errors;
mod expand;
mod model;

/// Turns an impl block into an fdserver server. See `fdserver::fdserver` for the documentation.
#[proc_macro_attribute]
pub fn fdserver(args: TokenStream, input: TokenStream) -> TokenStream {
    expand::run(args.into(), input.into()).into()
}

/// Derives `fdserver::WireError`: the error travels as `["error", code, text, fields...]` and
/// the client rebuilds it. See `fdserver::WireError` for the documentation.
#[proc_macro_derive(WireError, attributes(wire_error))]
pub fn derive_wire_error(input: TokenStream) -> TokenStream {
    derive::run(input.into()).into()
}
