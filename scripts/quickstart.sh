#!/usr/bin/env bash
# Service invocation through two sidecars on embedded defaults, nothing else needed:
# builds outrigger, starts app "b" (a small echo app) with its sidecar and app "a"'s sidecar,
# then calls b from a by app id: curl → a's sidecar :3500 → b's sidecar → b.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cc >/dev/null 2>&1 || ! command -v curl >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq curl build-essential
fi

echo "== building (the first build takes a few minutes)"
cargo build --quiet --bin outrigger --example echo_app
bin=target/debug

A_PORT=${A_PORT:-3500}
B_PORT=${B_PORT:-3501}
APP_B_PORT=${APP_B_PORT:-8081}
# A private registry so this demo does not meet other sidecars on the host.
export OUTRIGGER_REGISTRY_DIR
OUTRIGGER_REGISTRY_DIR=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$OUTRIGGER_REGISTRY_DIR"' EXIT

echo "== starting app b on :$APP_B_PORT with its sidecar on :$B_PORT, and app a's sidecar on :$A_PORT"
"$bin/outrigger" run --app-id b --app-port "$APP_B_PORT" --dapr-http-port "$B_PORT" \
    -- "$bin/examples/echo_app" "$APP_B_PORT" b >/tmp/outrigger-quickstart-b.log 2>&1 &
"$bin/outrigger" run --app-id a --dapr-http-port "$A_PORT" \
    -- sleep infinity >/tmp/outrigger-quickstart-a.log 2>&1 &

healthy() { curl -sf "http://127.0.0.1:$1/v1.0/healthz" >/dev/null; }
for _ in $(seq 100); do
    healthy "$A_PORT" && healthy "$B_PORT" && break
    sleep 0.1
done
if ! healthy "$A_PORT" || ! healthy "$B_PORT"; then
    echo "the sidecars did not come up; their logs:" >&2
    cat /tmp/outrigger-quickstart-a.log /tmp/outrigger-quickstart-b.log >&2
    exit 1
fi

echo "== POST http://127.0.0.1:$A_PORT/v1.0/invoke/b/method/hello?from=quickstart"
curl -sS -i -X POST "http://127.0.0.1:$A_PORT/v1.0/invoke/b/method/hello?from=quickstart" \
    -H 'content-type: text/plain' -d 'hello from a'
echo
echo "== the same call in the dapr-app-id header form"
curl -sS -X POST "http://127.0.0.1:$A_PORT/hello" -H 'dapr-app-id: b' -d 'header form'
echo
echo "== an app id nobody serves"
curl -sS -i "http://127.0.0.1:$A_PORT/v1.0/invoke/nobody/method/x"
echo
echo "== done; sidecar logs are in /tmp/outrigger-quickstart-{a,b}.log"
