"""Runs a command in a pseudo-terminal (so it sees a terminal on stdout) and prints what it
wrote there, byte for byte; exits with its exit code. usage: pty_run.py PROGRAM ARGS..."""
import os
import pty
import subprocess
import sys

leader, follower = pty.openpty()
child = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
os.close(follower)
out = bytearray()
while True:
    try:
        chunk = os.read(leader, 65536)
    except OSError:  # EIO: the child closed its end
        break
    if not chunk:
        break
    out += chunk
sys.stdout.buffer.write(bytes(out))
sys.exit(child.wait())
