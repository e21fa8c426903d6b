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
