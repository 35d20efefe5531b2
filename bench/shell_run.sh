#!/bin/sh
# The floor for `ctr run --rm IMG CMD` (process isolation, overlay driver): the same work in
# shell — a throwaway upper/work directory, an overlay over the image's layer in a private
# mount namespace, /proc, chroot, exec, then delete the directory.
#
#   bench/shell_run.sh LOWERDIR WORKBASE CMD [ARG...]
set -e
lower=$1
base=$2
shift 2
d=$(mktemp -d "$base/run.XXXXXX")
mkdir "$d/upper" "$d/work" "$d/merged"
unshare --mount --propagation private sh -c '
    l=$1; d=$2; shift 2
    mount -t overlay overlay -o "lowerdir=$l,upperdir=$d/upper,workdir=$d/work" "$d/merged"
    mount -t proc proc "$d/merged/proc"
    exec chroot "$d/merged" "$@"' sh "$lower" "$d" "$@"
rm -rf "$d"
