#!/usr/bin/env bash
# Miri subset: ring, grants and simulator-driven tests (issue 2/5).
set -euo pipefail
cd "$(dirname "$0")/.."
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-permissive-provenance}"
cargo +nightly miri test --features sim --lib ring::
# Grant tables and the simulated hypervisor (not its threaded-mode tests,
# which need real time).
cargo +nightly miri test --features sim --lib -- gnttab:: evtchn:: sim::xen:: sim::grant:: sim::event:: sim::hal::
# The ring's two-thread tests again under 16 schedules: a missing barrier
# shows up as a data race or a lost wake-up only on some interleavings
# (each schedule takes about a second).
MIRIFLAGS="$MIRIFLAGS -Zmiri-many-seeds=0..16" \
    cargo +nightly miri test --features sim --lib ring::tests::threads_
# The xenstore client and its wire decoder, over a scripted daemon, the
# ring transport and the simulated xenstored (not the threaded-mode test).
cargo +nightly miri test --features sim --lib xenstore::
cargo +nightly miri test --features sim --test xenstore_ring
cargo +nightly miri test --features sim --test xenstore_sim -- \
    every_operation_over_the_ring garbage_replies_break_only_that_connection \
    dropped_connections_and_broken_indices_are_connection_errors
# The driver against the simulated blkback (about a minute under Miri): a
# read split in two parts, answered by the puppet backend, one part failed,
# then both succeeding, and close; Miri's leak check included (the
# simulator holds the backend weakly, so the whole world is freed).
cargo +nightly miri test --features sim --test faults -- \
    a_read_with_one_failed_part_leaves_the_buffer_alone
