//! A program with real dependencies (serde_json, regex, rayon) is attributed to its own lines:
//! the string `serde_json::to_string` returns lands on the line that called it, the parse tree
//! on the `from_str` line, a rayon `collect` on its line, and nearly every live byte on a line
//! of this file; `GroupBy::Crate` names the dependencies that made the memory.
//!
//! CI runs this file with frame pointers and without, in release with line tables, and in a
//! build without debug info (`TRACEALLOC_EXPECT_LINES=none`), where statistics must name this
//! file's functions instead of lines.

use rayon::prelude::*;
use std::hint::black_box;
use tracealloc::{GroupBy, Snapshot, Statistic};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

const FILE: &str = "tests/real_programs.rs";

/// A nested document: `depth` levels of objects holding arrays of records, so serde's recursive
/// descent runs deep between an allocation and this file's line.
fn document(depth: usize, width: usize) -> String {
    let mut s = String::from("{\"records\":[");
    for i in 0..width {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"record number {i}\",\"tags\":[\"a{i}\",\"b{i}\",\"c\"],\
             \"score\":{}.5}}",
            i * 7
        ));
    }
    s.push(']');
    if depth > 0 {
        s.push_str(",\"child\":");
        s.push_str(&document(depth - 1, width));
    }
    s.push('}');
    s
}

fn lines_expected() -> bool {
    std::env::var("TRACEALLOC_EXPECT_LINES").as_deref() != Ok("none")
}

fn top(snapshot: &Snapshot, n: usize) -> String {
    snapshot
        .statistics(GroupBy::Line)
        .iter()
        .take(n)
        .map(Statistic::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Bytes the snapshot attributes to `line` of this file.
fn at_line(snapshot: &Snapshot, line: u32) -> usize {
    snapshot
        .statistics(GroupBy::Line)
        .iter()
        .filter(|s| {
            let f = s.traceback.call_site();
            &*f.filename == FILE && f.lineno == line
        })
        .map(|s| s.size)
        .sum()
}

fn assert_at_line(snapshot: &Snapshot, line: u32, at_least: usize, what: &str) {
    let found = at_line(snapshot, line);
    assert!(
        found >= at_least,
        "{what}: expected >= {at_least} B at {FILE}:{line}, found {found} B; top lines:\n{}",
        top(snapshot, 12)
    );
}

struct Workload {
    text: String,
    tree: serde_json::Value,
    names: Vec<String>,
    squares: Vec<Vec<u64>>,
    lines: (u32, u32, u32, u32),
}

/// `(value, line)`: the line of the macro call, where the expression's calls are.
macro_rules! here {
    ($e:expr) => {
        ($e, line!())
    };
}

#[inline(never)]
fn run_workload() -> Workload {
    let source = document(12, 40);
    let parsed: serde_json::Value = serde_json::from_str(&source).unwrap();
    drop(source);
    // Each of these lines keeps what it allocated.
    let (text, to_string_line) = here!(serde_json::to_string(&parsed).unwrap());
    let (tree, from_str_line) = here!(serde_json::from_str::<serde_json::Value>(&text).unwrap());
    let re = regex::Regex::new(r"record number (\d+)").unwrap();
    let (names, regex_line) = here!(re.captures_iter(&text).map(|c| c[1].repeat(8)).collect());
    // The closure runs on rayon's worker threads; the collect on this one.
    let (squares, rayon_line) = here!((0..2000u64).into_par_iter().map(|i| vec![i; 64]).collect());
    drop(parsed);
    Workload {
        text,
        tree,
        names,
        squares,
        lines: (to_string_line, from_str_line, regex_line, rayon_line),
    }
}

#[test]
fn a_program_with_dependencies_is_attributed_to_its_own_lines() {
    let before = tracealloc::take_snapshot().unwrap();
    let w = run_workload();
    let snapshot = tracealloc::take_snapshot().unwrap();
    let (to_string_line, from_str_line, regex_line, rayon_line) = w.lines;
    let total = snapshot.total_size();

    if !lines_expected() {
        // No debug info: every statistic names a function, none is `<unknown>:0`, and the
        // biggest are this test's own functions.
        let stats = snapshot.statistics(GroupBy::Line);
        for s in &stats {
            assert_ne!(
                s.traceback.call_site().to_string(),
                "<unknown>:0",
                "{}",
                top(&snapshot, 12)
            );
        }
        // The string and the tree kept by this file's function, named by it. (Without debug
        // info there is no inlining information: the closure rayon inlined into its worker
        // loop is named by rayon's function, the only one the symbol table has.)
        let workload: usize = stats
            .iter()
            .filter(|s| {
                let f = s.traceback.call_site();
                f.function.starts_with("real_programs::run_workload") && f.lineno == 0
            })
            .map(|s| s.size)
            .sum();
        assert!(
            workload >= 2 * w.text.len(),
            "{workload} B at real_programs::run_workload, the text alone is {} B:\n{}",
            w.text.len(),
            top(&snapshot, 12)
        );
        let notes = snapshot.notes().join("\n");
        assert!(notes.contains("no debug info"), "{notes}");
        drop(black_box(w));
        return;
    }

    assert_at_line(
        &snapshot,
        to_string_line,
        w.text.len(),
        "the string serde_json::to_string returned",
    );
    // The parse tree: every string, vector and map node of the Value.
    assert_at_line(
        &snapshot,
        from_str_line,
        w.text.len(),
        "the tree serde_json::from_str built",
    );
    assert_at_line(
        &snapshot,
        regex_line,
        w.names.iter().map(String::len).sum(),
        "the strings collected from regex captures",
    );
    // The inner vectors were made on rayon's worker threads, in this line's closure; the
    // outer one by the collect.
    assert_at_line(
        &snapshot,
        rayon_line,
        w.squares.len() * (64 * 8 + std::mem::size_of::<Vec<u64>>()),
        "the vectors rayon's collect and the closure on its threads built",
    );

    // Built with debug info, no call site lacks a line: the C runtime's frames (named from
    // glibc's dynamic symbols, versioned) are not sites without debug info.
    let notes = snapshot.notes().join("\n");
    assert!(!notes.contains("no line information"), "{notes}");

    let here: usize = snapshot
        .statistics(GroupBy::Line)
        .iter()
        .filter(|s| &*s.traceback.call_site().filename == FILE)
        .map(|s| s.size)
        .sum();
    assert!(
        here * 10 >= total * 9,
        "only {here} of {total} B at lines of {FILE}:\n{}",
        top(&snapshot, 12)
    );

    // The dependency inside the line is named.
    let from_str = snapshot
        .statistics(GroupBy::Line)
        .into_iter()
        .find(|s| {
            let f = s.traceback.call_site();
            &*f.filename == FILE && f.lineno == from_str_line
        })
        .unwrap();
    let (via, krate) = from_str.via().expect("a dependency inside the line");
    assert!(via.function.contains("serde_json"), "{via:?}");
    assert!(krate.starts_with("serde_json 1."), "{krate}");
    let report = snapshot.report(GroupBy::Line, 5).to_string();
    // `via serde_json::de::from_str (serde_json 1.0.154)`; with line tables only, function
    // names are bare (`via from_str (…)`).
    assert!(
        report
            .lines()
            .any(|l| l.trim_start().starts_with("via ") && l.contains("from_str (serde_json 1.")),
        "{report}"
    );

    // By crate: the groups add up to the total, serde_json holds the parse tree.
    let crates = snapshot.statistics(GroupBy::Crate);
    assert_eq!(crates.iter().map(|s| s.size).sum::<usize>(), total);
    let serde = crates
        .iter()
        .find(|s| {
            s.traceback
                .call_site()
                .filename
                .starts_with("serde_json 1.")
        })
        .unwrap_or_else(|| panic!("no serde_json group: {crates:?}"));
    assert!(
        serde.size >= w.text.len(),
        "serde_json holds {} B, the text alone is {} B",
        serde.size,
        w.text.len()
    );
    assert!(
        crates
            .iter()
            .any(|s| &*s.traceback.call_site().filename == "real_programs"),
        "{crates:?}"
    );

    // Pictures keep what the dependencies do: the parse's stacks run from this file's line up
    // through serde_json's frames (leaf last in folded stacks).
    let folded = snapshot.folded(tracealloc::Metric::Live).unwrap();
    assert!(
        folded.iter().any(|line| {
            let stack = line.rsplit_once(' ').unwrap().0;
            let leaf = stack.rsplit(';').next().unwrap();
            stack.contains(&format!("({FILE}:{from_str_line})")) && leaf.contains("serde_json-1.")
        }),
        "no folded stack from {FILE}:{from_str_line} into serde_json:\n{}",
        folded
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // What grew, by crate: serde_json's tree appeared.
    let grew = snapshot.compare_to(&before, GroupBy::Crate);
    assert!(
        grew.iter().any(|d| d
            .traceback
            .call_site()
            .filename
            .starts_with("serde_json 1.")
            && d.size_diff >= w.text.len() as i64),
        "{grew:?}"
    );

    // A dump keeps all of it, and can be re-attributed after loading.
    let reloaded = Snapshot::from_bytes(&snapshot.to_bytes()).unwrap();
    assert_eq!(
        reloaded.statistics(GroupBy::Crate),
        snapshot.statistics(GroupBy::Crate)
    );
    assert_eq!(
        reloaded
            .with_attribution(tracealloc::Attribution::Innermost)
            .statistics(GroupBy::Line),
        snapshot
            .with_attribution(tracealloc::Attribution::Innermost)
            .statistics(GroupBy::Line)
    );

    // The view of the innermost frame stays one switch away: there, serde_json's own lines.
    let innermost = snapshot.with_attribution(tracealloc::Attribution::Innermost);
    assert!(
        at_line(&innermost, from_str_line) < at_line(&snapshot, from_str_line) / 2,
        "{}",
        top(&innermost, 8)
    );
    assert!(
        innermost.statistics(GroupBy::Line).iter().take(5).any(|s| s
            .traceback
            .call_site()
            .filename
            .starts_with("serde_json-1.")),
        "registry paths print from the crate folder:\n{}",
        top(&innermost, 8)
    );
    drop(black_box(w.tree));
}
