#!/usr/bin/env bash
# The contract checked from outside: Schemathesis (PyPI) generates requests
# from the OpenAPI document of the running demo (the gateway on SQLite with
# the fake WeChat) and checks every answer: no 5xx, each body and status
# as documented, and bodies the document forbids refused with a documented
# 4xx. Bounded in examples and time so that it stays well under 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

target_dir="${CARGO_TARGET_DIR:-target}"
schemathesis_version="4.32.5"
venv="$target_dir/schemathesis-venv"
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$schemathesis_version"; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet "schemathesis==$schemathesis_version"
fi

cargo build --locked -p formid-demo
work="$(mktemp -d)"
"$target_dir/debug/formid-demo" --listen 127.0.0.1:0 --fake-listen 127.0.0.1:0 \
  --database-url "sqlite://$work/demo.db" >"$work/demo.out" 2>"$work/demo.err" &
demo=$!
stop_demo() {
  kill "$demo" 2>/dev/null || true
  wait "$demo" 2>/dev/null || true
  rm -rf "$work"
}
trap stop_demo EXIT

# The demo prints its address and key in its banner (crates/demo: `banner`).
for _ in $(seq 1 60); do
  grep -q '^  API key ' "$work/demo.out" && break
  kill -0 "$demo" 2>/dev/null || { cat "$work/demo.err" >&2; exit 1; }
  sleep 1
done
gateway="$(awk '/^  gateway /{print $2}' "$work/demo.out")"
key="$(awk '/^  API key /{print $3}' "$work/demo.out")"
if [ -z "$gateway" ] || [ -z "$key" ]; then
  echo "FATAL: the demo printed no gateway address or key" >&2
  cat "$work/demo.out" "$work/demo.err" >&2
  exit 1
fi
echo "Schemathesis against the demo at $gateway"

# The WeChat push is signed by WeChat: every generated call is refused
# (documented 4xx), which the checks below still hold it to.
timeout 150 "$venv/bin/schemathesis" run "$gateway/openapi.json" \
  --header "Authorization: Bearer $key" \
  --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance,negative_data_rejection \
  --phases examples,coverage,fuzzing \
  --max-examples 5 \
  --max-time 100 \
  --workers 1 \
  --seed 24 \
  --request-timeout 10 \
  --suppress-health-check all \
  --warnings off \
  --report-dir "$target_dir/schemathesis-report" \
  --report junit
echo "Schemathesis: the demo answers as its document says"
