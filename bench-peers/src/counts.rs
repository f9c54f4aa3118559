//! `--counts`: system calls and context switches per operation on each side, numbers that do
//! not drift from host to host the way times do.
//!
//! * **System calls**: the bench runs itself under `strace -f -ff` (`--trace ROW LANE N`: one
//!   helper, its warm-up, `N` operations, stop), once with `N` and once with `3N` operations,
//!   counts each process's calls from its trace files and divides the difference by `2N`, so
//!   start-up, warm-up and stop cancel out. Threads are attributed to their process from the
//!   `clone` flags in the traces; "client" is the bench process, "helper" every other process
//!   (row 3: all the helpers started, per start).
//! * **Context switches**: without strace (it changes scheduling), `voluntary_ctxt_switches` and
//!   `nonvoluntary_ctxt_switches` of `/proc/<pid>/status` around `N` operations, pinned to one
//!   CPU and unpinned; row 3 from `getrusage` of the bench (`RUSAGE_SELF`) and of its reaped
//!   helpers (`RUSAGE_CHILDREN`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use crate::lanes::{set_probes, start_call_stop, start_helper, Lane, Row, BULK_CHUNKS};
use crate::os::{self, CpuSet};
use crate::peers::tarpc_lane;

/// Operations per count: (context switches, strace's `N`).
fn ops(row: Row) -> (u64, u64) {
    match row {
        Row::Call | Row::Fd => (4000, 300),
        Row::Start => (40, 4),
        Row::Bulk => (4, 1),
    }
}

/// Per-op divisor for display: bulk counts per 64 KiB chunk.
fn unit(row: Row) -> f64 {
    if row == Row::Bulk {
        BULK_CHUNKS as f64
    } else {
        1.0
    }
}

/// `--trace ROW LANE N`: the traced program. Pinned to the first allowed CPU; prints its pid.
pub fn trace_main(row: Row, lane: Lane, n: u64, all: &CpuSet) {
    set_probes(false);
    CpuSet::only(all.cpus()[0]).apply();
    println!("pid {}", os::my_pid());
    os::watchdog(600);
    if row == Row::Start {
        let rt = (lane == Lane::Tarpc).then(tarpc_lane::runtime);
        start_call_stop(lane, rt.as_ref());
        for _ in 0..n {
            start_call_stop(lane, rt.as_ref());
        }
    } else {
        let mut h = start_helper(row, lane);
        for _ in 0..row.warmup_ops() {
            h.op(true);
        }
        for _ in 0..n {
            h.op(false);
        }
        h.stop();
    }
    os::watchdog(0);
}

type Calls = BTreeMap<String, f64>;

/// Per-process system call counts of one traced run: (client, helpers).
fn traced(row: Row, lane: Lane, n: u64) -> Result<(Calls, Calls), String> {
    let dir = std::env::temp_dir().join(format!(
        "fdserver-bench-peers-strace-{}-{}-{}-{n}",
        os::my_pid(),
        row.id(),
        lane.name()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let me = std::env::current_exe().map_err(|e| format!("this executable: {e}"))?;
    let out = Command::new("strace")
        .args(["-f", "-ff", "-qq", "-o"])
        .arg(dir.join("t"))
        .arg(me)
        .args(["--trace", row.id(), lane.name(), &n.to_string()])
        .output()
        .map_err(|e| format!("running strace (apt-get install strace): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "strace of row {} {} failed: {}\n{}",
            row.id(),
            lane.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let root: i32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pid ").and_then(|p| p.trim().parse().ok()))
        .ok_or("the traced bench did not print its pid")?;
    let result = parse_traces(&dir, root);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Reads every `t.<tid>` file of `dir`: counts calls per thread, then sums them per side.
fn parse_traces(dir: &Path, root: i32) -> Result<(Calls, Calls), String> {
    let mut per_tid: HashMap<i32, BTreeMap<String, u64>> = HashMap::new();
    // child tid → (parent tid, is a thread)
    let mut parent: HashMap<i32, (i32, bool)> = HashMap::new();
    for entry in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(tid) = name.strip_prefix("t.").and_then(|t| t.parse::<i32>().ok()) else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).map_err(|e| e.to_string())?;
        let counts = per_tid.entry(tid).or_default();
        // A clone whose result comes on a later "<... clone3 resumed>" line (a vfork child runs
        // first): whether it made a thread.
        let mut pending_clone = None;
        let returned = |line: &str| {
            line.rsplit_once("= ")
                .and_then(|(_, r)| r.split_whitespace().next())
                .and_then(|r| r.parse::<i32>().ok())
                .filter(|&c| c > 0)
        };
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("<... ") {
                let call = rest.split_whitespace().next().unwrap_or("");
                if matches!(call, "clone" | "clone3" | "fork" | "vfork") {
                    if let (Some(thread), Some(child)) = (pending_clone.take(), returned(line)) {
                        parent.insert(child, (tid, thread));
                    }
                }
                continue;
            }
            if line.starts_with("---") || line.starts_with("+++") {
                continue;
            }
            let Some(open) = line.find('(') else { continue };
            let call = &line[..open];
            if call.is_empty() || !call.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                continue;
            }
            *counts.entry(call.to_string()).or_default() += 1;
            if matches!(call, "clone" | "clone3" | "fork" | "vfork") {
                let thread = line.contains("CLONE_THREAD");
                if line.ends_with("<unfinished ...>") {
                    pending_clone = Some(thread);
                } else if let Some(child) = returned(line) {
                    parent.insert(child, (tid, thread));
                }
            }
        }
    }
    let leader = |mut tid: i32| {
        while let Some(&(p, true)) = parent.get(&tid) {
            tid = p;
        }
        tid
    };
    let (mut client, mut helper) = (Calls::new(), Calls::new());
    for (tid, counts) in per_tid {
        let side = if leader(tid) == root {
            &mut client
        } else {
            &mut helper
        };
        for (call, c) in counts {
            *side.entry(call).or_default() += c as f64;
        }
    }
    Ok((client, helper))
}

/// (3N run − N run) / 2N, per call name.
fn per_op(small: &Calls, big: &Calls, ops: f64) -> Calls {
    big.iter()
        .map(|(call, &b)| {
            let d = (b - small.get(call).copied().unwrap_or(0.0)) / ops;
            (call.clone(), d)
        })
        .collect()
}

/// Context switches per op, (client (voluntary, involuntary), helper (voluntary, involuntary)).
type Switches = ((f64, f64), (f64, f64));

fn switches(row: Row, lane: Lane, n: u64) -> Switches {
    let per = |a: u64, b: u64| (b - a) as f64 / n as f64;
    if row == Row::Start {
        let rt = (lane == Lane::Tarpc).then(tarpc_lane::runtime);
        start_call_stop(lane, rt.as_ref());
        let (s0, c0) = (
            os::rusage(libc::RUSAGE_SELF),
            os::rusage(libc::RUSAGE_CHILDREN),
        );
        for _ in 0..n {
            start_call_stop(lane, rt.as_ref());
        }
        let (s1, c1) = (
            os::rusage(libc::RUSAGE_SELF),
            os::rusage(libc::RUSAGE_CHILDREN),
        );
        (
            (
                per(s0.ru_nvcsw as u64, s1.ru_nvcsw as u64),
                per(s0.ru_nivcsw as u64, s1.ru_nivcsw as u64),
            ),
            (
                per(c0.ru_nvcsw as u64, c1.ru_nvcsw as u64),
                per(c0.ru_nivcsw as u64, c1.ru_nivcsw as u64),
            ),
        )
    } else {
        let mut h = start_helper(row, lane);
        for _ in 0..row.warmup_ops() {
            h.op(true);
        }
        let (me, pid) = (os::my_pid(), h.pid());
        let (a0, b0) = (os::ctxt_switches(me), os::ctxt_switches(pid));
        for _ in 0..n {
            h.op(false);
        }
        let (a1, b1) = (os::ctxt_switches(me), os::ctxt_switches(pid));
        h.stop();
        (
            (per(a0.0, a1.0), per(a0.1, a1.1)),
            (per(b0.0, b1.0), per(b0.1, b1.1)),
        )
    }
}

fn total(c: &Calls) -> f64 {
    c.values().sum()
}

fn breakdown(c: &Calls, scale: f64) -> String {
    let mut v: Vec<(&String, &f64)> = c
        .iter()
        .filter(|(_, n)| (**n / scale).abs() >= 0.005)
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(a.1).then(a.0.cmp(b.0)));
    v.iter()
        .map(|(name, n)| format!("{name} {}", fmt_n(**n / scale)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn fmt_n(x: f64) -> String {
    if (x - x.round()).abs() < 0.005 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// Runs every count of `rows` × `lanes` and returns the markdown section.
pub fn run(rows: &[Row], lanes: &[Lane], all: &CpuSet, with_strace: bool) -> String {
    set_probes(false);
    let first_cpu = all.cpus()[0];
    let mut table = String::new();
    let mut detail = String::new();
    let _ = writeln!(
        table,
        "| row | lane | syscalls/op client | syscalls/op helper | ctx switches/op pinned: client vol+invol | helper | unpinned: client | helper |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|");
    for &row in rows {
        for &lane in lanes.iter().filter(|l| l.does(row)) {
            let (n_ctx, n_trace) = ops(row);
            let u = unit(row);
            os::watchdog(600);
            CpuSet::only(first_cpu).apply();
            let pinned = switches(row, lane, n_ctx);
            all.apply();
            let unpinned = switches(row, lane, n_ctx);
            os::watchdog(0);
            let sys = if with_strace {
                traced(row, lane, n_trace).and_then(|small| {
                    let big = traced(row, lane, 3 * n_trace)?;
                    let ops = 2.0 * n_trace as f64;
                    Ok((per_op(&small.0, &big.0, ops), per_op(&small.1, &big.1, ops)))
                })
            } else {
                Err("not counted (--no-strace)".into())
            };
            let sw = |s: (f64, f64)| format!("{}+{}", fmt_n(s.0 / u), fmt_n(s.1 / u));
            let (sc, sh) = match &sys {
                Ok((c, h)) => (fmt_n(total(c) / u), fmt_n(total(h) / u)),
                Err(_) => ("–".into(), "–".into()),
            };
            let _ = writeln!(
                table,
                "| {} | {} | {sc} | {sh} | {} | {} | {} | {} |",
                row.id(),
                lane.name(),
                sw(pinned.0),
                sw(pinned.1),
                sw(unpinned.0),
                sw(unpinned.1)
            );
            match &sys {
                Ok((c, h)) => {
                    let _ = writeln!(
                        detail,
                        "- row {} {}: client {}; helper {}",
                        row.id(),
                        lane.name(),
                        breakdown(c, u),
                        if h.is_empty() {
                            "none".to_string()
                        } else {
                            breakdown(h, u)
                        }
                    );
                }
                Err(e) => {
                    let _ = writeln!(detail, "- row {} {}: {e}", row.id(), lane.name());
                }
            }
            eprintln!("counted row {} {}", row.id(), lane.name());
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Per operation (row 4: per 64 KiB chunk). System calls: strace, (3N − N) / 2N, traced \
         process pinned to CPU {first_cpu}. Context switches: /proc and getrusage, pinned to CPU \
         {first_cpu}, then unpinned.\n"
    );
    s.push_str(&table);
    let _ = writeln!(s, "\nSystem calls by name, per operation:\n");
    s.push_str(&detail);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bench (100) with a thread (101, clone3 with CLONE_THREAD, its result on a "resumed"
    /// line) that forks a helper (200, clone without it) which starts a thread of its own (201,
    /// clone3 with it) and spawns a process (300, clone3 with CLONE_VFORK).
    #[test]
    fn calls_go_to_the_process_that_made_them() {
        let dir = std::env::temp_dir().join(format!("bench-peers-parse-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let files = [
            (100, "execve(\"/bench\", [\"bench\"], 0x7ff /* 3 vars */) = 0\n\
                   clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM, stack=0x7f}, 88 <unfinished ...>\n\
                   <... clone3 resumed>) = 101\n\
                   write(3, \"ping\", 4)               = 4\n\
                   --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED} ---\n"),
            (101, "clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f) = 200\n\
                   read(3, \"pong\", 4)                = 4\n"),
            (200, "read(4, \"ping\", 4) = 4\n\
                   clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|CLONE_SETTLS, stack=0x7f}, 88) = 201\n\
                   clone3({flags=CLONE_VM|CLONE_VFORK|CLONE_CLEAR_SIGHAND, exit_signal=SIGCHLD, stack=0x7f, stack_size=0x9000}, 88 <unfinished ...>\n\
                   <... clone3 resumed>) = 300\n\
                   exit_group(0)                     = ?\n"),
            (201, "futex(0x7f, FUTEX_WAIT, 0, NULL) = 0\n"),
            (300, "execve(\"/bin/true\", [\"true\"], 0x7ff /* 3 vars */) = 0\n+++ exited with 0 +++\n"),
        ];
        for (tid, text) in files {
            std::fs::write(dir.join(format!("t.{tid}")), text).unwrap();
        }
        let (client, helper) = parse_traces(&dir, 100).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let calls = |c: &Calls| {
            c.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        assert_eq!(
            calls(&client),
            "clone 1, clone3 1, execve 1, read 1, write 1"
        );
        assert_eq!(
            calls(&helper),
            "clone3 2, execve 1, exit_group 1, futex 1, read 1"
        );
    }

    #[test]
    fn per_op_is_the_difference_over_the_extra_operations() {
        let small: Calls = [("read".to_string(), 110.0), ("execve".to_string(), 1.0)].into();
        let big: Calls = [("read".to_string(), 310.0), ("execve".to_string(), 1.0)].into();
        let d = per_op(&small, &big, 200.0);
        assert_eq!(d["read"], 1.0);
        assert_eq!(d["execve"], 0.0);
        assert_eq!(breakdown(&d, 1.0), "read 1");
    }
}
