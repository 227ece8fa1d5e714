//! Snapshots: an owned, immutable copy of the live traces, symbolized.

mod diff;
mod filter;
mod persist;
mod statistics;
mod traceback;

pub use diff::StatisticDiff;
pub use filter::Filter;
pub use statistics::{GroupBy, Report, Statistic};
pub use traceback::{Frame, Traceback};

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

/// The traces live at one moment, with their stacks symbolized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    traces: Vec<Trace>,
    traceback_limit: usize,
    capture_mode: CaptureMode,
    call_sites_without_lines: usize,
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

    /// Total bytes of the traces.
    pub fn total_size(&self) -> usize {
        self.traces.iter().map(|t| t.size).sum()
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
            traceback_limit,
            capture_mode,
            call_sites_without_lines: 0,
        }
    }

    /// A snapshot with the same settings and other traces.
    pub(crate) fn with_traces(&self, traces: Vec<Trace>) -> Snapshot {
        Snapshot {
            traces,
            ..self.clone_settings()
        }
    }

    fn clone_settings(&self) -> Snapshot {
        Snapshot {
            traces: Vec::new(),
            traceback_limit: self.traceback_limit,
            capture_mode: self.capture_mode,
            call_sites_without_lines: self.call_sites_without_lines,
        }
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
        if self.call_sites_without_lines > 0 {
            notes.push(format!(
                "{} call site(s) have no line information: the binary lacks debug info; add \
                 `[profile.release] debug = \"line-tables-only\"` to Cargo.toml",
                self.call_sites_without_lines
            ));
        }
        notes
    }
}

/// Copies the trace table and symbolizes it. Call with the reentrancy guard held.
pub(crate) fn take(traceback_limit: usize, capture_cap: usize) -> Snapshot {
    let mut entries = Vec::new();
    table::copy_into(&mut entries);

    let mut stack_ids: Vec<StackId> = entries.iter().map(|e| e.stack).collect();
    stack_ids.sort_unstable();
    stack_ids.dedup();

    let mut raw: HashMap<StackId, Vec<usize>> = HashMap::with_capacity(stack_ids.len());
    let mut all_addresses = Vec::new();
    for &id in &stack_ids {
        let mut addresses = Vec::new();
        crate::stack::intern::addresses(id, &mut addresses);
        all_addresses.extend_from_slice(&addresses);
        raw.insert(id, addresses);
    }
    all_addresses.sort_unstable();
    all_addresses.dedup();
    let symbols = symbolize::resolve_all(&all_addresses);

    let mut call_sites_without_lines = 0;
    let mut tracebacks: HashMap<StackId, Traceback> = HashMap::with_capacity(raw.len());
    for (id, addresses) in raw {
        let expanded: Vec<&SymFrame> = addresses
            .iter()
            .filter_map(|ip| symbols.get(ip))
            .flat_map(|frames: &Arc<[SymFrame]>| frames.iter())
            .collect();
        let owned: Vec<SymFrame> = expanded.into_iter().cloned().collect();
        let site = symbolize::call_site(&owned);
        if owned.get(site).is_some_and(|f| !f.has_line) {
            call_sites_without_lines += 1;
        }
        let truncated = addresses.len() >= capture_cap;
        let frames = owned.into_iter().map(|f| f.frame).collect();
        tracebacks.insert(id, Traceback::new(frames, site, traceback_limit, truncated));
    }

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
    Snapshot {
        traces,
        traceback_limit,
        capture_mode: capture::mode(),
        call_sites_without_lines,
    }
}

/// The traceback of one stack id (for `object_traceback`). Call with the guard held.
pub(crate) fn traceback_of(id: StackId, traceback_limit: usize, capture_cap: usize) -> Traceback {
    let mut addresses = Vec::new();
    crate::stack::intern::addresses(id, &mut addresses);
    let symbols = symbolize::resolve_all(&addresses);
    let frames: Vec<SymFrame> = addresses
        .iter()
        .filter_map(|ip| symbols.get(ip))
        .flat_map(|f| f.iter().cloned())
        .collect();
    let site = symbolize::call_site(&frames);
    let truncated = addresses.len() >= capture_cap;
    Traceback::new(
        frames.into_iter().map(|f| f.frame).collect(),
        site,
        traceback_limit,
        truncated,
    )
}
