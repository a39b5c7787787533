#!/bin/sh
# The static checks CI runs (.ci/run calls this): formatting (skiff and the
# guests workspace), clippy with warnings as errors (the workspace lints in
# Cargo.toml deny undocumented unsafe blocks), and the layering rule
# (tools/layers.py: a module uses only lower layers; crate::cli is the top,
# so nothing outside src/cli/ uses it).
# Runs every check, then exits non-zero if any failed.
set -u
cd "$(dirname "$0")/.."
failed=""

step() {
    name=$1
    shift
    echo "lint: $name"
    if ! "$@"; then
        failed="$failed $name"
    fi
}

step fmt cargo fmt --all --check
step fmt-guests sh -c 'cd guests && cargo fmt --check'
step clippy cargo clippy --workspace --all-targets -- -D warnings
step layering python3 tools/layers.py

if [ -n "$failed" ]; then
    echo "lint: FAILED:$failed"
    exit 1
fi
echo "lint: all checks passed"
