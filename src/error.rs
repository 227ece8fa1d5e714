//! Errors.

use std::fmt;

/// What went wrong.
///
/// `Debug` prints the same message as `Display`, so `fn main() -> Result<(), Error>` tells the
/// user what to do rather than a variant name.
#[non_exhaustive]
pub enum Error {
    /// `tracealloc::Tracer` is not this program's global allocator, so nothing is recorded.
    NotInstalled,
    /// Tracing is stopped (`stop()` was called, or the tracer was built `start_stopped`).
    NotTracing,
    /// A traceback limit outside `1..=256`.
    InvalidFrameCount {
        /// The limit asked for.
        requested: usize,
    },
    /// A file pattern that is not a valid glob.
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A size limit that is not a byte count or a size such as "64 KiB" or "1.5 MB".
    InvalidLimit {
        /// The limit as given.
        limit: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The tracer could not allocate room for a new measurement scope (out of memory).
    ScopeUnavailable,
    /// Allocation totals were asked of a snapshot that does not have them (read from a file
    /// written in format version 1).
    AllocationTotalsUnknown,
    /// The peak breakdown was asked while sampling (it is kept for exact tracing only), or of
    /// a snapshot that does not carry it (sampled, or read from a file of format version 1
    /// or 2).
    PeakNotKept,
    /// Temporary allocations were asked of a snapshot read from a file written before format
    /// version 3, which did not count them.
    TemporariesUnknown,
    /// `clear_traces`, `stop`, `start` or `set_sampling` ran (on some thread) while a
    /// measurement was open: the records of its blocks are gone, so its figures would be wrong.
    MeasurementDisturbed,
    /// `measure_all_threads` was called inside another all-threads measurement on the same
    /// thread (there is one at a time: the inner one would have nothing of its own to count).
    AllThreadsNested,
    /// A timeline interval under 1 ms.
    InvalidInterval {
        /// The interval asked for.
        interval: std::time::Duration,
    },
    /// A sampling mean of 0 bytes (use `None` for exact tracing) or above 1 TiB.
    InvalidSampleMean,
    /// Heap assertions need every allocation, and the tracer samples.
    Sampled {
        /// Mean bytes between samples.
        mean: usize,
    },
    /// There is nothing to draw.
    Empty {
        /// What is missing.
        what: String,
    },
    /// An output writer failed.
    Output {
        /// The output format.
        format: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// Reading or writing a snapshot file failed.
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// An attribution name other than `own` and `innermost`.
    InvalidAttribution {
        /// The name as given.
        given: String,
    },
    /// The profile server could not start (see `http::Server`).
    Http {
        /// The address it was to serve.
        address: String,
        /// What went wrong.
        reason: String,
    },
    /// A snapshot file is damaged, truncated, or not a snapshot file.
    Corrupt {
        /// Byte offset in the file where the problem was found.
        offset: u64,
        /// What is wrong.
        problem: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::NotInstalled => f.write_str(
                "tracealloc::Tracer is not the global allocator of this program, so nothing is \
                 traced; add this line to the binary (or to the test file):\n    \
                 #[global_allocator] static GLOBAL: tracealloc::Tracer = tracealloc::Tracer::new();",
            ),
            Error::NotTracing => f.write_str(
                "tracealloc is not tracing: call tracealloc::start(16) first (tracing is off \
                 after stop() and with Tracer::start_stopped())",
            ),
            Error::InvalidFrameCount { requested } => write!(
                f,
                "the number of frames must be in 1..={}, got {requested}",
                crate::tracer::MAX_FRAMES
            ),
            Error::InvalidPattern { pattern, reason } => {
                write!(f, "invalid file pattern {pattern:?}: {reason}")
            }
            Error::InvalidLimit { limit, reason } => {
                write!(f, "invalid size limit {limit:?}: {reason}")
            }
            Error::ScopeUnavailable => {
                f.write_str("tracealloc could not allocate a measurement scope (out of memory)")
            }
            Error::AllocationTotalsUnknown => f.write_str(
                "this snapshot has no allocation totals (it was read from a file written by an \
                 older tracealloc, format version 1); only live memory can be shown",
            ),
            Error::PeakNotKept => f.write_str(
                "what was live at the peak is not known here: it is kept while tracing every \
                 allocation with the peak breakdown on (off by default: TRACEALLOC_PEAK=1, \
                 Tracer::peak_breakdown(true) or tracealloc::set_peak_breakdown(true) turns it \
                 on), not while sampling \
                 (tracealloc::set_sampling(None)), and files written before format version 3 \
                 do not carry it",
            ),
            Error::TemporariesUnknown => f.write_str(
                "this snapshot does not know its temporary allocations (it was read from a \
                 file written before format version 3)",
            ),
            Error::MeasurementDisturbed => f.write_str(
                "the measurement was disturbed: clear_traces(), stop(), start() or \
                 set_sampling() ran while it was open, so the records of its blocks are gone and \
                 its figures would be wrong; do not call them while tests measure (run such a \
                 test on its own: cargo nextest, or --test-threads=1)",
            ),
            Error::AllThreadsNested => f.write_str(
                "measure_all_threads cannot run inside another all-threads measurement on the \
                 same thread: measure the inner code with measure (its own scope) instead",
            ),
            Error::InvalidInterval { interval } => write!(
                f,
                "a timeline interval must be at least 1 ms, got {interval:?}"
            ),
            Error::InvalidSampleMean => f.write_str(
                "a sampling mean must be from 1 byte to 1 TiB; use None for exact tracing",
            ),
            Error::Sampled { mean } => write!(
                f,
                "heap assertions need exact tracing, and this tracer samples (one allocation per \
                 {} on average): use Tracer::new() without .sampled(), or call \
                 tracealloc::set_sampling(None) first",
                crate::format_size(*mean as f64, false)
            ),
            Error::InvalidAttribution { given } => write!(
                f,
                "invalid attribution {given:?}: expected \"own\" (the program's own line) or \
                 \"innermost\" (the innermost frame outside std, dependencies included)"
            ),
            Error::Empty { what } => write!(f, "nothing to show: {what}"),
            Error::Output { format, reason } => write!(f, "could not write the {format}: {reason}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Http { address, reason } => {
                write!(f, "cannot serve heap profiles at {address}: {reason}")
            }
            Error::Corrupt { offset, problem } => {
                write!(f, "not a valid snapshot file: {problem} (at byte {offset})")
            }
        }
    }
}

/// The message, as `Display` prints it (see the type's documentation).
impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fn main() -> Result<(), Error>` prints the `Debug` form: it must be the message.
    #[test]
    fn debug_is_the_message() {
        for e in [
            Error::NotInstalled,
            Error::InvalidFrameCount { requested: 0 },
            Error::InvalidAttribution {
                given: "outer".into(),
            },
        ] {
            assert_eq!(format!("{e:?}"), e.to_string());
            assert!(!format!("{e:?}").starts_with("NotInstalled"));
        }
        assert!(format!("{:?}", Error::NotInstalled).contains("#[global_allocator]"));
        assert_eq!(
            "innermost".parse::<crate::Attribution>().unwrap(),
            crate::Attribution::Innermost
        );
        assert!(matches!(
            "outer".parse::<crate::Attribution>(),
            Err(Error::InvalidAttribution { .. })
        ));
    }
}
