//! Stacks: capture on the hot path, interning, and symbolization on the cold path.

pub(crate) mod capture;
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
pub(crate) mod cfi;
#[cfg(target_os = "linux")]
pub(crate) mod elf;
pub(crate) mod intern;
pub(crate) mod objects;
pub(crate) mod origin;
pub(crate) mod symbolize;

pub use capture::CaptureMode;
pub(crate) use intern::StackId;
