#!/usr/bin/env python3
"""A RouterOS v7 API simulator (test-only): the word protocol on TCP (plain, like port 8728, or
TLS, like 8729), login, and the menus the interface factory uses, validated the way RouterOS
validates them. It keeps tables of interfaces, VLANs, addresses, routing tables, routes
(blackhole ones too), firewall address lists, mangle, NAT and filter rules with .ids and comments
(`place-before` puts a rule before another, as in RouterOS's ordered firewall menus), and writes
them to a JSON state file after every command.

usage: sim.py --state FILE [--port N] [--user U --password P] [--tls-cert C --tls-key K]
              [--fail-at K] [--drop-at K] [--empty-replies] [--hostile MODE [--drip-secs S]]
              [--default-firewall] [--connections FILE [--ends-after-print K]]
  --fail-at K      the K-th 'add' command (counting from 1) answers !trap
  --drop-at K      the connection is closed, unanswered, on the K-th 'add' command
  --empty-replies  a print with no match answers !empty (RouterOS >= 7.18) before !done
  --default-firewall  the filter rules of RouterOS's default configuration are there
                   (fasttrack-connection of established,related first, as in defconf)
  --connections F  the connection tracking table (/ip/firewall/connection) starts with the
                   rows in JSON file F (src-address "ip:port", dst-address, protocol, ...)
  --ends-after-print K  the K-th of those rows (from 0) ends right after the table is first
                   printed, as traffic ends connections between a client's print and remove
The test-only command /sim/connection/add (attributes as in --connections) adds a connection,
as traffic would; nothing else is outside RouterOS's API.
  --hostile MODE   a malicious router: every 'add' is answered with 'flood' (!re rows without
                   end), 'drip' (!re rows without end, one byte every --drip-secs, default
                   0.8) or 'huge-word' (a !re holding one 1 MiB word, then !done)
Prints 'listening PORT' once ready. Faithfulness is checked against PyPI librouteros and
routeros-api in tests/routeros/clients.py.
"""
import argparse
import asyncio
import ipaddress
import json
import os
import ssl
import sys

BUILTIN_INTERFACES = ["ether1", "ether2", "ether3", "bridge", "lo"]


class ApiError(Exception):
    def __init__(self, message, category=None):
        super().__init__(message)
        self.message = message
        self.category = category


def encode_length(n):
    if n < 0x80:
        return n.to_bytes(1, "big")
    if n < 0x4000:
        return (n | 0x8000).to_bytes(2, "big")
    if n < 0x200000:
        return (n | 0xC00000).to_bytes(3, "big")
    if n < 0x10000000:
        return (n | 0xE0000000).to_bytes(4, "big")
    return b"\xf0" + n.to_bytes(4, "big")


def encode_sentence(words):
    out = b""
    for w in words:
        b = w.encode()
        out += encode_length(len(b)) + b
    return out + b"\x00"


async def read_length(reader):
    b = (await reader.readexactly(1))[0]
    if b < 0x80:
        return b
    if b < 0xC0:
        return ((b & 0x3F) << 8) | (await reader.readexactly(1))[0]
    if b < 0xE0:
        return ((b & 0x1F) << 16) | int.from_bytes(await reader.readexactly(2), "big")
    if b < 0xF0:
        return ((b & 0x0F) << 24) | int.from_bytes(await reader.readexactly(3), "big")
    if b == 0xF0:
        return int.from_bytes(await reader.readexactly(4), "big")
    raise ApiError(f"control byte {b:#x}")


async def read_sentence(reader):
    words = []
    while True:
        n = await read_length(reader)
        if n == 0:
            return words
        words.append((await reader.readexactly(n)).decode("utf-8", "replace"))


def query_matches(row, queries):
    """RouterOS print queries: each '?' word pushes a truth value ('?name=v' / '?=name=v'
    equal, '?name' present, '?-name' absent, '?<name=v' / '?>name=v' compare); '?#' words
    combine the stack ('|' or, '&' and, '!' not, '.' duplicate). The row matches when every
    value left on the stack is true."""
    stack = []
    for q in queries:
        if q.startswith("#"):
            for op in q[1:]:
                if op == "!":
                    stack.append(not stack.pop())
                elif op == ".":
                    stack.append(stack[-1])
                elif op in "|&":
                    b, a = stack.pop(), stack.pop()
                    stack.append((a or b) if op == "|" else (a and b))
            continue
        if q.startswith("-"):
            stack.append(q[1:] not in row)
        elif q[:1] in "<>":
            k, _, v = q[1:].partition("=")
            have = row.get(k)
            stack.append(have is not None and ((have < v) if q[0] == "<" else (have > v)))
        elif "=" in q.lstrip("="):
            k, _, v = q.lstrip("=").partition("=") if q.startswith("=") else q.partition("=")
            stack.append(row.get(k) == v)
        else:
            stack.append(q in row)
    return all(stack)


class Router:
    """The router's state: one table per menu, rows are dicts with '.id'."""

    def __init__(self, state_file, fail_at, drop_at, default_firewall=False, connections=None, ending=None):
        self.state_file = state_file
        self.fail_at, self.drop_at = fail_at, drop_at
        self.adds = 0
        self.next_id = 1
        self.menus = {"/interface/vlan": [], "/ip/address": [], "/routing/table": [], "/ip/route": [],
                      "/ip/firewall/address-list": [], "/ip/firewall/mangle": [], "/ip/firewall/nat": [],
                      "/ip/firewall/filter": [], "/ip/firewall/connection": []}
        if default_firewall:
            # RouterOS 7's defconf forward chain (its input chain and comments trimmed).
            for rule in [
                {"chain": "forward", "action": "accept", "ipsec-policy": "in,ipsec", "comment": "defconf: accept in ipsec policy"},
                {"chain": "forward", "action": "fasttrack-connection", "connection-state": "established,related",
                 "hw-offload": "yes", "comment": "defconf: fasttrack"},
                {"chain": "forward", "action": "accept", "connection-state": "established,related,untracked",
                 "comment": "defconf: accept established,related, untracked"},
                {"chain": "forward", "action": "drop", "connection-state": "invalid", "comment": "defconf: drop invalid"},
                {"chain": "forward", "action": "drop", "connection-state": "new", "connection-nat-state": "!dstnat",
                 "in-interface-list": "WAN", "comment": "defconf: drop all from WAN not DSTNATed"},
            ]:
                self.menus["/ip/firewall/filter"].append({".id": self.new_id(), "dynamic": "false", **rule})
        # The connection tracking table: read and remove only, as on RouterOS (traffic fills it).
        for c in connections or []:
            self.menus["/ip/firewall/connection"].append({".id": self.new_id(), **c})
        self.ending = None if ending is None else self.menus["/ip/firewall/connection"][ending][".id"]
        self.log = []
        self.save()

    def new_id(self):
        i = f"*{self.next_id:X}"
        self.next_id += 1
        return i

    def interface_names(self):
        return set(BUILTIN_INTERFACES) | {v["name"] for v in self.menus["/interface/vlan"]}

    def save(self):
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"menus": self.menus, "log": self.log}, f, indent=1)
        os.replace(tmp, self.state_file)

    def validate_add(self, menu, a):
        rows = self.menus[menu]
        if menu == "/interface/vlan":
            for k in ("name", "vlan-id", "interface"):
                if k not in a:
                    raise ApiError(f"failure: {k} not set", 1)
            if a["name"] in self.interface_names():
                raise ApiError("failure: already have interface with such name", 1)
            try:
                vid = int(a["vlan-id"])
            except ValueError:
                raise ApiError("value of vlan-id must be a number", 1)
            if not 1 <= vid <= 4094:
                raise ApiError("value of vlan-id out of range (1..4094)", 1)
            if a["interface"] not in self.interface_names():
                raise ApiError("input does not match any value of interface", 1)
            if any(r["interface"] == a["interface"] and r["vlan-id"] == str(vid) for r in rows):
                raise ApiError("failure: already have vlan with such id on that interface", 1)
            a["vlan-id"] = str(vid)
        elif menu == "/ip/address":
            if "address" not in a or "interface" not in a:
                raise ApiError("failure: address and interface must be set", 1)
            try:
                ipaddress.ip_interface(a["address"])
            except ValueError:
                raise ApiError("invalid value for argument address", 1)
            if a["interface"] not in self.interface_names():
                raise ApiError("input does not match any value of interface", 1)
            if any(r["address"] == a["address"] and r["interface"] == a["interface"] for r in rows):
                raise ApiError("failure: already have such address", 1)
        elif menu == "/routing/table":
            if "name" not in a:
                raise ApiError("failure: name not set", 1)
            if any(r["name"] == a["name"] for r in rows) or a["name"] == "main":
                raise ApiError("failure: entry already exists", 1)
        elif menu == "/ip/route":
            blackhole = a.get("blackhole")
            if blackhole not in (None, "yes", "no", "true", "false"):
                raise ApiError("value of blackhole must be yes or no", 1)
            try:
                ipaddress.ip_network(a.get("dst-address", "0.0.0.0/0"))
                if blackhole in ("yes", "true"):
                    if "gateway" in a:
                        raise ApiError("failure: blackhole route cannot have a gateway", 1)
                else:
                    ipaddress.ip_address(a["gateway"])
            except (KeyError, ValueError):
                raise ApiError("invalid value for argument gateway or dst-address", 1)
            if "distance" in a and not (a["distance"].isdigit() and 1 <= int(a["distance"]) <= 255):
                raise ApiError("value of distance out of range (1..255)", 1)
            self.need_table(a.get("routing-table", "main"), "routing-table")
        elif menu == "/ip/firewall/address-list":
            if "list" not in a or "address" not in a:
                raise ApiError("failure: list and address must be set", 1)
            try:
                ipaddress.ip_network(a["address"], strict=False)
            except ValueError:
                raise ApiError("invalid value for argument address", 1)
            if any(r["list"] == a["list"] and r["address"] == a["address"] for r in rows):
                raise ApiError("failure: already have such entry", 1)
        elif menu == "/ip/firewall/filter":
            if a.get("chain") not in ("input", "forward", "output"):
                raise ApiError("input does not match any value of chain", 1)
            if a.get("action", "accept") not in ("accept", "drop", "reject", "fasttrack-connection",
                                                 "passthrough", "log", "jump", "return"):
                raise ApiError("input does not match any value of action", 1)
            states = a.get("connection-state")
            if states is not None and not set(states.lstrip("!").split(",")) <= {
                    "established", "related", "new", "invalid", "untracked"}:
                raise ApiError("input does not match any value of connection-state", 1)
            for k in ("src-address-list", "dst-address-list"):
                if k in a and not a[k]:
                    raise ApiError(f"invalid value for argument {k}", 1)
        if "place-before" in a:
            if menu not in ("/ip/firewall/filter", "/ip/firewall/mangle", "/ip/firewall/nat"):
                raise ApiError("unknown parameter place-before", 0)
            self.find(menu, a["place-before"])
        if menu in ("/ip/firewall/mangle", "/ip/firewall/nat"):
            chains = ("prerouting", "input", "forward", "output", "postrouting") if menu.endswith("mangle") else ("srcnat", "dstnat")
            if a.get("chain") not in chains:
                raise ApiError("input does not match any value of chain", 1)
            action = a.get("action", "accept")
            if a.get("protocol") not in (None, "tcp", "udp", "icmp"):
                raise ApiError("input does not match any value of protocol", 1)
            if "dst-port" in a and a.get("protocol") not in ("tcp", "udp"):
                raise ApiError("failure: dst-port can be set only for tcp or udp", 1)
            if menu.endswith("mangle"):
                if action not in ("accept", "mark-routing", "mark-connection", "mark-packet", "passthrough"):
                    raise ApiError("input does not match any value of action", 1)
                if action == "mark-routing":
                    if "new-routing-mark" not in a:
                        raise ApiError("failure: new-routing-mark not set", 1)
                    if a.get("chain") not in ("prerouting", "output"):
                        raise ApiError("failure: mark-routing only in prerouting or output", 1)
                    self.need_table(a["new-routing-mark"], "new-routing-mark")
            else:
                if action not in ("accept", "dst-nat", "src-nat", "masquerade", "redirect"):
                    raise ApiError("input does not match any value of action", 1)
                if action == "dst-nat":
                    try:
                        ipaddress.ip_address(a["to-addresses"])
                    except (KeyError, ValueError):
                        raise ApiError("invalid value for argument to-addresses", 1)
                    if a.get("chain") != "dstnat":
                        raise ApiError("failure: dst-nat only in dstnat", 1)

    def need_table(self, table, what):
        if table != "main" and not any(r["name"] == table for r in self.menus["/routing/table"]):
            raise ApiError(f"input does not match any value of {what}", 1)

    def find(self, menu, rid):
        for r in self.menus[menu]:
            if r[".id"] == rid:
                return r
        raise ApiError("no such item", 1)

    def in_use(self, menu, row):
        """RouterOS refuses to remove what something else still refers to."""
        if menu == "/interface/vlan":
            if any(a["interface"] == row["name"] for a in self.menus["/ip/address"]):
                return True
        if menu == "/routing/table":
            if any(r.get("routing-table") == row["name"] for r in self.menus["/ip/route"]):
                return True
            if any(r.get("new-routing-mark") == row["name"] for r in self.menus["/ip/firewall/mangle"]):
                return True
        return False


async def hostile(args, reader, writer, tagw):
    """Answers one command the way a malicious router would, until the client hangs up."""
    row = encode_sentence(["!re", "=.id=*1", "=comment=hostile"] + tagw)
    if args.hostile == "huge-word":
        word = "=comment=" + "x" * ((1 << 20) - len("=comment="))
        writer.write(encode_sentence(["!re", word] + tagw) + encode_sentence(["!done", "=ret=*1"] + tagw))
        await writer.drain()
        await reader.read()
        return
    while not writer.is_closing():
        if args.hostile == "flood":
            writer.write(row * 64)
            await writer.drain()
            continue
        for b in row:
            writer.write(bytes([b]))
            await writer.drain()
            await asyncio.sleep(args.drip_secs)


async def handle(router, args, reader, writer):
    logged_in = False
    peer = writer.get_extra_info("peername")
    try:
        while True:
            words = await read_sentence(reader)
            if not words:
                continue
            cmd, rest = words[0], words[1:]
            attrs, queries, tag = {}, [], None
            for w in rest:
                if w.startswith("=") and "=" in w[1:]:
                    k, _, v = w[1:].partition("=")
                    attrs[k] = v
                elif w.startswith("?"):
                    queries.append(w[1:])
                elif w.startswith(".tag="):
                    tag = w[5:]
            tagw = [f".tag={tag}"] if tag is not None else []
            out = []
            try:
                if cmd == "/login":
                    if attrs.get("name") == args.user and attrs.get("password") == args.password:
                        logged_in = True
                        out.append(["!done"])
                    else:
                        raise ApiError("invalid user name or password (6)")
                elif cmd == "/quit":
                    writer.write(encode_sentence(["!fatal", "session terminated on request"]))
                    await writer.drain()
                    return
                elif not logged_in:
                    raise ApiError("not logged in", 1)
                else:
                    menu, _, op = cmd.rpartition("/")
                    if op == "print" and menu in ("/system/identity",):
                        out.append(["!re", "=name=sim-router"])
                        out.append(["!done"])
                    elif op == "print" and menu == "/system/resource":
                        out.append(["!re", "=version=7.16 (stable)", "=board-name=nnc-sim"])
                        out.append(["!done"])
                    elif cmd == "/sim/connection/add":
                        # The test's stand-in for traffic: RouterOS has no such command.
                        router.menus["/ip/firewall/connection"].append({".id": router.new_id(), **attrs})
                        out.append(["!done"])
                    elif menu == "/interface" and op == "print":
                        for n in sorted(router.interface_names()):
                            out.append(["!re", f"=name={n}"])
                        out.append(["!done"])
                    elif menu not in router.menus or op not in ("add", "print", "remove", "set"):
                        raise ApiError("no such command prefix", 0)
                    elif op in ("add", "set") and menu == "/ip/firewall/connection":
                        raise ApiError("no such command", 0)
                    elif op == "add" and args.hostile:
                        router.log.append({"cmd": cmd, "attrs": attrs, "result": "hostile " + args.hostile})
                        router.save()
                        await hostile(args, reader, writer, tagw)
                        return
                    elif op == "add":
                        router.adds += 1
                        if router.drop_at and router.adds == router.drop_at:
                            router.log.append({"cmd": cmd, "attrs": attrs, "result": "dropped"})
                            router.save()
                            writer.close()
                            return
                        if router.fail_at and router.adds == router.fail_at:
                            raise ApiError("failure: simulated failure", 1)
                        router.validate_add(menu, attrs)
                        before = attrs.pop("place-before", None)
                        row = {".id": router.new_id(), **attrs}
                        if menu.startswith("/ip/firewall/"):
                            row["dynamic"] = "false"  # what RouterOS prints for a rule added by hand
                        rows = router.menus[menu]
                        at = rows.index(router.find(menu, before)) if before else len(rows)
                        rows.insert(at, row)
                        out.append(["!done", f"=ret={row['.id']}"])
                    elif op == "print":
                        props = attrs.get(".proplist")
                        matched = 0
                        for r in router.menus[menu]:
                            if query_matches(r, queries):
                                keys = props.split(",") if props else list(r)
                                out.append(["!re"] + [f"={k}={r[k]}" for k in keys if k in r])
                                matched += 1
                        if matched == 0 and args.empty_replies:
                            out.append(["!empty"])
                        out.append(["!done"])
                        if menu == "/ip/firewall/connection" and router.ending is not None:
                            router.menus[menu].remove(router.find(menu, router.ending))
                            router.ending = None
                    elif op == "remove":
                        ids = attrs.get(".id", "").split(",")
                        rows = [router.find(menu, i) for i in ids]
                        for r in rows:
                            if router.in_use(menu, r):
                                raise ApiError("failure: item is in use", 1)
                        for r in rows:
                            router.menus[menu].remove(r)
                        out.append(["!done"])
                    elif op == "set":
                        r = router.find(menu, attrs.get(".id", ""))
                        r.update({k: v for k, v in attrs.items() if k != ".id"})
                        out.append(["!done"])
                    router.log.append({"cmd": cmd, "attrs": attrs, "result": "ok"})
            except ApiError as e:
                trap = ["!trap", f"=message={e.message}"]
                if e.category is not None:
                    trap.insert(1, f"=category={e.category}")
                out = [trap, ["!done"]]
                router.log.append({"cmd": cmd, "attrs": attrs, "result": "trap: " + e.message})
            router.save()
            for s in out:
                writer.write(encode_sentence(s + tagw))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--state", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--user", default="admin")
    ap.add_argument("--password", default="")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--fail-at", type=int, default=0)
    ap.add_argument("--drop-at", type=int, default=0)
    ap.add_argument("--empty-replies", action="store_true")
    ap.add_argument("--hostile", choices=["flood", "drip", "huge-word"])
    ap.add_argument("--drip-secs", type=float, default=0.8)
    ap.add_argument("--default-firewall", action="store_true")
    ap.add_argument("--connections", help="JSON file: rows of /ip/firewall/connection at start")
    ap.add_argument("--ends-after-print", type=int, help="that row ends after the first print")
    args = ap.parse_args()
    conns = None
    if args.connections:
        with open(args.connections) as f:
            conns = json.load(f)
    router = Router(args.state, args.fail_at, args.drop_at, args.default_firewall, conns, args.ends_after_print)
    ctx = None
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
    server = await asyncio.start_server(lambda r, w: handle(router, args, r, w), "127.0.0.1", args.port, ssl=ctx)
    print(f"listening {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
