//! fdserver against the raw syscall floor, side by side in one run (issue 5).
//!
//! ```text
//! cargo bench -p fdserver-tests --bench compare                         # full run, a few minutes
//! FDSERVER_BENCH_QUICK=1 cargo bench -p fdserver-tests --bench compare  # smaller sizes, < 1 min
//! FDSERVER_BENCH_ROWS=1,2 FDSERVER_BENCH_PINS=cpu0 cargo bench ...        # a subset
//! ```
//!
//! Rows 13a, 13p1-13p4, 13t1-13t4, 13r and 13ra (issue 13: async calls, pools, restarts) are in
//! `compare/issue13.rs`; the async ones need `--features async`.
//!
//! Rows 4w, 4t and 4t100 compare fdserver with itself: row 4 with every protection on, against
//! the same with the hang-up watch or the descriptor tombstones turned off
//! (`__private::bench_hardening`, for this bench only), to report what each costs per start.
//!
//! Every row measures fdserver (A) and a raw baseline written directly on libc in this binary
//! (B) in alternating pairs of samples (A B, B A, ...), and prints the median per-operation time of
//! each, their min and max, and the median of the per-pair ratios A/B. Each row runs unpinned
//! (`no`), with both processes on one CPU (`cpu0`: `sched_setaffinity` before the fork, inherited
//! by the child), where waking the other CPU no longer dominates and the ratio shows fdserver's
//! own overhead, and, for rows with a long-lived server, with client and server on two different
//! CPUs (`split`: the cross-CPU case made repeatable). A counting global allocator reports heap
//! allocations per call on each side.
//!
//! For syscall and instruction counting (see BENCHMARKS.md), the binary also runs one side of
//! one row in a loop, unpinned: `compare --trace <what> <n>`, `what` one of `fd-call`,
//! `raw-call`, `fd-call-deadline`, `fd-fdcall`, `raw-fdcall`, `fd-bulk`, `raw-bulk`, `fd-start`
//! (and `fd-start-nowatch`, `fd-start-notombs`, `fd-start-bare`: without the hang-up watch, the
//! tombstones, or both; `fd-start-calling`: forked from the calling thread, row 4f's B side), `raw-start`, `raw-start-protocol`, `fd-start-phases` (`n` operations; bulk: `n` 64 KiB
//! chunks), or row 5's `preload-warm`, `preload-inprocess`, `raw-spawn` (`n` client processes),
//! `preload-protocol` (`n` warm commands sent by the bench itself, timed phase by phase).
//! It prints page faults, context switches and CPU time per operation (`getrusage`) to stderr.
//!
//! Row 5 measures the preloader from outside, as whole processes (`posix_spawn` + `waitpid`):
//! `preload-app` (this package's binary, built by cargo with the bench) and the `wordindex`
//! example (built here with `cargo build --release`, see `compare/preload.rs`), each against its
//! own server in a private directory under /tmp that is stopped and removed at the end of the row.
//!
//! Nothing here asserts timings. A hang cannot stall the run: each row runs under a watchdog
//! that aborts the process (every child then sees end of stream and exits), raw sockets have
//! kernel send/receive time-outs, and every child is reaped on the normal path and on unwind.

#[path = "compare/count_alloc.rs"]
mod count_alloc;
#[path = "compare/fdside.rs"]
mod fdside;
#[path = "compare/issue13.rs"]
mod issue13;
#[path = "compare/measure.rs"]
mod measure;
#[path = "compare/os.rs"]
mod os;
#[path = "compare/preload.rs"]
mod preload;
#[path = "compare/raw.rs"]
mod raw;
#[cfg(feature = "serde")]
#[path = "compare/serde_rows.rs"]
mod serde_rows;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fdserver::{MessageBuf, Sandbox};

use count_alloc::allocs;
use fdside::BenchServer;
use measure::{calibrate, print_table, run_pairs, timed, Batch, Pairs, Row};
use os::CpuSet;

#[global_allocator]
static ALLOCATOR: count_alloc::Counting = count_alloc::Counting;

const CHUNK: usize = 64 << 10;
const MIB: usize = 1 << 20;

struct Cfg {
    quick: bool,
    /// Pairs per latency row and mode.
    pairs: usize,
    /// Target duration of one sample (the slower side).
    sample: Duration,
    /// Bytes per bulk sample.
    bulk_bytes: u64,
    bulk_pairs: usize,
    heap_sizes: Vec<usize>,
    heap_pairs: usize,
    /// Samples per mode of row 5w (each holds a cold run of ~1 s).
    preload_pairs: usize,
    /// Calls over which allocations are counted.
    alloc_calls: u64,
    /// Watchdog limit per row and mode.
    row_limit: Duration,
}

impl Cfg {
    fn from_env() -> Cfg {
        let quick = std::env::var("FDSERVER_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        if quick {
            Cfg {
                quick,
                pairs: 7,
                sample: Duration::from_millis(10),
                bulk_bytes: 64 << 20,
                bulk_pairs: 3,
                heap_sizes: vec![MIB, 64 * MIB],
                heap_pairs: 5,
                preload_pairs: 3,
                alloc_calls: 2_000,
                row_limit: Duration::from_secs(60),
            }
        } else {
            Cfg {
                quick,
                pairs: 31,
                sample: Duration::from_millis(40),
                bulk_bytes: 1 << 30,
                bulk_pairs: 7,
                heap_sizes: vec![MIB, 16 * MIB, 128 * MIB, 1024 * MIB],
                heap_pairs: 11,
                preload_pairs: 9,
                alloc_calls: 20_000,
                row_limit: Duration::from_secs(180),
            }
        }
    }
}

/// Where the two processes run. Children inherit `child` (set before they are forked); the
/// bench process then moves itself to `parent`.
#[derive(Clone, Copy)]
struct Mode {
    pin: &'static str,
    parent: CpuSet,
    child: CpuSet,
}

impl Mode {
    /// Called once a row's children exist: moves the bench process to its own CPU(s).
    fn settle(&self) {
        self.parent.apply();
    }
}

/// Allocation counts, printed under the table.
#[derive(Default)]
struct AllocReport {
    lines: Vec<String>,
}

impl AllocReport {
    fn add(&mut self, what: &str, server: f64, client: f64, raw_client: f64) {
        self.lines.push(format!(
            "  {what:<40} server {server:>6.2}   client {client:>6.2}   (raw: client {raw_client:.2}, server 0 by construction)"
        ));
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("--trace") {
        return trace(&args[1..]);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        // The rows are chosen by environment variables only; a help request must not start the
        // full run (minutes).
        println!(
            "compare: fdserver against raw baselines (see the source's module docs and \
             BENCHMARKS.md)\n\n\
             FDSERVER_BENCH_ROWS=id,id,...   the rows to run (e.g. 13a,13p2,13t2,13r,13ra)\n\
             FDSERVER_BENCH_PINS=no,cpu0,... the placements (no, cpu0, split)\n\
             FDSERVER_BENCH_QUICK=1          smaller sizes\n\
             --trace <what> <n>              one side of one row in a loop (for strace/perf)"
        );
        return;
    }

    let cfg = Cfg::from_env();
    let all = CpuSet::current();
    let mut modes = vec![
        Mode {
            pin: "no",
            parent: all,
            child: all,
        },
        Mode {
            pin: "cpu0",
            parent: all.nth_only(0),
            child: all.nth_only(0),
        },
    ];
    if all.count() >= 2 {
        // Client on the first CPU, server on the second: the cross-CPU case made repeatable
        // (unpinned, the scheduler picks either placement from run to run).
        modes.push(Mode {
            pin: "split",
            parent: all.nth_only(0),
            child: all.nth_only(1),
        });
    }
    // FDSERVER_BENCH_PINS=cpu0 runs only those placements.
    if let Ok(list) = std::env::var("FDSERVER_BENCH_PINS") {
        modes.retain(|m| list.split(',').any(|x| x.trim() == m.pin));
    }
    // Rows that fork per operation cannot split the two processes.
    let same_cpu: Vec<Mode> = modes.iter().copied().filter(|m| m.pin != "split").collect();
    // FDSERVER_BENCH_ROWS=1,2,6 runs only those rows.
    let only = std::env::var("FDSERVER_BENCH_ROWS").ok();
    let want = |id: &str| match only.as_deref() {
        None => true,
        Some(list) => list.split(',').any(|x| x.trim() == id),
    };
    eprintln!(
        "compare: {} mode, {} CPUs, {} pairs per row (bulk {}, heap {}), ~{:?} per sample",
        if cfg.quick { "QUICK" } else { "full" },
        all.count(),
        cfg.pairs,
        cfg.bulk_pairs,
        cfg.heap_pairs,
        cfg.sample
    );

    let mut rows = Vec::new();
    let mut report = AllocReport::default();
    for &m in &modes {
        if want("1") {
            guarded(&cfg, "1 call", m, || {
                rows.push(row_call(&cfg, m, None, &mut report))
            });
        }
    }
    for &m in &modes {
        if want("1t") {
            guarded(&cfg, "1t call with deadline", m, || {
                rows.push(row_call(&cfg, m, Some(DEADLINE), &mut report))
            });
        }
    }
    for &m in &modes {
        if want("2") {
            guarded(&cfg, "2 fd call", m, || {
                rows.push(row_fd_call(&cfg, m, &mut report))
            });
        }
    }
    for &m in &modes {
        if want("3") {
            guarded(&cfg, "3 bulk", m, || {
                rows.push(row_bulk(&cfg, m, &mut report))
            });
        }
    }
    for &m in &same_cpu {
        if want("4") {
            guarded(&cfg, "4 start+stop", m, || {
                rows.push(row_start_stop(
                    &cfg,
                    m,
                    "4",
                    "start + first call + stop".into(),
                    "",
                ))
            });
        }
    }
    for &m in &same_cpu {
        if want("4e") {
            guarded(&cfg, "4e exec spawn+stop", m, || {
                rows.push(row_spawn(&cfg, m))
            });
        }
    }
    for &m in &same_cpu {
        if want("4b") {
            guarded(&cfg, "4b start+stop vs raw protocol", m, || {
                rows.push(row_start_stop(&cfg, m, "4b", "start+call+stop".into(), ""))
            });
        }
    }
    // 4w, 4t, 4t100: what two of a server's protections cost at start (issue 10): the
    // hang-up watch thread, and the descriptor tombstones (with the bench's own ~10 inherited
    // descriptors, and with 100 more open in the parent). Row 4's fdserver side against itself
    // with that protection turned off.
    for (id, watch, tombs, extra_fds) in [
        ("4w", false, true, 0),
        ("4t", true, false, 0),
        ("4t100", true, false, 100),
    ] {
        for &m in &same_cpu {
            if want(id) {
                guarded(&cfg, id, m, || {
                    rows.push(row_hardening(&cfg, m, id, watch, tombs, extra_fds))
                });
            }
        }
    }
    // 4f: what forking from fdserver's fork thread costs at start (issue 13): row 4's fdserver
    // side against the same forked from the calling thread.
    for &m in &same_cpu {
        if want("4f") {
            guarded(&cfg, "4f fork thread", m, || {
                rows.push(row_fork_thread(&cfg, m))
            });
        }
    }
    // 13a, 13p1-4, 13t1-4, 13r, 13ra: async calls, pools and restarts (issue 13; issue13.rs).
    issue13::rows(&cfg, &same_cpu, &want, &mut rows);
    // Row 5: the preloader. 5: warm command vs /bin/true, each started as a shell does (fork,
    // execve, waitpid); 5p: the same with posix_spawn; 5i: the same client binary run
    // in-process (FDSERVER_PRELOAD=0), which splits 5's gap into "exec of a Rust binary" and
    // "the preloader"; 5w: the wordindex example, warm vs cold.
    if want("5") || want("5p") || want("5i") {
        match preload::preload_app() {
            Ok(app) => {
                for &m in &same_cpu {
                    if want("5") {
                        preload_guarded(&cfg, "5 preloader warm command", m, || {
                            rows.push(row_preload_command(&cfg, m, &app, Launch::Fork))
                        });
                    }
                }
                for &m in &same_cpu {
                    if want("5p") {
                        preload_guarded(&cfg, "5p warm command, posix_spawn", m, || {
                            rows.push(row_preload_command(&cfg, m, &app, Launch::PosixSpawn))
                        });
                    }
                }
                for &m in &same_cpu {
                    if want("5i") {
                        preload_guarded(&cfg, "5i client in-process", m, || {
                            rows.push(row_preload_command(&cfg, m, &app, Launch::InProcess))
                        });
                    }
                }
            }
            Err(e) => rows.extend(
                same_cpu
                    .iter()
                    .map(|m| unavailable("5", "preloader warm command vs fork+exec true", m, &e)),
            ),
        }
    }
    // 5s: row 5 with the client linked statically, the build README recommends for thin
    // clients (the same code; what a dynamic Rust binary costs at every start is the difference).
    if want("5s") {
        match preload::preload_app_static() {
            Ok(app) => {
                for &m in &same_cpu {
                    preload_guarded(&cfg, "5s static client warm command", m, || {
                        let mut row = row_preload_command(&cfg, m, &app, Launch::Fork);
                        row.id = "5s".into();
                        row.what = "static client warm cmd vs fork+exec true".into();
                        row.extra = "preload-app (+crt-static) exit 0, server up".into();
                        rows.push(row)
                    });
                }
            }
            Err(e) => rows.extend(
                same_cpu
                    .iter()
                    .map(|m| unavailable("5s", "static client warm cmd vs fork+exec true", m, &e)),
            ),
        }
    }
    if want("5w") {
        match preload::wordindex() {
            Ok(bin) => {
                for &m in &same_cpu {
                    preload_guarded(&cfg, "5w wordindex warm vs cold", m, || {
                        rows.push(row_preload_cold(&cfg, m, &bin))
                    });
                }
            }
            Err(e) => rows.extend(
                same_cpu
                    .iter()
                    .map(|m| unavailable("5w", "wordindex stats: warm vs cold", m, &e)),
            ),
        }
    }
    // Row 8: serde values, JSON vs a binary codec (needs `--features serde`).
    for &m in &modes {
        if want("8c") || want("8") {
            #[cfg(feature = "serde")]
            guarded(&cfg, "8 serde", m, || {
                if want("8c") {
                    rows.push(row_serde_codec(&cfg, m));
                }
                if want("8") {
                    rows.push(row_serde_call(&cfg, m, &mut report));
                }
            });
            #[cfg(not(feature = "serde"))]
            rows.push(unavailable(
                "8",
                "serde call: JSON vs postcard",
                &m,
                "build with --features serde",
            ));
        }
    }
    for &size in cfg.heap_sizes.iter().filter(|_| want("6")) {
        for huge in [false, true] {
            let label = format!(
                "{} {}",
                if size >= 1 << 30 {
                    format!("{} GiB", size >> 30)
                } else {
                    format!("{} MiB", size >> 20)
                },
                if huge { "THP" } else { "4K" }
            );
            let heap = os::Heap::new(size, huge);
            let (rss, anon_huge) = os::rss_and_huge_kib();
            let extra = format!("rss {} MiB, AnonHuge {} MiB", rss >> 10, anon_huge >> 10);
            for &m in &same_cpu {
                guarded(&cfg, &format!("6 heap {label}"), m, || {
                    rows.push(row_start_stop(
                        &cfg,
                        m,
                        "6",
                        format!("start+stop, heap {label}"),
                        &extra,
                    ))
                });
            }
            drop(heap);
        }
    }
    // Row 7: start + call + stop in a sandbox vs the same without, the whole sandbox and each
    // layer alone (each also drops capabilities and sets no_new_privs, which 7p is alone).
    for (id, what, sandbox) in sandbox_rows() {
        // FDSERVER_BENCH_ROWS=7 runs them all; 7f only that one.
        if !(want(id) || want("7")) {
            continue;
        }
        for &m in &same_cpu {
            let what = format!("start+call+stop, sandbox {what} vs none");
            match &sandbox {
                Ok(sandbox) => guarded(&cfg, &format!("{id} {what}"), m, || {
                    rows.push(row_sandbox(&cfg, m, id, &what, sandbox.clone()))
                }),
                Err(why) => rows.push(unavailable(id, &what, &m, why)),
            }
        }
    }
    all.apply();

    println!();
    println!(
        "fdserver vs raw libc, {} run; ratio = fdserver time / raw time per op (median of pairs)",
        if cfg.quick {
            "QUICK (FDSERVER_BENCH_QUICK)"
        } else {
            "full"
        }
    );
    println!(
        "pin: no = scheduler's choice; cpu0 = both processes on one CPU; split = client on one CPU, server on another"
    );
    print_table(&rows);
    println!();
    println!("heap allocations per operation, steady state (counting global allocator):");
    for l in &report.lines {
        println!("{l}");
    }
}

/// The per-read/write deadline of row 1t.
const DEADLINE: Duration = Duration::from_secs(30);

/// Runs one row under a watchdog, with the mode's child mask applied to this thread (so to
/// every child forked meanwhile; the row calls [`Mode::settle`] once its children exist).
/// `main` restores the full mask at the end.
fn guarded(cfg: &Cfg, name: &str, mode: Mode, f: impl FnOnce()) {
    eprintln!("  running {name} (pin: {})", mode.pin);
    let _wd = fdserver_tests::watchdog(&format!("bench {name} pin={}", mode.pin), cfg.row_limit);
    mode.child.apply();
    f();
}

/// [`guarded`] for row 5: its watchdog stops the preloader servers (daemons, which would outlive
/// the bench) before aborting.
fn preload_guarded(cfg: &Cfg, name: &str, mode: Mode, f: impl FnOnce()) {
    eprintln!("  running {name} (pin: {})", mode.pin);
    let _wd = preload::watchdog(&format!("bench {name} pin={}", mode.pin), cfg.row_limit);
    mode.child.apply();
    f();
}

fn pairs(cfg: &Cfg, max_k: u64, a: &mut Batch<'_>, b: &mut Batch<'_>, n: usize) -> Pairs {
    let k = calibrate(cfg.sample, max_k, a, b);
    run_pairs(n, k, a, b)
}

fn row_call(cfg: &Cfg, m: Mode, deadline: Option<Duration>, report: &mut AllocReport) -> Row {
    let mut client = fdside::start_hello(deadline);
    let peer = raw::pingpong_child();
    m.settle();
    let fd = peer.fd();
    assert_eq!(
        fdside::typed_hello_call(&mut client),
        ("Hello Joe Dalton, how are you?".to_string(), 1234)
    );
    let p = pairs(
        cfg,
        1 << 20,
        &mut |k| timed(k, || drop(black_box(fdside::typed_hello_call(&mut client)))),
        &mut |k| timed(k, || raw::pingpong(fd)),
        cfg.pairs,
    );
    if m.pin == "no" {
        let n = cfg.alloc_calls;
        let s0 = fdside::typed_server_allocs(&mut client);
        let c0 = allocs();
        for _ in 0..n {
            black_box(fdside::typed_hello_call(&mut client));
        }
        let c1 = allocs();
        let s1 = fdside::typed_server_allocs(&mut client);
        let r0 = allocs();
        for _ in 0..n {
            raw::pingpong(fd);
        }
        let r1 = allocs();
        report.add(
            if deadline.is_some() {
                "1t call (with deadline), per call"
            } else {
                "1 call hello(\"Joe\",\"Dalton\"), per call"
            },
            (s1 - s0) as f64 / n as f64,
            (c1 - c0) as f64 / n as f64,
            (r1 - r0) as f64 / n as f64,
        );
    }
    client.stop().expect("stop");
    assert_eq!(peer.finish(), 0, "raw child status");
    Row {
        id: if deadline.is_some() { "1t" } else { "1" }.into(),
        what: if deadline.is_some() {
            "call, 30 s deadline set vs 16 B ping-pong"
        } else {
            "call hello(Joe,Dalton) vs 16 B ping-pong"
        }
        .into(),
        pin: m.pin,
        result: Ok(p),
        target: Some((1.2, "<=1.20x")),
        extra: String::new(),
    }
}

fn row_fd_call(cfg: &Cfg, m: Mode, report: &mut AllocReport) -> Row {
    let mut server = BenchServer::new(CHUNK);
    let mut client = fdside::start(&mut server, None);
    let peer = raw::fdpass_child();
    m.settle();
    let fd = peer.fd();
    let mut buf = MessageBuf::new();
    let p = pairs(
        cfg,
        1 << 20,
        &mut |k| timed(k, || drop(fdside::fd_call(&mut client, &mut buf))),
        &mut |k| timed(k, || drop(raw::fd_roundtrip(fd))),
        cfg.pairs,
    );
    if m.pin == "no" {
        let n = cfg.alloc_calls;
        let s0 = fdside::server_allocs(&mut client);
        let c0 = allocs();
        for _ in 0..n {
            drop(fdside::fd_call(&mut client, &mut buf));
        }
        let c1 = allocs();
        let s1 = fdside::server_allocs(&mut client);
        let r0 = allocs();
        for _ in 0..n {
            drop(raw::fd_roundtrip(fd));
        }
        let r1 = allocs();
        report.add(
            "2 fd call, per call",
            (s1 - s0) as f64 / n as f64,
            (c1 - c0) as f64 / n as f64,
            (r1 - r0) as f64 / n as f64,
        );
    }
    client.stop().expect("stop");
    assert_eq!(peer.finish(), 0, "raw child status");
    Row {
        id: "2".into(),
        what: "call returning 1 fd vs SCM_RIGHTS round trip".into(),
        pin: m.pin,
        result: Ok(p),
        target: Some((1.2, "<=1.20x")),
        extra: String::new(),
    }
}

fn row_bulk(cfg: &Cfg, m: Mode, report: &mut AllocReport) -> Row {
    let mut server = BenchServer::new(CHUNK);
    let mut client = fdside::start(&mut server, None);
    let peer = raw::sink_child(CHUNK);
    m.settle();
    let fd = peer.fd();
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 7 + 3) as u8).collect();
    let mut buf = MessageBuf::new();
    let per_sample = cfg.bulk_bytes / CHUNK as u64;
    // Warm-up, then fixed-size samples: each sample is one whole transfer of `bulk_bytes`.
    fdside::bulk(&mut client, &mut buf, &chunk, 256);
    raw::bulk(fd, &chunk, 256);
    let mut a = |k| timed(1, || fdside::bulk(&mut client, &mut buf, &chunk, k));
    let mut b = |k| timed(1, || raw::bulk(fd, &chunk, k));
    let p = run_pairs(cfg.bulk_pairs, per_sample, &mut a, &mut b);
    if m.pin == "no" {
        let n = 4096;
        let s0 = fdside::server_allocs(&mut client);
        let c0 = allocs();
        fdside::bulk(&mut client, &mut buf, &chunk, n);
        let c1 = allocs();
        let s1 = fdside::server_allocs(&mut client);
        report.add(
            "3 bulk, per 64 KiB scalar",
            (s1 - s0) as f64 / n as f64,
            (c1 - c0) as f64 / n as f64,
            0.0,
        );
    }
    client.stop().expect("stop");
    assert_eq!(peer.finish(), 0, "raw child status");
    let gib_s = |ns: f64| CHUNK as f64 / ns * 1e9 / (1u64 << 30) as f64;
    let extra = format!(
        "{} MiB/sample; fdserver {:.2} GiB/s, raw {:.2} GiB/s",
        cfg.bulk_bytes >> 20,
        gib_s(measure::median(&p.a)),
        gib_s(measure::median(&p.b)),
    );
    Row {
        id: "3".into(),
        what: "bulk 64 KiB scalars vs write/read (per chunk)".into(),
        pin: m.pin,
        result: Ok(p),
        // >= 0.9x the raw throughput is <= 1/0.9 the raw time.
        target: Some((1.0 / 0.9, ">=0.90x thr")),
        extra,
    }
}

fn row_start_stop(cfg: &Cfg, m: Mode, id: &str, what: String, extra: &str) -> Row {
    m.settle();
    let mut server = BenchServer::new(CHUNK);
    let (n, target) = match id {
        "4" => (cfg.pairs, Some((1.5, "<=1.50x"))),
        "4b" => (cfg.pairs, None),
        _ => (cfg.heap_pairs, None),
    };
    // 4b: the same protocol done raw (socketpair, ready, one round trip, close, waitpid), to
    // separate what the protocol costs from what fdserver adds.
    let raw_op: fn() = if id == "4b" {
        raw::fork_protocol
    } else {
        raw::fork_exit_wait
    };
    let p = pairs(
        cfg,
        10_000,
        &mut |k| timed(k, || fdside::start_call_stop(&mut server)),
        &mut |k| timed(k, raw_op),
        n,
    );
    let baseline = if id == "4b" {
        " vs raw fork+ready+ping+close+wait"
    } else {
        " vs fork+_exit+waitpid"
    };
    Row {
        id: id.into(),
        what: what + baseline,
        pin: m.pin,
        result: Ok(p),
        target,
        extra: extra.to_string(),
    }
}

/// Row 4e: a server program started with `fdserver::Spawn` (exec of `typed-server`), first
/// typed call, stop, vs the same typed server forked with `start` (row 4's path), same call,
/// same stop. The ratio is what a fork-free start costs.
fn row_spawn(cfg: &Cfg, m: Mode) -> Row {
    m.settle();
    let p = pairs(
        cfg,
        10_000,
        &mut |k| timed(k, fdside::spawn_call_stop),
        &mut |k| timed(k, fdside::fork_typed_call_stop),
        cfg.pairs,
    );
    Row {
        id: "4e".into(),
        what: "exec spawn + call + stop vs fork start".into(),
        pin: m.pin,
        result: Ok(p),
        target: None,
        extra: "typed-server --serve-fd 3 (release) vs Greeter.start()".into(),
    }
}

/// Row 8c: encode + decode of the realistic value, JSON vs postcard (no I/O).
#[cfg(feature = "serde")]
fn row_serde_codec(cfg: &Cfg, m: Mode) -> Row {
    let r = serde_rows::Report::sample();
    assert_eq!(serde_rows::json_codec(&r), r);
    assert_eq!(serde_rows::binary_codec(&r), r);
    let p = pairs(
        cfg,
        1 << 20,
        &mut |k| timed(k, || drop(black_box(serde_rows::json_codec(black_box(&r))))),
        &mut |k| {
            timed(k, || {
                drop(black_box(serde_rows::binary_codec(black_box(&r))))
            })
        },
        cfg.pairs,
    );
    let (json, bin) = serde_rows::sizes(&r);
    Row {
        id: "8c".into(),
        what: "serde codec: JSON vs postcard (enc+dec)".into(),
        pin: m.pin,
        result: Ok(p),
        target: None,
        extra: format!("struct of 5 fields + Vec<u32> of 100; {json} B JSON, {bin} B postcard"),
    }
}

/// Row 8: a typed call sending the value and getting it back, `Json<Report>` vs
/// `Postcard<Report>`, on one server.
#[cfg(feature = "serde")]
fn row_serde_call(cfg: &Cfg, m: Mode, report: &mut AllocReport) -> Row {
    // One server per side (the same server type), as in the other rows.
    let mut client = serde_rows::start();
    let mut other = serde_rows::start();
    m.settle();
    let r = serde_rows::Report::sample();
    assert_eq!(serde_rows::json_call(&mut client, &r), r);
    assert_eq!(serde_rows::binary_call(&mut other, &r), r);
    let p = pairs(
        cfg,
        1 << 20,
        &mut |k| {
            timed(k, || {
                drop(black_box(serde_rows::json_call(&mut client, &r)))
            })
        },
        &mut |k| {
            timed(k, || {
                drop(black_box(serde_rows::binary_call(&mut other, &r)))
            })
        },
        cfg.pairs,
    );
    other.stop().expect("stop");
    if m.pin == "no" {
        let n = cfg.alloc_calls;
        for (what, call) in [
            (
                "8 serde call, JSON, per call",
                serde_rows::json_call as fn(&mut _, &_) -> _,
            ),
            ("8 serde call, postcard, per call", serde_rows::binary_call),
        ] {
            let s0 = client.allocs().expect("allocs");
            let c0 = allocs();
            for _ in 0..n {
                black_box(call(&mut client, &r));
            }
            let c1 = allocs();
            let s1 = client.allocs().expect("allocs");
            report.add(
                what,
                (s1 - s0) as f64 / n as f64,
                (c1 - c0) as f64 / n as f64,
                0.0,
            );
        }
    }
    client.stop().expect("stop");
    Row {
        id: "8".into(),
        what: "serde call echo(value): JSON vs postcard".into(),
        pin: m.pin,
        result: Ok(p),
        target: None,
        extra: "client clones the value on both sides".into(),
    }
}

/// Row 4f: row 4's fdserver side (start + first call + stop) forked from the fork thread, the
/// default (A), against the same forked from the calling thread (B). The ratio is what the
/// hand-off to the fork thread costs per start (issue 13, item 1).
fn row_fork_thread(cfg: &Cfg, m: Mode) -> Row {
    m.settle();
    let mut a = BenchServer::new(CHUNK);
    let mut b = BenchServer::new(CHUNK);
    let p = pairs(
        cfg,
        10_000,
        &mut |k| {
            timed(k, || {
                fdside::start_call_stop_with(&mut a, fdserver::Builder::new())
            })
        },
        &mut |k| {
            timed(k, || {
                fdside::start_call_stop_with(
                    &mut b,
                    fdserver::Builder::new().fork_on_calling_thread(true),
                )
            })
        },
        cfg.pairs,
    );
    Row {
        id: "4f".into(),
        what: "start+call+stop vs forked on the calling thread".into(),
        pin: m.pin,
        result: Ok(p),
        target: None,
        extra: "raw column = fdserver forking from the calling thread".into(),
    }
}

/// Rows 4w, 4t, 4t100: row 4's fdserver side with every protection on (A) against the same
/// with the hang-up watch (`watch` false) or the descriptor tombstones (`tombs` false) turned
/// off (B), with `extra_fds` more descriptors open in this process (inherited by every server).
/// The ratio is what the protection costs per start + call + stop.
fn row_hardening(cfg: &Cfg, m: Mode, id: &str, watch: bool, tombs: bool, extra_fds: usize) -> Row {
    m.settle();
    let held: Vec<std::fs::File> = (0..extra_fds)
        .map(|_| std::fs::File::open("/dev/null").expect("open /dev/null"))
        .collect();
    let mut on = BenchServer::new(CHUNK);
    let mut off = BenchServer::new(CHUNK);
    let p = pairs(
        cfg,
        10_000,
        &mut |k| timed(k, || fdside::start_call_stop(&mut on)),
        &mut |k| {
            fdserver::__private::bench_hardening(watch, tombs);
            let t = timed(k, || fdside::start_call_stop(&mut off));
            fdserver::__private::bench_hardening(true, true);
            t
        },
        cfg.pairs,
    );
    let open_here = fdside::open_fd_count();
    drop(held);
    let (what, off_what) = if watch {
        ("start+call+stop vs without tombstones", "no tombstones")
    } else {
        (
            "start+call+stop vs without hang-up watch",
            "no hang-up watch",
        )
    };
    Row {
        id: id.into(),
        what: what.into(),
        pin: m.pin,
        result: Ok(p),
        target: None,
        extra: format!("raw column = fdserver with {off_what}; {open_here} descriptors open here"),
    }
}

/// How row 5's variants run the client.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Launch {
    /// 5: as a shell does, `fork` + `execve` + `waitpid`, against a warm server.
    Fork,
    /// 5p: `posix_spawn` + `waitpid`, against a warm server.
    PosixSpawn,
    /// 5i: `fork` + `execve` + `waitpid`, in-process (`FDSERVER_PRELOAD=0`).
    InProcess,
}

/// Rows 5, 5p and 5i: `preload-app exit 0` (a command that does nothing), from the start of the
/// client to `waitpid`, against a server already running with a preloaded template (5, 5p), or
/// in-process with `FDSERVER_PRELOAD=0` (5i), vs the same for `/bin/true`. Both sides get the
/// same environment, inherit the same descriptors and are started the same way.
fn row_preload_command(cfg: &Cfg, m: Mode, app: &Path, launch: Launch) -> Row {
    let in_process = launch == Launch::InProcess;
    m.settle();
    let server = preload::PreloadServer::new(app, &format!("app-{}", m.pin));
    // Starts the server and preloads the template (untimed), and checks the plumbing.
    assert_eq!(
        preload::output_of(app, &["echo", "up"], &server, false),
        "up\n"
    );
    let pid = server.server_pid();
    let mut cmd = preload::Spawn::new(app, &["exit", "0"], server.env(in_process), false);
    let mut raw = preload::Spawn::new(
        &preload::trivial_program(),
        &[],
        server.env(in_process),
        false,
    );
    if launch == Launch::PosixSpawn {
        cmd = cmd.posix_spawn();
        raw = raw.posix_spawn();
    }
    let p = pairs(
        cfg,
        10_000,
        &mut |k| timed(k, || cmd.run()),
        &mut |k| timed(k, || raw.run()),
        cfg.pairs,
    );
    // Warm throughout: the same server, and one preload in all.
    assert_eq!(
        server.server_pid(),
        pid,
        "the preloader server was restarted"
    );
    let preloads = server.log().matches(" preloaded (pid ").count();
    assert_eq!(preloads, 1, "preloads during the row:\n{}", server.log());
    drop(server);
    match launch {
        Launch::InProcess => Row {
            id: "5i".into(),
            what: "client in-process (PRELOAD=0) vs true".into(),
            pin: m.pin,
            result: Ok(p),
            target: None,
            extra: "preload-app exit 0, no preloader: exec + Rust runtime; fork+exec".into(),
        },
        Launch::Fork => Row {
            id: "5".into(),
            what: "preloader warm command vs true, fork+exec".into(),
            pin: m.pin,
            result: Ok(p),
            target: Some((2.0, "<=2.00x")),
            extra: "preload-app exit 0, server up; as a shell runs it".into(),
        },
        Launch::PosixSpawn => Row {
            id: "5p".into(),
            what: "warm command vs true, posix_spawn".into(),
            pin: m.pin,
            result: Ok(p),
            target: None,
            extra: "preload-app exit 0, server up".into(),
        },
    }
}

/// Row 5w: `wordindex stats` (release) warm (server up) vs cold (`--preloader stop`, untimed,
/// then the run: server start + preload + command), with the in-process time
/// (`FDSERVER_PRELOAD=0`: preload + command in the client) in the notes. Each sample rotates the
/// order of the three; a warm sample is the mean of 5 runs.
fn row_preload_cold(cfg: &Cfg, m: Mode, bin: &Path) -> Row {
    const WARM_RUNS: u32 = 5;
    m.settle();
    let server = preload::PreloadServer::new(bin, &format!("wordindex-{}", m.pin));
    let first = preload::output_of(bin, &["stats"], &server, false);
    assert!(first.contains(" documents, "), "wordindex stats: {first:?}");
    let built_ms = first
        .split(" index built in ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap_or("?")
        .to_string();
    let run = preload::Spawn::new(bin, &["stats"], server.env(false), true);
    let inproc = preload::Spawn::new(bin, &["stats"], server.env(true), true);
    run.run(); // warm-up (warm)
    let (mut warm, mut cold, mut local) = (Vec::new(), Vec::new(), Vec::new());
    let ns = |d: Duration| d.as_nanos() as f64;
    for i in 0..cfg.preload_pairs {
        for step in 0..3 {
            match (i + step) % 3 {
                0 => {
                    server.stop();
                    cold.push(ns(preload::time_one(&run)));
                }
                1 => warm.push(ns(timed(WARM_RUNS.into(), || run.run())) / f64::from(WARM_RUNS)),
                _ => local.push(ns(preload::time_one(&inproc))),
            }
        }
    }
    // The server ran exactly one preload per cold run, plus the first.
    let preloads = server.log().matches(" preloaded (pid ").count();
    assert_eq!(
        preloads,
        1 + cfg.preload_pairs,
        "preloads during the row:\n{}",
        server.log()
    );
    drop(server);
    let ratio: Vec<f64> = warm.iter().zip(&cold).map(|(w, c)| w / c).collect();
    let med = measure::median;
    let extra = format!(
        "cold/warm {:.0}x; in-process (PRELOAD=0) {} [{}..{}], in-process/warm {:.0}x; index build {built_ms} ms; warm sample = mean of {WARM_RUNS}",
        med(&cold) / med(&warm),
        measure::fmt_time(med(&local)),
        measure::fmt_time(measure::min(&local)),
        measure::fmt_time(measure::max(&local)),
        med(&local) / med(&warm),
    );
    Row {
        id: "5w".into(),
        what: "wordindex stats: warm vs cold".into(),
        pin: m.pin,
        result: Ok(Pairs {
            a: warm,
            b: cold,
            ratio,
            k: 1,
        }),
        // Warm at least 100x faster than cold: time ratio at most 0.01.
        target: Some((0.01, "<=0.01x")),
        extra,
    }
}

/// `--trace <what> <n>`: one side of one row, `n` times, unpinned (for strace / callgrind).
fn trace(args: &[String]) {
    let what = args.first().map(String::as_str).unwrap_or("");
    let n: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
    if what.starts_with("preload-") || what == "raw-spawn" {
        return trace_preload(what, n);
    }
    if issue13::trace(what, n) {
        return;
    }
    let _wd = fdserver_tests::watchdog("bench trace", Duration::from_secs(600));
    let mut server = BenchServer::new(CHUNK);
    let chunk = vec![7u8; CHUNK];
    let mut buf = MessageBuf::new();
    let (self0, kids0) = (
        os::rusage(libc::RUSAGE_SELF),
        os::rusage(libc::RUSAGE_CHILDREN),
    );
    match what {
        "fd-start-phases" => {
            let (mut start, mut call, mut stop) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..n {
                let t0 = std::time::Instant::now();
                let mut c = fdside::start(&mut server, None);
                let t1 = std::time::Instant::now();
                black_box(fdside::hello_call(&mut c));
                let t2 = std::time::Instant::now();
                c.stop().expect("stop");
                let t3 = std::time::Instant::now();
                start.push((t1 - t0).as_nanos() as f64);
                call.push((t2 - t1).as_nanos() as f64);
                stop.push((t3 - t2).as_nanos() as f64);
            }
            eprintln!(
                "medians: start {}  first call {}  stop {}",
                measure::fmt_time(measure::median(&start)),
                measure::fmt_time(measure::median(&call)),
                measure::fmt_time(measure::median(&stop))
            );
        }
        "fd-call" | "fd-call-deadline" => {
            let deadline = (what == "fd-call-deadline").then_some(Duration::from_secs(30));
            let mut c = fdside::start(&mut server, deadline);
            for _ in 0..n {
                black_box(fdside::hello_call(&mut c));
            }
            c.stop().expect("stop");
        }
        "raw-call" => {
            let peer = raw::pingpong_child();
            for _ in 0..n {
                raw::pingpong(peer.fd());
            }
            peer.finish();
        }
        "fd-fdcall" => {
            let mut c = fdside::start(&mut server, None);
            for _ in 0..n {
                drop(fdside::fd_call(&mut c, &mut buf));
            }
            c.stop().expect("stop");
        }
        "raw-fdcall" => {
            let peer = raw::fdpass_child();
            for _ in 0..n {
                drop(raw::fd_roundtrip(peer.fd()));
            }
            peer.finish();
        }
        "fd-bulk" => {
            let mut c = fdside::start(&mut server, None);
            fdside::bulk(&mut c, &mut buf, &chunk, n);
            c.stop().expect("stop");
        }
        "raw-bulk" => {
            let peer = raw::sink_child(CHUNK);
            raw::bulk(peer.fd(), &chunk, n);
            peer.finish();
        }
        "fd-start-calling" => {
            // Row 4f's B side in CPU time: row 4's fdserver side forked from the calling thread.
            for _ in 0..n {
                fdside::start_call_stop_with(
                    &mut server,
                    fdserver::Builder::new().fork_on_calling_thread(true),
                );
            }
        }
        "fd-start" | "fd-start-nowatch" | "fd-start-notombs" | "fd-start-bare" => {
            // Row 4's fdserver side; the variants turn the hang-up watch, the tombstones, or both
            // off (rows 4w and 4t in CPU time). FDSERVER_TRACE_EXTRA_FDS=n opens n more
            // descriptors here first (inherited by every server), as row 4t100 does.
            let watch = !matches!(what, "fd-start-nowatch" | "fd-start-bare");
            let tombs = !matches!(what, "fd-start-notombs" | "fd-start-bare");
            fdserver::__private::bench_hardening(watch, tombs);
            let extra: usize = std::env::var("FDSERVER_TRACE_EXTRA_FDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let held: Vec<std::fs::File> = (0..extra)
                .map(|_| std::fs::File::open("/dev/null").expect("open /dev/null"))
                .collect();
            for _ in 0..n {
                fdside::start_call_stop(&mut server);
            }
            drop(held);
            fdserver::__private::bench_hardening(true, true);
        }
        "fd-start-callthread" => {
            // Row 4f's other side: row 4's fdserver side forked from the calling thread.
            for _ in 0..n {
                fdside::start_call_stop_with(
                    &mut server,
                    fdserver::Builder::new().fork_on_calling_thread(true),
                );
            }
        }
        "raw-start-protocol" => {
            for _ in 0..n {
                raw::fork_protocol();
            }
        }
        "raw-start" => {
            for _ in 0..n {
                raw::fork_exit_wait();
            }
        }
        other => {
            eprintln!("unknown trace target {other:?}");
            std::process::exit(2);
        }
    }
    let (self1, kids1) = (
        os::rusage(libc::RUSAGE_SELF),
        os::rusage(libc::RUSAGE_CHILDREN),
    );
    let per = |a: libc::c_long, b: libc::c_long| (b - a) as f64 / n as f64;
    // CPU time (user + system), which other processes' load disturbs much less than wall time.
    let cpu_us = |r: &libc::rusage| {
        let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
        tv(r.ru_utime) + tv(r.ru_stime)
    };
    eprintln!(
        "per op: self minflt {:.1} nvcsw {:.2} nivcsw {:.2} cpu {:.1} us | reaped children minflt {:.1} nvcsw {:.2} nivcsw {:.2} cpu {:.1} us",
        per(self0.ru_minflt, self1.ru_minflt),
        per(self0.ru_nvcsw, self1.ru_nvcsw),
        per(self0.ru_nivcsw, self1.ru_nivcsw),
        (cpu_us(&self1) - cpu_us(&self0)) / n as f64,
        per(kids0.ru_minflt, kids1.ru_minflt),
        per(kids0.ru_nvcsw, kids1.ru_nvcsw),
        per(kids0.ru_nivcsw, kids1.ru_nivcsw),
        (cpu_us(&kids1) - cpu_us(&kids0)) / n as f64,
    );
}

/// `--trace preload-warm|preload-inprocess|raw-spawn <n>`: row 5's sides, `n` runs each after
/// one untimed run (which starts the server), with the median time and the children's page faults
/// per run (the children are the clients; the server is not ours to reap). `preload-protocol`:
/// `n` warm commands whose client is this process itself (no exec), timed phase by phase.
fn trace_preload(what: &str, n: u64) {
    let app: PathBuf = preload::preload_app().unwrap_or_else(|e| panic!("{e}"));
    let _wd = preload::watchdog("bench trace", Duration::from_secs(600));
    let server = preload::PreloadServer::new(&app, "trace");
    let spawn = match what {
        "preload-warm" | "preload-protocol" => {
            preload::Spawn::new(&app, &["exit", "0"], server.env(false), false)
        }
        "preload-inprocess" => preload::Spawn::new(&app, &["exit", "0"], server.env(true), false),
        "raw-spawn" => {
            preload::Spawn::new(&preload::trivial_program(), &[], server.env(false), false)
        }
        other => {
            eprintln!("unknown trace target {other:?}");
            std::process::exit(2);
        }
    };
    spawn.run();
    if what == "preload-protocol" {
        // This process's own environment, as a client would send it.
        let mut env = Vec::new();
        for (k, v) in std::env::vars_os() {
            use std::os::unix::ffi::OsStrExt;
            env.extend_from_slice(k.as_bytes());
            env.push(b'=');
            env.extend_from_slice(v.as_bytes());
            env.push(0);
        }
        let runs: Vec<[Duration; 5]> = (0..n)
            .map(|_| preload::protocol_run(&server, &env))
            .collect();
        let names = [
            "connect",
            "greeting",
            "request sent",
            "pid read",
            "exit read",
        ];
        let mut line = String::from("preload-protocol (cumulative medians):");
        let mut prev = 0.0;
        for (i, name) in names.iter().enumerate() {
            let v: Vec<f64> = runs.iter().map(|r| r[i].as_nanos() as f64).collect();
            let m = measure::median(&v);
            line += &format!(
                " {name} {} (+{})",
                measure::fmt_time(m),
                measure::fmt_time(m - prev)
            );
            prev = m;
        }
        eprintln!("{line}");
        return;
    }
    let kids0 = os::rusage(libc::RUSAGE_CHILDREN);
    let times: Vec<f64> = (0..n)
        .map(|_| preload::time_one(&spawn).as_nanos() as f64)
        .collect();
    let kids1 = os::rusage(libc::RUSAGE_CHILDREN);
    let per = |a: libc::c_long, b: libc::c_long| (b - a) as f64 / n as f64;
    eprintln!(
        "{what}: median {} [{}..{}] per run; children per run: minflt {:.1} nvcsw {:.2} nivcsw {:.2}, user+sys {:.0} µs",
        measure::fmt_time(measure::median(&times)),
        measure::fmt_time(measure::min(&times)),
        measure::fmt_time(measure::max(&times)),
        per(kids0.ru_minflt, kids1.ru_minflt),
        per(kids0.ru_nvcsw, kids1.ru_nvcsw),
        per(kids0.ru_nivcsw, kids1.ru_nivcsw),
        {
            let us = |r: &libc::rusage| {
                (r.ru_utime.tv_sec + r.ru_stime.tv_sec) as f64 * 1e6
                    + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) as f64
            };
            (us(&kids1) - us(&kids0)) / n as f64
        }
    );
}

/// Row 7's sandboxes: `(id, what, sandbox or why not)`. Identity and the network namespace
/// need root.
fn sandbox_rows() -> Vec<(&'static str, &'static str, Result<Sandbox, String>)> {
    use fdserver::sandbox::{Identity, Landlock, Limit, Namespace, Preset, Seccomp};
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let needs_root = |s: Sandbox| {
        if root {
            Ok(s)
        } else {
            Err("needs root".to_owned())
        }
    };
    let seccomp = Seccomp::new()
        .preset(Preset::NoNetwork)
        .preset(Preset::NoExec)
        .preset(Preset::NoNewProcesses);
    let limits = |s: Sandbox| {
        s.limit(Limit::OpenFiles(256))
            .limit(Limit::FileSize(1 << 30))
            .limit(Limit::CpuTime(Duration::from_secs(3600)))
    };
    let mut full = limits(Sandbox::new())
        .landlock(Landlock::new())
        .seccomp(seccomp.clone());
    if root {
        full = full
            .identity(Identity::user("nobody"))
            .namespace(Namespace::Network);
    }
    vec![
        (
            "7",
            if root {
                "all layers"
            } else {
                "all but user, netns"
            },
            Ok(full),
        ),
        (
            "7p",
            "caps+no_new_privs",
            Ok(Sandbox::new().no_new_privs(true)),
        ),
        ("7r", "3 rlimits", Ok(limits(Sandbox::new()))),
        (
            "7u",
            "user nobody",
            needs_root(Sandbox::new().identity(Identity::user("nobody"))),
        ),
        (
            "7n",
            "network namespace",
            needs_root(Sandbox::new().namespace(Namespace::Network)),
        ),
        (
            "7f",
            "landlock, no path",
            Ok(Sandbox::new().landlock(Landlock::new())),
        ),
        (
            "7s",
            "seccomp, 3 presets",
            Ok(Sandbox::new().seccomp(seccomp)),
        ),
    ]
}

/// Row 7: start + first call + stop of the same server in `sandbox` (A) vs without (B).
fn row_sandbox(cfg: &Cfg, m: Mode, id: &str, what: &str, sandbox: Sandbox) -> Row {
    m.settle();
    let mut sandboxed = BenchServer::new(CHUNK);
    let mut plain = BenchServer::new(CHUNK);
    let builder = fdserver::Builder::new().sandbox(sandbox);
    let p = pairs(
        cfg,
        10_000,
        &mut |k| {
            timed(k, || {
                fdside::start_call_stop_with(&mut sandboxed, builder.clone())
            })
        },
        &mut |k| timed(k, || fdside::start_call_stop(&mut plain)),
        cfg.pairs,
    );
    Row {
        id: id.into(),
        what: what.into(),
        pin: m.pin,
        result: Ok(p),
        target: None,
        extra: "A = sandboxed, B = plain".into(),
    }
}

/// A row that could not be measured (its program could not be built), saying why.
fn unavailable(id: &str, what: &str, m: &Mode, why: &str) -> Row {
    Row {
        id: id.into(),
        what: what.into(),
        pin: m.pin,
        result: Err(format!("n/a: {why}")),
        target: None,
        extra: String::new(),
    }
}
