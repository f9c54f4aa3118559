//! `examples/async_service.rs` (issue 13, item 8) runs and says what it should.
#![cfg(feature = "async")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fdserver_tests::{watchdog, SECS};

/// The example binary: next to this test binary's `deps/` directory when the workspace was
/// built with every feature, otherwise built here (into a target directory of its own).
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/<profile>/deps");
    let built = profile_dir.join("examples").join("async_service");
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
            "-p",
            "fdserver-examples",
            "--features",
            "async",
            "--example",
            "async_service",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .stdin(Stdio::null())
        .status()
        .expect("run cargo build --example async_service");
    assert!(
        status.success(),
        "cargo build --example async_service: {status}"
    );
    let dir = if profile == "dev" { "debug" } else { profile };
    target_dir.join(dir).join("examples").join("async_service")
}

#[test]
fn async_service_example_runs() {
    let _wd = watchdog("async_service_example_runs", SECS(300));
    let out = Command::new(example_binary())
        .stdin(Stdio::null())
        .output()
        .expect("run the async_service example");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        text,
        "Hello Joe Dalton, how are you?\n\
         the slow call was cut short\n\
         Hello still answering, how are you?\n\
         stopped: server exited after its connection closed (exit status: 0)\n\
         8 tasks x 4 calls, answered by 2 servers\n\
         after the crash: 50 and 50 ms\n\
         restarts: 1\n"
    );
}
