#!/usr/bin/env python3
"""Boots a Debian kernel under QEMU (TCG) with an initramfs holding the agent and a guest test
script, and reports what happens as JSON lines on stdout.

usage: run.py --arch {amd64,arm64,mipsel} --agent BIN --script GUEST.sh [--file SRC=DST ...]
              [--modules "m1 m2"] [--timeout SECONDS] [--log FILE]

Events (one JSON object per line):
  {"event": "boot", ...}                   the guest's init started (with seconds since launch)
  {"event": "timing", ...}                 exec->serving time of the agent in the guest
  {"event": "ready", "port": P, "token": T, "n": N}
                                           the guest waits for the host (the N-th time); the
                                           guest's API is on 127.0.0.1:P (hostfwd). Each line
                                           written to stdin answers the next ready, in order.
  {"event": "result", "name": N, "ok": B, "detail": D}
  {"event": "guest_memory", "info": I}    the agent's resident memory (memory_report)
  {"event": "end", "rc": R, "seconds": S, "results": [...]}
The guest's console goes to --log. Every wait is bounded; QEMU is killed on any exit.
"""
import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.environ.get("NNC_CACHE", os.path.expanduser("~/.cache/nnc-agent"))
# Kernel modules the tests need (dependencies are added by mkinitrd.py).
BASE_MODULES = "8021q veth bridge macvlan"

ARCHES = {
    "amd64": {
        "qemu": ["qemu-system-x86_64", "-M", "q35", "-cpu", "max", "-m", "512"],
        "console": "ttyS0",
        "nic": "virtio-net-pci",
        "modules": "virtio_pci virtio_net",
    },
    "arm64": {
        "qemu": ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a53", "-m", "512"],
        "console": "ttyAMA0",
        "nic": "virtio-net-pci",
        "modules": "virtio_pci virtio_net",
    },
    "mipsel": {
        "qemu": ["qemu-system-mipsel", "-M", "malta", "-cpu", "24Kf", "-m", "256"],
        "console": "ttyS0",
        "nic": "pcnet",
        "modules": "pcnet32",
    },
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def emit(obj):
    print(json.dumps(obj), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True, choices=ARCHES)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--script", required=True)
    ap.add_argument("--file", action="append", default=[])
    ap.add_argument("--modules", default="")
    ap.add_argument("--timeout", type=float, default=240)
    ap.add_argument("--log", default=None)
    args = ap.parse_args()
    a = ARCHES[args.arch]
    vmdir = os.path.join(CACHE, "vm", args.arch)
    subprocess.run(["bash", os.path.join(HERE, "fetch.sh"), args.arch], check=True, stdout=sys.stderr)

    work = tempfile.mkdtemp(prefix="nnc-vm-")
    token = secrets.token_hex(32)
    token_file = os.path.join(work, "token")
    with open(token_file, "w") as f:
        f.write(token + "\n")
    initrd = os.path.join(work, "initrd.cpio.gz")
    mods = " ".join([BASE_MODULES, a["modules"], args.modules])
    subprocess.run([sys.executable, os.path.join(HERE, "mkinitrd.py"), initrd, vmdir, args.agent, args.script, mods,
                    f"{token_file}=/etc/nnc/token", *args.file], check=True)
    api_port, ctl_port = free_port(), free_port()
    log_path = args.log or os.path.join(work, "console.log")
    netdev = f"user,id=n0,restrict=off,hostfwd=tcp:127.0.0.1:{api_port}-:8080,hostfwd=tcp:127.0.0.1:{ctl_port}-:9000"
    cmd = a["qemu"] + [
        "-accel", "tcg", "-smp", "1", "-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio",
        "-kernel", os.path.join(vmdir, "kernel"), "-initrd", initrd,
        "-append", f"console={a['console']} panic=-1 quiet loglevel=3 rdinit=/init",
        "-netdev", netdev, "-device", f"{a['nic']},netdev=n0",
    ]
    start = time.monotonic()
    log = open(log_path, "w")
    qemu = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    results = []
    state = {"ready": 0, "done": False}

    def tell_guest(line):
        # Deliver one line to the waiting guest, until it acknowledges (bounded).
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", ctl_port), timeout=5) as s:
                    s.sendall(line.encode() + b"\n")
                    s.shutdown(socket.SHUT_WR)
                    if b"ack" in s.recv(16):
                        return
            except OSError:
                pass
            time.sleep(0.2)

    def host_input():
        for n, line in enumerate(sys.stdin, start=1):
            while state["ready"] < n and not state["done"]:
                time.sleep(0.05)
            if state["done"]:
                return
            tell_guest(line.strip())

    threading.Thread(target=host_input, daemon=True).start()
    killer = threading.Timer(args.timeout, qemu.kill)
    killer.start()
    try:
        for raw in qemu.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            log.write(line + "\n")
            log.flush()
            at = line.find("NNC:")
            if at < 0:
                continue
            kind, _, rest = line[at + 4:].partition(" ")
            t = round(time.monotonic() - start, 2)
            if kind == "BOOT":
                emit({"event": "boot", "seconds": t, "info": rest})
            elif kind == "TIMING":
                emit({"event": "timing", "seconds": t, **json.loads(rest)})
            elif kind == "READY":
                state["ready"] += 1
                emit({"event": "ready", "seconds": t, "port": api_port, "token": token, "n": state["ready"]})
            elif kind == "RESULT":
                r = json.loads(rest)
                results.append(r)
                emit({"event": "result", **r})
            elif kind in ("WARN", "HOST", "END", "INFO", "MEMORY"):
                emit({"event": "guest_" + kind.lower(), "seconds": t, "info": rest})
        rc = qemu.wait()
    finally:
        killer.cancel()
        state["done"] = True
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        log.close()
    emit({"event": "end", "rc": rc, "seconds": round(time.monotonic() - start, 2), "results": results,
          "log": log_path})


if __name__ == "__main__":
    main()
