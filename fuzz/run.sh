#!/usr/bin/env bash
# Runs every skiff fuzz target for a fixed time, one after another:
#   fuzz/run.sh [SECONDS_PER_TARGET [TARGET...]]   (default: 60 s, all)
# The image target's corpus is seeded with the bundled guests
# (target/guests/*.hvt, built by `cargo build --workspace`), model_blob's
# with a tiny valid model (seed_model.py). Exits non-zero
# on the first crash; libFuzzer leaves the input in fuzz/artifacts/TARGET/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
targets=(image manifest hypercall pool_request agent_frame model_blob snapshot migrate_stream)
if [ $# -gt 1 ]; then targets=("${@:2}"); fi

command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cargo +nightly fuzz build

mkdir -p corpus/image
cp -n ../target/guests/*.hvt corpus/image/ 2>/dev/null || true
mkdir -p corpus/model_blob
[ -e corpus/model_blob/tiny.safetensors ] || python3 seed_model.py corpus/model_blob/tiny.safetensors

for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "fuzz: $t for ${secs}s"
    cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -max_len=65536 2>&1 |
        grep -E '^#[0-9]+[[:space:]]+(INITED|DONE)|stat::|ERROR|panicked|SUMMARY|Test unit written' || true
    # pipefail would mask libFuzzer's status behind grep: check for a crash file.
    if compgen -G "artifacts/$t/crash-*" >/dev/null || compgen -G "artifacts/$t/leak-*" >/dev/null; then
        echo "fuzz: $t found a crash: $(ls artifacts/$t/)" >&2
        exit 1
    fi
done
echo "fuzz: all targets ran ${secs}s each without a crash"
