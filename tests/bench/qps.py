#!/usr/bin/env python3
"""`instances` query throughput of one or more agent binaries, side by side (issue 18's API
figure); prints, asserts nothing. Needs root, nginx and wrk (tests/bench/run.sh installs them).

usage: qps.py BINARY [BINARY ...]   (N=20 instances, ROUNDS=3 wrk runs of 4 s, 4 connections)

Each binary gets a fresh agent with N running `tiny` instances (busybox sleep) from
api_bench.py's catalogue; the binaries are measured in the order given, so give them twice
(A B A B) to see the machine's drift.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from api_bench import Bench, install, status_kib, wait_all  # noqa: E402

n = int(os.environ.get("N", "20"))
for agent_bin in sys.argv[1:]:
    b = Bench(agent_bin, None)
    try:
        agent, url, token, _ = b.agent(b.catalogue(b.nginx()))
        ids = [install(url, token, "tiny", f"tiny{k}") for k in range(n)]
        wait_all(url, token, ids, {"RUNNING"})
        time.sleep(0.5)
        print(f"{agent_bin} ({os.path.getsize(agent_bin)} bytes), {n} instances, "
              f"VmRSS {status_kib(agent.pid, 'VmRSS:')} KiB", flush=True)
        for _ in range(int(os.environ.get("ROUNDS", "3"))):
            print("  " + json.dumps(b.wrk(url, token)), flush=True)
    finally:
        b.close()
