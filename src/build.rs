//! How tracealloc itself was compiled (recorded by its build script).

/// The optimization level tracealloc was compiled at (`OPT_LEVEL`: "0" to "3", "s", "z").
const OPT_LEVEL: &str = env!("TRACEALLOC_OPT_LEVEL");

/// tracealloc compiled at `opt-level = 0` (a debug build without the README's profile block):
/// every traced allocation then costs several times more, and snapshots symbolize slowly.
pub(crate) const UNOPTIMIZED: bool = matches!(OPT_LEVEL.as_bytes(), b"0");

/// The one line that says so, for snapshot notes and the first failing assertion.
pub(crate) const UNOPTIMIZED_NOTE: &str =
    "tracealloc is compiled without optimization (a debug build): tracing costs several times \
     more and the first snapshot symbolizes slowly; add the README's [profile.dev.package] \
     block (opt-level = 3 for tracealloc and its symbolization crates)";
