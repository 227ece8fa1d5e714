//! `dump` / `load`: a versioned, self-describing binary format that carries the symbolized
//! frames, so a dump opens on another machine without the binary.
//!
//! ```text
//! offset 0   magic      8 bytes  "TRACEALC"
//!        8   version    u32 LE   6 (files of versions 1 to 5 still load)
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
//!                       version 3: u64 temporary bytes, u64 temporary blocks; u32 traceback
//!                       index): per stack, what was allocated and is no longer live
//!            duration   u8 known (0 or 1); when 1: u64 nanoseconds from the start of tracing
//!                       to the snapshot
//!            sampling   u64 mean bytes between samples (0: every allocation was traced)
//!            version 3 and later:
//!            peak       u8 known (0 or 1; version 4: 2 = not known because the breakdown was
//!                       switched off); when 1: u64 traced peak bytes, u8 time known (0 or
//!                       1) and when 1 u64 nanoseconds from the start of tracing, u64 count,
//!                       then (u64 bytes, u64 blocks, u32 traceback index): per stack, what was
//!                       live at the peak
//!            sizes      u8 known (0 or 1); when 1: u8 count (at most 65), then count × u64:
//!                       blocks requested per power-of-two size bucket
//!            version 5 and later:
//!            origin     u8 known (0 or 1); when 1: u64 nanoseconds since the Unix epoch when
//!                       the snapshot was taken, u32 process id, then the executable's path and
//!                       the command line, each as (u32 length, UTF-8 bytes)
//!            version 6 and later:
//!            lifetimes  u8 known (0 or 1); when 1: u64 count, then (u64 nanoseconds, u32
//!                       traceback index): per stack, the lifetimes of its blocks summed
//! ```
//!
//! Loading checks everything (magic, version, length, checksum, every count against the bytes
//! left, every index, UTF-8) and reports the first problem with its byte offset. It never
//! reserves more memory than the remaining bytes could describe.
//!
//! Its memory is proportional to the file, whatever the file holds (see `read_stacks`): the
//! file's bytes and the snapshot together take at most 4 times the file's size (tests/
//! load_memory.rs), and up to 4.6 times for a file whose frames name distinct strings of 2 to
//! 7 bytes (each needs an `Arc<str>` of 24 bytes for its 6 to 11 in the file).

use super::{
    Frame, Identity, Lifetime, Origin, Peak, PeakGroup, Released, Snapshot, Stack, Stacks, Trace,
    Traceback,
};
use crate::error::Error;
use crate::stack::CaptureMode;
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"TRACEALC";
const VERSION: u32 = 6;
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
        // The tracer's own work, not the program's: untraced (frees still forget).
        let _quiet = crate::guard::Guard::enter();
        let mut strings = Table::<&str>::default();
        let mut frames = Table::<&Frame>::default();
        let mut tracebacks: Vec<&Traceback> = Vec::new();
        let mut traceback_ids: HashMap<Identity, u32> = HashMap::new();
        let mut traces: Vec<(u64, u32)> = Vec::with_capacity(self.traces.len());
        for trace in &self.traces {
            let id = traceback_id(&trace.traceback, &mut traceback_ids, &mut tracebacks);
            traces.push((trace.size as u64, id));
        }
        let mut released: Vec<(&Released, u32)> = Vec::new();
        for r in self.released.iter().flatten() {
            let id = traceback_id(&r.traceback, &mut traceback_ids, &mut tracebacks);
            released.push((r, id));
        }
        let mut peak_groups: Vec<(u64, u64, u32)> = Vec::new();
        for g in self.peak.iter().flat_map(|p| &p.groups) {
            let id = traceback_id(&g.traceback, &mut traceback_ids, &mut tracebacks);
            peak_groups.push((g.bytes, g.blocks, id));
        }
        let mut lifetimes: Vec<(u64, u32)> = Vec::new();
        for l in self.lifetimes.iter().flatten() {
            let id = traceback_id(&l.traceback, &mut traceback_ids, &mut tracebacks);
            lifetimes.push((l.nanos, id));
        }
        for traceback in &tracebacks {
            for frame in traceback.all().iter() {
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
            body.u32(traceback.all().len() as u32);
            body.u32(call_site as u32);
            body.u32(limit as u32);
            body.out.push(u8::from(truncated));
            for frame in traceback.all().iter() {
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
            for &(r, id) in &released {
                body.u64(r.bytes);
                body.u64(r.blocks);
                body.u64(r.temporary_bytes);
                body.u64(r.temporary_blocks);
                body.u32(id);
            }
        }
        let nanos = |d: std::time::Duration| d.as_nanos().min(u64::MAX as u128) as u64;
        body.out.push(u8::from(self.duration.is_some()));
        if let Some(d) = self.duration {
            body.u64(nanos(d));
        }
        body.u64(self.sample_mean);
        body.out.push(match (&self.peak, self.peak_switched_off) {
            (Some(_), _) => 1,
            (None, true) => 2,
            (None, false) => 0,
        });
        if let Some(peak) = &self.peak {
            body.u64(peak.bytes);
            body.out.push(u8::from(peak.at.is_some()));
            if let Some(at) = peak.at {
                body.u64(nanos(at));
            }
            body.u64(peak_groups.len() as u64);
            for &(bytes, blocks, id) in &peak_groups {
                body.u64(bytes);
                body.u64(blocks);
                body.u32(id);
            }
        }
        body.out.push(u8::from(self.sizes.is_some()));
        if let Some(sizes) = &self.sizes {
            body.out.push(sizes.len() as u8);
            for &n in sizes {
                body.u64(n);
            }
        }
        body.out.push(u8::from(self.origin.is_some()));
        if let Some(origin) = &self.origin {
            body.u64(origin.unix_nanos);
            body.u32(origin.pid);
            for text in [&origin.program, &origin.command] {
                body.u32(text.len() as u32);
                body.out.extend_from_slice(text.as_bytes());
            }
        }
        body.out.push(u8::from(self.lifetimes.is_some()));
        if self.lifetimes.is_some() {
            body.u64(lifetimes.len() as u64);
            for &(nanos, id) in &lifetimes {
                body.u64(nanos);
                body.u32(id);
            }
        }

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

        let stacks = read_stacks(&mut r, version)?;

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
            let traceback =
                Traceback::loaded(&stacks, r.index(stacks.len(), "a trace's traceback")?);
            traces.push(Trace { size, traceback });
        }
        let released =
            if version >= 2 && r.flag("the allocation-totals flag", "allocation-totals flag")? {
                Some(read_released(&mut r, &stacks, version)?)
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
        let peak_flag = if version >= 4 {
            let at = r.pos;
            match r.u8("the peak flag")? {
                flag @ 0..=2 => flag,
                other => {
                    return Err(corrupt(
                        at as u64,
                        format!("peak flag {other} is not 0, 1 or 2"),
                    ))
                }
            }
        } else if version == 3 {
            u8::from(r.flag("the peak flag", "peak flag")?)
        } else {
            0
        };
        let peak = if peak_flag == 1 {
            Some(read_peak(&mut r, &stacks)?)
        } else {
            None
        };
        let sizes = if version >= 3 && r.flag("the size-histogram flag", "size-histogram flag")? {
            let at = r.pos;
            let n = r.u8("the size-bucket count")? as usize;
            if n > crate::table::SIZE_BUCKETS {
                return Err(corrupt(
                    at as u64,
                    format!(
                        "{n} size buckets (there are {})",
                        crate::table::SIZE_BUCKETS
                    ),
                ));
            }
            let mut sizes = Vec::with_capacity(n);
            for _ in 0..n {
                sizes.push(r.u64("a size bucket")?);
            }
            Some(sizes)
        } else {
            None
        };
        let origin = if version >= 5 && r.flag("the origin flag", "origin flag")? {
            let unix_nanos = r.u64("the snapshot's time")?;
            let pid = r.u32("the process id")?;
            let program = r.text("the program's path")?;
            let command = r.text("the command line")?;
            Some(Arc::new(Origin {
                program,
                command,
                pid,
                unix_nanos,
            }))
        } else {
            None
        };
        let lifetimes = if version >= 6 && r.flag("the lifetimes flag", "lifetimes flag")? {
            let n = r.count64("lifetimes", 12)?;
            let mut lifetimes = Vec::with_capacity(n);
            for _ in 0..n {
                let nanos = r.u64("a lifetime")?;
                let traceback =
                    Traceback::loaded(&stacks, r.index(stacks.len(), "a lifetime's traceback")?);
                lifetimes.push(Lifetime { nanos, traceback });
            }
            Some(lifetimes)
        } else {
            None
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
            temporaries_known: version >= 3,
            peak_switched_off: peak_flag == 2,
            peak,
            sizes,
            duration,
            sample_mean,
            traceback_limit: traceback_limit as usize,
            capture_mode,
            origin,
            lifetimes,
        })
    }
}

/// The allocation totals of a version-2 file: per stack, what was allocated and is no longer
/// live.
fn read_released(
    r: &mut Reader<'_>,
    stacks: &Arc<Stacks>,
    version: u32,
) -> Result<Vec<Released>, Error> {
    let n = r.count64("allocation totals", if version >= 3 { 36 } else { 20 })?;
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
        let (temporary_bytes, temporary_blocks) = if version >= 3 {
            let at = r.pos;
            let t = (r.u64("temporary bytes")?, r.u64("temporary blocks")?);
            if t.0 > bytes || t.1 > blocks {
                return Err(corrupt(
                    at as u64,
                    "more temporary allocations than allocations",
                ));
            }
            t
        } else {
            (0, 0)
        };
        let traceback = Traceback::loaded(stacks, r.index(stacks.len(), "a total's traceback")?);
        released.push(Released {
            bytes,
            blocks,
            temporary_bytes,
            temporary_blocks,
            traceback,
        });
    }
    Ok(released)
}

/// The index of `traceback` in the file's tracebacks section, which it joins the first time.
fn traceback_id<'a>(
    traceback: &'a Traceback,
    ids: &mut HashMap<Identity, u32>,
    tracebacks: &mut Vec<&'a Traceback>,
) -> u32 {
    *ids.entry(traceback.identity()).or_insert_with(|| {
        tracebacks.push(traceback);
        tracebacks.len() as u32 - 1
    })
}

/// The peak section of a version-3 file.
fn read_peak(r: &mut Reader<'_>, stacks: &Arc<Stacks>) -> Result<Peak, Error> {
    let bytes = r.u64("the peak")?;
    let at = if r.flag("the peak-time flag", "peak-time flag")? {
        Some(std::time::Duration::from_nanos(r.u64("the peak time")?))
    } else {
        None
    };
    let n = r.count64("peak groups", 20)?;
    let mut groups = Vec::with_capacity(n);
    let mut sum: u64 = 0;
    for _ in 0..n {
        let at = r.pos;
        let group_bytes = r.u64("bytes at the peak")?;
        let blocks = r.u64("blocks at the peak")?;
        if blocks == 0 {
            return Err(corrupt(at as u64 + 8, "a peak group of 0 blocks"));
        }
        sum = sum
            .checked_add(group_bytes)
            .filter(|&s| s <= isize::MAX as u64)
            .ok_or_else(|| {
                corrupt(
                    at as u64,
                    "the peak groups add up to more than any process can hold",
                )
            })?;
        let traceback =
            Traceback::loaded(stacks, r.index(stacks.len(), "a peak group's traceback")?);
        groups.push(PeakGroup {
            bytes: group_bytes,
            blocks,
            traceback,
        });
    }
    Ok(Peak { bytes, at, groups })
}

/// The strings, frames and tracebacks sections: the file's stacks, every record checked.
///
/// What they take in memory stays proportional to the file, however its records refer to each
/// other: a frame becomes a [`Frame`] only when a traceback uses it, once however many do; a
/// string becomes an `Arc<str>` only when such a frame names it, once however many do (strings
/// of at most one byte once per load); a traceback is its run of 4-byte frame indices and a
/// 24-byte [`Stack`].
fn read_stacks(r: &mut Reader<'_>, version: u32) -> Result<Arc<Stacks>, Error> {
    // Strings: checked, and found again by their offset when a frame needs one.
    let n = r.count32("strings", 4)?;
    let mut strings = Slots::with_capacity(n, r.bytes.len());
    for _ in 0..n {
        let record = r.pos;
        let len = r.u32("a string length")? as usize;
        let at = r.pos;
        let raw = r.take(len, "a string")?;
        std::str::from_utf8(raw)
            .map_err(|e| corrupt((at + e.valid_up_to()) as u64, "a string is not valid UTF-8"))?;
        strings.push(record);
    }

    // Frames: checked, and read again when a traceback uses one.
    let record_len = if version >= 2 { 17 } else { 16 };
    let n_frames = r.count32("frames", record_len)?;
    let frames_at = r.pos;
    for _ in 0..n_frames {
        r.index(strings.len(), "a frame's file name")?;
        r.index(strings.len(), "a frame's path")?;
        r.index(strings.len(), "a frame's function")?;
        r.u32("a line number")?;
        if version >= 2 {
            frame_flags(r)?;
        }
    }

    // Tracebacks, checked, and which frames they use.
    let n_tracebacks = r.count32("tracebacks", 13)?;
    let tracebacks_at = r.pos;
    let mut used = Bitmap::new(n_frames);
    let mut n_indices = 0usize;
    for _ in 0..n_tracebacks {
        let (nframes, ..) = traceback_header(r)?;
        for _ in 0..nframes {
            used.set(r.index(n_frames, "a traceback's frame")?);
        }
        n_indices += nframes;
    }
    let tracebacks_end = r.pos;

    // The frames used, in the file's order.
    let used = used.ranked();
    let mut frames: Vec<Frame> = Vec::with_capacity(used.count());
    let mut short = ShortStrings::default();
    for i in used.iter() {
        let mut f = Reader {
            bytes: r.bytes,
            pos: frames_at + i * record_len,
        };
        let ids = [
            f.u32("a frame's file name")? as usize,
            f.u32("a frame's path")? as usize,
            f.u32("a frame's function")? as usize,
        ];
        let lineno = f.u32("a line number")?;
        let inlined = version >= 2 && frame_flags(&mut f)?;
        let this = frames.len();
        let mut fields: [Option<Arc<str>>; 3] = Default::default();
        for (field, &id) in ids.iter().enumerate() {
            let text = match strings.get(id) {
                Slot::At(record) => {
                    let text = read_string(r.bytes, record, &mut short)?;
                    strings.set(id, Slot::Held { frame: this, field });
                    text
                }
                Slot::Held { frame, field: held } if frame == this => fields[held]
                    .clone()
                    .expect("an earlier field of this frame"),
                Slot::Held { frame, field } => {
                    let f = &frames[frame];
                    Arc::clone([&f.filename, &f.path, &f.function][field])
                }
            };
            fields[field] = Some(text);
        }
        let [filename, path, function] = fields.map(|f| f.expect("all three fields"));
        frames.push(Frame {
            filename,
            lineno,
            function,
            path,
            inlined,
        });
    }
    drop(strings);

    // Tracebacks again: their frame indices into the frames used.
    r.pos = tracebacks_at;
    let mut indices: Vec<u32> = Vec::with_capacity(n_indices);
    let mut stacks: Vec<Stack> = Vec::with_capacity(n_tracebacks);
    for _ in 0..n_tracebacks {
        let (nframes, call_site, limit, truncated) = traceback_header(r)?;
        let start = indices.len();
        for _ in 0..nframes {
            let i = r.u32("a traceback's frame")? as usize;
            indices.push(used.rank(i) as u32);
        }
        stacks.push(Stack::new(
            &frames, &indices, start, call_site, limit, truncated,
        ));
    }
    debug_assert_eq!(r.pos, tracebacks_end);
    Ok(Stacks::new(frames, indices, stacks))
}

/// A frame's flags byte (version 2): whether it was inlined into the next frame.
fn frame_flags(r: &mut Reader<'_>) -> Result<bool, Error> {
    let at = r.pos;
    match r.u8("a frame's flags")? {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(corrupt(
            at as u64,
            format!("frame flags {other:#x} have unknown bits"),
        )),
    }
}

/// A traceback's record up to its frame indices, checked: (frames, call site, limit,
/// truncated).
fn traceback_header(r: &mut Reader<'_>) -> Result<(usize, u32, u32, bool), Error> {
    let at = r.pos;
    let nframes = r.count32("frames of a traceback", 4)?;
    let call_site = r.u32("a call site index")?;
    let limit = r.u32("a traceback limit")?;
    let truncated = r.flag("a truncation flag", "truncation flag")?;
    let site = call_site as usize;
    if nframes > 0 && site >= nframes || nframes == 0 && site != 0 {
        return Err(corrupt(
            at as u64 + 4,
            format!("call site {call_site} outside a traceback of {nframes} frames"),
        ));
    }
    if !(1..=crate::tracer::MAX_FRAMES as u32).contains(&limit) {
        return Err(corrupt(
            at as u64 + 8,
            format!("traceback limit {limit} outside 1..=256"),
        ));
    }
    Ok((nframes, call_site, limit, truncated))
}

/// The string whose record (length, then UTF-8 bytes, already checked) starts at `record`.
fn read_string(bytes: &[u8], record: usize, short: &mut ShortStrings) -> Result<Arc<str>, Error> {
    let mut r = Reader { bytes, pos: record };
    let len = r.u32("a string length")? as usize;
    let at = r.pos;
    let text = std::str::from_utf8(r.take(len, "a string")?)
        .map_err(|e| corrupt((at + e.valid_up_to()) as u64, "a string is not valid UTF-8"))?;
    Ok(short.get(text).unwrap_or_else(|| text.into()))
}

/// The strings of at most one byte (the empty one and the ASCII characters), one `Arc` each
/// per load, however many records hold them: they cost the file 4 or 5 bytes, their `Arc` 24.
struct ShortStrings([Option<Arc<str>>; 129]);

impl Default for ShortStrings {
    fn default() -> Self {
        ShortStrings(std::array::from_fn(|_| None))
    }
}

impl ShortStrings {
    fn get(&mut self, text: &str) -> Option<Arc<str>> {
        let slot = match text.as_bytes() {
            [] => 0,
            [b] => 1 + *b as usize,
            _ => return None,
        };
        Some(Arc::clone(self.0[slot].get_or_insert_with(|| text.into())))
    }
}

/// Where each string of a file is: its record's offset until a frame holds it, then that frame
/// and field. Four bytes a string in files under 2 GiB, eight above.
enum Slots {
    Narrow(Vec<u32>),
    Wide(Vec<u64>),
}

#[derive(Clone, Copy)]
enum Slot {
    At(usize),
    /// Field `field` (file name, path, function) of the `frame`th frame made.
    Held {
        frame: usize,
        field: usize,
    },
}

impl Slots {
    /// Room for `n` strings of a file of `file_len` bytes.
    fn with_capacity(n: usize, file_len: usize) -> Slots {
        // Offsets, and frame numbers × 3 (a frame takes 16 bytes of the file), stay below the
        // top bit.
        if file_len < 1 << 31 {
            Slots::Narrow(Vec::with_capacity(n))
        } else {
            Slots::Wide(Vec::with_capacity(n))
        }
    }

    fn len(&self) -> usize {
        match self {
            Slots::Narrow(v) => v.len(),
            Slots::Wide(v) => v.len(),
        }
    }

    fn push(&mut self, record: usize) {
        match self {
            Slots::Narrow(v) => v.push(record as u32),
            Slots::Wide(v) => v.push(record as u64),
        }
    }

    fn get(&self, i: usize) -> Slot {
        let (raw, top) = match self {
            Slots::Narrow(v) => (u64::from(v[i]), 1u64 << 31),
            Slots::Wide(v) => (v[i], 1u64 << 63),
        };
        if raw & top == 0 {
            Slot::At(raw as usize)
        } else {
            let held = (raw & !top) as usize;
            Slot::Held {
                frame: held / 3,
                field: held % 3,
            }
        }
    }

    fn set(&mut self, i: usize, slot: Slot) {
        let Slot::Held { frame, field } = slot else {
            unreachable!("strings only become held")
        };
        let held = (frame * 3 + field) as u64;
        match self {
            Slots::Narrow(v) => v[i] = (held | 1 << 31) as u32,
            Slots::Wide(v) => v[i] = held | 1 << 63,
        }
    }
}

/// Which frames the tracebacks use: a bit a frame.
struct Bitmap {
    words: Vec<u64>,
}

impl Bitmap {
    fn new(n: usize) -> Bitmap {
        Bitmap {
            words: vec![0; n.div_ceil(64)],
        }
    }

    fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    /// With the count of set bits before each word, for [`Ranked::rank`].
    fn ranked(self) -> Ranked {
        let mut before = Vec::with_capacity(self.words.len());
        let mut count = 0u32;
        for w in &self.words {
            before.push(count);
            count += w.count_ones();
        }
        Ranked {
            words: self.words,
            before,
            count: count as usize,
        }
    }
}

/// A [`Bitmap`] that tells how many bits are set before any bit.
struct Ranked {
    words: Vec<u64>,
    before: Vec<u32>,
    count: usize,
}

impl Ranked {
    fn count(&self) -> usize {
        self.count
    }

    /// How many set bits come before bit `i`: the position of frame `i` among those used.
    fn rank(&self, i: usize) -> usize {
        let below = self.words[i / 64] & ((1u64 << (i % 64)) - 1);
        self.before[i / 64] as usize + below.count_ones() as usize
    }

    /// The set bits, in order.
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                (rest != 0).then(|| {
                    let bit = rest.trailing_zeros() as usize;
                    rest &= rest - 1;
                    w * 64 + bit
                })
            })
        })
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`, so a reader
/// never sees half a file and a failed write leaves the old file intact.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    // The tracer's own work, not the program's: untraced (frees still forget).
    let _quiet = crate::guard::Guard::enter();
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

    /// A string: u32 length, then UTF-8 bytes.
    fn text(&mut self, what: &str) -> Result<String, Error> {
        let len = self.u32(what)? as usize;
        let at = self.pos;
        let raw = self.take(len, what)?;
        std::str::from_utf8(raw).map(str::to_owned).map_err(|e| {
            corrupt(
                (at + e.valid_up_to()) as u64,
                format!("{what} is not valid UTF-8"),
            )
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_count_the_set_bits_before() {
        let mut bits = Bitmap::new(200);
        for i in [0, 5, 63, 64, 130, 199] {
            bits.set(i);
        }
        bits.set(5);
        let ranked = bits.ranked();
        assert_eq!(ranked.count(), 6);
        assert_eq!(ranked.iter().collect::<Vec<_>>(), [0, 5, 63, 64, 130, 199]);
        let ranks: Vec<usize> = ranked.iter().map(|i| ranked.rank(i)).collect();
        assert_eq!(ranks, [0, 1, 2, 3, 4, 5]);
        assert_eq!(ranked.rank(100), 4);
        assert_eq!(Bitmap::new(0).ranked().iter().count(), 0);
    }

    #[test]
    fn string_slots_hold_an_offset_then_a_frame() {
        for file_len in [100, 1 << 32] {
            let mut slots = Slots::with_capacity(3, file_len);
            for record in [0, 24, 99] {
                slots.push(record);
            }
            slots.set(1, Slot::Held { frame: 7, field: 2 });
            assert!(matches!(slots.get(0), Slot::At(0)));
            assert!(matches!(slots.get(1), Slot::Held { frame: 7, field: 2 }));
            assert!(matches!(slots.get(2), Slot::At(99)));
            assert_eq!(slots.len(), 3);
        }
        assert!(matches!(Slots::with_capacity(0, 1 << 31), Slots::Wide(_)));
    }

    /// Two frames naming the same strings, one of them twice.
    #[test]
    fn strings_named_by_several_frames_are_made_once() {
        let mut body = Body::default();
        body.u32(16);
        body.out.push(1);
        body.u32(0);
        body.u32(2);
        for s in ["src/main.rs", "app::main"] {
            body.u32(s.len() as u32);
            body.out.extend_from_slice(s.as_bytes());
        }
        body.u32(2);
        for line in [1, 2] {
            for id in [0, 0, 1, line] {
                body.u32(id);
            }
            body.out.push(0);
        }
        body.u32(1);
        for v in [2, 0, 16] {
            body.u32(v);
        }
        body.out.push(0);
        body.u32(0);
        body.u32(1);
        body.u64(1);
        body.u64(8);
        body.u32(0);
        body.out.extend_from_slice(&[0, 0]);
        body.u64(0);
        // No peak, no size histogram, no origin, no lifetimes.
        body.out.extend_from_slice(&[0, 0, 0, 0]);
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&VERSION.to_le_bytes());
        file.extend_from_slice(&(body.out.len() as u64).to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(&body.out).to_le_bytes());
        file.extend_from_slice(&body.out);
        let snapshot = Snapshot::from_bytes(&file).unwrap();
        let traceback = &snapshot.traces()[0].traceback;
        let [a, b] = [0, 1].map(|i| traceback.all().get(i));
        assert_eq!((a.lineno, b.lineno), (1, 2));
        assert!(Arc::ptr_eq(&a.filename, &a.path));
        assert!(Arc::ptr_eq(&a.filename, &b.filename));
        assert!(Arc::ptr_eq(&a.function, &b.function));
        assert_eq!(&*b.function, "app::main");
    }
}
