//! `Frame` and `Traceback`: symbolized stacks, call site first.

use std::fmt;
use std::sync::Arc;

/// One source location of a stack.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub struct Frame {
    /// Source file; relative to the working directory at snapshot time when it lies under it,
    /// `"<unknown>"` when the binary has no line information for it.
    pub filename: Arc<str>,
    /// Line number; 0 when unknown (and in statistics grouped by file).
    pub lineno: u32,
    /// Demangled function name, without the hash suffix.
    pub function: Arc<str>,
    /// The source path as the debug information gives it (usually absolute); equal to
    /// `filename` when that was not shortened.
    pub path: Arc<str>,
    /// This frame was inlined into the next (outer) one: both come from one machine-code
    /// address. Statistics ignore it; pprof output groups such frames into one location.
    pub inlined: bool,
}

impl Frame {
    pub(crate) fn new(filename: String, lineno: u32, function: String) -> Frame {
        let filename: Arc<str> = filename.into();
        Frame {
            path: filename.clone(),
            filename,
            lineno,
            function: function.into(),
            inlined: false,
        }
    }

    pub(crate) fn with_path(
        filename: String,
        path: String,
        lineno: u32,
        function: String,
    ) -> Frame {
        Frame {
            filename: filename.into(),
            lineno,
            function: function.into(),
            path: path.into(),
            inlined: false,
        }
    }

    /// `"<unknown>":0`, tracemalloc's frame for a stack that could not be captured.
    pub(crate) fn unknown() -> Frame {
        Frame::new("<unknown>".into(), 0, "<unknown>".into())
    }
}

/// `filename:lineno`, as tracemalloc.
impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.filename, self.lineno)
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Data {
    /// Every symbolized frame, innermost first, allocator machinery included.
    all: Vec<Frame>,
    /// Index of the call site in `all`.
    call_site: usize,
    /// The traceback limit the frames were kept with.
    limit: usize,
    /// End of the frames kept by the traceback limit.
    end: usize,
    /// Frames from the call site to the outermost captured one.
    total_nframe: usize,
    /// The raw capture hit its cap: outer frames are missing.
    truncated: bool,
}

/// A stack, most recent call first: `frames()[0]` is the call site, the innermost frame in the
/// program's own code (allocator and standard-library frames are trimmed, and stay reachable
/// through [`Traceback::machinery`]). Cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Traceback(Arc<Data>);

impl Traceback {
    pub(crate) fn new(all: Vec<Frame>, call_site: usize, limit: usize, truncated: bool) -> Self {
        let mut all = all;
        if all.is_empty() {
            all.push(Frame::unknown());
        }
        let call_site = call_site.min(all.len() - 1);
        let limit = limit.max(1);
        let total_nframe = all.len() - call_site;
        let end = call_site + total_nframe.min(limit);
        Traceback(Arc::new(Data {
            all,
            call_site,
            limit,
            end,
            total_nframe,
            truncated,
        }))
    }

    /// The same stack with the call site moved `outward` frames towards the root (at most to
    /// the outermost frame), keeping the limit.
    pub(crate) fn moved_outward(&self, outward: usize) -> Traceback {
        let d = &self.0;
        Traceback::new(d.all.clone(), d.call_site + outward, d.limit, d.truncated)
    }

    /// Every frame, innermost first: `machinery()` then the frames from the call site, all of
    /// them (not only those kept by the limit).
    pub(crate) fn all_frames(&self) -> &[Frame] {
        &self.0.all
    }

    pub(crate) fn parts(&self) -> (usize, usize, bool) {
        (self.0.call_site, self.0.limit, self.0.truncated)
    }

    /// A traceback of exactly these frames (used for grouped statistics).
    pub(crate) fn from_frames(frames: Vec<Frame>) -> Self {
        let n = frames.len().max(1);
        Traceback::new(frames, 0, n, false)
    }

    /// The frames kept, call site first, at most the traceback limit.
    pub fn frames(&self) -> &[Frame] {
        &self.0.all[self.0.call_site..self.0.end]
    }

    /// The call site: the innermost frame in the program's own code.
    pub fn call_site(&self) -> &Frame {
        &self.0.all[self.0.call_site]
    }

    /// The frames trimmed before the call site (allocator shims, `alloc::raw_vec`, ...),
    /// innermost first.
    pub fn machinery(&self) -> &[Frame] {
        &self.0.all[..self.0.call_site]
    }

    /// How many frames the stack had from the call site outward, before the traceback limit
    /// was applied (a lower bound when [`is_truncated`](Self::is_truncated)).
    pub fn total_nframe(&self) -> usize {
        self.0.total_nframe
    }

    /// Whether the capture stopped before the outermost frame.
    pub fn is_truncated(&self) -> bool {
        self.0.truncated
    }

    /// tracemalloc's `Traceback.format`: two lines a frame, `  File "f", line n, in function`
    /// and the source line when the file is readable. `limit` keeps that many frames (from the
    /// call site when positive, from the outermost when negative, all when `None`);
    /// `most_recent_first` puts the call site on top.
    pub fn format(&self, limit: Option<isize>, most_recent_first: bool) -> Vec<String> {
        let frames = self.frames();
        let chosen: &[Frame] = match limit {
            None => frames,
            Some(l) if l >= 0 => &frames[..(l as usize).min(frames.len())],
            Some(l) => &frames[frames.len() - l.unsigned_abs().min(frames.len())..],
        };
        let mut ordered: Vec<&Frame> = chosen.iter().collect();
        if !most_recent_first {
            ordered.reverse();
        }
        let mut lines = Vec::new();
        for frame in ordered {
            lines.push(format!(
                "  File \"{}\", line {}, in {}",
                frame.filename, frame.lineno, frame.function
            ));
            if let Some(source) = source_line(&frame.filename, frame.lineno) {
                lines.push(format!("    {source}"));
            }
        }
        lines
    }
}

/// The call site, `filename:lineno` (tracemalloc prints the oldest frame; we print the line
/// that allocated).
impl fmt::Display for Traceback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.call_site(), f)
    }
}

fn source_line(filename: &str, lineno: u32) -> Option<String> {
    if lineno == 0 || filename.starts_with('<') {
        return None;
    }
    let text = std::fs::read_to_string(filename).ok()?;
    let line = text.lines().nth(lineno as usize - 1)?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}
