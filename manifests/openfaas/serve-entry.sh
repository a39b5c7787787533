#!/bin/sh
# skiff serve as an OpenFaaS function's server: snapshot the function once
# when the container starts, then serve HTTP with every request in a fresh
# guest restored from that snapshot (see docs/serve.md).
# - directly on port 8080 (the container's CMD; OpenFaaS and Kubernetes
#   probe /_/health), or
# - behind of-watchdog in http mode: fprocess runs this with
#   LISTEN=127.0.0.1:8082 and upstream_url=http://127.0.0.1:8082.
# FUNCTION, MEM, WORKERS, LISTEN, METRICS, TIMEOUT_MS may be set in the
# function's environment.
set -e
FUNCTION=${FUNCTION:-/functions/echo.hvt}
MEM=${MEM:-64}
WORKERS=${WORKERS:-2}
LISTEN=${LISTEN:-0.0.0.0:8080}
METRICS=${METRICS:-0.0.0.0:9100}
TIMEOUT_MS=${TIMEOUT_MS:-30000}
SNAP=/tmp/function.snap
skiff snapshot --mem="$MEM" --out "$SNAP" "$FUNCTION" </dev/null
exec skiff serve --listen "$LISTEN" --metrics "$METRICS" --workers "$WORKERS" \
    --timeout "$TIMEOUT_MS" --mem="$MEM" --restore "$SNAP" "$FUNCTION" </dev/null
