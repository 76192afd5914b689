#!/usr/bin/env python3
"""Writes OpenWrt 25.12 apk v3 packages (.apk, ADB schema 'pckg') and a signed packages.adb
index (schema 'indx'), as apk-tools' `apk mkpkg` and `apk mkndx --sign-key` lay them out
(format notes: apk-tools doc/apk-v3.5.scd, src/adb.h, src/apk_adb.h; summarised in
ARCHITECTURE.md, Packaging). Standard library and the `openssl` command only.

usage:
  adb.py package OUT.apk TREE  name=.. version=.. arch=.. description=.. license=..
         origin=.. maintainer=.. url=.. depends="a b" post-install=FILE pre-deinstall=FILE
  adb.py index OUT.adb KEY.pem PKG.apk...
Files in TREE are packed owned by root with their permission bits; mtimes are
$SOURCE_DATE_EPOCH (default 0). Both outputs are deflated ('ADBd'), as OpenWrt's are.
"""
import hashlib
import os
import struct
import subprocess
import sys
import tempfile
import zlib

SCHEMA = {"pckg": b"pckg", "indx": b"indx"}
T_INT, T_INT32, T_INT64 = 0x1, 0x2, 0x3
T_BLOB8, T_BLOB16, T_BLOB32 = 0x8, 0x9, 0xA
T_ARRAY, T_OBJECT = 0xD, 0xE
B_ADB, B_SIG, B_DATA = 0, 1, 2
# pkginfo field numbers (the same object in a package and in the index).
PI = {"name": 1, "version": 2, "hashes": 3, "description": 4, "arch": 5, "license": 6,
      "origin": 7, "maintainer": 8, "url": 9, "build-time": 11, "installed-size": 12,
      "file-size": 13, "depends": 15}
SCRIPTS = {"pre-install": 2, "post-install": 3, "pre-deinstall": 4, "post-deinstall": 5,
           "pre-upgrade": 6, "post-upgrade": 7}


class Adb:
    """The payload of an ADB block: an 8-byte header (root at offset 4), then values, each
    at an offset aligned for its kind; children are written before their parents."""

    def __init__(self):
        self.buf = bytearray(8)

    def raw(self, data, align):
        self.buf += b"\0" * (-len(self.buf) % align)
        off = len(self.buf)
        if off >= 1 << 28:
            raise SystemExit("adb.py: ADB block over 256 MiB")
        self.buf += data
        return off

    def blob(self, b):
        if isinstance(b, str):
            b = b.encode()
        if not b:
            return 0  # NULL: an empty value is an absent one
        if len(b) < 256:
            return T_BLOB8 << 28 | self.raw(bytes([len(b)]) + b, 1)
        if len(b) < 65536:
            return T_BLOB16 << 28 | self.raw(struct.pack("<H", len(b)) + b, 2)
        return T_BLOB32 << 28 | self.raw(struct.pack("<I", len(b)) + b, 4)

    def int(self, v):
        if v < 1 << 28:
            return T_INT << 28 | v
        if v < 1 << 32:
            return T_INT32 << 28 | self.raw(struct.pack("<I", v), 4)
        return T_INT64 << 28 | self.raw(struct.pack("<Q", v), 4)

    def slots(self, values, kind):
        """An object (values[i] is field i+1) or array; trailing NULLs trimmed, none: NULL."""
        values = list(values)
        while values and values[-1] == 0:
            values.pop()
        if not values:
            return 0
        data = struct.pack("<I", len(values) + 1) + b"".join(struct.pack("<I", v) for v in values)
        return kind << 28 | self.raw(data, 4)

    def obj(self, fields):
        """fields: {field number: value}."""
        return self.slots([fields.get(i, 0) for i in range(1, max(fields, default=0) + 1)], T_OBJECT)

    def arr(self, items):
        return self.slots(items, T_ARRAY)

    def finish(self, root):
        self.buf[4:8] = struct.pack("<I", root)
        return bytes(self.buf)


def block(kind, payload):
    raw = 4 + len(payload)
    if raw >= 1 << 30:
        raise SystemExit("adb.py: block over 1 GiB")
    out = struct.pack("<I", kind << 30 | raw) + payload
    return out + b"\0" * (-len(out) % 8)


def deflate(data):
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return b"ADBd" + c.compress(data) + c.flush()


def pkginfo(adb, meta, hashes, file_size=0):
    f = {PI["hashes"]: adb.blob(hashes)}
    for key in ("name", "version", "description", "arch", "license", "origin", "maintainer", "url"):
        f[PI[key]] = adb.blob(meta.get(key, ""))
    if meta.get("installed-size"):
        f[PI["installed-size"]] = adb.int(meta["installed-size"])
    if file_size:
        f[PI["file-size"]] = adb.int(file_size)
    deps = sorted(set(meta.get("depends", "").split()))
    # A bare name: field 1 only (any version).
    f[PI["depends"]] = adb.arr([adb.obj({1: adb.blob(d)}) for d in deps])
    return adb.obj(f)


def package(out, tree, meta, scripts):
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    dirs = {}  # relative dir ("" = root) -> [(name, path)]
    for top, subdirs, files in os.walk(tree):
        rel = os.path.relpath(top, tree)
        rel = "" if rel == "." else rel
        dirs[rel] = [(n, os.path.join(top, n)) for n in files]
        for d in subdirs:
            if os.path.islink(os.path.join(top, d)):
                raise SystemExit(f"adb.py: {d}: symlinked directories are not packed")
    adb = Adb()
    acls = {}

    def acl(mode):
        if mode not in acls:
            acls[mode] = adb.obj({1: adb.int(mode), 2: adb.blob("root"), 3: adb.blob("root")})
        return acls[mode]

    paths, data, installed = [], [], 0
    for pi, rel in enumerate(sorted(dirs, key=lambda d: d.encode()), start=1):
        st = os.stat(os.path.join(tree, rel))
        entries = []
        for fi, (name, path) in enumerate(sorted(dirs[rel], key=lambda e: e[0].encode()), start=1):
            st_f = os.lstat(path)
            if not os.path.isfile(path) or os.path.islink(path):
                raise SystemExit(f"adb.py: {path}: only regular files are packed")
            content = open(path, "rb").read()
            installed += len(content)
            entries.append(adb.obj({1: adb.blob(name), 2: acl(st_f.st_mode & 0o7777),
                                    3: adb.int(len(content)), 4: adb.int(epoch),
                                    5: adb.blob(hashlib.sha256(content).digest())}))
            if content:
                data.append(block(B_DATA, struct.pack("<II", pi, fi) + content))
        paths.append(adb.obj({1: adb.blob(rel), 2: acl(st.st_mode & 0o7777), 3: adb.arr(entries)}))
    meta = dict(meta, **{"installed-size": max(installed, 1)})
    # The package's own id: SHA-256 of the finished block with these 20 bytes zeroed, cut to 20.
    info = pkginfo(adb, meta, b"\0" * 20)
    script_fields = {SCRIPTS[k]: adb.blob(open(v, "rb").read()) for k, v in scripts.items()}
    root = adb.obj({1: info, 2: adb.arr(paths), 3: adb.obj(script_fields)})
    payload = bytearray(adb.finish(root))
    # pkginfo's slot 3 (hashes) points at the BLOB_8: length byte, then the 20 bytes.
    info_off = info & 0x0FFFFFFF
    hashes_val = struct.unpack_from("<I", payload, info_off + 4 * PI["hashes"])[0]
    uid_at = (hashes_val & 0x0FFFFFFF) + 1
    payload[uid_at:uid_at + 20] = hashlib.sha256(payload).digest()[:20]
    payload = bytes(payload)
    blob = b"ADB." + SCHEMA["pckg"] + block(B_ADB, payload) + b"".join(data)
    with open(out, "wb") as f:
        f.write(deflate(blob))


def read_adb_payload(path):
    """The ADB block payload of a .apk this script wrote (deflated or not)."""
    raw = open(path, "rb").read()
    if raw[:4] == b"ADBd":
        raw = zlib.decompressobj(-15).decompress(raw[4:])
    if raw[:4] != b"ADB.":
        raise SystemExit(f"adb.py: {path} is not an ADB file")
    (hdr,) = struct.unpack_from("<I", raw, 8)
    if hdr >> 30 != B_ADB:
        raise SystemExit(f"adb.py: {path}: no ADB block first")
    return raw[12:8 + (hdr & 0x3FFFFFFF)]


def read_meta(payload):
    """The string fields and depends of a package's pkginfo (what the index repeats)."""
    def val(v):
        t, off = v >> 28, v & 0x0FFFFFFF
        if t == T_BLOB8:
            return payload[off + 1:off + 1 + payload[off]]
        if t == T_BLOB16:
            (n,) = struct.unpack_from("<H", payload, off)
            return payload[off + 2:off + 2 + n]
        if t == T_INT:
            return off
        if t == T_INT32:
            return struct.unpack_from("<I", payload, off)[0]
        raise SystemExit(f"adb.py: unexpected value type {t:#x}")

    def slots(v):
        off = v & 0x0FFFFFFF
        (n,) = struct.unpack_from("<I", payload, off)
        return [struct.unpack_from("<I", payload, off + 4 * i)[0] for i in range(n)]

    root = slots(struct.unpack_from("<I", payload, 4)[0])
    info = slots(root[1])
    meta = {}
    for key, i in PI.items():
        if key in ("hashes", "depends", "file-size") or i >= len(info) or info[i] == 0:
            continue
        v = val(info[i])
        meta[key] = v if isinstance(v, int) else v.decode()
    if PI["depends"] < len(info) and info[PI["depends"]]:
        meta["depends"] = " ".join(val(slots(d)[1]).decode() for d in slots(info[PI["depends"]])[1:])
    return meta


def public_point(key):
    """The EC public key as the 65-byte point 04||X||Y (what apk hashes for a key id)."""
    der = subprocess.run(["openssl", "ec", "-in", key, "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    if len(der) != 91 or der[-65] != 4:
        raise SystemExit(f"adb.py: {key} is not an EC P-256 key")
    return der[-65:]


def index(out, key, packages):
    adb = Adb()
    entries = []
    for p in packages:
        payload = read_adb_payload(p)
        meta = read_meta(payload)
        entries.append((meta["name"].encode(), meta["version"],
                        pkginfo(adb, meta, hashlib.sha256(payload).digest(), os.path.getsize(p))))
    pkgs = adb.arr([e[2] for e in sorted(entries, key=lambda e: (e[0], e[1]))])
    payload = adb.finish(adb.obj({2: pkgs}))
    key_id = hashlib.sha512(public_point(key)).digest()[:16]
    # The signature covers the schema, the signature header and the SHA-512 of the block.
    msg = SCHEMA["indx"] + bytes([0, 4]) + key_id + hashlib.sha512(payload).digest()
    with tempfile.NamedTemporaryFile() as m:
        m.write(msg)
        m.flush()
        sig = subprocess.run(["openssl", "dgst", "-sha512", "-sign", key, m.name],
                             check=True, capture_output=True).stdout
    blob = b"ADB." + SCHEMA["indx"] + block(B_ADB, payload) + block(B_SIG, bytes([0, 4]) + key_id + sig)
    with open(out, "wb") as f:
        f.write(deflate(blob))


def main(argv):
    if len(argv) >= 3 and argv[0] == "package":
        meta, scripts = {}, {}
        for a in argv[3:]:
            k, _, v = a.partition("=")
            (scripts if k in SCRIPTS else meta)[k] = v
        package(argv[1], argv[2], meta, scripts)
    elif len(argv) >= 4 and argv[0] == "index":
        index(argv[1], argv[2], argv[3:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
