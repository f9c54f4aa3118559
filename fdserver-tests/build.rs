//! Makes every Rust snippet of the workspace's README.md a doctest of this crate, so that
//! `cargo test --workspace` compiles (and runs) each snippet a user reads.
//!
//! # Adding a snippet to README.md
//!
//! * Fence it as ` ```rust ` (no flags after `rust`). It becomes a doctest named after its line
//!   in the README (`readme::ReadmeLine123`).
//! * Write it as the body of a `main` that returns `Result<(), Box<dyn Error>>`: use `?`
//!   freely; the `Ok(())` is added. A snippet that defines `fn main` itself is used as it is.
//! * Never use rustdoc's hidden `# ` lines: GitHub shows them. Put set-up code the reader need
//!   not see (type definitions, helpers) in an HTML comment right before the fence, which
//!   GitHub does not render:
//!
//!   ````text
//!   <!-- doctest
//!   struct Index;
//!   fn build_index() -> Index { Index }
//!   -->
//!   ```rust
//!   ...
//!   ```
//!   ````
//!
//!   Its lines are prepended to the snippet as hidden lines. Flags for rustdoc go on the
//!   comment's first line: `<!-- doctest no_run -->` (compile, do not run: for a snippet that
//!   would take over the test process, like a preloader's `main`), `should_panic`,
//!   `compile_fail`; and `serde` (or `async`) for a snippet that needs fdserver's `serde` (or
//!   `tokio`) feature: it is tested when this crate's feature of that name is on, as `.ci/run`
//!   does in its second run.
//!
//! The build fails, naming the README line, on a snippet that breaks these rules.

use std::env;
use std::fs;
use std::path::Path;

mod readme_snippets;

fn main() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    println!("cargo:rerun-if-changed={}", readme.display());
    let text = fs::read_to_string(&readme).expect("read README.md");
    let snippets = readme_snippets::parse(&text).unwrap_or_else(|e| panic!("README.md: {e}"));
    let out = Path::new(&env::var("OUT_DIR").expect("OUT_DIR")).join("readme_doctests.rs");
    fs::write(out, readme_snippets::render(&snippets)).expect("write readme_doctests.rs");
}
