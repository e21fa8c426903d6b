//! `xenstore`: under construction.
