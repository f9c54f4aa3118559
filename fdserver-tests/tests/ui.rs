//! Compile-time behaviour of `#[fdserver]`: misuse is an error with a precise span and a message
//! that says what to do (`ui/fail`, each with its expected `.stderr`), and correct servers
//! compile in awkward surroundings (`ui/pass`). What a user without one of fdserver's optional
//! features is told is tested in `fdserver-tests/nofeatures`, where fdserver has none.
//!
//! After changing a message, regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p fdserver-tests --test ui`, then read them.

// With the `async` feature (fdserver's `tokio`), the async stubs and the async pool name each
// handler's types once more, so a type error is reported once per front end and the expected
// `.stderr` files (written for the sync front end) do not match: the failing cases run in the
// default build, which `.ci/run` tests first. Correct servers must compile in every build.
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    if cfg!(not(feature = "async")) {
        t.compile_fail("tests/ui/fail/*.rs");
    }
    t.pass("tests/ui/pass/*.rs");
}
