#!/usr/bin/env bash
# Builds the guest of README.md's "Your own unikernel" exactly as written:
# every fenced block of that section whose first line names a file
# (`# Cargo.toml`, `# .cargo/config.toml`, `// src/main.rs`, `// build.rs`)
# becomes that file of a crate `myguest`, placed next to a link named
# `xenblk` to this repository (the README's "next to a clone of xenblk"),
# outside the repository so that no workspace of ours claims it. Then
# `cargo build --release` there. Prints the ELF's path.
#   tests/readme-guest.sh            build, print the ELF
#   tests/readme-guest.sh --path     print where the ELF will be
# The lab boots it under Xen (mode `readme` of a matrix) and
# tests/unikernel-noxen.sh under plain QEMU.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
BASE=${XENBLK_CACHE:-${HOME:-/root}/.cache/xenblk}/readme-guest
CRATE=$BASE/myguest
ELF=$BASE/target/x86_64-unknown-none/release/myguest
if [[ ${1:-} == --path ]]; then
    echo "$ELF"
    exit 0
fi

# The section's blocks, each to the file its first line names.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
awk -v out="$tmp" '
    /^### Your own unikernel/ { in_sec = 1; next }
    in_sec && /^##/ { in_sec = 0 }
    !in_sec { next }
    /^```/ {
        if (in_block) { in_block = 0; if (file != "") close(out "/" file); file = ""; next }
        in_block = 1; first = 1; next
    }
    in_block && first {
        first = 0
        if (match($0, /^(#|\/\/) [A-Za-z0-9_.\/-]+$/)) {
            file = $2
            gsub(/\//, "%", file)
        }
    }
    in_block && file != "" { print > (out "/" file) }
' README.md
for f in Cargo.toml .cargo%config.toml src%main.rs build.rs; do
    [[ -s $tmp/$f ]] || { echo "readme-guest: README.md's \"Your own unikernel\" has no block for ${f//%//}" >&2; exit 1; }
done
mkdir -p "$CRATE/src" "$CRATE/.cargo"
ln -sfn "$REPO" "$BASE/xenblk"
for f in Cargo.toml .cargo%config.toml src%main.rs build.rs; do
    # rewrite only what changed, so that cargo rebuilds only then
    cmp -s "$tmp/$f" "$CRATE/${f//%//}" 2>/dev/null || cp "$tmp/$f" "$CRATE/${f//%//}"
done
echo "readme-guest: building $CRATE (README.md's \"Your own unikernel\", as written)" >&2
(cd "$CRATE" && CARGO_TARGET_DIR=$BASE/target cargo build --release --quiet) >&2
[[ -f $ELF ]] || { echo "readme-guest: no $ELF after the build" >&2; exit 1; }
echo "$ELF"
