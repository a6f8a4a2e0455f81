#!/usr/bin/env bash
# The benchmark of formid-gateway, in one command (see BENCHMARKS.md):
#
#   bench/run.sh                 # everything: SQLite and PostgreSQL, WeChat at 0 and 100 ms
#   bench/run.sh --backends sqlite --duration-s 5    # any option of `formid-bench run --help`
#
# Needs PostgreSQL on 127.0.0.1:5432 with trust auth for user postgres (set
# --pg-admin for another server) and pgbench on the PATH. Writes
# bench/results/results-<UTC time>.{json,md} and bench/results/latest.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v pgbench >/dev/null || { echo "pgbench is not on the PATH" >&2; exit 1; }
# Separate builds, so that the gateway binary is exactly what `cargo build --release` makes
# (built together, the bench's and the fake's dependency features would be unified into it).
cargo build --release --locked
cargo build --release --locked -p fake-wechat
cargo build --release --locked -p formid-bench
exec env RUST_LOG=warn target/release/formid-bench run "$@"
