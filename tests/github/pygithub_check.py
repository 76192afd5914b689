#!/usr/bin/env python3
"""Proves tests/github/sim.py against PyGithub, a client written against the real API.

Usage: pygithub_check.py API_URL OWNER/REPO TAG CONFIG TOKEN
Prints one JSON object: the release's assets as PyGithub reads them (name -> digest, size,
browser_download_url), the bytes' sha256 fetched from each browser_download_url (following
the redirect), the latest release's tag, and the exception PyGithub raises when the
simulator applies its primary, then its secondary rate limit (CONFIG is rewritten for that).
"""

import hashlib
import json
import sys
import urllib.request

from github import Auth, Github, GithubException, RateLimitExceededException

api, full, tag, config, token = sys.argv[1:6]
g = Github(base_url=api, auth=Auth.Token(token), retry=None, lazy=True)
repo = g.get_repo(full)
release = repo.get_release(tag)
out = {"tag": release.tag_name, "assets": {}, "fetched": {}}
for a in release.assets:
    out["assets"][a.name] = {"digest": a.digest, "size": a.size, "url": a.browser_download_url}
    with urllib.request.urlopen(a.browser_download_url) as r:
        out["fetched"][a.name] = "sha256:" + hashlib.sha256(r.read()).hexdigest()
out["listed"] = sorted(a.name for a in repo.get_release(release.id).get_assets())
out["latest"] = repo.get_latest_release().tag_name
# One release per page: PyGithub follows the Link header through every page.
paged = Github(base_url=api, auth=Auth.Token(token), retry=None, lazy=True, per_page=1)
out["all_tags"] = [r.tag_name for r in paged.get_repo(full).get_releases()]
try:
    repo.get_release("no-such-tag")
    out["missing"] = None
except GithubException as e:
    out["missing"] = e.status

with open(config) as f:
    cfg = json.load(f)
for kind in ["primary", "secondary"]:
    cfg["limit"] = {"kind": kind, "count": 1, "retry_after": 3}
    with open(config, "w") as f:
        json.dump(cfg, f)
    try:
        repo.get_release(tag)
        out[kind] = None
    except RateLimitExceededException as e:
        out[kind] = {"exception": type(e).__name__, "status": e.status,
                     "retry_after": (e.headers or {}).get("retry-after")}
    except GithubException as e:
        out[kind] = {"exception": type(e).__name__, "status": e.status,
                     "retry_after": (e.headers or {}).get("retry-after")}
cfg.pop("limit")
with open(config, "w") as f:
    json.dump(cfg, f)
print(json.dumps(out))
