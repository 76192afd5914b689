#!/usr/bin/env python3
"""The demo's local feed: serves one directory on 127.0.0.1 at a limited rate (default
8 MiB/s, so an install's progress can be watched), with Range support off (the agent copes).
Prints "listening PORT" once ready. Python standard library only."""
import http.server, os, sys, time

root, rate = sys.argv[1], int(os.environ.get("NNC_DEMO_RATE", str(8 << 20)))


class Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **k):
        super().__init__(*a, directory=root, **k)

    def copyfile(self, src, dst):
        start, sent = time.monotonic(), 0
        while chunk := src.read(64 << 10):
            dst.write(chunk)
            sent += len(chunk)
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)

    def log_message(self, fmt, *args):
        sys.stderr.write("feed: " + fmt % args + "\n")


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print("listening", server.server_address[1], flush=True)
server.serve_forever()
