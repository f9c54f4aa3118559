//! What a user without one of fdserver's optional features is told, each an error with a
//! precise span that names the feature and how to turn it on: `Json<T>` without `serde`
//! (`ui/fail_no_serde`), `#[fdserver(sandbox)]` without `sandbox` (`ui/fail_no_sandbox`).
//!
//! After changing a message, regenerate the `.stderr` files with
//! `TRYBUILD=overwrite cargo test -p fdserver-tests-nofeatures --test ui`, then read them.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/fail_no_serde/*.rs");
    t.compile_fail("tests/ui/fail_no_sandbox/*.rs");
}
