//! `Frame` and `Traceback`: symbolized stacks, call site first.

use std::fmt;
use std::sync::{Arc, OnceLock};

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

    /// `"<unknown>":0`, tracemalloc's frame for a stack that could not be captured: one value
    /// for the whole process, so such stacks cost no strings of their own.
    pub(crate) fn unknown() -> &'static Frame {
        static UNKNOWN: OnceLock<Frame> = OnceLock::new();
        UNKNOWN.get_or_init(|| {
            // Made once and kept for good: the tracer's memory, not the program's.
            let _guard = crate::guard::Guard::enter();
            Frame::new("<unknown>".into(), 0, "<unknown>".into())
        })
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

/// The frames of one stack, wherever they are kept: a slice of its own, or indices into the
/// frame table of a loaded file. Reading them never allocates.
#[derive(Clone, Copy)]
pub(crate) enum Seq<'a> {
    /// The frames themselves.
    Slice(&'a [Frame]),
    /// `frames[i]` for each `i` of the indices.
    Indexed(&'a [Frame], &'a [u32]),
}

impl<'a> Seq<'a> {
    pub(crate) fn len(self) -> usize {
        match self {
            Seq::Slice(s) => s.len(),
            Seq::Indexed(_, idx) => idx.len(),
        }
    }

    /// The `i`th frame; panics past the end, as slices do.
    pub(crate) fn get(self, i: usize) -> &'a Frame {
        match self {
            Seq::Slice(s) => &s[i],
            Seq::Indexed(frames, idx) => &frames[idx[i] as usize],
        }
    }

    /// The frames in `range`; panics outside, as slices do.
    pub(crate) fn sub(self, range: std::ops::Range<usize>) -> Seq<'a> {
        match self {
            Seq::Slice(s) => Seq::Slice(&s[range]),
            Seq::Indexed(frames, idx) => Seq::Indexed(frames, &idx[range]),
        }
    }

    pub(crate) fn iter(self) -> SeqIter<'a> {
        SeqIter {
            seq: self,
            front: 0,
            back: self.len(),
        }
    }

    /// The frames copied out.
    pub(crate) fn to_vec(self) -> Vec<Frame> {
        match self {
            Seq::Slice(s) => s.to_vec(),
            Seq::Indexed(..) => self.iter().cloned().collect(),
        }
    }
}

impl PartialEq for Seq<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Seq<'_> {}

impl PartialOrd for Seq<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Lexicographic, as slices compare.
impl Ord for Seq<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.iter().cmp(other.iter())
    }
}

impl std::hash::Hash for Seq<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_usize(self.len());
        for frame in self.iter() {
            frame.hash(state);
        }
    }
}

impl fmt::Debug for Seq<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The frames of a [`Seq`], in order.
#[derive(Clone)]
pub(crate) struct SeqIter<'a> {
    seq: Seq<'a>,
    front: usize,
    back: usize,
}

impl<'a> Iterator for SeqIter<'a> {
    type Item = &'a Frame;

    fn next(&mut self) -> Option<&'a Frame> {
        (self.front < self.back).then(|| {
            self.front += 1;
            self.seq.get(self.front - 1)
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.back - self.front;
        (n, Some(n))
    }
}

impl DoubleEndedIterator for SeqIter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        (self.front < self.back).then(|| {
            self.back -= 1;
            self.seq.get(self.back)
        })
    }
}

impl ExactSizeIterator for SeqIter<'_> {}

/// A stack with frames of its own (a live snapshot's stacks, statistics' keys).
struct Data {
    /// Every symbolized frame, innermost first, allocator machinery included.
    all: Vec<Frame>,
    geometry: Geometry,
}

/// Where a stack's call site and limit put the frames it shows.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    /// Index of the call site among all the frames.
    call_site: usize,
    /// The traceback limit the frames were kept with.
    limit: usize,
    /// Frames from the call site to the program's `main` (or its thread's closure), without
    /// the runtime's start-up frames below it.
    total_nframe: usize,
    /// The raw capture hit its cap: outer frames are missing.
    truncated: bool,
}

impl Geometry {
    /// The geometry of a stack of `all` (at least one frame) with the call site `call_site`
    /// (at most the outermost frame) and the limit `limit` (at least 1).
    fn new(all: Seq<'_>, call_site: usize, limit: usize, truncated: bool) -> Geometry {
        let call_site = call_site.min(all.len() - 1);
        let limit = limit.max(1);
        // Start-up frames below `main` take no room in the limit; a stack made only of them
        // keeps its call site.
        let rest = all.sub(call_site..all.len());
        let total_nframe = (rest.len() - scaffolding(rest)).max(1);
        Geometry {
            call_site,
            limit,
            total_nframe,
            truncated,
        }
    }

    /// End of the frames kept by the traceback limit.
    fn end(&self) -> usize {
        self.call_site + self.total_nframe.min(self.limit)
    }
}

/// How many frames at the outer end of `frames` are runtime scaffolding: std's `lang_start`,
/// `__rust_begin_short_backtrace` and thread-spawn closures, the C `main`, `_start`,
/// `start_thread`, `clone`.
fn scaffolding(frames: Seq<'_>) -> usize {
    use crate::stack::origin::{of_frame, Kind};
    frames
        .iter()
        .rev()
        .take_while(|f| matches!(of_frame(f), Kind::Toolchain | Kind::Runtime))
        .count()
}

/// The stacks of a loaded file (see `Snapshot::from_bytes`): each frame the file holds is kept
/// once, and each stack is a run of indices into them, so a file's frames take memory once
/// however many stacks name them.
pub(crate) struct Stacks {
    table: Arc<FrameTable>,
    stacks: Box<[Stack]>,
    /// Each stack's `frames()` and `machinery()` as slices, made the first time one is asked
    /// for (the index runs are all the rest of the library reads).
    windows: OnceLock<Box<[Window]>>,
}

/// Frames and the index runs of a loaded file's stacks into them.
pub(crate) struct FrameTable {
    frames: Box<[Frame]>,
    indices: Box<[u32]>,
}

/// One stack of [`Stacks`]: `table.indices[start..start + len]`, or the one `<unknown>` frame
/// when `len` is 0.
#[derive(Clone, Copy)]
pub(crate) struct Stack {
    start: usize,
    len: u32,
    call_site: u32,
    total_nframe: u32,
    /// At most [`MAX_FRAMES`](crate::MAX_FRAMES).
    limit: u16,
    truncated: bool,
}

#[derive(Default)]
struct Window {
    shown: OnceLock<Box<[Frame]>>,
    machinery: OnceLock<Box<[Frame]>>,
}

impl FrameTable {
    /// The frames of stack `frames[start..start + len]` (`len` 0: the `<unknown>` frame).
    fn seq<'a>(frames: &'a [Frame], indices: &'a [u32], start: usize, len: u32) -> Seq<'a> {
        if len == 0 {
            return Seq::Slice(std::slice::from_ref(Frame::unknown()));
        }
        Seq::Indexed(frames, &indices[start..start + len as usize])
    }
}

impl Stack {
    /// The stack `indices[start..]` (every index below `frames.len()`; none: a stack that
    /// could not be captured) with its call site (below the number of frames, or 0) and limit
    /// (in `1..=MAX_FRAMES`), as a file gives them.
    pub(crate) fn new(
        frames: &[Frame],
        indices: &[u32],
        start: usize,
        call_site: u32,
        limit: u32,
        truncated: bool,
    ) -> Stack {
        let len = (indices.len() - start) as u32;
        let all = FrameTable::seq(frames, indices, start, len);
        let g = Geometry::new(all, call_site as usize, limit as usize, truncated);
        Stack {
            start,
            len,
            call_site: g.call_site as u32,
            total_nframe: g.total_nframe as u32,
            limit: g.limit.min(crate::tracer::MAX_FRAMES) as u16,
            truncated,
        }
    }

    fn geometry(&self) -> Geometry {
        Geometry {
            call_site: self.call_site as usize,
            limit: self.limit as usize,
            total_nframe: self.total_nframe as usize,
            truncated: self.truncated,
        }
    }
}

impl Stacks {
    /// The stacks of a loaded file; each `Stack` made by [`Stack::new`] from these frames and
    /// indices.
    pub(crate) fn new(frames: Vec<Frame>, indices: Vec<u32>, stacks: Vec<Stack>) -> Arc<Stacks> {
        Arc::new(Stacks {
            table: Arc::new(FrameTable {
                frames: frames.into_boxed_slice(),
                indices: indices.into_boxed_slice(),
            }),
            stacks: stacks.into_boxed_slice(),
            windows: OnceLock::new(),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.stacks.len()
    }

    fn all(&self, stack: &Stack) -> Seq<'_> {
        FrameTable::seq(
            &self.table.frames,
            &self.table.indices,
            stack.start,
            stack.len,
        )
    }

    /// The frames of stack `i` in `range` of its frames, as a slice made once.
    fn window(&self, i: u32, machinery: bool) -> &[Frame] {
        // Made on first use and kept with the snapshot: its memory, not the program's, so not
        // traced (the caller's line would own it, as a block that a later snapshot shows).
        let windows = self.windows.get_or_init(|| {
            let _quiet = crate::guard::Guard::enter();
            (0..self.stacks.len()).map(|_| Window::default()).collect()
        });
        let window = &windows[i as usize];
        let (cell, range) = {
            let stack = &self.stacks[i as usize];
            let g = stack.geometry();
            if machinery {
                (&window.machinery, 0..g.call_site)
            } else {
                (&window.shown, g.call_site..g.end())
            }
        };
        cell.get_or_init(|| {
            let _quiet = crate::guard::Guard::enter();
            let stack = &self.stacks[i as usize];
            self.all(stack).sub(range).to_vec().into_boxed_slice()
        })
    }
}

/// Which stack a traceback is, for tables keyed by stack (two tracebacks of one identity are
/// equal; equal ones may have different identities).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Identity(usize, u32);

#[derive(Clone)]
enum Repr {
    Owned(Arc<Data>),
    /// Stack `.1` of a loaded file's stacks.
    Loaded(Arc<Stacks>, u32),
}

/// A stack, most recent call first: `frames()[0]` is the call site, the innermost frame in the
/// program's own code (allocator and standard-library frames are trimmed, and stay reachable
/// through [`Traceback::machinery`]). Cheap to clone.
#[derive(Clone)]
pub struct Traceback(Repr);

impl Traceback {
    pub(crate) fn new(all: Vec<Frame>, call_site: usize, limit: usize, truncated: bool) -> Self {
        let mut all = all;
        if all.is_empty() {
            all.push(Frame::unknown().clone());
        }
        let geometry = Geometry::new(Seq::Slice(&all), call_site, limit, truncated);
        Traceback(Repr::Owned(Arc::new(Data { all, geometry })))
    }

    /// Stack `i` of a loaded file's stacks.
    pub(crate) fn loaded(stacks: &Arc<Stacks>, i: usize) -> Self {
        debug_assert!(i < stacks.len());
        Traceback(Repr::Loaded(Arc::clone(stacks), i as u32))
    }

    /// Every frame and where the call site and the limit put the frames shown.
    fn view(&self) -> (Seq<'_>, Geometry) {
        match &self.0 {
            Repr::Owned(d) => (Seq::Slice(&d.all), d.geometry),
            Repr::Loaded(s, i) => {
                let stack = &s.stacks[*i as usize];
                (s.all(stack), stack.geometry())
            }
        }
    }

    /// The same stack with its call site chosen by `attribution`.
    pub(crate) fn attributed(&self, attribution: Attribution) -> Traceback {
        let site = crate::stack::symbolize::call_site_of(self.all(), attribution);
        self.with_call_site(site)
    }

    /// The same stack with the call site moved `outward` frames towards the root (at most to
    /// the outermost frame), keeping the limit.
    pub(crate) fn moved_outward(&self, outward: usize) -> Traceback {
        let (_, g) = self.view();
        self.with_call_site(g.call_site + outward)
    }

    /// The same stack with the call site at `site` (at most the outermost frame).
    fn with_call_site(&self, site: usize) -> Traceback {
        match &self.0 {
            Repr::Owned(d) => {
                let g = d.geometry;
                Traceback::new(d.all.clone(), site, g.limit, g.truncated)
            }
            Repr::Loaded(s, i) => {
                let stack = &s.stacks[*i as usize];
                if stack.call_site as usize == site {
                    return self.clone();
                }
                // The frames stay shared: only the one stack is new.
                let g = Geometry::new(s.all(stack), site, stack.limit as usize, stack.truncated);
                let moved = Stack {
                    call_site: g.call_site as u32,
                    total_nframe: g.total_nframe as u32,
                    ..*stack
                };
                let stacks = Arc::new(Stacks {
                    table: Arc::clone(&s.table),
                    stacks: Box::new([moved]),
                    windows: OnceLock::new(),
                });
                Traceback(Repr::Loaded(stacks, 0))
            }
        }
    }

    /// Every frame, innermost first: `machinery()` then the frames from the call site, all of
    /// them (not only those kept by the limit).
    pub(crate) fn all(&self) -> Seq<'_> {
        self.view().0
    }

    /// The frames kept, as [`frames`](Self::frames), without making a slice of them.
    pub(crate) fn shown(&self) -> Seq<'_> {
        let (all, g) = self.view();
        all.sub(g.call_site..g.end())
    }

    pub(crate) fn parts(&self) -> (usize, usize, bool) {
        let (_, g) = self.view();
        (g.call_site, g.limit, g.truncated)
    }

    /// Which stack this is: clones share it.
    pub(crate) fn identity(&self) -> Identity {
        match &self.0 {
            Repr::Owned(d) => Identity(Arc::as_ptr(d) as usize, 0),
            Repr::Loaded(s, i) => Identity(Arc::as_ptr(s) as usize, *i),
        }
    }

    /// A traceback of exactly these frames (used for grouped statistics).
    pub(crate) fn from_frames(frames: Vec<Frame>) -> Self {
        let n = frames.len().max(1);
        Traceback::new(frames, 0, n, false)
    }

    /// The frames kept, call site first, at most the traceback limit. A snapshot loaded from a
    /// file keeps each of its frames once; the slice is made the first time it is asked for.
    pub fn frames(&self) -> &[Frame] {
        match &self.0 {
            Repr::Owned(d) => &d.all[d.geometry.call_site..d.geometry.end()],
            Repr::Loaded(s, i) => s.window(*i, false),
        }
    }

    /// Whether any frame, the machinery included, has `needle` in its function name or file
    /// path: for filters such as a leak check's (`|tb| !tb.mentions("tokio::runtime")`).
    pub fn mentions(&self, needle: &str) -> bool {
        self.machinery()
            .iter()
            .chain(self.frames())
            .any(|f| f.function.contains(needle) || f.path.contains(needle))
    }

    /// The call site: the innermost frame in the program's own code.
    pub fn call_site(&self) -> &Frame {
        let (all, g) = self.view();
        all.get(g.call_site)
    }

    /// The frames trimmed before the call site (allocator shims, `alloc::raw_vec`, ...),
    /// innermost first. Made on first use for a loaded snapshot, as [`frames`](Self::frames).
    pub fn machinery(&self) -> &[Frame] {
        match &self.0 {
            Repr::Owned(d) => &d.all[..d.geometry.call_site],
            Repr::Loaded(s, i) => s.window(*i, true),
        }
    }

    /// How many frames the stack had from the call site outward to the program's `main` (or
    /// its thread's entry), before the traceback limit was applied (a lower bound when the
    /// capture itself was cut short).
    pub fn total_nframe(&self) -> usize {
        self.view().1.total_nframe
    }

    /// Whether frames were cut: by the traceback limit ([`frames`](Self::frames) is shorter
    /// than [`total_nframe`](Self::total_nframe)) or because the raw capture stopped before
    /// the outermost frame.
    pub fn is_truncated(&self) -> bool {
        let (_, g) = self.view();
        g.truncated || g.end() - g.call_site < g.total_nframe
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
        let (all, g) = self.view();
        all.sub(0..g.call_site)
            .iter()
            .rev()
            .find(|f| of_frame(f) == Kind::Dependency)
    }

    /// The crate whose code made the allocation: the innermost frame that is neither the
    /// toolchain's nor tracealloc's (`serde_json 1.0.154`, `app`), or `std` (`alloc`, ...) for
    /// the toolchain's own allocations.
    pub fn crate_name(&self) -> String {
        use crate::stack::origin::{crate_of, of_frame, Kind};
        let (all, g) = self.view();
        let site = g.call_site;
        // The call site is the program's when a dependency is inside it: the innermost of the
        // two is the crate that allocated.
        let (frame, kind) = all
            .sub(0..site + 1)
            .iter()
            .map(|f| (f, of_frame(f)))
            .find(|(_, k)| matches!(k, Kind::Own | Kind::Dependency))
            .unwrap_or_else(|| {
                let f = all.get(site);
                (f, of_frame(f))
            });
        crate_of(frame, kind).to_string()
    }

    /// tracemalloc's `Traceback.format`: two lines a frame, `  File "f", line n, in function`
    /// and the source line when the file is readable. `limit` keeps that many frames (from the
    /// call site when positive, from the outermost when negative, all when `None`);
    /// `most_recent_first` puts the call site on top.
    pub fn format(&self, limit: Option<isize>, most_recent_first: bool) -> Vec<String> {
        let frames = self.shown();
        let n = frames.len();
        let chosen = match limit {
            None => frames,
            Some(l) if l >= 0 => frames.sub(0..(l as usize).min(n)),
            Some(l) => frames.sub(n - l.unsigned_abs().min(n)..n),
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

/// Equal stacks: the same frames, call site, limit and truncation, however they are kept.
impl PartialEq for Traceback {
    fn eq(&self, other: &Self) -> bool {
        if self.identity() == other.identity() {
            return true;
        }
        let ((a, ga), (b, gb)) = (self.view(), other.view());
        (ga.call_site, ga.limit, ga.truncated) == (gb.call_site, gb.limit, gb.truncated) && a == b
    }
}

impl Eq for Traceback {}

impl std::hash::Hash for Traceback {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (all, g) = self.view();
        (g.call_site, g.limit, g.truncated).hash(state);
        all.hash(state);
    }
}

/// A traceback compared and hashed by the frames it shows (what [`Traceback::frames`] gives),
/// as groups and diffs key their stacks, without copying the frames out.
#[derive(Clone, Debug)]
pub(crate) struct ByShown(pub(crate) Traceback);

impl PartialEq for ByShown {
    fn eq(&self, other: &Self) -> bool {
        self.0.identity() == other.0.identity() || self.0.shown() == other.0.shown()
    }
}

impl Eq for ByShown {}

impl std::hash::Hash for ByShown {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.shown().hash(state);
    }
}

impl fmt::Debug for Traceback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (all, g) = self.view();
        f.debug_struct("Traceback")
            .field("all", &all)
            .field("call_site", &g.call_site)
            .field("limit", &g.limit)
            .field("total_nframe", &g.total_nframe)
            .field("truncated", &g.truncated)
            .finish()
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{BuildHasher, RandomState};

    fn frame(function: &str, line: u32) -> Frame {
        Frame::new("src/main.rs".into(), line, function.into())
    }

    /// A loaded file's stacks: `table` once, each stack (indices into it, call site, limit).
    fn loaded(table: &[Frame], stacks: &[(&[u32], u32, u32)]) -> Arc<Stacks> {
        let mut indices = Vec::new();
        let mut made = Vec::new();
        for &(ids, call_site, limit) in stacks {
            let start = indices.len();
            indices.extend_from_slice(ids);
            made.push(Stack::new(table, &indices, start, call_site, limit, false));
        }
        Stacks::new(table.to_vec(), indices, made)
    }

    #[test]
    fn a_loaded_stack_reads_as_one_with_frames_of_its_own() {
        let table = [
            frame("alloc::raw_vec::finish_grow", 1),
            frame("app::parse", 10),
            frame("app::load", 20),
            frame("app::main", 30),
        ];
        let stacks = loaded(&table, &[(&[0, 1, 2, 1, 3], 1, 3)]);
        let t = Traceback::loaded(&stacks, 0);
        let own: Vec<Frame> = [0, 1, 2, 1, 3].map(|i| table[i].clone()).to_vec();
        let owned = Traceback::new(own.clone(), 1, 3, false);
        assert_eq!(t, owned);
        let h = RandomState::new();
        assert_eq!(h.hash_one(&t), h.hash_one(&owned));
        assert_eq!(t.frames(), &own[1..4]);
        assert_eq!(t.machinery(), &own[..1]);
        assert_eq!(t.call_site().lineno, 10);
        assert_eq!((t.total_nframe(), t.is_truncated()), (4, true));
        assert_eq!(t.format(None, true), owned.format(None, true));
        // Made once, then the same slice.
        assert!(std::ptr::eq(t.frames(), t.frames()));
        assert_eq!(t.moved_outward(2), owned.moved_outward(2));
        assert_eq!(t.moved_outward(1).call_site().lineno, 20);
        assert_eq!(t.moved_outward(2).call_site().lineno, 10);
        assert_eq!(t.moved_outward(9).call_site().lineno, 30);
        assert_ne!(t, t.moved_outward(1));
    }

    #[test]
    fn a_loaded_stack_without_frames_is_the_unknown_frame() {
        let stacks = loaded(&[], &[(&[], 0, 16), (&[], 0, 16)]);
        let (a, b) = (Traceback::loaded(&stacks, 0), Traceback::loaded(&stacks, 1));
        assert_eq!(a, Traceback::new(Vec::new(), 0, 16, false));
        assert_eq!(a.call_site().to_string(), "<unknown>:0");
        // Equal, yet two stacks.
        assert_eq!(a, b);
        assert_ne!(a.identity(), b.identity());
        assert_eq!(a.identity(), a.clone().identity());
        // One frame value for all of them.
        assert!(std::ptr::eq(a.call_site(), b.call_site()));
    }

    #[test]
    fn grouping_keys_compare_the_frames_shown() {
        let table = [
            frame("alloc::x", 1),
            frame("alloc::y", 2),
            frame("app::f", 3),
        ];
        let stacks = loaded(&table, &[(&[0, 2], 1, 16), (&[1, 2], 1, 16), (&[2], 0, 16)]);
        let [a, b, c] = [0, 1, 2].map(|i| ByShown(Traceback::loaded(&stacks, i)));
        // Different machinery, the same frames shown.
        assert_ne!(a.0, b.0);
        assert_eq!(a, b);
        assert_eq!(a, c);
        let h = RandomState::new();
        assert_eq!(h.hash_one(&a), h.hash_one(&c));
        assert_eq!(a.0.shown(), Seq::Slice(std::slice::from_ref(&table[2])));
        // Frames order by file, then line: `alloc::x` (line 1) before `app::f` (line 3).
        assert!(a.0.all() < c.0.all());
    }

    /// The runtime's start-up frames below `main`, named as v0 mangling names them, in a build
    /// without debug info (the names alone decide): they take no room in the limit.
    #[test]
    fn start_up_frames_in_v0_names_are_scaffolding() {
        let bare = |name: &str| Frame::new("<unknown>".into(), 0, name.into());
        let frames = vec![
            bare("app::build"),
            bare("app::main"),
            bare("<fn() as core::ops::function::FnOnce<()>>::call_once"),
            bare("std::sys::backtrace::__rust_begin_short_backtrace::<fn(), ()>"),
            bare("std::rt::lang_start::<()>::{closure#0}"),
            bare("std::rt::lang_start_internal"),
            bare("std::rt::lang_start::<()>"),
            bare("main"),
            bare("__libc_start_call_main"),
            bare("_start"),
        ];
        let t = Traceback::new(frames, 0, 16, false);
        assert_eq!(t.total_nframe(), 2);
        assert_eq!(t.frames().len(), 2);
        let thread = vec![
            bare("app::work::{closure#0}"),
            bare("<app::work::{closure#0} as core::ops::function::FnOnce<()>>::call_once"),
            bare("std::thread::lifecycle::spawn_unchecked::<app::work::{closure#0}, ()>::{closure#1}::{closure#0}"),
            bare("<std::thread::lifecycle::spawn_unchecked<app::work::{closure#0}, ()>::{closure#1} as core::ops::function::FnOnce<()>>::call_once::{shim:vtable#0}"),
            bare("<std::sys::thread::unix::Thread>::new::thread_start"),
            bare("start_thread"),
            bare("clone3"),
        ];
        assert_eq!(Traceback::new(thread, 0, 16, false).total_nframe(), 1);
    }

    #[test]
    fn seq_iterates_both_ways() {
        let table = [frame("a", 1), frame("b", 2), frame("c", 3)];
        let seq = Seq::Indexed(&table, &[2, 0, 1, 0]);
        let lines = |it: &mut dyn Iterator<Item = &Frame>| it.map(|f| f.lineno).collect::<Vec<_>>();
        assert_eq!(lines(&mut seq.iter()), [3, 1, 2, 1]);
        assert_eq!(lines(&mut seq.iter().rev()), [1, 2, 1, 3]);
        assert_eq!(lines(&mut seq.sub(1..3).iter()), [1, 2]);
        assert_eq!(seq.iter().len(), 4);
        let mut it = seq.iter();
        it.next();
        it.next_back();
        assert_eq!(lines(&mut it), [1, 2]);
        assert_eq!(seq.to_vec().len(), 4);
        assert_eq!(seq.sub(1..3), Seq::Slice(&table[..2]));
    }
}
