//! The block frontend driver.

pub mod info;
pub mod wire;

pub use info::{BackendInfo, BackendKind, DirectIoSafe, StallCause, StallReport};
