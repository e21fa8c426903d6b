#!/usr/bin/env bash
# run.sh: `make bench-inguest`, the in-guest benchmark in one command.
# Builds (cached) the lab (../build.sh), the Linux anchor guest (build-fio.sh)
# and the example unikernel; boots the lab ONCE with the guests of
# matrix.txt (stage.sh turns boot.sh's configs into bench configs, bench-job.sh
# sets up null_blk and the qdisk file in dom0, serve.sh boots both guests and
# alternates them job by job); parses the log (parse.py),
# prints the table and the `inguest ...` lines and rewrites the results part
# of docs/PERFORMANCE.md. Output: target/lab/bench/{serial.log,results.txt,
# boot.log (boot.sh's progress), load.txt (the host's load, sampled)}.
# XENBLK_BENCH_SECS (5) and XENBLK_BENCH_RAMP (1): seconds per job;
# XENBLK_BENCH_ROUNDS (5): how many times every guest runs every job.
# XENBLK_BENCH_DOC=0: leave docs/PERFORMANCE.md alone.
set -euo pipefail
# The benchmark's generation: 4.17 unless XENBLK_LAB_XEN says otherwise (its
# numbers in docs/PERFORMANCE.md were measured there).
export XENBLK_LAB_XEN=${XENBLK_LAB_XEN:-4.17}
source "$(dirname "$0")/../lib.sh"
B=$LAB_DIR/bench
out=$REPO_DIR/target/lab/bench
export XENBLK_BENCH_SECS=${XENBLK_BENCH_SECS:-5} XENBLK_BENCH_RAMP=${XENBLK_BENCH_RAMP:-1}
export XENBLK_BENCH_ROUNDS=${XENBLK_BENCH_ROUNDS:-5}

bash "$LAB_DIR/build.sh"
bash "$B/build-fio.sh"
say "building the unikernel (cd unikernel && cargo build --release)"
(cd "$REPO_DIR/unikernel" && cargo build --release) || die "unikernel build failed"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
say "booting the lab with the bench guests ($(grep -cv '^\s*\(#\|$\)' "$B/matrix.txt")), load average $load_before"
mkdir -p "$out.tmp"
# The host's 1-minute load average every 2 s, in seconds since LAB_T0 (the
# clock of boot.sh's progress lines): parse.py gives each guest its mean.
( while :; do echo "$(($(date +%s) - LAB_T0)) $(cut -d' ' -f1 /proc/loadavg)"; sleep 2; done ) \
    >"$out.tmp/load.txt" &
sampler=$!
set +e
XENBLK_LAB_GUEST=unikernel XENBLK_LAB_STAGE_HOOK=$B/stage.sh \
    XENBLK_LAB_WAIT=${XENBLK_LAB_WAIT:-$(((300 + XENBLK_BENCH_ROUNDS * 12 * (XENBLK_BENCH_SECS + XENBLK_BENCH_RAMP + 5)) / 4))} \
    bash "$LAB_DIR/boot.sh" "$B/matrix.txt" "$out" 2> >(tee "$out.tmp/boot.log" >&2)
brc=$?
set -e
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
mv "$out.tmp/load.txt" "$out.tmp/boot.log" "$out/"
rmdir "$out.tmp"
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
((brc == 0)) || say "!!! the lab run did not finish cleanly (boot.sh rc $brc); parsing what there is"
doc=()
[[ ${XENBLK_BENCH_DOC:-1} == 1 ]] && doc=(--doc "$REPO_DIR/docs/PERFORMANCE.md")
set +e
python3 "$B/parse.py" "$B/matrix.txt" "$out/serial.log" "${doc[@]}" \
    --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
    --meta "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n1)" \
    --meta "cpus=$(nproc)" \
    --meta "qemu=$(qemu-system-x86_64 --version | head -n1)" \
    --meta "kernel=$(kernel_release)" \
    --meta "load_before=$load_before" --meta "load_after=$load_after" \
    --meta "secs=$XENBLK_BENCH_SECS" --meta "ramp=$XENBLK_BENCH_RAMP" \
    --meta "rounds=$XENBLK_BENCH_ROUNDS" \
    --meta "boot_log=$out/boot.log" --meta "load_file=$out/load.txt" | tee "$out/results.txt"
prc=${PIPESTATUS[0]}
set -e
say "bench-inguest: serial log $out/serial.log, results $out/results.txt"
((brc == 0 && prc == 0))
