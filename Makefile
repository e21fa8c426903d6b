# xenblk — see README.md. `make run` boots the example unikernel under real
# Xen; `make test` is the whole suite (what CI runs).
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all setup run test fmt clippy unit layout miri doc lab

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

# The real-Xen lab (tests/lab/, docs/LAB.md): Xen 4.17 + a Debian dom0 with
# blkback and QEMU qdisk under bookworm's QEMU 7.2 (TCG), the example
# unikernel as a PVH domU per disk configuration, checked against xenstore.
run: setup
	bash tests/lab/lab.sh run

lab: setup
	bash tests/lab/lab.sh matrix

test: fmt clippy doc unit layout miri lab
	@echo "make test: all stages passed"
