#!/bin/sh
# The in-guest benchmark's job in dom0 (/lab/job.sh; stage.sh put it in place
# of the lab's own job). It sets up the two backends every guest of
# bench/matrix.txt gets, then hands over to serve.sh (/lab/serve.sh), which
# boots every guest at once, alternates them job by job and dumps their
# console logs and xenstore directories into the serial log.
#   blkback: null_blk, 1 GiB, blk-mq, completions inline, no data kept
#            (reads cost no copy and no media: the backend and the ring
#            protocol are what is measured);
#   qdisk:   a sparse 1 GiB file in tmpfs (reads of holes: a page-cache
#            lookup and a copy in QEMU).
for d in /usr/lib/xen-[0-9]*/bin; do PATH=$d; done  # the root's Xen release
PATH=$PATH:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
[ -f /lab/run.conf ] && . /lab/run.conf
GUESTS=${BENCH_GUESTS:-1}
NULLB_ARGS="nr_devices=$GUESTS gb=1 bs=512 queue_mode=2 irqmode=0 memory_backed=0"
echo "LAB bench setup: null_blk $NULLB_ARGS, qdisk files 1 GiB sparse, one of each per guest, secs=${BENCH_SECS:-?} ramp=${BENCH_RAMP:-?} rounds=${BENCH_ROUNDS:-?}"
modprobe -r null_blk 2>/dev/null
# shellcheck disable=SC2086
modprobe null_blk $NULLB_ARGS || echo "LAB bench: modprobe null_blk FAILED"
i=0
while [ ! -b /dev/nullb$((GUESTS - 1)) ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
mkdir -p /run/bench
g=0
while [ $g -lt "$GUESTS" ]; do
    [ -b /dev/nullb$g ] || echo "LAB bench: /dev/nullb$g missing"
    truncate -s 1G /run/bench/qdisk$g.img
    g=$((g + 1))
done
echo "LAB bench nullb0 size=$(cat /sys/block/nullb0/size 2>/dev/null) sched=$(cat /sys/block/nullb0/queue/scheduler 2>/dev/null | tr ' ' ,)" \
    "params=$(for p in queue_mode irqmode memory_backed gb bs hw_queue_depth submit_queues; do
        printf '%s:%s,' "$p" "$(cat /sys/module/null_blk/parameters/$p 2>/dev/null)"; done)"
echo "LAB bench dom0 cpus=$(grep -c ^processor /proc/cpuinfo) blkback=$(for p in /sys/module/xen_blkback/parameters/*; do
    printf '%s:%s,' "$(basename "$p")" "$(cat "$p")"; done)"
exec /lab/serve.sh
