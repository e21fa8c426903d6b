#!/usr/bin/env bash
# Boots the example unikernel under plain QEMU (no Xen: QEMU's own PVH loader,
# `-kernel` with the XEN_ELFNOTE_PHYS32_ENTRY note) and checks what it says:
#   1. with a command line: the banner, then "no Xen hypervisor found", and
#      exit through isa-debug-exit with code 0x10 (QEMU status 33);
#   2. selftest=panic and selftest=exception: a "xenblk-panic:" line and the
#      panic exit code 0x11 (QEMU status 35) — the panic handler and the
#      exception stubs work, so a bug is never a silent triple fault;
#   3. the minimal example and the README's guest boot on the same platform;
#   4. the host unit tests of unikernel/src/cksum.rs (the CRC that `verify`
#      prints for dom0), built on their own with rustc --test: known vectors
#      and a comparison with the cksum binary; and those of
#      unikernel/src/benchcmd.rs (the parser of dom0's `bench serve` commands)
#      and of pvh-rt/src/memmap.rs (the heap's regions from the memory map).
# Port 0xe9 is QEMU's debugcon (Xen's HVM debug port, too).
# Usage: tests/unikernel-noxen.sh [ELF]  (default: the release build)
set -euo pipefail
cd "$(dirname "$0")/.."

ELF=${1:-unikernel/target/x86_64-unknown-none/release/xenblk-unikernel}
QEMU=${XENBLK_QEMU:-qemu-system-x86_64}
[[ -f $ELF ]] || { echo "unikernel-noxen: $ELF missing (make unikernel)" >&2; exit 1; }
command -v "$QEMU" >/dev/null || { echo "unikernel-noxen: $QEMU not installed (make setup)" >&2; exit 1; }

passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok   - $1"; }
not_ok() { failed=$((failed + 1)); echo "FAIL - $1"; }

# boot APPEND: runs QEMU (bounded), leaves the output in $out and status in $rc.
boot() {
    local log
    log=$(mktemp)
    set +e
    timeout 60 "$QEMU" -accel tcg -m 128 -kernel "$ELF" -append "$1" \
        -device isa-debug-exit,iobase=0xf4,iosize=4 \
        -display none -monitor none -serial none -debugcon "file:$log" -no-reboot \
        </dev/null >/dev/null 2>&1
    rc=$?
    set -e
    out=$(cat "$log")
    rm -f "$log"
    printf '%s\n' "$out" | sed 's/^/    | /'
}

# expect NAME REGEX: one check that some line of $out matches REGEX.
expect() {
    if grep -Eq -- "$2" <<<"$out"; then ok "$1"; else not_ok "$1 (no line matching: $2)"; fi
}

boot "verify disk=xvda"
expect "banner names mode and command line" '^xenblk-unikernel: mode=verify cmdline="verify disk=xvda"$'
expect "no-Xen line" '^xenblk-unikernel: no Xen hypervisor found \(CPUID 0x40000000 leaf signature "[^"]*"\)$'
[[ $rc == 33 ]] && ok "exit through isa-debug-exit 0x10 (status 33)" || not_ok "exit status $rc, wanted 33"
if grep -q 'xenblk-panic' <<<"$out"; then not_ok "no panic on the no-Xen path"; else ok "no panic on the no-Xen path"; fi

boot ""
expect "empty command line means mode info" '^xenblk-unikernel: mode=info cmdline=""$'
[[ $rc == 33 ]] && ok "empty command line exits 33" || not_ok "empty command line: exit status $rc, wanted 33"

for what in panic exception; do
    boot "info selftest=$what"
    expect "selftest=$what prints xenblk-panic" '^xenblk-panic: '
    [[ $rc == 35 ]] && ok "selftest=$what exits 0x11 (status 35)" || not_ok "selftest=$what: exit status $rc, wanted 35"
done
expect "an exception names its vector, its name and rip" '^xenblk-panic: CPU exception 6 \(#UD invalid opcode, error 0x0\) at rip 0x[0-9a-f]+, rsp 0x[0-9a-f]+$'

# The minimal example on the same platform (xenblk-pvh-rt): it boots, says
# that there is no Xen, and leaves with the same status.
MIN_ELF=examples/minimal/target/x86_64-unknown-none/release/xenblk-minimal
if [[ -f $MIN_ELF ]]; then
    main_elf=$ELF ELF=$MIN_ELF
    boot ""
    ELF=$main_elf
    expect "the minimal unikernel boots on xenblk-pvh-rt" '^xenblk-minimal: not running under Xen$'
    [[ $rc == 33 ]] && ok "the minimal unikernel exits 33" || not_ok "minimal: exit status $rc, wanted 33"
else
    not_ok "$MIN_ELF missing (make unikernel)"
fi

# The README's guest ("Your own unikernel", built as written by
# tests/readme-guest.sh): without Xen it prints its command line and leaves
# with the status the README says (7).
README_ELF=$(bash tests/readme-guest.sh --path)
if [[ -f $README_ELF ]]; then
    main_elf=$ELF ELF=$README_ELF
    boot "hello world"
    ELF=$main_elf
    expect "the README's guest boots and prints its command line" '^myguest: cmdline="hello world"$'
    [[ $rc == 7 ]] && ok "the README's guest exits 7 as the README says" || not_ok "README guest: exit status $rc, wanted 7"
else
    not_ok "$README_ELF missing (make unikernel)"
fi

# The CRC module, the bench-command parser and the platform's heap planner
# (pvh-rt/src/memmap.rs) are core-only, so the host can build each as a
# test crate.
ckdir=$(mktemp -d)
for f in unikernel/src/cksum.rs unikernel/src/benchcmd.rs pvh-rt/src/memmap.rs; do
    m=$(basename "$f" .rs)
    if rustc --edition 2021 --test -o "$ckdir/$m-test" "$f" 2>"$ckdir/err" &&
        "$ckdir/$m-test" >"$ckdir/out" 2>&1; then
        ok "$m.rs host tests ($(grep -o '[0-9]* passed' "$ckdir/out"))"
    else
        cat "$ckdir/err" "$ckdir/out" 2>/dev/null | sed 's/^/    | /'
        not_ok "$m.rs host tests"
    fi
done
rm -rf "$ckdir"

echo "unikernel-noxen: $passed passed, $failed failed"
((failed == 0))
