//! A long-running service whose heap is read over HTTP, with no profiling code in it: the
//! tracer is installed, and `TRACEALLOC_HTTP` starts the endpoint.
//!
//!     TRACEALLOC_HTTP=127.0.0.1:6060 cargo run --release --features http --example service
//!     go tool pprof -top -lines http://127.0.0.1:6060/debug/pprof/heap
//!     go tool pprof -top -lines -sample_index=alloc_space http://127.0.0.1:6060/debug/pprof/allocs
//!     go tool pprof -top http://127.0.0.1:6060/debug/pprof/heap?seconds=5
//!
//! It handles "requests" (JSON documents, parsed with serde_json), keeps a growing cache of
//! them and a log of recent ones, and formats a response for each: the cache grows, the log
//! stays bounded, the responses are temporaries. It runs for the seconds given as its first
//! argument (default 60).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

struct Service {
    cache: HashMap<u64, serde_json::Value>,
    log: VecDeque<String>,
    served: u64,
}

impl Service {
    fn handle(&mut self, id: u64) -> usize {
        let request = format!(
            r#"{{"user": {id}, "items": [{}], "note": "request number {id}"}}"#,
            (0..(id % 16))
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let parsed: serde_json::Value = serde_json::from_str(&request).expect("valid JSON");
        let response = format!("{{\"ok\": true, \"echo\": {parsed}}}");
        self.cache.entry(id % 50_000).or_insert(parsed);
        self.log
            .push_back(format!("served {id}: {} bytes", response.len()));
        if self.log.len() > 1_000 {
            self.log.pop_front();
        }
        self.served += 1;
        response.len()
    }
}

fn main() {
    let seconds: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut service = Service {
        cache: HashMap::new(),
        log: VecDeque::new(),
        served: 0,
    };
    let started = Instant::now();
    let mut id = 0u64;
    let mut sent = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        for _ in 0..200 {
            sent += service.handle(id);
            id += 1;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    println!(
        "served {} requests ({sent} bytes), {} cached",
        service.served,
        service.cache.len()
    );
}
