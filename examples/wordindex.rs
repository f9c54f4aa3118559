//! A preloaded command-line tool (the preloader example, Rails-Spring style).
//!
//! The preload generates a synthetic corpus (200,000 documents of 40 words drawn from a 50,000-word
//! vocabulary with a Zipf-like distribution, deterministically) and builds an inverted index over
//! it: a few hundred milliseconds of genuine work in a release build. Every command then runs in
//! a worker forked from the warm template, with your terminal, arguments, environment and
//! working directory.
//!
//! ```text
//! cargo run --release --example wordindex -- search kaso tibe   # documents with both words
//! cargo run --release --example wordindex -- top 5              # most frequent words
//! cargo run --release --example wordindex -- stats
//! cargo run --release --example wordindex -- --preloader status # server, templates, memory
//! cargo run --release --example wordindex -- --preloader stop
//! cargo run --release --example wordindex -- --preloader restart # fresh server, preloaded
//! cargo run --release --example wordindex -- --preloader serve  # a server logging here
//! cargo run --release --example wordindex -- --help             # no server, no preload
//! FDSERVER_PRELOAD_IDLE_TIMEOUT=30m cargo run --release --example wordindex -- stats
//! FDSERVER_PRELOAD=0 cargo run --release --example wordindex -- stats   # without the preloader
//! FDSERVER_PRELOAD_VERBOSE=1 cargo run --release --example wordindex -- stats  # says how it ran
//! ```

use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Instant;

use fdserver::preload::{Application, Preloader};

const USAGE: &str =
    "usage: wordindex search WORD... | top [N] | stats | --help | --version | --preloader status|stop|restart|serve";
const DOCS: u32 = 200_000;
const WORDS_PER_DOC: usize = 40;
const VOCABULARY: usize = 50_000;

#[derive(Default)]
struct Index {
    vocabulary: Vec<String>,
    ranks: HashMap<String, usize>,
    /// Documents containing each word, by rank, ascending.
    postings: Vec<Vec<u32>>,
    frequency: Vec<(u64, usize)>,
    built_in_ms: u128,
}

#[derive(Clone, Default)]
struct WordIndex {
    index: Arc<Index>,
}

/// A small deterministic generator (xorshift64*), so the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn make_word(mut n: usize) -> String {
    const SYLLABLES: [&str; 24] = [
        "ka", "so", "ti", "be", "ru", "mo", "la", "ne", "vi", "do", "pe", "xu", "ga", "ri", "to",
        "me", "fa", "lo", "si", "nu", "ze", "ha", "jo", "wy",
    ];
    let mut w = String::new();
    loop {
        w.push_str(SYLLABLES[n % SYLLABLES.len()]);
        n /= SYLLABLES.len();
        if n == 0 {
            break;
        }
    }
    w
}

fn build() -> Index {
    let start = Instant::now();
    let vocabulary: Vec<String> = (0..VOCABULARY).map(make_word).collect();
    let ranks: HashMap<String, usize> = vocabulary.iter().cloned().zip(0..).collect();
    let mut postings: Vec<Vec<u32>> = vec![Vec::new(); VOCABULARY];
    let mut counts = vec![0u64; VOCABULARY];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for doc in 0..DOCS {
        for _ in 0..WORDS_PER_DOC {
            // Zipf-like: square a uniform number so low ranks are much more frequent.
            let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
            let rank = ((u * u) * VOCABULARY as f64) as usize;
            counts[rank] += 1;
            let list = &mut postings[rank];
            if list.last() != Some(&doc) {
                list.push(doc);
            }
        }
    }
    let mut frequency: Vec<(u64, usize)> = counts.iter().copied().zip(0..).collect();
    frequency.sort_unstable_by(|a, b| b.cmp(a));
    Index {
        vocabulary,
        ranks,
        postings,
        frequency,
        built_in_ms: start.elapsed().as_millis(),
    }
}

impl Application for WordIndex {
    fn name(&self) -> &str {
        "wordindex"
    }

    fn preload(&mut self, _key: &str) -> Result<(), fdserver::BoxError> {
        self.index = Arc::new(build());
        Ok(())
    }

    /// `--help`, `--version` and no arguments need no index: they run here, at once, without
    /// starting (or asking) the preloader.
    fn run_without_preload(&mut self, args: &[OsString]) -> Option<i32> {
        match args.first().and_then(|a| a.to_str()) {
            None => {
                eprintln!("{USAGE}");
                Some(2)
            }
            Some("--help" | "-h") => {
                println!("{USAGE}");
                Some(0)
            }
            Some("--version") => {
                println!("wordindex {}", env!("CARGO_PKG_VERSION"));
                Some(0)
            }
            _ => None,
        }
    }

    fn run(&mut self, args: Vec<OsString>) -> i32 {
        let args: Vec<String> = args
            .into_iter()
            .filter_map(|a| a.into_string().ok())
            .collect();
        let ix = &self.index;
        match args.first().map(String::as_str) {
            Some("search") if args.len() > 1 => {
                let mut lists: Vec<&Vec<u32>> = Vec::new();
                for w in &args[1..] {
                    match ix.ranks.get(w) {
                        Some(&r) => lists.push(&ix.postings[r]),
                        None => {
                            println!("0 documents ({w:?} is not in the index)");
                            return 1;
                        }
                    }
                }
                lists.sort_by_key(|l| l.len());
                let mut hits: Vec<u32> = lists[0].clone();
                for l in &lists[1..] {
                    hits.retain(|d| l.binary_search(d).is_ok());
                }
                let shown: Vec<String> = hits.iter().take(10).map(u32::to_string).collect();
                println!("{} documents: {}", hits.len(), shown.join(" "));
                if hits.is_empty() {
                    1
                } else {
                    0
                }
            }
            Some("top") => {
                let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
                for (count, rank) in ix.frequency.iter().take(n) {
                    println!("{count:>8} {}", ix.vocabulary[*rank]);
                }
                0
            }
            Some("stats") => {
                println!(
                    "{} documents, {} distinct words, index built in {} ms (worker pid {})",
                    DOCS,
                    ix.postings.iter().filter(|l| !l.is_empty()).count(),
                    ix.built_in_ms,
                    std::process::id()
                );
                0
            }
            _ => {
                eprintln!("{USAGE}");
                2
            }
        }
    }
}

fn main() {
    Preloader::new(WordIndex::default()).main()
}
