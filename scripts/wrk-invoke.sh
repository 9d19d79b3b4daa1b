#!/usr/bin/env bash
# A first, rough measurement of invocation overhead on loopback with wrk (Debian's `wrk`):
# the same request direct to the echo app, through one sidecar (mesh listener → app) and
# through two sidecars (a's Dapr API → b's mesh listener → app). Closed loop; run it on an
# idle machine. `outrigger bench` (a later issue) replaces this with an open-loop harness.
#   usage: scripts/wrk-invoke.sh [DURATION=10s]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10s}
command -v wrk >/dev/null || { echo "install wrk: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin outrigger --example echo_app
bin=target/release
export OUTRIGGER_REGISTRY_DIR
OUTRIGGER_REGISTRY_DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$OUTRIGGER_REGISTRY_DIR"' EXIT

"$bin/examples/echo_app" 18181 b >/dev/null &
"$bin/outrigger" sidecar --app-id b --app-port 18181 --dapr-http-port 13601 --mesh-port 15608 --admin-port 15601 --log-level warn &
"$bin/outrigger" sidecar --app-id a --dapr-http-port 13600 --mesh-port 15609 --admin-port 15600 --log-level warn &
for _ in $(seq 100); do curl -sf http://127.0.0.1:13600/v1.0/invoke/b/method/warm >/dev/null && break; sleep 0.1; done

run() { # name url connections
    local out
    out=$(wrk -t1 -c"$3" -d"$duration" --latency "$2")
    printf '%-8s c=%-3s %s  p50=%s p99=%s\n' "$1" "$3" \
        "$(awk '/Requests\/sec/ {print $2 " req/s"}' <<<"$out")" \
        "$(awk '$1=="50%" {print $2}' <<<"$out")" "$(awk '$1=="99%" {print $2}' <<<"$out")"
}
for c in 1 16; do
    run direct "http://127.0.0.1:18181/echo" "$c"
    run 1-hop "http://127.0.0.1:15608/echo" "$c"
    run 2-hop "http://127.0.0.1:13600/v1.0/invoke/b/method/echo" "$c"
done
