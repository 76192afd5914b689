#!/usr/bin/env python3
"""Unpacks an OpenWrt .ipk with Python's own ar parser and tarfile (not the tools that wrote
it) and checks its layout: member order, paths, owners, modes, control fields, conffiles,
maintainer scripts; and that the feed index describes it (size, sha256).

usage: check_ipk.py IPK PACKAGES_FILE EXPECTED_ARCH EXPECTED_BOARD
"""
import hashlib
import io
import os
import subprocess
import sys
import tarfile


def fail(msg):
    sys.exit(f"check_ipk: {msg}")


def ar_members(data):
    if not data.startswith(b"!<arch>\n"):
        fail("not an ar archive")
    pos, out = 8, []
    while pos < len(data):
        header = data[pos:pos + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            fail(f"bad ar header at {pos}")
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        out.append((name, data[pos + 60:pos + 60 + size]))
        pos += 60 + size + (size % 2)
    return out


def main():
    ipk, packages, want_arch, want_board = sys.argv[1:5]
    raw = open(ipk, "rb").read()
    members = ar_members(raw)
    names = [n for n, _ in members]
    if names != ["debian-binary", "control.tar.gz", "data.tar.gz"]:
        fail(f"members {names}")
    m = dict(members)
    if m["debian-binary"] != b"2.0\n":
        fail(f"debian-binary {m['debian-binary']!r}")

    data = tarfile.open(fileobj=io.BytesIO(m["data.tar.gz"]), mode="r:gz")
    files = {ti.name.lstrip("./"): ti for ti in data.getmembers() if ti.isfile()}
    want = {"usr/bin/nnc-agent": 0o755, "etc/init.d/nnc": 0o755, "etc/config/nnc": 0o644,
            "etc/uci-defaults/90-nnc-firewall": 0o644}
    if set(files) != set(want):
        fail(f"data files {sorted(files)}")
    for path, mode in want.items():
        ti = files[path]
        if ti.mode & 0o7777 != mode or ti.uid != 0 or ti.gid != 0:
            fail(f"{path}: mode {oct(ti.mode)} uid {ti.uid} gid {ti.gid}")
    for ti in data.getmembers():
        if ti.issym() or ti.islnk() or ti.name.startswith("/") or ".." in ti.name.split("/"):
            fail(f"unexpected entry {ti.name}")
    binary = data.extractfile(files["usr/bin/nnc-agent"]).read()
    if binary[:4] != b"\x7fELF":
        fail("usr/bin/nnc-agent is not ELF")
    init = data.extractfile(files["etc/init.d/nnc"]).read().decode()
    for needle in ("USE_PROCD=1", "procd_set_param respawn", "procd_add_reload_trigger nnc", "/usr/bin/nnc-agent"):
        if needle not in init:
            fail(f"init script lacks {needle}")
    uci = data.extractfile(files["etc/config/nnc"]).read().decode()
    if f"option board '{want_board}'" not in uci:
        fail(f"/etc/config/nnc does not set board '{want_board}'")

    zone = data.extractfile(files["etc/uci-defaults/90-nnc-firewall"]).read()
    for needle in (b"set firewall.nnc=zone", b"firewall.nnc.device='nnc+'", b"commit firewall"):
        if needle not in zone:
            fail(f"the firewall uci-defaults lack {needle!r}")
    # Valid sh (the router's ash runs it): parsed, not run, by dash here.
    if subprocess.run(["sh", "-n"], input=zone).returncode != 0:
        fail("the firewall uci-defaults are not valid sh")

    control = tarfile.open(fileobj=io.BytesIO(m["control.tar.gz"]), mode="r:gz")
    cfiles = {ti.name.lstrip("./"): ti for ti in control.getmembers() if ti.isfile()}
    if set(cfiles) != {"control", "conffiles", "postinst", "prerm"}:
        fail(f"control files {sorted(cfiles)}")
    for script in ("postinst", "prerm"):
        if cfiles[script].mode & 0o111 == 0:
            fail(f"{script} is not executable")
    fields = {}
    for line in control.extractfile(cfiles["control"]).read().decode().splitlines():
        if line and not line.startswith(" "):
            k, _, v = line.partition(": ")
            fields[k] = v
    for k in ("Package", "Version", "Depends", "Architecture", "Installed-Size", "Description", "License", "Section"):
        if not fields.get(k):
            fail(f"control field {k} missing")
    if fields["Package"] != "nnc-agent" or fields["Architecture"] != want_arch:
        fail(f"control {fields}")
    if int(fields["Installed-Size"]) < len(binary):
        fail("Installed-Size smaller than the binary")
    if control.extractfile(cfiles["conffiles"]).read().decode().split() != ["/etc/config/nnc"]:
        fail("conffiles")

    index = open(packages).read().split("\n\n")
    stanza = next((s for s in index if f"Filename: {want_arch}/{os.path.basename(ipk)}" in s), None)
    if stanza is None:
        fail(f"{os.path.basename(ipk)} is not in the feed index")
    entries = dict(l.split(": ", 1) for l in stanza.splitlines() if ": " in l and not l.startswith(" "))
    if int(entries["Size"]) != len(raw) or entries["SHA256sum"] != hashlib.sha256(raw).hexdigest():
        fail("feed index size/sha256 do not match the file")
    if entries["Version"] != fields["Version"] or entries["Architecture"] != want_arch:
        fail("feed index fields differ from the package's control")
    print(f"check_ipk: {os.path.basename(ipk)} ok ({fields['Architecture']}, {len(raw)} bytes)")


if __name__ == "__main__":
    main()
