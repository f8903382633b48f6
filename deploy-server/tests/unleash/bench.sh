#!/usr/bin/env bash
# Side-by-side load test of the Unleash APIs (outside CI): deploykitd's frontend evaluation
# and client state, and, when UNLEASH_EDGE points at an unleash-edge binary, Unleash Edge in
# offline mode over the same features (exported by deploykitd itself, so both serve the
# same flags). Needs wrk and python3; run from the workspace root after
# `cargo build --release --bin deploykitd`.
#
#   deploy-server/tests/unleash/bench.sh [FRONTEND_FLAGS=30] [CLIENT_FLAGS=1000]
#
# Prints requests/s and latency percentiles per scenario (wrk -t2 -c32 -d10s on 127.0.0.1),
# and the CPU time and peak memory of each server.
set -euo pipefail
FRONTEND_FLAGS=${1:-30}
CLIENT_FLAGS=${2:-1000}
DEPLOYKITD=${DEPLOYKITD:-target/release/deploykitd}
WRK="wrk -t2 -c32 -d${DURATION:-10}s --latency"
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
ADMIN=dk_bench-bootstrap-admin-token-0000000000

flags() { # N FILE: N flags in deploykit's format, a mix of rule shapes
  python3 - "$1" "$2" <<'PY'
import json, sys
n, path = int(sys.argv[1]), sys.argv[2]
flags = []
for i in range(n):
    flag = {"name": f"flag-{i:04}", "enabled": i % 7 != 6}
    shape = i % 5
    if shape == 1:
        flag["rules"] = [{"constraints": [{"contextName": "userId", "operator": "IN", "values": [str(u) for u in range(0, 200, 3)]}]}]
    elif shape == 2:
        flag["rules"] = [{"rollout": {"percentage": 50, "stickiness": "default"}}]
    elif shape == 3:
        flag["rules"] = [{"constraints": [{"contextName": "plan", "operator": "IN", "values": ["pro", "team"]}],
                          "variants": [{"name": "blue", "weight": 500, "payload": {"type": "string", "value": "b"}},
                                       {"name": "green", "weight": 500}]}]
    elif shape == 4:
        flag["rules"] = [{"constraints": [{"contextName": "version", "operator": "SEMVER_GTE", "value": "2.0.0"}],
                          "rollout": {"percentage": 25, "stickiness": "userId"}}]
    flags.append(flag)
json.dump({"flags": flags}, open(path, "w"))
PY
}

start_deploykitd() { # FLAGS_FILE PORT
  cat > "$WORK/deploykitd.toml" <<TOML
listen = "127.0.0.1:$2"
[store]
kind = "memory"
[tokens]
bootstrap_name = "admin"
bootstrap_secret = "$ADMIN"
[backends]
kind = "simulated"
[flags]
file = "$1"
TOML
  "$DEPLOYKITD" --config "$WORK/deploykitd.toml" > "$WORK/deploykitd.log" 2>&1 &
  echo $! > "$WORK/deploykitd.pid"
  for _ in $(seq 1200); do curl -sf "http://127.0.0.1:$2/healthz" > /dev/null && return; sleep 0.1; done
  echo "deploykitd did not start:"; cat "$WORK/deploykitd.log"; exit 1
}

token() { # PORT TYPE
  curl -sf -X POST "http://127.0.0.1:$1/api/admin/api-tokens" -H "authorization: Bearer $ADMIN" \
    -H 'content-type: application/json' \
    -d "{\"tokenName\": \"bench-$2-$RANDOM\", \"type\": \"$2\", \"environment\": \"development\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])'
}

usage() { # PID: CPU seconds and peak resident memory
  awk '{printf "cpu %.2f s", ($14 + $15) / 100}' "/proc/$1/stat"
  grep VmHWM "/proc/$1/status" | awk '{printf ", peak memory %d MiB\n", $2 / 1024}'
}

run() { # LABEL URL TOKEN [HEADER]
  echo "== $1"
  if [ -n "${4:-}" ]; then
    $WRK -H "authorization: $3" -H "$4" "$2" | grep -E "Requests/sec|^ +50%|^ +99%|Non-2xx"
  else
    $WRK -H "authorization: $3" "$2" | grep -E "Requests/sec|^ +50%|^ +99%|Non-2xx"
  fi
}

CONTEXT='userId=123&sessionId=s-9&properties%5Bplan%5D=pro&properties%5Bversion%5D=2.1.0'
for scenario in ${SCENARIOS:-frontend client}; do
  if [ $scenario = frontend ]; then n=$FRONTEND_FLAGS; else n=$CLIENT_FLAGS; fi
  flags "$n" "$WORK/flags-$n.json"
  start_deploykitd "$WORK/flags-$n.json" 17070
  pid=$(cat "$WORK/deploykitd.pid")
  client=$(token 17070 client); frontend=$(token 17070 frontend)
  base=http://127.0.0.1:17070/api
  if [ $scenario = frontend ]; then
    run "deploykitd: frontend evaluation, $n flags" "$base/frontend?$CONTEXT" "$frontend"
  else
    etag=$(curl -sf -D - -o /dev/null -H "authorization: $client" "$base/client/features" | awk 'tolower($1) == "etag:" {print $2}' | tr -d '\r')
    run "deploykitd: client state, $n flags" "$base/client/features" "$client"
    run "deploykitd: client state, $n flags, If-None-Match" "$base/client/features" "$client" "if-none-match: $etag"
  fi
  echo "deploykitd: $(usage "$pid")"
  curl -sf -H "authorization: $client" "$base/client/features" > "$WORK/features-$n.json"
  kill "$pid"; wait "$pid" 2>/dev/null || true

  if [ -n "${UNLEASH_EDGE:-}" ]; then
    "$UNLEASH_EDGE" --port 17071 offline --bootstrap-file "$WORK/features-$n.json" \
      --client-tokens '*:development.bench-client' --frontend-tokens '*:development.bench-frontend' \
      > "$WORK/edge.log" 2>&1 &
    edge=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:17071/internal-backstage/health > /dev/null && break; sleep 0.1; done
    edgebase=http://127.0.0.1:17071/api
    if [ $scenario = frontend ]; then
      run "Unleash Edge: frontend evaluation, $n flags" "$edgebase/frontend?$CONTEXT" '*:development.bench-frontend'
    else
      etag=$(curl -sf -D - -o /dev/null -H 'authorization: *:development.bench-client' "$edgebase/client/features" | awk 'tolower($1) == "etag:" {print $2}' | tr -d '\r')
      run "Unleash Edge: client state, $n flags" "$edgebase/client/features" '*:development.bench-client'
      run "Unleash Edge: client state, $n flags, If-None-Match" "$edgebase/client/features" '*:development.bench-client' "if-none-match: $etag"
    fi
    echo "Unleash Edge: $(usage "$edge")"
    kill "$edge"; wait "$edge" 2>/dev/null || true
  else
    echo "(UNLEASH_EDGE not set: Unleash Edge not run)"
  fi
done
