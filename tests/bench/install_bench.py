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

        t0 = time.monotonic()
        subprocess.run(["curl", "-s", "-o", "/dev/null", url_big], check=True)
        curl_s = time.monotonic() - t0
        t0 = time.monotonic()
        subprocess.run(f"curl -s {url_big} | sha256sum > /dev/null", shell=True, check=True)
        curl_sha_s = time.monotonic() - t0
        t0 = time.monotonic()
        subprocess.run(f"curl -s {url_big} | openssl dgst -sha256 > /dev/null", shell=True, check=True)
        curl_ossl_s = time.monotonic() - t0
        # The same work as the agent's: hash, write and fsync the file.
        peer_file = os.path.join(root, "peer.bin")
        t0 = time.monotonic()
        subprocess.run(f"curl -s {url_big} | tee {peer_file} | openssl dgst -sha256 > /dev/null && sync {peer_file}",
                       shell=True, check=True)
        curl_tee_s = time.monotonic() - t0
        os.unlink(peer_file)

        catalogue = os.path.join(root, "catalogue.json")
        with open(catalogue, "w") as f:
            json.dump({"schema": 1, "features": [
                {"id": "big", "name": "big", "version": "1", "binary": "big",
                 "assets": {arch: {"url": url_big, "sha256": sha}}}]}, f)
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
        install = 'mutation($n: String!) { installFeature(featureId: "big", routerId: "local", name: $n) { instanceId } }'

        t0 = time.monotonic()
        iid = post(url, token, install, {"n": "first"})["installFeature"]["instanceId"]
        st = wait_status(url, token, iid)
        agent_s = time.monotonic() - t0
        assert st["status"] == "INSTALLED", st

        lat = []
        for i in range(100):
            t = time.perf_counter()
            post(url, token, install, {"n": f"n{i}"})
            lat.append((time.perf_counter() - t) * 1000)
        lat.sort()

        rss_kb = peak_rss_kb(agent.pid)
        agent.kill()
        agent.wait()
        print(f"download 200 MiB: agent {agent_s:.2f} s (download+sha256+fsync+ELF check+rename, polled every 20 ms), "
              f"curl -o /dev/null {curl_s:.2f} s (ratio {agent_s / curl_s:.2f}), curl | sha256sum {curl_sha_s:.2f} s (ratio {agent_s / curl_sha_s:.2f}), "
              f"curl | openssl dgst -sha256 {curl_ossl_s:.2f} s (ratio {agent_s / curl_ossl_s:.2f}), "
              f"curl | tee file | openssl dgst -sha256 && sync file {curl_tee_s:.2f} s (ratio {agent_s / curl_tee_s:.2f})")
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
