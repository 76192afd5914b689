#!/usr/bin/env python3
"""A GitHub simulator: the REST API's release reads and the release download redirect.

Written from GitHub's REST documentation ("Releases", "Release assets", "Rate limits for the
REST API", "Best practices": API version header, primary and secondary limits) and proved
against PyGithub (tests/github/pygithub_check.py). Files are served from
ROOT/{owner}/{repo}/releases/download/{tag}/{name}, the path github.com serves them at; a
release is a tag directory there, its assets the files in it, each asset's `digest` the
sha256 of its bytes (as GitHub computes it at upload).

  GET /repos/{o}/{r}                          a repository (minimal)
  GET /repos/{o}/{r}/releases                 releases, newest first (per_page, page)
  GET /repos/{o}/{r}/releases/latest          the newest that is not a prerelease
  GET /repos/{o}/{r}/releases/tags/{tag}      one release
  GET /repos/{o}/{r}/releases/{id}/assets     its assets
  GET /{o}/{r}/releases/download/{tag}/{name} 302 to /release-assets/... (Range honoured)

Behaviour is read from --config (JSON) at every request, so a test changes it while the
simulator runs: {"no_digest": [names], "corrupt": [names] (served bytes differ from the
digest), "prerelease": [tags], "token": "T" (a wrong Bearer token is 401), "limit":
{"kind": "primary"|"secondary", "count": N, "retry_after": S}} (the next N API requests are
refused), "unavailable": {name: N} (the asset host answers the first N downloads of that
asset with 503). Every request is appended to --log as a JSON line.

Prints "listening PORT" once ready.
"""

import argparse
import hashlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

LOCK = threading.Lock()
STAMP = "2026-11-01T10:00:00Z"
DOCS = "https://docs.github.com/rest"


def user(base):
    return {"login": "octo", "id": 1, "node_id": "MDQ6VXNlcjE=", "type": "User",
            "site_admin": False, "url": f"{base}/users/octo", "html_url": "https://github.com/octo"}


class Sim:
    def __init__(self, root, config, log):
        self.root, self.config_path, self.log_path = root, config, log
        self.limited = 0  # API requests refused so far under the current "limit"
        self.limit_key = None
        self.unavailable = {}  # asset name -> 503s served so far

    def config(self):
        try:
            with open(self.config_path) as f:
                return json.load(f)
        except (OSError, ValueError, TypeError):
            return {}

    def release_dir(self, o, r, tag):
        d = os.path.join(self.root, o, r, "releases", "download", tag)
        return d if os.path.isdir(d) and ".." not in (o, r, tag) else None

    def tags(self, o, r):
        d = os.path.join(self.root, o, r, "releases", "download")
        if ".." in (o, r) or not os.path.isdir(d):
            return None
        # Newest first, by the directory's modification time, then by name.
        return sorted(os.listdir(d), key=lambda t: (os.stat(os.path.join(d, t)).st_mtime, t),
                      reverse=True)

    @staticmethod
    def ident(*parts):
        return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:4], "big") & 0x7FFFFFFF

    def asset(self, base, api, o, r, tag, name, cfg):
        path = os.path.join(self.release_dir(o, r, tag), name)
        with open(path, "rb") as f:
            data = f.read()
        aid = self.ident(o, r, tag, name)
        return {
            "url": f"{api}/repos/{o}/{r}/releases/assets/{aid}",
            "browser_download_url": f"{base}/{o}/{r}/releases/download/{quote(tag)}/{quote(name)}",
            "id": aid, "node_id": f"RA_{aid}", "name": name, "label": "", "state": "uploaded",
            "content_type": "application/octet-stream", "size": len(data),
            "digest": None if name in cfg.get("no_digest", []) else
            "sha256:" + hashlib.sha256(data).hexdigest(),
            "download_count": 0, "created_at": STAMP, "updated_at": STAMP, "uploader": user(api),
        }

    def release(self, base, api, o, r, tag, cfg):
        d = self.release_dir(o, r, tag)
        rid = self.ident(o, r, tag)
        return {
            "url": f"{api}/repos/{o}/{r}/releases/{rid}",
            "html_url": f"{base}/{o}/{r}/releases/tag/{quote(tag)}",
            "assets_url": f"{api}/repos/{o}/{r}/releases/{rid}/assets",
            "upload_url": f"{api}/repos/{o}/{r}/releases/{rid}/assets{{?name,label}}",
            "tarball_url": f"{api}/repos/{o}/{r}/tarball/{quote(tag)}",
            "zipball_url": f"{api}/repos/{o}/{r}/zipball/{quote(tag)}",
            "id": rid, "node_id": f"RE_{rid}", "tag_name": tag, "target_commitish": "main",
            "name": tag, "body": f"Release {tag}", "draft": False,
            "prerelease": tag in cfg.get("prerelease", []), "immutable": False,
            "created_at": STAMP, "published_at": STAMP, "author": user(api),
            "assets": [self.asset(base, api, o, r, tag, n, cfg) for n in sorted(os.listdir(d))],
        }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "GitHub.com"

    def log_message(self, *args):
        pass

    def record(self, status):
        entry = {"method": self.command, "path": self.path, "status": status,
                 "accept": self.headers.get("Accept"),
                 "api_version": self.headers.get("X-GitHub-Api-Version"),
                 # The scheme only: the token itself never goes in the log.
                 "authorization": (self.headers.get("Authorization") or "").split(" ")[0] or None,
                 "user_agent": self.headers.get("User-Agent"), "time": time.time()}
        with LOCK, open(SIM.log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def send(self, status, body=b"", headers=(), ctype="application/json; charset=utf-8"):
        self.record(status)
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        if body is not None:
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def json(self, status, doc, headers=()):
        self.send(status, json.dumps(doc, indent=1).encode(), headers)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        host = self.headers.get("Host", "127.0.0.1")
        base = f"http://{host}"
        api = base
        cfg = SIM.config()
        if parts[:1] == ["repos"]:
            return self.api(parts[1:], parse_qs(url.query), base, api, cfg)
        if len(parts) == 6 and parts[2:4] == ["releases", "download"]:
            o, r, _, _, tag, name = parts
            d = SIM.release_dir(o, r, tag)
            if d is None or not os.path.isfile(os.path.join(d, name)):
                return self.send(404, b"Not Found", ctype="text/plain")
            # github.com redirects release downloads to its asset host.
            loc = f"/release-assets/{SIM.ident(o, r, tag, name)}?o={quote(o)}&r={quote(r)}&t={quote(tag)}&n={quote(name)}"
            return self.send(302, b"", [("Location", loc)], ctype="text/html")
        if parts[:1] == ["release-assets"]:
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            d = SIM.release_dir(q.get("o", ""), q.get("r", ""), q.get("t", ""))
            name = q.get("n", "")
            if d is None or "/" in name or not os.path.isfile(os.path.join(d, name)):
                return self.send(404, b"Not Found", ctype="text/plain")
            with LOCK:
                down = SIM.unavailable.get(name, 0) < int(cfg.get("unavailable", {}).get(name, 0))
                if down:
                    SIM.unavailable[name] = SIM.unavailable.get(name, 0) + 1
            if down:
                return self.send(503, b"Service Unavailable", ctype="text/plain")
            with open(os.path.join(d, name), "rb") as f:
                data = f.read()
            if name in cfg.get("corrupt", []):
                data = data[:-1] + bytes([data[-1] ^ 1]) if data else b"x"
            rng = self.headers.get("Range", "")
            if rng.startswith("bytes=") and rng[6:].endswith("-") and rng[6:-1].isdigit():
                start = int(rng[6:-1])
                if start >= len(data):
                    return self.send(416, b"", [("Content-Range", f"bytes */{len(data)}")])
                return self.send(206, data[start:], [("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}"),
                                                     ("Accept-Ranges", "bytes")], ctype="application/octet-stream")
            return self.send(200, data, [("Accept-Ranges", "bytes")], ctype="application/octet-stream")
        return self.send(404, b"Not Found", ctype="text/plain")

    def api(self, parts, query, base, api, cfg):
        auth = self.headers.get("Authorization")
        token = cfg.get("token")
        if auth is not None and token is not None and auth not in (f"Bearer {token}", f"token {token}"):
            return self.json(401, {"message": "Bad credentials", "documentation_url": DOCS, "status": "401"})
        authed = auth is not None
        quota = 5000 if authed else 60
        reset = int(time.time()) + 3600
        limit = cfg.get("limit") or {}
        with LOCK:
            key = json.dumps(limit, sort_keys=True)
            if key != SIM.limit_key:
                SIM.limit_key, SIM.limited = key, 0
            refuse = SIM.limited < int(limit.get("count", 0))
            if refuse:
                SIM.limited += 1
        rate = [("x-ratelimit-limit", str(quota)), ("x-ratelimit-resource", "core"),
                ("x-ratelimit-reset", str(reset)), ("X-GitHub-Api-Version-Selected", "2022-11-28")]
        if refuse and limit.get("kind") == "secondary":
            return self.json(429, {"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
                                   "documentation_url": DOCS + "/overview/rate-limits-for-the-rest-api", "status": "429"},
                             rate + [("retry-after", str(limit.get("retry_after", 60))),
                                     ("x-ratelimit-remaining", "42"), ("x-ratelimit-used", str(quota - 42))])
        if refuse:
            return self.json(403, {"message": "API rate limit exceeded for 127.0.0.1. (But here's the good news: Authenticated requests get a higher rate limit. Check out the documentation for more details.)",
                                   "documentation_url": DOCS + "/overview/rate-limits-for-the-rest-api", "status": "403"},
                             rate + [("x-ratelimit-remaining", "0"), ("x-ratelimit-used", str(quota))])
        rate += [("x-ratelimit-remaining", str(quota - 1)), ("x-ratelimit-used", "1")]
        not_found = {"message": "Not Found", "documentation_url": DOCS, "status": "404"}
        if len(parts) < 2:
            return self.json(404, not_found, rate)
        o, r, rest = parts[0], parts[1], parts[2:]
        tags = SIM.tags(o, r)
        if tags is None:
            return self.json(404, not_found, rate)
        if not rest:
            return self.json(200, {"id": SIM.ident(o, r), "name": r, "full_name": f"{o}/{r}",
                                   "owner": user(api), "private": False,
                                   "url": f"{api}/repos/{o}/{r}", "html_url": f"{base}/{o}/{r}"}, rate)
        if rest == ["releases"]:
            per = max(1, min(100, int((query.get("per_page") or ["30"])[0])))
            page = max(1, int((query.get("page") or ["1"])[0]))
            chosen = tags[(page - 1) * per:page * per]
            last = max(1, (len(tags) + per - 1) // per)
            # RFC 8288 Link header, as GitHub paginates: next/last (and prev/first past page 1).
            link = lambda p, rel: f'<{api}/repos/{o}/{r}/releases?per_page={per}&page={p}>; rel="{rel}"'
            rels = []
            if page < last:
                rels += [link(page + 1, "next"), link(last, "last")]
            if page > 1:
                rels += [link(page - 1, "prev"), link(1, "first")]
            extra = [("Link", ", ".join(rels))] if rels else []
            return self.json(200, [SIM.release(base, api, o, r, t, cfg) for t in chosen], rate + extra)
        if rest == ["releases", "latest"]:
            stable = [t for t in tags if t not in cfg.get("prerelease", [])]
            if not stable:
                return self.json(404, not_found, rate)
            return self.json(200, SIM.release(base, api, o, r, stable[0], cfg), rate)
        if len(rest) == 3 and rest[:2] == ["releases", "tags"]:
            if rest[2] not in tags:
                return self.json(404, not_found, rate)
            return self.json(200, SIM.release(base, api, o, r, rest[2], cfg), rate)
        if len(rest) == 3 and rest[0] == "releases" and rest[2] == "assets":
            for t in tags:
                if str(SIM.ident(o, r, t)) == rest[1]:
                    return self.json(200, SIM.release(base, api, o, r, t, cfg)["assets"], rate)
        return self.json(404, not_found, rate)


def main():
    global SIM
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--port", type=int, default=0)
    a = p.parse_args()
    SIM = Sim(a.root, a.config, a.log)
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    print(f"listening {srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
