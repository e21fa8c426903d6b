#!/usr/bin/env bash
# Miri subset: ring, grants and simulator-driven tests (issue 2/5).
set -euo pipefail
cd "$(dirname "$0")/.."
export MIRIFLAGS="${MIRIFLAGS:--Zmiri-permissive-provenance}"
cargo +nightly miri test --features sim --lib ring::
# Grant tables and the simulated hypervisor (not its threaded-mode tests,
# which need real time).
cargo +nightly miri test --features sim --lib -- gnttab:: evtchn:: sim::xen:: sim::grant:: sim::event:: sim::hal::
