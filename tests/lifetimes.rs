//! Block lifetimes, kept with the peak breakdown, as DHAT's viewer reads them: each stack's
//! summed lifetime (`tl`), what it held at the peak (`gb`) and at the snapshot (`eb`), and the
//! file's `tg` and `tuth`. One `#[test]`, run in order: the figures are process-wide.
#![cfg(feature = "dhat")]

use serde_json::Value;
use std::hint::black_box;
use std::time::Duration;
use tracealloc::{Metric, Snapshot};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new().block_lifetimes(true);

const MIB: usize = 1 << 20;
const TEMPORARIES: u64 = 100_000;

/// 20 blocks of 1 MiB, held 40 ms, then freed: the peak.
#[inline(never)]
fn long_lived() {
    let blocks: Vec<Vec<u8>> = (0..20).map(|_| black_box(vec![1u8; MIB])).collect();
    std::thread::sleep(Duration::from_millis(40));
    drop(black_box(blocks));
}

/// Blocks freed right after they are made: heaptrack's temporaries, DHAT's short-lived.
#[inline(never)]
fn short_lived() {
    for i in 0..TEMPORARIES {
        let v = black_box(vec![i as u8; 64]);
        black_box(&v);
    }
}

/// 5 blocks of 1 KiB, still live at the snapshot.
#[inline(never)]
fn kept() -> Vec<Vec<u8>> {
    (0..5).map(|_| black_box(vec![2u8; 1024])).collect()
}

/// `name` with v0 symbols' numbered closures (`{closure#0}`) spelt as legacy ones.
fn unnumbered(name: &str) -> String {
    let mut out = String::new();
    let mut rest = name;
    while let Some(at) = rest.find("{closure#") {
        out.push_str(&rest[..at]);
        out.push_str("{{closure}}");
        let tail = &rest[at..];
        rest = &tail[tail.find('}').map_or(tail.len(), |end| end + 1)..];
    }
    out + rest
}

/// The program point whose innermost frame is in `function` (a path prefix).
fn pp<'a>(json: &'a Value, function: &str) -> &'a Value {
    let ftbl = json["ftbl"].as_array().unwrap();
    let names = |pp: &Value| -> Vec<String> {
        pp["fs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                ftbl[i.as_u64().unwrap() as usize]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let found: Vec<&Value> = json["pps"]
        .as_array()
        .unwrap()
        .iter()
        // Closures as legacy symbols spell them (v0 symbols number them: `{closure#0}`).
        .filter(|pp| unnumbered(&names(pp)[0]).starts_with(function))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one program point under {function}: {:#?}",
        found.iter().map(|p| names(p)).collect::<Vec<_>>()
    );
    found[0]
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn dhat(snapshot: &Snapshot) -> Value {
    serde_json::from_str(&snapshot.dhat_json(Metric::Allocated).unwrap()).unwrap()
}

#[test]
fn lifetimes_reach_dhat() {
    long_lived();
    short_lived();
    let held = kept();
    std::thread::sleep(Duration::from_millis(30));
    let snapshot = tracealloc::take_snapshot().unwrap();
    let json = dhat(&snapshot);
    assert_eq!(
        json["bklt"], true,
        "block lifetimes are on with the breakdown"
    );
    assert_eq!(u(&json, "tuth"), 10);
    let (te, tg) = (u(&json, "te"), u(&json, "tg"));
    assert!(
        tg <= te && tg >= 40_000,
        "t-gmax {tg} µs after the 40 ms hold, te {te}"
    );

    // Held 40 ms each: the average lifetime is at least that (and not absurdly more).
    let long = pp(&json, "lifetimes::long_lived::{{closure}} (");
    assert_eq!((u(long, "tb"), u(long, "tbk")), (20 * MIB as u64, 20));
    let average = u(long, "tl") / 20;
    assert!(
        (40_000..5_000_000).contains(&average),
        "long-lived average lifetime {average} µs"
    );
    // All of it live at the peak, none at the end; the max is the peak's.
    assert_eq!((u(long, "gb"), u(long, "gbk")), (20 * MIB as u64, 20));
    assert_eq!((u(long, "eb"), u(long, "ebk")), (0, 0));
    assert_eq!((u(long, "mb"), u(long, "mbk")), (20 * MIB as u64, 20));

    // Freed at once: short-lived by the file's own threshold.
    let short = pp(&json, "lifetimes::short_lived (");
    assert_eq!(u(short, "tbk"), TEMPORARIES);
    assert!(
        u(short, "tl") / TEMPORARIES <= u(&json, "tuth"),
        "short-lived average lifetime {} µs over {TEMPORARIES} blocks",
        u(short, "tl") as f64 / TEMPORARIES as f64
    );
    assert_eq!((u(short, "eb"), u(short, "gb")), (0, 0));

    // Live at the snapshot: counted to it (30 ms at least).
    let live = pp(&json, "lifetimes::kept::{{closure}} (");
    assert_eq!((u(live, "eb"), u(live, "ebk")), (5 * 1024, 5));
    assert!(u(live, "tl") / 5 >= 30_000, "live blocks' lifetime {live}");

    // A dump carries them.
    let loaded = Snapshot::from_bytes(&snapshot.to_bytes()).unwrap();
    assert_eq!(
        loaded.dhat_json(Metric::Allocated).unwrap(),
        snapshot.dhat_json(Metric::Allocated).unwrap()
    );
    // Other metrics have no lifetimes to show.
    let live_file: Value =
        serde_json::from_str(&snapshot.dhat_json(Metric::Live).unwrap()).unwrap();
    assert_eq!(live_file["bklt"], false);

    // Switched off, then on again: what was freed meanwhile has no lifetime, so the file
    // says none are known until the totals start anew.
    tracealloc::set_peak_breakdown(false).unwrap();
    assert_eq!(dhat(&tracealloc::take_snapshot().unwrap())["bklt"], false);
    short_lived();
    tracealloc::set_peak_breakdown(true).unwrap();
    assert_eq!(dhat(&tracealloc::take_snapshot().unwrap())["bklt"], false);
    tracealloc::stop();
    tracealloc::start(tracealloc::traceback_limit()).unwrap();
    short_lived();
    let json = dhat(&tracealloc::take_snapshot().unwrap());
    assert_eq!(json["bklt"], true);
    assert_eq!(u(pp(&json, "lifetimes::short_lived ("), "tbk"), TEMPORARIES);
    drop(held);
}
