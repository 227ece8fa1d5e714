//! What other tools read: folded stacks and flame graphs, pprof's profile.proto, DHAT's JSON.
//!
//! Every writer works on the frames a [`Traceback`] shows (call site outward, up to the
//! traceback limit; allocator and standard-library frames trimmed), so the pictures point at
//! the program's own lines, like the statistics.

use super::{ByShown, Frame, GroupBy, Snapshot, Traceback};
use crate::error::Error;
use std::collections::HashMap;
use std::path::Path;

/// Which figure an output shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Metric {
    /// Bytes (and blocks) live at the snapshot: what [`Snapshot::statistics`] shows.
    #[default]
    Live,
    /// Bytes (and blocks) allocated since tracing started, freed ones included: where the
    /// allocation traffic comes from ([`Snapshot::allocation_statistics`]).
    Allocated,
    /// Bytes (and blocks) live when the traced peak was reached ([`Snapshot::at_peak`]): what
    /// made the program need that much memory. (For pprof, convert `at_peak()`.)
    Peak,
    /// Temporary allocations: blocks freed by their thread before it allocated again
    /// ([`Snapshot::temporary_statistics`]).
    Temporary,
}

#[cfg(any(feature = "flamegraph", feature = "dhat"))]
impl Metric {
    fn describe(self) -> &'static str {
        match self {
            Metric::Live => "live at the snapshot",
            Metric::Allocated => "allocated since tracing started",
            Metric::Peak => "live at the peak",
            Metric::Temporary => "of temporary allocations",
        }
    }
}

/// One stack's figures for an output: the metric's, and all the stack's (`stack`).
struct Row {
    bytes: u64,
    blocks: u64,
    stack: Shown,
}

/// A stack as the outputs show it, with its live and total figures.
struct Shown {
    traceback: Traceback,
    live_bytes: u64,
    live_blocks: u64,
    total: Option<(u64, u64)>,
    peak: Option<(u64, u64)>,
    temporary: Option<(u64, u64)>,
    /// Nanoseconds its blocks lived, summed, when known.
    lifetime: Option<u64>,
}

/// The frames an output shows: from the innermost frame outside the allocator and std (a
/// dependency's, when a dependency allocated: pictures show what the dependencies do, below
/// the program's line) to the traceback's limit, without the outermost run of runtime
/// scaffolding (std's `lang_start` and thread-spawn closures, the C `main`,
/// `__libc_start_call_main`, `start_thread`, `clone`), so pictures start at the program's
/// `main` or its thread's closure. A stack made only of such frames keeps its call site.
fn shown_frames(traceback: &Traceback) -> Vec<Frame> {
    // `frames()` already ends before the scaffolding; only the inner end moves.
    let all = traceback.all();
    let (site, _, _) = traceback.parts();
    let end = site + traceback.shown().len();
    let inner = crate::stack::symbolize::call_site_of(all, crate::Attribution::Innermost).min(site);
    all.sub(inner..end).to_vec()
}

impl Snapshot {
    /// Per stack as shown (stacks that show the same frames merged: they differ in trimmed
    /// allocator frames, in runtime scaffolding, or beyond the traceback limit; DHAT's viewer
    /// refuses repeated stacks), live and total figures.
    // Tracebacks hash by their frames, never by the slices made on demand (their only
    // interior mutability).
    #[allow(clippy::mutable_key_type)]
    fn shown_stacks(&self) -> Vec<Shown> {
        let mut merged: HashMap<ByShown, Shown> = HashMap::new();
        for s in self.per_stack_totals() {
            let traceback = Traceback::from_frames(shown_frames(&s.traceback));
            let slot = merged.entry(ByShown(traceback.clone())).or_insert(Shown {
                traceback,
                live_bytes: 0,
                live_blocks: 0,
                total: s.total.map(|_| (0, 0)),
                peak: s.peak.map(|_| (0, 0)),
                temporary: s.temporary.map(|_| (0, 0)),
                lifetime: s.lifetime.map(|_| 0),
            });
            if let (Some(sum), Some(add)) = (&mut slot.lifetime, s.lifetime) {
                *sum = sum.saturating_add(add);
            }
            // Saturating: estimates from a sampled snapshot can be huge.
            slot.live_bytes = slot.live_bytes.saturating_add(s.live_bytes);
            slot.live_blocks = slot.live_blocks.saturating_add(s.live_blocks);
            for (sum, add) in [
                (&mut slot.total, s.total),
                (&mut slot.peak, s.peak),
                (&mut slot.temporary, s.temporary),
            ] {
                if let (Some(sum), Some(add)) = (sum, add) {
                    sum.0 = sum.0.saturating_add(add.0);
                    sum.1 = sum.1.saturating_add(add.1);
                }
            }
        }
        merged.into_values().collect()
    }

    /// Per shown stack, the metric's bytes and blocks (rows with nothing dropped), biggest
    /// first.
    fn rows(&self, metric: Metric) -> Result<Vec<Row>, Error> {
        if matches!(metric, Metric::Allocated | Metric::Temporary) && !self.has_allocation_totals()
        {
            return Err(Error::AllocationTotalsUnknown);
        }
        if metric == Metric::Temporary && self.temporary_statistics(GroupBy::Line).is_none() {
            return Err(Error::TemporariesUnknown);
        }
        if metric == Metric::Peak && self.peak_size().is_none() {
            return Err(Error::PeakNotKept);
        }
        let mut rows: Vec<Row> = self
            .shown_stacks()
            .into_iter()
            .filter_map(|s| {
                let (bytes, blocks) = match metric {
                    Metric::Live => (s.live_bytes, s.live_blocks),
                    Metric::Allocated => s.total.unwrap_or_default(),
                    Metric::Peak => s.peak.unwrap_or_default(),
                    Metric::Temporary => s.temporary.unwrap_or_default(),
                };
                (blocks > 0).then_some(Row {
                    bytes,
                    blocks,
                    stack: s,
                })
            })
            .collect();
        // Deterministic output: biggest first, then by frames.
        rows.sort_by(|a, b| {
            (b.bytes, b.blocks)
                .cmp(&(a.bytes, a.blocks))
                .then_with(|| a.stack.traceback.shown().cmp(&b.stack.traceback.shown()))
        });
        Ok(rows)
    }

    /// Folded stacks, the text format of flamegraph.pl, inferno, speedscope and others: one
    /// line per stack, `root;caller;call site BYTES`, frames written `function (file:line)`,
    /// outermost first. Stacks that print the same are merged; lines are sorted. A `;` inside a
    /// name (as in `[u8; 4]`) is written `,`, since `;` separates frames.
    pub fn folded(&self, metric: Metric) -> Result<Vec<String>, Error> {
        self.folded_lines(metric, false).map(|(lines, _)| lines)
    }

    /// As [`folded`](Self::folded), with each function's lines merged: frames written
    /// `function (file)`, so a function that allocates at several lines (or calls on from
    /// several) is one box in a flame graph.
    pub fn folded_by_function(&self, metric: Metric) -> Result<Vec<String>, Error> {
        self.folded_lines(metric, true).map(|(lines, _)| lines)
    }

    /// The folded lines, and the bytes and blocks they add up to.
    fn folded_lines(
        &self,
        metric: Metric,
        merge_lines: bool,
    ) -> Result<(Vec<String>, (u64, u64)), Error> {
        // The tracer's own work, not the program's: untraced (frees still forget).
        let _quiet = crate::guard::Guard::enter();
        let mut merged: HashMap<String, u64> = HashMap::new();
        let mut sums = (0u64, 0u64);
        for row in self.rows(metric)? {
            let line = row
                .stack
                .traceback
                .frames()
                .iter()
                .rev()
                .map(|f| frame_label(f, merge_lines))
                .collect::<Vec<_>>()
                .join(";");
            let sum = merged.entry(line).or_default();
            *sum = sum.saturating_add(row.bytes);
            sums = (
                sums.0.saturating_add(row.bytes),
                sums.1.saturating_add(row.blocks),
            );
        }
        let mut lines: Vec<String> = merged
            .into_iter()
            .map(|(stack, bytes)| format!("{stack} {bytes}"))
            .collect();
        lines.sort();
        Ok((lines, sums))
    }

    /// Writes [`folded`](Self::folded) to `path`, one stack a line.
    pub fn write_folded(&self, path: impl AsRef<Path>, metric: Metric) -> Result<(), Error> {
        let mut text = self.folded(metric)?.join("\n");
        text.push('\n');
        super::persist::write_atomically(path.as_ref(), text.as_bytes())
    }

    /// Writes an SVG flame graph (drawn by `inferno` from [`folded`](Self::folded)): each
    /// box is a frame, as wide as the bytes allocated under it; the call sites are the top
    /// edge. Open it in a browser (boxes are clickable to zoom, Ctrl-F searches).
    #[cfg(feature = "flamegraph")]
    pub fn write_flamegraph(&self, path: impl AsRef<Path>, metric: Metric) -> Result<(), Error> {
        let svg = self.flamegraph_svg(metric)?;
        super::persist::write_atomically(path.as_ref(), &svg)
    }

    /// The flame graph's SVG text.
    #[cfg(feature = "flamegraph")]
    pub fn flamegraph_svg(&self, metric: Metric) -> Result<Vec<u8>, Error> {
        self.flamegraph_svg_with(metric, &FlameGraphOptions::default())
    }

    /// The flame graph's SVG text, drawn as `options` say. Its subtitle gives the program, the
    /// bytes and blocks shown (`~` when sampled), how stacks were captured and when the
    /// snapshot was taken, then the snapshot's first note; labels too long for their box are
    /// cut at the right, so the function's name stays.
    #[cfg(feature = "flamegraph")]
    pub fn flamegraph_svg_with(
        &self,
        metric: Metric,
        options: &FlameGraphOptions,
    ) -> Result<Vec<u8>, Error> {
        // The tracer's own work, not the program's: untraced (frees still forget).
        let _quiet = crate::guard::Guard::enter();
        let (lines, (bytes, blocks)) = self.folded_lines(metric, options.merge_lines)?;
        if lines.is_empty() {
            return Err(Error::Empty {
                what: format!("no memory {}", metric.describe()),
            });
        }
        let mut inferno_options = inferno::flamegraph::Options::default();
        inferno_options.title = options
            .title
            .clone()
            .unwrap_or_else(|| format!("tracealloc: heap {}", metric.describe()));
        inferno_options.count_name = "bytes".to_owned();
        inferno_options.subtitle = Some(self.flamegraph_subtitle(bytes, blocks));
        inferno_options.text_truncate_direction = inferno::flamegraph::TextTruncateDirection::Right;
        let mut svg = Vec::new();
        inferno::flamegraph::from_lines(
            &mut inferno_options,
            lines.iter().map(String::as_str),
            &mut svg,
        )
        .map_err(|e| Error::Output {
            format: "flame graph",
            reason: e.to_string(),
        })?;
        Ok(svg)
    }

    /// Writes [`flamegraph_svg_with`](Self::flamegraph_svg_with) to `path`.
    #[cfg(feature = "flamegraph")]
    pub fn write_flamegraph_with(
        &self,
        path: impl AsRef<Path>,
        metric: Metric,
        options: &FlameGraphOptions,
    ) -> Result<(), Error> {
        let svg = self.flamegraph_svg_with(metric, options)?;
        super::persist::write_atomically(path.as_ref(), &svg)
    }

    /// `trial: 39.0 MiB in 345,033 blocks · frame-pointers · 2026-12-03 17:31:02 UTC · note: …`
    #[cfg(feature = "flamegraph")]
    fn flamegraph_subtitle(&self, bytes: u64, blocks: u64) -> String {
        let t = super::statistics::approx(self.sampled().is_some());
        let mut parts = Vec::new();
        let program = self.program().map(|p| {
            Path::new(p)
                .file_name()
                .map_or(p.to_owned(), |n| n.to_string_lossy().into_owned())
        });
        let figures = format!(
            "{t}{} in {t}{} blocks",
            crate::format::format_size(bytes as f64, false),
            thousands(blocks)
        );
        parts.push(match program {
            Some(program) => format!("{program}: {figures}"),
            None => figures,
        });
        parts.push(match self.sampled() {
            Some(mean) => format!(
                "{}, sampled every {} on average",
                self.capture_mode(),
                crate::format::format_size(mean as f64, false)
            ),
            None => self.capture_mode().to_string(),
        });
        if let Some(at) = self.taken_at() {
            parts.push(utc(at));
        }
        if let Some(note) = self.notes().first() {
            parts.push(format!("note: {note}"));
        }
        parts.join(" · ")
    }
}

/// How [`Snapshot::flamegraph_svg_with`] draws.
#[cfg(feature = "flamegraph")]
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct FlameGraphOptions {
    /// One box per function instead of one per line: frames labelled `function (file)`.
    pub merge_lines: bool,
    /// The title instead of "tracealloc: heap live at the snapshot" (and so on).
    pub title: Option<String>,
}

#[cfg(feature = "flamegraph")]
impl FlameGraphOptions {
    /// Merges each function's lines into one box (see [`Snapshot::folded_by_function`]).
    pub fn merge_lines(mut self, merge: bool) -> FlameGraphOptions {
        self.merge_lines = merge;
        self
    }

    /// Sets the title.
    pub fn title(mut self, title: impl Into<String>) -> FlameGraphOptions {
        self.title = Some(title.into());
        self
    }
}

/// `1234567` as `1,234,567`.
#[cfg(feature = "flamegraph")]
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A wall-clock time as `2026-12-03 17:31:02 UTC` (the proleptic Gregorian calendar, from
/// days since 1970 by the usual era arithmetic).
#[cfg(feature = "flamegraph")]
fn utc(at: std::time::SystemTime) -> String {
    let secs = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

/// `function (file:line)` (or `function (file)` with the lines merged), with no `;` (the
/// folded format's frame separator).
fn frame_label(frame: &Frame, merge_lines: bool) -> String {
    if merge_lines {
        format!("{} ({})", frame.function, frame.filename).replace(';', ",")
    } else {
        format!("{} ({}:{})", frame.function, frame.filename, frame.lineno).replace(';', ",")
    }
}

#[cfg(feature = "pprof")]
mod pprof {
    //! The subset of pprof's profile.proto we write
    //! (<https://github.com/google/pprof/blob/main/proto/profile.proto>), field numbers as
    //! there.

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub(super) sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub(super) sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub(super) mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub(super) location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub(super) function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub(super) string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub(super) time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub(super) duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub(super) period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub(super) period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub(super) comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub(super) default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ValueType {
        #[prost(int64, tag = "1")]
        pub(super) r#type: i64,
        #[prost(int64, tag = "2")]
        pub(super) unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub(super) location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub(super) value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub(super) label: Vec<Label>,
    }

    /// A numeric label (`str` unused): Go's heap profiles label each sample `bytes` with its
    /// blocks' size, which `go tool pprof -tags` tabulates.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Label {
        #[prost(int64, tag = "1")]
        pub(super) key: i64,
        #[prost(int64, tag = "3")]
        pub(super) num: i64,
        #[prost(int64, tag = "4")]
        pub(super) num_unit: i64,
    }

    /// The program's binary: pprof names the profile after it, and with its `has_*` flags set
    /// takes the locations as already symbolized.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Mapping {
        #[prost(uint64, tag = "1")]
        pub(super) id: u64,
        #[prost(int64, tag = "5")]
        pub(super) filename: i64,
        #[prost(bool, tag = "7")]
        pub(super) has_functions: bool,
        #[prost(bool, tag = "8")]
        pub(super) has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub(super) has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub(super) has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Location {
        #[prost(uint64, tag = "1")]
        pub(super) id: u64,
        #[prost(uint64, tag = "2")]
        pub(super) mapping_id: u64,
        #[prost(message, repeated, tag = "4")]
        pub(super) line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Line {
        #[prost(uint64, tag = "1")]
        pub(super) function_id: u64,
        #[prost(int64, tag = "2")]
        pub(super) line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Function {
        #[prost(uint64, tag = "1")]
        pub(super) id: u64,
        #[prost(int64, tag = "2")]
        pub(super) name: i64,
        #[prost(int64, tag = "3")]
        pub(super) system_name: i64,
        #[prost(int64, tag = "4")]
        pub(super) filename: i64,
    }

    /// A string table: index 0 is the empty string, as the format requires.
    #[derive(Default)]
    pub(super) struct Strings {
        pub(super) table: Vec<String>,
        ids: std::collections::HashMap<String, i64>,
    }

    impl Strings {
        pub(super) fn id(&mut self, s: &str) -> i64 {
            if self.table.is_empty() {
                self.table.push(String::new());
                self.ids.insert(String::new(), 0);
            }
            if let Some(&id) = self.ids.get(s) {
                return id;
            }
            let id = self.table.len() as i64;
            self.table.push(s.to_owned());
            self.ids.insert(s.to_owned(), id);
            id
        }
    }
}

#[cfg(feature = "pprof")]
impl Snapshot {
    /// Per shown stack, its live blocks by size: (size, blocks, bytes), smallest first
    /// (estimates, rounded, when sampled).
    // Tracebacks hash by their frames (see `shown_stacks`).
    #[allow(clippy::mutable_key_type)]
    fn live_sizes_by_shown_stack(&self) -> HashMap<ByShown, Vec<(usize, u64, u64)>> {
        let mut by_stack: HashMap<super::Identity, (Traceback, HashMap<usize, u64>)> =
            HashMap::new();
        for trace in self.traces() {
            *by_stack
                .entry(trace.traceback.identity())
                .or_insert_with(|| (trace.traceback.clone(), HashMap::new()))
                .1
                .entry(trace.size)
                .or_default() += 1;
        }
        let mean = self.sample_mean;
        let mut merged: HashMap<ByShown, HashMap<usize, (f64, f64)>> = HashMap::new();
        for (traceback, sizes) in by_stack.into_values() {
            let shown = ByShown(Traceback::from_frames(shown_frames(&traceback)));
            let slot = merged.entry(shown).or_default();
            for (size, n) in sizes {
                let (blocks, bytes) = if mean == 0 {
                    (n as f64, (n * size as u64) as f64)
                } else {
                    (
                        n as f64 * crate::sample::estimated_blocks(size, mean),
                        n as f64 * crate::sample::estimated_bytes(size, mean),
                    )
                };
                let sum = slot.entry(size).or_default();
                sum.0 += blocks;
                sum.1 += bytes;
            }
        }
        merged
            .into_iter()
            .map(|(shown, sizes)| {
                let mut sizes: Vec<(usize, u64, u64)> = sizes
                    .into_iter()
                    .map(|(size, (blocks, bytes))| {
                        (size, blocks.round() as u64, bytes.round() as u64)
                    })
                    .collect();
                sizes.sort_unstable();
                (shown, sizes)
            })
            .collect()
    }

    /// The snapshot as a pprof profile (profile.proto, gzipped), readable by `go tool pprof`,
    /// Pyroscope, Parca, Grafana and speedscope. Sample values are `inuse_objects` and
    /// `inuse_space` (the default), preceded by `alloc_objects` and `alloc_space` when the
    /// snapshot knows its allocation totals: Go's heap-profile layout, so `-sample_index`
    /// works as with Go programs. One location per machine-code address, with a line for each
    /// frame inlined there (innermost first), the call site first.
    // Tracebacks hash by their frames (see `shown_stacks`).
    #[allow(clippy::mutable_key_type)]
    pub fn pprof_bytes(&self) -> Result<Vec<u8>, Error> {
        encode_pprof(&[(self, 1)], PprofDefault::Inuse, None)
    }

    /// Writes [`pprof_bytes`](Self::pprof_bytes) to `path` (conventionally `*.pb.gz`).
    pub fn write_pprof(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        super::persist::write_atomically(path.as_ref(), &self.pprof_bytes()?)
    }
}

/// Which sample type a pprof profile shows by default.
#[cfg(feature = "pprof")]
#[cfg_attr(not(feature = "http"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PprofDefault {
    /// `inuse_space`: what is live (Go's `/debug/pprof/heap`).
    Inuse,
    /// `alloc_space`: what was allocated (Go's `/debug/pprof/allocs`), when known.
    Alloc,
}

/// Encodes snapshots as one pprof profile, each part's values multiplied by its sign: one
/// snapshot with sign 1 is its profile; a later one with 1 and an earlier with -1 is the
/// difference between them (a delta profile, as Go's `?seconds=N`). Time, program and notes
/// come from the last part; `duration` overrides its duration.
// Tracebacks hash by their frames (see `shown_stacks`).
#[cfg(feature = "pprof")]
#[allow(clippy::mutable_key_type)]
pub(crate) fn encode_pprof(
    parts: &[(&Snapshot, i64)],
    default: PprofDefault,
    duration: Option<std::time::Duration>,
) -> Result<Vec<u8>, Error> {
    use pprof::*;
    use prost::Message;
    use std::io::Write;

    // The tracer's own work, not the program's: untraced (frees still forget).
    let _quiet = crate::guard::Guard::enter();
    let Some(&(last, _)) = parts.last() else {
        return Err(Error::Empty {
            what: "no snapshot to encode".to_owned(),
        });
    };
    let with_totals = parts.iter().all(|(s, _)| s.has_allocation_totals());
    let mut strings = Strings::default();
    strings.id("");
    let mut sample_type = Vec::new();
    let mut kinds: Vec<(&str, &str)> = Vec::new();
    if with_totals {
        kinds.extend([("alloc_objects", "count"), ("alloc_space", "bytes")]);
    }
    kinds.extend([("inuse_objects", "count"), ("inuse_space", "bytes")]);
    for (kind, unit) in &kinds {
        sample_type.push(ValueType {
            r#type: strings.id(kind),
            unit: strings.id(unit),
        });
    }

    let mut functions: HashMap<(std::sync::Arc<str>, std::sync::Arc<str>), u64> = HashMap::new();
    let mut function_table: Vec<Function> = Vec::new();
    // A location is one machine-code address: a frame and the frames inlined into it
    // (innermost first, as pprof lists a location's lines).
    let mut locations: HashMap<Vec<Frame>, u64> = HashMap::new();
    let mut location_table: Vec<Location> = Vec::new();
    let mut samples = Vec::new();
    let bytes_key = strings.id("bytes");
    for &(snapshot, sign) in parts {
        let mut shown = snapshot.shown_stacks();
        shown.sort_by(|a, b| a.traceback.shown().cmp(&b.traceback.shown()));
        let sizes = snapshot.live_sizes_by_shown_stack();
        for stack in &shown {
            let frames = stack.traceback.frames();
            let mut ids = Vec::with_capacity(frames.len());
            let mut start = 0;
            while start < frames.len() {
                let len = frames[start..]
                    .iter()
                    .position(|f| !f.inlined)
                    .map_or(frames.len() - start, |i| i + 1);
                let group = &frames[start..start + len];
                start += len;
                let next_location = location_table.len() as u64 + 1;
                let location = *locations.entry(group.to_vec()).or_insert(next_location);
                if location == next_location {
                    let mut line = Vec::with_capacity(group.len());
                    for frame in group {
                        let key = (frame.function.clone(), frame.filename.clone());
                        let next_function = function_table.len() as u64 + 1;
                        let function = *functions.entry(key).or_insert(next_function);
                        if function == next_function {
                            // The name is already demangled, with its generics: a system name
                            // equal to it would make pprof demangle it again and cut every
                            // `<...>` (`<Vec<T> as Extend<T>>::extend` became `::extend`).
                            function_table.push(Function {
                                id: function,
                                name: strings.id(&frame.function),
                                system_name: 0,
                                filename: strings.id(&frame.path),
                            });
                        }
                        line.push(Line {
                            function_id: function,
                            line: i64::from(frame.lineno),
                        });
                    }
                    location_table.push(Location {
                        id: location,
                        mapping_id: 1,
                        line,
                    });
                }
                ids.push(location);
            }
            // One sample per size of the live blocks, labelled `bytes` as Go's heap profiles
            // are; what was allocated and freed, in one more sample without a label (the sizes
            // of freed blocks are not kept).
            let mut live = (0u64, 0u64);
            for &(size, blocks, bytes) in sizes
                .get(&ByShown(stack.traceback.clone()))
                .map_or(&[][..], Vec::as_slice)
            {
                live = (live.0 + blocks, live.1 + bytes);
                let (blocks, bytes) = (sign * blocks as i64, sign * bytes as i64);
                let mut value = Vec::with_capacity(4);
                if with_totals {
                    value.extend([blocks, bytes]);
                }
                value.extend([blocks, bytes]);
                samples.push(Sample {
                    location_id: ids.clone(),
                    value,
                    label: vec![Label {
                        key: bytes_key,
                        num: size as i64,
                        num_unit: bytes_key,
                    }],
                });
            }
            let (bytes, blocks) = stack.total.unwrap_or_default();
            let freed = (blocks.saturating_sub(live.0), bytes.saturating_sub(live.1));
            if with_totals && freed != (0, 0) {
                samples.push(Sample {
                    location_id: ids,
                    value: vec![sign * freed.0 as i64, sign * freed.1 as i64, 0, 0],
                    label: Vec::new(),
                });
            }
        }
    }
    let comment = last.notes().iter().map(|n| strings.id(n)).collect();
    let period_type = Some(ValueType {
        r#type: strings.id("space"),
        unit: strings.id("bytes"),
    });
    let default_sample_type = strings.id(match default {
        PprofDefault::Alloc if with_totals => "alloc_space",
        _ => "inuse_space",
    });
    // When the snapshot was taken (0, which pprof leaves out, for older files).
    let time_nanos = last
        .origin
        .as_ref()
        .map_or(0, |o| o.unix_nanos.min(i64::MAX as u64) as i64);
    let program = last.program().unwrap_or("unknown");
    let mapping = vec![Mapping {
        id: 1,
        filename: strings.id(program),
        has_functions: true,
        has_filenames: true,
        has_line_numbers: true,
        has_inline_frames: true,
    }];
    let duration = duration.or(last.duration());
    let profile = Profile {
        sample_type,
        sample: samples,
        mapping,
        location: location_table,
        function: function_table,
        string_table: strings.table,
        time_nanos,
        duration_nanos: duration.map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64),
        period_type,
        // As Go's heap profiles: the sampling rate in bytes (1 when every allocation is
        // traced).
        period: last.sample_mean.clamp(1, i64::MAX as u64) as i64,
        comment,
        default_sample_type,
    };
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&profile.encode_to_vec())
        .and_then(|()| gz.finish())
        .map_err(|e| Error::Output {
            format: "pprof",
            reason: e.to_string(),
        })
}

/// DHAT's "short-lived" threshold, in microseconds of average lifetime.
#[cfg(feature = "dhat")]
const SHORT_LIVED_MICROS: u64 = 10;

#[cfg(feature = "dhat")]
impl Snapshot {
    /// The snapshot in DHAT's JSON format (version 2), which Valgrind's viewer `dh_view.html`
    /// opens. DHAT's "total" figures are the chosen metric: allocation totals with
    /// [`Metric::Allocated`] (DHAT's own meaning), bytes live at the snapshot with
    /// [`Metric::Live`].
    ///
    /// With [`Metric::Allocated`], a snapshot taken with block lifetimes and the peak breakdown
    /// kept all along (see [`Tracer::block_lifetimes`](crate::Tracer::block_lifetimes)) also
    /// fills DHAT's block lifetimes (`bklt`): each stack's average lifetime (so the viewer's "short-lived" sort
    /// finds the temporaries), what it held at the traced peak ("At t-gmax", the viewer's
    /// t-gmax sort) and at the snapshot ("At t-end"). DHAT's "Max" (the most a stack held at
    /// any one time) is not measured by tracealloc: the file gives the larger of the two
    /// moments it knows, the peak and the snapshot, a lower bound. Memory accesses are never
    /// recorded (`bkacc` false), and without the breakdown `bklt` is false too: the viewer
    /// hides those columns rather than showing invented values.
    pub fn dhat_json(&self, metric: Metric) -> Result<String, Error> {
        // The tracer's own work, not the program's: untraced (frees still forget).
        let _quiet = crate::guard::Guard::enter();
        let rows = self.rows(metric)?;
        let lifetimes = metric == Metric::Allocated && self.has_block_lifetimes();
        let mut ftbl: Vec<String> = vec!["[root]".to_owned()];
        let mut frame_ids: HashMap<&Frame, usize> = HashMap::new();
        let mut pps = Vec::with_capacity(rows.len());
        for row in &rows {
            let fs: Vec<usize> = row
                .stack
                .traceback
                .frames()
                .iter()
                .map(|frame| {
                    *frame_ids.entry(frame).or_insert_with(|| {
                        ftbl.push(format!(
                            "{} ({}:{})",
                            frame.function, frame.filename, frame.lineno
                        ));
                        ftbl.len() - 1
                    })
                })
                .collect();
            let mut pp = serde_json::json!({ "tb": row.bytes, "tbk": row.blocks, "fs": fs });
            if lifetimes {
                let shown = &row.stack;
                let (gb, gbk) = shown.peak.unwrap_or_default();
                let (eb, ebk) = (shown.live_bytes, shown.live_blocks);
                let (mb, mbk) = if gb >= eb { (gb, gbk) } else { (eb, ebk) };
                let tl = shown.lifetime.unwrap_or_default() / 1000;
                for (key, value) in [
                    ("tl", tl),
                    ("mb", mb),
                    ("mbk", mbk),
                    ("gb", gb),
                    ("gbk", gbk),
                    ("eb", eb),
                    ("ebk", ebk),
                ] {
                    pp[key] = value.into();
                }
            }
            pps.push(pp);
        }
        let te = self.duration().map_or(0, |d| d.as_micros() as u64);
        let verb = match metric {
            Metric::Live => "Live at the snapshot",
            Metric::Allocated => "Allocated",
            Metric::Peak => "Live at the peak",
            Metric::Temporary => "Allocated as temporaries",
        };
        // The traced program's command line and process id, not the converting process's
        // (files before format version 5 do not know them: pid 0).
        let (cmd, pid) = match self.command_line() {
            Some((command, pid)) => (format!("{command} (heap {})", metric.describe()), pid),
            None => (
                format!("a tracealloc snapshot (heap {})", metric.describe()),
                0,
            ),
        };
        let mut document = serde_json::json!({
            "dhatFileVersion": 2,
            "mode": "rust-heap (tracealloc)",
            "verb": verb,
            "bklt": lifetimes,
            "bkacc": false,
            "tu": "µs",
            "Mtu": "s",
            "cmd": cmd,
            "pid": pid,
            "te": te,
            "pps": pps,
            "ftbl": ftbl,
        });
        if lifetimes {
            let tg = self.peak_time().map_or(te, |d| d.as_micros() as u64);
            document["tg"] = tg.min(te).into();
            // Blocks that live 10 µs or less on average are "short-lived".
            document["tuth"] = SHORT_LIVED_MICROS.into();
        }
        Ok(document.to_string())
    }

    /// Writes [`dhat_json`](Self::dhat_json) to `path`; open it with Valgrind's
    /// `dh_view.html` (Debian: `/usr/libexec/valgrind/dh_view.html`).
    pub fn write_dhat(&self, path: impl AsRef<Path>, metric: Metric) -> Result<(), Error> {
        let json = self.dhat_json(metric)?;
        super::persist::write_atomically(path.as_ref(), json.as_bytes())
    }
}

#[cfg(all(test, feature = "pprof"))]
mod tests {
    use super::*;
    use crate::snapshot::Trace;
    use prost::Message;
    use std::io::Read;

    fn frame(function: &str, line: u32, inlined: bool) -> Frame {
        let mut f = Frame::new("src/lib.rs".into(), line, function.into());
        f.inlined = inlined;
        f
    }

    #[test]
    fn inlined_frames_share_a_location() {
        // `helper` was inlined into `caller`; `caller` is a call from `main`.
        let frames = vec![
            frame("helper", 10, true),
            frame("caller", 20, false),
            frame("main", 30, false),
        ];
        let traceback = Traceback::new(frames, 0, 16, false);
        let snapshot = Snapshot::from_traces(
            vec![Trace {
                size: 64,
                traceback,
            }],
            16,
            crate::CaptureMode::FramePointers,
        );
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&snapshot.pprof_bytes().unwrap()[..])
            .read_to_end(&mut raw)
            .unwrap();
        let profile = pprof::Profile::decode(&raw[..]).unwrap();
        assert_eq!(profile.location.len(), 2);
        let lines: Vec<Vec<i64>> = profile
            .location
            .iter()
            .map(|l| l.line.iter().map(|l| l.line).collect())
            .collect();
        assert_eq!(lines, [vec![10, 20], vec![30]]);
        assert_eq!(profile.sample[0].location_id.len(), 2);
    }
}

#[cfg(all(test, feature = "flamegraph"))]
mod subtitle_tests {
    use super::{thousands, utc};
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn dates_and_thousands() {
        let at = |secs| utc(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        // `date -u -d @951782400`: the leap day of a year divisible by 400.
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_796_319_062), "2026-12-03 17:31:02 UTC");
        assert_eq!(at(4_107_542_399), "2100-02-28 23:59:59 UTC");
        assert_eq!(at(4_107_542_400), "2100-03-01 00:00:00 UTC");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(345_033), "345,033");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
