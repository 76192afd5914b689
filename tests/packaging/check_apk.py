#!/usr/bin/env python3
"""Reads back an apk v3 package and its packages.adb with a reader of its own (not
openwrt/adb.py), from apk-tools' format description: the container (ADBd deflate, 'ADB.',
schema, 8-aligned blocks ADB, SIG*, DATA*), every value's type and alignment, the package's
paths/files against its DATA blocks and their SHA-256, its unique id, the index's hash and
size of the package, and the index signature, verified by `openssl`.

usage: check_apk.py PKG.apk packages.adb KEY.pem BINARY ARCH BOARD
"""
import hashlib
import os
import struct
import subprocess
import sys
import tempfile
import zlib


def fail(msg):
    raise SystemExit(f"check_apk: {msg}")


def container(path, schema):
    raw = open(path, "rb").read()
    if raw[:4] != b"ADBd":
        fail(f"{path}: not deflated as OpenWrt's are ({raw[:4]!r})")
    d = zlib.decompressobj(-15)
    data = d.decompress(raw[4:]) + d.flush()
    if not d.eof or d.unused_data:
        fail(f"{path}: the deflate stream is cut or followed by bytes")
    if data[:4] != b"ADB." or data[4:8] != schema:
        fail(f"{path}: header {data[:8]!r}")
    blocks, at = [], 8
    while at < len(data):
        if at % 8:
            fail(f"{path}: block at {at} not 8-aligned")
        (h,) = struct.unpack_from("<I", data, at)
        kind, size = h >> 30, h & 0x3FFFFFFF
        if kind == 3 or size < 4 or at + size > len(data):
            fail(f"{path}: bad block header {h:#x} at {at}")
        blocks.append((kind, data[at + 4:at + size]))
        end = at + size + (-size % 8)
        if data[at + size:end] != b"\0" * (end - at - size):
            fail(f"{path}: padding after the block at {at} is not zero")
        at = end
    kinds = [k for k, _ in blocks]
    if kinds[:1] != [0] or kinds != [0] + sorted(kinds[1:]) or 0 in kinds[1:]:
        fail(f"{path}: block order {kinds}")
    return blocks


class Values:
    ALIGN = {0x2: 4, 0x3: 4, 0x8: 1, 0x9: 2, 0xA: 4, 0xD: 4, 0xE: 4}

    def __init__(self, payload):
        if len(payload) < 8 or payload[0] != 0:
            fail("ADB header")
        self.p = payload
        self.root = self.u32(4)

    def u32(self, off):
        if off + 4 > len(self.p):
            fail(f"read past the block at {off}")
        return struct.unpack_from("<I", self.p, off)[0]

    def split(self, v):
        t, off = v >> 28, v & 0x0FFFFFFF
        if t in self.ALIGN and off % self.ALIGN[t]:
            fail(f"value {v:#010x} misaligned")
        return t, off

    def int(self, v):
        t, off = self.split(v)
        if t == 0x1:
            return off
        if t == 0x2:
            return self.u32(off)
        if t == 0x3:
            return struct.unpack_from("<Q", self.p, off)[0]
        fail(f"{v:#010x} is not an integer")

    def blob(self, v):
        if v == 0:
            return None
        t, off = self.split(v)
        width = {0x8: 1, 0x9: 2, 0xA: 4}.get(t) or fail(f"{v:#010x} is not a blob")
        n = int.from_bytes(self.p[off:off + width], "little")
        if off + width + n > len(self.p):
            fail("blob past the block")
        return self.p[off + width:off + width + n]

    def slots(self, v):
        """[None, field 1, field 2, ...] of an object or array; [] for NULL."""
        if v == 0:
            return []
        t, off = self.split(v)
        if t not in (0xD, 0xE):
            fail(f"{v:#010x} is not an object or array")
        n = self.u32(off)
        if n == 0:
            fail("an object of no slots")
        return [None] + [self.u32(off + 4 * i) for i in range(1, n)]

    def field(self, v, i):
        s = self.slots(v)
        return s[i] if i < len(s) else 0

    def text(self, v, i):
        b = self.blob(self.field(v, i))
        return None if b is None else b.decode()


def check_package(path, binary, arch, board):
    blocks = container(path, b"pckg")
    adb = blocks[0][1]
    v = Values(adb)
    info = v.field(v.root, 1)
    name, version = v.text(info, 1), v.text(info, 2)
    if (name, v.text(info, 5)) != ("nnc-agent", arch):
        fail(f"name/arch {name} {v.text(info, 5)}")
    # The unique id: SHA-256 of the block with its own 20 bytes zeroed, cut to 20.
    hv = v.field(info, 3)
    uid = v.blob(hv)
    at = (hv & 0x0FFFFFFF) + 1
    zeroed = adb[:at] + b"\0" * 20 + adb[at + 20:]
    if len(uid) != 20 or hashlib.sha256(zeroed).digest()[:20] != uid:
        fail("the package id is not the hash of its block")
    deps = [v.text(d, 1) for d in v.slots(v.field(info, 15))[1:]]
    for want in ("ca-bundle", "kmod-8021q", "nftables"):
        if want not in deps:
            fail(f"depends {deps} lacks {want}")
    # Paths and files, in order; the DATA blocks follow the same order.
    data = [b for k, b in blocks if k == 2]
    expect, files, names = [], {}, []
    for pi, d in enumerate(v.slots(v.field(v.root, 2))[1:], start=1):
        dname = v.text(d, 1) or ""
        names.append(dname)
        for fi, f in enumerate(v.slots(v.field(d, 3))[1:], start=1):
            acl = v.field(f, 2)
            mode, user, group = v.int(v.field(acl, 1)), v.text(acl, 2), v.text(acl, 3)
            size, digest = v.int(v.field(f, 3)), v.blob(v.field(f, 5))
            full = f"{dname}/{v.text(f, 1)}".lstrip("/")
            if fi > 1 and v.text(f, 1).encode() <= prev.encode():
                fail(f"files of {dname!r} not sorted")
            prev = v.text(f, 1)
            files[full] = (mode, user, group, size, digest)
            if size:
                expect.append((pi, fi, full))
    if names != sorted(names, key=str.encode) or names[0] != "":
        fail(f"paths not sorted from the root: {names}")
    if len(data) != len(expect):
        fail(f"{len(data)} DATA blocks for {len(expect)} files")
    contents = {}
    for (pi, fi, full), b in zip(expect, data):
        if struct.unpack_from("<II", b) != (pi, fi):
            fail(f"DATA block for {full} says {struct.unpack_from('<II', b)}")
        body = b[8:]
        if len(body) != files[full][3] or hashlib.sha256(body).digest() != files[full][4]:
            fail(f"{full}: content does not match its size and hash")
        contents[full] = body
    want = {"usr/bin/nnc-agent": 0o755, "etc/init.d/nnc": 0o755, "etc/config/nnc": 0o644,
            "etc/uci-defaults/90-nnc-firewall": 0o644, "lib/apk/packages/nnc-agent.conffiles": 0o644,
            "lib/apk/packages/nnc-agent.list": 0o644}
    got = {k: m for k, (m, *_rest) in files.items()}
    if got != want or any((u, g) != ("root", "root") for _, u, g, _, _ in files.values()):
        fail(f"files {got} {[(u, g) for _, u, g, _, _ in files.values()]}")
    if contents["usr/bin/nnc-agent"] != open(binary, "rb").read():
        fail("the binary inside is not the target's")
    if f"option board '{board}'" not in contents["etc/config/nnc"].decode():
        fail("board option")
    if contents["lib/apk/packages/nnc-agent.conffiles"] != b"/etc/config/nnc\n":
        fail("conffiles")
    scripts = v.field(v.root, 3)
    for i, what in ((3, b"/etc/init.d/nnc start"), (7, b"/etc/init.d/nnc restart"),
                    (4, b"/etc/init.d/nnc stop")):
        if what not in (v.blob(v.field(scripts, i)) or b""):
            fail(f"script {i} lacks {what!r}")
    return name, version, hashlib.sha256(adb).digest()


def check_index(path, key, pkg, name, version, identity):
    blocks = container(path, b"indx")
    if [k for k, _ in blocks] != [0, 1]:
        fail(f"index blocks {[k for k, _ in blocks]}")
    adb, sig = blocks[0][1], blocks[1][1]
    v = Values(adb)
    pkgs = v.slots(v.field(v.root, 2))[1:]
    if len(pkgs) != 1:
        fail(f"{len(pkgs)} packages in the index")
    p = pkgs[0]
    if (v.text(p, 1), v.text(p, 2)) != (name, version):
        fail("index names another package")
    if v.blob(v.field(p, 3)) != identity:
        fail("the index hash is not the SHA-256 of the package's ADB block")
    if v.int(v.field(p, 13)) != os.path.getsize(pkg):
        fail("file-size")
    if os.path.basename(pkg) != f"{name}-{version}.apk":
        fail("the file is not where apk looks (${name}-${version}.apk)")
    # SIG: version 0, SHA-512, key id = SHA-512 of the public point, then a DER signature.
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", key, "-outform", "DER"],
                         check=True, capture_output=True).stdout
    if sig[:2] != b"\0\x04" or sig[2:18] != hashlib.sha512(der[-65:]).digest()[:16]:
        fail("signature header or key id")
    msg = b"indx" + sig[:18] + hashlib.sha512(adb).digest()
    with tempfile.TemporaryDirectory() as d:
        for n, b in (("msg", msg), ("sig", sig[18:]), ("bad", msg[:-1] + bytes([msg[-1] ^ 1]))):
            open(os.path.join(d, n), "wb").write(b)
        verify = ["openssl", "dgst", "-sha512", "-verify", key, "-signature", os.path.join(d, "sig")]
        ok = subprocess.run(verify + [os.path.join(d, "msg")], capture_output=True, text=True)
        if ok.returncode != 0 or "Verified OK" not in ok.stdout:
            fail(f"openssl does not verify the index: {ok.stdout}{ok.stderr}")
        if subprocess.run(verify + [os.path.join(d, "bad")], capture_output=True).returncode == 0:
            fail("openssl verified a changed index")


def main():
    pkg, ndx, key, binary, arch, board = sys.argv[1:7]
    name, version, identity = check_package(pkg, binary, arch, board)
    check_index(ndx, key, pkg, name, version, identity)
    print(f"check_apk: {pkg} and {ndx} ok")


if __name__ == "__main__":
    main()
