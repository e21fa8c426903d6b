//! `gnttab`: under construction.
