//! The main job: a real allocation-heavy workload, then the ten lines holding the most memory.
//!
//! It generates a text corpus of a few megabytes, tokenizes it, builds an inverted index
//! (word → postings) and a bigram table, keeps per-document term vectors, then drops part of it
//! and prints what is still live, by line, with current and peak traced memory.
//!
//!     cargo run --release --example top

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

/// A small deterministic generator (xorshift), so every run builds the same corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Zipf-like: small numbers much more often than big ones.
    fn skewed(&mut self, n: u64) -> u64 {
        let a = self.next() % n + 1;
        self.next() % a
    }
}

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "da", "fe", "go", "hu", "ji", "pa", "qe", "wo",
];

fn vocabulary(rng: &mut Rng, size: usize) -> Vec<String> {
    (0..size)
        .map(|_| {
            let syllables = 1 + rng.next() % 4;
            (0..syllables)
                .map(|_| SYLLABLES[(rng.next() % SYLLABLES.len() as u64) as usize])
                .collect::<String>()
        })
        .collect()
}

fn generate_corpus(rng: &mut Rng, words: &[String], documents: usize) -> Vec<String> {
    let mut corpus = Vec::new();
    for _ in 0..documents {
        let mut text = String::new();
        let length = 50 + rng.next() % 400;
        for i in 0..length {
            if i > 0 {
                text.push(' ');
            }
            text.push_str(&words[rng.skewed(words.len() as u64) as usize]);
        }
        corpus.push(text);
    }
    corpus
}

fn tokenize(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_lowercase).collect()
}

struct Index {
    postings: HashMap<String, Vec<u32>>,
    bigrams: BTreeMap<(String, String), u32>,
    term_vectors: Vec<HashMap<String, u32>>,
}

fn build_index(corpus: &[String]) -> Index {
    let mut index = Index {
        postings: HashMap::new(),
        bigrams: BTreeMap::new(),
        term_vectors: Vec::new(),
    };
    for (doc, text) in corpus.iter().enumerate() {
        let tokens = tokenize(text);
        let mut terms = HashMap::new();
        for pair in tokens.windows(2) {
            *index
                .bigrams
                .entry((pair[0].clone(), pair[1].clone()))
                .or_insert(0) += 1;
        }
        for token in tokens {
            *terms.entry(token.clone()).or_insert(0) += 1;
            let list = index.postings.entry(token).or_default();
            if list.last() != Some(&(doc as u32)) {
                list.push(doc as u32);
            }
        }
        index.term_vectors.push(terms);
    }
    index
}

fn main() -> Result<(), tracealloc::Error> {
    let started = Instant::now();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let words = vocabulary(&mut rng, 20_000);
    let corpus = generate_corpus(&mut rng, &words, 5_000);
    let corpus_bytes: usize = corpus.iter().map(String::len).sum();
    let mut index = build_index(&corpus);
    // Keep only the documents' term vectors of the first half, and no bigrams seen once.
    index.term_vectors.truncate(corpus.len() / 2);
    index.bigrams.retain(|_, n| *n > 1);
    let elapsed = started.elapsed();

    let snapshot = tracealloc::take_snapshot()?;
    println!(
        "Indexed {} documents ({:.1} MB of text) in {:.2?}; capture: {}",
        corpus.len(),
        corpus_bytes as f64 / 1e6,
        elapsed,
        tracealloc::capture_mode()
    );
    println!();
    println!("Top 10 lines");
    println!("{}", snapshot.report(tracealloc::GroupBy::Line, 10));
    let memory = tracealloc::traced_memory();
    println!();
    println!(
        "Traced memory: current {}, peak {}; {} blocks allocated in all ({}); tracer tables {}",
        tracealloc::format_size(memory.current as f64, false),
        tracealloc::format_size(memory.peak as f64, false),
        memory.allocated_blocks,
        tracealloc::format_size(memory.allocated_bytes as f64, false),
        tracealloc::format_size(tracealloc::tracer_memory() as f64, false),
    );
    std::hint::black_box((&index.postings, &words));
    Ok(())
}
