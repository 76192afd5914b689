#!/usr/bin/env python3
"""Builds a VM initramfs: busybox, kernel modules in dependency order, the agent, /init, the
helpers and a guest test script, plus any extra files.

usage: mkinitrd.py OUT.cpio.gz VMDIR AGENT TEST_SCRIPT "mod1 mod2 ..." [SRC=DST ...]
VMDIR is what fetch.sh produced ($NNC_CACHE/vm/ARCH).
"""
import gzip
import lzma
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def read_module(path):
    """A module's bytes, decompressed."""
    if path.endswith(".xz"):
        with lzma.open(path, "rb") as f:
            return f.read()
    if path.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return f.read()
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-qdc", path], capture_output=True, check=True).stdout
    with open(path, "rb") as f:
        return f.read()


def module_order(moddir, wanted):
    """Modules in load order, each after the modules it depends on. Dependencies come from each
    module's .modinfo 'depends=' string (no depmod needed on the host)."""
    paths = {}
    for dirpath, _, files in os.walk(os.path.join(moddir, "kernel")):
        for fn in files:
            if ".ko" in fn:
                paths[fn.split(".ko")[0].replace("-", "_")] = os.path.join(dirpath, fn)
    order, blobs = [], {}

    def visit(m):
        if m in blobs or m not in paths:
            return  # done already, or built into this kernel
        data = read_module(paths[m])
        blobs[m] = data
        at = data.find(b"depends=")
        deps = data[at + 8:data.index(b"\0", at)].decode().split(",") if at >= 0 else []
        for d in deps:
            if d:
                visit(d.replace("-", "_"))
        order.append(m)

    for m in wanted:
        visit(m.replace("-", "_"))
    return [(m, blobs[m]) for m in order]


def main():
    out, vmdir, agent, script, mods = sys.argv[1:6]
    extras = sys.argv[6:]
    version = open(os.path.join(vmdir, "VERSION")).read().strip()
    moddir = os.path.join(vmdir, "modules", "lib", "modules", version)
    root = tempfile.mkdtemp(prefix="nnc-initrd-")
    # mkdtemp makes 0700; as the guest's / that would lock every unprivileged service out.
    os.chmod(root, 0o755)
    try:
        for d in ("bin", "sbin", "usr/bin", "proc", "sys", "dev", "tmp", "etc/nnc", "lib/modules", "data"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        shutil.copy(os.path.join(vmdir, "busybox"), os.path.join(root, "bin/busybox"))
        shutil.copy(os.path.join(HERE, "init"), os.path.join(root, "init"))
        shutil.copy(os.path.join(HERE, "nnc-vm.sh"), os.path.join(root, "lib/nnc-vm.sh"))
        shutil.copy(script, os.path.join(root, "test.sh"))
        shutil.copy(agent, os.path.join(root, "usr/bin/nnc-agent"))
        os.chmod(os.path.join(root, "init"), 0o755)
        os.chmod(os.path.join(root, "usr/bin/nnc-agent"), 0o755)
        names = []
        for name, data in module_order(moddir, mods.split()):
            with open(os.path.join(root, "lib/modules", name + ".ko"), "wb") as f:
                f.write(data)
            names.append(name)
        with open(os.path.join(root, "lib/modules/order"), "w") as f:
            f.write("\n".join(names) + "\n")
        for spec in extras:
            src, dst = spec.split("=", 1)
            target = os.path.join(root, dst.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy(src, target)
        files = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True, check=True).stdout
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet", "-R", "0:0"], cwd=root,
                              input=files.encode(), capture_output=True, check=True).stdout
        with gzip.open(out, "wb", compresslevel=6) as f:
            f.write(cpio)
        print(f"mkinitrd: {out} ({len(cpio)} bytes cpio; modules: {' '.join(names)})", file=sys.stderr)
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
