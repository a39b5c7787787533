#!/usr/bin/env bash
# Snapshots both ways between this host's KVM and the standard-KVM lane
# (tests/snapshot.rs, snapshots_travel_between_kvms):
#   1. here: a snapshot of the clock guest goes to $out/carry-in;
#   2. in the lane (tools/stdkvm/run.sh, STDKVM_MODES as there): it is
#      restored with the right clock or refused with one line, as `skiff
#      inspect` says beforehand; the lane's own snapshot comes back out;
#   3. a second boot of the lane (another host: its own boot and TSC)
#      must restore the first boot's snapshot, a fleet's (--cpu-template
#      baseline), with the right clock;
#   4. here: the same for the lane's snapshot (on kvm_pvm, one from
#      another boot: refused, saying so).
# Exits non-zero if any step fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${STDKVM_OUT:-$PWD/target/stdkvm}
test=(cargo test --test snapshot -- --exact snapshots_travel_between_kvms --nocapture)
rm -rf "$out/carry-in" "$out/carry-out" && mkdir -p "$out/carry-in"
SKIFF_TEST_CARRY_OUT=$out/carry-in "${test[@]}"
STDKVM_CARRY=$out/carry-in STDKVM_SKIP="" \
    STDKVM_FILTER="--exact snapshots_travel_between_kvms" tools/stdkvm/run.sh snapshot
compgen -G "$out/carry-out/*.snap" >/dev/null ||
    { echo "travel: the lane left no snapshot" >&2; exit 1; }
cat "$out"/carry-out/*.txt
rm -rf "$out/carry-lane" && mkdir -p "$out/carry-lane"
cp "$out"/carry-out/*.snap "$out/carry-lane/"
STDKVM_CARRY=$out/carry-lane STDKVM_CARRY_MUST_RESTORE=stdkvm STDKVM_MODES=npt STDKVM_SKIP="" \
    STDKVM_FILTER="--exact snapshots_travel_between_kvms" tools/stdkvm/run.sh snapshot
cat "$out"/carry-out/*.txt
SKIFF_TEST_CARRY_IN=$out/carry-out "${test[@]}"
