//! The `tracealloc` command-line tool on good and damaged snapshot files.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn damaged(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/damaged")
        .join(name)
}

fn run(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tracealloc"))
        .args(args)
        .output()
        .expect("run tracealloc")
}

fn ok(args: &[&std::ffi::OsStr]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must fail; returns its one line of stderr.
fn fails(args: &[&std::ffi::OsStr]) -> String {
    let out = run(args);
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail with 1");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.starts_with("tracealloc: error: "), "{stderr}");
    stderr
}

macro_rules! args {
    ($($a:expr),* $(,)?) => { &[$(std::ffi::OsStr::new(&$a)),*] };
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tracealloc-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn top_prints_tracemalloc_statistics() {
    let file = damaged("valid.tracealloc");
    assert_eq!(
        ok(args!["top", file]),
        "#1: src/main.rs:41: size=2112 B, count=2, average=1056 B\nTotal allocated size: 2112 B\n"
    );
    assert_eq!(
        ok(args!["top", file, "--by", "function"]),
        "#1: app::parse (src/main.rs): size=2112 B, count=2, average=1056 B\n\
         Total allocated size: 2112 B\n"
    );
    let traceback = ok(args!["top", file, "--by", "traceback", "--allocated"]);
    assert_eq!(
        traceback,
        "#1: src/main.rs:41: size=6208 B, count=5, average=1242 B\n  \
         File \"src/main.rs\", line 41, in app::parse\n  \
         File \"src/main.rs\", line 12, in app::main\n\
         Total allocated since tracing started: 6208 B\n"
    );
    assert_eq!(
        ok(args!["top", file, "--by", "crate"]),
        "#1: app: size=2112 B, count=2, average=1056 B\nTotal allocated size: 2112 B\n"
    );
    assert_eq!(
        ok(args!["top", file, "--attribution", "innermost"]),
        ok(args!["top", file])
    );
    // Live statistics by traceback print each stack too.
    assert_eq!(
        ok(args!["top", file, "--by", "traceback"]),
        "#1: src/main.rs:41: size=2112 B, count=2, average=1056 B\n  \
         File \"src/main.rs\", line 41, in app::parse\n  \
         File \"src/main.rs\", line 12, in app::main\n\
         Total allocated size: 2112 B\n"
    );
    // Filters: excluding the only file leaves nothing, and says so.
    let out = run(args!["top", file, "--exclude", "src/*"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Total allocated size: 0 B\n"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the filters left no trace of") && !stderr.contains("matched none"),
        "{stderr}"
    );
    let out = run(args!["top", file, "--include", "src/nope*"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--include \"src/nope*\" matched none of the 2 traces"),
        "{stderr}"
    );
    assert!(ok(args!["top", file, "--include", "src/main.rs", "-n", "1"]).starts_with("#1: "));
}

#[test]
fn diff_compares_two_files() {
    let out = ok(args![
        "diff",
        damaged("valid_v1.tracealloc"),
        damaged("valid.tracealloc")
    ]);
    assert_eq!(
        out,
        "[ Top 1 differences ]\nsrc/main.rs:41: size=2112 B (+0 B), count=2 (+0), average=1056 B\n\
         Total change: +0 B (+0 blocks)\n"
    );
    // By traceback, each difference prints its stack.
    let out = ok(args![
        "diff",
        damaged("valid_v1.tracealloc"),
        damaged("valid.tracealloc"),
        "--by",
        "traceback"
    ]);
    assert!(
        out.contains(
            "average=1056 B\n  File \"src/main.rs\", line 41, in app::parse\n  \
             File \"src/main.rs\", line 12, in app::main\n"
        ),
        "{out}"
    );
}

#[test]
fn writers_write_files_the_library_reads_back() {
    let file = damaged("valid.tracealloc");
    let svg = temp("f.svg");
    ok(args!["flamegraph", file, "-o", svg]);
    assert!(std::fs::read_to_string(&svg)
        .unwrap()
        .contains("app::parse"));
    // The subtitle says what the picture holds, whose it is, how and when it was taken; labels
    // too long for their box keep their start, the function's name.
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains(">app: 2112 B in 2 blocks · frame-pointers · 2026-11-30 00:53:20 UTC<"),
        "{}",
        &text[..text.len().min(3000)]
    );
    assert!(text.contains("truncate_text_right = true"));
    assert!(text.contains("app::parse (src/main.rs:41)"));
    // --merge-lines: one box per function.
    ok(args!["flamegraph", file, "-o", svg, "--merge-lines"]);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("app::parse (src/main.rs)") && !text.contains("src/main.rs:41"));
    // A file from before format 5 has no time or program to tell.
    let old = ok(args![
        "flamegraph",
        damaged("valid_v4.tracealloc"),
        "-o",
        "-"
    ]);
    assert!(old.contains(">2112 B in 2 blocks · frame-pointers<"));
    ok(args!["flamegraph", file, "-o", svg, "--allocated"]);
    let pb = temp("p.pb.gz");
    ok(args!["pprof", file, "-o", pb]);
    assert_eq!(&std::fs::read(&pb).unwrap()[..2], b"\x1f\x8b", "gzip magic");
    let json = temp("d.json");
    ok(args!["dhat", file, "-o", json]);
    let text = std::fs::read_to_string(&json).unwrap();
    assert!(text.contains("\"tb\":6208") && text.contains("\"dhatFileVersion\":2"));
    ok(args!["dhat", file, "-o", json, "--live"]);
    assert!(std::fs::read_to_string(&json)
        .unwrap()
        .contains("\"tb\":2112"));
    // Lifetimes (format 6) fill dh_view's t-gmax figures; a file without them says how to
    // record them.
    let with = run(args!["dhat", damaged("valid.tracealloc"), "-o", "-"]);
    assert!(String::from_utf8_lossy(&with.stdout).contains("\"bklt\":true"));
    assert!(!String::from_utf8_lossy(&with.stderr).contains("no block lifetimes"));
    let without = run(args!["dhat", damaged("valid_v5.tracealloc"), "-o", "-"]);
    assert!(String::from_utf8_lossy(&without.stdout).contains("\"bklt\":false"));
    assert!(
        String::from_utf8_lossy(&without.stderr).contains("TRACEALLOC_LIFETIMES=1"),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );
}

#[test]
fn errors_are_one_line_and_exit_code_1() {
    let missing = fails(args!["top", "no/such/file.tracealloc"]);
    assert!(missing.contains("no/such/file.tracealloc"), "{missing}");
    let truncated = fails(args!["top", damaged("truncated.bin")]);
    assert!(
        truncated.contains("not a valid snapshot file: truncated"),
        "{truncated}"
    );
    let magic = fails(args![
        "diff",
        damaged("valid.tracealloc"),
        damaged("wrong_magic.bin")
    ]);
    assert!(magic.contains("wrong magic number"), "{magic}");
    let pattern = fails(args![
        "top",
        damaged("valid.tracealloc"),
        "--include",
        "[a-"
    ]);
    assert!(
        pattern.contains("invalid file pattern \"[a-\""),
        "{pattern}"
    );
    let old = fails(args!["top", damaged("valid_v1.tracealloc"), "--allocated"]);
    assert!(old.contains("no allocation totals"), "{old}");
    let unwritable = fails(args![
        "pprof",
        damaged("valid.tracealloc"),
        "-o",
        "/no/such/dir/x.pb.gz"
    ]);
    assert!(unwritable.contains("/no/such/dir/x.pb.gz"), "{unwritable}");
    // A damaged file's error names the file.
    assert!(
        truncated.contains("truncated.bin: not a valid snapshot file"),
        "{truncated}"
    );
    // Usage errors come from clap: exit code 2 and a usage message.
    let usage = run(args!["top"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn the_peak_temporaries_and_the_report_from_a_file() {
    let file = damaged("valid.tracealloc");
    assert_eq!(
        ok(args!["top", file, "--peak"]),
        "#1: src/main.rs:41: size=8192 B, count=4, average=2048 B\nTotal allocated size: 8192 B\n"
    );
    assert_eq!(
        ok(args!["top", file, "--temporary"]),
        "#1: src/main.rs:41: size=1024 B, count=1, average=1024 B\n"
    );
    let report = ok(args!["report", file, "-n", "1"]);
    assert!(
        report.starts_with(
            "tracealloc: peak 8192 B at 1.25 s of 2.50 s; live at the snapshot 2112 B"
        ),
        "{report}"
    );
    assert!(
        report.contains(
            "tracealloc: top 1 lines at the peak (8192 B)\n#1: src/main.rs:41: size=8192 B"
        ),
        "{report}"
    );
    assert!(
        report.contains("tracealloc: temporary allocations"),
        "{report}"
    );
    assert!(report.contains("tracealloc: allocation sizes"), "{report}");
    // An older file: the peak and the temporaries are unknown, and say so.
    let old = damaged("valid_v2.tracealloc");
    assert!(fails(args!["top", old, "--peak"]).contains("not known"));
    assert!(fails(args!["top", old, "--temporary"]).contains("does not know its temporary"));
    let report = ok(args!["report", old]);
    assert!(!report.contains("at the peak"), "{report}");
    assert!(!report.contains("temporary"), "{report}");
}

#[test]
fn an_output_never_overwrites_its_input_and_dash_is_stdout() {
    let copy = temp("input.tracealloc");
    std::fs::copy(damaged("valid.tracealloc"), &copy).unwrap();
    let before = std::fs::read(&copy).unwrap();
    for command in ["pprof", "flamegraph", "dhat"] {
        let refused = fails(args![command, copy, "-o", copy]);
        assert!(
            refused.contains("refusing to write the output over its input"),
            "{command}: {refused}"
        );
        // The same file by another name.
        let other = copy.parent().unwrap().join(".").join("input.tracealloc");
        fails(args![command, copy, "-o", other]);
    }
    assert_eq!(std::fs::read(&copy).unwrap(), before, "the input is intact");

    let out = run(args!["pprof", copy, "-o", "-"]);
    assert!(out.status.success());
    assert_eq!(
        &out.stdout[..2],
        &[0x1f, 0x8b],
        "a gzipped profile on stdout"
    );
    let out = run(args!["dhat", copy, "-o", "-"]);
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("{"));
    let out = run(args!["flamegraph", copy, "-o", "-"]);
    assert!(String::from_utf8(out.stdout).unwrap().contains("<svg"));
    assert!(!Path::new("-").exists(), "no file named -");
}

/// A snapshot of this process with one big block at one line and many small ones at another,
/// dumped for the CLI.
fn two_sites() -> (PathBuf, u32, u32) {
    let big_line = line!() + 1;
    let big = vec![0u8; 100_000];
    let small_line = line!() + 1;
    let small: Vec<Box<[u8; 24]>> = (0..500).map(|_| Box::new([1u8; 24])).collect();
    let file = temp("two_sites.tracealloc");
    tracealloc::take_snapshot()
        .unwrap()
        // Only these two lines: the test threads beside this one allocate in this file too.
        .filter_traces(&[
            tracealloc::Filter::include("*cli.rs")
                .unwrap()
                .lineno(big_line),
            tracealloc::Filter::include("*cli.rs")
                .unwrap()
                .lineno(small_line),
        ])
        .dump(&file)
        .unwrap();
    drop((big, small));
    (file, big_line, small_line)
}

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

#[test]
fn sort_by_count_cumulative_and_folded() {
    let (file, big, small) = two_sites();
    let first = |out: &str| out.lines().next().unwrap_or_default().to_owned();
    let by_size = ok(args!["top", file]);
    assert!(
        first(&by_size).contains(&format!("cli.rs:{big}: size=97.7 KiB, count=1")),
        "{by_size}"
    );
    let by_count = ok(args!["top", file, "--sort", "count"]);
    assert!(
        first(&by_count).contains(&format!("cli.rs:{small}: ")) && by_count.contains("count=501"),
        "{by_count}"
    );
    // Each line's source is printed under it, with --allocated too.
    let allocated = ok(args!["top", file, "--allocated"]);
    assert!(
        allocated.contains("let big = vec![0u8; 100_000];"),
        "{allocated}"
    );
    // Cumulative: the test's own function ranks first, not std's thread start or libtest.
    let cumulative = ok(args!["top", file, "--cumulative", "--by", "function"]);
    assert!(first(&cumulative).starts_with("#1: cli::"), "{cumulative}");
    assert!(
        !cumulative.contains("std::") && !cumulative.contains("test::"),
        "{cumulative}"
    );
    // Folded stacks: to stdout by default, the same text to a file with -o.
    let folded = ok(args!["folded", file]);
    assert!(
        folded
            .lines()
            .any(|l| l.contains(&format!("cli.rs:{big})")) && l.ends_with(" 100000")),
        "{folded}"
    );
    let out = temp("two_sites.folded");
    ok(args!["folded", file, "-o", out]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), folded);
    // A view with nothing in it is an error, not an empty file.
    let none = fails(args![
        "folded",
        damaged("valid_v1.tracealloc"),
        "--allocated"
    ]);
    assert!(none.contains("no allocation totals"), "{none}");
}
