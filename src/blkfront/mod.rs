//! `blkfront`: under construction.
