//! A simulated block backend (wip).

pub mod config;
mod disk;
mod request;
