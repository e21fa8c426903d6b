#!/usr/bin/env bash
# stage.sh STAGEDIR: boot.sh's stage hook for the in-guest benchmark
# (XENBLK_LAB_STAGE_HOOK). boot.sh has written one xl config per line of
# bench/matrix.txt for the example unikernel; this rewrites them:
#   - disks: /run/lab/img/nullb0.img -> /dev/nullb0 (null_blk, set up by
#     bench-job.sh), /run/lab/img/qdisk.img -> /run/bench/qdisk.img (sparse);
#     the lab job makes no images for them;
#   - unikernel guests: cmdline "bench vdev=all secs=S ramp=R <MODE args>";
#   - `linux*` guests: PV (PVH for `*-pvh`), dom0's kernel + fio.cpio, 384 MiB, same vcpus and
#     disks, cmdline "... bench secs=S ramp=R".
# and puts bench-job.sh in front of the lab's job (it becomes /lab/job.sh and
# runs the lab's, now /lab/lab-job.sh, after setting up the backends).
# Settings: XENBLK_BENCH_SECS (8), XENBLK_BENCH_RAMP (1).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
S=${1:?usage: stage.sh STAGEDIR}
SECS=${XENBLK_BENCH_SECS:-8}
RAMP=${XENBLK_BENCH_RAMP:-1}
[[ $SECS =~ ^[0-9]+$ && $RAMP =~ ^[0-9]+$ ]] || die "XENBLK_BENCH_SECS/RAMP must be whole seconds"
[[ -f $S/job.sh ]] || die "stage.sh: no job.sh in $S"
[[ -f $LAB_CACHE/fio.cpio ]] || die "$LAB_CACHE/fio.cpio missing: run tests/lab/bench/build-fio.sh"

mv "$S/job.sh" "$S/lab-job.sh"
install -m 0755 "$LAB_DIR/bench/bench-job.sh" "$S/job.sh"
printf 'BENCH_SECS=%s\nBENCH_RAMP=%s\n' "$SECS" "$RAMP" >>"$S/run.conf"
cp "$LAB_CACHE/vmlinuz" "$S/guest/vmlinuz"
cp "$LAB_CACHE/fio.cpio" "$S/guest/fio.cpio"

n=0
for cfg in "$S"/cfg/*.cfg; do
    meta=${cfg%.cfg}.meta
    # shellcheck disable=SC1090
    NAME= MODE=
    . "$meta"
    grep -q '/run/lab/img/nullb0.img' "$cfg" && grep -q '/run/lab/img/qdisk.img' "$cfg" ||
        die "stage.sh: $cfg does not have the @nullb0@ and @qdisk@ disks of bench/matrix.txt"
    grep -q '^kernel = ' "$cfg" && grep -q '^cmdline = ' "$cfg" && grep -q '^type = ' "$cfg" ||
        die "stage.sh: $cfg lacks the type/kernel/cmdline lines boot.sh writes"
    args="secs=$SECS ramp=$RAMP"
    extra=${MODE#bench}
    extra=${extra//:/ }
    sed -i -e 's|/run/lab/img/nullb0.img|/dev/nullb0|' \
        -e 's|/run/lab/img/qdisk.img|/run/bench/qdisk.img|' "$cfg"
    if [[ $NAME == linux* ]]; then
        gtype=pv
        [[ $NAME == *-pvh ]] && gtype=pvh
        sed -i -e "s|^type = .*|type = \"$gtype\"|" \
            -e 's|^kernel = .*|kernel = "/lab/guest/vmlinuz"\nramdisk = "/lab/guest/fio.cpio"|' \
            -e "s|^cmdline = .*|cmdline = \"console=hvc0 quiet loglevel=1 bench $args\"|" \
            -e 's|^memory = .*|memory = 384|' "$cfg"
    else
        sed -i -e "s|^cmdline = .*|cmdline = \"bench vdev=all $args$extra\"|" "$cfg"
    fi
    sed -i -e 's|^IMAGES=.*|IMAGES=""|' -e 's|^LOOPS=.*|LOOPS=""|' -e 's|^MODE=.*|MODE=bench|' "$meta"
    n=$((n + 1))
done
((n > 0)) || die "stage.sh: no configurations in $S/cfg"
say "bench stage: $n guest(s), ${SECS} s per job after a ${RAMP} s ramp"
