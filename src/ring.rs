//! `ring`: under construction.
