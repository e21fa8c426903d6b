#!/usr/bin/env bash
# lab.sh run|matrix [MATRIX]: the whole real-Xen lab in one command.
#   run     `make run`: the default disk set (matrix/run.txt) in info and
#           verify mode on ONE generation (XENBLK_LAB_XEN, default 4.20, the
#           newest); shows the guest's report and the checker's verdict.
#   matrix  `make lab`: every configuration of matrix/issue4.txt, on every
#           generation one after the other (4.17, then 4.20), or only on
#           XENBLK_LAB_XEN when it is set.
#   guest ELF [CMDLINE]
#           `make run-guest`: your own PVH unikernel ELF under real Xen with
#           the disks of matrix/guest.txt, its console shown; it passes when
#           it powers off (one generation, like run).
# Steps per generation: build/cache Xen, dom0's kernel and root (build.sh);
# build the example unikernel (cd unikernel && cargo build --release; if the
# crate is not there yet, the Linux stand-in guest is used and said so); boot
# (boot.sh); check (check.py). Output: target/lab/<what>-<generation>/
# (serial.log, check.txt).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
what=${1:-matrix}
case $what in
run) matrix=${2:-$LAB_DIR/matrix/run.txt} show=--show ;;
matrix) matrix=${2:-$LAB_DIR/matrix/issue4.txt} show= ;;
guest)
    [[ -n ${2:-} ]] || die "usage: lab.sh guest ELF [CMDLINE] (make run-guest GUEST=ELF CMDLINE=...)"
    [[ -f $2 ]] || die "guest ELF $2: no such file"
    XENBLK_OWN_GUEST=$(realpath "$2") XENBLK_OWN_CMDLINE=${3:-}
    # your ELF is the lab's guest: the example unikernel is not built
    XENBLK_LAB_GUEST=$XENBLK_OWN_GUEST
    export XENBLK_OWN_GUEST XENBLK_OWN_CMDLINE XENBLK_LAB_GUEST
    matrix=$LAB_DIR/matrix/guest.txt show=--show
    ;;
*) die "usage: lab.sh run|matrix [MATRIX] | guest ELF [CMDLINE]" ;;
esac
if [[ $what == matrix && -z ${XENBLK_LAB_XEN:-} ]]; then
    rc=0 summary=
    for g in $LAB_GENERATIONS; do
        say "======== generation Xen $g ========"
        set +e
        XENBLK_LAB_XEN=$g bash "$0" "$@"
        grc=$?
        set -e
        ((grc == 0)) || rc=1
        summary+="  Xen $g: $(tail -n1 "$REPO_DIR/target/lab/matrix-$g/check.txt" 2>/dev/null || echo 'no verdict') (rc $grc)"$'\n'
    done
    say "lab matrix on every generation:"
    printf '%s' "$summary" >&2
    exit $rc
fi
out=$REPO_DIR/target/lab/$what-$LAB_GEN
say "generation: Xen $LAB_GEN (Debian $LAB_SUITE; XENBLK_LAB_XEN=4.17|4.20 picks one)"

bash "$LAB_DIR/build.sh"
ELF=$REPO_DIR/unikernel/target/x86_64-unknown-none/release/xenblk-unikernel
if [[ -z ${XENBLK_LAB_GUEST:-} ]]; then
    if [[ -f $REPO_DIR/unikernel/Cargo.toml ]]; then
        say "building the unikernel (cd unikernel && cargo build --release)"
        (cd "$REPO_DIR/unikernel" && cargo build --release) || die "unikernel build failed"
        # The checker needs the disk lines of docs/LINES.md; an unikernel that
        # does not print them yet would only fail it.
        if grep -qa 'xenblk-disk ' "$ELF"; then
            export XENBLK_LAB_GUEST=unikernel
        else
            say "!!! the unikernel does not print 'xenblk-disk' lines (docs/LINES.md) yet:"
            say "!!! using the Linux STAND-IN guest instead (XENBLK_LAB_GUEST=unikernel forces it)"
            export XENBLK_LAB_GUEST=standin
        fi
    else
        say "!!! unikernel/ has no crate: using the Linux STAND-IN guest"
        export XENBLK_LAB_GUEST=standin
    fi
fi
say "booting the lab: $(basename "$matrix") ($XENBLK_LAB_GUEST)"
set +e
bash "$LAB_DIR/boot.sh" "$matrix" "$out"
brc=$?
set -e
case $brc in
0) ;;
1) say "!!! LAB INFRASTRUCTURE FAILURE (Xen/dom0 did not come up, twice); the checker runs anyway" ;;
*) say "!!! the job in dom0 did not finish (rc $brc); the checker runs anyway" ;;
esac
say "checking $out/serial.log"
set +e
python3 "$LAB_DIR/check.py" $show "$matrix" "$out/serial.log" | tee "$out/check.txt"
crc=${PIPESTATUS[0]}
set -e
say "lab $what on Xen $LAB_GEN: serial log $out/serial.log, checks $out/check.txt"
((brc == 0 && crc == 0))
