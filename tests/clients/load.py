#!/usr/bin/env python3
"""Load on the agent from LAN clients: SUBSCRIBERS `events` subscriptions (PyPI gql over
graphql-transport-ws), installs of FEATURES at once, and QPS queries a second over HTTP, for
as long as the installs take. Prints one JSON object: per-subscriber event counts, lost and
reordered events, event latency percentiles, queries sent and failed.

usage: load.py URL TOKEN SUBSCRIBERS QPS FEATURE...
"""
import asyncio
import json
import sys
import threading
import time
import urllib.request
from datetime import datetime

from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

EVENTS = gql("subscription { events { seq type instanceId at } }")


def post(url, token, query, variables=None):
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(url, body, {"content-type": "application/json", "authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        doc = json.load(r)
    if doc.get("errors"):
        raise RuntimeError(doc["errors"])
    return doc["data"]


class Subscriber:
    def __init__(self):
        self.seqs, self.latencies, self.missed, self.installed = [], [], 0, set()
        self.ready = asyncio.Event()

    async def run(self, url, token, stop):
        transport = WebsocketsTransport(url=url.replace("http://", "ws://"), init_payload={"token": token},
                                        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
                                        connect_timeout=30, ack_timeout=30)
        async with Client(transport=transport) as session:
            gen = session.subscribe(EVENTS)
            # The subscription is registered once the first message goes out; give it a beat.
            task = asyncio.ensure_future(gen.__anext__())
            await asyncio.sleep(0.05)
            self.ready.set()
            while True:
                done, _ = await asyncio.wait({task, asyncio.ensure_future(stop.wait())}, return_when=asyncio.FIRST_COMPLETED)
                if task not in done:
                    task.cancel()
                    return
                ev = task.result()["events"]
                now = time.time()
                if ev["type"] == "events.missed":
                    self.missed += 1
                else:
                    self.seqs.append(ev["seq"])
                    at = datetime.fromisoformat(ev["at"].replace("Z", "+00:00")).timestamp()
                    self.latencies.append(now - at)
                if ev["type"] == "service.installed":
                    self.installed.add(ev["instanceId"])
                task = asyncio.ensure_future(gen.__anext__())


def query_load(url, token, qps, stop, stats):
    period = 1.0 / qps
    nxt = time.monotonic()
    while not stop.is_set():
        try:
            post(url, token, "{ instances { id status progress { percent } } features { id } }")
            stats["ok"] += 1
        except Exception as e:  # noqa: BLE001 - counted and reported
            stats["failed"] += 1
            stats["last_error"] = str(e)
        nxt += period
        time.sleep(max(0.0, nxt - time.monotonic()))


async def main():
    url, token, n, qps = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    features = sys.argv[5:]
    stop = asyncio.Event()
    subs = [Subscriber() for _ in range(n)]
    tasks = [asyncio.ensure_future(s.run(url, token, stop)) for s in subs]
    await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in subs)), 120)
    await asyncio.sleep(1.0)
    qstop, qstats = threading.Event(), {"ok": 0, "failed": 0}
    qthread = threading.Thread(target=query_load, args=(url, token, qps, qstop, qstats))
    start = time.monotonic()
    qthread.start()
    ids = []
    for i, f in enumerate(features):
        d = await asyncio.to_thread(post, url, token,
                                    "mutation($f: ID!, $n: String!) { installFeature(featureId: $f, routerId: \"local\", name: $n) { instanceId } }",
                                    {"f": f, "n": f"load{i}"})
        ids.append(d["installFeature"]["instanceId"])
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not all(set(ids) <= s.installed for s in subs):
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - start
    await asyncio.sleep(0.5)
    qstop.set()
    qthread.join()
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    lat = sorted(x for s in subs for x in s.latencies)
    lost = reordered = 0
    for s in subs:
        reordered += sum(1 for a, b in zip(s.seqs, s.seqs[1:]) if b <= a)
        if s.seqs:
            lost += (s.seqs[-1] - s.seqs[0] + 1) - len(set(s.seqs))
    counts = [len(s.seqs) for s in subs]
    print(json.dumps({
        "subscribers": n, "instances": ids, "seconds": round(elapsed, 2),
        "events_min": min(counts), "events_max": max(counts), "events_total": sum(counts),
        "lost": lost, "reordered": reordered, "missed_notices": sum(s.missed for s in subs),
        "all_saw_every_install": all(set(ids) <= s.installed for s in subs),
        "latency_p50_ms": round(lat[len(lat) // 2] * 1000, 1) if lat else None,
        "latency_p99_ms": round(lat[int(len(lat) * 0.99)] * 1000, 1) if lat else None,
        "queries_ok": qstats["ok"], "queries_failed": qstats["failed"], "queries_per_s": round(qstats["ok"] / max(elapsed, 0.001), 1),
        "last_query_error": qstats.get("last_error"),
    }), flush=True)


asyncio.run(main())
