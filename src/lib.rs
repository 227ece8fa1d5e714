//! Python's `tracemalloc`, for Rust: which of your lines hold your memory.
//!
//! Install the tracer as the global allocator (one line), then ask:
//!
//! ```no_run
//! #[global_allocator]
//! static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();
//!
//! fn main() -> Result<(), tracealloc::Error> {
//!     let words: Vec<String> = (0..10_000).map(|i| format!("word{i}")).collect();
//!     let snapshot = tracealloc::take_snapshot()?;
//!     for stat in snapshot.statistics(tracealloc::GroupBy::Line).iter().take(10) {
//!         println!("{stat}"); // src/main.rs:5: size=166 KiB, count=10000, average=17 B
//!     }
//!     let memory = tracealloc::traced_memory();
//!     println!("current {} B, peak {} B", memory.current, memory.peak);
//!     drop(words);
//!     Ok(())
//! }
//! ```
//!
//! # What is recorded
//!
//! Every allocation, reallocation and free that goes through the global allocator, with the
//! requested size and the stack of return addresses, from the first allocation of the process
//! (unless [`Tracer::start_stopped`]). Stacks are captured by walking frame pointers
//! (~1 ns a frame) and interned; nothing is symbolized until a snapshot is taken.
//!
//! # The call site
//!
//! The innermost frames of any Rust allocation are allocator machinery (`__rust_alloc`,
//! `alloc::raw_vec`, `Vec::push`, std's hash map internals). A [`Traceback`] starts at the
//! *call site*: the innermost frame that is not tracealloc's, not an allocator shim and not in
//! the Rust toolchain's library sources. So `statistics(GroupBy::Line)` points at the line of
//! your code that called `push`, `format!` or `collect`, not at `raw_vec.rs`. The trimmed frames
//! stay available through [`Traceback::machinery`].
//!
//! # Frame pointers
//!
//! The fast walk needs your crates built with `-C force-frame-pointers=yes` (the prebuilt
//! standard library has frame pointers since Rust 1.79). The first traced allocation checks the
//! walk against the DWARF unwinder; when they disagree, tracealloc falls back to the unwinder
//! (exact, but ~100 times slower per allocation), says so once on stderr, and every snapshot
//! says so in [`Snapshot::notes`]. [`capture_mode`] tells which is in use.
//!
//! # Line numbers
//!
//! Release builds need line tables: `[profile.release] debug = "line-tables-only"`. Without
//! them call sites show as their function (`app::build_index`) and [`Snapshot::notes`] says
//! why.
//!
//! # Comparing and saving
//!
//! [`Snapshot::compare_to`] shows what grew between two snapshots, in tracemalloc's diff format;
//! [`Snapshot::cumulative_statistics`] counts callees in their callers;
//! [`Snapshot::filter_traces`] keeps or drops traces by file pattern; [`Snapshot::skip_frames`]
//! moves call sites past your own allocation helpers; [`Snapshot::dump`] and
//! [`Snapshot::load`] save a symbolized snapshot to open elsewhere.
//!
//! # Heap assertions in tests
//!
//! [`measure`] runs a closure in its own scope and returns what it did to the heap
//! ([`Measurement`]), unaffected by other tests running on other threads; the macros
//! [`assert_peak_below!`], [`assert_no_leaks!`], [`assert_allocations!`] and
//! [`assert_no_alloc!`] fail with a report naming the lines responsible:
//!
//! ```no_run
//! # #[global_allocator] static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();
//! # fn parse(s: &str) -> Vec<String> { s.split(' ').map(String::from).collect() }
//! let input = "a b c";
//! let (words, m) = tracealloc::measure(|| parse(input));
//! assert!(m.peak() < 64 * 1024, "{m}");
//! let words = tracealloc::assert_peak_below!("64 KiB", parse(input));
//! ```
//!
//! # Costs
//!
//! See the README's "Overhead" section and `benches/README.md` for measured figures.

mod build;
mod control;
mod counters;
mod deferred;
mod environment;
mod error;
mod fork;
mod format;
mod guard;
#[cfg(feature = "http")]
pub mod http;
mod ledger;
mod lock;
mod meta;
mod sample;
mod scope;
mod snapshot;
mod stack;
mod table;
mod testing;
mod timeline;
mod tracer;
#[macro_use]
mod macros;

pub use control::{
    capture_mode, clear_traces, is_tracing, object_traceback, peak_breakdown, peak_snapshot,
    reset_peak, sampling, set_peak_breakdown, set_sampling, set_sampling_seed, start, stop,
    summary, take_snapshot, traceback_limit, traced_memory, tracer_allocations, tracer_memory,
    TracedMemory,
};
pub use environment::{process_memory, ProcessMemory};
pub use error::Error;
pub use format::format_size;
pub use sample::DEFAULT_SAMPLE_MEAN;
#[cfg(feature = "flamegraph")]
pub use snapshot::FlameGraphOptions;
pub use snapshot::{
    Attribution, DiffReport, Filter, Frame, GroupBy, Metric, Report, SizeBucket, Snapshot,
    Statistic, StatisticDiff, Summary, Trace, Traceback,
};
pub use stack::CaptureMode;
#[doc(hidden)]
pub use testing::__private;
pub use testing::{
    measure, measure_all_threads, measure_future, parse_size, spawn, try_measure,
    try_measure_all_threads, try_measure_future, InScope, Limit, MeasureFuture, Measurement, Scope,
    ScopeGuard, SiteUsage, TryMeasureFuture,
};
pub use timeline::{Timeline, TimelineSample, TimelineSeries};
pub use tracer::{Tracer, DEFAULT_FRAMES, MAX_FRAMES};
