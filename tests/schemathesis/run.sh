#!/usr/bin/env bash
# schemathesis against the OpenAPI document the server publishes, for a bounded time.
#
# Starts the debug binary that `cargo test` built (`latchkey serve --dev` on a fresh data
# directory), seeds it (seed.py: connections, credentials, an agent and its token, an issuer),
# then runs every schemathesis check plus our own (hooks.py: no secret in any response) with
# schemathesis.toml. Fails on any finding: a 5xx, a status or body the document does not
# allow, a secret where it should not be.
#
# The server and schemathesis run in a network namespace of their own with only loopback:
# generated connections and issuers name random hosts, and nothing the fuzzer makes the
# server do (revocations, JWKS and discovery fetches, refreshes) may leave the machine.
#
# Environment: SCHEMATHESIS_MAX_TIME (seconds, default 90), SCHEMATHESIS_SEED (reproduce a
# run), SCHEMATHESIS_ARGS (more `st run` arguments, e.g. `--report har`), SCHEMATHESIS_KEEP
# (a directory to copy the server's data, log and the reports to), LATCHKEY_BIN (default
# target/debug/latchkey).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${LATCHKEY_BIN:-$root/target/debug/latchkey}"
venv="$root/target/schemathesis-venv"

if [ -z "${LK_IN_NETNS:-}" ]; then
    # Outside the namespace: install from PyPI (pinned), then re-run this script inside it.
    want="$(grep -E '^schemathesis==' "$here/requirements.txt")"
    if ! "$venv/bin/pip" freeze 2>/dev/null | grep -qx "$want"; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
    fi
    [ -x "$bin" ] || { echo "schemathesis: $bin is missing; run cargo test (or cargo build) first" >&2; exit 1; }
    for ns in "unshare --net" "unshare --net --map-root-user"; do
        if $ns true 2>/dev/null; then
            exec $ns env LK_IN_NETNS=1 LATCHKEY_BIN="$bin" bash "$0" "$@"
        fi
    done
    echo "schemathesis: cannot create a network namespace (unshare --net); refusing to fuzz with network access" >&2
    exit 1
fi

ip link set lo up 2>/dev/null || /usr/sbin/ip link set lo up
work="$(mktemp -d)"
server=""
cleanup() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    if [ -n "${SCHEMATHESIS_KEEP:-}" ]; then
        mkdir -p "$SCHEMATHESIS_KEEP" && cp -r "$work"/. "$SCHEMATHESIS_KEEP"/
    fi
    rm -rf "$work"
}
trap cleanup EXIT

addr=127.0.0.1:8200 # the namespace is ours: any port is free
LATCHKEY_DATA_DIR="$work/data" LATCHKEY_KEYS_DIR="$work/keys" LATCHKEY_BIND="$addr" LATCHKEY_LOG_FORMAT=json LATCHKEY_LOG=warn \
    "$bin" serve --dev >"$work/stdout" 2>"$work/server.log" </dev/null &
server=$!
base="http://$addr"
for _ in $(seq 1 200); do
    curl -fsS "$base/healthz" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.1
done
# The run tests the repository's document: the binary must serve exactly it.
curl -fsS "$base/openapi.json" >"$work/openapi.json"
if ! cmp -s "$work/openapi.json" "$root/src/api/openapi.json"; then
    echo "schemathesis: $bin serves another openapi.json than src/api/openapi.json; rebuild it (cargo build)" >&2
    exit 1
fi
admin="$(grep -m1 '^lka_' "$work/stdout" || true)"
[ -n "$admin" ] || { echo "schemathesis: serve --dev printed no admin token" >&2; cat "$work/server.log" >&2; exit 1; }

"$venv/bin/python" "$here/seed.py" "$base" "$admin" "$work"
set -a
# shellcheck disable=SC1091
. "$work/env"
set +a
export LK_ADMIN_TOKEN="$admin" LK_SECRETS_FILE="$work/secrets.json" LK_OPENAPI_FILE="$work/openapi.json"
export SCHEMATHESIS_HOOKS="$here/hooks.py"

extra=()
[ -n "${SCHEMATHESIS_SEED:-}" ] && extra+=(--seed "$SCHEMATHESIS_SEED")
# shellcheck disable=SC2206
[ -n "${SCHEMATHESIS_ARGS:-}" ] && extra+=($SCHEMATHESIS_ARGS)
status=0
(cd "$work" && "$venv/bin/st" --config-file "$here/schemathesis.toml" run "$base/openapi.json" \
    --max-time "${SCHEMATHESIS_MAX_TIME:-90}" --no-color ${extra[@]+"${extra[@]}"}) || status=$?
if ! kill -0 "$server" 2>/dev/null; then
    echo "schemathesis: the server died during the run; its log:" >&2
    tail -n 50 "$work/server.log" >&2
    status=1
else
    # Errors the server logged (5xx bodies say nothing; the log says why). actix's own
    # complaints about malformed requests it refused are not ours.
    errors="$(grep '"level":"ERROR"' "$work/server.log" | grep -v 'request parse error' || true)"
    if [ -n "$errors" ]; then
        echo "schemathesis: the server logged errors during the run:" >&2
        printf '%s\n' "$errors" | tail -n 20 >&2
    fi
fi
exit "$status"
