#!/bin/sh
# The lab's job inside dom0 (POSIX sh, runs as /lab/job.sh from the per-run
# cpio). For every configuration /lab/cfg/NN-NAME.meta (+ NN-NAME.cfg, an xl
# config written by boot.sh) it: makes fresh disk images with known content,
# `xl create`s the guest, waits for it to finish, prints the guest's console
# log, the backend/frontend xenstore directories (dumped BEFORE the domain is
# destroyed), `xl dmesg`, the device model log and dom0's kernel log between
# "LAB BEGIN <kind> <name>" / "LAB END <kind> <name> lines=N cksum=C" markers,
# destroys it, and for `verify` runs checks every `xenblk-verify` region
# against the image with dd | cksum. A crashed or silent guest is retried once.
PATH=/usr/lib/xen-4.17/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
WAIT_SECS=180
GRACE_SECS=20
[ -f /lab/run.conf ] && . /lab/run.conf
IMGDIR=/run/lab/img
WORK=/run/lab/work
mkdir -p "$IMGDIR" "$WORK"

. /lab/dom0-lib.sh

# mk_image FILE TAG MIB: an image whose every 512-byte sector names itself.
mk_image() {
    perl -e '
        my ($n, $tag) = @ARGV;
        for my $s (0 .. $n - 1) {
            my $h = sprintf("xenblk-lab image=%s sector=%d ", $tag, $s);
            print $h, "." x (511 - length $h), "\n";
        }' $(($3 * 2048)) "$2" >"$1"
}

# run_config META ATTEMPT: one guest, start to destroy. Sets $status.
run_config() {
    NAME= MODE= IMAGES= VDEVS= LOOPS=
    . "$1"
    cfg=$WORK/$NAME.cfg
    cp "${1%.meta}.cfg" "$cfg"
    dom=lab-$NAME
    t0=$(now)
    echo "LAB BEGIN config $NAME attempt=$2 mode=$MODE"
    for spec in $IMAGES; do
        img=${spec%%:*}
        mib=${spec#*:}
        mk_image "$IMGDIR/$img.img" "$img" "$mib"
    done
    for img in $LOOPS; do
        # A block device, unlike a file in tmpfs, can be opened with O_DIRECT.
        dev=$(losetup -f --show "$IMGDIR/$img.img")
        sed -i "s|@LOOP_$img@|$dev|" "$cfg"
        echo "LAB image $img on $dev"
    done
    echo "LAB images ready for $NAME after $(since "$t0") s: $IMAGES"
    section xl-config "$NAME" "$cfg"
    xl dmesg -c >/dev/null 2>&1
    dmesg -c >/dev/null 2>&1
    rm -f "/var/log/xen/console/guest-$dom.log" /var/log/xen/qemu-dm-"$dom".log
    tc=$(now)
    xl create "$cfg" >"$WORK/create.out" 2>&1
    rc=$?
    domid=$(xl domid "$dom" 2>/dev/null)
    echo "LAB domU $dom created domid=${domid:-none} rc=$rc in $(since "$tc") s"
    status=timeout
    closed=
    tw=$(now)
    log=/var/log/xen/console/guest-$dom.log
    if [ "$rc" != 0 ] || [ -z "$domid" ]; then
        status=create-failed
    else
        while :; do
            st=$(domstate "$dom")
            case $st in
            '') status=vanished; break ;;
            ???s-?) status=shutdown; break ;;
            ???sc? | ???sr?) status=crashed; break ;;
            ???s??) status=shutdown-${st#????}; break ;;
            esac
            el=$(since "$tw")
            if [ -z "$closed" ] && [ -n "$(closing_line "$log")" ]; then
                closed=$el
            fi
            # Closing line printed but no shutdown: give it a grace period.
            if [ -n "$closed" ] && awk -v e="$el" -v c="$closed" -v g="$GRACE_SECS" 'BEGIN { exit !(e > c + g) }'; then
                status=no-shutdown; break
            fi
            awk -v e="$el" -v w="$WAIT_SECS" 'BEGIN { exit !(e > w) }' && break
            sleep 0.5
        done
    fi
    echo "LAB domU $dom finished state=${st:-?} status=$status after $(since "$tw") s"
    tf=$(now)
    # Printed only now: while the guest runs, Xen writes its port-0xe9
    # lines ("(dN) ...") into the same serial log.
    section xl-create "$NAME" "$WORK/create.out"
    sleep 1  # let xenconsoled drain the console ring into its log
    xl list >"$WORK/xl-list" 2>&1
    section xl-list "$NAME" "$WORK/xl-list"
    if [ -n "$domid" ]; then
        : >"$WORK/xs"
        for d in "/local/domain/0/backend/vbd/$domid" "/local/domain/0/backend/qdisk/$domid" \
            "/local/domain/$domid/device/vbd" "/local/domain/0/error" "/local/domain/$domid/error"; do
            xenstore-ls -f "$d" >>"$WORK/xs" 2>/dev/null
        done
        section xenstore "$NAME" "$WORK/xs"
    fi
    [ -f "$log" ] || : >"$log"
    section console "$NAME" "$log"
    xl dmesg -c >"$WORK/xl-dmesg" 2>&1
    section xl-dmesg "$NAME" "$WORK/xl-dmesg"
    if grep -qE 'Triple fault|domain_crash' "$WORK/xl-dmesg"; then
        [ "$status" = shutdown ] && status=crashed
        echo "LAB domU $dom: xl dmesg shows a crash (Triple fault / domain_crash)"
    fi
    if [ -f "/var/log/xen/qemu-dm-$dom.log" ]; then
        section qemu-dm "$NAME" "/var/log/xen/qemu-dm-$dom.log"
    fi
    dmesg -c >"$WORK/dmesg" 2>&1
    tail -n 60 "$WORK/dmesg" >"$WORK/dmesg.tail"
    section dom0-dmesg "$NAME" "$WORK/dmesg.tail"
    if [ -n "$domid" ]; then
        td=$(now)
        xl destroy "$dom" >/dev/null 2>&1
        echo "LAB domU $dom destroyed in $(since "$td") s (the dumps before took $(awk -v a="$tf" -v b="$td" 'BEGIN { printf "%.1f", b - a }') s)"
    fi
    # A guest that shut down without its closing line did not finish.
    if [ "$status" = shutdown ]; then
        if [ -n "$(closing_line "$log")" ]; then
            status=ok
        else
            status=no-closing-line
        fi
    fi
    if [ "$MODE" = verify ] && [ "$status" = ok ]; then
        : >"$WORK/cksum"
        grep -aoE 'xenblk-verify vdev=[0-9]+ sector=[0-9]+ count=[0-9]+ cksum=[0-9]+ bytes=[0-9]+' "$log" |
            while read -r _ v s c k b; do
                v=${v#vdev=} s=${s#sector=} c=${c#count=} k=${k#cksum=} b=${b#bytes=}
                img=
                for m in $VDEVS; do [ "${m%%=*}" = "$v" ] && img=${m#*=}; done
                if [ -z "$img" ]; then
                    echo "LAB-CKSUM vdev=$v sector=$s count=$c want=$k/$b got=no-image match=no"
                    continue
                fi
                got=$(dd if="$img" bs=512 skip="$s" count="$c" status=none | cksum | tr ' ' /)
                m=no
                [ "$got" = "$k/$b" ] && m=yes
                echo "LAB-CKSUM vdev=$v sector=$s count=$c want=$k/$b got=$got match=$m"
            done >"$WORK/cksum"
        section cksum "$NAME" "$WORK/cksum"
    fi
    for img in $LOOPS; do
        losetup -j "$IMGDIR/$img.img" | cut -d: -f1 | while read -r dev; do losetup -d "$dev"; done
    done
    rm -f "$IMGDIR"/*.img
    echo "LAB RESULT name=$NAME attempt=$2 status=$status domid=${domid:-none} seconds=$(since "$t0")"
    echo "LAB END config $NAME"
}

echo "LAB job start (dom0 uptime $(up) s) wait=${WAIT_SECS}s"
for meta in /lab/cfg/*.meta; do
    [ -f "$meta" ] || continue
    run_config "$meta" 1
    case $status in
    ok) ;;
    *)
        echo "LAB !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        echo "LAB !!! RETRY: $(basename "$meta" .meta) ended with status=$status; retrying ONCE !!!"
        echo "LAB !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        run_config "$meta" 2
        ;;
    esac
done
echo "LAB job done (dom0 uptime $(up) s)"
