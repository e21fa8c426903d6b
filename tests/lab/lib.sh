# Shared helpers for the real-Xen lab scripts (sourced, not run).
# Everything the lab builds or caches lives under $LAB_CACHE.

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$LAB_DIR/../.." && pwd)
LAB_CACHE=${XENBLK_CACHE:-$HOME/.cache/xenblk}
LAB_T0=${LAB_T0:-$(date +%s)}
export LAB_T0

# Debian suite and mirror for dom0's root (the Debian registry; nothing else).
LAB_SUITE=bookworm
LAB_MIRROR=http://deb.debian.org/debian
LAB_SECURITY=http://deb.debian.org/debian-security
# The Xen release the hypervisor package and dom0's tools must agree on.
LAB_XEN=4.17

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
