# Shell functions of the lab's jobs in dom0 (POSIX sh), sourced by
# /lab/job.sh and the in-guest benchmark's /lab/serve.sh; boot.sh puts this
# file in the per-run cpio as /lab/dom0-lib.sh. The sourcing script sets
# WORK (a scratch directory) first.

# Seconds since the epoch with two decimals; seconds since $1; dom0's uptime.
now() { date +%s.%N | cut -c1-14; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
up() { cut -d' ' -f1 /proc/uptime; }

# section KIND NAME FILE: print FILE between markers; the END marker carries
# the line count and POSIX cksum so the host can detect a mangled serial log.
section() {
    # no CRs, and a final newline (else the END marker joins the last line)
    tr -d '\r' <"$3" | sed -e '$a\' >"$WORK/section"
    echo "LAB BEGIN $1 $2"
    cat "$WORK/section"
    echo "LAB END $1 $2 lines=$(wc -l <"$WORK/section") cksum=$(cksum <"$WORK/section" | cut -d' ' -f1)"
}

# domstate DOM: the State column of `xl list DOM` (empty if it is gone):
# r b p s <shutdown reason: - poweroff, r reboot, s suspend, c crash,
# w watchdog, S soft reset> d. An HVM/PVH triple fault is a "reboot".
domstate() { xl list "$1" 2>/dev/null | awk 'NR == 2 { print $5 }'; }

# closing_line LOG: the guest's closing `xenblk: N passed, M failed` line
# (the minimal example's: `xenblk-minimal: read N disk(s)` or `... error: ...`;
# the README's guest's: `myguest: done, N disk(s)`).
closing_line() {
    grep -aE '^(\([d0-9]+\) )?(xenblk: [0-9]+ passed, [0-9]+ failed|xenblk-minimal: (read [0-9]+ disk|error: )|myguest: done, [0-9]+ disk)' \
        "$1" 2>/dev/null | tail -n1
}
