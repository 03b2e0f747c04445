#!/usr/bin/env bash
# Everything CI checks, in order: Rust format/lint/unit tests, the spated build, then the
# Python system tests (real clients + Apache Kafka's CLI tools against spated).
#
# Runs from a fresh clone on Debian as root with only Rust, Java 17, Maven and Python 3 present;
# installs the test dependencies idempotently (pip requirements, Kafka jars from Maven Central
# cached in target/kafka-jars, kcat via apt if possible).
#
# Environment:
#   SPATE_SKIP_RUST=1        skip fmt/clippy/cargo test/build (system tests only)
#   SPATE_TEST_TARGET=kafka  run the system tests against a real Apache Kafka instead of spated
#   PYTEST_ARGS="..."        extra pytest arguments (e.g. "-k restart -x")
set -euo pipefail

cd "$(dirname "$0")/../.."
repo="$(pwd)"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"

section() {
  printf '\n==================== %s ====================\n' "$*"
}

started=$(date +%s)

if [[ "${SPATE_SKIP_RUST:-0}" != "1" ]]; then
  section "cargo fmt --check"
  cargo fmt --all -- --check

  section "cargo clippy"
  cargo clippy --all-targets -- -D warnings

  section "cargo test"
  cargo test --all

  section "cargo build spated"
  cargo build -p spate-broker --bin spated
  cargo build -p spate-tools --bin spate
fi
export SPATE_BIN="${SPATE_BIN:-$target_dir/debug/spated}"
export SPATE_CLI="${SPATE_CLI:-$target_dir/debug/spate}"

section "system test dependencies"
pip_install() {
  # Already-satisfied pins do not touch the network.
  if ! python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "$@"; then
    # Debian's own python refuses (PEP 668) outside a venv.
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
      --break-system-packages "$@"
  fi
}
if ! python3 -m pip --version >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq python3-pip
fi
pip_install -r broker/tests/system/requirements.txt
echo "python packages: ok"

command -v java >/dev/null || { echo "java (17+) is required for the system tests" >&2; exit 1; }
command -v mvn >/dev/null || { echo "maven is required to fetch the Kafka jars" >&2; exit 1; }
export SPATE_KAFKA_LIB="${SPATE_KAFKA_LIB:-$target_dir/kafka-jars/lib}"
bash broker/tests/system/fetch-kafka-jars.sh "$SPATE_KAFKA_LIB"

# kcat: its tests (test_produce_fetch, test_client_matrix) skip without it, so never fail on it.
if ! command -v kcat >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ "$(id -u)" == 0 ]]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kcat) \
      >/dev/null 2>&1 && echo "kcat: installed" || echo "kcat: not available (skipped)"
  else
    echo "kcat: not installed (skipped)"
  fi
else
  echo "kcat: present"
fi

# Client-matrix drivers (test_client_matrix.py; its fixtures build them, see
# broker/tests/system/clients/README.md): franz-go modules into the Go module cache and one
# build to fill Go's build cache (~45 s the first time on 2 cores, ~1 s after), kafkajs
# packages via npm ci (only when package-lock.json changed since the last install).
if command -v go >/dev/null 2>&1; then
  (cd broker/tests/system/clients/go && go mod download &&
    GOFLAGS="-mod=readonly -buildvcs=false" go build -o "$target_dir/client-matrix/franzclient" .)
  echo "franz-go driver: ok"
else
  echo "go: not installed (franz-go tests skipped)"
fi
if command -v npm >/dev/null 2>&1; then
  js=broker/tests/system/clients/js
  lock_sum="$(sha256sum "$js/package-lock.json" | cut -d' ' -f1)"
  if [[ "$(cat "$js/node_modules/.spate-lock.sha256" 2>/dev/null)" != "$lock_sum" ]]; then
    (cd "$js" && npm ci --no-audit --no-fund --prefer-offline --loglevel=error)
    echo "$lock_sum" >"$js/node_modules/.spate-lock.sha256"
  fi
  echo "kafkajs packages: ok"
else
  echo "node/npm: not installed (kafkajs tests skipped)"
fi

section "system tests (target: ${SPATE_TEST_TARGET:-spate})"
if [[ "${SPATE_TEST_TARGET:-spate}" == "spate" && ! -x "$SPATE_BIN" ]]; then
  echo "spated not found at $SPATE_BIN" >&2
  exit 1
fi
echo "(setup took $(( $(date +%s) - started ))s)"
# pytest's summary line stays the last line of the run.
# shellcheck disable=SC2086
exec python3 -m pytest broker/tests/system -q ${PYTEST_ARGS:-}
