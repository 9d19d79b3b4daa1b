#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, then runs every check and test:
# formatting, clippy (warnings are errors) and `cargo test` for the whole workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: cmake builds pingora's zlib-ng; curl is used by the quick start; nginx and
# haproxy are the peer proxies `outrigger bench` compares against; wrk cross-checks `outrigger load`.
need=()
for tool in cmake curl wrk; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
[ -x /usr/sbin/nginx ] || need+=(nginx)
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing: ${need[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
    # The packaged services start on install; the benchmark runs its own instances.
    $sudo service nginx stop >/dev/null 2>&1 || true
    $sudo service haproxy stop >/dev/null 2>&1 || true
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
