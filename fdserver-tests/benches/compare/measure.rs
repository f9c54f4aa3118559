//! Paired A/B measurement and the result table.

use std::time::{Duration, Instant};

/// One side's timed batch: runs `k` operations and returns how long they took.
pub type Batch<'a> = dyn FnMut(u64) -> Duration + 'a;

/// Per-operation times (ns) of A (fdserver) and B (raw), sample by sample, and the per-pair
/// ratios A/B.
pub struct Pairs {
    pub a: Vec<f64>,
    pub b: Vec<f64>,
    pub ratio: Vec<f64>,
    /// Operations per sample.
    pub k: u64,
}

fn per_op(d: Duration, k: u64) -> f64 {
    d.as_nanos() as f64 / k as f64
}

/// Picks how many operations make a sample of about `target` for the slower of the two sides
/// (and warms both up on the way).
pub fn calibrate(target: Duration, max_k: u64, a: &mut Batch<'_>, b: &mut Batch<'_>) -> u64 {
    // Discarded warm-up (first fork, first fault-in of the code paths).
    a(1);
    b(1);
    let mut k = 1;
    loop {
        let slow = a(k).max(b(k));
        if slow >= target / 8 || k >= max_k {
            let want = (target.as_nanos() as f64 / per_op(slow, k)).round() as u64;
            return want.clamp(1, max_k);
        }
        k = (k * 4).min(max_k);
    }
}

/// Runs `n` pairs of samples of `k` operations each, alternating which side goes first
/// (A B, B A, A B, ...) so that drift and warm-up favour neither.
pub fn run_pairs(n: usize, k: u64, a: &mut Batch<'_>, b: &mut Batch<'_>) -> Pairs {
    let mut out = Pairs {
        a: Vec::with_capacity(n),
        b: Vec::with_capacity(n),
        ratio: Vec::with_capacity(n),
        k,
    };
    for i in 0..n {
        let (ta, tb) = if i % 2 == 0 {
            let ta = a(k);
            (ta, b(k))
        } else {
            let tb = b(k);
            (a(k), tb)
        };
        let (ta, tb) = (per_op(ta, k), per_op(tb, k));
        out.a.push(ta);
        out.b.push(tb);
        out.ratio.push(ta / tb);
    }
    out
}

/// Times `k` runs of `f`.
pub fn timed(k: u64, mut f: impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..k {
        f();
    }
    t.elapsed()
}

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

/// `1.23 µs`, `45.6 ms`...
pub fn fmt_time(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A line of the table.
pub struct Row {
    pub id: String,
    pub what: String,
    pub pin: &'static str,
    pub result: Result<Pairs, String>,
    /// Largest acceptable median time ratio fdserver/raw, and how the target is phrased.
    pub target: Option<(f64, &'static str)>,
    pub extra: String,
}

pub fn print_table(rows: &[Row]) {
    let head = format!(
        "{:<4} {:<44} {:<5} {:>31} {:>31} {:>22} {:<12} {}",
        "row",
        "fdserver vs raw (per op)",
        "pin",
        "fdserver median [min..max]",
        "raw median [min..max]",
        "fd/raw median [range]",
        "target",
        "notes"
    );
    println!("{head}");
    println!("{}", "-".repeat(head.chars().count() + 10));
    for r in rows {
        match &r.result {
            Err(text) => println!("{:<4} {:<44} {:<5} {}", r.id, r.what, r.pin, text),
            Ok(p) => {
                let side = |v: &[f64]| {
                    format!(
                        "{} [{}..{}]",
                        fmt_time(median(v)),
                        fmt_time(min(v)),
                        fmt_time(max(v))
                    )
                };
                let ratio = median(&p.ratio);
                let (target, verdict) = match r.target {
                    Some((limit, text)) => (
                        text.to_string(),
                        if ratio <= limit { "met" } else { "MISSED" },
                    ),
                    None => ("-".to_string(), ""),
                };
                let ratio = format!("{ratio:.2}x [{:.2}-{:.2}]", min(&p.ratio), max(&p.ratio));
                let target = format!("{target} {verdict}");
                let notes = format!("n={}x{} {}", p.ratio.len(), p.k, r.extra);
                println!(
                    "{:<4} {:<44} {:<5} {:>31} {:>31} {:>22} {:<12} {}",
                    r.id,
                    r.what,
                    r.pin,
                    side(&p.a),
                    side(&p.b),
                    ratio,
                    target,
                    notes
                );
            }
        }
    }
}
