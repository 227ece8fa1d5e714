//! The environment switches: the test re-runs its own binary as a child with
//! `TRACEALLOC_REPORT`, `TRACEALLOC_DUMP` and `TRACEALLOC_FRAMES` set, and reads what the child
//! printed and wrote at exit.

use std::process::Command;

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

/// Runs only in the child: allocates, then leaves through `main` or `process::exit`.
#[test]
fn child_workload() {
    let Ok(how) = std::env::var("EXIT_REPORT_CHILD") else {
        return;
    };
    if how == "free" {
        // A well-behaved program: a 40 MB peak at a known line, everything freed by exit,
        // and a loop of temporaries.
        let (buffer, line) = (vec![1u8; 40_000_000], line!());
        std::hint::black_box(&buffer);
        drop(buffer);
        for i in 0..300 {
            std::hint::black_box(format!("{i:>50}"));
        }
        println!("peak at line {line} temporaries at line {}", line!() - 2);
        return;
    }
    let (kept, line) = (vec![7u8; 3_333_333], line!());
    std::mem::forget(kept);
    println!("kept at line {line}");
    if how == "exit" {
        std::process::exit(0);
    }
}

fn run_child(how: &str, envs: &[(&str, &str)]) -> (String, String) {
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new(exe);
    command
        .args([
            "--exact",
            "child_workload",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("EXIT_REPORT_CHILD", how)
        .env_remove("TRACEALLOC_REPORT")
        .env_remove("TRACEALLOC_DUMP")
        .env_remove("TRACEALLOC_FRAMES")
        .env_remove("TRACEALLOC_PEAK")
        .env_remove("TRACEALLOC_LIFETIMES");
    for (k, v) in envs {
        command.env(k, v);
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn kept_line(stdout: &str) -> u32 {
    let at = stdout.find("kept at line ").expect("the child ran") + "kept at line ".len();
    stdout[at..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn report_at_exit_after_main_returns_and_after_process_exit() {
    for how in ["return", "exit"] {
        let (stdout, stderr) = run_child(how, &[("TRACEALLOC_REPORT", "5")]);
        let line = kept_line(&stdout);
        assert!(
            stderr.contains("tracealloc: top 5 lines live at exit"),
            "{how}: {stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "tests/exit_report.rs:{line}: size=3255 KiB, count=1, average=3255 KiB"
            )),
            "{how}: {stderr}"
        );
        assert!(stderr.contains("tracealloc: peak "), "{stderr}");
        assert!(stderr.contains("peak resident"), "{stderr}");
        assert!(stderr.contains("tracer tables"), "{stderr}");
    }
}

#[test]
fn the_report_names_the_peak_of_a_program_that_frees_everything() {
    let (stdout, stderr) = run_child("free", &[("TRACEALLOC_REPORT", "5")]);
    let at = stdout.find("peak at line ").expect("the child ran");
    let words: Vec<&str> = stdout[at..].split_whitespace().collect();
    let (peak_line, temporary_line) = (words[3], words[7]);
    // The peak section names the 40 MB line and shows its source.
    let peak = stderr
        .split("tracealloc: top 5 lines at the peak")
        .nth(1)
        .unwrap_or_else(|| panic!("no peak section: {stderr}"));
    let first = peak.lines().nth(1).unwrap();
    assert_eq!(
        first,
        format!("#1: tests/exit_report.rs:{peak_line}: size=38.1 MiB, count=1, average=38.1 MiB"),
        "{stderr}"
    );
    assert!(
        peak.lines()
            .nth(2)
            .unwrap()
            .contains("vec![1u8; 40_000_000]"),
        "{stderr}"
    );
    // The traffic sections, temporaries (the `format!` loop) and sizes.
    assert!(stderr.contains("lines by bytes allocated"), "{stderr}");
    assert!(stderr.contains("lines by allocation calls"), "{stderr}");
    let temporaries = stderr
        .split("tracealloc: temporary allocations")
        .nth(1)
        .unwrap_or_else(|| panic!("no temporaries: {stderr}"));
    assert!(
        temporaries.contains(&format!("tests/exit_report.rs:{temporary_line}: size=")),
        "{stderr}"
    );
    assert!(temporaries.contains("count=300,"), "{stderr}");
    assert!(stderr.contains("tracealloc: allocation sizes"), "{stderr}");
    assert!(stderr.contains("32.0 MiB - 64.0 MiB"), "{stderr}");
}

#[test]
fn the_report_says_when_the_peak_breakdown_is_switched_off() {
    let (stdout, stderr) = run_child(
        "free",
        &[("TRACEALLOC_REPORT", "5"), ("TRACEALLOC_PEAK", "0")],
    );
    let at = stdout.find("peak at line ").expect("the child ran");
    let peak_line = stdout[at..].split_whitespace().nth(3).unwrap();
    // The traced peak is still known; its breakdown is not, and the report says how to get it.
    let head = stderr
        .lines()
        .find(|l| l.starts_with("tracealloc: peak "))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(head.starts_with("tracealloc: peak 38."), "{stderr}");
    assert!(!stderr.contains("lines at the peak"), "{stderr}");
    assert!(
        stderr.contains("no breakdown of the peak: it was switched off (TRACEALLOC_PEAK=1"),
        "{stderr}"
    );
    // Allocation totals and temporaries are kept either way.
    let allocated = stderr
        .split("lines by bytes allocated")
        .nth(1)
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        allocated.contains(&format!(
            "tests/exit_report.rs:{peak_line}: size=38.1 MiB, count=1"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("count=300,"), "{stderr}");
}

#[test]
fn dump_at_exit_loads() {
    let path =
        std::env::temp_dir().join(format!("tracealloc-exit-{}.tracealloc", std::process::id()));
    let (stdout, stderr) = run_child(
        "exit",
        &[
            ("TRACEALLOC_DUMP", path.to_str().unwrap()),
            ("TRACEALLOC_FRAMES", "3"),
        ],
    );
    assert!(!stderr.contains("top"), "no report unless asked: {stderr}");
    let line = kept_line(&stdout);
    let snapshot = tracealloc::Snapshot::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(snapshot.traceback_limit(), 3, "TRACEALLOC_FRAMES applies");
    let stat = snapshot
        .statistics(tracealloc::GroupBy::Line)
        .into_iter()
        .find(|s| s.traceback.call_site().lineno == line)
        .expect("the kept block");
    assert_eq!((stat.size, stat.count), (3_333_333, 1));
}

/// `TRACEALLOC_LIFETIMES=1` puts block lifetimes in the dump, for DHAT's viewer; without it
/// the dump's DHAT file says it has none.
#[cfg(feature = "dhat")]
#[test]
fn lifetimes_reach_a_dump_only_when_asked() {
    for (lifetimes, bklt) in [(Some("1"), true), (None, false), (Some("0"), false)] {
        let path = std::env::temp_dir().join(format!(
            "tracealloc-lifetimes-{}-{bklt}.tracealloc",
            std::process::id()
        ));
        let mut envs = vec![("TRACEALLOC_DUMP", path.to_str().unwrap())];
        envs.extend(lifetimes.map(|v| ("TRACEALLOC_LIFETIMES", v)));
        run_child("free", &envs);
        let snapshot = tracealloc::Snapshot::load(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&snapshot.dhat_json(tracealloc::Metric::Allocated).unwrap())
                .unwrap();
        assert_eq!(json["bklt"], bklt, "TRACEALLOC_LIFETIMES={lifetimes:?}");
        if bklt {
            // The 40 MB buffer is the peak ("At t-gmax").
            let gb = json["pps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|pp| pp["gb"].as_u64().unwrap());
            assert_eq!(gb.max(), Some(40_000_000));
        }
    }
}

#[test]
fn bad_values_warn_once_and_the_program_runs_on() {
    let (stdout, stderr) = run_child(
        "return",
        &[
            ("TRACEALLOC_FRAMES", "lots"),
            ("TRACEALLOC_REPORT", "-1"),
            ("TRACEALLOC_LIFETIMES", "maybe"),
        ],
    );
    kept_line(&stdout);
    assert_eq!(
        stderr
            .matches("tracealloc: ignoring TRACEALLOC_LIFETIMES: expected 0 or 1\n")
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        stderr
            .matches("tracealloc: ignoring TRACEALLOC_FRAMES: expected a number from 1 to 256")
            .count(),
        1,
        "{stderr}"
    );
    assert_eq!(
        stderr
            .matches(
                "tracealloc: ignoring TRACEALLOC_REPORT: expected a number of lines (1 or more)"
            )
            .count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("lines live at exit"));
}

#[test]
fn process_memory_is_real_on_linux() {
    if cfg!(target_os = "linux") {
        let memory = tracealloc::process_memory().expect("/proc/self/status");
        assert!(memory.resident > 0 && memory.peak_resident >= memory.resident);
    } else {
        assert!(tracealloc::process_memory().is_none());
    }
}
