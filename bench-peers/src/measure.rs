//! Taking samples: a fresh helper per sample, its placement recorded, lanes alternating in
//! rounds, pinned to one CPU, split over two, and unpinned.

use std::time::{Duration, Instant};

use crate::fdside::{self, HeapHelloServer};
use crate::lanes::{start_call_stop, start_helper, Lane, Row};
use crate::os::{self, CpuSet, Heap};
use crate::peers::tarpc_lane;
use crate::raw;

/// Where the sample's two processes ran.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord, Hash)]
pub enum Placement {
    /// On one CPU throughout.
    Same,
    /// On two CPUs throughout.
    Cross,
    /// One of them moved during the sample (or, in row 3, some starts were on one CPU and
    /// some on two).
    Mixed,
}

impl Placement {
    pub const ALL: [Placement; 3] = [Placement::Same, Placement::Cross, Placement::Mixed];

    pub fn name(self) -> &'static str {
        match self {
            Placement::Same => "same",
            Placement::Cross => "cross",
            Placement::Mixed => "mixed",
        }
    }

    pub fn from_name(s: &str) -> Option<Placement> {
        Placement::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// Where the bench puts the two processes of a sample.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    /// Both on this CPU (set before the helper starts; it inherits the mask).
    Pinned(usize),
    /// The helper started on one CPU, the bench then moved to another: the cross-CPU case made
    /// repeatable. Not for row 3, whose helpers are born during the timed operation.
    Split { helper: usize, client: usize },
    /// The scheduler's choice.
    Unpinned,
}

/// The kinds of [`Mode`] a run uses (each round picks the CPUs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ModeKind {
    Pinned,
    Split,
    Unpinned,
}

impl ModeKind {
    pub fn from_name(s: &str) -> Option<ModeKind> {
        match s {
            "pinned" => Some(ModeKind::Pinned),
            "split" => Some(ModeKind::Split),
            "unpinned" => Some(ModeKind::Unpinned),
            _ => None,
        }
    }
}

impl Mode {
    /// The CSV form: `-` (unpinned), `N` (pinned to CPU N), `H>C` (split: helper on H, bench on
    /// C).
    pub fn code(self) -> String {
        match self {
            Mode::Pinned(c) => c.to_string(),
            Mode::Split { helper, client } => format!("{helper}>{client}"),
            Mode::Unpinned => "-".into(),
        }
    }

    pub fn from_code(s: &str) -> Option<Mode> {
        if s == "-" {
            return Some(Mode::Unpinned);
        }
        if let Some((h, c)) = s.split_once('>') {
            return Some(Mode::Split {
                helper: h.parse().ok()?,
                client: c.parse().ok()?,
            });
        }
        s.parse().ok().map(Mode::Pinned)
    }

    /// The mask for starting the helper.
    fn before(self, all: &CpuSet) {
        match self {
            Mode::Pinned(c) | Mode::Split { helper: c, .. } => CpuSet::only(c).apply(),
            Mode::Unpinned => all.apply(),
        }
    }

    /// The bench's own mask once the helper runs.
    fn after(self) {
        if let Mode::Split { client, .. } = self {
            CpuSet::only(client).apply();
        }
    }
}

/// One sample: `k` operations of one lane on one fresh helper (row 3: `k` fresh helpers).
#[derive(Clone, Debug)]
pub struct Sample {
    pub round: usize,
    pub row: Row,
    pub lane: Lane,
    pub mode: Mode,
    pub k: u64,
    pub ns_per_op: f64,
    /// The bench's CPU and the helper's at the end of the sample (row 3: of its last start).
    pub client_cpu: i32,
    pub helper_cpu: i32,
    /// CPU migrations of both processes during the timed operations (-1: not available).
    /// Row 3: the number of starts whose helper ran on another CPU than the bench.
    pub moves: i64,
    pub placement: Placement,
    pub load1: f64,
}

impl Sample {
    pub fn unpinned(&self) -> bool {
        self.mode == Mode::Unpinned
    }
}

/// What a run measures.
pub struct Plan {
    pub rounds: usize,
    pub rows: Vec<Row>,
    pub lanes: Vec<Lane>,
    /// Divides the operations per sample (quick runs).
    pub ops_divisor: u64,
    pub modes: Vec<ModeKind>,
}

/// Runs the plan: for each round, each row, each placement mode, each lane (their order rotated
/// from round to round), one sample. Prints progress to stderr.
pub fn run(plan: &Plan, all_cpus: &CpuSet) -> Vec<Sample> {
    let cpus = all_cpus.cpus();
    let mut out = Vec::new();
    for round in 0..plan.rounds {
        let t = Instant::now();
        for &row in &plan.rows {
            let lanes: Vec<Lane> = plan.lanes.iter().copied().filter(|l| l.does(row)).collect();
            let n = cpus.len();
            let mut modes: Vec<Mode> = plan
                .modes
                .iter()
                .filter_map(|kind| match kind {
                    ModeKind::Pinned => Some(Mode::Pinned(cpus[round % n])),
                    ModeKind::Split if n > 1 && row != Row::Start => Some(Mode::Split {
                        helper: cpus[round % n],
                        client: cpus[(round + 1) % n],
                    }),
                    ModeKind::Split => None,
                    ModeKind::Unpinned => Some(Mode::Unpinned),
                })
                .collect();
            let len = modes.len();
            modes.rotate_left(round % len.max(1));
            for mode in modes {
                let n = lanes.len();
                for i in 0..n {
                    let lane = lanes[(i + round) % n];
                    let k = (row.ops_per_sample() / plan.ops_divisor).max(1);
                    os::watchdog(300);
                    out.push(sample(round, row, lane, mode, k, all_cpus));
                    os::watchdog(0);
                }
            }
        }
        all_cpus.apply();
        eprintln!(
            "round {}/{} done in {:.1} s, load average {:.2}",
            round + 1,
            plan.rounds,
            t.elapsed().as_secs_f64(),
            os::loadavg()[0]
        );
    }
    out
}

/// One sample of `lane` on `row`.
pub fn sample(round: usize, row: Row, lane: Lane, mode: Mode, k: u64, all: &CpuSet) -> Sample {
    mode.before(all);
    let load1 = os::loadavg()[0];
    // The helpers are forked: the bench must have no other thread (nothing may hold a lock at
    // the fork), and no peer may have left one behind. fdserver's own threads (its fork thread
    // per server type, its reaper) are parked or in `poll` between starts, holding nothing.
    assert_eq!(
        os::foreign_threads(),
        1,
        "the bench must stay single-threaded (but for fdserver's own threads)"
    );
    let (ns_per_op, client_cpu, helper_cpu, moves, placement) = if row == Row::Start {
        let rt = (lane == Lane::Tarpc).then(tarpc_lane::runtime);
        for _ in 0..row.warmup_ops() {
            start_call_stop(lane, rt.as_ref());
        }
        let mut total = Duration::ZERO;
        let mut cross = 0;
        let mut last = None;
        for _ in 0..k {
            let op = start_call_stop(lane, rt.as_ref());
            total += op.elapsed;
            if op.helper_cpu != op.client_cpu {
                cross += 1;
            }
            last = Some(op);
        }
        let last = last.expect("k >= 1");
        let placement = match cross {
            0 => Placement::Same,
            c if c == k => Placement::Cross,
            _ => Placement::Mixed,
        };
        (
            total.as_nanos() as f64 / k as f64,
            last.client_cpu,
            last.helper_cpu,
            cross as i64,
            placement,
        )
    } else {
        let mut helper = start_helper(row, lane);
        mode.after();
        for _ in 0..row.warmup_ops() {
            helper.op(true);
        }
        let (me, pid) = (os::my_pid(), helper.pid());
        let before = (os::migrations(me), os::migrations(pid));
        let t = Instant::now();
        for _ in 0..k {
            helper.op(false);
        }
        let elapsed = t.elapsed();
        let after = (os::migrations(me), os::migrations(pid));
        let client_cpu = os::this_cpu();
        let helper_cpu = os::last_cpu(pid).unwrap_or(-1);
        helper.stop();
        let moves = match (before, after) {
            ((Some(a0), Some(b0)), (Some(a1), Some(b1))) => ((a1 - a0) + (b1 - b0)) as i64,
            _ => -1,
        };
        let placement = if moves > 0 {
            Placement::Mixed
        } else if client_cpu == helper_cpu {
            Placement::Same
        } else {
            Placement::Cross
        };
        (
            elapsed.as_nanos() as f64 / k as f64,
            client_cpu,
            helper_cpu,
            moves,
            placement,
        )
    };
    Sample {
        round,
        row,
        lane,
        mode,
        k,
        ns_per_op,
        client_cpu,
        helper_cpu,
        moves,
        placement,
        load1,
    }
}

/// One sample of the start-vs-heap chart.
#[derive(Clone, Debug)]
pub struct HeapSample {
    pub round: usize,
    pub heap_mib: usize,
    pub huge: bool,
    /// `fdserver` or `raw`.
    pub lane: Lane,
    pub k: u64,
    pub ns_per_op: f64,
    /// How much of the heap the kernel backed with huge pages.
    pub anon_huge_kib: u64,
}

/// Start cost against the size of a touched heap the server's value holds (fdserver) or the
/// process holds (raw), 4 KiB pages (`MADV_NOHUGEPAGE`) vs transparent huge pages
/// (`MADV_HUGEPAGE`), both processes on one CPU (alternating CPUs from round to round).
pub fn run_heap(sizes_mib: &[usize], rounds: usize, all_cpus: &CpuSet) -> Vec<HeapSample> {
    let cpus = all_cpus.cpus();
    let mut out = Vec::new();
    for &mib in sizes_mib {
        for huge in [false, true] {
            let t = Instant::now();
            let mut server = HeapHelloServer {
                heap: Heap::new(mib << 20, huge),
            };
            let anon_huge_kib = server.heap.anon_huge_kib();
            // About 30 ms of starts per sample, at least 2.
            let k = (30_000 / (200 + 60 * mib as u64)).clamp(2, 40);
            for round in 0..rounds {
                CpuSet::only(cpus[round % cpus.len()]).apply();
                let order = if round % 2 == 0 {
                    [Lane::Fdserver, Lane::Raw]
                } else {
                    [Lane::Raw, Lane::Fdserver]
                };
                for lane in order {
                    os::watchdog(300);
                    let mut op = || match lane {
                        Lane::Fdserver => fdside::heap_start_call_stop(&mut server),
                        _ => raw::fork_protocol(None),
                    };
                    op(); // warm-up
                    let t = Instant::now();
                    for _ in 0..k {
                        op();
                    }
                    let ns = t.elapsed().as_nanos() as f64 / k as f64;
                    os::watchdog(0);
                    out.push(HeapSample {
                        round,
                        heap_mib: mib,
                        huge,
                        lane,
                        k,
                        ns_per_op: ns,
                        anon_huge_kib,
                    });
                }
            }
            all_cpus.apply();
            assert_eq!(server.heap.bytes(), mib << 20);
            drop(server);
            eprintln!(
                "heap {mib} MiB {}: {:.1} s (AnonHugePages {anon_huge_kib} KiB)",
                if huge { "THP" } else { "4K" },
                t.elapsed().as_secs_f64()
            );
        }
    }
    out
}
