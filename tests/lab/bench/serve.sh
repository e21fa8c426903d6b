#!/bin/sh
# The in-guest benchmark's coordinator in dom0 (/lab/serve.sh; bench-job.sh
# hands over to it after setting up the backends). Instead of running the
# guests one after the other, it boots ALL of them (/lab/cfg/*.meta: the
# example unikernel and the Linux anchor, each with `bench ... serve`), waits
# until each has written data/bench-ready, and then hands out the jobs one at
# a time, alternating the guests job by job:
#
#   round 0: a warm-up job per guest and disk, not counted; then
#   for round 1..BENCH_ROUNDS, for each disk (vdev), for each job:
#       every guest in turn (round 1 in config order, round 2 reversed, ...)
#       runs that job on that disk while the others wait in xenstore-watch /
#       SCHEDOP_poll.
#
# So the two runs of a pair are seconds apart, against the same backends in
# the same boot, and neither guest is ever measured while the other works.
# A turn: `<seq> run <vdev> <job>` into the guest's data/bench-cmd; dom0
# sleeps for the job's length, then polls data/bench-done until it reads
# <seq>, and prints
#   LAB bench-turn round=<r> guest=<name> status=<ok|timeout|failed> \
#       secs=<s> <the guest's data/bench-result fields>
# (one line, so the host's boot.sh shows it with its own clock). A guest that
# dies in a turn is booted again, at most BENCH_RESTARTS times, and the turn
# run again (`LAB bench-restart ...`, see restart()). At the end
# `<seq> quit` to every guest, and per guest the lab's usual sections
# (config, xenstore, console, xl-dmesg, dom0-dmesg, RESULT) in the format of
# tests/lab/job.sh, so that tests/lab/check.py can parse them.
for d in /usr/lib/xen-[0-9]*/bin; do PATH=$d; done  # the root's Xen release
PATH=$PATH:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
BENCH_SECS=8
BENCH_RAMP=1
BENCH_ROUNDS=5
BENCH_READY_SECS=240
BENCH_RESTARTS=3
BENCH_KILL_SEQ=     # tests the restart path (XENBLK_BENCH_KILL_SEQ)
[ -f /lab/run.conf ] && . /lab/run.conf
WORK=/run/lab/work
mkdir -p "$WORK"
# Disks every guest has (bench/matrix.txt): xvda on blkback, xvdb on qdisk.
BENCH_VDEVS="51712 51728"
JOBS="4k-qd1 4k-qd32 1m-seq"

. /lab/dom0-lib.sh
later() { awk -v a="$1" -v b="$(now)" -v s="$2" 'BEGIN { exit !(b - a > s) }'; }
alive() {
    case $(domstate "$1") in
    '' | ???s??) return 1 ;;
    esac
    return 0
}
xsr() { xenstore-read "$1" 2>/dev/null; }
# key NAME: NAME as part of a shell variable name.
key() { echo "$1" | tr -c 'A-Za-z0-9\n' '_'; }

echo "LAB job start (dom0 uptime $(up) s): bench serve, rounds=$BENCH_ROUNDS secs=$BENCH_SECS ramp=$BENCH_RAMP"
# create NAME: `xl create` the guest (its config was copied to $WORK).
create() {
    dom=lab-$1
    rm -f "/var/log/xen/console/guest-$dom.log"
    tc=$(now)
    xl create "$WORK/$1.cfg" >"$WORK/$1.create" 2>&1
    rc=$?
    domid=$(xl domid "$dom" 2>/dev/null)
    echo "LAB domU $dom created domid=${domid:-none} rc=$rc in $(since "$tc") s"
    eval "DOMID_$(key "$1")=\${domid:-none} STATUS_$(key "$1")=running"
    [ -n "$domid" ] || eval "STATUS_$(key "$1")=create-failed"
}

# ready NAME: waits until the guest connected its disks and listens.
ready() {
    tw=$(now)
    eval "d=\$DOMID_$(key "$1")"
    [ "$d" = none ] && return
    while [ "$(xsr "/local/domain/$d/data/bench-ready")" != 1 ]; do
        if ! alive "lab-$1"; then
            eval "STATUS_$(key "$1")=died-before-ready"
            break
        fi
        if later "$tw" "$BENCH_READY_SECS"; then
            eval "STATUS_$(key "$1")=not-ready"
            break
        fi
        sleep 0.5
    done
    eval "echo \"LAB domU lab-$1 ready status=\$STATUS_$(key "$1") after $(since "$tw") s\""
}

NAMES=
for meta in /lab/cfg/*.meta; do
    [ -f "$meta" ] || continue
    NAME=
    . "$meta"
    cp "${meta%.meta}.cfg" "$WORK/$NAME.cfg"
    echo "LAB images ready for $NAME after 0 s: (none, bench serve)"
    create "$NAME"
    eval "RESTARTS_$(key "$NAME")=0"
    NAMES="$NAMES $NAME"
done
for n in $NAMES; do ready "$n"; done

# restart NAME SEQ: a guest died during turn SEQ. PVH guests under this
# nested QEMU die now and then with a triple fault whose RIP and CR2 are a
# Xen address (docs/LAB.md): the outer emulator's, not the guest's. Keep
# what it printed and what Xen said, boot it again (at most BENCH_RESTARTS
# times per guest), and let the turn be run again.
restart() {
    eval "k=\$RESTARTS_$(key "$1")"
    dom=lab-$1
    log=/var/log/xen/console/guest-$dom.log
    xl dmesg >"$WORK/xl-dmesg" 2>&1
    why=$(grep -c 'Triple fault' "$WORK/xl-dmesg")
    echo "LAB bench-restart guest=$1 seq=$2 restarts-before=$k state=$(domstate "$dom") triple-faults-in-xl-dmesg=$why"
    [ -f "$log" ] && section console-died "$1" "$log"
    grep -A12 'Triple fault' "$WORK/xl-dmesg" | tail -n 13 >"$WORK/xl-dmesg.crash"
    section xl-dmesg-died "$1" "$WORK/xl-dmesg.crash"
    xl destroy "$dom" >/dev/null 2>&1
    [ "$k" -ge "$BENCH_RESTARTS" ] && return 1
    eval "RESTARTS_$(key "$1")=$((k + 1))"
    echo "LAB !!! guest $1 died in turn seq=$2; booting it again (restart $((k + 1)) of at most $BENCH_RESTARTS)"
    create "$1"
    ready "$1"
    eval "[ \"\$STATUS_$(key "$1")\" = running ]"
}

# turn ROUND NAME SEQ VDEV JOB: one job on one guest. Sets $status.
turn() {
    eval "d=\$DOMID_$(key "$2") st=\$STATUS_$(key "$2")"
    if [ "$st" != running ]; then
        status=skipped
        echo "LAB bench-turn round=$1 guest=$2 status=skipped seq=$3 vdev=$4 job=$5 ($st)"
        return
    fi
    home=/local/domain/$d
    xenstore-write "$home/data/bench-cmd" "$3 run $4 $5"
    t0=$(now)
    # A test of the restart path: destroy the guest in turn BENCH_KILL_SEQ.
    if [ "$3" = "${BENCH_KILL_SEQ:-}" ]; then
        sleep 1
        xl destroy "lab-$2" >/dev/null 2>&1
    fi
    sleep $((BENCH_SECS + BENCH_RAMP))
    limit=$((BENCH_SECS + BENCH_RAMP + 90))
    status=ok
    while [ "$(xsr "$home/data/bench-done")" != "$3" ]; do
        if ! alive "lab-$2"; then
            status=died
            eval "STATUS_$(key "$2")=died"
            break
        fi
        if later "$t0" "$limit"; then
            status=timeout
            eval "STATUS_$(key "$2")=timeout"
            break
        fi
        sleep 0.2
    done
    res=$(xsr "$home/data/bench-result")
    case $status:$res in
    ok:"seq=$3 "*error=*) status=failed ;;
    ok:"seq=$3 "*) ;;
    ok:*) status=no-result ;;
    esac
    case $res in
    "seq=$3 "*) ;;
    *) res="seq=$3 vdev=$4 job=$5" ;;
    esac
    echo "LAB bench-turn round=$1 guest=$2 status=$status secs=$(since "$t0") $res"
}

# run_turn ROUND NAME VDEV JOB: a turn; a guest that died in it (or in the
# warm-up after a restart) is booted again (restart), runs an uncounted
# warm-up turn and then this turn again.
run_turn() {
    seq=$((seq + 1))
    turn "$1" "$2" "$seq" "$3" "$4"
    while [ "$status" = died ] && restart "$2" "$seq"; do
        seq=$((seq + 1))
        turn 0 "$2" "$seq" "$3" "$4"
        [ "$status" = died ] && continue
        seq=$((seq + 1))
        turn "$1" "$2" "$seq" "$3" "$4"
    done
}

seq=0
# Round 0 warms up, uncounted: one job per guest and disk (the Linux guest's
# first fio run pages in fio and its libraries, the first requests of either
# find cold caches in dom0).
echo "LAB bench-round 0 (warm-up, not counted) (dom0 uptime $(up) s)"
for v in $BENCH_VDEVS; do
    for n in $NAMES; do
        run_turn 0 "$n" "$v" 4k-qd32
    done
done
r=1
while [ $r -le "$BENCH_ROUNDS" ]; do
    # Odd rounds in config order, even rounds reversed: neither guest
    # always goes first (the one that goes first finds the backend idle).
    order=$NAMES
    if [ $((r % 2)) = 0 ]; then
        order=
        for n in $NAMES; do order="$n $order"; done
    fi
    echo "LAB bench-round $r order=$(echo $order | tr ' ' ,) (dom0 uptime $(up) s)"
    for v in $BENCH_VDEVS; do
        for job in $JOBS; do
            for n in $order; do
                run_turn "$r" "$n" "$v" "$job"
            done
        done
    done
    r=$((r + 1))
done

# Quit, then the lab's sections per guest (tests/lab/job.sh's format).
for n in $NAMES; do
    eval "d=\$DOMID_$(key "$n")"
    [ "$d" = none ] && continue
    seq=$((seq + 1))
    xenstore-write "/local/domain/$d/data/bench-cmd" "$seq quit" 2>/dev/null
done
tq=$(now)
for n in $NAMES; do
    while alive "lab-$n" && ! later "$tq" 60; do sleep 0.5; done
done
for n in $NAMES; do
    eval "d=\$DOMID_$(key "$n") st=\$STATUS_$(key "$n")"
    dom=lab-$n
    log=/var/log/xen/console/guest-$dom.log
    echo "LAB BEGIN config $n attempt=1 mode=bench-serve"
    section xl-config "$n" "$WORK/$n.cfg"
    section xl-create "$n" "$WORK/$n.create"
    state=$(domstate "$dom")
    case $st:$state in
    running:???s-?) status=shutdown ;;
    running:???sc? | running:???sr?) status=crashed ;;
    running:???s??) status=shutdown-${state#????} ;;
    running:*) status=no-shutdown ;;
    *) status=$st ;;
    esac
    echo "LAB domU $dom finished state=${state:-?} status=$status"
    if [ "$d" != none ]; then
        : >"$WORK/xs"
        for p in "/local/domain/0/backend/vbd/$d" "/local/domain/0/backend/qdisk/$d" \
            "/local/domain/$d/device/vbd" "/local/domain/$d/data"; do
            xenstore-ls -f "$p" >>"$WORK/xs" 2>/dev/null
        done
        section xenstore "$n" "$WORK/xs"
    fi
    [ -f "$log" ] || : >"$log"
    section console "$n" "$log"
    if [ -f "/var/log/xen/qemu-dm-$dom.log" ]; then
        section qemu-dm "$n" "/var/log/xen/qemu-dm-$dom.log"
    fi
    xl destroy "$dom" >/dev/null 2>&1
    # Like job.sh: a guest that shut down without its closing line did not finish.
    if [ "$status" = shutdown ]; then
        if [ -n "$(closing_line "$log")" ]; then
            status=ok
        else
            status=no-closing-line
        fi
    fi
    echo "LAB RESULT name=$n attempt=1 status=$status domid=$d"
    echo "LAB END config $n"
done
xl dmesg -c >"$WORK/xl-dmesg" 2>&1
tail -n 200 "$WORK/xl-dmesg" >"$WORK/xl-dmesg.tail"
section xl-dmesg all "$WORK/xl-dmesg.tail"
dmesg -c >"$WORK/dmesg" 2>&1
tail -n 60 "$WORK/dmesg" >"$WORK/dmesg.tail"
section dom0-dmesg all "$WORK/dmesg.tail"
echo "LAB job done (dom0 uptime $(up) s)"
