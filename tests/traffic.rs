//! Traffic end to end through installed services, in network namespaces of the test's own:
//!
//! ```text
//!   LAN client ns ── nnc{N}l ═ nnc{N}v ── bridge nnc{N} (10.99.N.1) ── service ns (10.99.N.2)
//!                                   router ns (the agent) ── wan0 ═ eth0 ── internet ns (nginx)
//! ```
//!
//! The VLAN is a veth pair here (the host has no 8021q; tests/vm.rs makes the real one). The
//! agent downloads the binaries from the "internet" nginx through the router's WAN; a LAN
//! client then fetches a page through sing-box and through Debian's v2ray (configured by the
//! Xray generator), and nginx sees the request arriving from the service on the router side.
//! Tor cannot bootstrap offline: its SOCKS port answers 05 00 on the segment. Uninstalling
//! everything leaves the router namespace exactly as it was.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Agent, Nginx, TempDir, TestNetns, make_fixtures, sha256_file, singbox_binary};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);
const WAN_ROUTER: &str = "198.51.100.1";
const WAN_SERVER: &str = "198.51.100.2";

struct Net {
    root: TempDir,
    router: TestNetns,
    lan: TestNetns,
    /// Holds nginx; kept for the lifetime of the test.
    _internet: TestNetns,
    nginx: Nginx,
    www: PathBuf,
    netns_dir: PathBuf,
    rt_tables: PathBuf,
}

fn run(args: &[&str]) {
    common::run_ok(Command::new(args[0]).args(&args[1..]));
}

fn net(tag: &str) -> Net {
    let root = TempDir::new(tag);
    let router = TestNetns::new(&format!("{tag}-r"));
    let internet = TestNetns::new(&format!("{tag}-i"));
    let lan = TestNetns::new(&format!("{tag}-l"));
    router.veth_to("wan0", &internet);
    router.ip(&["addr", "add", &format!("{WAN_ROUTER}/24"), "dev", "wan0"]);
    router.ip(&["link", "set", "wan0", "up"]);
    internet.ip(&["addr", "add", &format!("{WAN_SERVER}/24"), "dev", "eth0"]);
    internet.ip(&["link", "set", "eth0", "up"]);
    internet.ip(&["route", "add", "default", "via", WAN_ROUTER]);
    run(&[
        "ip",
        "netns",
        "exec",
        &router.name,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello from the internet\n").unwrap();
    let nginx = Nginx::start_on(&www, "", Some(&internet), WAN_SERVER.parse().unwrap());
    let netns_dir = root.path().join("netns");
    let rt_tables = root.path().join("rt_tables.d/nnc.conf");
    Net {
        root,
        router,
        _internet: internet,
        lan,
        nginx,
        www,
        netns_dir,
        rt_tables,
    }
}

impl Net {
    fn agent(&self, features: &[Value]) -> Agent {
        let catalogue = common::write_catalogue(self.root.path(), features);
        let toml = format!(
            "[vlan]\nmode = \"veth\"\npool = [100, 119]\nrt_tables = {:?}\nnetns_dir = {:?}\n",
            self.rt_tables.display().to_string(),
            self.netns_dir.display().to_string()
        );
        Agent::start_in(
            &self.root.path().join("agent"),
            &catalogue,
            &toml,
            Some(&self.router),
            &[],
        )
    }

    fn singbox(&self) -> Value {
        make_fixtures(
            &self.www,
            &[
                "singbox",
                singbox_binary("amd64").to_str().unwrap(),
                "1.14.4",
            ],
        );
        json!({ "id": "sing-box", "name": "sing-box", "version": "1.14.4", "binary": "sing-box", "config": "sing-box",
                "assets": { "x86_64": { "url": self.nginx.url("sing-box-1.14.4-linux-amd64.tar.gz"),
                    "checksums": self.nginx.url("checksums.txt"), "archive": "tar.gz",
                    "path": "sing-box-1.14.4-linux-amd64/sing-box" } } })
    }

    /// Debian's v2ray standing in for Xray: the Xray generator's V2Ray-compatible subset.
    fn v2ray(&self) -> Value {
        std::fs::copy("/usr/bin/v2ray", self.www.join("v2ray")).unwrap();
        json!({ "id": "xray", "name": "Xray (V2Ray 4 here)", "version": "4.34.0", "binary": "v2ray", "config": "xray",
                "service": { "args": ["-config", "{config}"], "check": ["-test", "-config", "{config}"] },
                "assets": { "x86_64": { "url": self.nginx.url("v2ray"), "sha256": sha256_file(&self.www.join("v2ray")) } } })
    }

    fn tor(&self) -> Value {
        std::fs::copy("/usr/sbin/tor", self.www.join("tor")).unwrap();
        json!({ "id": "tor", "name": "Tor", "version": "0.4", "binary": "tor", "config": "tor",
                "assets": { "x86_64": { "url": self.nginx.url("tor"), "sha256": sha256_file(&self.www.join("tor")) } } })
    }

    /// Moves the LAN end of segment N into the LAN client namespace with address .50.
    fn plug_lan_client(&self, vlan: u64) {
        let dev = format!("nnc{vlan}l");
        self.router
            .ip(&["link", "set", &dev, "netns", &self.lan.name]);
        self.lan
            .ip(&["addr", "add", &format!("10.99.{vlan}.50/24"), "dev", &dev]);
        self.lan.ip(&["link", "set", &dev, "up"]);
    }

    /// `curl --socks5-hostname` from the LAN client through `proxy`.
    fn curl_via(&self, proxy: &str) -> String {
        let url = format!("http://{WAN_SERVER}:{}/hello.txt", self.nginx.port);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.lan.name,
                "curl",
                "-sS",
                "--max-time",
                "15",
                "--socks5-hostname",
                proxy,
                &url,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "curl via {proxy}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the router namespace holds: links, addresses, routes of every table, rules, the
    /// service namespaces and registered table names.
    fn router_state(&self) -> Vec<String> {
        let mut state = Vec::new();
        for args in [
            ["-j", "link", "show"].as_slice(),
            &["-j", "addr", "show"],
            &["-j", "route", "show", "table", "all"],
            &["-j", "rule", "show"],
        ] {
            let v: Value = serde_json::from_str(&self.router.ip(args)).unwrap();
            for item in v.as_array().unwrap() {
                let mut item = item.clone();
                if let Some(o) = item.as_object_mut() {
                    // Counters and link state flags move on their own.
                    for k in [
                        "stats",
                        "stats64",
                        "operstate",
                        "flags",
                        "linkmode",
                        "group",
                        "txqlen",
                        "qdisc",
                    ] {
                        o.remove(k);
                    }
                    // IPv6 link-local addresses come and go with duplicate address detection.
                    if let Some(infos) = o.get_mut("addr_info").and_then(Value::as_array_mut) {
                        infos.retain(|i| i["scope"] != "link");
                        for i in infos.iter_mut().filter_map(Value::as_object_mut) {
                            i.remove("valid_life_time");
                            i.remove("preferred_life_time");
                        }
                    }
                }
                if item["dst"].as_str().is_some_and(|d| d.starts_with("fe80:")) {
                    continue;
                }
                state.push(format!("{} {item}", args[1]));
            }
        }
        if let Ok(d) = std::fs::read_dir(&self.netns_dir) {
            state.extend(
                d.flatten()
                    .map(|e| format!("netns {}", e.file_name().to_string_lossy())),
            );
        }
        let tables = std::fs::read_to_string(&self.rt_tables).unwrap_or_default();
        state.extend(
            tables
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .map(|l| format!("rt_tables {l}")),
        );
        state.sort();
        state
    }
}

fn running(agent: &Agent, id: &str) -> Value {
    let p = agent.wait_status(id, &["RUNNING", "FAILED"], TIMEOUT);
    assert_eq!(p["status"], "RUNNING", "{p}\n{}", agent.log());
    p
}

fn pid_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn lan_traffic_flows_through_sing_box_and_v2ray_and_uninstall_leaves_nothing() {
    let net = net("traffic");
    let baseline = net.router_state();
    let agent = net.agent(&[net.singbox(), net.v2ray()]);

    let sb = agent.install_with("sing-box", "lan", json!({ "mixedPort": 2080 }));
    let p = running(&agent, &sb);
    let vlan = p["interface"]["vlanId"].as_u64().unwrap();
    let service = p["interface"]["serviceAddress"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(service, format!("10.99.{vlan}.2"));
    net.plug_lan_client(vlan);
    assert_eq!(
        net.curl_via(&format!("{service}:2080")),
        "hello from the internet\n"
    );
    let log = net.nginx.requests_for("/hello.txt");
    assert_eq!(log.len(), 1, "{log:?}");
    assert!(
        log[0].ends_with(&format!("from={service}")),
        "the request should come from the service on the router side: {log:?}"
    );

    let v2 = agent.install_with("xray", "lan", json!({ "socksPort": 10808 }));
    let p = running(&agent, &v2);
    let vlan2 = p["interface"]["vlanId"].as_u64().unwrap();
    let service2 = p["interface"]["serviceAddress"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(vlan, vlan2);
    net.plug_lan_client(vlan2);
    assert_eq!(
        net.curl_via(&format!("{service2}:10808")),
        "hello from the internet\n"
    );
    let log = net.nginx.requests_for("/hello.txt");
    assert!(
        log.len() == 2 && log[1].ends_with(&format!("from={service2}")),
        "{log:?}"
    );
    let config = std::fs::read_to_string(
        agent
            .data_dir
            .join(format!("instances/{v2}/config/config.json")),
    )
    .unwrap();
    // No routing mark (it would not cross the veth anyway) and so no capability: the
    // traffic above flowed without either.
    assert!(!config.contains("\"mark\""), "{config}");
    let pid = agent.process(&v2)["process"]["pid"].as_i64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l == "CapEff:\t0000000000000000"),
        "{status}"
    );

    // A second sing-box instance shares the binary; uninstalling the first keeps it.
    let sb2 = agent.install_with("sing-box", "second", json!({ "mixedPort": 2081 }));
    running(&agent, &sb2);
    let binary = PathBuf::from(agent.process(&sb2)["binaryPath"].as_str().unwrap());
    let pids: Vec<i64> = [&sb, &v2, &sb2]
        .iter()
        .map(|id| agent.process(id)["process"]["pid"].as_i64().unwrap())
        .collect();
    agent.uninstall(&sb);
    assert!(binary.exists(), "the binary is still used by {sb2}");
    assert!(!pid_alive(pids[0]));
    assert!(!agent.data_dir.join(format!("instances/{sb}")).exists());
    assert!(
        !net.router
            .ip(&["link", "show"])
            .contains(&format!("nnc{vlan}")),
        "segment {vlan} is gone"
    );
    // The freed VLAN id is handed out again.
    let sb3 = agent.install_with("sing-box", "third", json!({ "mixedPort": 2082 }));
    assert_eq!(
        running(&agent, &sb3)["interface"]["vlanId"].as_u64(),
        Some(vlan)
    );

    for id in [&v2, &sb2, &sb3] {
        agent.uninstall(id);
    }
    assert!(pids.iter().all(|p| !pid_alive(*p)));
    assert!(!binary.exists(), "the last user is gone, so is the binary");
    let left: Vec<_> = std::fs::read_dir(agent.data_dir.join("instances"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let features: Vec<_> = std::fs::read_dir(agent.data_dir.join("features"))
        .map(|d| {
            d.flatten()
                .flat_map(|f| {
                    std::fs::read_dir(f.path())
                        .unwrap()
                        .flatten()
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(features.is_empty(), "{features:?}");
    assert_eq!(
        net.router_state(),
        baseline,
        "the router namespace is as it was"
    );
    assert_eq!(
        net.lan.ip(&["-o", "link", "show"]).lines().count(),
        1,
        "only lo is left on the LAN side"
    );
    let interfaces = agent.data("{ interfaces { name } instances { id } }", json!({}));
    assert_eq!(interfaces, json!({ "interfaces": [], "instances": [] }));
}

#[test]
fn tor_answers_socks5_on_its_segment() {
    let net = net("tor");
    let agent = net.agent(&[net.tor()]);
    let tor = agent.install_with("tor", "lan", json!({}));
    let p = running(&agent, &tor);
    let vlan = p["interface"]["vlanId"].as_u64().unwrap();
    let service = p["interface"]["serviceAddress"]
        .as_str()
        .unwrap()
        .to_owned();
    net.plug_lan_client(vlan);
    let addr = format!("{service}:9050").parse().unwrap();
    assert_eq!(net.lan.run(|| common::socks5_greeting(addr)), [5, 0]);
    let torrc =
        std::fs::read_to_string(agent.data_dir.join(format!("instances/{tor}/config/torrc")))
            .unwrap();
    assert!(
        torrc.contains(&format!("SocksPort {service}:9050")),
        "{torrc}"
    );
    agent.uninstall(&tor);
}
