#!/usr/bin/env bash
# Builds (and caches) what the real-Xen lab boots for one generation
# (XENBLK_LAB_XEN, lib.sh), all from Debian packages, in $LAB_CACHE
# (~/.cache/xenblk/xen-<gen>):
#   xen.elf      Xen, gunzipped from xen-hypervisor-<gen>-amd64: the host's
#                package for 4.17, trixie's (apt-get download through the
#                generation's private apt state, lib.sh) for 4.20
#   vmlinuz      dom0's kernel, from linux-image-amd64: the host's (6.1) or the
#                suite's (trixie: 6.12, unpacked into kernel/)
#   dom0.cpio    dom0's root: debootstrap minbase of the generation's suite +
#                the Xen tools, the kernel's Xen/block modules and our /init,
#                as an UNCOMPRESSED newc cpio (fastest to unpack under TCG)
# Each product is rebuilt only when its stamp key (package versions + content
# hashes of the scripts it comes from) changes. Needs root (debootstrap).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[[ $(id -u) == 0 ]] || die "build.sh needs root (debootstrap, mknod)"
mkdir -p "$LAB_CACHE"
devnull_guard || true
say "generation Xen $LAB_GEN: Debian $LAB_SUITE, hypervisor from the $LAB_HYP package, dom0 kernel from the $LAB_DOM0_KERNEL's linux-image-amd64 (cache $LAB_CACHE)"
[[ $LAB_SUITE == bookworm && $LAB_HYP == host && $LAB_DOM0_KERNEL == host ]] || suite_apt_update

# suite_deb PKG DIR: PKG's candidate from the suite, downloaded (private apt
# state) and unpacked into DIR (emptied first).
suite_deb() {
    local d=$LAB_CACHE/debs
    rm -rf "$d" "$2"
    mkdir -p "$d" "$2"
    (cd "$d" && suite_apt apt-get download -qq "$1" >"$LAB_CACHE/download.log" 2>&1) ||
        { tail -20 "$LAB_CACHE/download.log" >&2; die "apt-get download $1 ($LAB_SUITE) failed"; }
    dpkg-deb -x "$d"/*.deb "$2"
    rm -rf "$d"
}

# ---- 1. the hypervisor -------------------------------------------------------
if [[ $LAB_HYP == host ]]; then
    XEN_GZ=/boot/xen-$LAB_XEN-amd64.gz
    [[ -f $XEN_GZ ]] || die "$XEN_GZ missing: run tests/setup.sh (xen-hypervisor-$LAB_XEN-amd64)"
    key="$(pkgver xen-hypervisor-$LAB_XEN-amd64)"
else
    key="$LAB_SUITE $(candidate xen-hypervisor-$LAB_XEN-amd64)"
    [[ $key != "$LAB_SUITE " ]] || die "$LAB_SUITE offers no xen-hypervisor-$LAB_XEN-amd64"
fi
if stamp_ok xen "$key"; then
    say "xen.elf: cached (xen-hypervisor $key)"
else
    if [[ $LAB_HYP != host ]]; then
        say "xen.elf: apt-get download xen-hypervisor-$LAB_XEN-amd64 ($key)"
        suite_deb "xen-hypervisor-$LAB_XEN-amd64" "$LAB_CACHE/hyp"
        XEN_GZ=$LAB_CACHE/hyp/boot/xen-$LAB_XEN-amd64.gz
        [[ -f $XEN_GZ ]] || die "the package has no /boot/xen-$LAB_XEN-amd64.gz"
    fi
    say "xen.elf: gunzip $XEN_GZ"
    gunzip -c "$XEN_GZ" >"$LAB_CACHE/xen.elf.tmp"
    mv "$LAB_CACHE/xen.elf.tmp" "$LAB_CACHE/xen.elf"
    rm -rf "$LAB_CACHE/hyp"
    stamp_set xen "$key" "$LAB_CACHE/xen.elf"
    say "xen.elf: done ($(stat -c %s "$LAB_CACHE/xen.elf") bytes)"
fi

# ---- 2. dom0's kernel --------------------------------------------------------
# KREL: its release; KDIR: a tree with boot/vmlinuz-KREL and its modules.
if [[ $LAB_DOM0_KERNEL == host ]]; then
    KREL=$(kernel_release) || die "linux-image-amd64 not installed: run tests/setup.sh"
    KDIR=
    key="$KREL $(pkgver "linux-image-$KREL")"
else
    KREL=$(suite_apt apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
        sed -n 's/^Depends: linux-image-\([^ ,]*\).*/\1/p' | head -n1)
    [[ -n $KREL ]] || die "$LAB_SUITE's linux-image-amd64 names no kernel"
    KDIR=$LAB_CACHE/kernel
    key="$LAB_SUITE $KREL $(candidate "linux-image-$KREL")"
fi
if stamp_ok vmlinuz "$key" && [[ -f $LAB_CACHE/vmlinuz ]]; then
    say "vmlinuz: cached ($key)"
else
    if [[ -n $KDIR ]]; then
        say "vmlinuz: apt-get download linux-image-$KREL ($LAB_SUITE)"
        suite_deb "linux-image-$KREL" "$KDIR"
    fi
    [[ -f $KDIR/boot/vmlinuz-$KREL ]] || die "kernel $KREL: no $KDIR/boot/vmlinuz-$KREL"
    cp "$KDIR/boot/vmlinuz-$KREL" "$LAB_CACHE/vmlinuz"
    # the stamp's output is the kernel tree's vmlinuz: no tree, no cache
    stamp_set vmlinuz "$key" "$KDIR/boot/vmlinuz-$KREL"
    say "vmlinuz: copied $KDIR/boot/vmlinuz-$KREL"
fi
# the kernel's modules (merged-/usr trees have them under usr/lib/modules)
KMOD=$KDIR/lib/modules/$KREL
[[ -d $KMOD ]] || KMOD=$KDIR/usr/lib/modules/$KREL
[[ -d $KMOD ]] || die "kernel $KREL: no modules under $KDIR/lib/modules or $KDIR/usr/lib/modules"

# ---- 3. dom0's base root (debootstrap + dist-upgrade, by mkroot.sh) ---------
# Keyed on the versions the registry offers for the Xen tools and the device
# model (the suite's lists) and on mkroot.sh itself.
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
key="$(sed -n 1p "$LAB_CACHE/stamps/root" | sha256sum | cut -c1-16) $(sed -n 1p "$LAB_CACHE/stamps/vmlinuz" | sha256sum | cut -c1-16) $(hash_of "$0" "$LAB_DIR/lib.sh" "$LAB_DIR/dom0-init.sh")"
if stamp_ok cpio "$key"; then
    say "dom0.cpio: cached ($(stat -c %s "$LAB_CACHE/dom0.cpio") bytes)"
else
    say "dom0.cpio: modules of $KREL (drivers/xen, drivers/block, configfs), depmod, /init"
    rm -rf "$BASE/lib/modules" "$BASE/usr/lib/modules"
    M=$BASE/lib/modules/$KREL
    mkdir -p "$M/kernel/drivers" "$M/kernel/fs"
    cp -a "$KMOD/kernel/drivers/xen" "$KMOD/kernel/drivers/block" "$M/kernel/drivers/"
    # configfs (null_blk's configuration) is built in on some kernels
    [[ -d $KMOD/kernel/fs/configfs ]] && cp -a "$KMOD/kernel/fs/configfs" "$M/kernel/fs/"
    cp -a "$KMOD"/modules.{order,builtin,builtin.modinfo} "$M/"
    # the root's own depmod: it knows the module compression of its suite
    chroot "$BASE" depmod "$KREL"
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
key="$(sed -n 1p "$LAB_CACHE/stamps/root" | sha256sum | cut -c1-16) $(sed -n 1p "$LAB_CACHE/stamps/vmlinuz" | sha256sum | cut -c1-16) $(pkgver busybox-static) $(hash_of "$0" "$LAB_DIR/standin-init.sh")"
if stamp_ok standin "$key"; then
    say "standin.cpio: cached"
else
    command -v busybox >/dev/null || die "busybox-static missing: run tests/setup.sh"
    S="$LAB_CACHE/standin.tmp"
    rm -rf "$S"
    mkdir -p "$S"/{bin,dev,proc,sys,tmp,lib64,lib/x86_64-linux-gnu}
    install -m 0755 "$(command -v busybox)" "$S/bin/busybox"
    install -m 0755 "$LAB_DIR/standin-init.sh" "$S/init"
    # busybox's insmod takes no compressed module (trixie's are .ko.xz)
    f=$KMOD/kernel/drivers/block/xen-blkfront.ko
    if [[ -f $f ]]; then cp "$f" "$S/"; else xz -dc "$f.xz" >"$S/xen-blkfront.ko"; fi
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
