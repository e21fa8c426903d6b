#!/usr/bin/env bash
# Builds (and caches) what the real-Xen lab boots, all from Debian packages:
#   $LAB_CACHE/xen.elf      Xen, gunzipped from xen-hypervisor-4.17-amd64
#   $LAB_CACHE/vmlinuz      dom0's kernel, from linux-image-amd64
#   $LAB_CACHE/dom0.cpio    dom0's root: debootstrap minbase + the Xen tools,
#                           the kernel's Xen/block modules and our /init, as an
#                           UNCOMPRESSED newc cpio (fastest to unpack under TCG)
# Each product is rebuilt only when its stamp key (package versions + content
# hashes of the scripts it comes from) changes. Needs root (debootstrap).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[[ $(id -u) == 0 ]] || die "build.sh needs root (debootstrap, mknod)"
mkdir -p "$LAB_CACHE"
devnull_guard || true

XEN_GZ=/boot/xen-$LAB_XEN-amd64.gz
[[ -f $XEN_GZ ]] || die "$XEN_GZ missing: run tests/setup.sh (xen-hypervisor-$LAB_XEN-amd64)"
KREL=$(kernel_release) || die "linux-image-amd64 not installed: run tests/setup.sh"
[[ -f /boot/vmlinuz-$KREL && -d /lib/modules/$KREL ]] || die "kernel $KREL incomplete"

# ---- 1. the hypervisor -------------------------------------------------------
key="$(pkgver xen-hypervisor-$LAB_XEN-amd64)"
if stamp_ok xen "$key"; then
    say "xen.elf: cached (xen-hypervisor $key)"
else
    say "xen.elf: gunzip $XEN_GZ"
    gunzip -c "$XEN_GZ" >"$LAB_CACHE/xen.elf.tmp"
    mv "$LAB_CACHE/xen.elf.tmp" "$LAB_CACHE/xen.elf"
    stamp_set xen "$key" "$LAB_CACHE/xen.elf"
    say "xen.elf: done ($(stat -c %s "$LAB_CACHE/xen.elf") bytes)"
fi

# ---- 2. dom0's kernel --------------------------------------------------------
key="$KREL $(pkgver "linux-image-$KREL")"
if stamp_ok vmlinuz "$key"; then
    say "vmlinuz: cached ($key)"
else
    cp "/boot/vmlinuz-$KREL" "$LAB_CACHE/vmlinuz"
    stamp_set vmlinuz "$key" "$LAB_CACHE/vmlinuz"
    say "vmlinuz: copied /boot/vmlinuz-$KREL"
fi

# ---- 3. dom0's base root (debootstrap + dist-upgrade, by mkroot.sh) ---------
# Keyed on the versions the registry offers for the Xen tools and the device
# model (from the host's apt lists) and on mkroot.sh itself.
candidate() { apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p'; }
BASE="$LAB_CACHE/root"
key="xen-utils=$(candidate xen-utils-$LAB_XEN) qemu-xen=$(candidate qemu-system-xen) $LAB_SUITE $LAB_MIRROR $LAB_SECURITY $(hash_of "$LAB_DIR/mkroot.sh")"
if stamp_ok root "$key"; then
    say "dom0 root: cached ($BASE)"
else
    rm -rf "$BASE.tmp"
    bash "$LAB_DIR/mkroot.sh" "$BASE.tmp"
    rm -rf "$BASE"
    mv "$BASE.tmp" "$BASE"
    stamp_set root "$key" "$BASE"
    say "dom0 root: done ($(du -sm "$BASE" | cut -f1) MB)"
fi

# ---- 4. dom0.cpio: base root + kernel modules + /init ------------------------
key="$(sed -n 1p "$LAB_CACHE/stamps/root" | sha256sum | cut -c1-16) $KREL $(hash_of "$0" "$LAB_DIR/lib.sh" "$LAB_DIR/dom0-init.sh")"
if stamp_ok cpio "$key"; then
    say "dom0.cpio: cached ($(stat -c %s "$LAB_CACHE/dom0.cpio") bytes)"
else
    say "dom0.cpio: modules of $KREL (drivers/xen, drivers/block, configfs), depmod, /init"
    rm -rf "$BASE/lib/modules"
    mkdir -p "$BASE/lib/modules/$KREL/kernel/drivers" "$BASE/lib/modules/$KREL/kernel/fs"
    cp -a "/lib/modules/$KREL/kernel/drivers/xen" "/lib/modules/$KREL/kernel/drivers/block" \
        "$BASE/lib/modules/$KREL/kernel/drivers/"
    cp -a "/lib/modules/$KREL/kernel/fs/configfs" "$BASE/lib/modules/$KREL/kernel/fs/"
    cp -a "/lib/modules/$KREL"/modules.{order,builtin,builtin.modinfo} "$BASE/lib/modules/$KREL/"
    depmod -b "$BASE" "$KREL"
    install -m 0755 "$LAB_DIR/dom0-init.sh" "$BASE/init"
    say "dom0.cpio: packing $(du -sm "$BASE" | cut -f1) MB"
    (cd "$BASE" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) >"$LAB_CACHE/dom0.cpio.tmp"
    mv "$LAB_CACHE/dom0.cpio.tmp" "$LAB_CACHE/dom0.cpio"
    stamp_set cpio "$key" "$LAB_CACHE/dom0.cpio"
    say "dom0.cpio: done ($(stat -c %s "$LAB_CACHE/dom0.cpio") bytes)"
fi

# ---- 5. the stand-in guest's initramfs ----------------------------------------
# dom0's own kernel as a PV domU with a busybox /init that speaks docs/LINES.md
# through Linux's blkfront (tests/lab/standin-init.sh): proves the pipeline
# without the unikernel.
key="$(sed -n 1p "$LAB_CACHE/stamps/root" | sha256sum | cut -c1-16) $KREL $(pkgver busybox-static) $(hash_of "$0" "$LAB_DIR/standin-init.sh")"
if stamp_ok standin "$key"; then
    say "standin.cpio: cached"
else
    command -v busybox >/dev/null || die "busybox-static missing: run tests/setup.sh"
    S="$LAB_CACHE/standin.tmp"
    rm -rf "$S"
    mkdir -p "$S"/{bin,dev,proc,sys,tmp,lib64,lib/x86_64-linux-gnu}
    install -m 0755 "$(command -v busybox)" "$S/bin/busybox"
    install -m 0755 "$LAB_DIR/standin-init.sh" "$S/init"
    cp "/lib/modules/$KREL/kernel/drivers/block/xen-blkfront.ko" "$S/"
    # Debian's busybox-static has no cksum applet: take coreutils' (libc only).
    for t in xenstore-read xenstore-list xenstore-ls cksum; do
        cp "$BASE/usr/bin/$t" "$S/bin/$t"
    done
    for l in libxenstore.so.4 libxentoolcore.so.1 libc.so.6; do
        cp -L "$BASE/lib/x86_64-linux-gnu/$l" "$S/lib/x86_64-linux-gnu/"
    done
    cp -L "$BASE/lib64/ld-linux-x86-64.so.2" "$S/lib64/"
    mknod -m 600 "$S/dev/console" c 5 1
    (cd "$S" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) >"$LAB_CACHE/standin.cpio"
    rm -rf "$S"
    stamp_set standin "$key" "$LAB_CACHE/standin.cpio"
    say "standin.cpio: done ($(stat -c %s "$LAB_CACHE/standin.cpio") bytes)"
fi

devnull_guard || true
if [[ ${LAB_DEVNULL_REPAIRED:-0} == 1 ]]; then
    say "!!! the host's /dev/null was broken during this build and has been REPAIRED !!!"
fi
say "build: done (cache $LAB_CACHE)"
