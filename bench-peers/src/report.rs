//! Statistics and tables: the samples CSV (every sample, so tables and charts can be rebuilt),
//! medians, spread, ratios to raw on matched placement, and the placement mix.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use crate::lanes::{Lane, Row, BULK_CHUNKS, CHUNK};
use crate::measure::{HeapSample, Mode, Placement, Sample};

pub const SAMPLES_CSV: &str = "peers-samples.csv";
pub const HEAP_CSV: &str = "start-heap-samples.csv";

// ---------------------------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------------------------

const SAMPLES_HEAD: &str =
    "round,row,lane,pin,k,ns_per_op,client_cpu,helper_cpu,moves,placement,load1";

pub fn write_samples(path: &Path, samples: &[Sample]) -> std::io::Result<()> {
    let mut s = String::from(SAMPLES_HEAD);
    s.push('\n');
    for x in samples {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.1},{},{},{},{},{:.2}",
            x.round,
            x.row.id(),
            x.lane.name(),
            x.mode.code(),
            x.k,
            x.ns_per_op,
            x.client_cpu,
            x.helper_cpu,
            x.moves,
            x.placement.name(),
            x.load1
        );
    }
    std::fs::write(path, s)
}

pub fn read_samples(path: &Path) -> Result<Vec<Sample>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || {
            format!(
                "{}:{}: malformed sample line {line:?}",
                path.display(),
                i + 1
            )
        };
        if f.len() != 11 {
            return Err(bad());
        }
        out.push(Sample {
            round: f[0].parse().map_err(|_| bad())?,
            row: Row::from_id(f[1]).ok_or_else(bad)?,
            lane: Lane::from_name(f[2]).ok_or_else(bad)?,
            mode: Mode::from_code(f[3]).ok_or_else(bad)?,
            k: f[4].parse().map_err(|_| bad())?,
            ns_per_op: f[5].parse().map_err(|_| bad())?,
            client_cpu: f[6].parse().map_err(|_| bad())?,
            helper_cpu: f[7].parse().map_err(|_| bad())?,
            moves: f[8].parse().map_err(|_| bad())?,
            placement: Placement::from_name(f[9]).ok_or_else(bad)?,
            load1: f[10].parse().map_err(|_| bad())?,
        });
    }
    Ok(out)
}

const HEAP_HEAD: &str = "round,heap_mib,pages,lane,k,ns_per_op,anon_huge_kib";

pub fn write_heap(path: &Path, samples: &[HeapSample]) -> std::io::Result<()> {
    let mut s = String::from(HEAP_HEAD);
    s.push('\n');
    for x in samples {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.1},{}",
            x.round,
            x.heap_mib,
            if x.huge { "thp" } else { "4k" },
            x.lane.name(),
            x.k,
            x.ns_per_op,
            x.anon_huge_kib
        );
    }
    std::fs::write(path, s)
}

pub fn read_heap(path: &Path) -> Result<Vec<HeapSample>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let bad = || format!("{}:{}: malformed heap line {line:?}", path.display(), i + 1);
        if f.len() != 7 {
            return Err(bad());
        }
        out.push(HeapSample {
            round: f[0].parse().map_err(|_| bad())?,
            heap_mib: f[1].parse().map_err(|_| bad())?,
            huge: f[2] == "thp",
            lane: Lane::from_name(f[3]).ok_or_else(bad)?,
            k: f[4].parse().map_err(|_| bad())?,
            ns_per_op: f[5].parse().map_err(|_| bad())?,
            anon_huge_kib: f[6].parse().map_err(|_| bad())?,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// The placement a comparison is judged on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Judge {
    /// Both processes pinned to one CPU (alternating CPUs from round to round).
    Pinned,
    /// The helper pinned to one CPU, the bench to the other.
    Split,
    /// Unpinned samples in which the two processes stayed on one CPU.
    UnpinnedSame,
    /// Unpinned samples in which they stayed on two CPUs.
    UnpinnedCross,
}

impl Judge {
    pub const ALL: [Judge; 4] = [
        Judge::Pinned,
        Judge::Split,
        Judge::UnpinnedSame,
        Judge::UnpinnedCross,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Judge::Pinned => "pinned (one CPU)",
            Judge::Split => "split (two CPUs)",
            Judge::UnpinnedSame => "unpinned, same CPU",
            Judge::UnpinnedCross => "unpinned, cross CPU",
        }
    }

    fn keeps(self, s: &Sample) -> bool {
        match self {
            Judge::Pinned => matches!(s.mode, Mode::Pinned(_)),
            Judge::Split => matches!(s.mode, Mode::Split { .. }),
            Judge::UnpinnedSame => s.unpinned() && s.placement == Placement::Same,
            Judge::UnpinnedCross => s.unpinned() && s.placement == Placement::Cross,
        }
    }
}

/// Per-op times of one lane on one row under one placement.
pub fn times(samples: &[Sample], row: Row, lane: Lane, judge: Judge) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s.row == row && s.lane == lane && judge.keeps(s))
        .map(|s| s.ns_per_op)
        .collect()
}

/// `a`'s time over `b`'s on `row` under `judge`: pinned and split, the median of the per-round
/// ratios (the two samples of a round ran next to each other, placed alike) with their range;
/// unpinned, the ratio of the medians of the samples with that placement (a round's two samples
/// may have landed differently). `None` if either side has no sample (unpinned: fewer than
/// [`MIN_MATCHED`]).
pub fn ratio(samples: &[Sample], row: Row, a: Lane, b: Lane, judge: Judge) -> Option<Ratio> {
    if matches!(judge, Judge::Pinned | Judge::Split) {
        let per_round = |lane: Lane| -> BTreeMap<usize, f64> {
            samples
                .iter()
                .filter(|s| s.row == row && s.lane == lane && judge.keeps(s))
                .map(|s| (s.round, s.ns_per_op))
                .collect()
        };
        let (ta, tb) = (per_round(a), per_round(b));
        let r: Vec<f64> = ta
            .iter()
            .filter_map(|(round, x)| tb.get(round).map(|y| x / y))
            .collect();
        (!r.is_empty()).then(|| Ratio {
            value: median(&r),
            range: Some((min(&r), max(&r))),
        })
    } else {
        let (ta, tb) = (times(samples, row, a, judge), times(samples, row, b, judge));
        (ta.len() >= MIN_MATCHED && tb.len() >= MIN_MATCHED).then(|| Ratio {
            value: median(&ta) / median(&tb),
            range: None,
        })
    }
}

/// Unpinned samples of one placement each side needs before its median is compared.
pub const MIN_MATCHED: usize = 3;

pub struct Ratio {
    pub value: f64,
    pub range: Option<(f64, f64)>,
}

impl Ratio {
    fn short(&self) -> String {
        format!("{:.2}×", self.value)
    }

    fn long(&self) -> String {
        match self.range {
            Some((lo, hi)) => format!("{:.2}× [{lo:.2}–{hi:.2}]", self.value),
            None => format!("{:.2}×", self.value),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------------

/// `1.23 µs`, `45.6 ms`...
pub fn fmt_time(ns: f64) -> String {
    if ns.is_nan() {
        "–".into()
    } else if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A row's per-op time as the table shows it: bulk per 64 KiB chunk, with its throughput.
pub fn fmt_op(row: Row, ns: f64) -> String {
    if row == Row::Bulk {
        let per_chunk = ns / BULK_CHUNKS as f64;
        let gib_s = (CHUNK as f64 * BULK_CHUNKS as f64) / (ns / 1e9) / (1u64 << 30) as f64;
        format!("{}/chunk ({gib_s:.2} GiB/s)", fmt_time(per_chunk))
    } else {
        fmt_time(ns)
    }
}

/// The lanes of the summary table's columns.
pub const MAIN_LANES: [Lane; 4] = [Lane::Fdserver, Lane::Ipc, Lane::Tarpc, Lane::Procspawn];

/// The peers fdserver is judged against.
pub const PEERS: [Lane; 4] = [Lane::Ipc, Lane::IpcSpawn, Lane::Tarpc, Lane::Procspawn];

fn rows_present(samples: &[Sample]) -> Vec<Row> {
    Row::ALL
        .into_iter()
        .filter(|r| samples.iter().any(|s| s.row == *r))
        .collect()
}

fn lanes_present(samples: &[Sample], row: Row) -> Vec<Lane> {
    Lane::ALL
        .into_iter()
        .filter(|l| samples.iter().any(|s| s.row == row && s.lane == *l))
        .collect()
}

/// The summary: each lane's time over raw's, per row, pinned / unpinned same CPU / unpinned
/// cross CPU.
pub fn summary_table(samples: &[Sample]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| row | raw floor (pinned median) | fdserver / raw | ipc-channel / raw | tarpc / raw | procspawn / raw |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for row in rows_present(samples) {
        let raw = median(&times(samples, row, Lane::Raw, Judge::Pinned));
        let mut line = format!("| {} {} | {} |", row.id(), row.title(), fmt_op(row, raw));
        for lane in MAIN_LANES {
            let shown = if lane == Lane::Ipc && row == Row::Start {
                vec![Lane::Ipc, Lane::IpcSpawn]
            } else {
                vec![lane]
            };
            let mut cell = Vec::new();
            for l in shown {
                if !samples.iter().any(|x| x.row == row && x.lane == l) {
                    continue;
                }
                let parts: Vec<String> = Judge::ALL
                    .into_iter()
                    .map(|j| {
                        ratio(samples, row, l, Lane::Raw, j).map_or("–".into(), |r| r.short())
                    })
                    .collect();
                let label = if l == Lane::IpcSpawn { "spawned: " } else { "" };
                cell.push(format!("{label}{}", parts.join(" / ")));
            }
            if cell.is_empty() {
                line.push_str(" — |");
            } else {
                let _ = write!(line, " {} |", cell.join("; "));
            }
        }
        let _ = writeln!(s, "{line}");
    }
    let _ = writeln!(
        s,
        "\nEach cell: pinned (one CPU) / split (two CPUs) / unpinned samples that stayed on one CPU / \
         unpinned samples that stayed on two CPUs; time over the raw floor's under the same \
         placement (lower is better; –: no sample with that placement, or unpinned, fewer than \
         {MIN_MATCHED} on either side; —: the peer cannot do the row)."
    );
    s
}

/// Ratios this close to 1 are called level: closer than the run-to-run spread of a median.
const LEVEL: f64 = 0.03;

/// fdserver against the best peer of each row, per placement.
pub fn verdict_table(samples: &[Sample]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| row | placement | best peer | fdserver / best peer | samples fdserver, peer | verdict |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for row in rows_present(samples) {
        for judge in Judge::ALL {
            let best = PEERS
                .into_iter()
                .filter_map(|p| {
                    let t = times(samples, row, p, judge);
                    (t.len() >= MIN_MATCHED).then(|| (p, median(&t)))
                })
                .min_by(|a, b| a.1.total_cmp(&b.1));
            let Some((peer, _)) = best else {
                continue;
            };
            let Some(r) = ratio(samples, row, Lane::Fdserver, peer, judge) else {
                continue;
            };
            let verdict = if r.value < 1.0 - LEVEL {
                "fdserver faster"
            } else if r.value > 1.0 + LEVEL {
                "**fdserver slower**"
            } else {
                "level (within 3%)"
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {}, {} | {verdict} |",
                row.id(),
                judge.title(),
                peer.name(),
                r.long(),
                times(samples, row, Lane::Fdserver, judge).len(),
                times(samples, row, peer, judge).len(),
            );
        }
    }
    s
}

/// Every lane: median [min–max] and n per placement, the ratio to raw, and the placement mix.
pub fn detail_table(samples: &[Sample]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| row | lane | pinned: median [min–max] (n) | / raw | split: median (n) | / raw | unpinned same CPU: median (n) | / raw | unpinned cross CPU: median (n) | / raw | unpinned mix same/cross/mixed |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows_present(samples) {
        for lane in lanes_present(samples, row) {
            let mut line = format!("| {} | {} |", row.id(), lane.name());
            for judge in Judge::ALL {
                let t = times(samples, row, lane, judge);
                let cell = if t.is_empty() {
                    "–".to_string()
                } else if judge == Judge::Pinned {
                    format!(
                        "{} [{}–{}] ({})",
                        fmt_op(row, median(&t)),
                        fmt_time(if row == Row::Bulk {
                            min(&t) / BULK_CHUNKS as f64
                        } else {
                            min(&t)
                        }),
                        fmt_time(if row == Row::Bulk {
                            max(&t) / BULK_CHUNKS as f64
                        } else {
                            max(&t)
                        }),
                        t.len()
                    )
                } else {
                    format!("{} ({})", fmt_op(row, median(&t)), t.len())
                };
                let r = if lane == Lane::Raw {
                    "1".to_string()
                } else {
                    ratio(samples, row, lane, Lane::Raw, judge).map_or("–".into(), |r| r.long())
                };
                let _ = write!(line, " {cell} | {r} |");
            }
            let count = |p: Placement| {
                samples
                    .iter()
                    .filter(|x| x.row == row && x.lane == lane && x.unpinned() && x.placement == p)
                    .count()
            };
            let _ = writeln!(
                line,
                " {}/{}/{} |",
                count(Placement::Same),
                count(Placement::Cross),
                count(Placement::Mixed)
            );
            s.push_str(&line);
        }
    }
    s
}

/// The start-vs-heap table: median per-start time per size and page size, fdserver and raw.
pub fn heap_table(samples: &[HeapSample]) -> String {
    let mut sizes: Vec<usize> = samples.iter().map(|s| s.heap_mib).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| heap | pages | fdserver start+call+stop | raw protocol | fdserver / raw | AnonHugePages |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for mib in sizes {
        for huge in [false, true] {
            let pick = |lane: Lane| -> Vec<&HeapSample> {
                samples
                    .iter()
                    .filter(|x| x.heap_mib == mib && x.huge == huge && x.lane == lane)
                    .collect()
            };
            let (fd, raw) = (pick(Lane::Fdserver), pick(Lane::Raw));
            if fd.is_empty() && raw.is_empty() {
                continue;
            }
            let t = |v: &[&HeapSample]| median(&v.iter().map(|x| x.ns_per_op).collect::<Vec<_>>());
            let by_round: BTreeMap<usize, f64> =
                raw.iter().map(|x| (x.round, x.ns_per_op)).collect();
            let r: Vec<f64> = fd
                .iter()
                .filter_map(|x| by_round.get(&x.round).map(|y| x.ns_per_op / y))
                .collect();
            let huge_kib = fd.first().or(raw.first()).map_or(0, |x| x.anon_huge_kib);
            let _ = writeln!(
                s,
                "| {mib} MiB | {} | {} | {} | {} | {} MiB |",
                if huge { "THP" } else { "4 KiB" },
                fmt_time(t(&fd)),
                fmt_time(t(&raw)),
                if r.is_empty() {
                    "–".to_string()
                } else {
                    format!("{:.2}× [{:.2}–{:.2}]", median(&r), min(&r), max(&r))
                },
                huge_kib / 1024
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(round: usize, lane: Lane, mode: Mode, ns: f64, placement: Placement) -> Sample {
        Sample {
            round,
            row: Row::Call,
            lane,
            mode,
            k: 10,
            ns_per_op: ns,
            client_cpu: 0,
            helper_cpu: if placement == Placement::Cross { 1 } else { 0 },
            moves: i64::from(placement == Placement::Mixed),
            placement,
            load1: 1.5,
        }
    }

    #[test]
    fn samples_survive_the_csv() {
        let v = vec![
            s(0, Lane::Fdserver, Mode::Pinned(1), 1234.5, Placement::Same),
            s(
                1,
                Lane::IpcSpawn,
                Mode::Split {
                    helper: 0,
                    client: 1,
                },
                7.0,
                Placement::Cross,
            ),
            s(2, Lane::Raw, Mode::Unpinned, 99.0, Placement::Mixed),
        ];
        let path = std::env::temp_dir().join(format!("bench-peers-csv-{}", std::process::id()));
        write_samples(&path, &v).unwrap();
        let back = read_samples(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(format!("{v:?}"), format!("{back:?}"));
    }

    #[test]
    fn ratios_compare_only_samples_placed_alike() {
        use Placement::*;
        let (f, r) = (Lane::Fdserver, Lane::Raw);
        let mut v = vec![
            // Pinned: per-round ratios 2 and 4 → median 3.
            s(0, f, Mode::Pinned(0), 20.0, Same),
            s(0, r, Mode::Pinned(0), 10.0, Same),
            s(1, f, Mode::Pinned(1), 40.0, Same),
            s(1, r, Mode::Pinned(1), 10.0, Same),
            // Unpinned: fdserver same-CPU median 30, raw 15 (→ 2); cross-CPU 90 vs 30 (→ 3);
            // mixed samples count for neither.
            s(2, f, Mode::Unpinned, 1000.0, Mixed),
            s(2, r, Mode::Unpinned, 1.0, Mixed),
        ];
        for (i, (fs, rs, fc, rc)) in [
            (20.0, 15.0, 90.0, 30.0),
            (30.0, 14.0, 80.0, 29.0),
            (40.0, 16.0, 100.0, 31.0),
        ]
        .into_iter()
        .enumerate()
        {
            v.push(s(i, f, Mode::Unpinned, fs, Same));
            v.push(s(i, r, Mode::Unpinned, rs, Same));
            v.push(s(i, f, Mode::Unpinned, fc, Cross));
            v.push(s(i, r, Mode::Unpinned, rc, Cross));
        }
        let get = |j| ratio(&v, Row::Call, f, r, j).map(|x| (x.value, x.range));
        assert_eq!(get(Judge::Pinned), Some((3.0, Some((2.0, 4.0)))));
        assert_eq!(get(Judge::UnpinnedSame), Some((2.0, None)));
        assert_eq!(get(Judge::UnpinnedCross), Some((3.0, None)));
        assert_eq!(get(Judge::Split), None);
        assert_eq!(
            times(&v, Row::Call, f, Judge::UnpinnedSame),
            [20.0, 30.0, 40.0]
        );
        // Fewer than MIN_MATCHED samples of a placement on one side: no comparison.
        v.retain(|x| !(x.lane == r && x.placement == Cross && x.round == 0));
        assert!(ratio(&v, Row::Call, f, r, Judge::UnpinnedCross).is_none());
    }
}
