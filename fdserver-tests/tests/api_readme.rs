//! The README's Rust snippets are doctests of this crate (issue 10, item 13): `build.rs` turns
//! each ```rust block into one, with set-up code taken from an HTML comment that GitHub does
//! not show. These tests check the extractor's rules; the doctests themselves run with
//! `cargo test -p fdserver-tests --doc`.

#[allow(dead_code)]
#[path = "../readme_snippets.rs"]
mod readme_snippets;

use readme_snippets::parse;

#[test]
fn every_rust_block_of_the_readme_is_a_doctest() {
    let readme = include_str!("../../README.md");
    let snippets = parse(readme).expect("README.md follows the snippet rules");
    let fences = readme.lines().filter(|l| l.trim() == "```rust").count();
    assert_eq!(snippets.len(), fences);
    assert!(
        snippets.len() >= 3,
        "the tour's two servers and the preloader"
    );
    let rendered = readme_snippets::render(&snippets);
    for s in &snippets {
        assert!(
            rendered.contains(&format!("pub struct ReadmeLine{};", s.line)),
            "snippet at line {} has no doctest",
            s.line
        );
    }
}

#[test]
fn set_up_comes_from_an_invisible_comment() {
    let text = "\
Some prose.

<!-- doctest no_run
struct Index;
-->
```rust
let index = Index;
```
";
    let snippets = parse(text).unwrap();
    assert_eq!(snippets.len(), 1);
    assert_eq!(snippets[0].line, 6);
    assert_eq!(snippets[0].flags, ["no_run"]);
    assert_eq!(snippets[0].setup, ["struct Index;"]);
    assert_eq!(snippets[0].code, ["let index = Index;"]);
    let doc = readme_snippets::render(&snippets);
    assert!(doc.contains("```rust,no_run\n# struct Index;\nlet index = Index;\n# Ok::<(), Box<dyn std::error::Error>>(())\n```"), "{doc}");

    // A snippet with its own `main` is used as it is.
    let doc = readme_snippets::render(&parse("```rust\nfn main() {}\n```\n").unwrap());
    assert!(!doc.contains("# Ok::"), "{doc}");
    // Other languages are not doctests.
    assert!(parse("```sh\n# a comment\n```\n```text\nx\n```\n")
        .unwrap()
        .is_empty());
}

#[test]
fn snippets_that_github_would_show_wrongly_are_refused() {
    let cases = [
        // rustdoc's hidden lines are shown as they are by GitHub.
        (
            "```rust\n# use std::io;\nlet x = 1;\n```\n",
            "line 2: a rustdoc hidden line",
        ),
        (
            "```rust\nlet x = 1;\n#\n```\n",
            "line 3: a rustdoc hidden line",
        ),
        // Flags go in the comment, not on the fence.
        (
            "```rust,no_run\nfn main() {}\n```\n",
            "line 1: fence a snippet as plain ```rust",
        ),
        (
            "<!-- doctest nope -->\n```rust\n```\n",
            "line 1: unknown doctest flag `nope`",
        ),
        (
            "<!-- doctest\nstruct A;\n",
            "line 1: doctest comment not closed",
        ),
        (
            "<!-- doctest -->\nprose\n```rust\n```\n",
            "line 2: a doctest comment must come right before",
        ),
        (
            "<!-- doctest -->\n```sh\n```\n",
            "line 2: a doctest comment before a non-Rust fence",
        ),
        (
            "<!-- doctest -->\n",
            "line 1: a doctest comment with no ```rust fence",
        ),
        ("```rust\nlet x = 1;\n", "line 1: code fence not closed"),
    ];
    for (text, expected) in cases {
        let err = match parse(text) {
            Ok(s) => panic!("{text:?} was accepted ({} snippets)", s.len()),
            Err(e) => e,
        };
        assert!(err.starts_with(expected), "{text:?}: {err}");
    }
    // `#[attributes]` are not hidden lines.
    assert!(parse("```rust\n#[derive(Debug)]\nstruct A;\n```\n").is_ok());
}
