#!/bin/sh
# The static checks CI runs (.ci/run calls this): formatting (skiff and the
# guests workspace), clippy with warnings as errors (the workspace lints in
# Cargo.toml deny undocumented unsafe blocks), and the layering rule that
# only src/cli/ and src/main.rs may use crate::cli.
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

# Library modules report through typed errors; only the CLI talks to the
# user. Prints each offending file and line.
no_cli_imports() {
    hits=$(grep -rn --include='*.rs' -E 'crate::cli\b|crate::\{[^}]*\bcli\b' src \
        | grep -v -E '^src/cli/|^src/main\.rs:' || true)
    if [ -n "$hits" ]; then
        echo "crate::cli used outside src/cli/ and src/main.rs:"
        echo "$hits"
        return 1
    fi
}

step fmt cargo fmt --all --check
step fmt-guests sh -c 'cd guests && cargo fmt --check'
step clippy cargo clippy --workspace --all-targets -- -D warnings
step cli-layering no_cli_imports

if [ -n "$failed" ]; then
    echo "lint: FAILED:$failed"
    exit 1
fi
echo "lint: all checks passed"
