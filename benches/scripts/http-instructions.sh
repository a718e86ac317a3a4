#!/usr/bin/env bash
# Instructions per request, server against the bare handler, counted by
# callgrind: unlike requests per second, the count is the same from run to
# run whatever else the machine is doing, so it can compare two builds on a
# busy two-core machine. It counts user-space instructions only (the
# kernel's share of a request, the larger part for the bare handler, is not
# in it), so it ranks changes to the server's own code; the wall-clock
# ratios still come from `fielding-bench --only http`.
#
#   benches/scripts/http-instructions.sh [TARGET_DIR] [REQUESTS]
#
# TARGET_DIR defaults to target/release (build it first:
# `cargo build --release -p fielding-server -p fielding-bench`); REQUESTS
# (default 4000) is per load. Needs valgrind and python3. Prints
# `http_instructions_per_{put,get}_{server,bare} N` lines on stdout. The
# server runs as the http bench runs it (memory store, the exporter on,
# logs at warn, rate limit off, JWT authentication on); both get the same
# requests from a small Python client (a fixed count, which wrk cannot
# do): one run, PUT with `If-Match: *` and a new end date each time, then
# GET of that run, over 4 keep-alive connections. Background work of the
# process during the count (timers, the exporter's upkeep) is included; it
# is small next to thousands of requests.
set -euo pipefail

TARGET=${1:-target/release}
REQUESTS=${2:-4000}
WORK=$(mktemp -d)
trap '[ -n "${VG:-}" ] && kill "$VG" 2>/dev/null; rm -rf "$WORK"' EXIT
SECRET=http-instructions-secret-0123456789abcdef
TOKEN=$("$TARGET/fielding-server" token --secret "$SECRET" --account 101)
TG=/v1/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01BTGNYV6HRNK8K8VKZASZCFP1
AUTH=(-H "Authorization: Bearer $TOKEN" -H "Cint-API-Version: 2025-12-18")
export TOKEN

# A fixed number of requests over 4 keep-alive connections (wrk stops on
# time, not on a count); fails on any status >= 400.
cat > "$WORK/load.py" <<'PY'
import http.client, os, sys, threading
addr, method, path, total = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
host, port = addr.split("//")[1].split(":")
headers = {"Authorization": "Bearer " + os.environ["TOKEN"], "Cint-API-Version": "2025-12-18"}
if method == "PUT":
    headers.update({"Content-Type": "application/json", "If-Match": "*"})
def worker(k, count, errors):
    conn = http.client.HTTPConnection(host, int(port))
    for n in range(count):
        body = None
        if method == "PUT":
            m = k * count + n + int(os.environ.get("OFFSET", "0"))
            body = ('{"start_fielding_at":"2031-01-01T09:00:00.000Z","end_fielding_at":"2031-01-31T%02d:%02d:%02d.%03dZ"}'
                    % (10 + (m // 3600000) % 10, (m // 60000) % 60, (m // 1000) % 60, m % 1000))
        conn.request(method, path, body=body, headers=headers)
        reply = conn.getresponse()
        reply.read()
        if reply.status >= 400:
            errors.append(reply.status)
            return
errors = []
threads = [threading.Thread(target=worker, args=(k, total // 4, errors)) for k in range(4)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    sys.exit("unexpected status %s" % errors[0])
print(total // 4 * 4)
PY

# load METHOD ADDR PATH N [OFFSET]: prints the number of requests sent.
load() {
  OFFSET=${5:-0} python3 "$WORK/load.py" "$2" "$1" "$3" "$4"
}

count() {
  local name=$1 binary=$2
  shift 2
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.cg" "$binary" "$@" \
    > "$WORK/$name.log" 2>&1 &
  VG=$!
  local addr=""
  for _ in $(seq 200); do
    addr=$(grep -o 'http://[0-9.:]*' "$WORK/$name.log" | head -1 || true)
    [ -n "$addr" ] && break
    sleep 0.25
  done
  [ -n "$addr" ] || { cat "$WORK/$name.log" >&2; exit 1; }
  local runpath=$TG/fielding-runs/01M8Q6Q927DDTMQAGRCJBZJA9E
  if [ "$name" = server ]; then
    curl -sf "${AUTH[@]}" -H "idempotency-key: instructions" -H "Content-Type: application/json" \
      -d '{"start_fielding_at":"2031-01-01T09:00:00.000Z","end_fielding_at":"2031-01-31T09:00:00.000Z"}' \
      "$addr$TG/fielding-run-jobs/schedule-from-draft" > /dev/null
    sleep 1
    local run
    run=$(curl -sf "${AUTH[@]}" "$addr$TG/fielding-runs" | sed -E 's/.*"id":"([0-9A-Z]{26})".*/\1/')
    runpath=$TG/fielding-runs/$run
  fi
  # Warm up (connections, lazily built tables), then count each load.
  load PUT "$addr" "$runpath" 200 > /dev/null
  local offset=1000
  for load in put get; do
    callgrind_control -z "$VG" > /dev/null 2>&1
    local sent
    if [ "$load" = put ]; then
      sent=$(load PUT "$addr" "$runpath" "$REQUESTS" "$offset")
    else
      sent=$(load GET "$addr" "$runpath" "$REQUESTS")
    fi
    callgrind_control -d "$VG" > /dev/null 2>&1
    sleep 0.5
    local dump ir
    dump=$(ls -t "$WORK/$name.cg".* | head -1)
    ir=$(grep -E '^summary:' "$dump" | awk '{print $2}')
    echo "http_instructions_per_${load}_${name} $((ir / sent))"
  done
  kill "$VG"
  wait "$VG" 2>/dev/null || true
  VG=
}

count server "$TARGET/fielding-server" --database memory --listen 127.0.0.1:0 --jwt-secret "$SECRET" --rate-limit-per-second 0
count bare "$TARGET/bare-http" --listen 127.0.0.1:0
