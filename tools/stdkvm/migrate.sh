#!/usr/bin/env bash
# Live migration between this host's KVM and the standard-KVM lane, both
# ways (tests/migrate.rs, moves_between_the_host_and_the_lane): the lane's
# VM gets QEMU's user network (run.sh's STDKVM_NET), this host's port
# $fwd forwarded to the lane's 7700, and reaches this host's loopback at
# 10.0.2.2. The host side of the test runs here at the same time:
#   1. the lane listens (`skiff run --incoming`) and says so on its console;
#      a ticker here is migrated into it through the forwarded port;
#   2. a ticker in the lane is migrated to a `skiff run --incoming` here.
# Each move is refused with one line before memory (expected: another
# CPU, another boot) and the source runs on, or it succeeds and the
# guest's output continues. One boot, nested paging only (STDKVM_MODES).
# Exits non-zero if either side fails.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${STDKVM_OUT:-$PWD/target/stdkvm}
mkdir -p "$out"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fwd=$(free_port)
back=$(free_port)
nonce=$RANDOM$RANDOM
name=moves_between_the_host_and_the_lane
rm -f "$out/console.log"
cargo test --test migrate --no-run 2>/dev/null
SKIFF_TEST_LANE_LOG=$out/console.log SKIFF_TEST_LANE_FWD=$fwd SKIFF_TEST_LANE_BACK=$back \
    SKIFF_TEST_LANE_NONCE=$nonce \
    cargo test --test migrate -- --ignored --exact $name --nocapture >"$out/migrate-host.log" 2>&1 &
host=$!
trap 'kill $host 2>/dev/null || true' EXIT
lane=0
STDKVM_LIMIT=${STDKVM_LIMIT:-1200} STDKVM_NET="hostfwd=tcp:127.0.0.1:$fwd-:7700" STDKVM_MODES=${STDKVM_MODES:-npt} STDKVM_SKIP="" \
    STDKVM_ENV="SKIFF_TEST_LANE_HOST=10.0.2.2 SKIFF_TEST_LANE_BACK=$back SKIFF_TEST_LANE_NONCE=$nonce" \
    STDKVM_FILTER="--ignored --exact $name --nocapture" tools/stdkvm/run.sh migrate || lane=$?
# The host side ends on its own once the lane's move back has come or
# failed; if the lane died first, it would wait for it: stop it then.
[ "$lane" = 0 ] || kill $host 2>/dev/null || true
hostrc=0
wait $host || hostrc=$?
trap - EXIT
grep -a '^@@lane ' "$out/console.log" | tr -d '\r' || true
grep -aE '^(host -> lane|lane -> host|test |thread )' "$out/migrate-host.log" || true
echo "migrate: lane rc=$lane, host side rc=$hostrc (its log: $out/migrate-host.log)"
[ "$lane" = 0 ] && [ "$hostrc" = 0 ]
