//! Placeholder: the `#[fdserver]` macro lands with issue 3.
