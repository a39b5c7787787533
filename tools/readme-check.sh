#!/usr/bin/env bash
# readme-check: runs every ```sh block of README.md and docs/*.md, in
# order, as a user would copy them, and fails when one fails.
#
#   tools/readme-check.sh [--list] [FILE.md ...]   (default: README.md docs/*.md)
#
# The rules a document must fit:
# - Only blocks fenced exactly as ```sh (or ```bash) are run. Blocks fenced
#   ```text (output, usage synopses), any other language, and indented
#   blocks are not.
# - Each file's blocks run in the order they appear, each in its own
#   `bash -eo pipefail` (so `cd` and variables do not carry over from one
#   block to the next; files do), in one scratch directory per file.
#   The first failing block stops that file (later blocks would build on
#   it); the other files still run.
# - The scratch directory holds a symlink to every top-level entry of the
#   repository (target/ included), so paths like ./target/release/skiff,
#   target/guests/hello.hvt and tools/... resolve as in a checkout, while
#   the files a block writes (echo.snap, a request body) land in scratch.
#   cargo resolves the symlinks, so `cargo build` there reuses target/.
# - `skiff` and `solo5-hvt` are on PATH (the newer of the checkout's
#   release and debug builds), as after installing skiff.
# - Each block has a time limit (README_CHECK_TIMEOUT seconds, default
#   300). A block that starts a server (`skiff pool ... &`) must end it
#   itself (`kill %1`); whatever a block leaves running in its process
#   group is killed when it ends.
# - README_CHECK_SKIP: an extended regex; blocks matching it are reported
#   as skipped (e.g. the test command itself, which CI runs anyway).
# - README_CHECK_KEEP=1 keeps the scratch directories (their paths are
#   printed).
#
# Exit status: 0 when every block ran and passed; 1 otherwise; 2 for a
# usage error.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
timeout_s=${README_CHECK_TIMEOUT:-300}
skip=${README_CHECK_SKIP:-}
list=0
if [ "${1:-}" = "--list" ]; then
    list=1
    shift
fi
case "${1:-}" in
-h | --help)
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
    exit 0
    ;;
-*)
    echo "readme-check: unknown option $1 (try --help)" >&2
    exit 2
    ;;
esac
if [ $# -eq 0 ]; then
    set -- "$repo/README.md"
    for f in "$repo"/docs/*.md; do
        [ -e "$f" ] && set -- "$@" "$f"
    done
fi

# The blocks of file $1, each as "LINE<TAB>BASE64(TEXT)" on one line.
blocks() {
    awk '
        function flush() {
            cmd = "base64 -w0"
            printf "%d\t", start
            printf "%s", text | cmd
            close(cmd)
            printf "\n"
        }
        !inside && !other && /^```(sh|bash)[ \t]*$/ { inside = 1; start = NR + 1; text = ""; next }
        !inside && /^```/ { other = !other; next }
        inside && /^```[ \t]*$/ { inside = 0; flush(); next }
        inside { text = text $0 "\n" }
    ' "$1"
}

bin=$(mktemp -d "${TMPDIR:-/tmp}/readme-check-bin-$$-XXXX")
# The newer of the release and debug builds (a stale one would test old
# code).
built=$(ls -t "$repo"/target/release/skiff "$repo"/target/debug/skiff 2>/dev/null | head -n 1)
if [ -n "$built" ]; then
    ln -s "$built" "$bin/skiff"
    ln -s "$built" "$bin/solo5-hvt"
fi
cleanup() { rm -rf "$bin"; }
trap cleanup EXIT

failed=0
ran=0
for md in "$@"; do
    if [ ! -f "$md" ]; then
        echo "readme-check: $md: no such file" >&2
        failed=1
        continue
    fi
    name=${md#"$repo"/}
    if [ $list = 1 ]; then
        blocks "$md" | while IFS=$'\t' read -r line b64; do
            echo "== $name:$line"
            printf '%s' "$b64" | base64 -d
        done
        continue
    fi
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/readme-check-$$-XXXX")
    for e in "$repo"/* "$repo"/.[!.]*; do
        [ -e "$e" ] || continue
        case "$(basename "$e")" in .git) continue ;; esac
        ln -s "$e" "$scratch/$(basename "$e")"
    done
    while IFS=$'\t' read -r line b64; do
        text=$(printf '%s' "$b64" | base64 -d)
        if [ -n "$skip" ] && printf '%s' "$text" | grep -Eq -- "$skip"; then
            echo "readme-check: $name:$line: skipped (README_CHECK_SKIP)"
            continue
        fi
        ran=$((ran + 1))
        start=$(date +%s%N)
        log=$(mktemp "${TMPDIR:-/tmp}/readme-check-log-$$-XXXX")
        pidf="$log.pid"
        # The block leads a session and process group of its own, so what
        # it leaves running (a backgrounded server) is ended with it.
        (cd "$scratch" && PATH="$bin:$PATH" timeout --kill-after=5 -s TERM "$timeout_s" \
            setsid bash -c 'echo $$ >"$1"; exec bash -eo pipefail -c "$2"' _ "$pidf" "$text") \
            </dev/null >"$log" 2>&1
        status=$?
        if pg=$(cat "$pidf" 2>/dev/null) && [ -n "$pg" ]; then
            kill -TERM -- "-$pg" 2>/dev/null && sleep 0.2
            kill -KILL -- "-$pg" 2>/dev/null
        fi
        rm -f "$pidf"
        ms=$((($(date +%s%N) - start) / 1000000))
        secs="$((ms / 1000)).$((ms % 1000 / 100))"
        if [ $status -eq 0 ]; then
            echo "readme-check: $name:$line: ok ($secs s)"
            rm -f "$log"
            continue
        fi
        why="exit status $status"
        [ $status -eq 124 ] && why="timed out after ${timeout_s} s"
        echo "readme-check: $name:$line: FAILED ($why); the block:" >&2
        printf '%s\n' "$text" | sed 's/^/    /' >&2
        echo "  its last output:" >&2
        tail -n 20 "$log" | sed 's/^/    /' >&2
        rm -f "$log"
        failed=1
        break
    done < <(blocks "$md")
    if [ "${README_CHECK_KEEP:-0}" = 1 ]; then
        echo "readme-check: $name ran in $scratch"
    else
        rm -rf "$scratch"
    fi
done
[ $list = 1 ] && exit 0
if [ $failed = 0 ]; then
    echo "readme-check: $ran blocks passed"
fi
exit $failed
