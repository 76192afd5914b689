#!/usr/bin/env python3
"""Checks a docker-archive container image with Python's tarfile/hashlib/json (not the tools
that wrote it): manifest, config digest, layer digest and diff_id, architecture, entrypoint,
and the files in the layer.

usage: check_image.py IMAGE.tar EXPECTED_ARCH
"""
import hashlib
import io
import json
import sys
import tarfile


def fail(msg):
    sys.exit(f"check_image: {msg}")


def main():
    path, want_arch = sys.argv[1:3]
    outer = tarfile.open(path)
    names = outer.getnames()
    if any(n.startswith(("/", "./")) or ".." in n.split("/") for n in names):
        fail(f"odd member names {names}")
    read = lambda n: outer.extractfile(n).read()
    manifest = json.loads(read("manifest.json"))
    if len(manifest) != 1:
        fail("expected one image in manifest.json")
    entry = manifest[0]
    config_raw = read(entry["Config"])
    if entry["Config"] != hashlib.sha256(config_raw).hexdigest() + ".json":
        fail("config file name is not its sha256")
    config = json.loads(config_raw)
    if config["architecture"] != want_arch or config["os"] != "linux":
        fail(f"architecture {config['architecture']}/{config['os']}")
    if want_arch == "arm" and config.get("variant") != "v7":
        fail("arm image without variant v7")
    layers = entry["Layers"]
    if len(layers) != len(config["rootfs"]["diff_ids"]):
        fail("layer count differs from diff_ids")
    for layer, diff_id in zip(layers, config["rootfs"]["diff_ids"]):
        blob = read(layer)
        digest = hashlib.sha256(blob).hexdigest()
        if diff_id != "sha256:" + digest or layer != f"{digest}/layer.tar":
            fail(f"layer {layer} digest {digest} vs diff_id {diff_id}")
        inner = tarfile.open(fileobj=io.BytesIO(blob))
        members = {m.name: m for m in inner.getmembers()}
        agent = members.get("usr/bin/nnc-agent")
        if agent is None or not agent.isfile() or agent.mode & 0o777 != 0o755 or agent.uid != 0:
            fail(f"usr/bin/nnc-agent missing or wrong: {agent}")
        if inner.extractfile(agent).read(4) != b"\x7fELF":
            fail("usr/bin/nnc-agent is not ELF")
        if "etc/ssl/certs/ca-certificates.crt" not in members:
            fail("no CA bundle in the image")
        if not members.get("data") or not members["data"].isdir():
            fail("no /data directory")
        if any(m.issym() or m.islnk() or m.isdev() for m in members.values()):
            fail("links or devices in the layer")
    cfg = config["config"]
    if cfg["Entrypoint"] != ["/usr/bin/nnc-agent", "serve"] or "/data" not in cfg["Volumes"]:
        fail(f"entrypoint/volumes {cfg}")
    if "0.0.0.0:8080" not in cfg["Cmd"]:
        fail(f"the agent must listen on the container's address: {cfg['Cmd']}")
    print(f"check_image: {path} ok ({want_arch}, {len(layers)} layer, tag {entry['RepoTags'][0]})")


if __name__ == "__main__":
    main()
