//! Grouping traces into statistics, and the top-N report.

use super::{ByShown, Frame, Identity, Snapshot, StackTotals, Traceback};
use crate::format::format_size;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// How traces are grouped into statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GroupBy {
    /// By call site `filename:lineno` (tracemalloc's `'lineno'`).
    Line,
    /// By call site file (tracemalloc's `'filename'`; printed with line 0).
    File,
    /// By call site function.
    Function,
    /// By whole traceback, up to the traceback limit (tracemalloc's `'traceback'`).
    Traceback,
    /// By the crate whose code made the allocation, with its version when the source path
    /// tells it (`serde_json 1.0.154`): the innermost frame that is neither the toolchain's
    /// nor tracealloc's, so a dependency's allocations count for the dependency even when the
    /// program's own line called it; `std`, `alloc`, ... for the toolchain's own allocations.
    /// Answers *which dependency holds my memory*.
    Crate,
}

/// Bytes and blocks of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Statistic {
    /// The group's key: one frame for `Line`, `File` and `Function`, the whole stack for
    /// `Traceback`.
    pub traceback: Traceback,
    /// Total bytes.
    pub size: usize,
    /// Number of blocks.
    pub count: usize,
    /// The grouping that made this statistic.
    pub group_by: GroupBy,
    /// Whether `size` and `count` are estimates from a sampled snapshot (printed with `~`).
    pub estimated: bool,
    /// The whole traceback of the stack that contributed the most bytes to the group.
    pub(crate) biggest: Option<Traceback>,
    /// How many other dependency entry points (see [`via`](Self::via)) the group's stacks
    /// pass through.
    pub(crate) other_vias: usize,
}

impl Statistic {
    /// The dependency code inside the group's call site: the outermost dependency frame
    /// between the call site and the allocator (`serde_json::de::from_str` for a
    /// `serde_json::from_str(…)` line) and its crate (`serde_json 1.0.154`), taken from the
    /// stack that contributed the most bytes. `None` when the allocation was made by the
    /// program's own code or std directly.
    pub fn via(&self) -> Option<(Frame, String)> {
        let traceback = self.biggest.as_ref()?;
        traceback.via().map(|(f, c)| (f.clone(), c))
    }
}

/// tracemalloc's format: `src/main.rs:12: size=2637 MiB, count=2, average=1318 MiB`;
/// grouped by function: `parse_table (src/parse.rs): size=…`. Estimates from a sampled
/// snapshot print as `size=~2637 MiB, count=~2, average=~1318 MiB`.
impl fmt::Display for Statistic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_key(f, &self.traceback, self.group_by)?;
        let t = approx(self.estimated);
        write!(
            f,
            ": size={t}{}, count={t}{}",
            format_size(self.size as f64, false),
            self.count
        )?;
        write_average(f, self.size, self.count, self.estimated)
    }
}

/// The mark of an estimate.
pub(crate) fn approx(estimated: bool) -> &'static str {
    if estimated {
        "~"
    } else {
        ""
    }
}

/// `, average=…`, only when there are blocks (tracemalloc's rule).
pub(crate) fn write_average(
    f: &mut fmt::Formatter<'_>,
    size: usize,
    count: usize,
    estimated: bool,
) -> fmt::Result {
    if count > 0 {
        write!(
            f,
            ", average={}{}",
            approx(estimated),
            format_size(size as f64 / count as f64, false)
        )?;
    }
    Ok(())
}

pub(crate) fn write_key(
    f: &mut fmt::Formatter<'_>,
    traceback: &Traceback,
    group_by: GroupBy,
) -> fmt::Result {
    let frame = traceback.call_site();
    match group_by {
        GroupBy::Function => write!(f, "{} ({})", frame.function, frame.filename),
        GroupBy::Crate => f.write_str(&frame.filename),
        _ => write!(f, "{frame}"),
    }
}

impl GroupBy {
    /// The key of a traceback under this grouping.
    pub(crate) fn key(self, traceback: &Traceback) -> Traceback {
        match self {
            GroupBy::Traceback => traceback.clone(),
            GroupBy::Crate => crate_key(traceback.crate_name()),
            _ => self.key_of_frame(traceback.call_site()),
        }
    }

    /// The one-frame key of `frame` (for `Line`, `File` and `Function`).
    pub(crate) fn key_of_frame(self, frame: &Frame) -> Traceback {
        let key = match self {
            GroupBy::Crate => {
                use crate::stack::origin::{crate_of, of_frame};
                return crate_key(crate_of(frame, of_frame(frame)).to_string());
            }
            // Without a line, the function names the site (a build without debug info).
            GroupBy::Line | GroupBy::Traceback if frame.lineno == 0 => Frame {
                lineno: 0,
                inlined: false,
                ..frame.clone()
            },
            GroupBy::Line | GroupBy::Traceback => Frame {
                function: "".into(),
                inlined: false,
                ..frame.clone()
            },
            GroupBy::File => Frame {
                lineno: 0,
                function: "".into(),
                inlined: false,
                ..frame.clone()
            },
            GroupBy::Function => Frame {
                lineno: 0,
                inlined: false,
                ..frame.clone()
            },
        };
        Traceback::from_frames(vec![key])
    }
}

/// `collect<rayon::iter::Map<…>, Vec<…>>` → `collect`: a function's name without its generic
/// arguments (`<A as B>::f` keeps its qualified form), for the short `via` lines. v0 mangling's
/// names (nightly's default) write them `from_str::<T>` and may hold function types
/// (`fn() -> u8`), whose `>` closes nothing.
fn without_generics(function: &str) -> String {
    let mut out = String::with_capacity(function.len());
    let mut depth = 0usize;
    let mut rest = function;
    // Whether the `>` at byte `i` closes an angle bracket (not the arrow of `->`).
    let closes = |i: usize| i == 0 || function.as_bytes()[i - 1] != b'-';
    // A leading `<A as B>` is the qualified path, not generic arguments: keep it.
    if function.starts_with('<') {
        let mut d = 0usize;
        for (i, c) in function.char_indices() {
            match c {
                '<' => d += 1,
                '>' if closes(i) => {
                    d -= 1;
                    if d == 0 {
                        out.push_str(&function[..=i]);
                        rest = &function[i + 1..];
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    let offset = function.len() - rest.len();
    for (i, c) in rest.char_indices() {
        match c {
            '<' => depth += 1,
            '>' if depth > 0 && closes(offset + i) => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out.replace("::::", "::").trim_end_matches("::").to_owned()
}

/// The one-frame key of a crate group: the crate's name in the frame's file.
fn crate_key(name: String) -> Traceback {
    Traceback::from_frames(vec![Frame::new(name, 0, String::new())])
}

/// Statistics being summed, keyed by the frames they show: two stacks that differ only in
/// trimmed allocator frames are one group, represented by the smallest of them (so the result
/// does not depend on hash order).
#[derive(Default)]
struct Groups(HashMap<ByShown, Group>);

struct Group {
    key: Traceback,
    size: usize,
    count: usize,
    /// The contributing stack with the most bytes, and its bytes.
    biggest: Option<(Traceback, usize)>,
    /// The distinct dependency entry points of the contributing stacks.
    vias: Vec<Arc<str>>,
}

impl Groups {
    /// Adds `size` and `count` of the stack `source`, whose dependency entry point is `via`
    /// (see [`Traceback::via`]), to the group `key`.
    fn add(
        &mut self,
        key: Traceback,
        size: usize,
        count: usize,
        source: &Traceback,
        via: Option<&Arc<str>>,
    ) {
        let slot = self.0.entry(ByShown(key.clone())).or_insert_with(|| Group {
            key: key.clone(),
            size: 0,
            count: 0,
            biggest: None,
            vias: Vec::new(),
        });
        if let Some(via) = via {
            if !slot.vias.contains(via) {
                slot.vias.push(Arc::clone(via));
            }
        }
        if key.all() < slot.key.all() {
            slot.key = key;
        }
        let bigger = match &slot.biggest {
            None => true,
            Some((t, s)) => size > *s || (size == *s && source.all() < t.all()),
        };
        if bigger {
            slot.biggest = Some((source.clone(), size));
        }
        // Saturating: estimates from a sampled snapshot can be huge.
        slot.size = slot.size.saturating_add(size);
        slot.count = slot.count.saturating_add(count);
    }

    /// Biggest first: by size, then count, as tracemalloc sorts.
    fn sorted(self, group_by: GroupBy, estimated: bool) -> Vec<Statistic> {
        let mut stats: Vec<Statistic> = self
            .0
            .into_values()
            .map(|g| Statistic {
                traceback: g.key,
                size: g.size,
                count: g.count,
                group_by,
                estimated,
                other_vias: g.vias.len().saturating_sub(1),
                biggest: g.biggest.map(|(t, _)| t),
            })
            .collect();
        stats.sort_by(|a, b| {
            (b.size, b.count)
                .cmp(&(a.size, a.count))
                .then_with(|| a.traceback.shown().cmp(&b.traceback.shown()))
        });
        stats
    }
}

impl Snapshot {
    /// Groups the traces, biggest first (by size, then count, as tracemalloc sorts).
    pub fn statistics(&self, group_by: GroupBy) -> Vec<Statistic> {
        // The tracer's own work, not the program's: untraced (frees still forget).
        let _quiet = crate::guard::Guard::enter();
        let mut groups = Groups::default();
        for (traceback, size, count) in self.per_stack() {
            let via = traceback.via_frame().map(|f| &f.function);
            groups.add(group_by.key(&traceback), size, count, &traceback, via);
        }
        groups.sorted(group_by, self.sampled().is_some())
    }

    /// Like [`statistics`](Self::statistics), but counting every block allocated since tracing
    /// started (freed ones too), not only the live ones: where the allocation *traffic* comes
    /// from, as DHAT's "total" and pprof's `alloc_space`. `None` when the snapshot does not
    /// know (a file written in format version 1).
    pub fn allocation_statistics(&self, group_by: GroupBy) -> Option<Vec<Statistic>> {
        self.has_allocation_totals()
            .then(|| self.statistics_of(group_by, |stack| stack.total))
    }

    /// Temporary allocations per group, most blocks first: blocks freed by the thread that
    /// allocated them before it allocated anything else (heaptrack's definition; a
    /// reallocation is not a free). The classic thing to optimise in Rust: a `format!` or a
    /// `Vec` built and dropped in a loop. `size` is their bytes, `count` their number. `None`
    /// when the snapshot does not know (a file written before format version 3).
    pub fn temporary_statistics(&self, group_by: GroupBy) -> Option<Vec<Statistic>> {
        if !self.has_allocation_totals() || !self.temporaries_known {
            return None;
        }
        let mut stats = self.statistics_of(group_by, |stack| stack.temporary);
        stats.sort_by(|a, b| b.count.cmp(&a.count).then(b.size.cmp(&a.size)));
        Some(stats)
    }

    /// [`temporary_statistics`](Self::temporary_statistics) as a printable top-`limit` report
    /// (each line with its source, the rest summed); `None` when the snapshot does not know.
    pub fn temporary_report(&self, group_by: GroupBy, limit: usize) -> Option<Report> {
        Some(Report {
            notes: self.notes(),
            stats: self.temporary_statistics(group_by)?,
            limit,
            totals: Totals::Rest,
        })
    }

    /// [`allocation_statistics`](Self::allocation_statistics) as a printable top-`limit`
    /// report: each line with its source, the rest summed, and "Total allocated since tracing
    /// started"; `None` when the snapshot does not know.
    pub fn allocation_report(&self, group_by: GroupBy, limit: usize) -> Option<Report> {
        Some(Report {
            notes: self.notes(),
            stats: self.allocation_statistics(group_by)?,
            limit,
            totals: Totals::Allocated,
        })
    }

    /// [`cumulative_statistics`](Self::cumulative_statistics) as a printable top-`limit`
    /// report. Cumulative groups overlap (a caller's figure includes its callees'), so it sums
    /// neither the rest nor a total.
    pub fn cumulative_report(&self, group_by: GroupBy, limit: usize) -> Report {
        Report {
            notes: self.notes(),
            stats: self.cumulative_statistics(group_by),
            limit,
            totals: Totals::None,
        }
    }

    /// Groups one figure of each stack's totals (stacks without blocks in it left out),
    /// biggest first.
    fn statistics_of(
        &self,
        group_by: GroupBy,
        figure: impl Fn(&StackTotals) -> Option<(u64, u64)>,
    ) -> Vec<Statistic> {
        // The tracer's own work, not the program's: untraced (frees still forget).
        let _quiet = crate::guard::Guard::enter();
        let mut groups = Groups::default();
        for stack in self.per_stack_totals() {
            let Some((bytes, blocks)) = figure(&stack).filter(|&(_, blocks)| blocks > 0) else {
                continue;
            };
            groups.add(
                group_by.key(&stack.traceback),
                bytes as usize,
                blocks as usize,
                &stack.traceback,
                stack.traceback.via_frame().map(|f| &f.function),
            );
        }
        groups.sorted(group_by, self.sampled().is_some())
    }

    /// Size and count per distinct traceback. Many traces share one `Traceback` (interned
    /// stacks), so this is the cheap first step of every grouping.
    pub(crate) fn per_stack(&self) -> impl Iterator<Item = (Traceback, usize, usize)> {
        let mean = self.sample_mean;
        let mut by_stack: HashMap<Identity, (Traceback, f64, f64)> = HashMap::new();
        for trace in self.traces() {
            let slot = by_stack
                .entry(trace.traceback.identity())
                .or_insert_with(|| (trace.traceback.clone(), 0.0, 0.0));
            if mean == 0 {
                slot.1 += trace.size as f64;
                slot.2 += 1.0;
            } else {
                slot.1 += crate::sample::estimated_bytes(trace.size, mean);
                slot.2 += crate::sample::estimated_blocks(trace.size, mean);
            }
        }
        by_stack
            .into_values()
            .map(|(t, size, count)| (t, size.round() as usize, count.round() as usize))
    }

    /// Cumulative statistics: each trace counts toward every distinct key among the frames of
    /// its traceback (call site outward, up to the traceback limit), so a function's figure
    /// includes what its callees allocated. A frame that appears several times in one stack
    /// (recursion) counts once, unlike tracemalloc's `cumulative=True`. Only the program's own
    /// frames and its dependencies' count: the toolchain's and the C runtime's (`main`'s
    /// `std::rt::lang_start`, a thread's start) hold everything and would rank first, telling
    /// nothing (a stack with none of those counts for its call site). With
    /// `GroupBy::Traceback` every trace has one key, its whole traceback, so this equals
    /// [`statistics`](Self::statistics).
    pub fn cumulative_statistics(&self, group_by: GroupBy) -> Vec<Statistic> {
        // The tracer's own work, not the program's: untraced (frees still forget).
        let _quiet = crate::guard::Guard::enter();
        if group_by == GroupBy::Traceback {
            return self.statistics(group_by);
        }
        let mut groups = Groups::default();
        for (traceback, size, count) in self.per_stack() {
            use crate::stack::origin::{of_frame, Kind};
            let mut keys: Vec<Traceback> = traceback
                .shown()
                .iter()
                .filter(|frame| matches!(of_frame(frame), Kind::Own | Kind::Dependency))
                .map(|frame| group_by.key_of_frame(frame))
                .collect();
            if keys.is_empty() {
                keys.push(group_by.key_of_frame(traceback.call_site()));
            }
            keys.sort_by(|a, b| a.shown().cmp(&b.shown()));
            keys.dedup();
            let via = traceback.via_frame().map(|f| &f.function);
            for key in keys {
                groups.add(key, size, count, &traceback, via);
            }
        }
        groups.sorted(group_by, self.sampled().is_some())
    }

    /// A printable top-`limit` report: notes, one line per group with its source line, the
    /// rest summed, the total.
    pub fn report(&self, group_by: GroupBy, limit: usize) -> Report {
        let mut notes = self.notes();
        if group_by == GroupBy::Crate {
            // Crates are told by path or symbol; missing lines do not matter to them.
            if let Some(lines) = self.lines_note() {
                notes.retain(|n| *n != lines);
            }
        }
        Report {
            notes,
            stats: self.statistics(group_by),
            limit,
            totals: Totals::Live,
        }
    }
}

/// What a [`Report`] sums after its top lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Totals {
    /// The rest, and "Total allocated size" (tracemalloc's wording for live memory).
    Live,
    /// The rest, and "Total allocated since tracing started".
    Allocated,
    /// The rest with its blocks; no total line.
    Rest,
    /// Nothing: the groups overlap (cumulative statistics).
    None,
}

/// The top of a snapshot's statistics, printable (see [`Snapshot::report`]).
#[derive(Clone, Debug)]
pub struct Report {
    pub(crate) notes: Vec<String>,
    pub(crate) stats: Vec<Statistic>,
    pub(crate) limit: usize,
    /// What the last lines sum.
    pub(crate) totals: Totals,
}

impl Report {
    /// The statistics shown (at most the limit).
    pub fn top(&self) -> &[Statistic] {
        &self.stats[..self.limit.min(self.stats.len())]
    }

    /// The same report with the groups ranked by block count (then size): where the
    /// allocation *calls* are, which is what costs time.
    pub fn by_count(mut self) -> Report {
        self.stats.sort_by(|a, b| {
            (b.count, b.size)
                .cmp(&(a.count, a.size))
                .then_with(|| a.traceback.shown().cmp(&b.traceback.shown()))
        });
        self
    }

    /// The same report with the groups ranked by size (then block count), as
    /// [`Snapshot::report`] ranks them.
    pub fn by_size(mut self) -> Report {
        self.stats.sort_by(|a, b| {
            (b.size, b.count)
                .cmp(&(a.size, a.count))
                .then_with(|| a.traceback.shown().cmp(&b.traceback.shown()))
        });
        self
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for note in &self.notes {
            writeln!(f, "note: {note}")?;
        }
        for (i, stat) in self.top().iter().enumerate() {
            writeln!(f, "#{}: {stat}", i + 1)?;
            if stat.group_by == GroupBy::Traceback {
                write_traceback(f, &stat.traceback)?;
            } else {
                write_source(f, &stat.traceback)?;
            }
            if stat.group_by != GroupBy::Crate {
                if let Some((via, krate)) = stat.via() {
                    write!(f, "  via {} ({krate})", without_generics(&via.function))?;
                    match stat.other_vias {
                        0 => writeln!(f)?,
                        n => writeln!(f, " and {n} other path(s) into dependencies")?,
                    }
                }
            }
        }
        let t = approx(self.stats.iter().any(|s| s.estimated));
        let rest = &self.stats[self.top().len()..];
        if !rest.is_empty() && self.totals != Totals::None {
            let size: usize = rest.iter().map(|s| s.size).sum();
            write!(
                f,
                "{} other: {t}{}",
                rest.len(),
                format_size(size as f64, false)
            )?;
            if self.totals == Totals::Rest {
                let count: usize = rest.iter().map(|s| s.count).sum();
                write!(f, " in {t}{count} blocks")?;
            } else {
                writeln!(f)?;
            }
        }
        let label = match self.totals {
            Totals::Live => "Total allocated size",
            Totals::Allocated => "Total allocated since tracing started",
            Totals::Rest | Totals::None => return Ok(()),
        };
        let total: usize = self.stats.iter().map(|s| s.size).sum();
        write!(f, "{label}: {t}{}", format_size(total as f64, false))
    }
}

/// A whole traceback, call site first, in [`Traceback::format`]'s lines, except that a run of
/// two or more frames of the toolchain or the C runtime (iterator adapters, `collect`'s
/// specialisations, `lang_start`) prints as one line naming their crates: the program's
/// frames and its dependencies' stay readable in a 20-frame stack.
pub(crate) fn write_traceback(f: &mut fmt::Formatter<'_>, traceback: &Traceback) -> fmt::Result {
    use crate::stack::origin::{crate_of, of_frame, Kind};
    let frames: Vec<&Frame> = traceback.shown().iter().collect();
    let quiet = |frame: &Frame| !matches!(of_frame(frame), Kind::Own | Kind::Dependency);
    let mut i = 0;
    while i < frames.len() {
        let run = frames[i..].iter().take_while(|f| quiet(f)).count();
        if run >= 2 {
            let mut crates: Vec<String> = Vec::new();
            for frame in &frames[i..i + run] {
                let name = crate_of(frame, of_frame(frame)).to_string();
                if !crates.contains(&name) {
                    crates.push(name);
                }
            }
            writeln!(f, "  ... {run} frames in {}", crates.join(", "))?;
            i += run;
            continue;
        }
        let frame = frames[i];
        writeln!(
            f,
            "  File \"{}\", line {}, in {}",
            frame.filename, frame.lineno, frame.function
        )?;
        if let Some(source) = super::traceback::source_line(frame) {
            writeln!(f, "    {source}")?;
        }
        i += 1;
    }
    Ok(())
}

/// The call site's source line, indented, when its file is readable.
pub(crate) fn write_source(f: &mut fmt::Formatter<'_>, traceback: &Traceback) -> fmt::Result {
    let site = traceback.call_site();
    if let Some(line) = traceback
        .format(Some(1), true)
        .get(1)
        .filter(|_| site.lineno > 0)
    {
        writeln!(f, "  {}", line.trim_start())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(size: usize, count: usize) -> Statistic {
        Statistic {
            traceback: Traceback::from_frames(vec![Frame::new(
                "src/main.rs".into(),
                12,
                String::new(),
            )]),
            size,
            count,
            group_by: GroupBy::Line,
            estimated: false,
            biggest: None,
            other_vias: 0,
        }
    }

    /// `str(tracemalloc.Statistic(Traceback((("src/main.rs", 12),)), size, count))`, printed
    /// by CPython 3.11.7 on this machine.
    #[test]
    fn statistic_display_matches_python() {
        let python: &[(usize, usize, &str)] = &[
            (0, 0, "src/main.rs:12: size=0 B, count=0"),
            (
                1023,
                1,
                "src/main.rs:12: size=1023 B, count=1, average=1023 B",
            ),
            (
                10239,
                3,
                "src/main.rs:12: size=10239 B, count=3, average=3413 B",
            ),
            (
                10240,
                1,
                "src/main.rs:12: size=10.0 KiB, count=1, average=10.0 KiB",
            ),
            (
                102399,
                7,
                "src/main.rs:12: size=100.0 KiB, count=7, average=14.3 KiB",
            ),
            (
                102400,
                100,
                "src/main.rs:12: size=100 KiB, count=100, average=1024 B",
            ),
            (
                1048576,
                2,
                "src/main.rs:12: size=1024 KiB, count=2, average=512 KiB",
            ),
            (
                10485760,
                1,
                "src/main.rs:12: size=10.0 MiB, count=1, average=10.0 MiB",
            ),
            (
                5368709120,
                2,
                "src/main.rs:12: size=5120 MiB, count=2, average=2560 MiB",
            ),
            (127, 2, "src/main.rs:12: size=127 B, count=2, average=64 B"),
            (125, 2, "src/main.rs:12: size=125 B, count=2, average=62 B"),
            (
                2765094917,
                2,
                "src/main.rs:12: size=2637 MiB, count=2, average=1319 MiB",
            ),
        ];
        for &(size, count, expected) in python {
            assert_eq!(stat(size, count).to_string(), expected);
        }
    }

    #[test]
    fn via_names_lose_generic_arguments() {
        assert_eq!(
            without_generics("collect<rayon::iter::map::Map<u64>, alloc::vec::Vec<u8>>"),
            "collect"
        );
        assert_eq!(
            without_generics("<serde_json::Map<K, V> as core::clone::Clone>::clone"),
            "<serde_json::Map<K, V> as core::clone::Clone>::clone"
        );
        assert_eq!(
            without_generics("serde_json::de::from_str::<T>"),
            "serde_json::de::from_str"
        );
    }

    /// Names as v0 mangling (nightly's default) prints them: generic arguments instantiated,
    /// function types, closures numbered.
    #[test]
    fn via_names_lose_generic_arguments_in_v0_names() {
        assert_eq!(
            without_generics("serde_json::de::from_str::<alloc::vec::Vec<app::Record>>"),
            "serde_json::de::from_str"
        );
        assert_eq!(
            without_generics(
                "<&mut serde_json::de::Deserializer<serde_json::read::StrRead> as serde_core::de::Deserializer>::deserialize_struct::<<app::Record as serde_core::de::Deserialize>::deserialize::__Visitor>"
            ),
            "<&mut serde_json::de::Deserializer<serde_json::read::StrRead> as serde_core::de::Deserializer>::deserialize_struct"
        );
        assert_eq!(
            without_generics(
                "rayon::iter::plumbing::bridge::<fn(u64) -> u64, alloc::vec::Vec<u8>>::{closure#0}"
            ),
            "rayon::iter::plumbing::bridge::{closure#0}"
        );
        assert_eq!(
            without_generics("<fn() -> core::result::Result<(), alloc::string::String> as core::ops::function::FnOnce<()>>::call_once::{shim:vtable#0}"),
            "<fn() -> core::result::Result<(), alloc::string::String> as core::ops::function::FnOnce<()>>::call_once::{shim:vtable#0}"
        );
        assert_eq!(
            without_generics("regex_automata::meta::Regex::new::<3>"),
            "regex_automata::meta::Regex::new"
        );
    }

    #[test]
    fn grouped_keys_print_as_tracemalloc() {
        let mut by_file = stat(2048, 2);
        by_file.traceback = GroupBy::File.key(&by_file.traceback);
        by_file.group_by = GroupBy::File;
        assert_eq!(
            by_file.to_string(),
            "src/main.rs:0: size=2048 B, count=2, average=1024 B"
        );
        let site = Traceback::from_frames(vec![Frame::new(
            "src/parse.rs".into(),
            41,
            "app::parse_table".into(),
        )]);
        let by_function = Statistic {
            traceback: GroupBy::Function.key(&site),
            size: 64,
            count: 1,
            group_by: GroupBy::Function,
            estimated: false,
            biggest: None,
            other_vias: 0,
        };
        assert_eq!(
            by_function.to_string(),
            "app::parse_table (src/parse.rs): size=64 B, count=1, average=64 B"
        );
    }

    /// A sampled snapshot's totals are estimates and say so, as its lines do.
    #[test]
    fn estimated_totals_carry_the_mark() {
        let estimated = |size, count| Statistic {
            estimated: true,
            ..stat(size, count)
        };
        let report = |totals| Report {
            notes: Vec::new(),
            stats: vec![estimated(4096, 2), estimated(1024, 8)],
            limit: 1,
            totals,
        };
        assert_eq!(
            report(Totals::Live).to_string(),
            "#1: src/main.rs:12: size=~4096 B, count=~2, average=~2048 B\n\
             1 other: ~1024 B\n\
             Total allocated size: ~5120 B"
        );
        assert!(report(Totals::Rest)
            .to_string()
            .ends_with("1 other: ~1024 B in ~8 blocks"));
        // By count, the 8 small blocks come first; the cumulative form sums nothing.
        let by_count = report(Totals::None).by_count().to_string();
        assert_eq!(
            by_count,
            "#1: src/main.rs:12: size=~1024 B, count=~8, average=~128 B\n"
        );
        // Exact figures have no mark.
        let exact = Report {
            notes: Vec::new(),
            stats: vec![stat(4096, 2)],
            limit: 0,
            totals: Totals::Allocated,
        };
        assert_eq!(
            exact.to_string(),
            "1 other: 4096 B\nTotal allocated since tracing started: 4096 B"
        );
    }
}
