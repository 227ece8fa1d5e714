//! `dump` / `load`: a versioned, self-describing binary format that carries the symbolized
//! frames, so a dump opens on another machine without the binary.
//!
//! ```text
//! offset 0   magic      8 bytes  "TRACEALC"
//!        8   version    u32 LE   2 (version 1 files, without allocation totals, still load)
//!        12  body_len   u64 LE   bytes of the body
//!        20  crc32      u32 LE   CRC-32 of the body
//!        24  body:
//!            traceback_limit u32, capture_mode u8 (0 undecided, 1 frame pointers, 2 backtrace,
//!            3 unwind tables), call_sites_without_lines u32
//!            strings    u32 count, then (u32 length, UTF-8 bytes) each
//!            frames     u32 count, then (filename, path, function: u32 string index; lineno u32;
//!                       version 2: flags u8, bit 0 = inlined into the next frame)
//!            tracebacks u32 count, then (u32 nframes, u32 call_site, u32 limit, u8 truncated,
//!                       nframes × u32 frame index), frames innermost first
//!            traces     u64 count, then (u64 size, u32 traceback index)
//!            version 2 only:
//!            totals     u8 known (0 or 1); when 1: u64 count, then (u64 bytes, u64 blocks,
//!                       u32 traceback index): per stack, what was allocated and is no longer
//!                       live
//!            duration   u8 known (0 or 1); when 1: u64 nanoseconds from the start of tracing
//!                       to the snapshot
//!            sampling   u64 mean bytes between samples (0: every allocation was traced)
//! ```
//!
//! Loading checks everything (magic, version, length, checksum, every count against the bytes
//! left, every index, UTF-8) and reports the first problem with its byte offset. It never
//! reserves more memory than the remaining bytes could describe.

use super::{Frame, Released, Snapshot, Trace, Traceback};
use crate::error::Error;
use crate::stack::CaptureMode;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

const MAGIC: &[u8; 8] = b"TRACEALC";
const VERSION: u32 = 2;
const HEADER: usize = 24;

impl Snapshot {
    /// Writes the snapshot to `path` atomically: to a temporary file beside it, then renamed.
    pub fn dump(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        write_atomically(path.as_ref(), &self.to_bytes())
    }

    /// Reads a snapshot written by [`dump`](Self::dump).
    pub fn load(path: impl AsRef<Path>) -> Result<Snapshot, Error> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Snapshot::from_bytes(&bytes)
    }

    /// The snapshot in the dump format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut strings = Table::<&str>::default();
        let mut frames = Table::<&Frame>::default();
        let mut tracebacks: Vec<&Traceback> = Vec::new();
        let mut traceback_ids: HashMap<*const Frame, u32> = HashMap::new();
        let mut traces: Vec<(u64, u32)> = Vec::with_capacity(self.traces.len());
        for trace in &self.traces {
            let id = *traceback_ids
                .entry(trace.traceback.all_frames().as_ptr())
                .or_insert_with(|| {
                    tracebacks.push(&trace.traceback);
                    tracebacks.len() as u32 - 1
                });
            traces.push((trace.size as u64, id));
        }
        let mut released: Vec<(u64, u64, u32)> = Vec::new();
        for r in self.released.iter().flatten() {
            let id = *traceback_ids
                .entry(r.traceback.all_frames().as_ptr())
                .or_insert_with(|| {
                    tracebacks.push(&r.traceback);
                    tracebacks.len() as u32 - 1
                });
            released.push((r.bytes, r.blocks, id));
        }
        for traceback in &tracebacks {
            for frame in traceback.all_frames() {
                frames.id(frame);
            }
        }
        for frame in &frames.items {
            strings.id(&frame.filename);
            strings.id(&frame.path);
            strings.id(&frame.function);
        }

        let mut body = Body::default();
        body.u32(self.traceback_limit as u32);
        body.out.push(match self.capture_mode {
            CaptureMode::Undecided => 0,
            CaptureMode::FramePointers => 1,
            CaptureMode::Backtrace => 2,
            CaptureMode::UnwindTables => 3,
        });
        body.u32(self.call_sites_without_lines() as u32);
        body.u32(strings.items.len() as u32);
        for s in &strings.items {
            body.u32(s.len() as u32);
            body.out.extend_from_slice(s.as_bytes());
        }
        body.u32(frames.items.len() as u32);
        for frame in &frames.items {
            body.u32(strings.ids[&*frame.filename]);
            body.u32(strings.ids[&*frame.path]);
            body.u32(strings.ids[&*frame.function]);
            body.u32(frame.lineno);
            body.out.push(u8::from(frame.inlined));
        }
        body.u32(tracebacks.len() as u32);
        for traceback in &tracebacks {
            let (call_site, limit, truncated) = traceback.parts();
            body.u32(traceback.all_frames().len() as u32);
            body.u32(call_site as u32);
            body.u32(limit as u32);
            body.out.push(u8::from(truncated));
            for frame in traceback.all_frames() {
                body.u32(frames.ids[frame]);
            }
        }
        body.u64(traces.len() as u64);
        for &(size, id) in &traces {
            body.u64(size);
            body.u32(id);
        }
        body.out.push(u8::from(self.released.is_some()));
        if self.released.is_some() {
            body.u64(released.len() as u64);
            for &(bytes, blocks, id) in &released {
                body.u64(bytes);
                body.u64(blocks);
                body.u32(id);
            }
        }
        body.out.push(u8::from(self.duration.is_some()));
        if let Some(d) = self.duration {
            body.u64(d.as_nanos().min(u64::MAX as u128) as u64);
        }
        body.u64(self.sample_mean);

        let mut out = Vec::with_capacity(HEADER + body.out.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(body.out.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&body.out).to_le_bytes());
        out.extend_from_slice(&body.out);
        out
    }

    /// Reads the dump format; any damage is an [`Error::Corrupt`] naming the problem and its
    /// byte offset.
    pub fn from_bytes(bytes: &[u8]) -> Result<Snapshot, Error> {
        let mut r = Reader { bytes, pos: 0 };
        let magic = r.take(8, "the magic number")?;
        if magic != MAGIC {
            return Err(corrupt(
                0,
                "wrong magic number: this is not a tracealloc snapshot",
            ));
        }
        let version = r.u32("the version")?;
        if !(1..=VERSION).contains(&version) {
            return Err(corrupt(
                8,
                format!(
                    "unknown format version {version} (this build reads versions 1 to {VERSION})"
                ),
            ));
        }
        let body_len = r.u64("the body length")?;
        let crc = r.u32("the checksum")?;
        let available = (bytes.len() - HEADER) as u64;
        if body_len > available {
            return Err(corrupt(
                bytes.len() as u64,
                format!("truncated: the header announces {body_len} bytes of body, the file has {available}"),
            ));
        }
        if body_len < available {
            return Err(corrupt(
                HEADER as u64 + body_len,
                format!(
                    "{} unexpected bytes after the end of the snapshot",
                    available - body_len
                ),
            ));
        }
        if crc32fast::hash(&bytes[HEADER..]) != crc {
            return Err(corrupt(20, "checksum mismatch: the file is damaged"));
        }

        let traceback_limit = r.u32("the traceback limit")?;
        if !(1..=crate::tracer::MAX_FRAMES as u32).contains(&traceback_limit) {
            return Err(corrupt(
                r.pos as u64 - 4,
                format!("traceback limit {traceback_limit} outside 1..=256"),
            ));
        }
        let mode_at = r.pos;
        let capture_mode = match r.u8("the capture mode")? {
            0 => CaptureMode::Undecided,
            1 => CaptureMode::FramePointers,
            2 => CaptureMode::Backtrace,
            3 => CaptureMode::UnwindTables,
            other => {
                return Err(corrupt(
                    mode_at as u64,
                    format!("unknown capture mode {other}"),
                ))
            }
        };
        // Derived from the traces on reading; kept in the format for older readers.
        r.u32("the count of call sites without lines")?;

        let n = r.count32("strings", 4)?;
        let mut strings: Vec<std::sync::Arc<str>> = Vec::with_capacity(n);
        for _ in 0..n {
            let len = r.u32("a string length")? as usize;
            let at = r.pos;
            let raw = r.take(len, "a string")?;
            let s = std::str::from_utf8(raw).map_err(|e| {
                corrupt((at + e.valid_up_to()) as u64, "a string is not valid UTF-8")
            })?;
            strings.push(s.into());
        }

        let n = r.count32("frames", if version >= 2 { 17 } else { 16 })?;
        let mut frames: Vec<Frame> = Vec::with_capacity(n);
        for _ in 0..n {
            let filename = r.index(strings.len(), "a frame's file name")?;
            let path = r.index(strings.len(), "a frame's path")?;
            let function = r.index(strings.len(), "a frame's function")?;
            let lineno = r.u32("a line number")?;
            let inlined = if version >= 2 {
                let at = r.pos;
                match r.u8("a frame's flags")? {
                    0 => false,
                    1 => true,
                    other => {
                        return Err(corrupt(
                            at as u64,
                            format!("frame flags {other:#x} have unknown bits"),
                        ))
                    }
                }
            } else {
                false
            };
            frames.push(Frame {
                filename: strings[filename].clone(),
                lineno,
                function: strings[function].clone(),
                path: strings[path].clone(),
                inlined,
            });
        }

        let n = r.count32("tracebacks", 13)?;
        let mut tracebacks: Vec<Traceback> = Vec::with_capacity(n);
        for _ in 0..n {
            let at = r.pos;
            let nframes = r.count32("frames of a traceback", 4)?;
            let call_site = r.u32("a call site index")? as usize;
            let limit = r.u32("a traceback limit")? as usize;
            let truncated = r.flag("a truncation flag", "truncation flag")?;
            if nframes > 0 && call_site >= nframes || nframes == 0 && call_site != 0 {
                return Err(corrupt(
                    at as u64 + 4,
                    format!("call site {call_site} outside a traceback of {nframes} frames"),
                ));
            }
            if !(1..=crate::tracer::MAX_FRAMES).contains(&limit) {
                return Err(corrupt(
                    at as u64 + 8,
                    format!("traceback limit {limit} outside 1..=256"),
                ));
            }
            let mut all = Vec::with_capacity(nframes);
            for _ in 0..nframes {
                all.push(frames[r.index(frames.len(), "a traceback's frame")?].clone());
            }
            tracebacks.push(Traceback::new(all, call_site, limit, truncated));
        }

        let n = r.count64("traces", 12)?;
        let mut traces = Vec::with_capacity(n);
        let mut total: u64 = 0;
        for _ in 0..n {
            let at = r.pos;
            let size = r.u64("a trace size")?;
            // No process holds more than isize::MAX bytes: more means a damaged file (and sums
            // over the traces must not overflow).
            total = total
                .checked_add(size)
                .filter(|&t| t <= isize::MAX as u64)
                .ok_or_else(|| {
                    corrupt(
                        at as u64,
                        "the trace sizes add up to more than any process can hold",
                    )
                })?;
            let size = size as usize;
            let traceback = tracebacks[r.index(tracebacks.len(), "a trace's traceback")?].clone();
            traces.push(Trace { size, traceback });
        }
        let released =
            if version >= 2 && r.flag("the allocation-totals flag", "allocation-totals flag")? {
                Some(read_released(&mut r, &tracebacks)?)
            } else {
                None
            };
        let duration = if version >= 2 && r.flag("the duration flag", "duration flag")? {
            Some(std::time::Duration::from_nanos(r.u64("the duration")?))
        } else {
            None
        };
        let sample_mean = if version >= 2 {
            let at = r.pos;
            let mean = r.u64("the sampling mean")?;
            if mean > crate::sample::MAX_SAMPLE_MEAN as u64 {
                return Err(corrupt(
                    at as u64,
                    format!("sampling mean {mean} is beyond any real one (at most 1 TiB)"),
                ));
            }
            mean
        } else {
            0
        };
        if r.pos != bytes.len() {
            return Err(corrupt(
                r.pos as u64,
                "bytes left over after the last trace",
            ));
        }
        Ok(Snapshot {
            traces,
            released,
            duration,
            sample_mean,
            traceback_limit: traceback_limit as usize,
            capture_mode,
        })
    }
}

/// The allocation totals of a version-2 file: per stack, what was allocated and is no longer
/// live.
fn read_released(r: &mut Reader<'_>, tracebacks: &[Traceback]) -> Result<Vec<Released>, Error> {
    let n = r.count64("allocation totals", 20)?;
    let mut released = Vec::with_capacity(n);
    let mut sum: u64 = 0;
    for _ in 0..n {
        let at = r.pos;
        let bytes = r.u64("released bytes")?;
        let blocks = r.u64("released blocks")?;
        if blocks == 0 {
            return Err(corrupt(at as u64 + 8, "an allocation total of 0 blocks"));
        }
        sum = sum
            .checked_add(bytes)
            .ok_or_else(|| corrupt(at as u64, "the allocation totals overflow 64 bits"))?;
        let traceback = tracebacks[r.index(tracebacks.len(), "a total's traceback")?].clone();
        released.push(Released {
            bytes,
            blocks,
            traceback,
        });
    }
    Ok(released)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`, so a reader
/// never sees half a file and a failed write leaves the old file intact.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    let mut temp_name = path.file_name().unwrap_or_default().to_owned();
    temp_name.push(format!(".tmp{}", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let written = std::fs::File::create(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&temp, path)) {
        let _ = std::fs::remove_file(&temp);
        return Err(io(e));
    }
    Ok(())
}

/// Items numbered in order of first appearance.
struct Table<T> {
    items: Vec<T>,
    ids: HashMap<T, u32>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            items: Vec::new(),
            ids: HashMap::new(),
        }
    }
}

impl<T: Copy + Eq + std::hash::Hash> Table<T> {
    fn id(&mut self, item: T) -> u32 {
        let next = self.items.len() as u32;
        let id = *self.ids.entry(item).or_insert(next);
        if id == next {
            self.items.push(item);
        }
        id
    }
}

#[derive(Default)]
struct Body {
    out: Vec<u8>,
}

impl Body {
    fn u32(&mut self, v: u32) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.out.extend_from_slice(&v.to_le_bytes());
    }
}

fn corrupt(offset: u64, problem: impl Into<String>) -> Error {
    Error::Corrupt {
        offset,
        problem: problem.into(),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], Error> {
        let left = self.bytes.len() - self.pos;
        if len > left {
            return Err(corrupt(
                self.bytes.len() as u64,
                format!(
                    "truncated while reading {what}: {len} bytes needed at byte {}, {left} left",
                    self.pos
                ),
            ));
        }
        let slice = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    fn u8(&mut self, what: &str) -> Result<u8, Error> {
        Ok(self.take(1, what)?[0])
    }

    /// A byte that must be 0 or 1; `name` names it in the error.
    fn flag(&mut self, what: &str, name: &str) -> Result<bool, Error> {
        let at = self.pos;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(corrupt(
                at as u64,
                format!("{name} {other} is neither 0 nor 1"),
            )),
        }
    }

    fn u32(&mut self, what: &str) -> Result<u32, Error> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, Error> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A count of records of at least `min_record` bytes each, checked against the bytes left.
    fn check_count(
        &self,
        at: usize,
        count: u64,
        min_record: usize,
        what: &str,
    ) -> Result<usize, Error> {
        let left = (self.bytes.len() - self.pos) as u64;
        if count.saturating_mul(min_record as u64) > left {
            return Err(corrupt(
                at as u64,
                format!(
                    "absurd count of {what}: {count} would need at least {} bytes, {left} left",
                    count.saturating_mul(min_record as u64)
                ),
            ));
        }
        Ok(count as usize)
    }

    fn count32(&mut self, what: &str, min_record: usize) -> Result<usize, Error> {
        let at = self.pos;
        let count = self.u32(what)?;
        self.check_count(at, count.into(), min_record, what)
    }

    fn count64(&mut self, what: &str, min_record: usize) -> Result<usize, Error> {
        let at = self.pos;
        let count = self.u64(what)?;
        self.check_count(at, count, min_record, what)
    }

    fn index(&mut self, len: usize, what: &str) -> Result<usize, Error> {
        let at = self.pos;
        let i = self.u32(what)? as usize;
        if i >= len {
            return Err(corrupt(
                at as u64,
                format!("{what}: index {i} out of range (only {len})"),
            ));
        }
        Ok(i)
    }
}
