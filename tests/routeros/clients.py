#!/usr/bin/env python3
"""Proves the RouterOS simulator speaks the API the way third-party clients expect: PyPI
librouteros and routeros-api log in, add, print with a ?name= query, remove, and get a !trap,
on the interface menus and on device routing's (address lists, mangle, NAT, blackhole routes).

usage: clients.py   (starts and stops its own simulator; exit status 0 when all checks pass)
"""
import os
import subprocess
import sys
import tempfile

import librouteros
import routeros_api
from librouteros.query import Key

HERE = os.path.dirname(os.path.abspath(__file__))
failures = []


def check(name, cond, detail=""):
    print(f"{'ok  ' if cond else 'FAIL'} {name} {detail}", flush=True)
    if not cond:
        failures.append(name)


def start_sim(state, *extra):
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "sim.py"), "--state", state, "--password", "secret", *extra],
                         stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline().split()[1])
    return p, port


def with_librouteros(port):
    try:
        librouteros.connect(host="127.0.0.1", port=port, username="admin", password="wrong")
        check("librouteros: wrong password refused", False)
    except librouteros.exceptions.TrapError as e:
        check("librouteros: wrong password refused", "invalid user name or password" in str(e), str(e))
    api = librouteros.connect(host="127.0.0.1", port=port, username="admin", password="secret")
    vlans = api.path("interface", "vlan")
    rid = vlans.add(name="lr-vlan", **{"vlan-id": 42, "interface": "ether1", "comment": "nnc:test"})
    check("librouteros: add returns an .id", isinstance(rid, str) and rid.startswith("*"), rid)
    rows = list(vlans.select(Key(".id"), Key("name"), Key("vlan-id")).where(Key("name") == "lr-vlan"))
    check("librouteros: print with ?name= finds it", len(rows) == 1 and rows[0]["vlan-id"] == 42, str(rows))
    rows = list(vlans.select(Key("name")).where(Key("name") == "nope"))
    check("librouteros: print with a non-matching query", rows == [], str(rows))
    try:
        vlans.add(name="bad", **{"vlan-id": 5000, "interface": "ether1"})
        check("librouteros: vlan-id 5000 trapped", False)
    except librouteros.exceptions.TrapError as e:
        check("librouteros: vlan-id 5000 trapped", "out of range" in str(e), str(e))
    try:
        vlans.add(name="lr-vlan", **{"vlan-id": 43, "interface": "ether1"})
        check("librouteros: duplicate name trapped", False)
    except librouteros.exceptions.TrapError as e:
        check("librouteros: duplicate name trapped", "already have interface" in str(e), str(e))
    try:
        vlans.add(name="x", **{"vlan-id": 44, "interface": "ether9"})
        check("librouteros: unknown interface trapped", False)
    except librouteros.exceptions.TrapError as e:
        check("librouteros: unknown interface trapped", "interface" in str(e), str(e))
    other = vlans.add(name="lr-other", **{"vlan-id": 43, "interface": "ether1"})
    rows = list(vlans.select(Key("name")).where(Key("vlan-id") == 42, Key("interface") == "ether1"))
    check("librouteros: query with two conditions", [r["name"] for r in rows] == ["lr-vlan"], str(rows))
    rows = list(vlans.select(Key("name")).where(Key("name").In("lr-vlan", "lr-other")))
    check("librouteros: query with In (?# or)", sorted(r["name"] for r in rows) == ["lr-other", "lr-vlan"], str(rows))
    vlans.remove(rid, other)
    check("librouteros: remove", list(vlans) == [])
    # Device routing's menus: an address list, a mark-routing mangle rule, a DNS dst-nat.
    api.path("routing", "table").add(name="nnc-lr", fib="")
    lists = api.path("ip", "firewall", "address-list")
    eid = lists.add(list="nnc-lr", address="192.0.2.10", comment="nnc:test")
    rows = list(lists.select(Key("address")).where(Key("list") == "nnc-lr"))
    check("librouteros: address-list entry", rows == [{"address": "192.0.2.10"}], str(rows))
    try:
        lists.add(list="nnc-lr", address="192.0.2.10")
        check("librouteros: duplicate address-list entry trapped", False)
    except librouteros.exceptions.TrapError as e:
        check("librouteros: duplicate address-list entry trapped", "already have" in str(e), str(e))
    mangle = api.path("ip", "firewall", "mangle")
    mid = mangle.add(chain="prerouting", **{"src-address-list": "nnc-lr", "action": "mark-routing",
                                             "new-routing-mark": "nnc-lr", "passthrough": "no"})
    check("librouteros: mark-routing rule", isinstance(mid, str) and mid.startswith("*"), mid)
    try:
        mangle.add(chain="prerouting", action="mark-routing", **{"new-routing-mark": "missing"})
        check("librouteros: mark-routing to an unknown table trapped", False)
    except librouteros.exceptions.TrapError as e:
        check("librouteros: mark-routing to an unknown table trapped", "new-routing-mark" in str(e), str(e))
    nat = api.path("ip", "firewall", "nat")
    try:
        nat.add(chain="dstnat", action="dst-nat", protocol="icmp", **{"dst-port": "53", "to-addresses": "10.99.1.2"})
        check("librouteros: dst-port without tcp/udp trapped", False)
    except librouteros.exceptions.TrapError as e:
        check("librouteros: dst-port without tcp/udp trapped", "dst-port" in str(e), str(e))
    nid = nat.add(chain="dstnat", action="dst-nat", protocol="udp",
                  **{"src-address-list": "nnc-lr", "dst-port": "53", "to-addresses": "10.99.1.2"})
    nat.remove(nid)
    mangle.remove(mid)
    lists.remove(eid)
    check("librouteros: routing menus emptied", list(lists) == [] and list(mangle) == [] and list(nat) == [])
    try:
        vlans.remove(rid)
        check("librouteros: removing twice trapped", False)
    except librouteros.exceptions.TrapError as e:
        check("librouteros: removing twice trapped", "no such item" in str(e), str(e))
    api.close()


def with_routeros_api(port):
    pool = routeros_api.RouterOsApiPool("127.0.0.1", username="admin", password="secret", port=port,
                                        plaintext_login=True)
    api = pool.get_api()
    tables = api.get_resource("/routing/table")
    tables.add(name="nnc-t1", fib="", comment="nnc:test")
    found = tables.get(name="nnc-t1")
    check("routeros-api: add + get(name=...)", len(found) == 1 and found[0]["comment"] == "nnc:test", str(found))
    routes = api.get_resource("/ip/route")
    routes.add(**{"dst-address": "0.0.0.0/0", "gateway": "10.99.1.2", "routing-table": "nnc-t1"})
    check("routeros-api: route in the new table", len(routes.get(**{"routing-table": "nnc-t1"})) == 1)
    try:
        routes.add(**{"dst-address": "0.0.0.0/0", "gateway": "10.99.1.2", "routing-table": "missing"})
        check("routeros-api: unknown routing-table trapped", False)
    except routeros_api.exceptions.RouterOsApiCommunicationError as e:
        check("routeros-api: unknown routing-table trapped", "routing-table" in str(e), str(e))
    try:
        tables.remove(id=found[0]["id"])
        check("routeros-api: table in use refused", False)
    except routeros_api.exceptions.RouterOsApiCommunicationError as e:
        check("routeros-api: table in use refused", "in use" in str(e), str(e))
    routes.add(**{"dst-address": "0.0.0.0/0", "blackhole": "yes", "distance": "250", "routing-table": "nnc-t1"})
    holes = [r for r in routes.get(**{"routing-table": "nnc-t1"}) if r.get("blackhole") == "yes"]
    check("routeros-api: blackhole route of higher distance", len(holes) == 1 and holes[0]["distance"] == "250", str(holes))
    try:
        routes.add(**{"dst-address": "0.0.0.0/0", "blackhole": "yes", "gateway": "10.99.1.2", "routing-table": "nnc-t1"})
        check("routeros-api: blackhole with a gateway trapped", False)
    except routeros_api.exceptions.RouterOsApiCommunicationError as e:
        check("routeros-api: blackhole with a gateway trapped", "blackhole" in str(e), str(e))
    for r in routes.get(**{"routing-table": "nnc-t1"}):
        routes.remove(id=r["id"])
    tables.remove(id=found[0]["id"])
    check("routeros-api: removed", tables.get(name="nnc-t1") == [])
    pool.disconnect()


def main():
    with tempfile.TemporaryDirectory() as d:
        for extra in ([], ["--empty-replies"]):
            sim, port = start_sim(os.path.join(d, "state.json"), *extra)
            try:
                print(f"-- simulator {' '.join(extra) or '(RouterOS < 7.18 replies)'}")
                with_librouteros(port)
                with_routeros_api(port)
            finally:
                sim.kill()
                sim.wait()
    if failures:
        sys.exit(f"{len(failures)} check(s) failed: {failures}")
    print("all client checks passed")


if __name__ == "__main__":
    main()
