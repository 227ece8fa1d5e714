//! Snapshots: an owned, immutable copy of the live traces, symbolized.

mod diff;
mod filter;
mod output;
mod persist;
mod statistics;
mod summary;
mod traceback;

pub use diff::DiffReport;
pub use diff::StatisticDiff;
pub use filter::Filter;
#[cfg(feature = "flamegraph")]
pub use output::FlameGraphOptions;
pub use output::Metric;
#[cfg(feature = "http")]
pub(crate) use output::{encode_pprof, PprofDefault};
pub(crate) use persist::write_atomically;
pub use statistics::{GroupBy, Report, Statistic};
pub(crate) use summary::ProcessFigures;
pub use summary::Summary;
pub use traceback::{Attribution, Frame, Traceback};
pub(crate) use traceback::{ByShown, Identity, Seq, Stack, Stacks};

use crate::stack::capture;
use crate::stack::symbolize::{self, SymFrame};
use crate::stack::{CaptureMode, StackId};
use crate::table;
use std::collections::HashMap;
use std::sync::Arc;

/// One live block.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Trace {
    /// Requested size in bytes (the `Layout` size, not the allocator's usable size).
    pub size: usize,
    /// Where it was allocated (or last reallocated).
    pub traceback: Traceback,
}

/// tracemalloc's `Trace.__str__`: `src/main.rs:12: 64 B`.
impl std::fmt::Display for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.traceback,
            crate::format::format_size(self.size as f64, false)
        )
    }
}

/// What one stack allocated and no longer holds (freed, reallocated, or cleared from the
/// table), summed since tracing started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Released {
    pub(crate) bytes: u64,
    pub(crate) blocks: u64,
    /// Of those, freed by the thread that allocated them before it allocated again.
    pub(crate) temporary_bytes: u64,
    pub(crate) temporary_blocks: u64,
    pub(crate) traceback: Traceback,
}

/// What was live when the traced peak was reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Peak {
    /// The traced peak (`traced_memory().peak` when the snapshot was taken).
    pub(crate) bytes: u64,
    /// When it was reached, from the start of tracing.
    pub(crate) at: Option<std::time::Duration>,
    /// Per stack, the bytes and blocks live at the peak.
    pub(crate) groups: Vec<PeakGroup>,
}

/// One stack's block lifetimes: the sum over every block it allocated since the totals were
/// reset of the time the block lived (freed blocks to their release, live ones to the
/// snapshot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lifetime {
    pub(crate) nanos: u64,
    pub(crate) traceback: Traceback,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PeakGroup {
    pub(crate) bytes: u64,
    pub(crate) blocks: u64,
    pub(crate) traceback: Traceback,
}

/// Allocation requests of one power-of-two size range (see [`Snapshot::size_histogram`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SizeBucket {
    /// Smallest size in the bucket (0, 1, 2, 4, 8, ...).
    pub min: u64,
    /// Largest size in the bucket (0, 1, 3, 7, 15, ...).
    pub max: u64,
    /// Blocks requested with a size in the bucket since tracing started (reallocations count
    /// their new size).
    pub blocks: u64,
}

/// Live and total figures of one stack (see [`Snapshot::per_stack_totals`]).
#[derive(Clone, Debug)]
pub(crate) struct StackTotals {
    pub(crate) traceback: Traceback,
    pub(crate) live_bytes: u64,
    pub(crate) live_blocks: u64,
    /// Bytes and blocks allocated since tracing started, the live ones included; `None` when
    /// the snapshot does not know (a file written by version 1 of the format).
    pub(crate) total: Option<(u64, u64)>,
    /// Bytes and blocks live at the peak, when the snapshot knows the peak.
    pub(crate) peak: Option<(u64, u64)>,
    /// Bytes and blocks of temporary allocations, when the snapshot knows its totals.
    pub(crate) temporary: Option<(u64, u64)>,
    /// Nanoseconds its blocks lived, summed (see `Lifetime`), when the snapshot knows.
    pub(crate) lifetime: Option<u64>,
}

/// Which process took a snapshot, and when: what pprof's mapping and time, DHAT's `cmd` and
/// `pid` show, kept in dump files so a dump converted elsewhere still names its program.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The executable's path (`std::env::current_exe`), empty when unknown.
    pub(crate) program: String,
    /// The command line, arguments separated by spaces.
    pub(crate) command: String,
    pub(crate) pid: u32,
    /// When the snapshot was taken: nanoseconds since the Unix epoch.
    pub(crate) unix_nanos: u64,
}

impl Origin {
    /// This process, now.
    pub(crate) fn here() -> Origin {
        let program = std::env::current_exe()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let command = std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        let unix_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64);
        Origin {
            program,
            command,
            pid: std::process::id(),
            unix_nanos,
        }
    }
}

/// The traces live at one moment, with their stacks symbolized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    traces: Vec<Trace>,
    /// Per stack, what was allocated and is no longer live; `None` when unknown.
    released: Option<Vec<Released>>,
    /// Whether `released` counts temporary allocations (files before version 3 do not).
    temporaries_known: bool,
    /// The peak's breakdown was switched off when the snapshot was taken (not kept in files).
    peak_switched_off: bool,
    /// What was live at the traced peak; `None` when unknown.
    peak: Option<Peak>,
    /// Blocks requested per power-of-two size bucket; `None` when unknown.
    sizes: Option<Vec<u64>>,
    /// Time from the start of tracing to the snapshot, when known.
    duration: Option<std::time::Duration>,
    /// Mean bytes between samples when the traces are a Poisson sample; 0 when exact.
    sample_mean: u64,
    traceback_limit: usize,
    capture_mode: CaptureMode,
    /// The process that took it and when; `None` for files before format version 5.
    origin: Option<Arc<Origin>>,
    /// Per stack, its blocks' lifetimes; `None` when unknown (the peak breakdown was not kept
    /// all along, no tick clock, files before format version 6).
    lifetimes: Option<Vec<Lifetime>>,
}

impl Snapshot {
    /// Every live traced block, in no particular order.
    pub fn traces(&self) -> &[Trace] {
        &self.traces
    }

    /// The traceback limit in force when the snapshot was taken.
    pub fn traceback_limit(&self) -> usize {
        self.traceback_limit
    }

    /// How the stacks were captured.
    pub fn capture_mode(&self) -> CaptureMode {
        self.capture_mode
    }

    /// Total bytes of the traces (estimated, when the snapshot is [`sampled`](Self::sampled)).
    pub fn total_size(&self) -> usize {
        if self.sample_mean == 0 {
            return self.traces.iter().map(|t| t.size).sum();
        }
        let mean = self.sample_mean;
        self.traces
            .iter()
            .map(|t| crate::sample::estimated_bytes(t.size, mean))
            .sum::<f64>()
            .round() as usize
    }

    /// `Some(mean bytes between samples)` when the traces are a Poisson sample of the
    /// allocations (`Tracer::sampled`): each trace then stands for about `1/p` blocks, where
    /// `p = 1 - exp(-size/mean)` is its chance of being recorded, and every statistic is an
    /// unbiased estimate (marked `~` when printed). `None` when every allocation was traced.
    pub fn sampled(&self) -> Option<u64> {
        (self.sample_mean != 0).then_some(self.sample_mean)
    }

    /// A snapshot of the given traces (for building snapshots by hand in tests).
    #[cfg(test)]
    pub(crate) fn from_traces(
        traces: Vec<Trace>,
        traceback_limit: usize,
        capture_mode: CaptureMode,
    ) -> Snapshot {
        Snapshot {
            traces,
            released: Some(Vec::new()),
            temporaries_known: true,
            peak_switched_off: false,
            peak: None,
            sizes: None,
            duration: None,
            sample_mean: 0,
            traceback_limit,
            capture_mode,
            origin: None,
            lifetimes: None,
        }
    }

    /// The same snapshot with every traceback (of live traces and of allocation totals)
    /// replaced by `f`'s answer, or dropped when `f` answers `None`. `f` runs once per distinct
    /// traceback.
    pub(crate) fn map_tracebacks(
        &self,
        mut f: impl FnMut(&Traceback) -> Option<Traceback>,
    ) -> Snapshot {
        let mut memo: HashMap<Identity, Option<Traceback>> = HashMap::new();
        let mut one = |t: &Traceback| memo.entry(t.identity()).or_insert_with(|| f(t)).clone();
        let traces = self
            .traces
            .iter()
            .filter_map(|t| {
                one(&t.traceback).map(|traceback| Trace {
                    size: t.size,
                    traceback,
                })
            })
            .collect();
        let released = self.released.as_ref().map(|released| {
            released
                .iter()
                .filter_map(|r| {
                    one(&r.traceback).map(|traceback| Released {
                        traceback,
                        ..r.clone()
                    })
                })
                .collect()
        });
        let peak = self.peak.as_ref().map(|peak| Peak {
            groups: peak
                .groups
                .iter()
                .filter_map(|g| {
                    one(&g.traceback).map(|traceback| PeakGroup {
                        traceback,
                        ..g.clone()
                    })
                })
                .collect(),
            ..peak.clone()
        });
        let lifetimes = self.lifetimes.as_ref().map(|lifetimes| {
            lifetimes
                .iter()
                .filter_map(|l| {
                    one(&l.traceback).map(|traceback| Lifetime {
                        traceback,
                        nanos: l.nanos,
                    })
                })
                .collect()
        });
        Snapshot {
            traces,
            released,
            temporaries_known: self.temporaries_known,
            peak_switched_off: self.peak_switched_off,
            peak,
            sizes: self.sizes.clone(),
            duration: self.duration,
            sample_mean: self.sample_mean,
            traceback_limit: self.traceback_limit,
            capture_mode: self.capture_mode,
            origin: self.origin.clone(),
            lifetimes,
        }
    }

    /// When the snapshot was taken (wall clock); `None` for files written before format
    /// version 5.
    pub fn taken_at(&self) -> Option<std::time::SystemTime> {
        let origin = self.origin.as_ref()?;
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(origin.unix_nanos))
    }

    /// The path of the executable that took the snapshot, when known (files before format
    /// version 5 do not say).
    pub fn program(&self) -> Option<&str> {
        self.origin
            .as_ref()
            .map(|o| o.program.as_str())
            .filter(|p| !p.is_empty())
    }

    /// The command line and process id of the program that took the snapshot, when known.
    pub fn command_line(&self) -> Option<(&str, u32)> {
        self.origin.as_ref().map(|o| (o.command.as_str(), o.pid))
    }

    /// Time from the start of tracing (the first allocation, or the last `start`) to the
    /// snapshot; `None` when unknown (files written in format version 1).
    pub fn duration(&self) -> Option<std::time::Duration> {
        self.duration
    }

    /// Whether the snapshot knows how much each stack allocated in all since tracing started
    /// (snapshots taken by this version do; files written by format version 1 do not).
    pub fn has_allocation_totals(&self) -> bool {
        self.released.is_some()
    }

    /// Whether the snapshot knows its blocks' lifetimes (taken with
    /// [`Tracer::block_lifetimes`](crate::Tracer::block_lifetimes) or `TRACEALLOC_LIFETIMES=1`
    /// and the peak breakdown kept all along), which DHAT files of allocation totals carry for
    /// dh_view's "At t-gmax" and "short-lived" sorts.
    pub fn has_block_lifetimes(&self) -> bool {
        self.lifetimes.is_some() && self.peak.is_some()
    }

    /// Bytes and blocks allocated since tracing started (or since the last `start`), the live
    /// ones included; `None` when the snapshot does not know.
    pub fn allocated_total(&self) -> Option<(u64, u64)> {
        let released = self.released.as_ref()?;
        let (bytes, blocks) = released.iter().fold((0u64, 0u64), |(b, n), r| {
            (b.saturating_add(r.bytes), n.saturating_add(r.blocks))
        });
        Some((
            bytes + self.total_size() as u64,
            blocks + self.traces.len() as u64,
        ))
    }

    /// The traced peak (`traced_memory().peak` when the snapshot was taken: since tracing
    /// started or the last `reset_peak`), when the snapshot knows what was live at it (see
    /// [`at_peak`](Self::at_peak)).
    pub fn peak_size(&self) -> Option<usize> {
        self.peak.as_ref().map(|p| p.bytes as usize)
    }

    /// When the peak was reached, from the start of tracing: the moment traced memory first
    /// went down after it, to within the coarse clock's tick (4 ms on most Linux systems), or
    /// the snapshot's time if it had not gone down since.
    pub fn peak_time(&self) -> Option<std::time::Duration> {
        self.peak.as_ref().and_then(|p| p.at)
    }

    /// What was live when the traced peak was reached, as a snapshot of its own: statistics,
    /// `compare_to`, `dump` and every output work on it. It knows each stack's bytes and blocks
    /// at the peak, not each block's size: each of a stack's traces carries the stack's
    /// average size (the sizes add up to the stack's bytes exactly). `None` when the snapshot
    /// does not know the peak (sampled, loaded from an older file, or the tracer ran out of
    /// memory for its bookkeeping).
    pub fn at_peak(&self) -> Option<Snapshot> {
        let peak = self.peak.as_ref()?;
        let mut traces = Vec::new();
        for g in &peak.groups {
            let n = g.blocks.max(1);
            let (each, extra) = (g.bytes / n, g.bytes % n);
            for i in 0..g.blocks {
                traces.push(Trace {
                    size: (each + u64::from(i < extra)) as usize,
                    traceback: g.traceback.clone(),
                });
            }
        }
        Some(Snapshot {
            traces,
            released: None,
            temporaries_known: false,
            peak_switched_off: false,
            // It is its own peak: `peak_size` and `peak_time` answer, `at_peak` is itself.
            peak: Some(peak.clone()),
            sizes: None,
            duration: peak.at,
            sample_mean: 0,
            traceback_limit: self.traceback_limit,
            capture_mode: self.capture_mode,
            origin: self.origin.clone(),
            lifetimes: None,
        })
    }

    /// Blocks requested per power-of-two size range since tracing started, from 0 bytes up to
    /// the largest bucket used; `None` when the snapshot does not know (sampled, or an older
    /// file).
    pub fn size_histogram(&self) -> Option<Vec<SizeBucket>> {
        let sizes = self.sizes.as_ref()?;
        let last = sizes.iter().rposition(|&n| n > 0).map_or(0, |i| i + 1);
        Some(
            sizes[..last]
                .iter()
                .enumerate()
                .map(|(i, &blocks)| SizeBucket {
                    min: if i == 0 { 0 } else { 1u64 << (i - 1) },
                    max: if i == 0 {
                        0
                    } else {
                        ((1u128 << i) - 1).min(u64::MAX as u128) as u64
                    },
                    blocks,
                })
                .collect(),
        )
    }

    /// Live and total figures per distinct traceback, in no particular order.
    pub(crate) fn per_stack_totals(&self) -> Vec<StackTotals> {
        let mut by_stack: HashMap<Identity, StackTotals> = HashMap::new();
        let known = self.released.is_some();
        let peak_known = self.peak.is_some();
        let empty = |traceback: &Traceback| StackTotals {
            traceback: traceback.clone(),
            live_bytes: 0,
            live_blocks: 0,
            total: known.then_some((0, 0)),
            peak: peak_known.then_some((0, 0)),
            temporary: (known && self.temporaries_known).then_some((0, 0)),
            lifetime: self.lifetimes.as_ref().map(|_| 0),
        };
        let add = |sum: &mut Option<(u64, u64)>, bytes: u64, blocks: u64| {
            if let Some(sum) = sum {
                sum.0 = sum.0.saturating_add(bytes);
                sum.1 = sum.1.saturating_add(blocks);
            }
        };
        for (traceback, bytes, blocks) in self.per_stack() {
            let (bytes, blocks) = (bytes as u64, blocks as u64);
            let mut slot = empty(&traceback);
            slot.live_bytes = bytes;
            slot.live_blocks = blocks;
            add(&mut slot.total, bytes, blocks);
            by_stack.insert(traceback.identity(), slot);
        }
        for r in self.released.iter().flatten() {
            let slot = by_stack
                .entry(r.traceback.identity())
                .or_insert_with(|| empty(&r.traceback));
            add(&mut slot.total, r.bytes, r.blocks);
            add(&mut slot.temporary, r.temporary_bytes, r.temporary_blocks);
        }
        for g in self.peak.iter().flat_map(|p| &p.groups) {
            let slot = by_stack
                .entry(g.traceback.identity())
                .or_insert_with(|| empty(&g.traceback));
            add(&mut slot.peak, g.bytes, g.blocks);
        }
        for l in self.lifetimes.iter().flatten() {
            let slot = by_stack
                .entry(l.traceback.identity())
                .or_insert_with(|| empty(&l.traceback));
            if let Some(sum) = &mut slot.lifetime {
                *sum = sum.saturating_add(l.nanos);
            }
        }
        by_stack.into_values().collect()
    }

    /// Things the reader of a report must know: the slow capture fallback, missing line
    /// information. Empty when all is well.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.capture_mode == CaptureMode::Backtrace {
            notes.push(
                "stacks were captured with the DWARF unwinder because frame pointers are \
                 missing (slow); build with RUSTFLAGS=\"-C force-frame-pointers=yes\""
                    .to_owned(),
            );
        }
        if self.sample_mean != 0 {
            notes.push(format!(
                "sampled: about one allocation in every {} allocated was recorded; sizes and \
                 counts are unbiased estimates (marked ~)",
                crate::format::format_size(self.sample_mean as f64, false)
            ));
        }
        if let Some(note) = self.lines_note() {
            notes.push(note);
        }
        // Taken by this process, whose tracealloc is compiled at `opt-level = 0`.
        if crate::build::UNOPTIMIZED
            && self
                .origin
                .as_ref()
                .is_some_and(|o| o.pid == std::process::id())
        {
            notes.push(crate::build::UNOPTIMIZED_NOTE.to_owned());
        }
        notes
    }
}

impl Snapshot {
    /// The distinct call sites of the live traces: (those without a line, how many have one).
    fn sites_by_line(&self) -> (Vec<&Frame>, usize) {
        let mut without: Vec<&Frame> = Vec::new();
        let mut with_lines = 0usize;
        let mut seen = std::collections::HashSet::new();
        for trace in &self.traces {
            let site = trace.traceback.call_site();
            if !seen.insert(trace.traceback.identity()) {
                continue;
            }
            if site.lineno == 0 {
                without.push(site);
            } else {
                with_lines += 1;
            }
        }
        (without, with_lines)
    }

    /// How many distinct call sites have no line (the count snapshot files carry).
    pub(crate) fn call_sites_without_lines(&self) -> usize {
        self.sites_by_line().0.len()
    }

    /// Which call sites have no line, and why, when some have none.
    pub(crate) fn lines_note(&self) -> Option<String> {
        let (mut without, with_lines) = self.sites_by_line();
        if without.is_empty() {
            return None;
        }
        without.sort_by(|a, b| a.function.cmp(&b.function));
        without.dedup_by(|a, b| a.function == b.function);
        let generated = without
            .iter()
            .filter(|f| &*f.filename != "<unknown>")
            .count();
        let names: Vec<&str> = without.iter().take(3).map(|f| &*f.function).collect();
        let more = without.len().saturating_sub(names.len());
        let listed = if more > 0 {
            format!("{} and {more} more", names.join(", "))
        } else {
            names.join(", ")
        };
        Some(if with_lines == 0 && generated == 0 {
            "no call site has line information (the binary has no debug info), so statistics \
             name functions: add `[profile.release] debug = \"line-tables-only\"` to Cargo.toml \
             for lines"
                .to_owned()
        } else if generated == without.len() {
            format!(
                "{} call site(s) are compiler-generated code without a line (line 0): {listed}",
                without.len()
            )
        } else {
            format!(
                "{} call site(s) have no line information, their code was built without debug \
                 info (a profile override for a dependency, or a precompiled library): {listed}",
                without.len()
            )
        })
    }
}

/// One stack's figures summed over the shards.
#[derive(Default)]
struct Sums {
    /// Allocated, then (once the live blocks are subtracted) released.
    released: (u64, u64),
    peak: (u64, u64),
    temporary: (u64, u64),
    live_blocks: u64,
    lifetime: u128,
}

/// Copies the trace table and symbolizes it. Call with the reentrancy guard held. With `live`
/// false, only what was live at the peak (for `peak_snapshot`: the live blocks are not copied).
pub(crate) fn take(traceback_limit: usize, capture_cap: usize, live: bool) -> Snapshot {
    let attribution = crate::environment::attribution();
    let mut entries = Vec::new();
    if live {
        table::copy_into(&mut entries);
    }
    let mut sites = Vec::new();
    let table::SitesCopy {
        sizes,
        peak: peak_bytes,
        lifetimes: lifetimes_to,
    } = table::copy_sites_into(&mut sites);
    let peak_at = crate::counters::peak_since_start();
    let mut by_stack: HashMap<StackId, Sums> = HashMap::new();
    for r in &sites {
        if !live && r.peak_blocks == 0 {
            continue;
        }
        let slot = by_stack.entry(r.stack).or_default();
        slot.released.0 += r.allocated_bytes;
        slot.released.1 += r.allocated_blocks;
        slot.peak.0 += r.peak_bytes;
        slot.peak.1 += r.peak_blocks;
        slot.temporary.0 += r.temporary_bytes;
        slot.temporary.1 += r.temporary_blocks;
        slot.live_blocks += r.live_blocks;
        slot.lifetime = slot.lifetime.wrapping_add(r.lifetime);
    }
    drop(sites);
    // Released = allocated − live. The live copy came first, so every block in it was counted
    // as allocated; one allocated since (another thread's) counts as released. A block live in
    // the copy and freed as a temporary before the totals were read counts as both live and a
    // temporary: released is kept at least the temporaries (what it was when both were counted
    // together, at each free).
    if live {
        for e in &entries {
            if let Some(slot) = by_stack.get_mut(&e.stack) {
                let weight = crate::sample::weight(e.size);
                slot.released.0 = slot.released.0.saturating_sub(weight.bytes);
                slot.released.1 = slot.released.1.saturating_sub(weight.blocks);
            }
        }
        for slot in by_stack.values_mut() {
            slot.released.0 = slot.released.0.max(slot.temporary.0);
            slot.released.1 = slot.released.1.max(slot.temporary.1);
        }
    }
    // Ticks to nanoseconds, when the lifetimes are known (a live snapshot only).
    let tick_rate = lifetimes_to
        .filter(|_| live)
        .and_then(|to| Some((to, crate::counters::tick_rate()?)));

    let mut stack_ids: Vec<StackId> = entries
        .iter()
        .map(|e| e.stack)
        .chain(by_stack.keys().copied())
        .collect();
    stack_ids.sort_unstable();
    stack_ids.dedup();

    let mut raw: HashMap<StackId, (Vec<usize>, bool)> = HashMap::with_capacity(stack_ids.len());
    let mut all_addresses = Vec::new();
    for &id in &stack_ids {
        let mut addresses = Vec::new();
        crate::stack::intern::addresses(id, &mut addresses);
        let cut_short = addresses.last() == Some(&capture::CUT_SHORT);
        if cut_short {
            addresses.pop();
        }
        all_addresses.extend_from_slice(&addresses);
        raw.insert(id, (addresses, cut_short));
    }
    all_addresses.sort_unstable();
    all_addresses.dedup();
    let symbols = symbolize::resolve_all(&all_addresses);

    // Each address's frames once, in one table, and each stack a run of indices into it (as a
    // loaded file keeps them): a deep program's stacks share most of their frames, and a
    // frame is 56 bytes where an index is 4.
    let mut table_frames: Vec<Frame> = Vec::new();
    let mut table_kinds = Vec::new();
    let mut runs: HashMap<usize, (u32, u32)> = HashMap::with_capacity(symbols.len());
    for (&ip, frames) in &symbols {
        runs.insert(ip, (table_frames.len() as u32, frames.len() as u32));
        for f in frames.iter() {
            table_frames.push(f.frame.clone());
            table_kinds.push(f.kind);
        }
    }
    drop(symbols);
    let mut indices: Vec<u32> = Vec::new();
    let mut stacks = Vec::with_capacity(raw.len());
    let mut order = Vec::with_capacity(raw.len());
    let mut kinds = Vec::new();
    for (id, (addresses, cut_short)) in raw {
        let start = indices.len();
        for ip in &addresses {
            // The DWARF fallback ends some stacks with a return address of 0: no frame.
            if let Some(&(first, n)) = runs.get(ip).filter(|_| *ip != 0) {
                indices.extend(first..first + n);
            }
        }
        kinds.clear();
        kinds.extend(indices[start..].iter().map(|&i| table_kinds[i as usize]));
        let site = if kinds.is_empty() {
            0
        } else {
            symbolize::call_site(
                Seq::Indexed(&table_frames, &indices[start..]),
                &kinds,
                attribution,
            )
        };
        let truncated = cut_short || addresses.len() >= capture_cap;
        stacks.push(Stack::new(
            &table_frames,
            &indices,
            start,
            site as u32,
            traceback_limit as u32,
            truncated,
        ));
        order.push(id);
    }
    let stacks = Stacks::new(table_frames, indices, stacks);
    let tracebacks: HashMap<StackId, Traceback> = order
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, Traceback::loaded(&stacks, i)))
        .collect();

    let traces = entries
        .into_iter()
        .map(|e| Trace {
            size: e.size,
            traceback: tracebacks
                .get(&e.stack)
                .cloned()
                .unwrap_or_else(|| Traceback::from_frames(Vec::new())),
        })
        .collect();
    let sample_mean = crate::sample::mean() as u64;
    // While sampling, blocks are counted in 1/1024ths.
    let blocks = |n: u64| {
        if sample_mean != 0 {
            (n + crate::sample::BLOCK_UNIT / 2) / crate::sample::BLOCK_UNIT
        } else {
            n
        }
    };
    let traceback = |id: &StackId| {
        tracebacks
            .get(id)
            .cloned()
            .unwrap_or_else(|| Traceback::from_frames(Vec::new()))
    };
    let mut released = Vec::new();
    let mut groups = Vec::new();
    let mut lifetimes = Vec::new();
    for (id, sums) in &by_stack {
        if let Some((to, rate)) = tick_rate {
            // Each live block counts to the copy's time.
            let ticks = sums
                .lifetime
                .wrapping_add((to as u128).wrapping_mul(sums.live_blocks as u128));
            // A sum that wrapped below zero (a clock read out of order across cores) is 0.
            let ticks = if ticks > u128::MAX / 2 { 0 } else { ticks };
            if sums.released.1 + sums.live_blocks > 0 {
                lifetimes.push(Lifetime {
                    nanos: (ticks as f64 / rate).min(u64::MAX as f64) as u64,
                    traceback: traceback(id),
                });
            }
        }
        if blocks(sums.released.1) > 0 {
            released.push(Released {
                bytes: sums.released.0,
                blocks: blocks(sums.released.1),
                temporary_bytes: sums.temporary.0,
                temporary_blocks: blocks(sums.temporary.1),
                traceback: traceback(id),
            });
        }
        if sums.peak.1 > 0 {
            groups.push(PeakGroup {
                bytes: sums.peak.0,
                blocks: sums.peak.1,
                traceback: traceback(id),
            });
        }
    }
    // A figure lost for want of memory makes them all unknown, never silently low; the peak
    // breakdown is kept for exact tracing only (see `Snapshot::at_peak`).
    let complete = crate::counters::lost_releases() == 0;
    let peak = peak_bytes
        .filter(|_| complete && sample_mean == 0)
        .map(|bytes| Peak {
            bytes,
            at: peak_at,
            groups,
        });
    if !live {
        return Snapshot {
            traces: Vec::new(),
            released: None,
            temporaries_known: false,
            peak_switched_off: false,
            peak,
            sizes: None,
            duration: crate::counters::since_start(),
            sample_mean,
            traceback_limit,
            capture_mode: capture::mode(),
            origin: Some(Arc::new(Origin::here())),
            lifetimes: None,
        };
    }
    Snapshot {
        traces,
        released: complete.then_some(released),
        temporaries_known: true,
        peak_switched_off: peak_bytes.is_none() && sample_mean == 0,
        peak,
        sizes: (sample_mean == 0).then(|| sizes.to_vec()),
        duration: crate::counters::since_start(),
        sample_mean,
        traceback_limit,
        capture_mode: capture::mode(),
        origin: Some(Arc::new(Origin::here())),
        lifetimes: (complete && tick_rate.is_some()).then_some(lifetimes),
    }
}

/// The traceback of one stack id (for `object_traceback`). Call with the guard held.
pub(crate) fn traceback_of(id: StackId, traceback_limit: usize, capture_cap: usize) -> Traceback {
    let mut addresses = Vec::new();
    crate::stack::intern::addresses(id, &mut addresses);
    let cut_short = addresses.last() == Some(&capture::CUT_SHORT);
    if cut_short {
        addresses.pop();
    }
    let symbols = symbolize::resolve_all(&addresses);
    let frames: Vec<SymFrame> = addresses
        .iter()
        .filter(|&&ip| ip != 0)
        .filter_map(|ip| symbols.get(ip))
        .flat_map(|f| f.iter().cloned())
        .collect();
    let kinds: Vec<_> = frames.iter().map(|f| f.kind).collect();
    let frames: Vec<Frame> = frames.into_iter().map(|f| f.frame).collect();
    let site = symbolize::call_site(
        Seq::Slice(&frames),
        &kinds,
        crate::environment::attribution(),
    );
    let truncated = cut_short || addresses.len() >= capture_cap;
    Traceback::new(frames, site, traceback_limit, truncated)
}
