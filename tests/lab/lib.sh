# Shared helpers for the real-Xen lab scripts (sourced, not run).
# Everything the lab builds or caches lives under $LAB_CACHE.

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$LAB_DIR/../.." && pwd)
LAB_T0=${LAB_T0:-$(date +%s)}
export LAB_T0

# The lab's generations: a Xen release with the Debian release it comes from.
# XENBLK_LAB_XEN picks one (default: the newest). Everything of a generation
# (hypervisor, dom0 kernel and root, the per-generation apt state) is cached
# in its own directory, so building one never rebuilds the other.
#   4.17  Debian 12 (bookworm): the host's own xen-hypervisor-4.17-amd64 and
#         linux-image-amd64 (6.1), a bookworm root (QEMU 7.2 as qdisk).
#   4.20  Debian 13 (trixie): xen-hypervisor-4.20-amd64 and linux-image-amd64
#         (6.12) downloaded from trixie with a private apt state (the host's
#         apt sources are never touched), a trixie root (QEMU 10.0 as qdisk).
#         XENBLK_LAB_DOM0_KERNEL=host boots the host's 6.1 as dom0 instead.
LAB_GENERATIONS="4.17 4.20"
LAB_GEN=${XENBLK_LAB_XEN:-4.20}
# Debian suite and mirror for dom0's root (the Debian registry; nothing else).
LAB_MIRROR=http://deb.debian.org/debian
LAB_SECURITY=http://deb.debian.org/debian-security
case $LAB_GEN in
4.17) LAB_SUITE=bookworm LAB_DOM0_KERNEL=${XENBLK_LAB_DOM0_KERNEL:-host} LAB_HYP=host ;;
4.20) LAB_SUITE=trixie LAB_DOM0_KERNEL=${XENBLK_LAB_DOM0_KERNEL:-suite} LAB_HYP=suite ;;
*)
    printf 'lab: XENBLK_LAB_XEN=%s: not a lab generation (%s)\n' "$LAB_GEN" "$LAB_GENERATIONS" >&2
    exit 2
    ;;
esac
case $LAB_DOM0_KERNEL in
host | suite) ;;
*)
    printf 'lab: XENBLK_LAB_DOM0_KERNEL=%s: host or suite\n' "$LAB_DOM0_KERNEL" >&2
    exit 2
    ;;
esac
# The Xen release the hypervisor package and dom0's tools must agree on.
LAB_XEN=$LAB_GEN
LAB_CACHE_BASE=${XENBLK_CACHE:-${HOME:-/root}/.cache/xenblk}
LAB_CACHE=$LAB_CACHE_BASE/xen-$LAB_GEN

# say MSG: one progress line with the seconds since the lab script started.
say() { printf '[lab %4ds] %s\n' "$(($(date +%s) - LAB_T0))" "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# pkgver PKG: the installed version of a host package ("" if none).
pkgver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || true; }

# kernel_release: the dom0 kernel's release (e.g. 6.1.0-56-amd64), taken
# from what the installed linux-image-amd64 meta package depends on.
kernel_release() {
    local dep
    dep=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null) || return 1
    dep=${dep%% *}
    printf '%s\n' "${dep#linux-image-}"
}

# The generation's own apt state, for a suite the host does not run (4.20:
# trixie): $LAB_CACHE/apt holds a sources.list, the lists and a dpkg status
# of its own, read through APT_CONFIG, so the host's sources, preferences and
# packages are never touched. Used for candidate versions (the cache keys)
# and `apt-get download` of the hypervisor and dom0's kernel.
suite_apt() { APT_CONFIG=$LAB_CACHE/apt/apt.conf "$@"; }

# suite_apt_update: (re)creates the private apt state and refreshes its lists
# when they are older than a day (XENBLK_LAB_APT_REFRESH=1: now).
suite_apt_update() {
    local A=$LAB_CACHE/apt k=/usr/share/keyrings/debian-archive-keyring.gpg
    mkdir -p "$A/etc/apt.conf.d" "$A/etc/preferences.d" "$A/etc/sources.list.d" \
        "$A/state/lists/partial" "$A/cache/archives/partial"
    [[ -f $A/state/status ]] || : >"$A/state/status"
    cat >"$A/apt.conf" <<CONF
Dir::Etc "$A/etc";
Dir::State "$A/state";
Dir::State::status "$A/state/status";
Dir::Cache "$A/cache";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
Acquire::Languages "none";
CONF
    cat >"$A/etc/sources.list" <<SRC
deb [signed-by=$k] $LAB_MIRROR $LAB_SUITE main
deb [signed-by=$k] $LAB_MIRROR $LAB_SUITE-updates main
deb [signed-by=$k] $LAB_SECURITY $LAB_SUITE-security main
SRC
    if [[ ${XENBLK_LAB_APT_REFRESH:-0} == 1 || ! -f $A/updated ]] ||
        (($(date +%s) - $(stat -c %Y "$A/updated") > 86400)) ||
        [[ $(cat "$A/updated") != "$(hash_of "$A/etc/sources.list")" ]]; then
        say "apt ($LAB_SUITE, private state $A): update"
        suite_apt apt-get update -qq >"$A/update.log" 2>&1 ||
            { tail -20 "$A/update.log" >&2; die "apt-get update of $LAB_SUITE failed (log: $A/update.log)"; }
        hash_of "$A/etc/sources.list" >"$A/updated"
    fi
}

# candidate PKG: the version the registry offers for PKG in the generation's
# suite (the host's own lists for bookworm, the private state otherwise).
candidate() {
    if [[ $LAB_SUITE == bookworm ]]; then
        apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p'
    else
        suite_apt apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p'
    fi
}

# stamp_ok NAME KEY: true when NAME was last built with the same KEY and its
# output still exists (the output path is the second line of the stamp).
stamp_ok() {
    local f="$LAB_CACHE/stamps/$1"
    [[ -f $f ]] || return 1
    [[ $(sed -n 1p "$f") == "$2" ]] || return 1
    local out
    out=$(sed -n 2p "$f")
    [[ -n $out && -e $out ]]
}

# stamp_set NAME KEY OUTPUT
stamp_set() {
    mkdir -p "$LAB_CACHE/stamps"
    printf '%s\n%s\n' "$2" "$3" >"$LAB_CACHE/stamps/$1"
}

# hash_of FILE...: one content hash over the given files.
hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# devnull_guard: the host's /dev/null must stay a character device. A dom0
# root built with the host's /dev bound into it once replaced it by a regular
# file; the lab never binds /dev, and this checks it anyway.
devnull_guard() {
    if ! test -c /dev/null; then
        say "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        say "!!! HOST /dev/null IS NOT A CHARACTER DEVICE: repairing it now !!!"
        say "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        rm -f /dev/null && mknod -m 666 /dev/null c 1 3
        test -c /dev/null || die "could not repair /dev/null"
        LAB_DEVNULL_REPAIRED=1
        return 1
    fi
    return 0
}
