#!/bin/busybox sh
# Stand-in guest for the lab (used until the example unikernel is built, and
# selectable with XENBLK_LAB_GUEST=standin): dom0's own Linux kernel booted as
# a PV domU with this /init. It speaks the unikernel's line protocol
# (docs/LINES.md) using Linux's blkfront and the xenstore tools, so the whole lab
# pipeline (xl create, xenstore dumps, log splitting, dom0 cksums, checker)
# can be proven without the unikernel. Lines go to hvc0 (the PV console).
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec >/dev/hvc0 2>&1
CMDLINE=$(cat /proc/cmdline)
MODE=${CMDLINE##* }
echo "xenblk-unikernel: mode=$MODE cmdline=\"$MODE\" (lab stand-in: Linux blkfront)"
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "xenblk-standin: FAIL $*"; }
# in the background: loading it waits for every device to connect
(insmod /xen-blkfront.ko || echo "xenblk-standin: FAIL insmod xen-blkfront") &
xsr() { xenstore-read "$1" 2>/dev/null; }

feat() {  # features= as README defines it: what is in use
    b=$1 f=$2 out=
    if [ "$(xsr "$b/feature-flush-cache")" = 1 ]; then
        out="$out,flush-cache"
        [ "$(xsr "$b/feature-barrier")" = 1 ] && out="$out,barrier-offered"
    elif [ "$(xsr "$b/feature-barrier")" = 1 ]; then
        out="$out,barrier"
    fi
    if [ "$(xsr "$b/feature-discard")" = 1 ]; then
        out="$out,discard"
        [ "$(xsr "$b/discard-secure")" = 1 ] && out="$out,discard-secure"
    fi
    [ "$(xsr "$b/feature-persistent")" = 1 ] && [ "$(xsr "$f/feature-persistent")" = 1 ] && out="$out,persistent"
    v=$(xsr "$b/feature-max-indirect-segments") && [ -n "$v" ] && out="$out,indirect:$v"
    v=$(xsr "$f/ring-page-order") || v=0
    out="$out,ring-order:${v:-0}"
    v=$(xsr "$f/multi-queue-num-queues") || v=1
    out="$out,queues:${v:-1}"
    echo "${out#,}"
}

VDEVS=$(xenstore-list device/vbd 2>/dev/null)
[ -n "$VDEVS" ] || bad "no device/vbd in xenstore"
WRITABLE=
for v in $VDEVS; do
    be=$(xsr "device/vbd/$v/backend")
    i=0
    while [ "$(xsr "$be/state")" != 4 ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i + 1)); done
    bst=$(xsr "$be/state")
    typ=$(xsr "$be/type") dio=$(xsr "$be/direct-io-safe")
    if [ "$bst" = 4 ]; then
        echo "xenblk-disk vdev=$v backend=$be type=$typ sectors=$(xsr "$be/sectors") sector-size=$(xsr "$be/sector-size") mode=$(xsr "$be/mode") direct-io-safe=${dio:-absent} features=$(feat "$be" "device/vbd/$v") connected=yes"
        ok
        [ "$(xsr "$be/mode")" = w ] && WRITABLE="$WRITABLE $v"
        dev=/dev/$(grep -l "^202:$(((v - 51712)))\$" /sys/block/*/dev 2>/dev/null | cut -d/ -f4)
        i=0
        while [ ! -b "$dev" ] && [ $i -lt 50 ]; do
            sleep 0.2; i=$((i + 1))
            dev=/dev/$(grep -l "^202:$(((v - 51712)))\$" /sys/block/*/dev 2>/dev/null | cut -d/ -f4)
        done
        if dd if="$dev" bs=512 count=1 2>/dev/null | grep -q "xenblk-lab image=.* sector=0 "; then ok; else bad "read sector 0 of $dev"; fi
        eval "DEV_$v=$dev"
    else
        cause=backend-stuck
        [ "$typ" = qdisk ] && [ "$dio" = 1 ] && cause=qdisk-direct-io-safe
        echo "xenblk-disk vdev=$v backend=$be type=$typ sectors=$(xsr "$be/sectors") sector-size=$(xsr "$be/sector-size") mode=$(xsr "$be/mode") direct-io-safe=${dio:-absent} features=- connected=no backend-state=$bst cause=$cause"
        [ "$cause" = qdisk-direct-io-safe ] &&
            echo "xenblk-stall vdev=$v: backend stayed in state $bst (Initialising); direct-io-safe=1 was requested from a qdisk backend, which makes QEMU open the image with O_DIRECT and aio=native, and a QEMU built without libaio never connects"
        ok
    fi
done

if [ "$MODE" = verify ]; then
    n=0
    for v in $WRITABLE; do
        eval "dev=\$DEV_$v"
        for sec in 2048 40000; do
            cnt=$((8 + n * 8)); n=$((n + 1))
            head -c $((cnt * 512)) /dev/urandom >/tmp/w
            dd if=/tmp/w of="$dev" bs=512 seek=$sec conv=fsync 2>/dev/null || bad "write $dev@$sec"
            echo 3 >/proc/sys/vm/drop_caches
            dd if="$dev" of=/tmp/r bs=512 skip=$sec count=$cnt iflag=direct 2>/dev/null ||
                dd if="$dev" of=/tmp/r bs=512 skip=$sec count=$cnt 2>/dev/null
            if cmp -s /tmp/w /tmp/r; then ok; else bad "read-back $dev@$sec"; fi
            set -- $(cksum </tmp/w)
            echo "xenblk-verify vdev=$v sector=$sec count=$cnt cksum=$1 bytes=$2"
        done
    done
fi
echo "xenblk: $pass passed, $fail failed"
sync
poweroff -f
