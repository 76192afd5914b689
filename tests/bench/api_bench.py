#!/usr/bin/env python3
"""Memory, API and event figures of one agent binary (issue 18); prints them, asserts nothing
about speed. Needs root (instances get interfaces), nginx, wrk and the loadgen example.

usage: api_bench.py AGENT_BINARY LOADGEN_BINARY [--cycles N] [--headline]
  (--headline: part 1 only)
  (BENCH_WRAP="valgrind --tool=massif" runs the agent under that; BENCH_STDERR=1 shows its log)

1. headline: a fresh agent, idle RSS; then 200 `events` subscribers (loadgen, one thread,
   which reports its own CPU share so a run shows it kept up), 5 installs at once from a
   rate-limited nginx and wrk on `instances`; peak RSS (VmHWM) and event latency.
2. scaling table: RSS and `instances` query throughput/latency (wrk, closed loop, 4
   connections) at 0/10/20/50 running instances (busybox `sleep`) x 0/50/200 subscribers.
3. redb: the store's size after N install/uninstall cycles (default 1000).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

INSTANCES_Q = "{ instances { id name status version progress { percent } interface { name } } }"


def post(url, token, query, variables=None):
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(url, body, {"content-type": "application/json", "authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        doc = json.load(r)
    if doc.get("errors"):
        raise RuntimeError(doc["errors"])
    return doc["data"]


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Bench:
    def __init__(self, agent_bin, loadgen_bin):
        self.agent_bin, self.loadgen_bin = agent_bin, loadgen_bin
        self.root = tempfile.mkdtemp(prefix="nnc-apibench-")
        self.procs = []
        self.www = os.path.join(self.root, "www")
        os.makedirs(self.www)

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(self.root, ignore_errors=True)

    def nginx(self):
        port = 19000 + os.getpid() % 1000
        conf = os.path.join(self.root, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""daemon off; master_process off; worker_processes 1;
error_log {self.root}/nginx-error.log; pid {self.root}/nginx.pid;
events {{ worker_connections 256; }}
http {{ access_log off; sendfile on; server {{ listen 127.0.0.1:{port}; root {self.www};
  location /slow/ {{ limit_rate 6m; }} }} }}
""")
        self.procs.append(subprocess.Popen(["nginx", "-p", self.root, "-c", conf]))
        time.sleep(0.3)
        return f"http://127.0.0.1:{port}"

    def catalogue(self, base):
        os.makedirs(os.path.join(self.www, "slow"))
        shutil.copy("/bin/busybox", os.path.join(self.www, "busybox"))
        shutil.copy("/usr/bin/true", os.path.join(self.www, "true"))
        feats = []
        for i in range(5):
            path = os.path.join(self.www, "slow", f"f{i}")
            with open("/usr/bin/true", "rb") as src, open(path, "wb") as out:
                out.write(src.read())
                out.write(os.urandom(12 << 20))
            feats.append({"id": f"f{i}", "name": "load", "version": "1", "binary": "tool",
                          "assets": {"x86_64": {"url": f"{base}/slow/f{i}", "sha256": sha256(path)}}})
        feats.append({"id": "tiny", "name": "tiny", "version": "1", "binary": "busybox",
                      "service": {"args": ["sleep", "100000"], "health": {"exec": ["true"]}},
                      "assets": {"x86_64": {"url": f"{base}/busybox", "sha256": sha256(os.path.join(self.www, "busybox"))}}})
        feats.append({"id": "small", "name": "small", "version": "1", "binary": "true",
                      "assets": {"x86_64": {"url": f"{base}/true", "sha256": sha256(os.path.join(self.www, "true"))}}})
        path = os.path.join(self.root, "catalogue.json")
        with open(path, "w") as f:
            json.dump({"schema": 1, "features": feats}, f)
        return path

    def agent(self, catalogue):
        data = os.path.join(self.root, "data")
        cfg = os.path.join(self.root, "nnc.toml")
        with open(cfg, "w") as f:
            f.write(f'data_dir = "{data}"\nlisten = "127.0.0.1:0"\ncatalogue = "{catalogue}"\nlog_level = "warn"\n'
                    "[api]\nmax_connections = 512\nmax_connections_per_address = 512\n")
        p = subprocess.Popen(os.environ.get("BENCH_WRAP", "").split() + [self.agent_bin, "serve", "--config", cfg], stdout=subprocess.PIPE,
                             stderr=None if os.environ.get("BENCH_STDERR") else open(os.path.join(self.root, "agent.log"), "w"), text=True)
        self.procs.append(p)
        url = p.stdout.readline().strip().split("listening on ")[1]
        token = open(os.path.join(data, "token")).read().strip()
        return p, url, token, data

    def subscribers(self, url, token, n):
        p = subprocess.Popen([self.loadgen_bin, url, token, str(n)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        self.procs.append(p)
        line = p.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"loadgen: {line!r}")
        return p

    @staticmethod
    def stop_subscribers(p):
        out, _ = p.communicate("stop\n", timeout=60)
        return json.loads(out)

    def wrk(self, url, token, seconds=4, conns=4):
        script = os.path.join(self.root, "post.lua")
        with open(script, "w") as f:
            body = json.dumps({"query": INSTANCES_Q})
            f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                    f'wrk.headers["content-type"] = "application/json"\n'
                    f'wrk.headers["authorization"] = "Bearer {token}"\n'
                    'done = function(summary, latency, requests)\n'
                    '  io.write(string.format("JSON {\\"rps\\": %.1f, \\"p50_ms\\": %.3f, \\"p99_ms\\": %.3f, '
                    '\\"errors\\": %d, \\"non2xx\\": %d}\\n", summary.requests / (summary.duration / 1e6), '
                    'latency:percentile(50) / 1000, latency:percentile(99) / 1000, '
                    'summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, '
                    'summary.errors.status))\nend\n')
        out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", script, url],
                             capture_output=True, text=True, check=True).stdout
        return json.loads(next(l for l in out.splitlines() if l.startswith("JSON "))[5:])


def wait_all(url, token, ids, want, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = post(url, token, "{ instances { id status errorCode error } }")["instances"]
        st = {i["id"]: i["status"] for i in got}
        bad = [i for i in got if i["id"] in ids and i["status"] == "FAILED"]
        if bad:
            raise RuntimeError(f"failed: {bad[0]} and {len(bad) - 1} more")
        if all(st.get(i) in want for i in ids):
            return
        time.sleep(0.1)
    raise RuntimeError(f"timeout waiting for {want}")


def install(url, token, feature, name):
    q = 'mutation($f: ID!, $n: String!) { installFeature(featureId: $f, routerId: "local", name: $n) { instanceId } }'
    return post(url, token, q, {"f": feature, "n": name})["installFeature"]["instanceId"]


def main():
    agent_bin, loadgen_bin = sys.argv[1], sys.argv[2]
    cycles = int(sys.argv[sys.argv.index("--cycles") + 1]) if "--cycles" in sys.argv else 1000
    b = Bench(agent_bin, loadgen_bin)
    try:
        base = b.nginx()
        agent, url, token, data = b.agent(b.catalogue(base))
        time.sleep(1.0)
        idle = status_kib(agent.pid, "VmRSS:")
        print(f"binary {agent_bin} ({os.path.getsize(agent_bin)} bytes)")
        print(f"idle: VmRSS {idle} KiB (RssAnon {status_kib(agent.pid, 'RssAnon:')}, RssFile "
              f"{status_kib(agent.pid, 'RssFile:')}; 1 s after start, fresh data dir, no instances)")

        # 1. 200 subscribers, 5 installs at once, queries meanwhile.
        subs = b.subscribers(url, token, 200)
        with_subs = status_kib(agent.pid, "VmRSS:")
        ids = [install(url, token, f"f{i}", f"load{i}") for i in range(5)]
        q = b.wrk(url, token, seconds=2, conns=2)
        wait_all(url, token, ids, {"INSTALLED"})
        time.sleep(0.5)
        ev = b.stop_subscribers(subs)
        peak = status_kib(agent.pid, "VmHWM:")
        print(f"200 subscribers connected: VmRSS {with_subs} KiB "
              f"({(with_subs - idle) / 200:.1f} KiB per subscriber)")
        print(f"200 subscribers + 5 concurrent installs (12 MiB each at 6 MiB/s) + wrk: peak VmHWM {peak} KiB "
              f"({peak / 1024:.1f} MiB)")
        print(f"  events: {json.dumps(ev)}")
        print(f"  queries meanwhile (wrk, 2 conns, 2 s): {json.dumps(q)}")
        for i in ids:
            post(url, token, "mutation($id: ID!) { uninstallInstance(id: $id) { instanceId } }", {"id": i})
        wait_all(url, token, [], set())
        if "--headline" in sys.argv:
            return

        # 2. Scaling table.
        print("\ninstances | subscribers | VmRSS KiB | instances q/s | p50 ms | p99 ms")
        running = []
        for level in (0, 10, 20, 50):
            new = [install(url, token, "tiny", f"tiny{len(running) + k}") for k in range(level - len(running))]
            running += new
            if new:
                wait_all(url, token, new, {"RUNNING"})
            time.sleep(0.5)
            for n in (0, 50, 200):
                s = b.subscribers(url, token, n) if n else None
                time.sleep(0.3)
                rss = status_kib(agent.pid, "VmRSS:")
                r = b.wrk(url, token)
                if s:
                    b.stop_subscribers(s)
                print(f"{level:9} | {n:11} | {rss:9} | {r['rps']:13.0f} | {r['p50_ms']:6.2f} | {r['p99_ms']:6.2f}"
                      + (f"  (errors {r['errors']}, non-2xx {r['non2xx']})" if r['errors'] or r['non2xx'] else ""))
        for i in running:
            post(url, token, "mutation($id: ID!) { uninstallInstance(id: $id) { instanceId } }", {"id": i})
        time.sleep(1)

        # 3. redb after install/uninstall cycles.
        store = [os.path.join(dp, f) for dp, _, fs in os.walk(data) for f in fs if f.endswith(".redb")]
        before = sum(os.path.getsize(f) for f in store)
        t0 = time.monotonic()
        for c in range(cycles):
            iid = install(url, token, "small", f"c{c}")
            wait_all(url, token, [iid], {"INSTALLED"})
            post(url, token, "mutation($id: ID!) { uninstallInstance(id: $id) { instanceId } }", {"id": iid})
        wait_all(url, token, [], set())
        after = sum(os.path.getsize(f) for f in store)
        print(f"\nredb: {before} bytes before, {after} bytes after {cycles} install/uninstall cycles "
              f"({time.monotonic() - t0:.1f} s); agent VmRSS {status_kib(agent.pid, 'VmRSS:')} KiB, "
              f"VmHWM {status_kib(agent.pid, 'VmHWM:')} KiB")
    finally:
        b.close()


if __name__ == "__main__":
    main()
