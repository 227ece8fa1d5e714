//! The workload of `top` and `report`: generate a text corpus of a few megabytes, tokenize
//! it, build an inverted index (word → postings), a bigram table and per-document term vectors,
//! then drop part of it.

use std::collections::{BTreeMap, HashMap};

/// A small deterministic generator (xorshift), so every run builds the same corpus (the
/// comparison's deep-stack workload draws from it too).
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
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

pub(crate) struct Index {
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

/// What the workload leaves live.
///
/// Its fields are held, not read: they keep the workload's memory live for the snapshot.
#[allow(dead_code)]
pub(crate) struct Built {
    pub(crate) words: Vec<String>,
    pub(crate) corpus: Vec<String>,
    pub(crate) index: Index,
}

/// Runs the whole workload.
pub(crate) fn run() -> Built {
    run_with(5_000)
}

/// The workload on `documents` documents (5,000 in `run`).
pub(crate) fn run_with(documents: usize) -> Built {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let words = vocabulary(&mut rng, 20_000);
    let corpus = generate_corpus(&mut rng, &words, documents);
    let mut index = build_index(&corpus);
    // Keep only the documents' term vectors of the first half, and no bigrams seen once.
    index.term_vectors.truncate(corpus.len() / 2);
    index.bigrams.retain(|_, n| *n > 1);
    Built {
        words,
        corpus,
        index,
    }
}
