//! Records the optimization level tracealloc itself is compiled at, so that a debug build can
//! say why tracing is slow (see `build::UNOPTIMIZED`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=OPT_LEVEL");
    let level = std::env::var("OPT_LEVEL").unwrap_or_default();
    println!("cargo:rustc-env=TRACEALLOC_OPT_LEVEL={level}");
}
