//! `abi`: under construction.
