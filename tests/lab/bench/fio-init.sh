#!/bin/busybox sh
# /init of the Linux anchor guest of the in-guest benchmark (built into
# fio.cpio by build-fio.sh): dom0's own Debian kernel booted as a PV (or PVH) domU,
# Linux's xen-blkfront with its default module parameters, and fio.
#
# Command line (after the kernel's own words): `bench [secs=<s>] [ramp=<s>]
# [serve]`. Per virtual disk, in `device/vbd` order, the three jobs of the
# unikernel's bench mode (unikernel/src/modes/bench.rs), with fio:
#   4k-qd1   --rw=randread --bs=4k --iodepth=1
#   4k-qd32  --rw=randread --bs=4k --iodepth=32
#   1m-seq   --rw=read     --bs=1m --iodepth=1
# all with --ioengine=libaio --direct=1 --time_based --runtime=<secs>
# --ramp_time=<ramp> --norandommap --randrepeat=1. Lines (to hvc0, the PV
# console, which xenconsoled logs in dom0):
#   linux-disk vdev=<n> dev=<xvdX> backend=<phy|qdisk> <what was negotiated>
#   linux-bench vdev=<n> backend=<..> job=<..> iops=<n> mbps=<n.nn> ops=<n> ns=<n> qd=<n> bs=<n>
#   linux-fio vdev=<n> job=<..> terse=<fio's terse v3 line>
# and the closing line `xenblk: N passed, M failed` (one check per job),
# then it powers off.
# With `serve` the jobs are not run in a row but as dom0 hands them out, one
# at a time, like the unikernel's `bench serve`: the guest writes
# data/bench-ready=1, then for each new `<seq> run <vdev> <job>` in
# data/bench-cmd runs that job, prints its `linux-bench seq=<seq> ...` line,
# writes the same fields to data/bench-result and <seq> to data/bench-done;
# `<seq> quit` ends it (tests/lab/bench/serve.sh).
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /tmp
exec >/dev/hvc0 2>&1
SECS=8 RAMP=1 SERVE=0
for w in $(cat /proc/cmdline); do
    case $w in
    secs=*) SECS=${w#secs=} ;;
    ramp=*) RAMP=${w#ramp=} ;;
    serve) SERVE=1 ;;
    esac
done
echo "xenblk-unikernel: mode=bench cmdline=\"bench secs=$SECS ramp=$RAMP\" (Linux anchor: xen-blkfront + $(fio --version))"
echo "linux-guest kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo) mem-kib=$(awk '/MemTotal/ { print $2 }' /proc/meminfo)"
pass=0 fail=0
xsr() { xenstore-read "$1" 2>/dev/null; }
insmod /xen-blkfront.ko || { echo "linux-bench: FAIL insmod xen-blkfront"; fail=$((fail + 1)); }
for p in /sys/module/xen_blkfront/parameters/*; do
    [ -f "$p" ] && echo "linux-blkfront-param $(basename "$p")=$(cat "$p")"
done

# run_job VDEV DEV BACKEND JOB [SEQ]: one fio job; prints the linux-bench line
# (and leaves its fields in $RESULT), counts the check.
run_job() {
    v=$1 dev=$2 typ=$3 job=$4 sq=${5:+seq=$5 }
    case $job in
    4k-qd1) rw=randread bs=4096 qd=1 ;;
    4k-qd32) rw=randread bs=4096 qd=32 ;;
    1m-seq) rw=read bs=1048576 qd=1 ;;
    *)
        echo "linux-bench ${sq}vdev=$v job=$job: FAIL unknown job"
        RESULT="${sq}vdev=$v error=unknown-job"
        fail=$((fail + 1))
        return
        ;;
    esac
    fio --name="$job" --filename="/dev/$dev" --rw=$rw --bs=$bs --iodepth=$qd \
        --ioengine=libaio --direct=1 --time_based --runtime="$SECS" --ramp_time="$RAMP" \
        --norandommap --randrepeat=1 --output-format=terse --terse-version=3 \
        >/tmp/fio.out 2>/tmp/fio.err
    rc=$?
    line=$(grep "^3;" /tmp/fio.out | head -n1)
    echo "linux-fio vdev=$v job=$job rc=$rc terse=$line"
    # terse v3: 6 read KiB, 7 read KiB/s, 8 read IOPS, 9 read runtime (ms), 5 error
    set -- $(echo "$line" | awk -F';' '{ print $5, $6, $9 }')
    err=${1:-x} kib=${2:-0} ms=${3:-0}
    if [ "$rc" = 0 ] && [ "$err" = 0 ] && [ "$ms" -gt 0 ] 2>/dev/null; then
        RESULT=$(awk -v s="$sq" -v v="$v" -v t="$typ" -v j="$job" -v kib="$kib" -v ms="$ms" -v bs="$bs" -v qd="$qd" 'BEGIN {
            ops = kib * 1024 / bs; ns = ms * 1000000
            printf "%svdev=%s backend=%s job=%s iops=%.0f mbps=%.2f ops=%.0f ns=%.0f qd=%d bs=%d\n",
                s, v, t, j, ops * 1e9 / ns, kib * 1024 * 1e3 / ns, ops, ns, qd, bs }')
        echo "linux-bench $RESULT"
        pass=$((pass + 1))
    else
        echo "linux-bench ${sq}vdev=$v backend=$typ job=$job: FAIL rc=$rc error=$err"
        RESULT="${sq}vdev=$v backend=$typ job=$job error=fio-rc-$rc-err-$err"
        sed 's/^/linux-fio-err: /' /tmp/fio.err | head -n 5
        fail=$((fail + 1))
    fi
}

# Every disk: its block device and backend type, in DISKS as vdev:dev:type.
DISKS=
for v in $(xenstore-list device/vbd 2>/dev/null); do
    fe=device/vbd/$v
    be=$(xsr "$fe/backend")
    typ=$(xsr "$be/type")
    dev=
    i=0
    while [ $i -lt 150 ]; do
        dev=$(grep -l "^202:$((v - 51712))\$" /sys/block/*/dev 2>/dev/null | cut -d/ -f4)
        [ -n "$dev" ] && [ -b "/dev/$dev" ] && break
        sleep 0.2
        i=$((i + 1))
    done
    if [ -z "$dev" ] || [ ! -b "/dev/$dev" ]; then
        echo "linux-bench vdev=$v: FAIL no block device (backend $be state $(xsr "$be/state"))"
        fail=$((fail + 3))
        continue
    fi
    q=/sys/block/$dev/queue
    echo "linux-disk vdev=$v dev=$dev backend=$typ sectors=$(cat /sys/block/$dev/size)" \
        "ring-page-order=$(xsr "$fe/ring-page-order")" \
        "queues=$(xsr "$fe/multi-queue-num-queues")" \
        "persistent=$(xsr "$fe/feature-persistent")/$(xsr "$be/feature-persistent")" \
        "backend-indirect=$(xsr "$be/feature-max-indirect-segments")" \
        "max-sectors-kb=$(cat $q/max_sectors_kb) max-segments=$(cat $q/max_segments)" \
        "nr-requests=$(cat $q/nr_requests) scheduler=$(cat $q/scheduler | tr ' ' ,)"
    DISKS="$DISKS $v:$dev:$typ"
done

if [ "$SERVE" = 1 ]; then
    # Jobs from dom0, one at a time (tests/lab/bench/serve.sh). The watch
    # only shortens the wait: the key is read again at least every second.
    xenstore-write data/bench-ready 1 || { echo "linux-bench: FAIL xenstore-write data/bench-ready"; fail=$((fail + 1)); }
    echo "linux-guest: bench serving jobs from data/bench-cmd"
    last=0 served=0 idle=0
    while :; do
        cmd=$(xsr data/bench-cmd)
        set -- $cmd
        seq=${1:-0}
        case $seq in '' | *[!0-9]*) seq=0 ;; esac
        if [ "$seq" -le "$last" ]; then
            idle=$((idle + 1))
            # about 15 minutes without a command: give up
            if [ $idle -gt 900 ]; then
                echo "linux-bench: FAIL no command for 15 minutes"
                fail=$((fail + 1))
                break
            fi
            timeout 1 xenstore-watch -n 2 data/bench-cmd >/dev/null 2>&1
            continue
        fi
        idle=0 last=$seq
        if [ "$2" = quit ] && [ $# = 2 ]; then
            echo "linux-guest: bench served $served job(s); quit (seq=$seq)"
            xenstore-write data/bench-result "seq=$seq quit=1" data/bench-done "$seq"
            break
        fi
        RESULT="seq=$seq error=bad-command"
        if [ "$2" = run ] && [ $# = 4 ]; then
            v=$3 job=$4 found=
            for d in $DISKS; do
                [ "${d%%:*}" = "$v" ] && found=$d
            done
            if [ -n "$found" ]; then
                rest=${found#*:}
                run_job "$v" "${rest%%:*}" "${rest#*:}" "$job" "$seq"
                served=$((served + 1))
            else
                echo "linux-bench seq=$seq vdev=$v: FAIL no such disk"
                RESULT="seq=$seq vdev=$v error=no-such-disk"
                fail=$((fail + 1))
            fi
        else
            echo "linux-bench seq=$seq: FAIL bad command \"$cmd\""
            fail=$((fail + 1))
        fi
        xenstore-write data/bench-result "$RESULT" data/bench-done "$seq"
    done
else
    for d in $DISKS; do
        v=${d%%:*} rest=${d#*:}
        for job in 4k-qd1 4k-qd32 1m-seq; do
            run_job "$v" "${rest%%:*}" "${rest#*:}" "$job"
        done
    done
fi
echo "xenblk: $pass passed, $fail failed"
sync
poweroff -f
