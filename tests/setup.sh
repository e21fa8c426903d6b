#!/usr/bin/env bash
# Installs everything `make test` and `make run` need on a fresh Debian 12
# machine. Idempotent: each step checks before it installs, so a warm machine
# pays a few seconds.
set -euo pipefail

say() { printf '[setup] %s\n' "$*" >&2; }

# gcc + libc6-dev: the linker of every Rust build, the C side of the ABI check
# and of the ring benchmark; python3: the lab's and the benchmarks' parsers.
# e2fsprogs: mke2fs makes the ext4 image of tests/ext4.rs.
APT_PKGS=(libxen-dev valgrind gcc libc6-dev python3 e2fsprogs)
if [[ "${XENBLK_SETUP_LAB:-1}" == 1 ]]; then
    # The real-Xen lab: hypervisor, dom0 kernel, the outer emulator (bookworm's
    # own QEMU 7.2, not backports: see docs/LAB.md), and the dom0 root builder.
    # Generation 4.17 boots the host's Xen and kernel; generation 4.20 takes
    # its hypervisor, kernel and root from Debian 13 (trixie) through the lab's
    # private apt state (tests/lab/lib.sh), which needs only the archive
    # keyring (trixie's keys) and xz (trixie's kernel modules are .ko.xz).
    APT_PKGS+=(xen-hypervisor-4.17-amd64 linux-image-amd64 qemu-system-x86
               debootstrap cpio busybox-static debian-archive-keyring xz-utils)
fi

qemu72() { qemu-system-x86_64 --version 2>/dev/null | grep -q 'version 7\.2\.'; }
missing=()
for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [[ "${XENBLK_SETUP_LAB:-1}" == 1 ]] && ! qemu72 && [[ " ${missing[*]} " != *" qemu-system-x86 "* ]]; then
    missing+=(qemu-system-x86)
fi
if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    sel=()
    for p in "${missing[@]}"; do
        if [[ $p == qemu-system-x86 ]]; then
            # bookworm's QEMU 7.2: QEMU 10 from backports breaks nested SVM
            # for PVH guests. The machine's qemu-utils from backports Breaks
            # qemu-system-common << 8, so it is taken back to bookworm's too.
            # (Not `-t bookworm` for everything: that would prefer bookworm's
            # Xen 4.17.5 over bookworm-security's 4.17.7, which dom0's tools
            # come from.)
            sel+=(qemu-system-x86/bookworm qemu-system-common/bookworm qemu-system-data/bookworm)
            dpkg-query -W qemu-utils >/dev/null 2>&1 && sel+=(qemu-utils/bookworm)
        else
            sel+=("$p")
        fi
    done
    apt-get install -y -qq --no-install-recommends --allow-downgrades "${sel[@]}" >/dev/null
fi
if [[ "${XENBLK_SETUP_LAB:-1}" == 1 ]] && ! qemu72; then
    say "qemu-system-x86_64 is not bookworm's 7.2: $(qemu-system-x86_64 --version | head -n1)"
    exit 1
fi

# trixie's archive key: in bookworm's debian-archive-keyring since
# 2023.3+deb12u1; an older one is upgraded.
# (The key's user id is plain text in the keyring file.)
if [[ "${XENBLK_SETUP_LAB:-1}" == 1 ]] && ! grep -qa '(13/trixie)' /usr/share/keyrings/debian-archive-keyring.gpg; then
    say "upgrading debian-archive-keyring (no trixie key)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debian-archive-keyring >/dev/null
fi

if ! test -c /dev/null; then
    say "repairing /dev/null (it is not a character device)"
    rm -f /dev/null && mknod -m 666 /dev/null c 1 3
fi

say "checking Rust toolchains and components"
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup target list --installed | grep -q '^x86_64-unknown-none$' || rustup target add x86_64-unknown-none
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
have_nightly_component() { rustup component list --installed --toolchain nightly 2>/dev/null | grep -q "^$1"; }
have_nightly_component miri || rustup component add miri --toolchain nightly
have_nightly_component rust-src || rustup component add rust-src --toolchain nightly
# The declared minimum Rust version (Cargo.toml's rust-version), which
# `make msrv` builds with, for the host and the guest target.
msrv=$(sed -n 's/^rust-version = "\(.*\)"$/\1/p' Cargo.toml)
if ! rustup toolchain list | grep -q "^$msrv-"; then
    say "installing Rust $msrv (the declared minimum)"
    rustup toolchain install "$msrv" --profile minimal
fi
rustup target list --installed --toolchain "$msrv" | grep -q '^x86_64-unknown-none$' ||
    rustup target add --toolchain "$msrv" x86_64-unknown-none
# Fuzzing (make fuzz, fuzz-smoke): cargo-fuzz from crates.io.
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
say "done"
