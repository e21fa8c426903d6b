# xenblk — see README.md. `make run` boots the example unikernel under real
# Xen; `make test` is the whole suite (what CI runs).
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all setup run test fmt clippy unit layout miri doc lab bench bench-ring

all: test

setup:
	@bash tests/setup.sh

fmt: setup
	$(CARGO) fmt --all -- --check

clippy: setup
	$(CARGO) clippy --all-targets --features sim -- -D warnings
	$(CARGO) clippy --all-targets -- -D warnings

doc: setup
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps --features sim

unit: setup
	$(CARGO) test --features sim

# ABI layouts checked against /usr/include/xen from Debian's libxen-dev.
layout: setup
	XENBLK_REQUIRE_HEADERS=1 $(CARGO) test --features sim --test abi_layout

miri: setup
	bash tests/miri.sh

test: fmt clippy doc unit layout miri
	@echo "make test: all stages passed"

# Benchmarks; each writes its section of docs/PERFORMANCE.md. Later benches
# (driver, in-guest) add a bench-* target and list it in BENCHES.
# XENBLK_BENCH_SCALE=4 make bench: a longer, steadier run.
BENCHES := bench-ring

bench: $(BENCHES)

bench-ring: setup
	XENBLK_BENCH_DOC=$(CURDIR)/docs/PERFORMANCE.md $(CARGO) bench --bench ring
