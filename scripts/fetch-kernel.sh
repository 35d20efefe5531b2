#!/bin/sh
# Fetch Debian's generic amd64 kernel package and import it (unpacked by ctr's own pure-Python
# importer, never installed on the host) into DEST_DIR/<release>/ for ctr's qemu drivers and
# their tests.  Idempotent: does nothing when DEST_DIR already holds an imported kernel.
#
#   scripts/fetch-kernel.sh [--with-deps] [--force] [DEST_DIR]
#
#   DEST_DIR     default: $CTR_TEST_KERNEL_DIR, else /var/cache/ctr-test-kernel
#   --with-deps  also apt-get install qemu-system-x86 and busybox-static when missing (root)
#   --force      re-import even when a kernel is already there
#
# Use the result with CTR_KERNEL=DEST_DIR/<release> or CTR_TEST_KERNEL_DIR=DEST_DIR.
set -eu

with_deps= force=
while [ $# -gt 0 ]; do
    case "$1" in
    --with-deps) with_deps=1 ;;
    --force) force=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "fetch-kernel: unknown option $1" >&2; exit 2 ;;
    *) break ;;
    esac
    shift
done
dest=${1:-${CTR_TEST_KERNEL_DIR:-/var/cache/ctr-test-kernel}}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}

updated=
apt_update() { [ -n "$updated" ] || { apt-get update -qq; updated=1; }; }

if [ -n "$with_deps" ]; then
    missing=
    command -v qemu-system-x86_64 >/dev/null 2>&1 || missing="$missing qemu-system-x86"
    dpkg -s busybox-static >/dev/null 2>&1 || missing="$missing busybox-static"
    if [ -n "$missing" ]; then
        apt_update
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    fi
fi

if [ -z "$force" ] && ls "$dest"/*/kernel.json >/dev/null 2>&1; then
    echo "fetch-kernel: already have $(ls -d "$dest"/*/ | head -1)"
    exit 0
fi

# The metapackage linux-image-amd64 only depends on the real, versioned package.
pkg() { apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-amd64\)$/\1/p' | grep -v -- -cloud- | head -1; }
name=$(pkg)
if [ -z "$name" ]; then
    apt_update
    name=$(pkg)
fi
if [ -z "$name" ]; then
    echo "fetch-kernel: cannot find the linux-image-*-amd64 package (apt-cache depends linux-image-amd64)" >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetch-kernel: downloading $name"
(cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$name" >/dev/null) || {
    apt_update
    (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$name" >/dev/null)
}
mkdir -p "$dest"
PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" "$python" - "$tmp"/*.deb "$dest" <<'PY'
import sys, time
from ctr.qemu.kernel import import_kernel
t = time.monotonic()
k = import_kernel(sys.argv[1], sys.argv[2])
print(f"fetch-kernel: imported {k.release} -> {k.image.parent} ({time.monotonic() - t:.1f} s)")
PY
