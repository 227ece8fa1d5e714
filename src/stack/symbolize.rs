//! Symbolization (cold path, snapshot time only) and the choice of the call site.
//!
//! Each distinct return address is resolved once per process and cached. `ip - 1` is resolved,
//! so the line is the call's line, not the next one. An address inside inlined code expands
//! into several frames, innermost first.

use crate::snapshot::Frame;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What a frame is, for choosing the call site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The program's own code or a dependency's: a candidate call site.
    User,
    /// The Rust toolchain's library sources (std, alloc, core and std's private deps).
    Toolchain,
    /// Compiler-generated allocator shims (`__rust_alloc`, `__rg_alloc`, ...). They resolve to
    /// the line of the user's `#[global_allocator]` static, so they are told apart by name.
    Shim,
    /// `Tracer`'s `GlobalAlloc` methods: where the allocator machinery begins.
    TracerEntry,
    /// tracealloc's own code, and the unwinder's.
    Internal,
    /// The C runtime around the program: the compiler-made `main` (no line information),
    /// `__libc_start_call_main`, `_start`, `start_thread`, `clone`.
    Runtime,
}

/// tracealloc's sources, as they appear in its own debug information. Inlined frames carry
/// short names (`record`, `capture`), so the path is what identifies them.
const OWN_SOURCES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/");

#[derive(Clone, Debug)]
pub(crate) struct SymFrame {
    pub(crate) frame: Frame,
    pub(crate) kind: Kind,
    pub(crate) has_line: bool,
}

type Cache = HashMap<usize, Arc<[SymFrame]>>;

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Resolves every address of `addresses` (deduplicated by the caller or not) into `out`.
/// Call with the reentrancy guard held.
pub(crate) fn resolve_all(addresses: &[usize]) -> HashMap<usize, Arc<[SymFrame]>> {
    let mut out = HashMap::with_capacity(addresses.len());
    let mut missing = Vec::new();
    {
        let cached = cache().lock().unwrap_or_else(|p| p.into_inner());
        for &ip in addresses {
            match cached.get(&ip) {
                Some(frames) => {
                    out.insert(ip, Arc::clone(frames));
                }
                None => missing.push(ip),
            }
        }
    }
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        return out;
    }
    let base = current_dir_prefix();
    let resolved: Vec<(usize, Arc<[SymFrame]>)> = missing
        .into_iter()
        .map(|ip| (ip, resolve_one(ip, &base)))
        .collect();
    let mut cached = cache().lock().unwrap_or_else(|p| p.into_inner());
    for (ip, frames) in resolved {
        cached.insert(ip, Arc::clone(&frames));
        out.insert(ip, frames);
    }
    out
}

fn current_dir_prefix() -> String {
    std::env::current_dir()
        .ok()
        .and_then(|d| d.to_str().map(|s| format!("{}/", s.trim_end_matches('/'))))
        .unwrap_or_default()
}

fn resolve_one(ip: usize, base: &str) -> Arc<[SymFrame]> {
    let mut frames = Vec::new();
    // A return address points after the call; the call itself is one byte before.
    let lookup = ip.saturating_sub(1);
    backtrace::resolve(lookup as *mut std::ffi::c_void, |symbol| {
        let function = symbol
            .name()
            .map(|n| format!("{n:#}"))
            .unwrap_or_else(|| format!("{ip:#x}"));
        let path = symbol
            .filename()
            .and_then(|p| p.to_str())
            .map(str::to_owned);
        let lineno = symbol.lineno();
        let kind = classify(&function, path.as_deref());
        let has_line = path.is_some() && lineno.is_some();
        let (filename, path) = match path {
            // The path as the debug information gives it stays in `path` (and decides the
            // kind: glibc's relative `./csu/../` paths mark C runtime code); the name shown is
            // normalized and made relative to the working directory.
            Some(p) => (shorten(&normalize(&p), base), p),
            None => ("<unknown>".to_owned(), "<unknown>".to_owned()),
        };
        frames.push(SymFrame {
            frame: Frame::with_path(filename, path, lineno.unwrap_or(0), function),
            kind,
            has_line,
        });
    });
    if frames.is_empty() {
        frames.push(SymFrame {
            frame: Frame::new("<unknown>".to_owned(), 0, format!("{ip:#x}")),
            kind: Kind::User,
            has_line: false,
        });
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

fn shorten(path: &str, base: &str) -> String {
    match path.strip_prefix(base) {
        Some(rest) if !base.is_empty() => rest.to_owned(),
        _ => path.to_owned(),
    }
}

pub(crate) fn classify(function: &str, path: Option<&str>) -> Kind {
    let last_segment = function.rsplit("::").next().unwrap_or(function);
    if matches!(
        last_segment,
        "__rust_alloc"
            | "__rust_dealloc"
            | "__rust_realloc"
            | "__rust_alloc_zeroed"
            | "__rust_alloc_error_handler"
    ) || last_segment.starts_with("__rg_")
        || last_segment.starts_with("__rdl_")
    {
        return Kind::Shim;
    }
    if function.starts_with("<tracealloc::")
        && function.contains(" as core::alloc::global::GlobalAlloc>::")
    {
        return Kind::TracerEntry;
    }
    if function.starts_with("tracealloc::")
        || function.starts_with("<tracealloc::")
        || function.starts_with("backtrace::")
        || function.starts_with("<backtrace::")
        || function.starts_with("_Unwind_")
    {
        return Kind::Internal;
    }
    if is_c_runtime(function, path) {
        return Kind::Runtime;
    }
    if let Some(path) = path {
        if path.starts_with(OWN_SOURCES) {
            return Kind::Internal;
        }
        if is_toolchain_path(path) {
            return Kind::Toolchain;
        }
    } else if is_toolchain_symbol(function) {
        // Some precompiled std functions have no line information; their names still tell.
        return Kind::Toolchain;
    }
    Kind::User
}

/// glibc and friends: C symbols (no `::`) without a path or with the relative paths of a
/// distribution's build (`./csu/…`, `../sysdeps/…`), and the compiler-made C `main`.
fn is_c_runtime(function: &str, path: Option<&str>) -> bool {
    if function.contains("::") {
        return false;
    }
    match path {
        None => matches!(
            function,
            "main"
                | "__libc_start_call_main"
                | "__libc_start_main"
                | "__libc_start_main_impl"
                | "_start"
                | "start_thread"
                | "clone"
                | "clone3"
        ),
        Some(path) => path.starts_with("./") || path.starts_with("../"),
    }
}

fn is_toolchain_path(path: &str) -> bool {
    (path.starts_with("/rustc/") && path.contains("/library/")) || path.starts_with("/rust/deps/")
}

/// `alloc::…`, `<alloc::…>::f`, `<i32 as alloc::string::SpecToString>::f`, and core, std.
fn is_toolchain_symbol(function: &str) -> bool {
    const CRATES: [&str; 3] = ["alloc::", "core::", "std::"];
    let first = function.trim_start_matches('<');
    CRATES.iter().any(|c| first.starts_with(c))
        || (function.starts_with('<')
            && CRATES
                .iter()
                .any(|c| function.contains(&format!(" as {c}"))))
}

/// Whether a symbolized frame is the program's own code (not tracealloc's, not the
/// toolchain's, not the C runtime's).
pub(crate) fn is_user_frame(frame: &Frame) -> bool {
    let path = (&*frame.path != "<unknown>").then_some(&*frame.path);
    classify(&frame.function, path) == Kind::User
}

/// Index of the call site in `frames` (innermost first): the first frame, past the allocator
/// entry, that is neither allocator machinery nor the toolchain's library code.
///
/// The capture starts inside tracealloc (frames of the unwinder may come first); the allocator
/// entry is the end of the first run of tracealloc / `GlobalAlloc` / shim frames. Names are not
/// enough to find it: inlined frames carry short names, and in optimized builds without frame
/// pointers the shim may leave no frame at all.
pub(crate) fn call_site(frames: &[SymFrame]) -> usize {
    let is_machinery =
        |f: &SymFrame| matches!(f.kind, Kind::Internal | Kind::TracerEntry | Kind::Shim);
    let skip_from = match frames.iter().position(is_machinery) {
        Some(first) => {
            first
                + frames[first..]
                    .iter()
                    .take_while(|f| is_machinery(f))
                    .count()
        }
        None => 0,
    };
    let beyond = frames[skip_from..]
        .iter()
        .position(|f| f.kind == Kind::User)
        .map(|i| i + skip_from);
    match beyond {
        Some(i) => i,
        // Only machinery and std (e.g. the runtime's own start-up allocations): show the
        // innermost std frame that is not generic allocation code, rather than nothing.
        None => {
            let past = &frames[skip_from..];
            past.iter()
                .position(|f| {
                    f.kind == Kind::Toolchain
                        && !f.frame.filename.contains("/library/alloc/")
                        && !f.frame.filename.contains("/library/core/")
                })
                .or_else(|| past.iter().position(|f| f.kind == Kind::Toolchain))
                .map_or(frames.len().saturating_sub(1), |i| i + skip_from)
        }
    }
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
            frame: Frame::new(path.to_owned(), 1, function.to_owned()),
            kind: classify(function, path_opt),
            has_line: true,
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
        assert_eq!(classify("app::parse", Some("src/parse.rs")), Kind::User);
        assert_eq!(
            classify("<alloc::raw_vec::RawVecInner>::try_allocate_in", None),
            Kind::Toolchain
        );
        assert_eq!(
            classify("<i32 as alloc::string::SpecToString>::spec_to_string", None),
            Kind::Toolchain
        );
        assert_eq!(classify("app::no_debug_info", None), Kind::User);
        assert_eq!(classify("main", None), Kind::Runtime);
        assert_eq!(classify("app::clone", Some("src/lib.rs")), Kind::User);
        assert_eq!(classify("clone3", None), Kind::Runtime);
        assert_eq!(
            classify("dl_iterate_phdr", Some("./elf/dl-iteratephdr.c")),
            Kind::Runtime
        );
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
        assert_eq!(call_site(&frames), 5);
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
        assert_eq!(call_site(&std_only), 2);
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
        assert_eq!(call_site(&inlined_tracer), 2);
    }
}
