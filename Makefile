# xenblk — see README.md. `make run` boots the example unikernel under real
# Xen; `make test` is the whole suite (what CI runs).
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all setup run test fmt clippy unit layout miri doc lab unikernel unikernel-test

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

# The example PVH unikernel: its own crate (unikernel/, own workspace) for
# x86_64-unknown-none. unikernel-test lints it (this also lints src/pvh.rs,
# which only builds for that target) and boots it under plain QEMU.
unikernel: setup
	cd unikernel && $(CARGO) build --release

unikernel-test: unikernel
	cd unikernel && $(CARGO) fmt -- --check
	cd unikernel && $(CARGO) clippy --release -- -D warnings
	bash tests/unikernel-noxen.sh
