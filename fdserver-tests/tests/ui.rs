//! Compile-time behaviour of `#[fdserver]`: misuse is an error with a precise span and a message
//! that says what to do (`ui/fail`, each with its expected `.stderr`), and correct servers
//! compile in awkward surroundings (`ui/pass`).
//!
//! After changing a message, regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p fdserver-tests --test ui`, then read them.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    // What a user without fdserver's `serde` feature is told (with it, these compile).
    if cfg!(not(feature = "serde")) {
        t.compile_fail("tests/ui/fail_no_serde/*.rs");
    }
    t.pass("tests/ui/pass/*.rs");
}
