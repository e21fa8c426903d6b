#!/usr/bin/env bash
# stage.sh STAGEDIR: boot.sh's stage hook for the in-guest benchmark
# (XENBLK_LAB_STAGE_HOOK). boot.sh has written one xl config per line of
# bench/matrix.txt for the example unikernel; this rewrites them:
#   - disks: /run/lab/img/nullb0.img -> /dev/nullb<n> (null_blk, set up by
#     bench-job.sh), /run/lab/img/qdisk.img -> /run/bench/qdisk<n>.img
#     (sparse), n = the guest's index: every guest its own, all alike;
#   - unikernel guests: cmdline "bench serve vdev=all secs=S ramp=R <MODE args>";
#   - `linux*` guests: PV (PVH for `*-pvh`), dom0's kernel + fio.cpio, 384 MiB, same vcpus and
#     disks, cmdline "... bench serve secs=S ramp=R".
# and replaces the lab's job: bench-job.sh becomes /lab/job.sh, sets up the
# backends and hands over to serve.sh (/lab/serve.sh), which boots every
# guest at once and alternates them job by job.
# Settings: XENBLK_BENCH_SECS (5), XENBLK_BENCH_RAMP (1), XENBLK_BENCH_ROUNDS (5);
# XENBLK_BENCH_KILL_SEQ=<n> has serve.sh destroy the guest of turn n, to
# test its restart path.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"
S=${1:?usage: stage.sh STAGEDIR}
SECS=${XENBLK_BENCH_SECS:-5}
RAMP=${XENBLK_BENCH_RAMP:-1}
ROUNDS=${XENBLK_BENCH_ROUNDS:-5}
[[ $SECS =~ ^[1-9][0-9]*$ && $RAMP =~ ^[0-9]+$ ]] || die "XENBLK_BENCH_SECS/RAMP must be whole seconds"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "XENBLK_BENCH_ROUNDS must be a positive count"
[[ -f $S/job.sh ]] || die "stage.sh: no job.sh in $S"
[[ -f $LAB_CACHE/fio.cpio ]] || die "$LAB_CACHE/fio.cpio missing: run tests/lab/bench/build-fio.sh"

rm "$S/job.sh"
install -m 0755 "$LAB_DIR/bench/bench-job.sh" "$S/job.sh"
install -m 0755 "$LAB_DIR/bench/serve.sh" "$S/serve.sh"
printf 'BENCH_SECS=%s\nBENCH_RAMP=%s\nBENCH_ROUNDS=%s\nBENCH_GUESTS=%s\nBENCH_KILL_SEQ=%s\n' "$SECS" "$RAMP" \
    "$ROUNDS" "$(find "$S/cfg" -name '*.cfg' | wc -l)" "${XENBLK_BENCH_KILL_SEQ:-}" >>"$S/run.conf"
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
    args="serve secs=$SECS ramp=$RAMP"
    extra=${MODE#bench}
    extra=${extra//:/ }
    # Guest n gets its own null_blk device and file (the same for all):
    # Xen's block script refuses to give one writable device to two guests,
    # and each guest's qdisk QEMU locks its image.
    sed -i -e "s|/run/lab/img/nullb0.img|/dev/nullb$n|" \
        -e "s|/run/lab/img/qdisk.img|/run/bench/qdisk$n.img|" "$cfg"
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
    sed -i -e 's|^IMAGES=.*|IMAGES=""|' -e 's|^DEVS=.*|DEVS=""|' -e 's|^MODE=.*|MODE=bench|' "$meta"
    n=$((n + 1))
done
((n > 0)) || die "stage.sh: no configurations in $S/cfg"
say "bench stage: $n guest(s), $ROUNDS round(s), ${SECS} s per job after a ${RAMP} s ramp"
