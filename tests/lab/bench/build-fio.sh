#!/usr/bin/env bash
# build-fio.sh: the Linux anchor guest of the in-guest benchmark, cached as
#   $LAB_CACHE/fio.cpio   an uncompressed newc initramfs for dom0's own kernel
#                         booted as a PV domU: busybox, fio and exactly the
#                         shared libraries it needs, xenstore-read/-list/
#                         -write/-watch,
#                         xen-blkfront.ko, and
#                         tests/lab/bench/fio-init.sh as /init.
# Everything comes from Debian's packages: fio and its libraries are taken
# from a minimal root debootstrapped with `--include=fio,xenstore-utils` ($LAB_CACHE/fio-root,
# about a minute the first time), the kernel module from the host's
# linux-image-amd64 (the kernel the guest boots). Rebuilt only when the stamp
# key (fio's candidate version, the kernel, this script and fio-init.sh)
# changes. Needs root (debootstrap). Never binds the host's /dev.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
BENCH_DIR=$LAB_DIR/bench

[[ $(id -u) == 0 ]] || die "build-fio.sh needs root (debootstrap)"
command -v debootstrap >/dev/null || die "debootstrap missing: run tests/setup.sh"
command -v busybox >/dev/null || die "busybox-static missing: run tests/setup.sh"
# The anchor guest boots dom0's kernel ($LAB_CACHE/vmlinuz) with the host's
# module of that kernel: only a generation whose dom0 kernel is the host's.
[[ $LAB_DOM0_KERNEL == host ]] ||
    die "the bench's Linux guest needs the host's kernel as dom0's: XENBLK_LAB_XEN=4.17, or XENBLK_LAB_DOM0_KERNEL=host"
KREL=$(kernel_release) || die "linux-image-amd64 not installed: run tests/setup.sh"
mkdir -p "$LAB_CACHE"
devnull_guard || true

candidate() { apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p'; }

# ---- 1. a minimal root with fio (debootstrap resolves its libraries) --------
ROOT=$LAB_CACHE/fio-root
key="fio=$(candidate fio) xenstore-utils=$(candidate xenstore-utils) $LAB_SUITE $LAB_MIRROR"
if stamp_ok fio-root "$key"; then
    say "fio root: cached ($ROOT)"
else
    say "fio root: debootstrap --variant=minbase --include=fio,xenstore-utils $LAB_SUITE (about a minute)"
    rm -rf "$ROOT.tmp"
    unshare -m --propagation private \
        debootstrap --variant=minbase --include=fio,xenstore-utils "$LAB_SUITE" "$ROOT.tmp" "$LAB_MIRROR" \
        >"$LAB_CACHE/fio-debootstrap.log" 2>&1 ||
        { tail -30 "$LAB_CACHE/fio-debootstrap.log" >&2; die "debootstrap failed (log: $LAB_CACHE/fio-debootstrap.log)"; }
    devnull_guard || true
    rm -rf "$ROOT"
    mv "$ROOT.tmp" "$ROOT"
    stamp_set fio-root "$key" "$ROOT"
    say "fio root: done ($(chroot "$ROOT" fio --version))"
fi

# ---- 2. the initramfs ---------------------------------------------------------
key="$(sed -n 1p "$LAB_CACHE/stamps/fio-root" | sha256sum | cut -c1-16) $KREL $(pkgver busybox-static) $(hash_of "$0" "$BENCH_DIR/fio-init.sh")"
if stamp_ok fio "$key"; then
    say "fio.cpio: cached ($(stat -c %s "$LAB_CACHE/fio.cpio") bytes)"
    exit 0
fi
S=$LAB_CACHE/fio.tmp
rm -rf "$S"
mkdir -p "$S"/{bin,dev,proc,sys,tmp,lib64}
install -m 0755 "$(command -v busybox)" "$S/bin/busybox"
install -m 0755 "$BENCH_DIR/fio-init.sh" "$S/init"
cp "/lib/modules/$KREL/kernel/drivers/block/xen-blkfront.ko" "$S/"
BINS="fio xenstore-read xenstore-list xenstore-write xenstore-watch"
: >"$LAB_CACHE/fio-libs.txt"
for b in $BINS; do
    cp -L "$ROOT/usr/bin/$b" "$S/bin/$b"
    # The closure of its DT_NEEDED libraries, resolved inside the fio root by
    # the root's own dynamic loader (`ld.so --list`), copied to the same paths.
    chroot "$ROOT" /lib64/ld-linux-x86-64.so.2 --list "/usr/bin/$b" >>"$LAB_CACHE/fio-libs.txt" ||
        die "could not list the libraries of $b"
done
n=0
while read -r path; do
    [[ -n $path ]] || continue
    mkdir -p "$S$(dirname "$path")"
    cp -L "$ROOT$path" "$S$path"
    n=$((n + 1))
done < <(awk '/=> \// { print $3 } /^\t\/[^ ]+ \(/ { print $1 }' "$LAB_CACHE/fio-libs.txt" | sort -u)
grep -q 'not found' "$LAB_CACHE/fio-libs.txt" && die "fio has unresolved libraries: $LAB_CACHE/fio-libs.txt"
[[ -f $S/lib64/ld-linux-x86-64.so.2 ]] || cp -L "$ROOT/lib64/ld-linux-x86-64.so.2" "$S/lib64/"
# The same kernel and loader check the closure on the host: fio must start.
chroot "$S" /bin/fio --version >/dev/null || die "fio does not run from the initramfs tree"
mknod -m 600 "$S/dev/console" c 5 1
(cd "$S" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) >"$LAB_CACHE/fio.cpio.tmp"
mv "$LAB_CACHE/fio.cpio.tmp" "$LAB_CACHE/fio.cpio"
rm -rf "$S"
stamp_set fio "$key" "$LAB_CACHE/fio.cpio"
say "fio.cpio: done, fio + $n libraries ($(stat -c %s "$LAB_CACHE/fio.cpio") bytes)"
devnull_guard || true
