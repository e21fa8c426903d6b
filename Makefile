# xenblk — see README.md. `make run` boots the example unikernel under real
# Xen; `make test` is the whole suite (what CI runs). Every target installs
# what it needs through tests/setup.sh.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never
# The library's host features: the simulator and the block-device adapters.
HOST_FEATURES := sim,embedded-io,embedded-sdmmc,ext4-view

.PHONY: all setup run run-guest test fmt clippy clippy-pvh unit layout miri doc lab \
        unikernel unikernel-test bench bench-ring bench-driver bench-inguest \
        bench-inguest-smoke \
        fuzz fuzz-smoke soak soak-smoke msrv package

all: test

setup:
	@bash tests/setup.sh

fmt: setup
	$(CARGO) fmt --all -- --check
	cd unikernel && $(CARGO) fmt -- --check
	cd pvh-rt && $(CARGO) fmt -- --check
	cd examples/minimal && $(CARGO) fmt -- --check

# --workspace: the benchmarks (bench/, crate xenblk-bench) are checked too.
clippy: setup
	$(CARGO) clippy --workspace --all-targets --features $(HOST_FEATURES) -- -D warnings
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# src/pvh.rs only builds for the unikernel's target.
clippy-pvh: setup
	$(CARGO) clippy --target x86_64-unknown-none --features pvh --lib -- -D warnings

doc: setup
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --features $(HOST_FEATURES),pvh
	cd pvh-rt && RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --target x86_64-unknown-none

unit: setup
	$(CARGO) test --features $(HOST_FEATURES)
	$(CARGO) test -p xenblk-bench --lib

# The declared minimum Rust version (rust-version in Cargo.toml) builds the
# library, its tests and the PVH platform; the published package's own tests
# compile from the unpacked crate (what `cargo package` would ship).
MSRV := $(shell sed -n 's/^rust-version = "\(.*\)"$$/\1/p' Cargo.toml)

msrv: setup
	CARGO_TARGET_DIR=target/msrv $(CARGO) +$(MSRV) check --features $(HOST_FEATURES) --all-targets
	CARGO_TARGET_DIR=target/msrv $(CARGO) +$(MSRV) check --target x86_64-unknown-none --features pvh --lib
	cd examples/minimal && CARGO_TARGET_DIR=$(CURDIR)/target/msrv-guest $(CARGO) +$(MSRV) check
	cd unikernel && CARGO_TARGET_DIR=$(CURDIR)/target/msrv-guest $(CARGO) +$(MSRV) check

# (Unpacked outside the repository, where no workspace claims it, and built
# in a target directory of its own: one shared between runs reused a stale
# library, because each run unpacks to a new path.)
package: setup
	$(CARGO) package --allow-dirty --no-verify -p xenblk
	d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && \
	    tar -xzf target/package/xenblk-$$(sed -n 's/^version = "\(.*\)"$$/\1/p' Cargo.toml | head -1).crate -C "$$d" && \
	    cd "$$d"/xenblk-* && CARGO_TARGET_DIR="$$d/target" \
	    $(CARGO) test --features $(HOST_FEATURES) --no-run

# ABI layouts checked against /usr/include/xen from Debian's libxen-dev.
layout: setup
	XENBLK_REQUIRE_HEADERS=1 $(CARGO) test --features sim --test abi_layout

miri: setup
	bash tests/miri.sh

# The example PVH unikernel: its own crate (unikernel/, own workspace) for
# x86_64-unknown-none, the minimal example, and the README's "Your own
# unikernel" built as written (tests/readme-guest.sh, outside the tree).
# unikernel-test lints the first two and boots all three under plain QEMU.
unikernel: setup
	cd unikernel && $(CARGO) build --release
	cd examples/minimal && $(CARGO) build --release
	bash tests/readme-guest.sh >/dev/null

# The platform (pvh-rt/, xenblk-pvh-rt) is linted through its own manifest.
unikernel-test: unikernel
	cd unikernel && $(CARGO) clippy --release -- -D warnings
	cd examples/minimal && $(CARGO) clippy --release -- -D warnings
	cd pvh-rt && $(CARGO) clippy --target x86_64-unknown-none -- -D warnings
	bash tests/unikernel-noxen.sh

# The real-Xen lab (tests/lab/, docs/LAB.md): real Xen + a Debian dom0 with
# blkback and QEMU qdisk under bookworm's QEMU 7.2 (TCG), the example
# unikernel as a PVH domU per disk configuration, checked against xenstore
# and dom0's view of each disk. Two generations, each from Debian packages:
# Xen 4.17 (Debian 12, Linux 6.1, QEMU 7.2) and Xen 4.20 (Debian 13, Linux
# 6.12, QEMU 10.0). `make run` boots one, XENBLK_LAB_XEN=4.17|4.20 (default
# 4.20, the newest); `make lab` runs the whole matrix on both, one after the
# other (or on XENBLK_LAB_XEN alone when it is set).
run: unikernel
	bash tests/lab/lab.sh run

# Your own PVH unikernel under real Xen: make run-guest GUEST=<ELF>
# [CMDLINE="..."] (disks: tests/lab/matrix/guest.txt; docs/LAB.md).
run-guest: setup
	bash tests/lab/lab.sh guest "$(GUEST)" "$(CMDLINE)"

lab: unikernel
	bash tests/lab/lab.sh matrix

test: fmt clippy clippy-pvh doc msrv package unit layout miri fuzz-smoke soak-smoke unikernel-test lab \
      bench-inguest-smoke
	@echo "make test: all stages passed"

# Benchmarks; each writes its section of docs/PERFORMANCE.md. Later benches
# (driver, in-guest) add a bench-* target and list it in BENCHES. The ring
# and driver benches are the workspace crate bench/ (xenblk-bench), which
# also owns the C baseline, so the library itself has no build script.
# XENBLK_BENCH_SCALE=4 make bench: a longer, steadier run.
BENCHES := bench-ring bench-driver bench-inguest

bench: $(BENCHES)

bench-ring: setup
	XENBLK_BENCH_DOC=$(CURDIR)/docs/PERFORMANCE.md $(CARGO) bench -p xenblk-bench --bench ring

# The driver over the simulated blkback (bench/benches/driver.rs): IOPS, ns
# and callgrind instructions per request, deltas against
# bench/benches/baseline.txt.
bench-driver: setup
	XENBLK_BENCH_DOC=$(CURDIR)/docs/PERFORMANCE.md $(CARGO) bench -p xenblk-bench --features sim --bench driver

# Fuzzing (cargo-fuzz, nightly; fuzz/ is its own crate). Every target runs
# FUZZ_SECS seconds from its seed corpus (fuzz/corpus/<target>/seed-*); any
# finding fails the target and leaves the input in fuzz/artifacts/<target>/
# (copy it to fuzz/regressions/<target>/ so tests/fuzz_replay.rs keeps it).
# `make fuzz` defaults to an hour per target under AddressSanitizer;
# `make fuzz-smoke` (part of `make test`) to a minute each, uninstrumented for
# five times the executions (FUZZ_SMOKE_SANITIZER=address to change that).
FUZZ_TARGETS := hostile_backend xenstore_replies backend_keys
FUZZ_SECS ?= 3600
FUZZ_SANITIZER ?= address
FUZZ_SMOKE_SECS ?= 60
FUZZ_SMOKE_SANITIZER ?= none

fuzz: setup
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	    $(CARGO) +nightly fuzz run -s $(FUZZ_SANITIZER) $$t -- \
	        -max_total_time=$(FUZZ_SECS) -print_final_stats=1 || exit 1; \
	done

fuzz-smoke: setup
	$(MAKE) fuzz FUZZ_SECS=$(FUZZ_SMOKE_SECS) FUZZ_SANITIZER=$(FUZZ_SMOKE_SANITIZER)

# Data-integrity soak in release mode: XENBLK_SOAK_SECS seconds of random
# I/O against a model of the disk (`make soak XENBLK_SOAK_SECS=86400`).
XENBLK_SOAK_SECS ?= 600
SOAK_SMOKE_SECS ?= 30

soak: setup
	XENBLK_SOAK_SECS=$(XENBLK_SOAK_SECS) $(CARGO) test --release --features sim \
	    --test soak -- --nocapture

soak-smoke: setup
	$(MAKE) soak XENBLK_SOAK_SECS=$(SOAK_SMOKE_SECS)

# In-guest benchmark under real Xen (tests/lab/bench/, about 12 minutes): the
# example unikernel's `bench serve` against Linux's blkfront + fio in a PV
# domU, both booted, alternated job by job by dom0, same kinds of backend
# (blkback on null_blk, qdisk on a file). Run it on an otherwise idle host.
# It boots generation 4.17 (tests/lab/bench/run.sh; XENBLK_LAB_XEN=4.20 to
# change), so its numbers stay comparable with the ones in PERFORMANCE.md.
bench-inguest: unikernel
	bash tests/lab/bench/run.sh

# The same pipeline, one short round, as part of `make test` (about 4
# minutes): the Linux guest's initramfs builds, both guests boot and serve,
# every turn pairs up and parses. It checks that the bench works, never how
# fast anything is, and leaves docs/PERFORMANCE.md alone.
bench-inguest-smoke: unikernel
	XENBLK_BENCH_DOC=0 XENBLK_BENCH_ROUNDS=1 XENBLK_BENCH_SECS=1 XENBLK_BENCH_RAMP=0 \
	    bash tests/lab/bench/run.sh
