//! Filters (tracemalloc's `Filter`) and moving the call site (`skip_frames`).

use super::{Frame, Snapshot, Traceback};
use crate::error::Error;
use glob::{MatchOptions, Pattern};

const MATCH: MatchOptions = MatchOptions {
    case_sensitive: true,
    // `*` matches `/` too, as fnmatch does for tracemalloc.
    require_literal_separator: false,
    require_literal_leading_dot: false,
};

/// A file pattern, checked once.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FilePattern {
    text: String,
    pattern: Pattern,
}

impl FilePattern {
    fn new(text: &str) -> Result<Self, Error> {
        if text.is_empty() {
            return Err(Error::InvalidPattern {
                pattern: text.to_owned(),
                reason: "the pattern is empty".to_owned(),
            });
        }
        let pattern = Pattern::new(text).map_err(|e| Error::InvalidPattern {
            pattern: text.to_owned(),
            reason: format!("{} (at character {})", e.msg, e.pos),
        })?;
        Ok(FilePattern {
            text: text.to_owned(),
            pattern,
        })
    }

    /// Matches the file as shown (`src/parse.rs`) or its full path.
    fn matches(&self, frame: &Frame) -> bool {
        self.pattern.matches_with(&frame.filename, MATCH)
            || self.pattern.matches_with(&frame.path, MATCH)
    }
}

/// Keeps or drops traces by file name pattern (and line), as tracemalloc's `Filter`.
///
/// Patterns are shell globs (`*`, `?`, `[abc]`, `[!abc]`; `*` also matches `/`), matched against
/// the file as shown in statistics and against its full path. Inclusive filters are OR'ed (a
/// trace is kept if any matches, or if there are none); exclusive ones are AND'ed (a trace is
/// dropped if any matches).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    inclusive: bool,
    file: FilePattern,
    lineno: Option<u32>,
    all_frames: bool,
}

impl Filter {
    /// Keeps only traces whose call site's file matches `pattern`.
    pub fn include(pattern: &str) -> Result<Filter, Error> {
        Filter::new(true, pattern)
    }

    /// Drops traces whose call site's file matches `pattern`.
    pub fn exclude(pattern: &str) -> Result<Filter, Error> {
        Filter::new(false, pattern)
    }

    fn new(inclusive: bool, pattern: &str) -> Result<Filter, Error> {
        Ok(Filter {
            inclusive,
            file: FilePattern::new(pattern)?,
            lineno: None,
            all_frames: false,
        })
    }

    /// Also requires this line number.
    pub fn lineno(mut self, lineno: u32) -> Filter {
        self.lineno = Some(lineno);
        self
    }

    /// Matches any frame of the traceback (up to the limit) instead of only the call site.
    pub fn all_frames(mut self, all_frames: bool) -> Filter {
        self.all_frames = all_frames;
        self
    }

    /// The pattern as given.
    pub fn pattern(&self) -> &str {
        &self.file.text
    }

    /// Whether the filter keeps (true) or drops (false) what it matches.
    pub fn is_inclusive(&self) -> bool {
        self.inclusive
    }

    fn matches_frame(&self, frame: &Frame) -> bool {
        self.file.matches(frame) && self.lineno.is_none_or(|l| l == frame.lineno)
    }

    fn matches(&self, traceback: &Traceback) -> bool {
        if self.all_frames {
            traceback.shown().iter().any(|f| self.matches_frame(f))
        } else {
            self.matches_frame(traceback.call_site())
        }
    }
}

impl Snapshot {
    /// A new snapshot with the traces the filters keep. An empty list keeps everything.
    pub fn filter_traces(&self, filters: &[Filter]) -> Snapshot {
        let (include, exclude): (Vec<&Filter>, Vec<&Filter>) =
            filters.iter().partition(|f| f.inclusive);
        self.map_tracebacks(|t| {
            ((include.is_empty() || include.iter().any(|f| f.matches(t)))
                && !exclude.iter().any(|f| f.matches(t)))
            .then(|| t.clone())
        })
    }

    /// A new snapshot in which every traceback's call site is moved past the frames whose file
    /// (or function name) matches one of `patterns`: your own allocation helpers, a
    /// dependency's internals. Statistics then point at the first frame not skipped, i.e. at
    /// the callers of those helpers.
    ///
    /// Unlike [`filter_traces`](Self::filter_traces), which keeps or drops whole traces, this
    /// keeps every trace and every byte and only changes where they are attributed. A trace
    /// whose frames all match stays at its outermost frame. Patterns are the same globs as in
    /// [`Filter`], tried on the file as shown, its full path, and the function name.
    pub fn skip_frames(&self, patterns: &[&str]) -> Result<Snapshot, Error> {
        let patterns = patterns
            .iter()
            .map(|p| FilePattern::new(p))
            .collect::<Result<Vec<_>, _>>()?;
        let skipped = |f: &Frame| {
            patterns
                .iter()
                .any(|p| p.matches(f) || p.pattern.matches_with(&f.function, MATCH))
        };
        Ok(self.map_tracebacks(|t| {
            let (call_site, _, _) = t.parts();
            let all = t.all();
            let rest = all.sub(call_site..all.len());
            let outward = rest.iter().take_while(|f| skipped(f)).count();
            Some(if outward == 0 {
                t.clone()
            } else {
                t.moved_outward(outward.min(rest.len() - 1))
            })
        }))
    }

    /// The same snapshot with every trace attributed as `attribution` says: to the program's
    /// own line (the default), or to the innermost frame outside the allocator and std,
    /// dependencies included ([`Attribution::Innermost`](crate::Attribution::Innermost), for authors profiling their own
    /// library). Takes effect on snapshots loaded from files too; composes with
    /// [`skip_frames`](Self::skip_frames) applied after it.
    pub fn with_attribution(&self, attribution: crate::Attribution) -> Snapshot {
        self.map_tracebacks(|t| Some(t.attributed(attribution)))
    }
}
