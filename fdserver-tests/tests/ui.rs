//! Compile-time behaviour of `#[fdserver]`: misuse is an error with a precise span and a message
//! that says what to do (`ui/fail`, each with its expected `.stderr`), and correct servers
//! compile in awkward surroundings (`ui/pass`). What a user without one of fdserver's optional
//! features is told is tested in `fdserver-tests/nofeatures`, where fdserver has none.
//!
//! After changing a message, regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p fdserver-tests --test ui`, then read them.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail/*.rs");
    t.pass("tests/ui/pass/*.rs");
}
