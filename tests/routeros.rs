//! The RouterOS backend against a protocol-faithful simulator (tests/routeros/sim.py, itself
//! checked against the third-party clients librouteros and routeros-api): the seed's four
//! objects and device routing's four on install, routed devices as address-list entries, nothing left after a failure at any step, a dropped connection, or a
//! kill -9 mid-sequence; unreachable routers refused; TLS with a pinned certificate; a
//! malicious router (endless rows, a dripped reply or TLS handshake, a 1 MiB word) cut off in
//! bounded time and memory while the API keeps answering; a warning for plain-text logins.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::feed::Feed;
use common::{Agent, sha256_file};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);
const MENUS: [&str; 8] = [
    "/interface/vlan",
    "/ip/address",
    "/routing/table",
    "/ip/route",
    "/ip/firewall/mangle",
    "/ip/firewall/nat",
    "/ip/firewall/filter",
    "/ip/firewall/address-list",
];

struct Sim {
    port: u16,
    state: PathBuf,
    child: Child,
}

impl Sim {
    fn start(dir: &Path, args: &[&str]) -> Sim {
        let state = dir.join(format!("sim-{}.json", common::free_port()));
        let (child, port) = common::spawn_listening(
            Command::new("python3")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/routeros/sim.py"))
                .arg("--state")
                .arg(&state)
                .args(["--password", "secret"])
                .args(args),
        );
        Sim { port, state, child }
    }

    fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(&self.state).unwrap()).unwrap()
    }

    /// All objects but the default configuration's (`--default-firewall`), menu by menu.
    fn objects(&self) -> Vec<(String, Value)> {
        let st = self.state();
        MENUS
            .iter()
            .flat_map(|m| {
                st["menus"][m]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|o| {
                        !o["comment"]
                            .as_str()
                            .is_some_and(|c| c.starts_with("defconf") || c.starts_with("owner"))
                    })
                    .map(|o| ((*m).to_owned(), o.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The two filter rules right before the first `fasttrack-connection` one are the
    /// instance's (tagged `tag`) accepts.
    fn assert_accepts_before_fasttrack(&self, tag: &str) {
        let order = self.order("/ip/firewall/filter");
        let at = order
            .iter()
            .position(|(_, action)| action == "fasttrack-connection")
            .unwrap();
        let accept = (tag.to_owned(), "accept".to_owned());
        assert_eq!(
            order[at.saturating_sub(2)..at],
            [accept.clone(), accept],
            "{order:?}"
        );
    }

    /// The rules of a firewall menu in their order: (comment, action).
    fn order(&self, menu: &str) -> Vec<(String, String)> {
        self.state()["menus"][menu]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                (
                    o["comment"].as_str().unwrap_or_default().to_owned(),
                    o["action"].as_str().unwrap_or("accept").to_owned(),
                )
            })
            .collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs Python `code` with `api`, a PyPI librouteros connection to the simulator on `port`
/// (a third-party client, as the router's owner would use); whether it succeeded.
fn librouteros(port: u16, code: &str) -> bool {
    Command::new(common::python())
        .arg("-c")
        .arg(format!("import librouteros; api = librouteros.connect(host='127.0.0.1', port={port}, username='admin', password='secret')\n{code}"))
        .status()
        .unwrap()
        .success()
}

struct Setup {
    feed: Feed,
    password: PathBuf,
}

fn setup(tag: &str) -> Setup {
    let feed = Feed::tool(tag, None);
    let password = feed.path().join("router.password");
    std::fs::write(&password, "secret\n").unwrap();
    Setup { feed, password }
}

impl Setup {
    fn router_toml(&self, port: u16, extra: &str) -> String {
        format!(
            "[[routers]]\nid = \"mt\"\nkind = \"routeros\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"admin\"\npassword_file = {:?}\nparent_interface = \"bridge\"\ntimeout_secs = 3\n{extra}\n",
            self.password.display().to_string()
        )
    }

    fn agent(&self, dir: &str, port: u16, extra: &str, failpoints: &str) -> Agent {
        self.feed
            .agent(dir, &self.router_toml(port, extra), None, failpoints)
    }
}

fn assert_ten_objects(sim: &Sim, id: &str, name: &str, vlan: u16) {
    let objects = sim.objects();
    assert_eq!(objects.len(), 10, "{objects:?}");
    let tag = format!("nnc:{id}");
    let alias = format!("nnc-tool-{name}");
    let get = |menu: &str| {
        objects
            .iter()
            .find(|(m, _)| m == menu)
            .map(|(_, o)| o.clone())
            .unwrap()
    };
    let v = get("/interface/vlan");
    assert_eq!(
        (
            v["name"].as_str(),
            v["vlan-id"].as_str(),
            v["interface"].as_str()
        ),
        (
            Some(alias.as_str()),
            Some(vlan.to_string().as_str()),
            Some("bridge")
        )
    );
    let a = get("/ip/address");
    assert_eq!(a["address"], format!("10.99.{vlan}.1/24"));
    assert_eq!(a["interface"], alias.as_str());
    let t = get("/routing/table");
    assert_eq!(t["name"], alias.as_str());
    assert_eq!(t["fib"], "");
    let r = get("/ip/route");
    assert_eq!(
        (r["dst-address"].as_str(), r["routing-table"].as_str()),
        (Some("0.0.0.0/0"), Some(alias.as_str()))
    );
    assert_eq!(r["gateway"], format!("10.99.{vlan}.2"));
    // Device routing's fail-closed half: a blackhole behind the service's route, the mark
    // for the instance's address list, its DNS to the service.
    let all = |menu: &str| -> Vec<Value> {
        objects
            .iter()
            .filter(|(m, _)| m == menu)
            .map(|(_, o)| o.clone())
            .collect()
    };
    let hole = all("/ip/route")
        .into_iter()
        .find(|r| r["blackhole"] == "yes")
        .unwrap();
    assert_eq!(
        (
            hole["distance"].as_str(),
            hole["routing-table"].as_str(),
            hole.get("gateway")
        ),
        (Some("250"), Some(alias.as_str()), None)
    );
    let m = get("/ip/firewall/mangle");
    assert_eq!(
        (
            m["chain"].as_str(),
            m["src-address-list"].as_str(),
            m["action"].as_str(),
            m["new-routing-mark"].as_str(),
            m["passthrough"].as_str()
        ),
        (
            Some("prerouting"),
            Some(alias.as_str()),
            Some("mark-routing"),
            Some(alias.as_str()),
            Some("no")
        )
    );
    let mut nat: Vec<(String, String)> = all("/ip/firewall/nat")
        .iter()
        .map(|n| {
            assert_eq!(
                (
                    n["chain"].as_str(),
                    n["src-address-list"].as_str(),
                    n["dst-port"].as_str(),
                    n["action"].as_str()
                ),
                (
                    Some("dstnat"),
                    Some(alias.as_str()),
                    Some("53"),
                    Some("dst-nat")
                )
            );
            assert_eq!(
                n["to-ports"], "9053",
                "the DNS inbound every generator adds"
            );
            (
                n["protocol"].as_str().unwrap().to_owned(),
                n["to-addresses"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    nat.sort();
    let service = format!("10.99.{vlan}.2");
    assert_eq!(
        nat,
        [
            ("tcp".to_owned(), service.clone()),
            ("udp".to_owned(), service)
        ]
    );
    // Established connections from and to a routed device, kept off FastTrack (which would
    // skip the routing mark).
    let mut accepts: Vec<String> = all("/ip/firewall/filter")
        .iter()
        .map(|f| {
            assert_eq!(
                (
                    f["chain"].as_str(),
                    f["connection-state"].as_str(),
                    f["action"].as_str()
                ),
                (Some("forward"), Some("established,related"), Some("accept"))
            );
            let side = ["src-address-list", "dst-address-list"]
                .into_iter()
                .find(|k| f[*k] == alias.as_str())
                .unwrap_or_else(|| panic!("{f}"));
            side.to_owned()
        })
        .collect();
    accepts.sort();
    assert_eq!(accepts, ["dst-address-list", "src-address-list"]);
    for (menu, o) in &objects {
        assert_eq!(o["comment"], tag.as_str(), "{menu} is not tagged");
    }
}

#[test]
fn routed_devices_are_address_list_entries_moved_without_a_gap_and_removed_in_reverse() {
    let s = setup("rosroute");
    // The router's connection tracking table: connections the LAN devices had before.
    let conns = s.feed.path().join("connections.json");
    let conn = |src: &str, dst: &str, proto: &str| json!({ "src-address": src, "dst-address": dst, "protocol": proto, "fasttrack": "true" });
    std::fs::write(
        &conns,
        json!([
            conn("192.0.2.10:40000", "198.51.100.2:443", "tcp"),
            conn("192.0.2.200:40001", "198.51.100.2:80", "tcp"),
            conn("192.0.2.130", "198.51.100.2", "icmp"),
            conn("192.0.2.10:40002", "192.0.2.1:53", "udp"),
            conn("192.0.2.10:40003", "192.0.2.1:8291", "tcp"),
            conn("192.0.2.20:40004", "198.51.100.2:443", "tcp"),
        ])
        .as_array()
        .unwrap()
        .iter()
        .cloned()
        // A busy router: more connections than any reply the agent keeps may hold (10,000
        // rows); the table is filtered as it streams.
        .chain((0..12_000).map(|i| {
            conn(
                &format!("203.0.113.{}:{}", i % 200, 1024 + i),
                "192.0.2.1:443",
                "tcp",
            )
        }))
        .collect::<Value>()
        .to_string(),
    )
    .unwrap();
    // The second ends between the agent's print and its remove: RouterOS then removes none
    // of the ids it is given, so the agent removes the others one by one.
    let sim = Sim::start(
        s.feed.path(),
        &[
            "--connections",
            conns.to_str().unwrap(),
            "--ends-after-print",
            "1",
        ],
    );
    // The router's own LAN address, added with librouteros.
    let added = librouteros(
        sim.port,
        "tuple(api.path('ip','address')('add', address='192.0.2.1/24', interface='bridge', comment='owner: lan'))",
    );
    assert!(added);
    let connections = || -> Vec<String> {
        let all = sim.state()["menus"]["/ip/firewall/connection"].clone();
        let all = all.as_array().unwrap();
        let busy = |c: &&Value| c["src-address"].as_str().unwrap().starts_with("203.0.113.");
        assert_eq!(all.iter().filter(busy).count(), 12_000);
        all.iter()
            .filter(|c| !busy(c))
            .map(|c| {
                format!(
                    "{} {}",
                    c["src-address"].as_str().unwrap(),
                    c["dst-address"].as_str().unwrap()
                )
            })
            .collect()
    };
    let agent = s.agent("agent", sim.port, "", "");
    let x = agent.install_on("tool", "mt", "x");
    let y = agent.install_on("tool", "mt", "y");
    for id in [&x, &y] {
        assert_eq!(agent.wait_done(id, TIMEOUT)["status"], "INSTALLED");
    }
    let route = |id: &str, d: &[&str]| {
        agent.gql(
            "mutation($i: ID!, $d: [String!]!) { routeDevices(instanceId: $i, devices: $d) { device instanceId } }",
            json!({ "i": id, "d": d }),
        )
    };
    let entries = || -> Vec<(String, String, String)> {
        let mut v: Vec<_> = sim.state()["menus"]["/ip/firewall/address-list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["list"].as_str().unwrap().to_owned(),
                    e["address"].as_str().unwrap().to_owned(),
                    e["comment"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let r = route(&x, &["192.0.2.10", "192.0.2.128/25"]);
    assert!(r.get("errors").is_none(), "{r}\n{}", agent.log());
    // Their connections from before are removed (a FastTracked one would go on leaving
    // directly), DNS to the router included; the one to the router itself and other
    // devices' stay.
    assert_eq!(
        connections(),
        [
            "192.0.2.10:40003 192.0.2.1:8291",
            "192.0.2.20:40004 198.51.100.2:443"
        ],
        "{}",
        agent.log()
    );
    assert!(
        agent.log().contains("removed 3 connection(s)"),
        "{}",
        agent.log()
    );
    let tx = format!("nnc:{x}");
    assert_eq!(
        entries(),
        [
            ("nnc-tool-x".to_owned(), "192.0.2.10".to_owned(), tx.clone()),
            (
                "nnc-tool-x".to_owned(),
                "192.0.2.128/25".to_owned(),
                tx.clone()
            ),
        ]
    );
    let code = |r: &Value| {
        r["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(
        code(&route(&x, &["02:00:5e:10:00:0a"])),
        "ROUTING_UNSUPPORTED"
    );
    assert_eq!(code(&route(&x, &["bogus"])), "INVALID_DEVICE");

    // Moved: added to Y's list before it leaves X's (RouterOS has no transactions).
    let before = sim.state()["log"].as_array().unwrap().len();
    route(&y, &["192.0.2.10"]);
    let ty = format!("nnc:{y}");
    assert_eq!(
        entries(),
        [
            (
                "nnc-tool-x".to_owned(),
                "192.0.2.128/25".to_owned(),
                tx.clone()
            ),
            ("nnc-tool-y".to_owned(), "192.0.2.10".to_owned(), ty.clone()),
        ]
    );
    let ops: Vec<String> = sim.state()["log"].as_array().unwrap()[before..]
        .iter()
        .filter(|e| {
            e["cmd"]
                .as_str()
                .unwrap()
                .starts_with("/ip/firewall/address-list/")
                && !e["cmd"].as_str().unwrap().ends_with("print")
        })
        .map(|e| e["cmd"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ops,
        [
            "/ip/firewall/address-list/add",
            "/ip/firewall/address-list/remove"
        ]
    );

    // Unroute removes exactly that entry; uninstall the rest, then every object.
    let un = agent.data(
        "mutation { unrouteDevices(devices: [\"192.0.2.128/25\"]) }",
        json!({}),
    );
    assert_eq!(un["unrouteDevices"], json!(["192.0.2.128/25"]));
    assert_eq!(
        entries(),
        [("nnc-tool-y".to_owned(), "192.0.2.10".to_owned(), ty)]
    );
    agent.uninstall(&y);
    assert_eq!(entries(), vec![]);
    assert_eq!(
        agent.data("{ deviceRoutes { device } }", json!({}))["deviceRoutes"],
        json!([])
    );
    agent.uninstall(&x);
    assert_eq!(sim.objects(), vec![], "uninstall left objects behind");
}

#[test]
fn third_party_clients_agree_with_the_simulator() {
    let out = Command::new(common::python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/routeros/clients.py"))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("all client checks passed"), "{text}");
}

#[test]
fn install_makes_exactly_the_four_objects_and_uninstall_removes_them() {
    let s = setup("ros");
    // RouterOS's default firewall, FastTrack included.
    let sim = Sim::start(s.feed.path(), &["--default-firewall"]);
    let defconf = sim.order("/ip/firewall/filter");
    // And rules of the owner's own, in mangle prerouting and dstnat, added with librouteros.
    let added = librouteros(
        sim.port,
        "tuple(api.path('ip','firewall','mangle')('add', chain='prerouting', action='accept', comment='owner: mangle'))\n\
             tuple(api.path('ip','firewall','nat')('add', chain='dstnat', protocol='tcp', **{'dst-port': '8080', 'action': 'dst-nat', 'to-addresses': '192.0.2.7', 'comment': 'owner: forward'}))",
    );
    assert!(added);
    let agent = s.agent("agent", sim.port, "", "");
    let routers = agent.data("{ routers { id kind reachable error } }", json!({}));
    assert_eq!(
        routers["routers"],
        json!([
            { "id": "local", "kind": "linux", "reachable": true, "error": null },
            { "id": "mt", "kind": "routeros", "reachable": true, "error": null },
        ])
    );
    let a = agent.install_on("tool", "mt", "a");
    let ia = agent.wait_done(&a, TIMEOUT);
    assert_eq!(ia["status"], "INSTALLED", "{ia}\n{}", agent.log());
    assert_eq!(ia["routerId"], "mt");
    assert_eq!(ia["interface"]["status"], "ACTIVE");
    assert_eq!(ia["interface"]["name"], "nnc-tool-a");
    assert_eq!(ia["interface"]["address"], "10.99.100.1/24");
    assert_ten_objects(&sim, &a, "a", 100);
    // Its two accepts right before the default configuration's fasttrack rule, the rest as
    // the owner had it.
    let tag = format!("nnc:{a}");
    sim.assert_accepts_before_fasttrack(&tag);
    assert_eq!(
        sim.order("/ip/firewall/filter")
            .into_iter()
            .filter(|(c, _)| *c != tag)
            .collect::<Vec<_>>(),
        defconf
    );
    // The mark and the DNS redirects before the owner's rules of their chains.
    let comments =
        |menu: &str| -> Vec<String> { sim.order(menu).into_iter().map(|(c, _)| c).collect() };
    assert_eq!(
        comments("/ip/firewall/mangle"),
        [tag.as_str(), "owner: mangle"]
    );
    assert_eq!(
        comments("/ip/firewall/nat"),
        [tag.as_str(), tag.as_str(), "owner: forward"]
    );
    let listed = agent.data("{ interfaces { instanceId routerId vlanId } }", json!({}));
    assert_eq!(
        listed["interfaces"],
        json!([{ "instanceId": a, "routerId": "mt", "vlanId": 100 }])
    );

    let b = agent.install_on("tool", "mt", "b");
    assert_eq!(agent.wait_done(&b, TIMEOUT)["interface"]["vlanId"], 101);
    assert_eq!(sim.objects().len(), 20);
    agent.uninstall(&a);
    agent.uninstall(&b);
    assert_eq!(sim.objects(), vec![], "uninstall left objects behind");
    assert_eq!(
        sim.order("/ip/firewall/filter"),
        defconf,
        "the owner's rules as they were"
    );
    // Removal order: routes before tables, addresses before VLANs (RouterOS refuses otherwise).
    let log: Vec<String> = sim.state()["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["cmd"].as_str().unwrap(),
                e["result"].as_str().unwrap()
            )
        })
        .collect();
    assert!(log.iter().all(|l| !l.contains("trap")), "{log:?}");
}

#[test]
fn a_failure_or_a_dropped_connection_at_any_step_leaves_nothing() {
    let s = setup("rosfail");
    for step in 1..=10 {
        for how in ["--fail-at", "--drop-at"] {
            let sim = Sim::start(s.feed.path(), &[how, &step.to_string()]);
            let agent = s.agent(&format!("agent{how}{step}"), sim.port, "", "");
            let id = agent.install_on("tool", "mt", "x");
            let inst = agent.wait_done(&id, TIMEOUT);
            let ctx = format!("{how} {step}: {inst}\n{}", agent.log());
            assert_eq!(inst["status"], "FAILED", "{ctx}");
            assert_eq!(inst["failedStep"], "provisioning", "{ctx}");
            assert!(inst["interface"].is_null(), "{ctx}");
            assert_eq!(sim.objects(), vec![], "{ctx}");
            let undone = sim.state()["log"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["cmd"].as_str().unwrap().ends_with("/remove"))
                .count();
            assert_eq!(
                undone,
                step - 1,
                "{how} {step}: each done step removed by its .id"
            );
            if how == "--fail-at" {
                assert!(
                    inst["error"]
                        .as_str()
                        .unwrap()
                        .contains("simulated failure"),
                    "{ctx}"
                );
            }
        }
    }
}

#[test]
fn an_unreachable_router_is_refused_before_anything_is_created() {
    let s = setup("rosdown");
    let port = common::free_port();
    let agent = s.agent("agent", port, "", "");
    let code = agent.error_code(
        "mutation { installFeature(featureId: \"tool\", routerId: \"mt\", name: \"x\") { instanceId } }",
        json!({}),
    );
    assert_eq!(code, "UNREACHABLE_ROUTER");
    assert_eq!(
        agent.data("{ instances { id } }", json!({}))["instances"],
        json!([])
    );
    let routers = agent.data("{ routers { id reachable error } }", json!({}));
    let mt = &routers["routers"][1];
    assert_eq!(mt["reachable"], false, "{routers}");
    assert!(
        mt["error"]
            .as_str()
            .unwrap()
            .contains(&format!("127.0.0.1:{port}")),
        "{routers}"
    );
    // A wrong password is unreachable too, and says so.
    let sim = Sim::start(s.feed.path(), &[]);
    std::fs::write(&s.password, "wrong\n").unwrap();
    let agent = s.agent("agent2", sim.port, "", "");
    let v = agent.gql("mutation { installFeature(featureId: \"tool\", routerId: \"mt\", name: \"x\") { instanceId } }", json!({}));
    assert_eq!(v["errors"][0]["extensions"]["code"], "UNREACHABLE_ROUTER");
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("invalid user name or password"),
        "{v}"
    );
}

#[test]
fn kill_9_mid_sequence_and_orphans_are_repaired_at_start() {
    let s = setup("roskill");
    let sim = Sim::start(s.feed.path(), &[]);
    // Objects tagged for an instance this agent never had: removed at start.
    let orphan = librouteros(
        sim.port,
        "api.path('interface','vlan').add(name='stale', **{'vlan-id': 150, 'interface': 'bridge', 'comment': 'nnc:0123456789abcdef'})",
    );
    assert!(orphan);
    let mut agent = s.agent("agent", sim.port, "", "vif.create.3=abort");
    common::wait_until("orphan removed", TIMEOUT, || sim.objects().is_empty());
    assert!(
        agent
            .log()
            .contains("removing objects tagged nnc:0123456789abcdef"),
        "{}",
        agent.log()
    );

    let id = agent.install_on("tool", "mt", "k");
    assert!(agent.wait_exit(TIMEOUT), "abort failpoint did not fire");
    assert_eq!(
        sim.objects().len(),
        2,
        "steps 1 and 2 were done before the kill"
    );
    agent.restart_with(&[]);
    let inst = agent.wait_done(&id, TIMEOUT);
    assert_eq!(inst["status"], "INSTALLED", "{inst}\n{}", agent.log());
    assert_ten_objects(&sim, &id, "k", 100);
}

#[test]
fn tls_with_a_pinned_certificate_and_routeros_7_18_empty_replies() {
    let s = setup("rostls");
    let (cert, key, fingerprint) = router_certificate(s.feed.path());
    let sim = Sim::start(
        s.feed.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--empty-replies",
        ],
    );
    let agent = s.agent(
        "agent",
        sim.port,
        &format!("tls_fingerprint = \"{fingerprint}\""),
        "",
    );
    assert!(!agent.log().contains("in plain text"), "{}", agent.log());
    let routers = agent.data("{ routers { id tls } }", json!({}));
    assert_eq!(routers["routers"][1], json!({ "id": "mt", "tls": true }));
    let id = agent.install_on("tool", "mt", "t");
    assert_eq!(
        agent.wait_done(&id, TIMEOUT)["status"],
        "INSTALLED",
        "{}",
        agent.log()
    );
    assert_ten_objects(&sim, &id, "t", 100);
    agent.uninstall(&id);
    assert_eq!(sim.objects(), vec![]);

    let wrong = "00".repeat(32);
    let agent = s.agent(
        "agent2",
        sim.port,
        &format!("tls_fingerprint = \"{wrong}\""),
        "",
    );
    let v = agent.gql("mutation { installFeature(featureId: \"tool\", routerId: \"mt\", name: \"w\") { instanceId } }", json!({}));
    assert_eq!(
        v["errors"][0]["extensions"]["code"], "UNREACHABLE_ROUTER",
        "{v}"
    );
    assert!(
        v["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("is not the pinned"),
        "{v}"
    );
}

#[test]
fn an_active_interface_whose_objects_vanished_is_recreated_at_start() {
    let s = setup("rosgone");
    let sim = Sim::start(s.feed.path(), &[]);
    let mut agent = s.agent("agent", sim.port, "", "");
    let id = agent.install_on("tool", "mt", "g");
    assert_eq!(agent.wait_done(&id, TIMEOUT)["status"], "INSTALLED");
    agent.kill9();
    // Someone removed the route on the router.
    let removed = librouteros(
        sim.port,
        "r = api.path('ip','route'); r.remove(*[x['.id'] for x in r])",
    );
    assert!(removed);
    assert_eq!(sim.objects().len(), 8);
    agent.restart();
    common::wait_until("objects recreated", TIMEOUT, || sim.objects().len() == 10);
    assert!(
        agent.log().contains("vanished; recreating"),
        "{}",
        agent.log()
    );
    assert_ten_objects(&sim, &id, "g", 100);
}

#[test]
fn a_segment_without_its_fasttrack_accepts_gets_them_at_start_and_keeps_the_rest() {
    let s = setup("rosmend");
    let sim = Sim::start(s.feed.path(), &["--default-firewall"]);
    let mut agent = s.agent("agent", sim.port, "", "");
    let id = agent.install_on("tool", "mt", "m");
    assert_eq!(agent.wait_done(&id, TIMEOUT)["status"], "INSTALLED");
    let r = agent.gql(
        "mutation($i: ID!) { routeDevices(instanceId: $i, devices: [\"192.0.2.10\", \"192.0.2.11\"]) { device } }",
        json!({ "i": id }),
    );
    assert!(r.get("errors").is_none(), "{r}");
    agent.kill9();
    // As a segment made before the accepts existed, or one its owner edited: one accept
    // removed, the other and one device's address-list entry disabled. Meanwhile the other
    // device (whose entry stays, so only the accepts' repair can end it) opened a connection,
    // which FastTrack took.
    let tag = format!("nnc:{id}");
    let edited = librouteros(
        sim.port,
        &format!(
            "f = api.path('ip','firewall','filter'); ours = [x['.id'] for x in f if x.get('comment') == '{tag}']\n\
             f.remove(ours[0]); f.update(**{{'.id': ours[1], 'disabled': True}})\n\
             l = api.path('ip','firewall','address-list'); l.update(**{{'.id': [x['.id'] for x in l if x.get('address') == '192.0.2.11'][0], 'disabled': True}})\n\
             tuple(api('/sim/connection/add', **{{'src-address': '192.0.2.10:40000', 'dst-address': '198.51.100.2:443', 'protocol': 'tcp', 'fasttrack': 'true'}}))"
        ),
    );
    assert!(edited);
    let rows = |menu: &str| -> Vec<(String, bool)> {
        sim.state()["menus"][menu]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["comment"] == tag.as_str())
            .map(|o| {
                let off = matches!(o["disabled"].as_str(), Some("true" | "yes"));
                (o[".id"].as_str().unwrap().to_owned(), off)
            })
            .collect()
    };
    let enabled = |menu: &str| rows(menu).iter().filter(|(_, off)| !off).count();
    assert_eq!(
        (
            rows("/ip/firewall/filter").len(),
            enabled("/ip/firewall/filter")
        ),
        (1, 0)
    );
    assert_eq!(enabled("/ip/firewall/address-list"), 1);
    let ids = |menu: &str| -> Vec<String> { rows(menu).into_iter().map(|(i, _)| i).collect() };
    let kept: Vec<Vec<String>> = MENUS[..6].iter().map(|m| ids(m)).collect();
    agent.restart();
    common::wait_until("the accepts back", TIMEOUT, || {
        enabled("/ip/firewall/filter") == 2 && enabled("/ip/firewall/address-list") == 2
    });
    assert_eq!(
        rows("/ip/firewall/filter").len(),
        2,
        "the disabled one enabled, not doubled"
    );
    // The ten objects and the devices' entries.
    assert_eq!(sim.objects().len(), 12, "{:?}", sim.objects());
    assert_eq!(
        MENUS[..6].iter().map(|m| ids(m)).collect::<Vec<_>>(),
        kept,
        "nothing else was made again"
    );
    sim.assert_accepts_before_fasttrack(&tag);
    assert!(
        agent.log().contains("put back 2 rule(s)"),
        "{}",
        agent.log()
    );
    // The connection FastTrack took while they were missing is gone.
    common::wait_until("the connection removed", TIMEOUT, || {
        sim.state()["menus"]["/ip/firewall/connection"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    agent.uninstall(&id);
    assert_eq!(sim.objects(), vec![]);
}

/// Polls the agent's `/health` every 200 ms on a thread of its own until dropped; each answer
/// must come within a second.
struct HealthWatch {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(u32, Vec<String>)>>,
}

impl HealthWatch {
    fn start(agent: &Agent) -> HealthWatch {
        let port = agent.port;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut answered, mut failures) = (0, Vec::new());
            while !flag.load(Ordering::SeqCst) {
                let asked = Instant::now();
                let reply = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_secs(1)))?;
                    s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                    let mut text = String::new();
                    s.read_to_string(&mut text)?;
                    Ok(text)
                });
                match reply {
                    Ok(text) if text.starts_with("HTTP/1.1 200") => answered += 1,
                    other => failures.push(format!("after {:?}: {other:?}", asked.elapsed())),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (answered, failures)
        });
        HealthWatch {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops polling; asserts every poll was answered in time.
    fn finish(mut self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        let (answered, failures) = self.thread.take().unwrap().join().unwrap();
        assert!(failures.is_empty(), "/health did not answer: {failures:?}");
        answered
    }
}

impl Drop for HealthWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Peak RSS the agent may reach while a router misbehaves.
const HOSTILE_RSS_KIB: u64 = 64 * 1024;
/// A hostile router's per-command budget in these tests (the per-read timeout is 3 s).
const COMMAND_TIMEOUT: &str = "command_timeout_secs = 4";

/// An install on a simulator answering every `add` as `mode` fails at provisioning with an
/// error containing `needle`, within a bounded time, while `/health` keeps answering and the
/// agent's memory stays bounded.
fn install_on_a_hostile_router_fails(mode: &str, needle: &str) {
    let s = setup(&format!("ros-{mode}"));
    let sim = Sim::start(s.feed.path(), &["--hostile", mode, "--drip-secs", "2.5"]);
    let agent = s.agent("agent", sim.port, COMMAND_TIMEOUT, "");
    let watch = HealthWatch::start(&agent);
    let started = Instant::now();
    let id = agent.install_on("tool", "mt", "h");
    let inst = agent.wait_done(&id, Duration::from_secs(30));
    let took = started.elapsed();
    let answered = watch.finish();
    let ctx = format!("{mode}: {inst}\n{}", agent.log());
    assert_eq!(inst["status"], "FAILED", "{ctx}");
    assert_eq!(inst["failedStep"], "provisioning", "{ctx}");
    let error = inst["error"].as_str().unwrap();
    assert!(error.contains(needle), "{ctx}");
    assert!(
        error.contains("/interface/vlan/add"),
        "names the command: {ctx}"
    );
    assert!(answered >= 1, "{mode}: /health was never polled");
    let peak = common::proc_status_kib(agent.pid(), "VmHWM:");
    eprintln!("{mode}: failed after {took:?}, agent peak RSS {peak} KiB: {error}");
    assert!(peak < HOSTILE_RSS_KIB, "{mode}: peak RSS {peak} KiB");
    // The router really did misbehave, on the command the error names.
    let log = sim.state()["log"].to_string();
    assert!(log.contains(&format!("hostile {mode}")), "{log}");
    assert_eq!(sim.objects(), vec![], "{ctx}");
}

#[test]
fn a_router_streaming_rows_without_end_is_cut_off_at_the_row_cap() {
    install_on_a_hostile_router_fails(
        "flood",
        "not a RouterOS API reply: the reply is over the agent's limit of 10000 rows; the connection was dropped",
    );
}

#[test]
fn a_router_dripping_its_reply_is_cut_off_at_the_command_deadline() {
    install_on_a_hostile_router_fails(
        "drip",
        "did not answer in full within the 4 s the command may take (command_timeout_secs)",
    );
}

#[test]
fn a_router_sending_a_1_mib_word_is_refused_at_the_word_cap() {
    install_on_a_hostile_router_fails(
        "huge-word",
        "not a RouterOS API reply: a word of 1048576 bytes is over the agent's limit of 65536; the connection was dropped",
    );
}

/// A TCP relay to 127.0.0.1:`upstream` that passes the client's bytes at once and the
/// server's one byte every `every`, stopped (with every connection it relays) on drop.
struct Dripper {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Dripper {
    fn start(upstream: u16, every: Duration) -> Dripper {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut relays = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let flag = Arc::clone(&flag);
                        relays.push(std::thread::spawn(move || {
                            drip(client, upstream, every, &flag);
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            for r in relays {
                let _ = r.join();
            }
        });
        Dripper {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

fn drip(client: TcpStream, upstream: u16, every: Duration, stop: &AtomicBool) {
    client.set_nonblocking(false).unwrap();
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (mut from_client, mut to_server) =
        (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_server);
        let _ = to_server.shutdown(std::net::Shutdown::Both);
    });
    server
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (mut server_r, mut client_w) = (&server, &client);
    let mut byte = [0u8; 1];
    while !stop.load(Ordering::SeqCst) {
        match server_r.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => {
                std::thread::sleep(every);
                if client_w.write_all(&byte).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = server.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
}

impl Drop for Dripper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A self-signed certificate for the simulator's API-SSL: (cert.pem, key.pem, SHA-256 of DER).
fn router_certificate(dir: &Path) -> (PathBuf, PathBuf, String) {
    let (cert, key) = common::self_signed(dir, "router");
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .output()
        .unwrap()
        .stdout;
    let der_file = dir.join("cert.der");
    std::fs::write(&der_file, der).unwrap();
    let fingerprint = sha256_file(&der_file);
    (cert, key, fingerprint)
}

#[test]
fn a_router_dripping_its_tls_handshake_is_cut_off_at_the_connect_deadline() {
    let s = setup("rostlsdrip");
    let (cert, key, fingerprint) = router_certificate(s.feed.path());
    let sim = Sim::start(
        s.feed.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    // Every byte the router sends (its TLS handshake first) arrives 2.5 s after the last:
    // always within the 3 s read timeout, never finishing.
    let dripper = Dripper::start(sim.port, Duration::from_millis(2500));
    let agent = s.agent(
        "agent",
        dripper.port,
        &format!("tls_fingerprint = \"{fingerprint}\"\n{COMMAND_TIMEOUT}"),
        "",
    );
    let watch = HealthWatch::start(&agent);
    let started = Instant::now();
    let v = agent.gql(
        "mutation { installFeature(featureId: \"tool\", routerId: \"mt\", name: \"d\") { instanceId } }",
        json!({}),
    );
    let took = started.elapsed();
    watch.finish();
    assert_eq!(
        v["errors"][0]["extensions"]["code"], "UNREACHABLE_ROUTER",
        "{v}"
    );
    let message = v["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("TLS: the router did not answer in full within the 4 s"),
        "{v}"
    );
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "refused after {took:?}"
    );
    assert_eq!(
        agent.data("{ instances { id } }", json!({}))["instances"],
        json!([])
    );
    drop(agent);
    drop(dripper);
}

#[test]
fn a_plain_text_router_login_is_warned_about_in_the_log_and_in_graphql() {
    let s = setup("rosplain");
    let sim = Sim::start(s.feed.path(), &[]);
    let agent = s.agent("agent", sim.port, "", "");
    let log = agent.log();
    let warning = format!(
        "router mt: the RouterOS API password for user admin goes to 127.0.0.1:{} in plain text; in its [[routers]] entry set tls = true and tls_fingerprint",
        sim.port
    );
    assert!(log.contains(&warning), "{log}");
    assert!(log.contains("(API-SSL, port 8729)"), "{log}");
    assert!(!log.contains("secret"), "the password leaked into the log");
    let routers = agent.data("{ routers { id tls } }", json!({}));
    assert_eq!(
        routers["routers"],
        json!([{ "id": "local", "tls": false }, { "id": "mt", "tls": false }])
    );
}
