//! Compile-time tests of fdserver built with no optional feature: see `tests/ui.rs`.
