//! Stacks: capture on the hot path, interning, and symbolization on the cold path.

pub(crate) mod capture;
pub(crate) mod intern;
pub(crate) mod symbolize;

pub use capture::CaptureMode;
pub(crate) use intern::StackId;
