#!/bin/sh
# Warm start under the classic watchdog: snapshot the function once when
# the container starts, keep a pool of guests restored from it, and make
# fprocess a `skiff call` (one per request, as before). Use it as the
# container's command instead of fwatchdog, e.g. in stack.yml's
# skiff-echo-warm (the image's Dockerfile copies this script).
# FUNCTION and MEM may be set in the function's environment.
set -e
FUNCTION=${FUNCTION:-/functions/echo.hvt}
MEM=${MEM:-64}
SNAP=/tmp/function.snap
SOCK=/tmp/function.sock
skiff snapshot --mem="$MEM" --out "$SNAP" "$FUNCTION" </dev/null
skiff pool --mem="$MEM" --workers 2 --socket "$SOCK" --restore "$SNAP" "$FUNCTION" </dev/null &
# Calls made before the pool's socket exists would be refused.
while [ ! -S "$SOCK" ]; do sleep 0.01; done
export fprocess="/usr/local/bin/skiff call $SOCK"
exec fwatchdog
