#!/usr/bin/env bash
# boot.sh MATRIX OUTDIR: boot the real-Xen lab once for the configurations in
# MATRIX (see matrix/issue4.txt) and leave the serial log in OUTDIR/serial.log.
#
# Xen (-kernel) + dom0's kernel and root (-initrd "vmlinuz ARGS,initrd") under
# bookworm's QEMU 7.2 in TCG with nested SVM+NPT. dom0's root is the cached
# dom0.cpio (build.sh) with a small per-run newc cpio appended (the kernel
# unpacks concatenated archives): the job script, the xl configs and the guest
# ELF, so changing them never rebuilds the root. The host watches the serial
# log, prints progress, and kills QEMU on the job's end marker or a timeout.
#
# Guest: $XENBLK_LAB_GUEST = unikernel (the example unikernel's ELF, default
# when it is built), standin (dom0's kernel as a PV guest + standin-init.sh), or a
# path to a PVH ELF. Exit: 0 the job ran to its end, 1 the lab itself failed
# (Xen/dom0 never came up, twice), 2 the job did not finish (dom0 or Xen
# panicking during the job is retried once, the whole boot, saying so).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MATRIX=${1:?usage: boot.sh MATRIX OUTDIR}
OUT=${2:?usage: boot.sh MATRIX OUTDIR}
UNIKERNEL_ELF=${XENBLK_UNIKERNEL_ELF:-$REPO_DIR/unikernel/target/x86_64-unknown-none/release/xenblk-unikernel}
MINIMAL_ELF=$REPO_DIR/examples/minimal/target/x86_64-unknown-none/release/xenblk-minimal
# README.md's "Your own unikernel", built as written (tests/readme-guest.sh)
README_ELF=$(bash "$REPO_DIR/tests/readme-guest.sh" --path)
GUEST=${XENBLK_LAB_GUEST:-auto}
WAIT_SECS=${XENBLK_LAB_WAIT:-180}         # per guest, inside dom0
READY_SECS=${XENBLK_LAB_READY:-240}       # QEMU start -> dom0 toolstack ready
QEMU=${XENBLK_QEMU:-qemu-system-x86_64}
XEN_ARGS="console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all dom0_mem=1536M,max:1536M bootscrub=0 noreboot serial_tx_buffer=1M"
DOM0_ARGS="console=hvc0 earlyprintk=xen panic=-1"

for f in xen.elf vmlinuz dom0.cpio; do
    [[ -f $LAB_CACHE/$f ]] || die "$LAB_CACHE/$f missing: run tests/lab/build.sh"
done
qv=$("$QEMU" --version | head -n1)
[[ $qv == *"version 7.2"* ]] || say "WARNING: $qv is not bookworm's QEMU 7.2 (QEMU 10 breaks nested SVM for PVH guests)"

if [[ $GUEST == auto ]]; then
    if [[ -f $UNIKERNEL_ELF ]]; then GUEST=unikernel; else GUEST=standin; fi
fi
rm -rf "$OUT"
mkdir -p "$OUT/stage/lab/cfg" "$OUT/stage/lab/guest"
S="$OUT/stage/lab"

# ---- the per-run cpio: guest, job, configs -------------------------------------
case $GUEST in
standin)
    [[ -f $LAB_CACHE/standin.cpio ]] || die "$LAB_CACHE/standin.cpio missing: run tests/lab/build.sh"
    cp "$LAB_CACHE/vmlinuz" "$S/guest/vmlinuz"
    cp "$LAB_CACHE/standin.cpio" "$S/guest/standin.cpio"
    # PV, not PVH: Linux PVH guests crash now and then under this nested
    # QEMU (docs/LAB.md); PV guests never did. The backends are the same.
    G_TYPE=pv G_KERNEL=/lab/guest/vmlinuz G_EXTRA='ramdisk = "/lab/guest/standin.cpio"'
    G_CMD_PREFIX="console=hvc0 quiet loglevel=1 " G_MEM=256
    say "guest: STAND-IN (dom0's Linux kernel as a PV domU, tests/lab/standin-init.sh)"
    ;;
*)
    [[ $GUEST == unikernel ]] && GUEST=$UNIKERNEL_ELF
    [[ -f $GUEST ]] || die "guest ELF $GUEST missing (build the unikernel, or XENBLK_LAB_GUEST=standin)"
    cp "$GUEST" "$S/guest/xenblk-unikernel"
    # The minimal example (mode `minimal` in a matrix), when built.
    [[ -f $MINIMAL_ELF ]] && cp "$MINIMAL_ELF" "$S/guest/xenblk-minimal"
    # The README's guest (mode `readme`), when built.
    [[ -f $README_ELF ]] && cp "$README_ELF" "$S/guest/myguest"
    # Your own guest (mode `own`, `make run-guest`).
    [[ -n ${XENBLK_OWN_GUEST:-} ]] && cp "$XENBLK_OWN_GUEST" "$S/guest/own"
    G_TYPE=pvh G_KERNEL=/lab/guest/xenblk-unikernel G_EXTRA= G_CMD_PREFIX= G_MEM=${XENBLK_LAB_MEM:-64}
    say "guest: $GUEST ($(stat -c %s "$GUEST") bytes)"
    ;;
esac
install -m 0755 "$LAB_DIR/job.sh" "$S/job.sh"
install -m 0644 "$LAB_DIR/dom0-lib.sh" "$S/dom0-lib.sh"
printf 'WAIT_SECS=%s\n' "$WAIT_SECS" >"$S/run.conf"

# vdev_of LETTERS: the virtual-device number libxl gives xvd<LETTERS>:
# 202<<8 | n<<4 for xvda..xvdp, the extended form 1<<28 | n<<8 from xvdq on
# (n = the disk index: a=0 ... z=25, aa=26 ...).
vdev_of() {
    local l=$1 n=0 i c
    for ((i = 0; i < ${#l}; i++)); do
        c=$(printf '%d' "'${l:i:1}")
        n=$((n * 26 + c - 96))
    done
    n=$((n - 1))
    if ((n < 16)); then echo $(((202 << 8) | (n << 4))); else echo $(((1 << 28) | (n << 8))); fi
}

n=0
while read -r name mode disks; do
    [[ -z $name || $name == \#* ]] && continue
    # an optional memory=<MiB> before the disks: this guest's `memory`
    mem=$G_MEM action=
    if [[ $disks =~ ^memory=([0-9]+)[[:space:]]+(.*)$ ]]; then
        mem=${BASH_REMATCH[1]} disks=${BASH_REMATCH[2]}
    fi
    # an optional action=<cmd>[:<arg>]@<seconds>[,...]: what the operator
    # does to the running guest (job.sh), e.g. action=block-detach:xvdb@15,shutdown@30
    if [[ $disks =~ ^action=([a-z0-9:@,-]+)[[:space:]]+(.*)$ ]]; then
        action=${BASH_REMATCH[1]} disks=${BASH_REMATCH[2]}
    fi
    [[ $name =~ ^[a-z0-9-]+$ ]] || die "$MATRIX: bad name '$name'"
    n=$((n + 1))
    base=$(printf '%02d-%s' "$n" "$name")
    images= vdevs= specs= devs= dmargs=
    IFS=';' read -ra dl <<<"$disks"
    for d in "${dl[@]}"; do
        d=$(sed 's/^ *//; s/ *$//' <<<"$d")
        [[ $d =~ @([a-z0-9]+)(:([0-9]+))?(\+(loop|loop4k|null4k))?@ ]] || die "$MATRIX: $name: no target=@X@ in '$d'"
        img=${BASH_REMATCH[1]} mib=${BASH_REMATCH[3]:-64} kind=${BASH_REMATCH[5]}
        path=/run/lab/img/$img.img
        if [[ -n $kind ]]; then
            # the job makes the device (loop, 4 KiB loop, 4 KiB null_blk)
            # and fills in its name
            d=${d/${BASH_REMATCH[0]}/@DEV_$img@}
            devs+=" $img:$kind"
        else
            d=${d/${BASH_REMATCH[0]}/$path}
        fi
        [[ $d =~ vdev=xvd([a-z]+) ]] || die "$MATRIX: $name: no vdev=xvdX in '$d'"
        letters=${BASH_REMATCH[1]}
        images+=" $img:$mib" vdevs+=" $(vdev_of "$letters")=$path"
        if [[ $d =~ backendtype=dm-qdisk ]]; then
            # Not a disk of xl's: a xen-disk device on QEMU's own command line
            # (device_model_args_pv, appended by libxl to the qdisk QEMU it
            # starts for the guest's other qdisk disks), so that QEMU's
            # xen-bus creates the backend and frontend directories itself,
            # with the logical block size libxl never sets (and the same
            # physical block size: QEMU refuses a logical one above it).
            [[ $d =~ logical-block-size=([0-9]+) ]] || die "$MATRIX: $name: dm-qdisk needs logical-block-size="
            lbs=${BASH_REMATCH[1]}
            [[ $d =~ target=([^,]+) ]] || die "$MATRIX: $name: no target in '$d'"
            tgt=${BASH_REMATCH[1]}
            dmargs+="${dmargs:+, }\"-drive\", \"file=$tgt,if=none,id=lab-xvd$letters,format=raw\", \"-device\", \"xen-disk,vdev=xvd$letters,drive=lab-xvd$letters,logical_block_size=$lbs,physical_block_size=$lbs\""
            continue
        fi
        specs+="${specs:+,
         }'format=raw, $d'"
    done
    kernel=$G_KERNEL
    if [[ $mode == minimal ]]; then
        [[ $G_TYPE == pvh && -f $MINIMAL_ELF ]] || die "$MATRIX: $name: the minimal example is not built (make unikernel)"
        kernel=/lab/guest/xenblk-minimal
    fi
    cmdline=$G_CMD_PREFIX$mode
    if [[ $mode == own ]]; then
        [[ $G_TYPE == pvh && -n ${XENBLK_OWN_GUEST:-} ]] || die "$MATRIX: $name: mode own needs XENBLK_OWN_GUEST (make run-guest GUEST=ELF)"
        [[ $XENBLK_OWN_CMDLINE != *'"'* && $XENBLK_OWN_CMDLINE != *\\* ]] || die "CMDLINE must not contain \" or \\"
        kernel=/lab/guest/own cmdline=$XENBLK_OWN_CMDLINE
    fi
    if [[ $mode == readme ]]; then
        [[ $G_TYPE == pvh && -f $README_ELF ]] || die "$MATRIX: $name: the README's guest is not built (make unikernel)"
        kernel=/lab/guest/myguest
    fi
    cat >"$S/cfg/$base.meta" <<META
NAME=$name
MODE=$mode
ACTION=$action
IMAGES="${images# }"
VDEVS="${vdevs# }"
DEVS="${devs# }"
META
    cat >"$S/cfg/$base.cfg" <<CFG
# $name: generated by tests/lab/boot.sh from $(basename "$MATRIX")
name = "lab-$name"
type = "$G_TYPE"
kernel = "$kernel"
$G_EXTRA
cmdline = "$cmdline"
memory = $mem
vcpus = 1
on_poweroff = "preserve"
on_crash = "preserve"
on_reboot = "destroy"
disk = [ $specs ]
CFG
    [[ -z $dmargs ]] || printf 'device_model_args_pv = [ %s ]\n' "$dmargs" >>"$S/cfg/$base.cfg"
done <"$MATRIX"
((n > 0)) || die "$MATRIX: no configurations"
# XENBLK_LAB_STAGE_HOOK=SCRIPT: run as `bash SCRIPT STAGEDIR` before packing,
# to add or rewrite files (the in-guest benchmark, tests/lab/bench/stage.sh).
if [[ -n ${XENBLK_LAB_STAGE_HOOK:-} ]]; then
    bash "$XENBLK_LAB_STAGE_HOOK" "$S" || die "stage hook $XENBLK_LAB_STAGE_HOOK failed"
fi
(cd "$OUT/stage" && find lab | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$OUT/run.cpio"
cat "$LAB_CACHE/dom0.cpio" "$OUT/run.cpio" >"$OUT/initrd.cpio"
say "run cpio: $n configuration(s), $(stat -c %s "$OUT/run.cpio") bytes appended to dom0.cpio"

# ---- boot and watch ------------------------------------------------------------
# boot_once LOG: 0 job finished, 1 lab infrastructure failed, 2 job
# unfinished, 3 dom0 (or Xen) panicked during the job.
boot_once() {
    local log=$1 t0 line buf= ready=0 done_=0 qpid deadline infra= elapsed
    t0=$(date +%s)
    : >"$log"
    "$QEMU" -accel tcg -cpu qemu64,+svm,+npt -m 3072 -smp 2 \
        -display none -serial stdio -monitor none -no-reboot \
        -kernel "$LAB_CACHE/xen.elf" -append "$XEN_ARGS" \
        -initrd "$LAB_CACHE/vmlinuz $DOM0_ARGS,$OUT/initrd.cpio" \
        </dev/null >"$log" 2>"$log.qemu-stderr" &
    qpid=$!
    say "QEMU pid $qpid started; serial log $log"
    deadline=$((t0 + READY_SECS))
    exec 3<"$log"
    while :; do
        if IFS= read -r line <&3; then
            line="$buf${line%$'\r'}" buf=
            elapsed=$(($(date +%s) - t0))
            case $line in
            "LAB dom0-init started"*) say "dom0 /init started after $elapsed s" ;;
            "LAB dom0-ready"*)
                ready=1
                deadline=$((t0 + elapsed + 60 + n * 2 * (WAIT_SECS + 90)))
                say "dom0 up after $elapsed s (${line#LAB dom0-ready })"
                ;;
            "LAB dom0-failed"*) infra="dom0 failed: ${line#LAB dom0-failed: }" ;;
            "LAB domU "* | "LAB bench-turn "* | "LAB bench-round "* | "LAB RESULT "* | "LAB !!!"* | "LAB images "*) say "${line#LAB }" ;;
            "LAB job done"*) say "job done after $elapsed s"; done_=1 ;;
            *"Panic on CPU"* | *"Kernel panic - not syncing"*)
                # Xen halts (noreboot): nothing more will come. Under nested
                # TCG dom0 has been seen to oops on a NOP (docs/LAB.md).
                say "!!! ${line}"
                if ((ready)); then infra="dom0 or Xen panicked during the job"; else infra="panic before dom0 was ready"; fi
                ;;
            esac
            [[ -n $infra || $done_ == 1 ]] && break
            continue
        fi
        buf+=$line
        kill -0 "$qpid" 2>/dev/null || break
        (($(date +%s) > deadline)) && break
        sleep 0.5
    done
    exec 3<&-
    elapsed=$(($(date +%s) - t0))
    if ((done_)); then
        # dom0 powers off one second after the job's end; QEMU then exits.
        for _ in $(seq 30); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.5; done
    fi
    if kill -0 "$qpid" 2>/dev/null; then
        ((done_)) || say "killing QEMU (pid $qpid) after $elapsed s: ${infra:-$( ((ready)) && echo "job timeout" || echo "dom0 not ready within $READY_SECS s")}"
        kill "$qpid" 2>/dev/null || true
        sleep 1
        kill -9 "$qpid" 2>/dev/null || true
    fi
    wait "$qpid" 2>/dev/null || true
    say "QEMU exited after $elapsed s"
    ((done_)) && return 0
    [[ -n $infra ]] && ((ready)) && return 3
    ((ready)) && return 2
    return 1
}

# Two nested-Xen labs at once slow each other into timeouts (hotplug scripts,
# guest waits): wait, bounded, until no other outer QEMU runs on this machine
# (another checkout's lab or CI). XENBLK_LAB_IDLE_WAIT: the bound in seconds
# (1800; 0: do not wait).
# (ps exits 1 when none runs: with pipefail that would end this script.)
others() { { ps -C qemu-system-x86 -o pid=,stat= 2>/dev/null || true; } | awk '$2 !~ /Z/ { print $1 }' | tr '\n' ' '; }
idle_t0=$(date +%s)
if [[ -n $(others) ]] && ((${XENBLK_LAB_IDLE_WAIT:-1800} > 0)); then
    say "!!! another QEMU runs on this machine (pid $(others)): waiting for it to end (at most ${XENBLK_LAB_IDLE_WAIT:-1800} s)"
    while [[ -n $(others) ]] && (($(date +%s) - idle_t0 < ${XENBLK_LAB_IDLE_WAIT:-1800})); do sleep 5; done
    left=$(others)
    say "waited $(($(date +%s) - idle_t0)) s for the other QEMU${left:+ (still running: booting anyway)}"
fi

set +e
boot_once "$OUT/serial.log"
rc=$?
if ((rc == 1 || rc == 3)); then
    mv "$OUT/serial.log" "$OUT/serial.attempt1.log"
    say "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    if ((rc == 1)); then
        say "!!! LAB INFRASTRUCTURE FAILED (Xen/dom0 never came up): tail of its log:"
    else
        say "!!! LAB INFRASTRUCTURE FAILED (dom0 or Xen panicked during the job): tail of its log:"
    fi
    tail -n 15 "$OUT/serial.attempt1.log" | sed 's/^/    | /' >&2
    say "!!! RETRYING THE WHOLE BOOT ONCE"
    say "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    boot_once "$OUT/serial.log"
    rc=$?
    ((rc == 1)) && say "!!! LAB INFRASTRUCTURE FAILED TWICE: see $OUT/serial.log"
    ((rc == 3)) && { say "!!! dom0 or Xen panicked again: see $OUT/serial.log"; rc=2; }
fi
rm -f "$OUT/initrd.cpio"
exit $rc
