//! `Snapshot::load` needs memory proportional to the file, whatever the file holds: files of a
//! few MiB, each made of one kind of record (written here by an independent writer of the
//! format, see src/snapshot/persist.rs), are loaded and the peak of the bytes the load
//! allocated (the file's own buffer included) is compared with the file's size.

use std::path::PathBuf;
use tracealloc::Snapshot;

#[global_allocator]
static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();

/// Bytes each file is made to hold, about.
const SIZE: usize = 4 << 20;
/// Allowance for what does not grow with the file (the file's path, the one-character strings
/// shared by content, ...).
const CONSTANT: usize = 64 << 10;

/// The body of a version-2 file, section by section.
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
}

/// A frame record: (file name, path, function) string indices and the line.
type FrameRecord = (u32, u32, u32, u32);
/// A traceback record: frame indices, call site, limit, truncated.
type TracebackRecord = (Vec<u32>, u32, u32, bool);

#[derive(Default)]
struct Contents {
    strings: Vec<Vec<u8>>,
    frames: Vec<FrameRecord>,
    tracebacks: Vec<TracebackRecord>,
    traces: Vec<(u64, u32)>,
    totals: Vec<(u64, u64, u32)>,
}

impl Contents {
    fn file(&self) -> Vec<u8> {
        let mut b = Body::default();
        b.u32(16).u8(1).u32(0);
        b.u32(self.strings.len() as u32);
        for s in &self.strings {
            b.u32(s.len() as u32);
            b.0.extend_from_slice(s);
        }
        b.u32(self.frames.len() as u32);
        for &(filename, path, function, lineno) in &self.frames {
            b.u32(filename).u32(path).u32(function).u32(lineno).u8(0);
        }
        b.u32(self.tracebacks.len() as u32);
        for (ids, call_site, limit, truncated) in &self.tracebacks {
            b.u32(ids.len() as u32)
                .u32(*call_site)
                .u32(*limit)
                .u8(u8::from(*truncated));
            for &i in ids {
                b.u32(i);
            }
        }
        b.u64(self.traces.len() as u64);
        for &(size, tb) in &self.traces {
            b.u64(size).u32(tb);
        }
        b.u8(1).u64(self.totals.len() as u64);
        for &(bytes, blocks, tb) in &self.totals {
            b.u64(bytes).u64(blocks).u32(tb);
        }
        b.u8(1).u64(1_000_000).u64(0);
        let body = b.0;
        let mut out = b"TRACEALC".to_vec();
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32(&body).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Three strings naming one source line, for the frames of files about something else.
    fn with_names() -> Contents {
        Contents {
            strings: vec![
                b"src/main.rs".to_vec(),
                b"/home/u/app/src/main.rs".to_vec(),
                b"app::main".to_vec(),
            ],
            ..Contents::default()
        }
    }
}

/// CRC-32 (IEEE), bit by bit: slow and independent of the library's.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// xorshift64*, for frame choices that follow no pattern.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Writes the file, loads it, and answers (the snapshot, the load's peak / the file's size).
fn load(name: &str, contents: &Contents) -> (Snapshot, f64, usize) {
    let bytes = contents.file();
    let path: PathBuf = std::env::temp_dir().join(format!(
        "tracealloc-load-memory-{}-{name}.tracealloc",
        std::process::id()
    ));
    std::fs::write(&path, &bytes).unwrap();
    drop(bytes);
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    let (snapshot, m) = tracealloc::measure(|| Snapshot::load(&path).unwrap());
    std::fs::remove_file(&path).unwrap();
    let ratio = m.peak() as f64 / len as f64;
    eprintln!(
        "{name}: file {len} B, load peak {} B: {ratio:.2}x",
        m.peak()
    );
    (snapshot, ratio, len)
}

/// Asserts the load's peak was at most `factor` times the file plus [`CONSTANT`].
fn assert_bounded(name: &str, contents: &Contents, factor: f64) -> Snapshot {
    let (snapshot, ratio, len) = load(name, contents);
    let allowed = factor + CONSTANT as f64 / len as f64;
    assert!(
        ratio <= allowed,
        "{name}: loading took {ratio:.2} times the file's size (allowed {allowed:.2})"
    );
    snapshot
}

#[test]
fn zero_frame_tracebacks() {
    // 13 bytes a traceback, each of which became a fresh `<unknown>` frame with two strings.
    let mut c = Contents::default();
    for i in 0..SIZE / 13 {
        c.tracebacks
            .push((Vec::new(), 0, 1 + (i % 256) as u32, false));
    }
    let snapshot = assert_bounded("zero-frame tracebacks", &c, 4.0);
    assert!(snapshot.traces().is_empty());
}

#[test]
fn one_traceback_of_a_million_frames() {
    // 4 bytes a frame index, each of which became a 56-byte copy of the frame.
    let mut c = Contents::with_names();
    c.frames.push((0, 1, 2, 7));
    c.tracebacks.push((vec![0; SIZE / 4], 0, 16, false));
    c.traces.push((64, 0));
    let snapshot = assert_bounded("one deep traceback", &c, 4.0);
    let traceback = &snapshot.traces()[0].traceback;
    assert_eq!(traceback.frames().len(), 16);
    assert_eq!(traceback.call_site().lineno, 7);
}

#[test]
fn a_million_frames_inside_the_call_site() {
    // The same, with every frame but the last before the call site (`machinery()`).
    let mut c = Contents::with_names();
    c.frames.push((0, 1, 2, 7));
    let n = SIZE / 4;
    c.tracebacks.push((vec![0; n], n as u32 - 1, 16, false));
    c.traces.push((64, 0));
    let snapshot = assert_bounded("deep machinery", &c, 4.0);
    assert_eq!(snapshot.traces()[0].traceback.frames().len(), 1);
}

#[test]
fn distinct_one_frame_tracebacks() {
    let mut c = Contents::with_names();
    let tracebacks = SIZE / 17;
    let frames = tracebacks / 64;
    for line in 0..frames {
        c.frames.push((0, 1, 2, line as u32));
    }
    for i in 0..tracebacks {
        let limit = 1 + (i / frames % 256) as u32;
        c.tracebacks
            .push((vec![(i % frames) as u32], 0, limit, i % 2 == 1));
    }
    assert_bounded("distinct one-frame tracebacks", &c, 4.0);
}

#[test]
fn distinct_frames_each_used_once() {
    // 17 bytes a frame and 4 to use it: the frame itself must be made.
    let mut c = Contents::with_names();
    let n = SIZE / 21;
    for line in 0..n {
        c.frames.push((0, 1, 2, line as u32));
    }
    c.tracebacks.push(((0..n as u32).collect(), 0, 16, false));
    c.traces.push((64, 0));
    assert_bounded("distinct frames used once", &c, 4.0);
}

#[test]
fn frames_no_traceback_uses() {
    let mut c = Contents::with_names();
    for line in 0..SIZE / 17 {
        c.frames.push((0, 1, 2, line as u32));
    }
    assert_bounded("unused frames", &c, 4.0);
}

#[test]
fn empty_strings() {
    let c = Contents {
        strings: vec![Vec::new(); SIZE / 4],
        ..Contents::default()
    };
    assert_bounded("empty strings", &c, 4.0);
}

/// Frames that each name three distinct strings of `len` bytes of their own, all of them used
/// by one traceback.
fn frames_of_strings(len: usize) -> Contents {
    let mut c = Contents::default();
    let n = SIZE / (17 + 4 + 3 * (4 + len));
    let mut text = (0u64..).map(|i| {
        let digits = format!("{i:016x}");
        digits.as_bytes()[16 - len..].to_vec()
    });
    for i in 0..n as u32 {
        for _ in 0..3 {
            c.strings.push(text.next().unwrap());
        }
        c.frames.push((3 * i, 3 * i + 1, 3 * i + 2, i));
    }
    c.tracebacks.push(((0..n as u32).collect(), 0, 16, false));
    c.traces.push((64, 0));
    c
}

#[test]
fn frames_of_distinct_strings() {
    assert_bounded("frames of 8-byte strings", &frames_of_strings(8), 4.0);
    // A string of 2 to 7 bytes (6 to 11 in the file) needs an `Arc<str>` of 24: with the file
    // itself, that is over 4 times what it takes in the file, whatever the loader does.
    assert_bounded("frames of 3-byte strings", &frames_of_strings(3), 5.0);
    assert_bounded("frames of 2-byte strings", &frames_of_strings(2), 5.0);
}

#[test]
fn many_traces() {
    let mut c = Contents::with_names();
    c.frames.push((0, 1, 2, 7));
    c.tracebacks.push((vec![0], 0, 16, false));
    for i in 0..SIZE / 12 {
        c.traces.push((i as u64 + 1, 0));
    }
    let snapshot = assert_bounded("traces", &c, 4.0);
    assert_eq!(snapshot.traces().len(), SIZE / 12);
}

#[test]
fn many_allocation_totals() {
    let mut c = Contents::with_names();
    c.frames.push((0, 1, 2, 7));
    c.tracebacks.push((vec![0], 0, 16, false));
    for i in 0..SIZE / 20 {
        c.totals.push((i as u64 + 1, 1, 0));
    }
    let snapshot = assert_bounded("allocation totals", &c, 4.0);
    assert!(snapshot.allocated_total().unwrap().1 > 1);
}

#[test]
fn deep_stacks_as_programs_make_them() {
    // 2000 frames; distinct stacks of 48, the call site 10 frames in, the default limit.
    let mut c = Contents::with_names();
    for line in 0..2000 {
        c.frames.push((0, 1, 2, line));
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let per = 13 + 48 * 4 + 12;
    for i in 0..SIZE / per {
        let ids = (0..48).map(|_| rng.below(2000) as u32).collect();
        c.tracebacks.push((ids, 10, 16, false));
        c.traces.push((64, i as u32));
    }
    let snapshot = assert_bounded("deep stacks", &c, 4.0);
    // The analyses stay within the same bound.
    let (stats, m) = tracealloc::measure(|| snapshot.statistics(tracealloc::GroupBy::Line));
    assert!(!stats.is_empty());
    assert!(
        m.peak() <= 4 * SIZE,
        "statistics took {} B for a {SIZE} B file",
        m.peak()
    );
}
