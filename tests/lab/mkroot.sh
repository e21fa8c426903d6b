#!/usr/bin/env bash
# mkroot.sh DIR: dom0's root for the lab, from Debian packages only:
# debootstrap --variant=minbase of the generation's suite (lib.sh: bookworm
# for 4.17, trixie for 4.20) with the Xen tools and the qdisk device model,
# then <suite>-updates + <suite>-security and a dist-upgrade, so that the
# tools match the hypervisor (bookworm: 4.17.7 from bookworm-security; trixie:
# 4.20.4 from trixie-security). dosfstools, mtools and fdisk (sfdisk) make
# and read back the FAT images of the `fs` guests. Called by build.sh, which
# caches the result.
# Never binds the host's /dev into DIR.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
T=${1:?usage: mkroot.sh DIR}
ROOT_PKGS=xen-utils-$LAB_XEN,xenstore-utils,qemu-system-xen,kmod,busybox,util-linux,procps,mount,coreutils,grep,sed,gawk,dosfstools,mtools,fdisk

command -v debootstrap >/dev/null || die "debootstrap missing: run tests/setup.sh"
mkdir -p "$T"
say "dom0 root: debootstrap --variant=minbase $LAB_SUITE (about a minute)"
# A private mount namespace: debootstrap's /proc and /sys mounts in the target
# can neither leak into nor outlive the host's namespace. For minbase as root
# outside a container debootstrap creates /dev nodes with mknod (no binds).
unshare -m --propagation private \
    debootstrap --variant=minbase --include="$ROOT_PKGS" \
    "$LAB_SUITE" "$T" "$LAB_MIRROR" >"$LAB_CACHE/debootstrap.log" 2>&1 \
    || { tail -30 "$LAB_CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $LAB_CACHE/debootstrap.log)"; }
devnull_guard || true
say "dom0 root: debootstrap done; adding $LAB_SUITE-updates and -security, dist-upgrade"
cat >"$T/etc/apt/sources.list" <<SRC
deb $LAB_MIRROR $LAB_SUITE main
deb $LAB_MIRROR $LAB_SUITE-updates main
deb $LAB_SECURITY $LAB_SUITE-security main
SRC
unshare -m --propagation private chroot "$T" /bin/sh -c '
    set -e
    mount -t proc proc /proc
    export DEBIAN_FRONTEND=noninteractive LC_ALL=C
    apt-get update -qq
    apt-get dist-upgrade -y -qq -o Dpkg::Options::=--force-confold
    apt-get clean
    rm -rf /var/lib/apt/lists/*
    umount /proc
' >"$LAB_CACHE/dist-upgrade.log" 2>&1 \
    || { tail -30 "$LAB_CACHE/dist-upgrade.log" >&2; die "dist-upgrade failed (log: $LAB_CACHE/dist-upgrade.log)"; }
devnull_guard || true
tools=$(chroot "$T" dpkg-query -W -f='${Version}' "xen-utils-$LAB_XEN")
if [[ $LAB_HYP == host ]]; then
    hyp=$(pkgver "xen-hypervisor-$LAB_XEN-amd64")
else
    hyp=$(candidate "xen-hypervisor-$LAB_XEN-amd64")
fi
say "dom0 root: xen-utils-$LAB_XEN $tools, hypervisor $hyp"
[[ ${tools%%+*} == "${hyp%%+*}" ]] || say "WARNING: dom0's tools ($tools) do not match the hypervisor ($hyp)"
# Documentation, manuals and locales are dead weight to unpack under TCG.
rm -rf "$T"/usr/share/{doc,man,info,locale}/* "$T"/var/cache/apt/*.bin
[[ -c $T/dev/console && -c $T/dev/null ]] || die "debootstrap left no /dev/console or /dev/null in $T"
[[ ${LAB_DEVNULL_REPAIRED:-0} == 1 ]] && say "!!! the host's /dev/null was REPAIRED during the root build !!!"
exit 0
