//! fdserver is Linux-only: on any other target it must fail to build with one clear
//! `compile_error!`, not with a cascade of missing `libc` symbols (issue 10, item 13).

use std::path::Path;
use std::process::Command;

/// A target that is not Linux and whose standard library `rustup` ships.
const OTHER_TARGET: &str = "x86_64-unknown-freebsd";

#[test]
fn another_target_fails_with_one_clear_error() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "check",
            "--offline",
            "--quiet",
            "-p",
            "fdserver",
            "--target",
        ])
        .arg(OTHER_TARGET)
        .env(
            "CARGO_TARGET_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("other-target"),
        )
        .env_remove("RUSTFLAGS")
        .current_dir(workspace)
        .output()
        .expect("run cargo check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("target may not be installed") {
        // .ci/run installs it; a plain `cargo test` on a machine without it cannot check this.
        eprintln!(
            "SKIPPED: the {OTHER_TARGET} standard library is not installed \
             (`rustup target add {OTHER_TARGET}`)"
        );
        return;
    }
    assert!(!out.status.success(), "fdserver built for {OTHER_TARGET}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error") && !l.starts_with("error: could not compile"))
        .collect();
    assert_eq!(
        errors,
        [
            "error: fdserver supports Linux only: it is built on Linux system calls (pidfd_open, \
          close_range, SO_PEERCRED, MSG_CMSG_CLOEXEC...). See \"Platforms\" in the crate \
          docs."
        ],
        "{stderr}"
    );
}
