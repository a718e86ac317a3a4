#!/usr/bin/env python3
"""Instructions per request of the release fielding-server, counted by
callgrind: immune to the noise of a shared machine, for before/after
comparisons of one change (docs/benchmarks.md, "Traces and metrics").

usage: callgrind-http.py SERVER_BIN MODE N OUTDIR [put|get [RUST_LOG]]

MODE is the http bench's configuration of the memory store: plain
(--metrics off, RUST_LOG=warn), shipped (--metrics on, RUST_LOG=warn) or
observed (--metrics on, RUST_LOG=info,fielding_server::access=warn); or
bare: the bench's ceiling, `bare-http` from SERVER_BIN's directory, sent
the very same requests.
The server runs under valgrind with instrumentation off; 32 runs are
seeded through the API and 200 requests warm it up on one keep-alive
connection; then instrumentation is switched on for N requests (PUT
update-dates with If-Match: * and a new end date each, or GET of a run),
the counts are dumped, and the total over N is printed. Kernel time is
not counted: a wall-clock ratio moves less than the instruction ratio.
Needs valgrind (callgrind_control, callgrind_annotate) and python3.
"""
import http.client, json, os, re, subprocess, sys, time, glob

server, mode, n, outdir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
load = sys.argv[5] if len(sys.argv) > 5 else "put"
secret = "fielding-bench-http-secret-0123456789abcdef"
os.makedirs(outdir, exist_ok=True)
tag = f"{mode}_{load}"
for f in glob.glob(f"{outdir}/cg.{tag}.*"):
    os.remove(f)
env = dict(os.environ)
metrics = "off" if mode == "plain" else "on"
env["RUST_LOG"] = "info,fielding_server::access=warn" if mode == "observed" else "warn"
if len(sys.argv) > 6:
    env["RUST_LOG"] = sys.argv[6]
token = subprocess.check_output([server, "token", "--secret", secret, "--account", "101"]).decode().strip()
cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={outdir}/cg.{tag}.%p"]
if mode == "bare":
    cmd += [os.path.join(os.path.dirname(server), "bare-http"), "--listen", "127.0.0.1:0"]
else:
    cmd += [server, "--listen", "127.0.0.1:0", "--database", "memory", "--jwt-secret", secret,
            "--rate-limit-per-second", "0", "--address-rate-limit-per-second", "0",
            "--max-connections-per-address", "0", "--metrics", metrics]
proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=open(f"{outdir}/stderr.{tag}", "w"))
line = proc.stdout.readline().decode()
m = re.search(r"http://([\d.]+):(\d+)", line)
host, port = m.group(1), int(m.group(2))
conn = http.client.HTTPConnection(host, port)
hdr = {"Authorization": f"Bearer {token}", "Cint-API-Version": "2025-12-18"}
runs = []
RUNS = 32
for i in range(RUNS):
    if mode == "bare":  # answers 202 to anything: no runs to seed
        runs.append("/v1/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/"
                    f"01HTTPBENCH{i:015d}/fielding-runs/01M8Q6Q927DDTMQAGRCJBZJA9E")
        continue
    scope = f"/v1/demand/accounts/101/projects/01BTGNYV6HRNK8K8VKZASZCFP0/target-groups/01HTTPBENCH{i:015d}"
    body = json.dumps({"start_fielding_at": "2031-01-01T09:00:00.000Z", "end_fielding_at": "2031-01-31T09:00:00.000Z"})
    conn.request("POST", f"{scope}/fielding-run-jobs/schedule-from-draft", body,
                 {**hdr, "Content-Type": "application/json", "idempotency-key": f"cg-{i}"})
    r = conn.getresponse(); r.read(); assert r.status == 201, r.status
    conn.request("GET", r.getheader("location"), headers=hdr)
    r = conn.getresponse(); job = json.loads(r.read())
    runs.append(f"{scope}/fielding-runs/{job['created_fielding_run_id']}")


def one(k):
    path = runs[k % RUNS]
    if load == "put":
        body = '{"start_fielding_at":"2031-01-01T09:00:00.000Z","end_fielding_at":"2031-02-01T09:%02d:%02d.%03dZ"}' % (
            (k // 60000) % 60, (k // 1000) % 60, k % 1000)
        conn.request("PUT", path, body, {**hdr, "Content-Type": "application/json", "If-Match": "*"})
    else:
        conn.request("GET", path, headers=hdr)
    r = conn.getresponse(); r.read(); assert r.status in (200, 202), r.status


try:
    for k in range(200):  # warm-up
        one(k)
except BaseException:
    proc.kill(); raise
subprocess.check_call(["callgrind_control", "-i", "on", str(proc.pid)], stdout=subprocess.DEVNULL)
for k in range(200, 200 + n):
    one(k)
subprocess.check_call(["callgrind_control", "-d", str(proc.pid)], stdout=subprocess.DEVNULL)
proc.terminate(); proc.wait()
files = sorted(glob.glob(f"{outdir}/cg.{tag}.*.1"))
total = 0
for f in files:
    out = subprocess.check_output(["callgrind_annotate", "--threshold=100", f], stderr=subprocess.DEVNULL).decode()
    mm = re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", out) or re.search(r"([\d,]+)\s+\(100.0%\)", out)
    if mm:
        total += int(mm.group(1).replace(",", ""))
print(f"{mode} {load} {total / n:.0f} instr/request  (files: {len(files)})")
