//! `evtchn`: under construction.
