//! The bench from outside, as its README runs it: a one-round quick run of every row and lane
//! writes its report, samples and charts; `--counts` finds the raw floor's known system calls;
//! `--render` rebuilds the report and the charts from the CSVs. Each run is bounded (the bench
//! also has its own alarm).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_fdserver-bench-peers");

/// Runs the bench with `args`; kills it (our own unreaped child) after `limit`.
fn bench(args: &[&str], limit: Duration) -> Output {
    let child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the bench");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => {
            let out = out.expect("wait for the bench");
            assert!(
                out.status.success(),
                "bench {args:?}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            out
        }
        Err(_) => {
            // SAFETY: kill(2) of our own child, not yet reaped (the waiting thread has not
            // returned), so the pid cannot have been reused.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("bench {args:?} did not finish within {limit:?}");
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bench-peers-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

#[test]
fn a_quick_round_measures_every_lane_and_draws_the_charts() {
    let dir = scratch("run");
    let out = dir.to_str().unwrap();
    let args = [
        "--quick",
        "--rounds",
        "1",
        "--heap-sizes",
        "2",
        "--heap-rounds",
        "1",
        "--out",
        out,
    ];
    bench(&args, Duration::from_secs(240));
    let csv = read(&dir, "peers-samples.csv");
    for (row, lanes) in [
        ("1", &["fdserver", "raw", "ipc-channel", "tarpc"][..]),
        (
            "2",
            &["fdserver", "fdserver-typed-dup", "raw", "ipc-channel"][..],
        ),
        (
            "3",
            &[
                "fdserver",
                "raw",
                "ipc-channel",
                "ipc-channel-spawn",
                "tarpc",
                "procspawn",
            ][..],
        ),
        ("4", &["fdserver", "raw", "ipc-channel"][..]),
    ] {
        for lane in lanes {
            let modes: Vec<&str> = csv
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    (f[1] == row && f[2] == *lane).then_some(f[3])
                })
                .collect();
            // Pinned, unpinned, and (not for row 3) split.
            let want = if row == "3" { 2 } else { 3 };
            assert_eq!(modes.len(), want, "row {row} {lane}: modes {modes:?}");
            assert!(modes.contains(&"-"), "row {row} {lane}: no unpinned sample");
        }
    }
    let report = read(&dir, "peers.md");
    assert!(report.contains("#### Time over the raw floor"), "{report}");
    assert!(report.contains("load average"), "{report}");
    let heap = read(&dir, "start-heap-samples.csv");
    assert_eq!(heap.lines().count(), 1 + 4, "{heap}"); // 2 MiB × {4k, thp} × {fdserver, raw}
    for svg in ["peers.svg", "start-heap.svg"] {
        let text = read(&dir, svg);
        assert!(text.starts_with("<svg"), "{svg}");
        assert!(text.contains("fdserver"), "{svg} has no fdserver series");
        std::fs::remove_file(dir.join(svg)).unwrap();
    }
    // Rebuilt from the CSVs and the header alone.
    std::fs::remove_file(dir.join("peers.md")).unwrap();
    bench(&["--render", "--out", out], Duration::from_secs(60));
    for svg in ["peers.svg", "start-heap.svg"] {
        assert!(read(&dir, svg).contains("raw"), "{svg} not redrawn");
    }
    assert_eq!(read(&dir, "peers.md"), report);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn counts_find_the_raw_floors_system_calls() {
    let dir = scratch("counts");
    let out = bench(
        &[
            "--counts",
            "--rows",
            "1,2",
            "--lanes",
            "raw",
            "--out",
            dir.to_str().unwrap(),
        ],
        Duration::from_secs(240),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    // One write and one read each way; a descriptor back costs the client a recvmsg and a close.
    assert!(
        text.contains("- row 1 raw: client read 1, write 1; helper read 1, write 1"),
        "{text}"
    );
    assert!(
        text.contains("- row 2 raw: client close 1, recvmsg 1, write 1; helper read 1, sendmsg 1"),
        "{text}"
    );
    assert!(read(&dir, "peers-counts.md").contains("| 1 | raw | 2 | 2 |"));
    std::fs::remove_dir_all(&dir).unwrap();
}
