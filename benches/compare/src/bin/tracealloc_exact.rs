//! tracealloc, every allocation traced; a snapshot and its top line at the end. With
//! `SHOW_RSS=1`, the process's resident memory before and after the snapshot, and the tracer's
//! own tables, on stderr.
#[path = "../common.rs"]
mod common;

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

/// VmRSS, VmHWM and the anonymous/file split from /proc/self/status.
fn resident() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            ["VmRSS", "VmHWM", "RssAnon", "RssFile"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let show = std::env::var_os("SHOW_RSS").is_some();
    common::run(|| {
        if show {
            eprintln!(
                "before the snapshot: {}; tracer tables {} B",
                resident(),
                tracealloc::tracer_memory()
            );
        }
        let snapshot = tracealloc::take_snapshot().unwrap();
        let top = snapshot.statistics(tracealloc::GroupBy::Line);
        if show {
            eprintln!("after the snapshot: {}", resident());
        }
        eprintln!("{} [{}]", top[0], tracealloc::capture_mode());
    });
}
