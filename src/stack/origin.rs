//! Where a frame's code comes from (cold path): the program's own crates, a dependency, the Rust
//! toolchain, tracealloc, the C runtime. Decided from the source path the debug information
//! gives, and from the demangled symbol when there is no path or the path does not tell.
//!
//! Paths that mark the toolchain: `/rustc/<hash>/library/` and `/rust/deps/` (the prebuilt
//! std), any `…/lib/rustlib/src/rust/` (the `rust-src` component, which rustc uses for std code
//! inlined into the program when it is installed, and `-Zbuild-std`), and `…/rustc-<version>/
//! library/` (distributions' own builds). Paths that mark a dependency: Cargo's registry
//! (`…/registry/src/<index>/<name>-<version>/`), its git checkouts
//! (`…/git/checkouts/<repo>-<hash>/<rev>/`), vendored sources (`…/vendor/<name>[-<version>]/`)
//! and paths trimmed to `<name>-<version>/…` (Cargo's `trim-paths`). Everything else with a path
//! is the program's own code (workspace members and path dependencies).

use crate::snapshot::{Frame, Seq};
use std::sync::OnceLock;

/// What a frame is, for choosing the call site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The program's own crates: workspace members and path dependencies.
    Own,
    /// A crate the program depends on (registry, git checkout, vendored sources).
    Dependency,
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

/// The crates of the Rust toolchain's library.
const TOOLCHAIN_CRATES: [&str; 10] = [
    "alloc",
    "core",
    "std",
    "proc_macro",
    "test",
    "panic_unwind",
    "panic_abort",
    "std_detect",
    "compiler_builtins",
    "unwind",
];

/// The kind of a symbolized frame.
pub(crate) fn of_frame(frame: &Frame) -> Kind {
    classify(&frame.function, known_path(frame))
}

/// The frame's source path, `None` when the binary has no line information for it.
pub(crate) fn known_path(frame: &Frame) -> Option<&str> {
    (&*frame.path != "<unknown>").then_some(&*frame.path)
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
    match path {
        Some(path) => {
            if path.starts_with(OWN_SOURCES) {
                Kind::Internal
            } else if is_toolchain_path(path) || is_toolchain_symbol(function) {
                // By symbol too: std code whose path was remapped somewhere unrecognisable
                // still has std's names.
                Kind::Toolchain
            } else if dependency_of_path(path).is_some() || is_generated_impl(function) {
                Kind::Dependency
            } else {
                Kind::Own
            }
        }
        // No line information (a build without debug info): the symbol is all there is.
        None => {
            // `__rust_try` and other std intrinsics without a line.
            if is_toolchain_symbol(function) || function.starts_with("__rust_") {
                return Kind::Toolchain;
            }
            match (symbol_crate(function), main_crate()) {
                (Some(c), Some(main)) if c != main => Kind::Dependency,
                _ if is_generated_impl(function) => Kind::Dependency,
                _ => Kind::Own,
            }
        }
    }
}

/// Code a derive macro generated inside the program's crate: serde's `Deserialize` and
/// `Serialize` impls live in an anonymous `const _: () = { impl … }` block, whose symbols read
/// `app::_::<impl serde::de::Deserialize for app::Record>::deserialize`. Their line is the
/// `#[derive]` attribute's; the program's line is the `from_str` that called them, so they are
/// machinery like the dependency they serve.
///
/// v0 mangling (nightly's default) prints an impl without the path it lives in
/// (`<app::Record as serde_core::de::Deserialize>::deserialize`), so the anonymous block does
/// not show; there, the types serde's derive makes with a leading `__` tell its code
/// (`<<app::Record as serde_core::de::Deserialize>::deserialize::__Visitor as
/// serde_core::de::Visitor>::visit_map`), and the derived function around them is found by
/// sharing their line (see [`generated_callers`]).
pub(crate) fn is_generated_impl(function: &str) -> bool {
    function.contains("::_::<impl ")
        || function
            .match_indices("::__")
            .any(|(i, _)| function[i + 4..].starts_with(|c: char| c.is_ascii_uppercase()))
}

/// The derived functions that call generated code of their own derive, as v0 mangling names
/// them: `<app::Record as serde_core::de::Deserialize>::deserialize` (legacy:
/// `app::_::<impl serde::de::Deserialize for app::Record>::deserialize`), at the `#[derive]`
/// line like the `__Visitor` it calls. Those of `frames` (innermost first) whose `kinds` say
/// `Own` become `Dependency`: a trait's method for a type of the program (`<A as B>::f`, A and
/// B from different crates) at the file and line of a generated frame inside it.
pub(crate) fn generated_callers(frames: Seq<'_>, kinds: &mut [Kind]) {
    let mut generated: Vec<(&str, u32)> = Vec::new();
    for (i, frame) in frames.iter().enumerate() {
        let at = (&*frame.path, frame.lineno);
        if kinds[i] == Kind::Dependency && frame.lineno != 0 && is_generated_impl(&frame.function) {
            if !generated.contains(&at) {
                generated.push(at);
            }
        } else if kinds[i] == Kind::Own
            && generated.contains(&at)
            && matches!(symbol_crates(&frame.function), (Some(a), Some(b)) if a != b)
        {
            kinds[i] = Kind::Dependency;
        }
        if generated.len() > 16 {
            // Recursion through many derives: the innermost ones are the ones that matter.
            generated.remove(0);
        }
    }
}

/// glibc and friends: C symbols (no `::`) without a path or with the relative paths of a
/// distribution's build (`./csu/…`, `../sysdeps/…`), and the compiler-made C `main`.
fn is_c_runtime(function: &str, path: Option<&str>) -> bool {
    if function.contains("::") {
        return false;
    }
    match path {
        // A symbol table names an address by any of its aliases: glibc's `clone3` is also
        // `__clone3` and the internal `__GI___clone3`; a dynamic symbol may carry its version
        // (`__libc_start_main@GLIBC_2.2.5`).
        None => {
            let name = function.split('@').next().unwrap_or(function);
            matches!(
                name.strip_prefix("__GI_").unwrap_or(name),
                "main"
                    | "__libc_start_call_main"
                    | "__libc_start_main"
                    | "__libc_start_main_impl"
                    | "_start"
                    | "start_thread"
                    | "clone"
                    | "__clone"
                    | "clone3"
                    | "__clone3"
            )
        }
        Some(path) => path.starts_with("./") || path.starts_with("../"),
    }
}

/// The part of a toolchain source path from `library/` (or `deps/`) on, when `path` is one.
fn toolchain_tail(path: &str) -> Option<&str> {
    if let Some(rest) = path.strip_prefix("/rustc/") {
        // `/rustc/<hash>/library/…`
        let (_, tail) = rest.split_once('/')?;
        return tail.starts_with("library/").then_some(tail);
    }
    if path.starts_with("/rust/deps/") {
        return Some(&path["/rust/".len()..]);
    }
    if let Some(i) = path.find("/lib/rustlib/src/rust/") {
        return Some(&path[i + "/lib/rustlib/src/rust/".len()..]);
    }
    // `/usr/src/rustc-1.85.0/library/…`, as distributions build it.
    let i = path.find("/rustc-")?;
    let rest = &path[i + "/rustc-".len()..];
    let (version, tail) = rest.split_once('/')?;
    (version.starts_with(|c: char| c.is_ascii_digit()) && tail.starts_with("library/"))
        .then_some(tail)
}

fn is_toolchain_path(path: &str) -> bool {
    toolchain_tail(path).is_some()
}

/// A crate as statistics by crate name it: `serde_json 1.0.154`, `app`, `std`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CrateName {
    pub(crate) name: String,
    /// The version (or git revision) when the path tells it.
    pub(crate) version: Option<String>,
}

impl std::fmt::Display for CrateName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{} {v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// `name-1.2.3` → (`name`, `1.2.3`): the first `-` followed by `<digits>.` starts the version
/// (crate names may hold digits after a dash, as `sha-1-0.10.0`).
fn split_versioned(dir: &str) -> Option<(&str, &str)> {
    let mut from = 0;
    while let Some(i) = dir[from..].find('-').map(|i| i + from) {
        let rest = &dir[i + 1..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if i > 0 && digits > 0 && rest[digits..].starts_with('.') {
            return Some((&dir[..i], rest));
        }
        from = i + 1;
    }
    None
}

/// The dependency a source path belongs to, and the path's part inside the crate's folder
/// with that folder (`serde_json-1.0.154/src/map.rs`), when the path is a dependency's.
fn dependency_of_path(path: &str) -> Option<(CrateName, &str)> {
    if let Some(i) = path.find("/registry/src/") {
        // `…/registry/src/<index>/<name>-<version>/…`
        let after_index = path[i + "/registry/src/".len()..].split_once('/')?.1;
        let dir = after_index.split('/').next()?;
        let (name, version) = split_versioned(dir)?;
        return Some((
            CrateName {
                name: name.to_owned(),
                version: Some(version.to_owned()),
            },
            after_index,
        ));
    }
    if let Some(i) = path.find("/git/checkouts/") {
        // `…/git/checkouts/<repo>-<16 hex>/<rev>/…`
        let rest = &path[i + "/git/checkouts/".len()..];
        let (repo_dir, rest) = rest.split_once('/')?;
        let (rev, _) = rest.split_once('/')?;
        let repo = repo_dir
            .rsplit_once('-')
            .filter(|(_, h)| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .map_or(repo_dir, |(r, _)| r);
        return Some((
            CrateName {
                name: repo.to_owned(),
                version: Some(format!("git {rev}")),
            },
            rest,
        ));
    }
    let vendored = if let Some(rest) = path.strip_prefix("vendor/") {
        Some(rest)
    } else {
        path.find("/vendor/").map(|i| &path[i + "/vendor/".len()..])
    };
    if let Some(rest) = vendored {
        let dir = rest.split('/').next()?;
        if rest.len() > dir.len() {
            let name = match split_versioned(dir) {
                Some((name, version)) => CrateName {
                    name: name.to_owned(),
                    version: Some(version.to_owned()),
                },
                None => CrateName {
                    name: dir.to_owned(),
                    version: None,
                },
            };
            return Some((name, rest));
        }
    }
    // Cargo's `trim-paths`: `<name>-<version>/src/…`, relative.
    if !path.starts_with('/') && !path.starts_with('.') {
        let dir = path.split('/').next()?;
        if path.len() > dir.len() {
            if let Some((name, version)) = split_versioned(dir) {
                if version.split('.').count() >= 3 {
                    return Some((
                        CrateName {
                            name: name.to_owned(),
                            version: Some(version.to_owned()),
                        },
                        path,
                    ));
                }
            }
        }
    }
    None
}

/// The crate of a symbol's code, when its name tells: `app::main` → `app`,
/// `<serde_json::Map>::insert` → `serde_json`; `<A as B>::f` → the one of A's and B's crates
/// that is not the toolchain's (the impl lives in one of the two).
fn symbol_crate(function: &str) -> Option<&str> {
    let (self_crate, trait_crate) = symbol_crates(function);
    match (self_crate, trait_crate) {
        (Some(s), Some(t)) if TOOLCHAIN_CRATES.contains(&s) => Some(t),
        (Some(s), _) => Some(s),
        (None, t) => t,
    }
}

/// The leading crate of a path expression (`serde_json::de::from_str` → `serde_json`); `None`
/// for primitive and compound types (`i32`, `&T`, `[u8]`, `(A, B)`). A crate disambiguator, as
/// v0 mangling's names carry when printed in full (`app[1a2b3c4d5e6f7a8b]::main`), is dropped.
fn leading_crate(path: &str) -> Option<&str> {
    let (first, _) = path.split_once("::")?;
    let first = match first.split_once('[') {
        Some((name, hash))
            if hash
                .strip_suffix(']')
                .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit())) =>
        {
            name
        }
        _ => first,
    };
    (!first.is_empty()
        && first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    .then_some(first)
}

/// For `<A as B>::f`: (`A`, `Some(B…)`, B followed by the rest of the name); for `<A>::f`:
/// (`A`, `None`); `None` for a plain path (`a::f`).
fn qualified_parts(function: &str) -> Option<(&str, Option<&str>)> {
    let inner = function.strip_prefix('<')?;
    // Find the ` as ` or the closing `>` at depth 0. The `>` of a function type's `->`
    // (`<fn() -> u8 as core::ops::function::FnOnce<()>>`, as v0 mangling prints shims) closes
    // nothing.
    let mut depth = 0usize;
    let bytes = inner.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'<' | b'(' | b'[' => depth += 1,
            b')' | b']' => depth = depth.saturating_sub(1),
            b'>' if i > 0 && bytes[i - 1] == b'-' => {}
            b'>' if depth == 0 => return Some((&inner[..i], None)),
            b'>' => depth -= 1,
            b' ' if depth == 0 && inner[i..].starts_with(" as ") => {
                return Some((&inner[..i], Some(&inner[i + " as ".len()..])));
            }
            _ => {}
        }
    }
    Some((inner, None))
}

/// For `<A as B>::f`: (A's crate, B's crate); for `<A>::f` and `a::f`: (the crate, `None`).
fn symbol_crates(function: &str) -> (Option<&str>, Option<&str>) {
    match qualified_parts(function) {
        None => (leading_crate(function), None),
        Some((self_type, trait_path)) => {
            (leading_crate(self_type), trait_path.and_then(leading_crate))
        }
    }
}

/// `name` with its closures spelt as `std::any::type_name` and legacy symbols spell them
/// (`app::main::{{closure}}`): v0 symbols (std's own, and a program built with
/// `-C symbol-mangling-version=v0`) number them (`app::main::{closure#0}`). For comparing a
/// frame's function with a closure's type name.
pub(crate) fn unnumbered_closures(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.contains("{closure#") {
        return std::borrow::Cow::Borrowed(name);
    }
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find("{closure#") {
        let tail = &rest[at + "{closure#".len()..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && tail.as_bytes().get(digits) == Some(&b'}') {
            out.push_str(&rest[..at]);
            out.push_str("{{closure}}");
            rest = &tail[digits + 1..];
        } else {
            out.push_str(&rest[..at + 1]);
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// A closure's type: `app::main::{closure#0}` (v0 mangling), `app::main::{{closure}}` (legacy).
fn is_closure(path: &str) -> bool {
    let last = path.rsplit("::").next().unwrap_or(path);
    last == "{{closure}}" || last.starts_with("{closure#")
}

/// Code of the toolchain's crates by its name: `alloc::…`, `<alloc::vec::Vec<T>>::push`,
/// `<i32 as alloc::string::SpecToString>::f`; not `<app::Foo as core::fmt::Display>::fmt`
/// (the program's impl of a std trait) nor `<alloc::vec::Vec<u8> as app::Trait>::f`. A
/// closure's impl of a std trait (`<app::main::{closure#0} as core::ops::function::FnOnce<()>>
/// ::call_once`, what legacy mangling names `core::ops::function::FnOnce::call_once`) is the
/// compiler's, so the toolchain's.
fn is_toolchain_symbol(function: &str) -> bool {
    let toolchain = |c: Option<&str>| c.is_some_and(|c| TOOLCHAIN_CRATES.contains(&c));
    match symbol_crates(function) {
        (s, None) => toolchain(s),
        (None, t) => toolchain(t),
        (s, t) => {
            toolchain(t)
                && (toolchain(s) || qualified_parts(function).is_some_and(|(a, _)| is_closure(a)))
        }
    }
}

/// The crate name of the program's main binary, from the executable's name (`app`, and
/// `attribution` for a test binary `attribution-0123456789abcdef`), with `-` as `_`.
fn main_crate() -> Option<&'static str> {
    static MAIN: OnceLock<Option<String>> = OnceLock::new();
    MAIN.get_or_init(|| {
        // The name is the tracer's memory, not the program's (this may run outside a snapshot,
        // from a statistic grouped by crate).
        let _guard = crate::guard::Guard::enter();
        let exe = std::env::current_exe().ok()?;
        let stem = exe.file_stem()?.to_str()?;
        let stem = match stem.rsplit_once('-') {
            Some((name, hash))
                if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                name
            }
            _ => stem,
        };
        Some(stem.replace('-', "_"))
    })
    .as_deref()
}

/// The crate whose code a frame of kind `kind` is.
pub(crate) fn crate_of(frame: &Frame, kind: Kind) -> CrateName {
    let path = known_path(frame);
    let plain = |name: &str| CrateName {
        name: name.to_owned(),
        version: None,
    };
    match kind {
        Kind::Dependency => {
            if let Some((name, _)) = path.and_then(dependency_of_path) {
                return name;
            }
        }
        Kind::Toolchain => {
            if let Some(tail) = path.and_then(toolchain_tail) {
                // `library/<crate>/…`; std's private deps (`deps/hashbrown-…`) count as std.
                if let Some(rest) = tail.strip_prefix("library/") {
                    if let Some((c, _)) = rest.split_once('/') {
                        return plain(c);
                    }
                }
                return plain("std");
            }
        }
        Kind::Internal | Kind::TracerEntry | Kind::Shim => return plain("tracealloc"),
        Kind::Runtime => return plain("<C runtime>"),
        Kind::Own => {}
    }
    match symbol_crate(&frame.function) {
        Some(c) => plain(c),
        // Bare function names (`debug = "line-tables-only"`): the program is named like its
        // executable. In the `tracealloc` command reading a file, the program is unknown
        // (tracealloc's own code is never `Own`, so the name cannot be meant).
        None => match main_crate() {
            Some(main) if main != "tracealloc" => plain(main),
            _ => plain("<own code>"),
        },
    }
}

/// The name a source path is shown by: a dependency's path from its crate folder
/// (`serde_json-1.0.154/src/map.rs`, `repo@rev/src/lib.rs` for a git checkout), a toolchain path
/// without its commit hash or sysroot (`/rustc/library/alloc/src/raw_vec.rs`), other paths
/// relative to `base` (the working directory with a trailing `/`) when under it.
pub(crate) fn display_path(path: &str, base: &str) -> String {
    if let Some(tail) = toolchain_tail(path) {
        return format!("/rustc/{tail}");
    }
    if let Some((name, inside)) = dependency_of_path(path) {
        if path.contains("/git/checkouts/") {
            let rest = inside.split_once('/').map_or("", |(_, r)| r);
            let rev = name
                .version
                .as_deref()
                .unwrap_or("")
                .trim_start_matches("git ");
            return format!("{}@{rev}/{rest}", name.name);
        }
        return inside.to_owned();
    }
    match path.strip_prefix(base) {
        // A program run from `/` keeps the leading slash.
        Some(rest) if !base.is_empty() && base != "/" => rest.to_owned(),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toolchain_paths_wherever_the_build_put_them() {
        for path in [
            "/rustc/59807616e1fa2540724bfbac14d7976d7e4a3860/library/alloc/src/raw_vec.rs",
            "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/lib/rustlib/src/rust/library/alloc/src/alloc.rs",
            "/opt/rust/lib/rustlib/src/rust/library/std/src/rt.rs",
            "/usr/src/rustc-1.85.0/library/core/src/ptr/mod.rs",
            "/rust/deps/hashbrown-0.15.2/src/raw.rs",
        ] {
            assert_eq!(
                classify("x::y", Some(path)),
                Kind::Toolchain,
                "{path} is the toolchain's"
            );
            assert!(display_path(path, "/w/").starts_with("/rustc/"), "{path}");
        }
        assert_eq!(
            display_path(
                "/root/.rustup/toolchains/s/lib/rustlib/src/rust/library/alloc/src/alloc.rs",
                "/"
            ),
            "/rustc/library/alloc/src/alloc.rs"
        );
        // A project that happens to have a `library/` folder is not the toolchain.
        assert_eq!(
            classify("app::f", Some("/home/u/proj/library/alloc/src/x.rs")),
            Kind::Own
        );
    }

    #[test]
    fn toolchain_by_symbol() {
        assert!(is_toolchain_symbol("alloc::raw_vec::finish_grow"));
        assert!(is_toolchain_symbol("<alloc::vec::Vec<T,A>>::push"));
        assert!(is_toolchain_symbol(
            "<i32 as alloc::string::SpecToString>::spec_to_string"
        ));
        assert!(is_toolchain_symbol(
            "<alloc::vec::Vec<T> as core::clone::Clone>::clone"
        ));
        assert!(!is_toolchain_symbol(
            "<app::Foo as core::fmt::Display>::fmt"
        ));
        assert!(!is_toolchain_symbol(
            "<alloc::vec::Vec<u8> as app::Encode>::encode"
        ));
        assert!(!is_toolchain_symbol("app::main"));
        assert!(!is_toolchain_symbol("build_index"));
        // Remapped std sources are still std's by name.
        assert_eq!(
            classify("alloc::alloc::alloc", Some("/remapped/alloc/src/alloc.rs")),
            Kind::Toolchain
        );
    }

    #[test]
    fn dependencies_by_path() {
        let reg = "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/serde_json-1.0.154/src/map.rs";
        assert_eq!(
            classify("serde_json::map::Map::insert", Some(reg)),
            Kind::Dependency
        );
        let frame = Frame::with_path(String::new(), reg.into(), 138, "f".into());
        assert_eq!(
            crate_of(&frame, Kind::Dependency).to_string(),
            "serde_json 1.0.154"
        );
        assert_eq!(display_path(reg, "/w/"), "serde_json-1.0.154/src/map.rs");
        let dashed = "/c/registry/src/i/sha-1-0.10.0-rc.1/src/lib.rs";
        let (name, _) = dependency_of_path(dashed).unwrap();
        assert_eq!(name.to_string(), "sha-1 0.10.0-rc.1");
        let git = "/root/.cargo/git/checkouts/tokio-0123456789abcdef/a1b2c3d/tokio/src/lib.rs";
        assert_eq!(classify("tokio::x", Some(git)), Kind::Dependency);
        assert_eq!(display_path(git, "/"), "tokio@a1b2c3d/tokio/src/lib.rs");
        assert_eq!(
            classify("regex::x", Some("/w/app/vendor/regex/src/lib.rs")),
            Kind::Dependency
        );
        assert_eq!(
            classify("regex::x", Some("regex-1.11.1/src/lib.rs")),
            Kind::Dependency
        );
        assert_eq!(classify("app::parse", Some("src/parse.rs")), Kind::Own);
        assert_eq!(
            classify("mylib::f", Some("/home/u/mylib/src/lib.rs")),
            Kind::Own
        );
        assert_eq!(classify("app::f", Some("src/v-1.2.3/x.rs")), Kind::Own);
    }

    #[test]
    fn crate_names() {
        assert_eq!(
            symbol_crate("<app::Foo as core::fmt::Display>::fmt"),
            Some("app")
        );
        assert_eq!(
            symbol_crate("<alloc::vec::Vec<u8> as serde::Serialize>::serialize"),
            Some("serde")
        );
        assert_eq!(
            symbol_crate("<serde_json::Map<K,V>>::insert"),
            Some("serde_json")
        );
        assert_eq!(symbol_crate("<&T as core::fmt::Debug>::fmt"), Some("core"));
        assert_eq!(symbol_crate("main"), None);
        let std_frame = Frame::with_path(
            String::new(),
            "/rustc/h/library/alloc/src/raw_vec.rs".into(),
            1,
            "f".into(),
        );
        assert_eq!(crate_of(&std_frame, Kind::Toolchain).to_string(), "alloc");
    }

    #[test]
    fn derived_impls_are_machinery() {
        let visitor = "<app::_::<impl serde::de::Deserialize for app::Record>::deserialize::__Visitor as serde::de::Visitor>::visit_map::<serde_json::de::MapAccess<serde_json::read::StrRead>>";
        assert_eq!(classify(visitor, Some("src/main.rs")), Kind::Dependency);
        assert_eq!(
            classify(
                "<app::Record as core::clone::Clone>::clone",
                Some("src/main.rs")
            ),
            Kind::Own
        );
    }

    /// Names as v0 mangling prints them (nightly's default since 2025), from a program using
    /// serde's derive and a thread, symbolized by this crate's `backtrace`.
    #[test]
    fn v0_names() {
        let toolchain = [
            "<alloc::vec::Vec<u8> as core::clone::Clone>::clone",
            "<fn() -> core::result::Result<(), alloc::string::String> as core::ops::function::FnOnce<()>>::call_once",
            "<fn() as core::ops::function::FnOnce<()>>::call_once",
            "<app::main::{closure#0} as core::ops::function::FnOnce<()>>::call_once",
            "<std::thread::lifecycle::spawn_unchecked<fn(), ()>::{closure#1} as core::ops::function::FnOnce<()>>::call_once::{shim:vtable#0}",
            "<alloc::boxed::Box<dyn core::ops::function::FnOnce<(), Output = ()> + core::marker::Send> as core::ops::function::FnOnce<()>>::call_once",
            "std::sys::backtrace::__rust_begin_short_backtrace::<fn(), ()>",
            "std::rt::lang_start::<()>::{closure#0}",
            "<std::sys::thread::unix::Thread>::new::thread_start",
            "core::ptr::drop_in_place::<alloc::vec::Vec<u8>>",
        ];
        for name in toolchain {
            assert!(is_toolchain_symbol(name), "{name}");
            // Without line information (a build without debug info) the name decides.
            assert_eq!(classify(name, None), Kind::Toolchain, "{name}");
        }
        assert!(!is_toolchain_symbol(
            "<app::Probe as serde_core::de::Deserialize>::deserialize::<&mut serde_json::de::Deserializer<serde_json::read::StrRead>>"
        ));
        assert!(!is_toolchain_symbol("app::main::{closure#0}"));
        assert_eq!(
            unnumbered_closures("app::t::{closure#0}::{closure#12}"),
            "app::t::{{closure}}::{{closure}}"
        );
        assert_eq!(
            unnumbered_closures("<app::f::{closure#1} as core::ops::FnOnce<()>>::call_once"),
            "<app::f::{{closure}} as core::ops::FnOnce<()>>::call_once"
        );
        assert_eq!(
            unnumbered_closures("app::t::{{closure}}"),
            "app::t::{{closure}}"
        );
        assert_eq!(unnumbered_closures("app::{closure#x}"), "app::{closure#x}");
        assert!(!is_toolchain_symbol(
            "<app::Foo as core::fmt::Display>::fmt"
        ));
        assert_eq!(
            symbol_crate("<app::Probe as serde_core::de::Deserialize>::deserialize::<&mut serde_json::de::Deserializer<serde_json::read::StrRead>>"),
            Some("app")
        );
        assert_eq!(
            symbol_crate("serde_json::de::from_str::<alloc::vec::Vec<app::Record>>"),
            Some("serde_json")
        );
        assert_eq!(
            symbol_crate("<alloc::vec::Vec<app::Record> as serde_core::de::Deserialize>::deserialize::<&mut serde_json::de::Deserializer<serde_json::read::StrRead>>"),
            Some("serde_core")
        );
        assert_eq!(symbol_crate("<fn() -> u8 as app::Run>::run"), Some("app"));
        // Crate disambiguators, when a name is printed in full.
        assert_eq!(symbol_crate("app[1a2b3c4d5e6f7a8b]::main"), Some("app"));
        assert_eq!(
            symbol_crate(
                "<std[c2e1a4b5d6f7a8b9]::fs::File as std[c2e1a4b5d6f7a8b9]::io::Read>::read"
            ),
            Some("std")
        );
        assert_eq!(symbol_crate("app[xyz]::main"), None);
        assert_eq!(
            classify(
                "<tracealloc::tracer::Tracer<std::alloc::System> as core::alloc::global::GlobalAlloc>::alloc",
                Some("/w/src/tracer.rs")
            ),
            Kind::TracerEntry
        );
        assert_eq!(
            classify("tracealloc::tracer::record::<2>", None),
            Kind::Internal
        );
        assert_eq!(
            classify("app::main::{closure#0}", Some("src/main.rs")),
            Kind::Own
        );
    }

    #[test]
    fn derived_impls_are_machinery_in_v0_names() {
        // Legacy mangling shows the anonymous `const _`; v0 does not, the `__Visitor` does.
        let visitor = "<<app::Record as serde_core::de::Deserialize>::deserialize::__Visitor as serde_core::de::Visitor>::visit_map::<serde_json::de::MapAccess<serde_json::read::StrRead>>";
        assert_eq!(classify(visitor, Some("src/main.rs")), Kind::Dependency);
        let field = "<<app::Record as serde_core::de::Deserialize>::deserialize::__FieldVisitor as serde_core::de::Visitor>::visit_str::<serde_json::Error>";
        assert_eq!(classify(field, Some("src/main.rs")), Kind::Dependency);
        // std's own double-underscore names are not derives.
        assert!(!is_generated_impl(
            "std::sys::backtrace::__rust_begin_short_backtrace::<fn(), ()>"
        ));
        // The derived `deserialize` around the visitor has a plain name: it is found by its
        // line, the visitor's (the `#[derive]` line).
        let derived = "<app::Record as serde_core::de::Deserialize>::deserialize::<&mut serde_json::de::Deserializer<serde_json::read::StrRead>>";
        let hand_written = "<app::Probe as serde_core::de::Deserialize>::deserialize::<&mut serde_json::de::Deserializer<serde_json::read::StrRead>>";
        let reg = "/c/registry/src/i/serde_json-1.0.154/src/de.rs";
        let frame = |function: &str, path: &str, line: u32| {
            Frame::with_path(path.into(), path.into(), line, function.into())
        };
        let frames = [
            frame(hand_written, "src/main.rs", 8),
            frame(visitor, "src/main.rs", 19),
            frame("<&mut serde_json::de::Deserializer<serde_json::read::StrRead> as serde_core::de::Deserializer>::deserialize_struct::<<app::Record as serde_core::de::Deserialize>::deserialize::__Visitor>", reg, 1851),
            frame(derived, "src/main.rs", 19),
            frame("serde_json::de::from_str::<alloc::vec::Vec<app::Record>>", reg, 2713),
            frame("app::main::{closure#0}", "src/main.rs", 30),
        ];
        let mut kinds: Vec<Kind> = frames.iter().map(of_frame).collect();
        assert_eq!(kinds[3], Kind::Own);
        generated_callers(Seq::Slice(&frames), &mut kinds);
        assert_eq!(
            kinds,
            [
                Kind::Own,
                Kind::Dependency,
                Kind::Dependency,
                Kind::Dependency,
                Kind::Dependency,
                Kind::Own
            ]
        );
        // A function of the program at that line (not a trait impl) stays the program's.
        let mut plain = [Kind::Dependency, Kind::Own];
        let at_19 = [
            frame(visitor, "src/main.rs", 19),
            frame("app::f", "src/main.rs", 19),
        ];
        generated_callers(Seq::Slice(&at_19), &mut plain);
        assert_eq!(plain[1], Kind::Own);
    }

    #[test]
    fn display_paths() {
        assert_eq!(display_path("/w/src/main.rs", "/w/"), "src/main.rs");
        assert_eq!(display_path("/etc/x.rs", "/"), "/etc/x.rs");
        assert_eq!(display_path("/elsewhere/x.rs", "/w/"), "/elsewhere/x.rs");
    }
}
