//! Symbolization (cold path, snapshot time only) and the choice of the call site.
//!
//! Each distinct return address is resolved once and cached, for as long as the object that
//! holds it stays loaded: when glibc's load and unload counters move, the entries whose address
//! is now in another object (or in none) are dropped (see [`super::objects`]). `ip - 1` is
//! resolved, so the line is the call's line, not the next one. An address inside inlined code
//! expands into several frames, innermost first.
//!
//! Addresses are resolved by the `backtrace` crate in the objects it lists as they are loaded
//! now (it lists them once per process), and read from the object's file otherwise (see
//! [`super::elf`]): a plugin loaded after the first symbolization, or loaded where another one
//! was unloaded. A raw return address does not say which object it was captured in: an address
//! in no loaded object, where one was seen before, reads `<unloaded module>`; one where another
//! object has been loaded since reads as that object's code.

use crate::snapshot::{Attribution, Frame, Seq};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use super::objects::{Objects, Place};
pub(crate) use super::origin::Kind;
use super::origin::{classify, display_path};

#[derive(Clone, Debug)]
pub(crate) struct SymFrame {
    pub(crate) frame: Frame,
    pub(crate) kind: Kind,
}

/// One frame as a resolver gives it, before classification: function, source path, line
/// (0 when unknown).
type RawFrame = (Option<String>, Option<String>, u32);

/// The function name of a frame in an object unloaded since the address was captured.
const UNLOADED: &str = "<unloaded module>";

#[derive(Debug)]
struct Cached {
    /// Where the address was when it was resolved; the entry is dropped when that changes.
    place: Place,
    frames: Arc<[SymFrame]>,
}

/// Everything symbolization keeps, behind one lock held for a whole [`resolve_all`] (the
/// `backtrace` crate serializes resolution behind its own lock anyway).
#[derive(Debug, Default)]
struct State {
    objects: Objects,
    /// The objects the `backtrace` crate can resolve, by id; decided at the first read of the
    /// objects (see [`State::trusted_objects`]).
    trusted: Option<Vec<u64>>,
    cache: HashMap<usize, Cached>,
    #[cfg(target_os = "linux")]
    files: super::elf::Resolver,
    /// Whether a shared object's own file holds DWARF, by id (see [`State::raw_frames`]).
    #[cfg(target_os = "linux")]
    own_dwarf: HashMap<u64, bool>,
    /// The executable's DWARF, read unit by unit (see [`super::unitwise`]).
    #[cfg(target_os = "linux")]
    executable: super::unitwise::Executable,
    /// Whether `executable` answers for this batch; if not, the `backtrace` crate does.
    #[cfg(target_os = "linux")]
    executable_ready: bool,
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| Mutex::new(State::default()))
}

/// The address looked up for a return address: the call instruction, one byte before.
fn call_of(ip: usize) -> usize {
    ip.saturating_sub(1)
}

/// Resolves every address of `addresses` (deduplicated by the caller or not) into `out`.
/// Call with the reentrancy guard held.
pub(crate) fn resolve_all(addresses: &[usize]) -> HashMap<usize, Arc<[SymFrame]>> {
    let mut state = state().lock().unwrap_or_else(|p| p.into_inner());
    state.refresh();
    let mut out = HashMap::with_capacity(addresses.len());
    let mut missing = Vec::new();
    for &ip in addresses {
        match state.cache.get(&ip) {
            Some(cached) => {
                out.insert(ip, Arc::clone(&cached.frames));
            }
            None => missing.push(ip),
        }
    }
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return out;
    }
    #[cfg(target_os = "linux")]
    state.prepare_executable(&missing);
    let base = current_dir_prefix();
    for ip in missing {
        let place = state.objects.place(call_of(ip));
        let frames = symbolized(ip, state.raw_frames(ip, place), &base);
        state.cache.insert(
            ip,
            Cached {
                place,
                frames: Arc::clone(&frames),
            },
        );
        out.insert(ip, frames);
    }
    out
}

impl State {
    /// Reads the units of the executable's DWARF that hold the addresses of `ips` in it.
    #[cfg(target_os = "linux")]
    fn prepare_executable(&mut self, ips: &[usize]) {
        let Some(main) = self.objects.list().iter().find(|o| o.main) else {
            self.executable_ready = false;
            return;
        };
        let svmas: Vec<u64> = ips
            .iter()
            .map(|&ip| call_of(ip))
            .filter(|&a| self.objects.find(a).is_some_and(|o| o.id == main.id))
            .map(|a| a.wrapping_sub(main.bias) as u64)
            .collect();
        if svmas.is_empty() {
            self.executable_ready = false;
            return;
        }
        self.executable_ready = self.executable.prepare(main, &svmas);
    }

    /// Reads the loaded objects again if any was loaded or unloaded since the last read, and
    /// forgets what was resolved in objects no longer where they were.
    fn refresh(&mut self) {
        if !self.objects.refresh() {
            return;
        }
        if self.trusted.is_none() {
            self.trusted = Some(self.trusted_objects());
        }
        let objects = &self.objects;
        self.cache
            .retain(|&ip, cached| objects.place(call_of(ip)) == cached.place);
        #[cfg(target_os = "linux")]
        {
            self.files.retain(|id| objects.by_id(id).is_some());
            self.own_dwarf.retain(|&id, _| objects.by_id(id).is_some());
        }
    }

    /// The objects of the first read that the `backtrace` crate lists as they are. It lists
    /// the loaded objects once per process, at its first resolution (which may have been the
    /// program's own, earlier): made to happen now, it holds exactly the objects just read
    /// when no object was loaded or unloaded in between, and a subset of them when none was
    /// ever unloaded. Otherwise it may hold objects unloaded since, whose addresses others now
    /// occupy, and only the executable (never unloaded, always listed) is left to it.
    fn trusted_objects(&self) -> Vec<u64> {
        let read = self.objects.counters();
        // Resolving the null address resolves nothing, but makes the crate list the objects
        // if it has not yet.
        backtrace::resolve(std::ptr::null_mut(), |_| {});
        let unchanged = super::objects::counters() == read;
        let never_unloaded = read.is_some_and(|(_, unloads)| unloads == 0);
        self.objects
            .list()
            .iter()
            .filter(|o| o.main || (unchanged && never_unloaded))
            .map(|o| o.id)
            .collect()
    }

    /// The frames at return address `ip`, found at `place`.
    fn raw_frames(&mut self, ip: usize, place: Place) -> Vec<RawFrame> {
        match place {
            // No object holds it: any name the `backtrace` crate found would be a stale one.
            Place::Unloaded => vec![(Some(UNLOADED.to_owned()), None, 0)],
            Place::Nowhere => Vec::new(),
            // The loaded objects are not known on this platform.
            Place::Unlisted => by_backtrace(ip),
            Place::Object(id) => {
                #[allow(unused_mut)]
                let mut trusted = self.trusted.as_ref().is_some_and(|t| t.contains(&id));
                // A shared object whose DWARF is not in its own file (a system library whose
                // debug information a `-dbg` package installed apart) is named from its symbol
                // table: the `backtrace` crate would parse all of that file's DWARF, over
                // 30 MB for glibc's, for frames that are never the program's own code (the
                // C runtime below `main`, a C library calling back into Rust).
                #[cfg(target_os = "linux")]
                if trusted {
                    if let Some(object) = self.objects.by_id(id).filter(|o| !o.main) {
                        trusted = *self
                            .own_dwarf
                            .entry(id)
                            .or_insert_with(|| super::elf::has_own_dwarf(object));
                    }
                }
                #[cfg(target_os = "linux")]
                if self.executable_ready {
                    if let Some(main) = self.objects.by_id(id).filter(|o| o.main) {
                        let svma = call_of(ip).wrapping_sub(main.bias) as u64;
                        if let Some(frames) = self.executable.frames(svma) {
                            return frames;
                        }
                    }
                }
                #[allow(unused_mut)]
                let mut frames = if trusted {
                    by_backtrace(ip)
                } else {
                    Vec::new()
                };
                #[cfg(target_os = "linux")]
                if frames.is_empty() {
                    if let Some(object) = self.objects.by_id(id) {
                        frames = self.files.frames(object, call_of(ip));
                    }
                }
                frames
            }
        }
    }
}

fn current_dir_prefix() -> String {
    std::env::current_dir()
        .ok()
        .and_then(|d| d.to_str().map(|s| format!("{}/", s.trim_end_matches('/'))))
        .unwrap_or_default()
}

/// The frames the `backtrace` crate finds at return address `ip`.
pub(super) fn by_backtrace(ip: usize) -> Vec<RawFrame> {
    let mut frames = Vec::new();
    backtrace::resolve(call_of(ip) as *mut std::ffi::c_void, |symbol| {
        frames.push((
            symbol.name().map(|n| format!("{n:#}")),
            symbol
                .filename()
                .and_then(|p| p.to_str())
                .map(str::to_owned),
            symbol.lineno().unwrap_or(0),
        ));
    });
    frames
}

/// Classified frames of return address `ip` from what a resolver found there.
fn symbolized(ip: usize, raw: Vec<RawFrame>, base: &str) -> Arc<[SymFrame]> {
    let mut frames = Vec::with_capacity(raw.len().max(1));
    for (function, path, lineno) in raw {
        let function = function.unwrap_or_else(|| format!("{ip:#x}"));
        let kind = classify(&function, path.as_deref());
        let (filename, path) = match path {
            // The path as the debug information gives it stays in `path` (and decides the
            // kind: glibc's relative `./csu/../` paths mark C runtime code); the name shown is
            // normalized and made readable (see `origin::display_path`).
            Some(p) => (display_path(&normalize(&p), base), p),
            None => ("<unknown>".to_owned(), "<unknown>".to_owned()),
        };
        frames.push(SymFrame {
            frame: Frame::with_path(filename, path, lineno, function),
            kind,
        });
    }
    if frames.is_empty() {
        let function = format!("{ip:#x}");
        frames.push(SymFrame {
            kind: classify(&function, None),
            frame: Frame::new("<unknown>".to_owned(), 0, function),
        });
    }
    // Line 0 is code the compiler made (a drop, a moved value) that belongs to no line: it takes
    // the line of the nearest enclosing frame of the same file that has one.
    for i in 0..frames.len() {
        if frames[i].frame.lineno == 0 && &*frames[i].frame.path != "<unknown>" {
            let path = Arc::clone(&frames[i].frame.path);
            if let Some(line) = frames[i + 1..]
                .iter()
                .find(|f| f.frame.path == path && f.frame.lineno > 0)
                .map(|f| f.frame.lineno)
            {
                frames[i].frame.lineno = line;
            }
        }
    }
    // Innermost first: every frame but the last was inlined into the one after it.
    let last = frames.len() - 1;
    for f in &mut frames[..last] {
        f.frame.inlined = true;
    }
    frames.into()
}

/// `a/b/../c/./d.rs` → `a/c/d.rs`, lexically (debug information keeps paths as the compiler
/// was given them, `#[path = "../x.rs"]` modules included).
fn normalize(path: &str) -> String {
    if !path.contains("/.") {
        return path.to_owned();
    }
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|&p| p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Index of the call site in `frames` (innermost first, `kinds[i]` the kind of `frames[i]`):
/// past the allocator entry, the innermost frame of the program's own code; failing that (a
/// thread a pool started runs only a dependency's code), the innermost dependency frame; with
/// [`Attribution::Innermost`], the innermost frame of either. A stack of only machinery and
/// std (the runtime's own start-up allocations) gets its innermost std frame that is not
/// generic allocation code.
///
/// The capture starts inside tracealloc (frames of the unwinder may come first); the allocator
/// entry is the end of the first run of tracealloc / `GlobalAlloc` / shim frames. Names are not
/// enough to find it: inlined frames carry short names, and in optimized builds without frame
/// pointers the shim may leave no frame at all.
pub(crate) fn call_site(frames: Seq<'_>, kinds: &[Kind], attribution: Attribution) -> usize {
    debug_assert_eq!(frames.len(), kinds.len());
    let mut kinds = kinds.to_vec();
    super::origin::generated_callers(frames, &mut kinds);
    let kinds = &kinds[..];
    let is_machinery = |k: &Kind| matches!(k, Kind::Internal | Kind::TracerEntry | Kind::Shim);
    let skip_from = match kinds.iter().position(is_machinery) {
        Some(first) => {
            first
                + kinds[first..]
                    .iter()
                    .take_while(|k| is_machinery(k))
                    .count()
        }
        None => 0,
    };
    let past = &kinds[skip_from..];
    let own = past.iter().position(|k| *k == Kind::Own);
    let dependency = past.iter().position(|k| *k == Kind::Dependency);
    let chosen = match attribution {
        Attribution::OwnCode => own.or(dependency),
        Attribution::Innermost => match (own, dependency) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
    };
    if let Some(i) = chosen {
        return i + skip_from;
    }
    let generic = |i: usize| {
        let path = &frames.get(skip_from + i).path;
        path.contains("/library/alloc/") || path.contains("/library/core/")
    };
    (0..past.len())
        .find(|&i| past[i] == Kind::Toolchain && !generic(i))
        .or_else(|| past.iter().position(|k| *k == Kind::Toolchain))
        .map_or(frames.len().saturating_sub(1), |i| i + skip_from)
}

/// [`call_site`] of a traceback's frames, classifying them anew (a loaded snapshot, a switch
/// of attribution).
pub(crate) fn call_site_of(frames: Seq<'_>, attribution: Attribution) -> usize {
    let kinds: Vec<Kind> = frames.iter().map(super::origin::of_frame).collect();
    call_site(frames, &kinds, attribution)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized_lexically() {
        assert_eq!(
            normalize("src/bin/../../../../examples/shared/w.rs"),
            "../../examples/shared/w.rs"
        );
        assert_eq!(normalize("/a/b/../c/./d.rs"), "/a/c/d.rs");
        assert_eq!(normalize("/../x.rs"), "/x.rs");
        assert_eq!(normalize("src/main.rs"), "src/main.rs");
        assert_eq!(normalize("./src/.hidden/x.rs"), "src/.hidden/x.rs");
    }

    fn f(function: &str, path: &str) -> SymFrame {
        let path_opt = (!path.is_empty()).then_some(path);
        SymFrame {
            frame: Frame::with_path(path.to_owned(), path.to_owned(), 1, function.to_owned()),
            kind: classify(function, path_opt),
        }
    }

    #[test]
    fn classification() {
        assert_eq!(
            classify("__rustc::__rust_alloc", Some("src/main.rs")),
            Kind::Shim
        );
        assert_eq!(classify("__rust_realloc", None), Kind::Shim);
        assert_eq!(classify("__rg_alloc", Some("tests/x.rs")), Kind::Shim);
        assert_eq!(
            classify(
                "<tracealloc::tracer::Tracer<A> as core::alloc::global::GlobalAlloc>::alloc",
                None
            ),
            Kind::TracerEntry
        );
        assert_eq!(classify("tracealloc::tracer::record", None), Kind::Internal);
        assert_eq!(
            classify(
                "alloc::raw_vec::RawVec<T,A>::grow_one",
                Some("/rustc/abc/library/alloc/src/raw_vec.rs")
            ),
            Kind::Toolchain
        );
        assert_eq!(
            classify(
                "hashbrown::raw::x",
                Some("/rust/deps/hashbrown-0.15.2/src/raw.rs")
            ),
            Kind::Toolchain
        );
        assert_eq!(classify("app::parse", Some("src/parse.rs")), Kind::Own);
        assert_eq!(
            classify("<alloc::raw_vec::RawVecInner>::try_allocate_in", None),
            Kind::Toolchain
        );
        assert_eq!(
            classify("<i32 as alloc::string::SpecToString>::spec_to_string", None),
            Kind::Toolchain
        );
        // Without a path, a crate other than the main binary's (here `tracealloc`, the unit
        // test binary) is a dependency.
        assert_eq!(classify("app::no_debug_info", None), Kind::Dependency);
        assert_eq!(classify("main", None), Kind::Runtime);
        assert_eq!(classify("app::clone", Some("src/lib.rs")), Kind::Own);
        assert_eq!(classify("clone3", None), Kind::Runtime);
        // Symbol-table aliases of glibc functions, as a stripped libc names them.
        assert_eq!(classify("__GI___clone3", None), Kind::Runtime);
        assert_eq!(classify("__clone3", None), Kind::Runtime);
        assert_eq!(
            classify("__libc_start_main@GLIBC_2.2.5", None),
            Kind::Runtime
        );
        assert_eq!(classify("clone3@@GLIBC_2.34", None), Kind::Runtime);
        assert_eq!(
            classify("dl_iterate_phdr", Some("./elf/dl-iteratephdr.c")),
            Kind::Runtime
        );
    }

    fn split(frames: &[SymFrame]) -> (Vec<Frame>, Vec<Kind>) {
        frames.iter().map(|f| (f.frame.clone(), f.kind)).unzip()
    }

    fn site(frames: &[SymFrame]) -> usize {
        let (frames, kinds) = split(frames);
        call_site(Seq::Slice(&frames), &kinds, Attribution::OwnCode)
    }

    /// A `serde_json::from_str` into a struct with serde's derive, named as v0 mangling
    /// (nightly's default) names it: the derived code is the dependency's, at the `#[derive]`
    /// line (1 here, as every frame of `f`); the call site is the `from_str` line.
    #[test]
    fn call_site_of_a_derive_in_v0_names() {
        let reg = "/c/registry/src/i/serde_json-1.0.154/src";
        let mut frames = vec![
            f("__rustc::__rust_alloc", "src/main.rs"),
            f(
                "<alloc::raw_vec::RawVecInner>::finish_grow::<alloc::alloc::Global>",
                "/rustc/h/library/alloc/src/raw_vec.rs",
            ),
            f(
                "<serde_json::read::StrRead as serde_json::read::Read>::parse_str",
                &format!("{reg}/read.rs"),
            ),
            f(
                "<<app::Record as serde_core::de::Deserialize>::deserialize::__Visitor as serde_core::de::Visitor>::visit_map::<serde_json::de::MapAccess<serde_json::read::StrRead>>",
                "src/main.rs",
            ),
            f(
                "<&mut serde_json::de::Deserializer<serde_json::read::StrRead> as serde_core::de::Deserializer>::deserialize_struct::<<app::Record as serde_core::de::Deserialize>::deserialize::__Visitor>",
                &format!("{reg}/de.rs"),
            ),
            f(
                "<app::Record as serde_core::de::Deserialize>::deserialize::<&mut serde_json::de::Deserializer<serde_json::read::StrRead>>",
                "src/main.rs",
            ),
            f(
                "serde_json::de::from_str::<app::Record>",
                &format!("{reg}/de.rs"),
            ),
            f("app::load::{closure#0}", "src/main.rs"),
            f("app::main", "src/main.rs"),
        ];
        // The program's own lines differ from the derive's.
        for (i, line) in [(7, 30), (8, 40)] {
            frames[i].frame.lineno = line;
        }
        assert_eq!(site(&frames), 7);
        let (all, kinds) = split(&frames);
        assert_eq!(
            call_site(Seq::Slice(&all), &kinds, Attribution::Innermost),
            2
        );
        assert_eq!(call_site_of(Seq::Slice(&all), Attribution::OwnCode), 7);
    }

    #[test]
    fn call_site_skips_machinery_but_not_user_code_outside_it() {
        let frames = [
            f(
                "tracealloc::stack::capture::fp_walk",
                "/x/src/stack/capture.rs",
            ),
            f("tracealloc::tracer::record", "/x/src/tracer.rs"),
            f(
                "<tracealloc::Tracer<A> as core::alloc::global::GlobalAlloc>::alloc",
                "/x/src/tracer.rs",
            ),
            f("__rustc::__rust_alloc", "src/main.rs"),
            f(
                "alloc::raw_vec::finish_grow",
                "/rustc/h/library/alloc/src/raw_vec.rs",
            ),
            f("app::parse", "src/parse.rs"),
            f("tracealloc::testing::measure", "/x/src/testing.rs"),
            f("app::main", "src/main.rs"),
        ];
        assert_eq!(site(&frames), 5);
        let std_only = [
            f("__rust_alloc", "src/main.rs"),
            f("alloc::alloc::alloc", "/rustc/h/library/alloc/src/alloc.rs"),
            f("std::rt::init", "/rustc/h/library/std/src/rt.rs"),
            f("main", ""),
            f(
                "__libc_start_call_main",
                "./csu/../sysdeps/nptl/libc_start_call_main.h",
            ),
        ];
        assert_eq!(site(&std_only), 2);
        let inlined_tracer = [
            f(
                "capture",
                concat!(env!("CARGO_MANIFEST_DIR"), "/src/stack/capture.rs"),
            ),
            f(
                "record",
                concat!(env!("CARGO_MANIFEST_DIR"), "/src/tracer.rs"),
            ),
            f("bench::pair", "benches/hot_path.rs"),
        ];
        assert_eq!(site(&inlined_tracer), 2);
        let reg = "/c/registry/src/index-0/serde_json-1.0.154/src";
        let through_a_dependency = [
            f("__rust_alloc", "src/main.rs"),
            f(
                "alloc::raw_vec::finish_grow",
                "/rustc/h/library/alloc/src/raw_vec.rs",
            ),
            f("serde_json::read::parse_str", &format!("{reg}/read.rs")),
            f("serde_json::de::from_str", &format!("{reg}/de.rs")),
            f("app::load", "src/load.rs"),
            f("app::main", "src/main.rs"),
        ];
        assert_eq!(site(&through_a_dependency), 4);
        let (frames, kinds) = split(&through_a_dependency);
        assert_eq!(
            call_site(Seq::Slice(&frames), &kinds, Attribution::Innermost),
            2
        );
        let pool_thread = [
            f("__rust_alloc", "src/main.rs"),
            f(
                "rayon_core::registry::x",
                &format!("{reg}/../../rayon-core-1.12.1/src/registry.rs"),
            ),
            f(
                "std::thread::spawn",
                "/rustc/h/library/std/src/thread/mod.rs",
            ),
        ];
        assert_eq!(site(&pool_thread), 1);
    }
}
