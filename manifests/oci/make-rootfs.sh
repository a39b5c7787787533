#!/bin/sh
# Makes manifests/oci/rootfs from the built binaries (cargo build --release
# --workspace), then: echo hi | runc run --bundle manifests/oci skiff-echo
# Host libraries are bind-mounted read-only by config.json; the hook runs
# /usr/local/bin/skiff on the host (install it there first).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
root="$here/rootfs"
rm -rf "$root"
mkdir -p "$root/bin" "$root/functions" "$root/proc" "$root/dev" "$root/usr/lib" "$root/usr/lib64"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"
cp "$top/target/release/skiff" "$root/bin/skiff"
cp "$top/target/guests/echo.hvt" "$top/target/guests/meta.hvt" "$root/functions/"
