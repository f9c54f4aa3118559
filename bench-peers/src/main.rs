//! # fdserver against its peers
//!
//! One binary runs fdserver, the raw syscall floor (hand-written libc), ipc-channel, tarpc and
//! procspawn on the same rows, and writes a markdown report, every sample as CSV, and SVG
//! charts. It is not a member of the fdserver workspace (CI does not build it); it has its own
//! `Cargo.lock`.
//!
//! ```text
//! cargo run --release --manifest-path bench-peers/Cargo.toml                  # full run, writes docs/bench/
//! cargo run --release --manifest-path bench-peers/Cargo.toml -- --quick       # ~15 s, writes to /tmp
//! cargo run --release --manifest-path bench-peers/Cargo.toml -- --counts      # syscalls and context switches
//! cargo run --release --manifest-path bench-peers/Cargo.toml -- --render      # tables and SVGs again from the CSVs
//! ```
//!
//! Options: `--out DIR`, `--rounds N`, `--rows 1,2,3,4`, `--lanes fdserver,raw,...`,
//! `--modes pinned,split,unpinned`, `--no-heap`, `--heap-sizes 2,16,64,256,1024`,
//! `--heap-rounds N`, `--no-strace` (with `--counts`). See `bench-peers/README.md` for the
//! rows, the method and how to read the output.

mod charts;
mod counts;
mod fdside;
mod lanes;
mod measure;
mod os;
mod peers;
mod raw;
mod report;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use lanes::{Lane, Row};
use measure::{ModeKind, Plan};
use os::CpuSet;

const USAGE: &str = "usage: fdserver-bench-peers [--quick] [--out DIR] [--rounds N] [--rows 1,2,3,4] \
[--lanes NAME,...] [--modes pinned,split,unpinned] [--no-heap] [--heap-sizes MIB,...] [--heap-rounds N]
       fdserver-bench-peers --counts [--rows ...] [--lanes ...] [--no-strace] [--out DIR]
       fdserver-bench-peers --render [--out DIR]
lanes: fdserver fdserver-stream fdserver-typed-dup raw ipc-channel ipc-channel-spawn tarpc procspawn";

struct Args {
    quick: bool,
    counts: bool,
    render_only: bool,
    strace: bool,
    out: Option<PathBuf>,
    rounds: Option<usize>,
    rows: Vec<Row>,
    lanes: Vec<Lane>,
    modes: Vec<ModeKind>,
    heap: bool,
    heap_sizes: Option<Vec<usize>>,
    heap_rounds: Option<usize>,
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}\n{USAGE}");
    std::process::exit(2)
}

fn list<T>(v: &str, parse: impl Fn(&str) -> Option<T>) -> Vec<T> {
    v.split(',')
        .map(|x| parse(x.trim()).unwrap_or_else(|| fail(&format!("unknown value {x:?}"))))
        .collect()
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Args {
    let mut a = Args {
        quick: false,
        counts: false,
        render_only: false,
        strace: true,
        out: None,
        rounds: None,
        rows: Row::ALL.to_vec(),
        lanes: Lane::ALL.to_vec(),
        modes: vec![ModeKind::Pinned, ModeKind::Split, ModeKind::Unpinned],
        heap: true,
        heap_sizes: None,
        heap_rounds: None,
    };
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| fail(&format!("{arg} needs a value")))
        };
        match arg.as_str() {
            "--quick" => a.quick = true,
            "--counts" => a.counts = true,
            "--render" => a.render_only = true,
            "--no-strace" => a.strace = false,
            "--no-heap" => a.heap = false,
            "--out" => a.out = Some(PathBuf::from(value())),
            "--rounds" => a.rounds = Some(value().parse().unwrap_or_else(|_| fail("--rounds N"))),
            "--heap-rounds" => {
                a.heap_rounds = Some(value().parse().unwrap_or_else(|_| fail("--heap-rounds N")))
            }
            "--rows" => a.rows = list(&value(), Row::from_id),
            "--lanes" => a.lanes = list(&value(), Lane::from_name),
            "--heap-sizes" => a.heap_sizes = Some(list(&value(), |x| x.parse().ok())),
            "--modes" => a.modes = list(&value(), ModeKind::from_name),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0)
            }
            other => fail(&format!("unknown argument {other:?}")),
        }
    }
    if !a.lanes.contains(&Lane::Raw) && !a.counts {
        fail("the raw lane is the reference of every ratio: keep it in --lanes");
    }
    a
}

fn main() {
    // A procspawn child runs its function here and exits; an ipc-channel-spawn helper too.
    procspawn::init();
    if let Ok(name) = std::env::var(peers::ipc_lane::SPAWN_VAR) {
        peers::ipc_lane::spawned_main(name);
    }
    if std::env::var_os("CARGO").is_some() {
        // Under `cargo run`, LD_LIBRARY_PATH lists cargo's and the toolchain's directories: every
        // program this bench execs (the spawned peers) would search them for its libraries
        // first (~100 more failed `openat`/`newfstatat` per exec). Users' programs do not run
        // that way. The bench is single-threaded here.
        std::env::remove_var("LD_LIBRARY_PATH");
    }
    let all = CpuSet::current();
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("--trace") {
        let v: Vec<String> = argv.skip(1).collect();
        let (Some(row), Some(lane), Some(n)) = (
            v.first().and_then(|r| Row::from_id(r)),
            v.get(1).and_then(|l| Lane::from_name(l)),
            v.get(2).and_then(|n| n.parse().ok()),
        ) else {
            fail("--trace ROW LANE N")
        };
        counts::trace_main(row, lane, n, &all);
        return;
    }
    let args = parse_args(argv);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = args.out.clone().unwrap_or_else(|| {
        if args.quick {
            std::env::temp_dir().join("fdserver-bench-peers")
        } else {
            root.join("docs/bench")
        }
    });
    std::fs::create_dir_all(&out).unwrap_or_else(|e| fail(&format!("{}: {e}", out.display())));

    if args.render_only {
        render(&out);
        println!("rebuilt {} and the charts", out.join(REPORT_FILE).display());
        return;
    }
    let info = RunInfo::collect(&root, &all);
    if args.counts {
        let t = Instant::now();
        let body = counts::run(&args.rows, &args.lanes, &all, args.strace);
        let mut md = info.header("counts", t.elapsed().as_secs_f64());
        md.push_str(&body);
        let path = out.join("peers-counts.md");
        std::fs::write(&path, &md).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
        println!("{md}\nwritten: {}", path.display());
        return;
    }

    let plan = Plan {
        rounds: args.rounds.unwrap_or(if args.quick { 5 } else { 31 }),
        rows: args.rows.clone(),
        lanes: args.lanes.clone(),
        ops_divisor: if args.quick { 4 } else { 1 },
        modes: args.modes.clone(),
    };
    eprintln!(
        "bench-peers: {} rounds, rows {:?}, CPUs {:?}, load average {:?}, writing to {}",
        plan.rounds,
        plan.rows.iter().map(|r| r.id()).collect::<Vec<_>>(),
        all.cpus(),
        info.load_start,
        out.display()
    );
    let t = Instant::now();
    let samples = measure::run(&plan, &all);
    let samples_csv = out.join(report::SAMPLES_CSV);
    report::write_samples(&samples_csv, &samples)
        .unwrap_or_else(|e| fail(&format!("{}: {e}", samples_csv.display())));
    if args.heap {
        let sizes = args.heap_sizes.clone().unwrap_or_else(|| {
            if args.quick {
                vec![2, 16, 64]
            } else {
                vec![2, 16, 64, 256, 1024]
            }
        });
        let rounds = args.heap_rounds.unwrap_or(if args.quick { 3 } else { 7 });
        let h = measure::run_heap(&sizes, rounds, &all);
        let heap_csv = out.join(report::HEAP_CSV);
        report::write_heap(&heap_csv, &h)
            .unwrap_or_else(|e| fail(&format!("{}: {e}", heap_csv.display())));
    } else {
        // Not measured in this run: no older samples in its report.
        let _ = std::fs::remove_file(out.join(report::HEAP_CSV));
    }
    let mut header = info.header(
        &format!(
            "{} rounds{}",
            plan.rounds,
            if args.quick { ", quick" } else { "" }
        ),
        t.elapsed().as_secs_f64(),
    );
    let loads: Vec<f64> = samples.iter().map(|s| s.load1).collect();
    let _ = writeln!(
        header,
        "1-minute load average at the samples: median {:.2}, max {:.2}.\n",
        report::median(&loads),
        report::max(&loads)
    );
    for (file, text) in [(HEADER_FILE, header), (CAPTION_FILE, info.caption())] {
        let path = out.join(file);
        std::fs::write(&path, text).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    }
    let md = render(&out);
    println!(
        "{md}\nwritten: {} (and the CSVs and SVGs beside it)",
        out.join(REPORT_FILE).display()
    );
}

/// The report, rebuilt from the files below by `--render`.
const REPORT_FILE: &str = "peers.md";
/// The run's header (machine, commit, versions, load).
const HEADER_FILE: &str = "peers-header.md";
/// The charts' caption (date, commit, load).
const CAPTION_FILE: &str = "peers-caption.txt";

/// Builds `peers.md` and the two charts from the header and the CSVs in `out`.
fn render(out: &Path) -> String {
    let mut md = std::fs::read_to_string(out.join(HEADER_FILE)).unwrap_or_default();
    match report::read_samples(&out.join(report::SAMPLES_CSV)) {
        Ok(samples) => {
            let _ = writeln!(
                md,
                "#### Time over the raw floor\n\n{}",
                report::summary_table(&samples)
            );
            let _ = writeln!(
                md,
                "#### fdserver against the best peer\n\n{}",
                report::verdict_table(&samples)
            );
            let _ = writeln!(md, "#### Every lane\n\n{}", report::detail_table(&samples));
        }
        Err(e) => eprintln!("no peer samples: {e}"),
    }
    match report::read_heap(&out.join(report::HEAP_CSV)) {
        Ok(heap) => {
            let _ = writeln!(
                md,
                "#### Start cost against heap size (pinned)\n\n{}",
                report::heap_table(&heap)
            );
        }
        Err(e) => eprintln!("no heap samples: {e}"),
    }
    let path = out.join(REPORT_FILE);
    std::fs::write(&path, &md).unwrap_or_else(|e| fail(&format!("{}: {e}", path.display())));
    let caption = std::fs::read_to_string(out.join(CAPTION_FILE))
        .unwrap_or_else(|_| "redrawn from the recorded samples".into());
    draw_charts(out, caption.trim());
    md
}

/// Draws `peers.svg` and `start-heap.svg` from the CSVs in `out`.
fn draw_charts(out: &Path, caption: &str) {
    match report::read_samples(&out.join(report::SAMPLES_CSV)) {
        Ok(s) => {
            let path = out.join("peers.svg");
            let title = format!(
                "fdserver and its peers, time per operation over the raw floor ({caption})"
            );
            if let Err(e) = charts::peers_chart(&path, &s, &title) {
                eprintln!("peers.svg: {e}");
            }
        }
        Err(e) => eprintln!("no peers chart: {e}"),
    }
    match report::read_heap(&out.join(report::HEAP_CSV)) {
        Ok(h) => {
            let path = out.join("start-heap.svg");
            let title = format!("start + first call + stop against heap size, pinned ({caption})");
            if let Err(e) = charts::heap_chart(&path, &h, &title) {
                eprintln!("start-heap.svg: {e}");
            }
        }
        Err(e) => eprintln!("no heap chart: {e}"),
    }
}

/// What the report says about the machine and the run.
struct RunInfo {
    date: String,
    commit: String,
    kernel: String,
    cpu: String,
    cpus: usize,
    thp: String,
    versions: String,
    load_start: [f64; 3],
}

impl RunInfo {
    fn collect(root: &Path, all: &CpuSet) -> RunInfo {
        let sh = |cmd: &mut Command| {
            cmd.output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let commit =
            sh(Command::new("git")
                .arg("-C")
                .arg(root)
                .args(["rev-parse", "--short", "HEAD"]))
            .map(|c| {
                let dirty = sh(Command::new("git").arg("-C").arg(root).args([
                    "status",
                    "--porcelain",
                    "--untracked-files=no",
                ]))
                .is_some_and(|s| !s.is_empty());
                if dirty {
                    format!("{c} + uncommitted changes")
                } else {
                    c
                }
            })
            .unwrap_or_else(|| "unknown".into());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .unwrap_or_default()
            .trim()
            .to_string();
        RunInfo {
            date: utc_now(),
            commit,
            kernel: sh(Command::new("uname").arg("-r")).unwrap_or_default(),
            cpu,
            cpus: all.cpus().len(),
            thp,
            versions: versions(),
            load_start: os::loadavg(),
        }
    }

    fn header(&self, what: &str, secs: f64) -> String {
        let end = os::loadavg();
        format!(
            "### Run of {} ({what}, {secs:.0} s)\n\n\
             - fdserver commit {}; peers: {}\n\
             - {} CPUs ({}), Linux {}, THP `{}`\n\
             - load average (1/5/15 min) at the start {:.2} {:.2} {:.2}, at the end {:.2} {:.2} {:.2}\n\n",
            self.date,
            self.commit,
            self.versions,
            self.cpus,
            self.cpu,
            self.kernel,
            self.thp,
            self.load_start[0],
            self.load_start[1],
            self.load_start[2],
            end[0],
            end[1],
            end[2],
        )
    }

    fn caption(&self) -> String {
        format!(
            "{}, commit {}, load {:.2}",
            self.date, self.commit, self.load_start[0]
        )
    }
}

/// The peers' versions, from this crate's Cargo.lock (procspawn brings its own ipc-channel).
fn versions() -> String {
    let lock = include_str!("../Cargo.lock");
    let mut out = Vec::new();
    for name in ["ipc-channel", "tarpc", "procspawn", "tokio"] {
        let needle = format!("name = \"{name}\"\nversion = \"");
        let found: Vec<&str> = lock
            .match_indices(&needle)
            .filter_map(|(i, _)| {
                let rest = &lock[i + needle.len()..];
                rest.find('"').map(|end| &rest[..end])
            })
            .collect();
        if !found.is_empty() {
            out.push(format!("{name} {}", found.join(" and ")));
        }
    }
    out.join(", ")
}

/// `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    // SAFETY: time(NULL) and gmtime_r into a local, zero-initialised struct.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::gmtime_r(&t, &mut tm);
        format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min
        )
    }
}
