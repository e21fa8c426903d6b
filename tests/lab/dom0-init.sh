#!/bin/sh
# dom0's /init in the real-Xen lab: bring up the Xen toolstack by hand (no
# systemd), run the per-run job (/lab/job.sh, from the small cpio appended at
# boot), then power the emulated machine off. Every line it prints goes to
# Xen's serial log, which the host watches; lines starting with "LAB " are
# markers the host scripts parse. The same script serves every generation
# (tests/lab/lib.sh): the toolstack's directory is the root's one
# /usr/lib/xen-<release>/bin (not xen-common, trixie's helper directory).
for d in /usr/lib/xen-[0-9]*/bin; do XEN_BIN=$d; done
XEN_REL=${XEN_BIN#/usr/lib/xen-}
XEN_REL=${XEN_REL%/bin}
export PATH=$XEN_BIN:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root

up() { cut -d' ' -f1 /proc/uptime; }
mark() { echo "LAB $* (dom0 uptime $(up) s)"; }
fail() {
    echo "LAB dom0-failed: $*"
    sleep 2
    busybox poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
# devtmpfs lacks these; without /dev/stdin the hotplug scripts' claim_lock
# (locking.sh) spins and the phy hotplug times out after 40 s.
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mark "dom0-init started"
# Keep the dom0 kernel's chatter off the serial log; the job prints
# `dmesg` excerpts in their own sections.
echo 4 >/proc/sys/kernel/printk

for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs xen-blkback loop null_blk; do
    case $m in
    null_blk) modprobe null_blk nr_devices=0 2>/dev/null || echo "lab: null_blk not loaded" ;;
    *) modprobe "$m" || fail "modprobe $m" ;;
    esac
done
mkdir -p /proc/xen
mount -t xenfs xenfs /proc/xen || fail "mount xenfs"
# null_blk devices are made through configfs (the job's @X+null4k@ disks)
mount -t configfs configfs /sys/kernel/config 2>/dev/null || echo "lab: configfs not mounted"

mkdir -p /run/xenstored /run/xen /var/log/xen/console /var/lib/xen /var/lib/xen/dump
XENSTORED_ROOTDIR=/run/xenstored oxenstored || fail "oxenstored"
i=0
until xenstore-read -s / >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -gt 300 ] && fail "xenstored never answered"
    sleep 0.1
done
xen-init-dom0 >/run/xen-init-dom0.log 2>&1 || { cat /run/xen-init-dom0.log; fail "xen-init-dom0"; }
xenconsoled --log=guest --log-dir=/var/log/xen/console || fail "xenconsoled"
mark "dom0-ready xen=$(xl info xen_version 2>/dev/null) tools=$(dpkg-query -W -f='${Version}' "xen-utils-$XEN_REL" 2>/dev/null) kernel=$(uname -r) qemu=$(dpkg-query -W -f='${Version}' qemu-system-xen 2>/dev/null) debian=$(cat /etc/debian_version)"

if [ -x /lab/job.sh ]; then
    /lab/job.sh
    mark "job-exit rc=$?"
else
    mark "job-exit rc=127 (no /lab/job.sh)"
fi
sync
sleep 1
busybox poweroff -f
