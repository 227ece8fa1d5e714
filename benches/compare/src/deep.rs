//! The deep-stack workload: nested JSON documents parsed and pretty-printed with serde_json, a
//! regex over the output, a HashMap index of what it found. Between an allocation and this
//! file's lines sit 20 to 40 frames of serde_json's recursive descent and regex's internals,
//! as in real programs (the index workload's are 3 to 8).

use regex::Regex;
use serde_json::Value;
use std::collections::HashMap;

// The index workload's deterministic generator, so every profiler sees the same documents.
use super::workload::Rng;

const WORDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa",
];

/// A document nested `depth` levels: objects of arrays of objects, words and numbers as leaves.
fn nested(rng: &mut Rng, depth: u32) -> Value {
    if depth == 0 {
        return match rng.next() % 3 {
            0 => Value::from(rng.next() % 10_000),
            _ => Value::from(format!(
                "{}-{}",
                WORDS[(rng.next() % 16) as usize],
                rng.next() % 100
            )),
        };
    }
    let mut object = serde_json::Map::new();
    for i in 0..(2 + rng.next() % 2) {
        let key = format!("{}{i}", WORDS[(rng.next() % 16) as usize]);
        let value = if rng.next() % 2 == 0 {
            Value::Array((0..2).map(|_| nested(rng, depth - 1)).collect())
        } else {
            nested(rng, depth - 1)
        };
        object.insert(key, value);
    }
    Value::Object(object)
}

/// Documents as text: what a service would receive.
fn corpus(documents: usize) -> Vec<String> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    (0..documents)
        .map(|_| nested(&mut rng, 4).to_string())
        .collect()
}

/// What the workload keeps: word → documents it appears in, and the pretty-printed sizes.
pub(crate) struct Built {
    pub(crate) index: HashMap<String, Vec<u32>>,
    pub(crate) pretty_bytes: usize,
}

pub(crate) fn run_with(documents: usize) -> Built {
    let texts = corpus(documents);
    let word = Regex::new(r#""([a-z]+)-([0-9]+)""#).unwrap();
    let mut index: HashMap<String, Vec<u32>> = HashMap::new();
    let mut pretty_bytes = 0;
    for (doc, text) in texts.iter().enumerate() {
        let value: Value = serde_json::from_str(text).unwrap();
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        pretty_bytes += pretty.len();
        for found in word.captures_iter(&pretty) {
            let list = index.entry(found[1].to_owned()).or_default();
            if list.last() != Some(&(doc as u32)) {
                list.push(doc as u32);
            }
        }
    }
    Built {
        index,
        pretty_bytes,
    }
}
