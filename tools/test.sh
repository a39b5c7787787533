#!/usr/bin/env bash
# skiff's test command, as README gives it and as .ci/run runs it, for a
# fresh Debian machine with only the Rust toolchain and Python:
#   1. (as root) installs the Debian packages the tests need, if missing;
#   2. makes the classifier's model from PyPI (tools/setup-model.sh);
#   3. runs the whole suite: cargo test --workspace;
#   4. runs part of it again on a standard KVM (tools/stdkvm/run.sh:
#      kvm_amd inside QEMU/TCG, nested and shadow paging), and moves
#      snapshots (tools/stdkvm/travel.sh) and live guests (migrate.sh)
#      between the two.
# Ends with one line, "tests: N passed, M failed, K skipped", and a non-zero exit if
# anything failed. SKIFF_NO_STDKVM=1 leaves step 4 out.
set -uo pipefail
cd "$(dirname "$0")/.."

# Every Debian package the tests use, in one place: OpenCL on the CPU
# (accel, classify), runc (oci), ip and ping (net), libseccomp (seccomp's
# cross-check), gdb (debugging), QEMU and busybox (the standard-KVM lane),
# python3 (tools/lint.sh's layering check).
PACKAGES=(pocl-opencl-icd ocl-icd-opencl-dev runc iproute2 iputils-ping
    libseccomp-dev gdb qemu-system-x86 busybox-static curl python3)

if [ "$(id -u)" != 0 ]; then
    echo "tools/test.sh: run me as root: the tests use /dev/kvm, TAPs, network namespaces and runc, and I install Debian packages (${PACKAGES[*]})" >&2
    exit 1
fi
if [ ! -e /dev/kvm ]; then
    echo "tools/test.sh: /dev/kvm is missing: skiff's tests need real KVM" >&2
    exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "tools/test.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        { echo "tools/test.sh: apt-get install ${missing[*]} failed" >&2; exit 1; }
fi

# pocl's kernel cache kept under target/.
export POCL_CACHE_DIR="$PWD/target/pocl-cache"
tools/setup-model.sh || { echo "tools/test.sh: tools/setup-model.sh failed" >&2; exit 1; }

log=$(mktemp "${TMPDIR:-/tmp}/skiff-test.XXXXXX")
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
if [ "${SKIFF_NO_STDKVM:-}" != 1 ]; then
    tools/stdkvm/run.sh 2>&1 | tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    # Snapshots moving between this host's KVM and the lane's, both ways.
    tools/stdkvm/travel.sh 2>&1 | tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    # Live migration between this host and the lane, both ways.
    tools/stdkvm/migrate.sh 2>&1 | tee -a "$log"
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi

# One closing line: cargo prints one "test result:" per binary, the lane
# its own "stdkvm: N passed, M failed". Ignored tests (those that need
# what this machine may lack: vsock loopback, ...) count as skipped, never
# as passed.
awk '/^test result:/ {p += $4; f += $6; k += $8}
     /^stdkvm: [0-9]+ passed/ {p += $2; f += $4}
     END {printf "tests: %d passed, %d failed, %d skipped\n", p, f, k}' "$log"
exit "$status"
