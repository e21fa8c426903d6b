//! The block frontend driver.

pub mod info;

pub use info::{BackendInfo, BackendKind, DirectIoSafe, StallCause, StallReport};
