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
# Besides the dumps, a `geometry` section gives dom0's own view of every disk
# (image size, and for a disk on a block device its logical and physical
# block size and size, from blockdev).
for d in /usr/lib/xen-[0-9]*/bin; do PATH=$d; done
PATH=$PATH:/usr/sbin:/usr/bin:/sbin:/bin
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

# FAT images (the `fs` guests): an MBR with one FAT16 partition (type 0x0e)
# from 1 MiB to the end, made with sfdisk and mkfs.vfat; mtools reach it
# as IMG@@1M.
FAT_OFF=1048576
export MTOOLS_SKIP_CHECK=1

# mk_fat IMG VDEV: makes IMG such a disk holding DATA.BIN (random bytes, not a
# whole number of sectors), CKSUM.TXT (`cksum DATA.BIN`) and DOCS/README.TXT,
# and prints what it put there: `LAB-FS-PUT vdev= name= bytes=` per file.
mk_fat() {
    echo 'start=2048, type=e' | sfdisk -q "$1" >/dev/null || return 1
    kib=$(($(stat -c %s "$1") / 1024 - FAT_OFF / 1024))
    mkfs.vfat -F 16 -n XENBLK --offset $((FAT_OFF / 512)) "$1" "$kib" >/dev/null || return 1
    rm -rf "$WORK/fat" && mkdir -p "$WORK/fat"
    head -c 200003 /dev/urandom >"$WORK/fat/DATA.BIN"
    (cd "$WORK/fat" && cksum DATA.BIN >CKSUM.TXT)
    echo "made by dom0's mkfs.vfat and mcopy for vdev $2" >"$WORK/fat/README.TXT"
    mcopy -i "$1@@$FAT_OFF" "$WORK/fat/DATA.BIN" "$WORK/fat/CKSUM.TXT" :: || return 1
    mmd -i "$1@@$FAT_OFF" ::DOCS && mcopy -i "$1@@$FAT_OFF" "$WORK/fat/README.TXT" ::DOCS || return 1
    for f in DATA.BIN CKSUM.TXT README.TXT; do
        n=$f
        [ $f = README.TXT ] && n=DOCS/README.TXT
        echo "LAB-FS-PUT vdev=$2 name=/$n bytes=$(stat -c %s "$WORK/fat/$f")"
    done
}

# fs_back LOG: after an `fs` guest, per disk: the file the guest says it
# wrote (`xenblk-fs vdev= wrote= cksum= bytes=`) read back from the image
# with mcopy and its cksum compared, or, where it wrote none (a read-only
# disk), that GUEST.TXT is not there (`LAB-FS vdev= file= want= got=
# match=`); then the partition checked with `fsck.fat -n` (`LAB-FSCK vdev=
# rc=`, its output before it).
fs_back() {
    for m in $VDEVS; do
        v=${m%%=*} img=${m#*=}
        w=$(grep -aoE "xenblk-fs vdev=$v wrote=[A-Z0-9.]+ cksum=[0-9]+ bytes=[0-9]+" "$1" | tail -n1)
        if [ -n "$w" ]; then
            for t in $w; do
                case $t in
                wrote=*) f=${t#wrote=} ;;
                cksum=*) want=${t#cksum=} ;;
                bytes=*) want=$want/${t#bytes=} ;;
                esac
            done
            got=$(mcopy -n -i "$img@@$FAT_OFF" "::$f" - 2>/dev/null | cksum | tr ' ' /)
        else
            f=GUEST.TXT want=absent got=absent
            mdir -b -i "$img@@$FAT_OFF" "::$f" >/dev/null 2>&1 && got=present
        fi
        ok=no
        [ "$got" = "$want" ] && ok=yes
        echo "LAB-FS vdev=$v file=$f want=$want got=$got match=$ok"
        dd if="$img" of="$WORK/part" bs=1M skip=1 status=none
        fsck.fat -n "$WORK/part" >"$WORK/fsck" 2>&1
        rc=$?
        sed 's/^/LAB-FSCK-OUT /' "$WORK/fsck"
        echo "LAB-FSCK vdev=$v rc=$rc"
        rm -f "$WORK/part"
    done
}

# mk_dev IMG KIND MIB: puts image IMG on a block device of KIND and prints
# the device: loop (512-byte sectors), loop4k (losetup --sector-size 4096),
# null4k (a memory-backed null_blk instance with 4 KiB blocks, made through
# configfs, filled with the image's content).
mk_dev() {
    case $2 in
    loop) losetup -f --show "$IMGDIR/$1.img" ;;
    loop4k) losetup -f --show --sector-size 4096 "$IMGDIR/$1.img" ;;
    null4k)
        c=/sys/kernel/config/nullb/labnull$1
        mkdir "$c" || return 1
        echo 4096 >"$c/blocksize"
        echo "$3" >"$c/size"
        echo 1 >"$c/memory_backed"
        echo 1 >"$c/power" || return 1
        # named after the configfs directory on newer kernels, nullb<index> before
        dev=/dev/labnull$1
        [ -b "$dev" ] || dev=/dev/nullb$(cat "$c/index")
        i=0
        while [ ! -b "$dev" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
        dd if="$IMGDIR/$1.img" of="$dev" bs=1M status=none conv=fsync || return 1
        echo "$dev"
        ;;
    *) return 1 ;;
    esac
}

# dev_of IMG: the device mk_dev made for IMG ("" if none).
dev_of() {
    for m in $DEVMAP; do [ "${m%%=*}" = "$1" ] && echo "${m#*=}"; done
}

# rm_devs: back to plain images: flush each device's buffers, copy a null_blk
# device's content back into its image (so the cksums read what the guest
# left on the device), remove the devices.
rm_devs() {
    for m in $DEVMAP; do
        img=${m%%=*} dev=${m#*=}
        blockdev --flushbufs "$dev" 2>/dev/null
        case $dev in
        /dev/loop*) losetup -d "$dev" ;;
        *)
            dd if="$dev" of="$IMGDIR/$img.img" bs=1M status=none
            c=/sys/kernel/config/nullb/labnull$img
            echo 0 >"$c/power"
            rmdir "$c"
            ;;
        esac
    done
    DEVMAP=
}

# geometry: per disk of the guest, dom0's view: the image's size, and for a
# disk on a block device (one the job made, or the loop device blkback's
# hotplug script made: physical-device) blockdev's logical block size,
# physical block size and size in bytes.
geometry() {
    for m in $VDEVS; do
        v=${m%%=*} path=${m#*=}
        img=$(basename "$path" .img)
        dev=$(dev_of "$img")
        if [ -z "$dev" ]; then
            be=$(xenstore-read "/local/domain/$domid/device/vbd/$v/backend" 2>/dev/null)
            pd=$(xenstore-read "$be/physical-device" 2>/dev/null)
            if [ -n "$pd" ] && [ -r "/sys/dev/block/$((0x${pd%%:*})):$((0x${pd#*:}))/uevent" ]; then
                dev=/dev/$(sed -n 's/^DEVNAME=//p' "/sys/dev/block/$((0x${pd%%:*})):$((0x${pd#*:}))/uevent")
            fi
        fi
        if [ -n "$dev" ] && [ -b "$dev" ]; then
            g="getss=$(blockdev --getss "$dev") getpbsz=$(blockdev --getpbsz "$dev") getsize64=$(blockdev --getsize64 "$dev")"
        else
            dev=- g="getss=- getpbsz=- getsize64=-"
        fi
        echo "LAB-GEOM vdev=$v image=$img bytes=$(stat -c %s "$path") dev=$dev $g"
    done
}

# run_config META ATTEMPT: one guest, start to destroy. Sets $status.
run_config() {
    NAME= MODE= ACTION= IMAGES= VDEVS= DEVS=
    DEVMAP=
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
    if [ "$MODE" = fs ]; then
        : >"$WORK/fsput"
        for m in $VDEVS; do
            mk_fat "${m#*=}" "${m%%=*}" >>"$WORK/fsput" || echo "LAB !!! could not make a FAT image at ${m#*=}"
        done
        section fs-put "$NAME" "$WORK/fsput"
    fi
    for spec in $DEVS; do
        # A block device, unlike a file in tmpfs, can be opened with O_DIRECT.
        img=${spec%%:*}
        mib=64
        for i in $IMAGES; do [ "${i%%:*}" = "$img" ] && mib=${i#*:}; done
        dev=$(mk_dev "$img" "${spec#*:}" "$mib")
        if [ -z "$dev" ]; then
            echo "LAB !!! could not put image $img on a ${spec#*:} device"
            continue
        fi
        DEVMAP="$DEVMAP $img=$dev"
        sed -i "s|@DEV_$img@|$dev|g" "$cfg"
        echo "LAB image $img on $dev (${spec#*:}, logical block size $(blockdev --getss "$dev"))"
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
    acted=
    : >"$WORK/action.out"
    tw=$(now)
    log=/var/log/xen/console/guest-$dom.log
    if [ "$rc" != 0 ] || [ -z "$domid" ]; then
        status=create-failed
        # libxl timed out waiting for the guest's QEMU (qdisk) to start: seen
        # on 4.20 under TCG (docs/LAB.md); no guest ran
        grep -q 'device model did not start' "$WORK/create.out" && status=dm-start-failed
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
            # ACTION=<cmd>[:<arg>]@<s>,...: each after <s> seconds, in the
            # background (bounded), as an operator would: `xl shutdown -w`,
            # `xl block-detach <dom> <arg>`
            for a in $(echo "$ACTION" | tr ',' ' '); do
                case " $acted " in *" $a "*) continue ;; esac
                awk -v e="$el" -v s="${a#*@}" 'BEGIN { exit !(e >= s) }' || continue
                acted="$acted $a"
                c=${a%@*} arg=
                case $c in *:*) arg=${c#*:} c=${c%%:*} ;; esac
                # (no set --: run_config's own $1 and $2 are still needed)
                case $c in
                block-detach | block-attach) xl_args="$c $dom $arg" ;;
                *) xl_args="$c -w $dom" ;;
                esac
                (
                    ta=$(now)
                    # shellcheck disable=SC2086 # words without spaces
                    timeout 120 xl $xl_args >"$WORK/action.$c.out" 2>&1
                    rc=$?
                    sed "s/^/LAB-ACTION-OUT /" "$WORK/action.$c.out"
                    echo "LAB-ACTION cmd=$c arg=${arg:--} at=${a#*@} rc=$rc seconds=$(since "$ta")"
                ) >>"$WORK/action.out" &
                echo "LAB $dom: xl $xl_args after $el s"
            done
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
    if [ -n "$acted" ]; then
        wait
        section action "$NAME" "$WORK/action.out"
    fi
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
        geometry >"$WORK/geometry" 2>&1
        section geometry "$NAME" "$WORK/geometry"
        # Every write and rm xenstored saw under the guest's frontend and
        # backend directories (oxenstored's access log, on by default): the
        # frontend removes its ring keys when it closes, so the dump above no
        # longer has them, and a backend's states come and go.
        cat /var/log/xen/xenstored-access.log* 2>/dev/null |
            grep -aE " (write|rm) +/local/domain/($domid/device/vbd|0/backend/(vbd|qdisk)/$domid)/" >"$WORK/xslog"
        section xs-log "$NAME" "$WORK/xslog"
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
        # the guest's device model (qdisk) must be gone before the devices
        # are flushed and read back
        i=0
        while pgrep -f -- "-xen-domid $domid " >/dev/null 2>&1 && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        echo "LAB domU $dom destroyed in $(since "$td") s (the dumps before took $(awk -v a="$tf" -v b="$td" 'BEGIN { printf "%.1f", b - a }') s)"
    fi
    rm_devs
    # A guest that shut down without its closing line did not finish (your
    # own guest, mode own, has none of ours: powering off is its end).
    if [ "$status" = shutdown ] && [ "$MODE" = own ]; then
        status=ok
    elif [ "$status" = shutdown ]; then
        if [ -n "$(closing_line "$log")" ]; then
            status=ok
        else
            status=no-closing-line
        fi
    fi
    if { [ "$MODE" = verify ] || [ "$MODE" = hold ]; } && [ "$status" = ok ]; then
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
    if [ "$MODE" = fs ] && [ "$status" = ok ]; then
        fs_back "$log" >"$WORK/fsback"
        section fs-back "$NAME" "$WORK/fsback"
    fi
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
        # a device model that did not start is the emulator's slowness, not
        # the guest's: one more attempt
        if [ "$status" = dm-start-failed ]; then
            echo "LAB !!! RETRY: $(basename "$meta" .meta) ended with status=$status again; one more attempt !!!"
            run_config "$meta" 3
        fi
        ;;
    esac
done
echo "LAB job done (dom0 uptime $(up) s)"
