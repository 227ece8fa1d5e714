//! The output writers: folded stacks, flame graph, pprof and DHAT, checked against the
//! snapshot they were written from. The pprof file is decoded by a small protobuf reader
//! written here from the wire-format rules, independent of the `prost` code that wrote it.
#![cfg(all(feature = "flamegraph", feature = "pprof", feature = "dhat"))]

use std::hint::black_box;
use std::io::Read;
use tracealloc::{Error, GroupBy, Metric, Snapshot};

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

#[inline(never)]
fn keep_buffers() -> Vec<Vec<u8>> {
    let mut kept = Vec::with_capacity(40);
    for _ in 0..40 {
        kept.push(black_box(vec![7u8; 3000]));
    }
    kept
}

#[inline(never)]
fn churn() -> usize {
    let mut n = 0;
    for i in 0..500 {
        let v = black_box(vec![1u64; 100 + i]);
        n += v.len();
    }
    n
}

/// One snapshot for every test (the tests run in parallel; each only reads it).
fn snapshot() -> &'static (Snapshot, Vec<Vec<u8>>) {
    static ONE: std::sync::OnceLock<(Snapshot, Vec<Vec<u8>>)> = std::sync::OnceLock::new();
    ONE.get_or_init(|| {
        let kept = keep_buffers();
        black_box(churn());
        let snapshot = tracealloc::take_snapshot().unwrap();
        (snapshot, kept)
    })
}

fn value(line: &str) -> u64 {
    line.rsplit_once(' ').unwrap().1.parse().unwrap()
}

#[test]
fn folded_lines_sum_to_the_snapshot() {
    let (snapshot, _) = snapshot();
    let live = snapshot.folded(Metric::Live).unwrap();
    assert_eq!(
        live.iter().map(|l| value(l)).sum::<u64>(),
        snapshot.total_size() as u64
    );
    let allocated = snapshot.folded(Metric::Allocated).unwrap();
    assert_eq!(
        allocated.iter().map(|l| value(l)).sum::<u64>(),
        snapshot.allocated_total().unwrap().0
    );
    // The kept buffers: 40 × 3000 B and the 40 × 24 B vector holding them, at two call
    // sites in keep_buffers, which is the last (innermost) frame of each line.
    let kept: Vec<&String> = live
        .iter()
        .filter(|l| {
            let stack = l.rsplit_once(' ').unwrap().0;
            stack
                .rsplit(';')
                .next()
                .unwrap()
                .contains("keep_buffers (tests/outputs.rs:")
        })
        .collect();
    assert_eq!(kept.len(), 2, "{kept:#?}");
    let mut sizes: Vec<u64> = kept.iter().map(|l| value(l)).collect();
    sizes.sort();
    assert_eq!(sizes, [960, 120_000]);
    // Freed blocks count only in the allocation totals: churn made 500 vectors.
    let churned: u64 = allocated
        .iter()
        .filter(|l| {
            let stack = l.rsplit_once(' ').unwrap().0;
            stack.rsplit(';').next().unwrap().contains("churn (tests")
        })
        .map(|l| value(l))
        .sum();
    let expected: u64 = (0..500u64).map(|i| (100 + i) * 8).sum();
    assert_eq!(churned, expected);
    assert!(!live.iter().any(|l| l.contains("churn (tests")));
    // Stacks start at the program's code: std's start-up and thread-spawn frames and the C
    // runtime below them are trimmed (a stack made only of those keeps one frame).
    for line in live.iter().chain(&allocated) {
        let frames: Vec<&str> = line.rsplit_once(' ').unwrap().0.split(';').collect();
        if frames.len() > 1 {
            let root = frames[0];
            assert!(
                !root.contains("(/rustc/")
                    && !["start_thread", "clone", "__libc_start", "main ("]
                        .iter()
                        .any(|c| root.starts_with(c)),
                "runtime frame at the root: {line}"
            );
        }
    }
}

#[test]
fn flame_graph_is_an_svg_naming_the_call_sites() {
    let (snapshot, _) = snapshot();
    let svg = String::from_utf8(snapshot.flamegraph_svg(Metric::Live).unwrap()).unwrap();
    assert!(svg.starts_with("<?xml"), "{}", &svg[..100.min(svg.len())]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("keep_buffers"));
    assert!(svg.contains("tracealloc: heap live at the snapshot"));
    let dir = std::env::temp_dir().join(format!("tracealloc-outputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("live.svg");
    snapshot.write_flamegraph(&path, Metric::Allocated).unwrap();
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(written.contains("churn"));
    std::fs::remove_dir_all(&dir).unwrap();
}

// --- a minimal protobuf reader (wire format: varints, length-delimited fields) ---

fn varint(b: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let byte = b[*pos];
        *pos += 1;
        v |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
    }
}

/// (field number, varint value or bytes) of one message.
enum Field<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

fn fields(b: &[u8]) -> Vec<(u64, Field<'_>)> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < b.len() {
        let key = varint(b, &mut pos);
        match key & 7 {
            0 => out.push((key >> 3, Field::Int(varint(b, &mut pos)))),
            2 => {
                let len = varint(b, &mut pos) as usize;
                out.push((key >> 3, Field::Bytes(&b[pos..pos + len])));
                pos += len;
            }
            other => panic!("wire type {other} is not used by profile.proto's fields we write"),
        }
    }
    out
}

/// Repeated scalars may be packed (one length-delimited field) or not.
fn ints(b: &[u8], number: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for (n, f) in fields(b) {
        if n != number {
            continue;
        }
        match f {
            Field::Int(v) => out.push(v),
            Field::Bytes(packed) => {
                let mut pos = 0;
                while pos < packed.len() {
                    out.push(varint(packed, &mut pos));
                }
            }
        }
    }
    out
}

fn messages(b: &[u8], number: u64) -> Vec<&[u8]> {
    fields(b)
        .into_iter()
        .filter_map(|(n, f)| match f {
            Field::Bytes(m) if n == number => Some(m),
            _ => None,
        })
        .collect()
}

#[test]
fn pprof_decodes_and_its_totals_match() {
    let (snapshot, _) = snapshot();
    let gz = snapshot.pprof_bytes().unwrap();
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut raw)
        .expect("gzip");
    let strings: Vec<String> = messages(&raw, 6)
        .iter()
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect();
    // Index 0 of the string table is always "" (an empty message: no bytes).
    assert_eq!(strings[0], "");
    let types: Vec<String> = messages(&raw, 1)
        .iter()
        .map(|vt| strings[ints(vt, 1)[0] as usize].clone())
        .collect();
    assert_eq!(
        types,
        [
            "alloc_objects",
            "alloc_space",
            "inuse_objects",
            "inuse_space"
        ]
    );
    let default = ints(&raw, 14)[0] as usize;
    assert_eq!(strings[default], "inuse_space");

    let mut sums = [0u64; 4];
    let samples = messages(&raw, 2);
    for sample in &samples {
        let values = ints(sample, 2);
        assert_eq!(values.len(), 4);
        for (sum, v) in sums.iter_mut().zip(values) {
            *sum += v;
        }
        assert!(!ints(sample, 1).is_empty(), "every sample has locations");
        // Live samples carry their blocks' size as a numeric `bytes` label, as Go's heap
        // profiles do (`go tool pprof -tags`); the freed remainder has none.
        let labels = messages(sample, 3);
        let (objects, space) = (ints(sample, 2)[2], ints(sample, 2)[3]);
        if objects > 0 {
            assert_eq!(labels.len(), 1, "one label per live sample");
            let label = &labels[0];
            assert_eq!(strings[ints(label, 1)[0] as usize], "bytes");
            assert_eq!(strings[ints(label, 4)[0] as usize], "bytes");
            assert_eq!(
                ints(label, 3)[0] * objects,
                space,
                "the label is the blocks' size"
            );
        } else {
            assert!(labels.is_empty());
        }
    }
    let (allocated_bytes, allocated_blocks) = snapshot.allocated_total().unwrap();
    assert_eq!(
        sums,
        [
            allocated_blocks,
            allocated_bytes,
            snapshot.traces().len() as u64,
            snapshot.total_size() as u64
        ]
    );

    // Functions and locations: the call site of the kept buffers is there with its line.
    let functions: Vec<(u64, String)> = messages(&raw, 5)
        .iter()
        .map(|f| (ints(f, 1)[0], strings[ints(f, 2)[0] as usize].clone()))
        .collect();
    let keep = functions
        .iter()
        .find(|(_, name)| name.ends_with("keep_buffers"))
        .expect("keep_buffers is a function");
    let expected_line = snapshot
        .statistics(GroupBy::Line)
        .into_iter()
        .find(|s| s.size == 120_000 && s.traceback.call_site().filename.ends_with("outputs.rs"))
        .unwrap()
        .traceback
        .call_site()
        .lineno;
    let found = messages(&raw, 4).iter().any(|location| {
        messages(location, 4)
            .iter()
            .any(|line| ints(line, 1)[0] == keep.0 && ints(line, 2)[0] == u64::from(expected_line))
    });
    assert!(found, "a location at line {expected_line} of keep_buffers");
}

#[test]
fn dhat_json_has_what_dh_view_reads_and_its_totals_match() {
    let (snapshot, _) = snapshot();
    for metric in [Metric::Live, Metric::Allocated] {
        let json: serde_json::Value =
            serde_json::from_str(&snapshot.dhat_json(metric).unwrap()).unwrap();
        // The fields dh_view.html's buildTree and checkPP require.
        for field in [
            "dhatFileVersion",
            "mode",
            "verb",
            "bklt",
            "bkacc",
            "tu",
            "Mtu",
            "cmd",
            "pid",
            "te",
            "pps",
            "ftbl",
        ] {
            assert!(json.get(field).is_some(), "{metric:?}: missing {field}");
        }
        assert_eq!(json["dhatFileVersion"], 2);
        // No block lifetimes without `block_lifetimes`: the viewer must not show invented ones.
        assert_eq!(json["bklt"], false, "{metric:?}");
        assert_eq!(json["ftbl"][0], "[root]");
        let ftbl = json["ftbl"].as_array().unwrap();
        let mut bytes = 0;
        let mut blocks = 0;
        for pp in json["pps"].as_array().unwrap() {
            bytes += pp["tb"].as_u64().unwrap();
            blocks += pp["tbk"].as_u64().unwrap();
            for f in pp["fs"].as_array().unwrap() {
                assert!((f.as_u64().unwrap() as usize) < ftbl.len());
            }
        }
        let expected = match metric {
            Metric::Live => (snapshot.total_size() as u64, snapshot.traces().len() as u64),
            _ => snapshot.allocated_total().unwrap(),
        };
        assert_eq!((bytes, blocks), expected, "{metric:?}");
    }
}

#[test]
fn allocation_totals_of_an_old_file_are_refused_not_invented() {
    let old = Snapshot::load(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/damaged/valid_v1.tracealloc"),
    )
    .unwrap();
    assert!(matches!(
        old.folded(Metric::Allocated),
        Err(Error::AllocationTotalsUnknown)
    ));
    assert!(matches!(
        old.dhat_json(Metric::Allocated),
        Err(Error::AllocationTotalsUnknown)
    ));
    // Live memory still works, and pprof writes only the in-use sample types.
    assert_eq!(
        old.folded(Metric::Live).unwrap(),
        ["app::main (src/main.rs:12);app::parse (src/main.rs:41) 2112"]
    );
    assert!(old.pprof_bytes().is_ok());
}
