#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, then runs every check and test:
# formatting, clippy (warnings are errors) and `cargo test` for the whole workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: curl is used by the quick start; nginx and haproxy are the peer proxies
# `outrigger bench` compares against; wrk cross-checks `outrigger load`; the state tests start
# their own redis-server and create their own PostgreSQL databases.
need=()
for tool in curl wrk; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v psql >/dev/null 2>&1 || need+=(postgresql)
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
    $sudo service redis-server stop >/dev/null 2>&1 || true
fi

# The PostgreSQL state tests connect as postgres to 127.0.0.1:5432 (OUTRIGGER_TEST_PG overrides
# the connection string). A fresh Debian install asks for a password over TCP; let loopback in.
if [ -z "${OUTRIGGER_TEST_PG:-}" ] && ! psql -h 127.0.0.1 -U postgres -c 'select 1' >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "PostgreSQL does not accept postgres@127.0.0.1 without a password; adding a loopback trust rule"
    for hba in /etc/postgresql/*/main/pg_hba.conf; do
        $sudo sed -i '1i host all postgres 127.0.0.1/32 trust' "$hba"
    done
    $sudo service postgresql restart
    for _ in $(seq 1 30); do
        psql -h 127.0.0.1 -U postgres -c 'select 1' >/dev/null 2>&1 && break
        sleep 1
    done
fi

# The Kafka pub/sub tests and `outrigger bench --pubsub` run tansu, a Kafka-protocol broker from
# the Rust package registry (docs/pubsub.md: why 0.6.0, and which of its consumer bugs the tests
# step around). Built once into ~/.cargo/bin; a light release profile keeps the cold build short.
if ! command -v tansu >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
    echo "installing tansu 0.6.0 (cargo install, once)"
    CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_LTO=false \
        CARGO_PROFILE_RELEASE_CODEGEN_UNITS=64 \
        cargo install tansu --version 0.6.0 --locked --features dynostore
fi

rustup component add rustfmt clippy >/dev/null 2>&1 || true
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# Every parser that takes outside input, fuzzed for a bounded time (docs/fuzzing.md).
./scripts/fuzz.sh
