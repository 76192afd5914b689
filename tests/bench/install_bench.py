#!/usr/bin/env python3
"""Measures the agent against loopback nginx; prints figures, asserts nothing about speed.

usage: install_bench.py AGENT_BINARY
  BENCH_ARCH=aarch64 BENCH_WRAP=qemu-aarch64-static: the agent of another arch under qemu-user
  (the file it downloads then starts with that binary's own ELF header, as its check wants).
"""
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

SIZE = 200 * 1024 * 1024


def post(url, token, query, variables=None):
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(url, body, {"content-type": "application/json", "authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        doc = json.load(r)
    if "errors" in doc:
        raise RuntimeError(doc["errors"])
    return doc["data"]


def wait_status(url, token, iid, timeout=600):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        s = post(url, token, "query($id: ID!) { instance(id: $id) { status error } }", {"id": iid})["instance"]
        if s["status"] in ("INSTALLED", "FAILED"):
            return s
        time.sleep(0.02)
    raise RuntimeError("timeout")


def peak_rss_kb(pid):
    """VmHWM: the process's peak resident set size so far."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main():
    agent_bin = sys.argv[1]
    root = tempfile.mkdtemp(prefix="nnc-bench-")
    procs = []
    try:
        www = os.path.join(root, "www")
        os.makedirs(www)
        big = os.path.join(www, "big")
        h = hashlib.sha256()
        arch = os.environ.get("BENCH_ARCH", "x86_64")
        elf = agent_bin if "BENCH_ARCH" in os.environ else "/usr/bin/true"
        with open(elf, "rb") as src, open(big, "wb") as out:
            head = src.read(64 * 1024)
            out.write(head)
            h.update(head)
            left = SIZE - len(head)
            while left > 0:
                chunk = os.urandom(min(left, 1 << 20))
                out.write(chunk)
                h.update(chunk)
                left -= len(chunk)
        sha = h.hexdigest()
        port = 18000 + os.getpid() % 1000
        conf = os.path.join(root, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""daemon off; master_process off; worker_processes 1;
error_log {root}/error.log; pid {root}/nginx.pid;
events {{ worker_connections 64; }}
http {{ access_log off; sendfile on; server {{ listen 127.0.0.1:{port}; root {www}; }} }}
""")
        procs.append(subprocess.Popen(["nginx", "-p", root, "-c", conf]))
        time.sleep(0.5)
        url_big = f"http://127.0.0.1:{port}/big"

        peer_file = os.path.join(root, "peer.bin")
        peers = {
            "curl -o /dev/null": f"curl -s -o /dev/null {url_big}",
            "curl | sha256sum": f"curl -s {url_big} | sha256sum > /dev/null",
            "curl | openssl dgst -sha256": f"curl -s {url_big} | openssl dgst -sha256 > /dev/null",
            # The same work as the agent's: hash, write and fsync the file.
            "curl | tee file | openssl dgst -sha256 && sync file":
                f"curl -s {url_big} | tee {peer_file} | openssl dgst -sha256 > /dev/null && sync {peer_file} && rm {peer_file}",
        }
        runs = int(os.environ.get("BENCH_RUNS", "5"))

        catalogue = os.path.join(root, "catalogue.json")
        with open(catalogue, "w") as f:
            # One feature per run: each install downloads (a version's binary is shared).
            json.dump({"schema": 1, "features": [
                {"id": f"big{r}", "name": "big", "version": "1", "binary": "big",
                 "assets": {arch: {"url": url_big, "sha256": sha}}} for r in range(runs)]}, f)
        data = os.path.join(root, "data")
        cfg = os.path.join(root, "nnc.toml")
        with open(cfg, "w") as f:
            f.write(f'data_dir = "{data}"\nlisten = "127.0.0.1:0"\ncatalogue = "{catalogue}"\nlog_level = "warn"\n'
                    "[download]\nmax_bytes = 1073741824\n")
        agent = subprocess.Popen(os.environ.get("BENCH_WRAP", "").split() + [agent_bin, "serve", "--config", cfg],
                                 stdout=subprocess.PIPE, text=True)
        procs.append(agent)
        line = agent.stdout.readline().strip()
        url = line.split("listening on ")[1]
        token = open(os.path.join(data, "token")).read().strip()
        install = 'mutation($f: ID!, $n: String!) { installFeature(featureId: $f, routerId: "local", name: $n) { instanceId } }'

        # Rounds interleave the agent and its peers, so a slow moment of the machine hits all.
        times = {"agent": [], **{name: [] for name in peers}}
        for r in range(runs):
            for name, cmd in peers.items():
                t0 = time.monotonic()
                subprocess.run(cmd, shell=True, check=True)
                times[name].append(time.monotonic() - t0)
            t0 = time.monotonic()
            iid = post(url, token, install, {"f": f"big{r}", "n": "first"})["installFeature"]["instanceId"]
            st = wait_status(url, token, iid)
            times["agent"].append(time.monotonic() - t0)
            assert st["status"] == "INSTALLED", st
        median = {name: statistics.median(t) for name, t in times.items()}
        agent_s = median["agent"]
        print(f"download 200 MiB, median of {runs} interleaved runs (min-max): agent {agent_s:.2f} s "
              f"({min(times['agent']):.2f}-{max(times['agent']):.2f}; download+sha256+fsync+ELF check+rename, polled every 20 ms)")
        for name in peers:
            print(f"  {name}: {median[name]:.2f} s ({min(times[name]):.2f}-{max(times[name]):.2f}); "
                  f"agent / it = {agent_s / median[name]:.2f}")

        lat = []
        for i in range(100):
            t = time.perf_counter()
            post(url, token, install, {"f": "big0", "n": f"n{i}"})  # its binary is in place
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()

        rss_kb = peak_rss_kb(agent.pid)
        agent.kill()
        agent.wait()
        print(f"agent peak RSS (VmHWM) over the run: {rss_kb / 1024:.1f} MiB")
        print(f"installFeature latency over 100 calls: median {statistics.median(lat):.2f} ms, p99 {lat[98]:.2f} ms, max {lat[-1]:.2f} ms")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
