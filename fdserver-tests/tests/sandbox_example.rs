//! `examples/privsep.rs` (issue 15, item 8) runs and says what it should: the broker hands over
//! files from its directory only, the parser parses them and cannot read a path itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fdserver_tests::{watchdog, SECS};

/// The `privsep` example binary: next to this test binary's `deps/` directory when the
/// workspace was built with `cargo test --workspace`, otherwise built here (into a target
/// directory of its own: the `cargo test` that runs us may hold the lock on ours).
fn privsep_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps");
    let built = profile_dir.join("examples").join("privsep");
    if built.is_file() {
        return built;
    }
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let target_dir = profile_dir
        .parent()
        .unwrap()
        .join("fdserver-tests-examples");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "--example",
            "privsep",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdin(Stdio::null())
        .status()
        .expect("run cargo build --example privsep");
    assert!(status.success(), "cargo build --example privsep: {status}");
    let dir = if profile == "dev" { "debug" } else { profile };
    target_dir.join(dir).join("examples").join("privsep")
}

#[test]
fn privsep_example_separates_the_broker_and_the_parser() {
    let _wd = watchdog(
        "privsep_example_separates_the_broker_and_the_parser",
        SECS(300),
    );
    let out = Command::new(privsep_binary())
        .stdin(Stdio::null())
        .output()
        .expect("run the privsep example");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "good.conf: 2 entries, longest key \"listen_backlog\"",
        "bad.conf: rejected by the parser: line 2: no '=' in",
        "escape.conf: refused by the broker: server error: io: Too many levels of symbolic links",
        "../etc/passwd: refused by the broker: server error: io: \"../etc/passwd\" is not a plain file name",
        "the parser cannot read /etc/passwd: server error: io: Permission denied",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}
