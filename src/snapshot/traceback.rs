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

/// `filename:lineno`, as tracemalloc; a frame without line information (a build without
/// debug info) prints its function instead, `app::build_index`.
impl fmt::Display for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lineno == 0
            && &*self.filename == "<unknown>"
            && !self.function.is_empty()
            && &*self.function != "<unknown>"
        {
            return f.write_str(&self.function);
        }
        write!(f, "{}:{}", self.filename, self.lineno)
    }
}

/// Which frame a trace is attributed to (see [`Snapshot::with_attribution`](crate::Snapshot::with_attribution)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Attribution {
    /// The innermost frame of the program's own crates (workspace members, path
    /// dependencies), past the allocator, the standard library and every dependency; a trace
    /// with no frame of the program's own (a thread a pool started) keeps its innermost
    /// dependency frame. The default.
    #[default]
    OwnCode,
    /// The innermost frame that is not the allocator's or the standard library's, whatever
    /// crate it is in: for authors profiling their own library from a dependent program.
    Innermost,
}

impl std::str::FromStr for Attribution {
    type Err = crate::Error;

    /// `own` or `innermost` (the names `TRACEALLOC_ATTRIBUTION` and the CLI take).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "own" => Ok(Attribution::OwnCode),
            "innermost" => Ok(Attribution::Innermost),
            other => Err(crate::Error::InvalidAttribution {
                given: other.to_owned(),
            }),
        }
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
    /// Frames from the call site to the program's `main` (or its thread's closure), without
    /// the runtime's start-up frames below it.
    total_nframe: usize,
    /// The raw capture hit its cap: outer frames are missing.
    truncated: bool,
}

/// How many frames at the outer end of `frames` are runtime scaffolding: std's `lang_start`,
/// `__rust_begin_short_backtrace` and thread-spawn closures, the C `main`, `_start`,
/// `start_thread`, `clone`.
fn scaffolding(frames: &[Frame]) -> usize {
    use crate::stack::origin::{of_frame, Kind};
    frames
        .iter()
        .rev()
        .take_while(|f| matches!(of_frame(f), Kind::Toolchain | Kind::Runtime))
        .count()
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
        // Start-up frames below `main` take no room in the limit; a stack made only of them
        // keeps its call site.
        let total_nframe = (all.len() - call_site - scaffolding(&all[call_site..])).max(1);
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

    /// The same stack with its call site chosen by `attribution`.
    pub(crate) fn attributed(&self, attribution: Attribution) -> Traceback {
        let d = &self.0;
        let site = crate::stack::symbolize::call_site_of(&d.all, attribution);
        Traceback::new(d.all.clone(), site, d.limit, d.truncated)
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

    /// How many frames the stack had from the call site outward to the program's `main` (or
    /// its thread's entry), before the traceback limit was applied (a lower bound when the
    /// capture itself was cut short).
    pub fn total_nframe(&self) -> usize {
        self.0.total_nframe
    }

    /// Whether frames were cut: by the traceback limit ([`frames`](Self::frames) is shorter
    /// than [`total_nframe`](Self::total_nframe)) or because the raw capture stopped before
    /// the outermost frame.
    pub fn is_truncated(&self) -> bool {
        self.0.truncated || self.0.end - self.0.call_site < self.0.total_nframe
    }

    /// The dependency code between the call site and the allocator, when there is any: the
    /// outermost frame of a dependency inside the call (`serde_json::de::from_str` for a
    /// `serde_json::from_str(…)` line), with its crate (`serde_json 1.0.154`).
    pub fn via(&self) -> Option<(&Frame, String)> {
        use crate::stack::origin::{crate_of, Kind};
        self.via_frame()
            .map(|f| (f, crate_of(f, Kind::Dependency).to_string()))
    }

    /// The frame of [`via`](Self::via), without naming its crate.
    pub(crate) fn via_frame(&self) -> Option<&Frame> {
        use crate::stack::origin::{of_frame, Kind};
        self.machinery()
            .iter()
            .rev()
            .find(|f| of_frame(f) == Kind::Dependency)
    }

    /// The crate whose code made the allocation: the innermost frame that is neither the
    /// toolchain's nor tracealloc's (`serde_json 1.0.154`, `app`), or `std` (`alloc`, ...) for
    /// the toolchain's own allocations.
    pub fn crate_name(&self) -> String {
        use crate::stack::origin::{crate_of, of_frame, Kind};
        let site = self.0.call_site;
        // The call site is the program's when a dependency is inside it: the innermost of the
        // two is the crate that allocated.
        let (frame, kind) = self.0.all[..=site]
            .iter()
            .map(|f| (f, of_frame(f)))
            .find(|(_, k)| matches!(k, Kind::Own | Kind::Dependency))
            .unwrap_or_else(|| {
                let f = &self.0.all[site];
                (f, of_frame(f))
            });
        crate_of(frame, kind).to_string()
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
            if let Some(source) = source_line(frame) {
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

/// The source text of a frame's line, read from its full path (or its shown name).
pub(crate) fn source_line(frame: &Frame) -> Option<String> {
    let lineno = frame.lineno;
    if lineno == 0 || frame.path.starts_with('<') {
        return None;
    }
    let text = std::fs::read_to_string(&*frame.path)
        .or_else(|_| std::fs::read_to_string(&*frame.filename))
        .ok()?;
    let line = text.lines().nth(lineno as usize - 1)?.trim();
    (!line.is_empty()).then(|| line.to_owned())
}
