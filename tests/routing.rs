//! Device routing end to end, in network namespaces of the test's own, with real nft, real
//! policy routing, a real sing-box as the instance and another as the proxy server:
//!
//! ```text
//!   A (192.0.2.10) ─┐                                          ┌ nginx 198.51.100.2 (+ dnsmasq)
//!   B (192.0.2.20) ─┴ br-lan 192.0.2.1 ── router ns ── wan0 ═══╡ sing-box shadowsocks server
//!                     dnsmasq (the router's resolver)  masquerade └ 198.51.100.3, leaving from .4 / .5
//! ```
//!
//! Nobody has proxy settings. After `routeDevices(A)`, A's plain HTTP arrives at nginx from
//! the proxy server's address (.4), B's from the router's WAN address (.1); A's DNS to the
//! router is answered through the service. While A requests in a loop, its service is
//! stopped, killed, the agent killed and restarted, the instance's table flushed, A moved to
//! another instance: nginx never sees A from the router's address. `onServiceDown: DIRECT`
//! lets it out while the service is down. Unroute and uninstall leave the router's rules,
//! routes and ruleset as they were.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Agent, Nginx, TempDir, TestNetns, make_fixtures, singbox_binary};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);
const WAN_ROUTER: &str = "198.51.100.1";
const WAN_SERVER: &str = "198.51.100.2";
const PROXY: &str = "198.51.100.3";
const PROXY_OUT_X: &str = "198.51.100.4";
const PROXY_OUT_Y: &str = "198.51.100.5";
const A: &str = "192.0.2.10";
const B: &str = "192.0.2.20";
const A_MAC: &str = "02:00:5e:10:00:0a";
const B_MAC: &str = "02:00:5e:10:00:14";

fn run(args: &[&str]) -> String {
    common::run_ok(Command::new(args[0]).args(&args[1..]))
}

fn sysctl(ns: &TestNetns, kv: &str) {
    run(&["ip", "netns", "exec", &ns.name, "sysctl", "-qw", kv]);
}

struct Net {
    root: TempDir,
    router: TestNetns,
    a: TestNetns,
    b: TestNetns,
    internet: TestNetns,
    nginx: Nginx,
    www: PathBuf,
    netns_dir: PathBuf,
    rt_tables: PathBuf,
    /// The proxy server, the router's and the internet's resolvers: stopped on drop.
    children: Vec<Child>,
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A veth from the router's bridge to a LAN client namespace.
fn plug(router: &TestNetns, client: &TestNetns, port: &str, v4: &str, v6: &str, mac: &str) {
    router.veth_to(port, client);
    router.ip(&["link", "set", port, "master", "br-lan", "up"]);
    client.ip(&["link", "set", "eth0", "address", mac]);
    client.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
    client.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
    client.ip(&["link", "set", "eth0", "up"]);
    client.ip(&["route", "add", "default", "via", "192.0.2.1"]);
    client.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);
}

fn dnsmasq(ns: &TestNetns, dir: &std::path::Path, name: &str, listen: &str, answer: &str) -> Child {
    let log = dir.join(format!("{name}.log"));
    Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "dnsmasq",
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
        ])
        .arg(format!("--listen-address={listen}"))
        .args([
            "--bind-interfaces",
            "--except-interface=lo",
            "--log-queries=extra",
            "--user=root",
        ])
        .arg(format!("--log-facility={}", log.display()))
        .arg(format!("--address=/example.test/{answer}"))
        .arg(format!(
            "--pid-file={}",
            dir.join(format!("{name}.pid")).display()
        ))
        .stdin(Stdio::null())
        .spawn()
        .expect("dnsmasq (Debian dnsmasq-base) must be installed: run tests/setup.sh")
}

fn net(tag: &str) -> Net {
    let root = TempDir::new(tag);
    let router = TestNetns::new(&format!("{tag}-r"));
    let internet = TestNetns::new(&format!("{tag}-i"));
    let a = TestNetns::new(&format!("{tag}-a"));
    let b = TestNetns::new(&format!("{tag}-b"));
    for ns in [&router, &internet, &a, &b] {
        sysctl(ns, "net.ipv6.conf.all.accept_dad=0");
    }
    router.veth_to("wan0", &internet);
    router.ip(&["addr", "add", &format!("{WAN_ROUTER}/24"), "dev", "wan0"]);
    router.ip(&["addr", "add", "2001:db8:2::1/64", "dev", "wan0", "nodad"]);
    router.ip(&["link", "set", "wan0", "up"]);
    for addr in [WAN_SERVER, PROXY, PROXY_OUT_X, PROXY_OUT_Y] {
        internet.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
    }
    internet.ip(&["addr", "add", "2001:db8:2::2/64", "dev", "eth0", "nodad"]);
    internet.ip(&["link", "set", "eth0", "up"]);
    internet.ip(&["route", "add", "default", "via", WAN_ROUTER]);
    internet.ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"]);
    router.ip(&["link", "add", "br-lan", "type", "bridge"]);
    router.ip(&["addr", "add", "192.0.2.1/24", "dev", "br-lan"]);
    router.ip(&["addr", "add", "2001:db8:1::1/64", "dev", "br-lan", "nodad"]);
    router.ip(&["link", "set", "br-lan", "up"]);
    plug(&router, &a, "lan-a", A, "2001:db8:1::10", A_MAC);
    plug(&router, &b, "lan-b", B, "2001:db8:1::20", B_MAC);
    sysctl(&router, "net.ipv4.ip_forward=1");
    sysctl(&router, "net.ipv6.conf.all.forwarding=1");
    // The router owner's own firewall: NAT to the WAN (IPv4 only, the IPv6 is routed).
    let nat = "table ip owner_nat {\n chain post {\n  type nat hook postrouting priority srcnat; policy accept;\n  oifname \"wan0\" masquerade\n }\n}\n";
    std::fs::write(root.path().join("owner.nft"), nat).unwrap();
    run(&[
        "ip",
        "netns",
        "exec",
        &router.name,
        "nft",
        "-f",
        &root.path().join("owner.nft").display().to_string(),
    ]);

    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    for f in ["a.txt", "b.txt"] {
        std::fs::write(www.join(f), format!("{f} from the internet\n")).unwrap();
    }
    let nginx = Nginx::start_on(&www, "", Some(&internet), WAN_SERVER.parse().unwrap());

    // The proxy server: shadowsocks on .3, instance X's traffic leaves from .4, Y's from .5.
    let server = json!({
        "log": { "level": "warn" },
        "inbounds": [
            { "type": "shadowsocks", "tag": "ss-x", "listen": PROXY, "listen_port": 8388,
              "method": "aes-128-gcm", "password": "nnc-test-password" },
            { "type": "shadowsocks", "tag": "ss-y", "listen": PROXY, "listen_port": 8389,
              "method": "aes-128-gcm", "password": "nnc-test-password" }
        ],
        "outbounds": [
            { "type": "direct", "tag": "via-x", "inet4_bind_address": PROXY_OUT_X },
            { "type": "direct", "tag": "via-y", "inet4_bind_address": PROXY_OUT_Y }
        ],
        "route": { "rules": [{ "inbound": ["ss-y"], "outbound": "via-y" }], "final": "via-x" }
    });
    let server_conf = root.path().join("proxy-server.json");
    std::fs::write(&server_conf, server.to_string()).unwrap();
    let dns_dir = root.path().join("dns");
    std::fs::create_dir_all(&dns_dir).unwrap();
    let children = vec![
        Command::new("ip")
            .args(["netns", "exec", &internet.name])
            .arg(singbox_binary("amd64"))
            .args(["run", "-c"])
            .arg(&server_conf)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
        dnsmasq(&internet, &dns_dir, "internet", WAN_SERVER, "203.0.113.80"),
        dnsmasq(&router, &dns_dir, "router", "192.0.2.1", "192.0.2.99"),
    ];
    let net = Net {
        netns_dir: root.path().join("netns"),
        rt_tables: root.path().join("rt_tables.d/nnc.conf"),
        root,
        router,
        a,
        b,
        internet,
        nginx,
        www,
        children,
    };
    common::wait_until(
        "the proxy server to listen",
        Duration::from_secs(10),
        || {
            net.internet
                .run(|| std::net::TcpStream::connect((PROXY, 8389)).is_ok())
        },
    );
    net
}

impl Net {
    fn agent(&self) -> Agent {
        make_fixtures(
            &self.www,
            &[
                "singbox",
                singbox_binary("amd64").to_str().unwrap(),
                "1.14.4",
            ],
        );
        let feature = json!({ "id": "sing-box", "name": "sing-box", "version": "1.14.4", "binary": "sing-box", "config": "sing-box",
            "assets": { "x86_64": { "url": self.nginx.url("sing-box-1.14.4-linux-amd64.tar.gz"),
                "checksums": self.nginx.url("checksums.txt"), "archive": "tar.gz",
                "path": "sing-box-1.14.4-linux-amd64/sing-box" } } });
        // A version whose check passes but which exits at once: an update to it stops the
        // running service, fails, and puts the old one back (the rollback window).
        std::fs::copy("/bin/busybox", self.www.join("busybox")).unwrap();
        let exits = json!({ "id": "sing-box", "name": "sing-box", "version": "9.0.0-exits", "binary": "busybox", "config": "sing-box",
            "service": { "args": ["false"], "check": ["true"] },
            "assets": { "x86_64": { "url": self.nginx.url("busybox"), "sha256": common::sha256_file(&self.www.join("busybox")) } } });
        let catalogue = common::write_catalogue(self.root.path(), &[feature, exits]);
        self.start_agent(&catalogue)
    }

    fn start_agent(&self, catalogue: &std::path::Path) -> Agent {
        let toml = format!(
            "[vlan]\nmode = \"veth\"\npool = [100, 119]\nrt_tables = {:?}\nnetns_dir = {:?}\n[supervisor]\nbackoff_initial_secs = 0.2\n[routing]\nboot_rules = {:?}\n",
            self.rt_tables.display().to_string(),
            self.netns_dir.display().to_string(),
            self.boot_rules().display().to_string()
        );
        Agent::start_in(
            &self.root.path().join("agent"),
            catalogue,
            &toml,
            Some(&self.router),
            &[],
        )
    }

    /// Where the agent keeps its rules for the boot firewall (fw4's include directory on OpenWrt).
    fn boot_rules(&self) -> PathBuf {
        self.root
            .path()
            .join("nftables.d/ruleset-post/nnc-agent.nft")
    }

    /// A plain `curl` from a LAN client: the body, or None when it did not get through.
    /// A `curl` of `file` from `client`: the body, or None. On success it returns once nginx
    /// has logged the request too (nginx logs after it answered).
    fn curl(&self, client: &TestNetns, file: &str) -> Option<String> {
        let logged = self.sources(file).len();
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &client.name,
                "curl",
                "-sS",
                "--max-time",
                "5",
            ])
            .arg(format!("http://{WAN_SERVER}:{}/{file}", self.nginx.port))
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        common::wait_until("nginx to log the request", Duration::from_secs(5), || {
            self.sources(file).len() > logged
        });
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Where nginx saw requests for `file` come from, in order.
    fn sources(&self, file: &str) -> Vec<String> {
        self.nginx
            .requests_for(&format!("/{file}"))
            .iter()
            .filter_map(|l| l.rsplit_once("from=").map(|(_, a)| a.to_owned()))
            .collect()
    }

    fn last_source(&self, file: &str) -> String {
        self.sources(file).pop().unwrap_or_default()
    }

    /// `dig` from a LAN client: the answer, or None.
    fn dig(&self, client: &TestNetns, server: &str, tcp: bool) -> Option<String> {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &client.name,
            "dig",
            "+short",
            "+time=3",
            "+tries=1",
        ]);
        if tcp {
            c.arg("+tcp");
        }
        let out = c
            .arg(format!("@{server}"))
            .arg("example.test")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.is_empty() && !text.starts_with(';')).then_some(text)
    }

    fn dns_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.root.path().join(format!("dns/{name}.log")))
            .unwrap_or_default()
    }

    fn ping6(&self, client: &TestNetns) -> bool {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &client.name,
                "ping",
                "-6",
                "-c1",
                "-W2",
                "2001:db8:2::2",
            ])
            .output()
            .unwrap()
            .status
            .success()
    }

    /// `nft ARGS` in the router's namespace.
    fn nft(&self, args: &[&str]) -> String {
        run(&[&["ip", "netns", "exec", &self.router.name, "nft"][..], args].concat())
    }

    /// `table inet nnc_agent` as JSON, without handles and without what the packet path has
    /// taught its `seen` sets; None when there is no such table.
    fn agent_table(&self) -> Option<Value> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.router.name,
                "nft",
                "-j",
                "list",
                "table",
            ])
            .args(["inet", "nnc_agent"])
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let mut v: Value = serde_json::from_slice(&out.stdout).unwrap();
        strip_handles(&mut v);
        for item in v["nftables"].as_array_mut().into_iter().flatten() {
            let set = &mut item["set"];
            if set["name"].as_str().is_some_and(|n| n.ends_with("_seen")) {
                set.as_object_mut().unwrap().remove("elem");
            }
        }
        Some(v)
    }

    /// A requesting `a.txt` in a loop (until the child is killed).
    fn requests_in_a_loop(&self) -> Running {
        let url = format!("http://{WAN_SERVER}:{}/a.txt", self.nginx.port);
        Running(
            Command::new("ip")
                .args(["netns", "exec", &self.a.name, "sh", "-c"])
                .arg(format!(
                    "while :; do curl -s -o /dev/null --max-time 1 {url}; sleep 0.05; done"
                ))
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    /// The router's rules, routes of every table and nft ruleset (both address families).
    fn router_state(&self) -> Vec<String> {
        let mut state = Vec::new();
        for args in [
            ["-j", "-4", "rule", "show"].as_slice(),
            &["-j", "-6", "rule", "show"],
            &["-j", "-4", "route", "show", "table", "all"],
            &["-j", "-6", "route", "show", "table", "all"],
        ] {
            let v: Value = serde_json::from_str(&self.router.ip(args)).unwrap();
            for item in v.as_array().unwrap() {
                let mut item = item.clone();
                if let Some(o) = item.as_object_mut() {
                    o.remove("expires");
                }
                // IPv6 link-local routes come with the links' addresses, in their own time.
                if item["dst"].as_str().is_some_and(|d| d.starts_with("fe80:")) {
                    continue;
                }
                state.push(format!("{} {item}", args[1]));
            }
        }
        let nft = run(&[
            "ip",
            "netns",
            "exec",
            &self.router.name,
            "nft",
            "-j",
            "list",
            "ruleset",
        ]);
        let v: Value = serde_json::from_str(&nft).unwrap();
        for item in v["nftables"].as_array().unwrap() {
            if item.get("metainfo").is_none() {
                let mut item = item.clone();
                // Handles are handed out anew for each object.
                strip_handles(&mut item);
                state.push(format!("nft {item}"));
            }
        }
        state.sort();
        state
    }
}

/// A child process killed when dropped (also when a test fails while it runs).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn strip_handles(v: &mut Value) {
    match v {
        Value::Object(o) => {
            o.remove("handle");
            o.values_mut().for_each(strip_handles);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_handles),
        _ => {}
    }
}

fn running(agent: &Agent, id: &str) -> Value {
    let p = agent.wait_status(id, &["RUNNING", "FAILED"], TIMEOUT);
    assert_eq!(p["status"], "RUNNING", "{p}\n{}", agent.log());
    p
}

fn install(agent: &Agent, name: &str, port: u16) -> String {
    let id = agent.install_with(
        "sing-box",
        name,
        json!({
            "dnsUpstream": WAN_SERVER,
            "outbound": { "type": "shadowsocks", "server": PROXY, "serverPort": port,
                          "method": "aes-128-gcm", "password": "nnc-test-password" }
        }),
    );
    running(agent, &id);
    id
}

fn route(agent: &Agent, id: &str, devices: &[&str]) -> Value {
    agent.data(
        "mutation($i: ID!, $d: [String!]!) { routeDevices(instanceId: $i, devices: $d) { device instanceId since } }",
        json!({ "i": id, "d": devices }),
    )["routeDevices"]
        .clone()
}

fn mutate(agent: &Agent, m: &str, id: &str) {
    agent.data(
        &format!("mutation($i: ID!) {{ {m}(id: $i) {{ id }} }}"),
        json!({ "i": id }),
    );
}

fn service_pid(agent: &Agent, id: &str) -> i32 {
    agent.process(id)["process"]["pid"]
        .as_i64()
        .and_then(|p| i32::try_from(p).ok())
        .unwrap_or(0)
}

/// Waits for A's requests to arrive again, then checks that none of those since `seen`
/// arrived directly.
fn through(net: &Net, agent: &Agent, seen: usize) {
    let n = net.sources("a.txt").len();
    common::wait_until("A's requests through the service", TIMEOUT, || {
        net.sources("a.txt").len() > n + 2
    });
    let leaks = leaks_since(net, seen, &[PROXY_OUT_X]);
    assert!(
        leaks.is_empty(),
        "leaked before request {n}: {leaks:?}\n{}\n{}",
        net.nginx.requests_for("/a.txt").join("\n"),
        agent.log()
    );
}

/// A's requests that nginx saw from anything but the proxy server (the leaks), given how
/// many were seen before.
fn leaks_since(net: &Net, seen: usize, allowed: &[&str]) -> Vec<String> {
    net.sources("a.txt")
        .into_iter()
        .skip(seen)
        .filter(|s| !allowed.contains(&s.as_str()))
        .collect()
}

#[test]
fn routed_devices_go_through_the_service_and_never_leak() {
    let net = net("route");
    let baseline = net.router_state();
    let mut agent = net.agent();

    // Direct, before anything is routed.
    assert!(net.curl(&net.a, "a.txt").is_some());
    assert_eq!(net.last_source("a.txt"), WAN_ROUTER);
    assert!(
        net.ping6(&net.a),
        "control: A's IPv6 reaches the internet unrouted"
    );

    let x = install(&agent, "x", 8388);
    // Bad devices: a clear error, nothing changed.
    for bad in [
        &["phone"][..],
        &[A, "192.0.2.0/24"],
        &["02:00:5e:10:00"],
        &["10.99.100.5"],
    ] {
        assert_eq!(
            agent.error_code(
                "mutation($i: ID!, $d: [String!]!) { routeDevices(instanceId: $i, devices: $d) { device } }",
                json!({ "i": x, "d": bad }),
            ),
            "INVALID_DEVICE",
            "{bad:?}"
        );
    }
    assert_eq!(
        agent.data("{ deviceRoutes { device } }", json!({}))["deviceRoutes"],
        json!([])
    );

    let routed = route(&agent, &x, &[A]);
    assert_eq!(routed[0]["device"], A);
    assert_eq!(routed[0]["instanceId"], x.as_str());
    let inst = agent.data(
        "query($i: ID!) { instance(id: $i) { devices onServiceDown } }",
        json!({ "i": x }),
    );
    assert_eq!(
        inst["instance"],
        json!({ "devices": [A], "onServiceDown": "BLOCK" })
    );

    // A through the proxy server, B direct; DNS to the router's address through the service.
    assert_eq!(
        net.curl(&net.a, "a.txt").as_deref(),
        Some("a.txt from the internet\n")
    );
    assert_eq!(net.last_source("a.txt"), PROXY_OUT_X, "{}", agent.log());
    assert!(net.curl(&net.b, "b.txt").is_some());
    assert_eq!(net.last_source("b.txt"), WAN_ROUTER);
    let router_log_before = net.dns_log("router");
    assert_eq!(
        net.dig(&net.a, "192.0.2.1", false).as_deref(),
        Some("203.0.113.80")
    );
    assert_eq!(
        net.dig(&net.a, "192.0.2.1", true).as_deref(),
        Some("203.0.113.80")
    );
    assert_eq!(
        net.dig(&net.a, "198.51.100.9", false).as_deref(),
        Some("203.0.113.80"),
        "DNS to any address"
    );
    assert_eq!(
        net.dns_log("router"),
        router_log_before,
        "the router's resolver saw A's queries"
    );
    assert!(
        net.dns_log("internet").contains(PROXY_OUT_X),
        "the upstream resolver is asked through the proxy: {}",
        net.dns_log("internet")
    );
    assert_eq!(
        net.dig(&net.b, "192.0.2.1", false).as_deref(),
        Some("192.0.2.99"),
        "B uses the router's resolver"
    );
    assert!(!net.ping6(&net.a), "A's IPv6 must not leave");
    // Any change of the routes replaces the agent's table; the MAC learned from A's IPv4 is
    // kept, so A's IPv6 stays refused before A sends IPv4 again.
    route(&agent, &x, &[A, "192.0.2.30"]);
    assert!(!net.ping6(&net.a), "A's IPv6 after the table was replaced");
    agent.data(
        "mutation { unrouteDevices(devices: [\"192.0.2.30\"]) }",
        json!({}),
    );
    assert!(net.ping6(&net.b), "B's IPv6 still does");

    // Leak tests while A requests in a loop.
    let seen = net.sources("a.txt").len();
    let lp = net.requests_in_a_loop();
    // 1. The service stopped, then started again.
    mutate(&agent, "stopInstance", &x);
    std::thread::sleep(Duration::from_secs(2));
    mutate(&agent, "startInstance", &x);
    running(&agent, &x);
    through(&net, &agent, seen);
    // 2. The service killed (its restart backoff).
    let pid = service_pid(&agent, &x);
    run(&["kill", "-9", &pid.to_string()]);
    common::wait_until("the service to be restarted", TIMEOUT, || {
        let p = service_pid(&agent, &x);
        p != 0 && p != pid
    });
    through(&net, &agent, seen);
    // 3. The agent killed and started again.
    agent.kill9();
    std::thread::sleep(Duration::from_secs(2));
    agent.restart();
    running(&agent, &x);
    through(&net, &agent, seen);
    // 4. The instance's table flushed by hand: refused, not sent direct.
    let vlan = agent.instance(&x)["interface"]["vlanId"].as_u64().unwrap();
    let table = (1000 + vlan).to_string();
    net.router.ip(&["route", "flush", "table", &table]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        net.curl(&net.a, "a.txt").is_none(),
        "with its table flushed A is refused"
    );
    // The next start repairs the segment.
    agent.kill9();
    agent.restart();
    running(&agent, &x);
    through(&net, &agent, seen);
    // 5. An update to a version that fails once started: stopped, failed, rolled back.
    agent.data(
        "mutation($i: ID!) { updateInstance(id: $i, version: \"9.0.0-exits\") { status } }",
        json!({ "i": x }),
    );
    common::wait_until("the failed update to roll back", TIMEOUT, || {
        let p = agent.process(&x);
        p["status"] == "RUNNING" && p["version"] == "1.14.4" && p["failedStep"] == "updating"
    });
    through(&net, &agent, seen);
    // 6. A reboot: the kernel forgets the agent's table, its rules and the segment. The boot
    //    firewall loads the kept rules (fw4 includes the file) long before the agent starts:
    //    A is refused until the agent has put everything back.
    let boot = net.boot_rules();
    assert!(boot.exists(), "the rules are kept for the boot firewall");
    agent.kill9();
    // A rebooting router's LAN is down until the boot firewall (fw4 starts before the
    // network on OpenWrt) has loaded the kept rules: while its tables are torn down here, A
    // cannot send either.
    for port in ["lan-a", "lan-b"] {
        net.router.ip(&["link", "set", port, "down"]);
    }
    let pref = 5000 + 2 * vlan;
    for p in [pref, pref + 1] {
        net.router.ip(&["rule", "del", "pref", &p.to_string()]);
    }
    for dev in ["", "h", "v"] {
        net.router.ip(&["link", "del", &format!("nnc{vlan}{dev}")]);
    }
    net.nft(&["delete", "table", "inet", "nnc_agent"]);
    net.nft(&["-f", &boot.display().to_string()]);
    for port in ["lan-a", "lan-b"] {
        net.router.ip(&["link", "set", port, "up"]);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        net.curl(&net.a, "a.txt").is_none(),
        "after the reboot, before the agent: refused"
    );
    agent.restart();
    running(&agent, &x);
    through(&net, &agent, seen);
    // 7. The agent's nftables table deleted by someone else (a `nft flush ruleset`): an
    //    address-routed device still goes through the service, by its source rules, while
    //    the agent puts the table back (below, for a MAC-routed device: its only guard).
    assert!(
        net.router
            .ip(&["rule", "show", "pref", "4000"])
            .contains(&format!("from {A} lookup {table}")),
        "{}",
        net.router.ip(&["rule", "show"])
    );
    net.nft(&["delete", "table", "inet", "nnc_agent"]);
    through(&net, &agent, seen);
    through(&net, &agent, seen);
    common::wait_until("the agent to put its nftables table back", TIMEOUT, || {
        net.agent_table().is_some()
    });
    // The agent's own replacements of its table (every change below) are not repairs.
    let repairs = || {
        agent
            .log()
            .matches("another program deleted or changed the agent's nftables table")
            .count()
    };
    let repaired = repairs();
    assert!(repaired >= 1, "{}", agent.log());
    assert_eq!(
        leaks_since(&net, seen, &[PROXY_OUT_X]),
        Vec::<String>::new(),
        "{}",
        agent.log()
    );

    // Moved to instance Y while requesting: never direct.
    let y = install(&agent, "y", 8389);
    let seen = net.sources("a.txt").len();
    let moved = route(&agent, &y, &[A]);
    assert_eq!(moved[0]["instanceId"], y.as_str());
    common::wait_until("A's requests through Y", TIMEOUT, || {
        net.last_source("a.txt") == PROXY_OUT_Y
    });
    assert_eq!(
        leaks_since(&net, seen, &[PROXY_OUT_X, PROXY_OUT_Y]),
        Vec::<String>::new()
    );
    let routes = agent.data("{ deviceRoutes { device instanceId } }", json!({}));
    assert_eq!(
        routes["deviceRoutes"],
        json!([{ "device": A, "instanceId": y }])
    );
    drop(lp);

    // onServiceDown: DIRECT lets A out while Y is down, and back through Y once it runs.
    let set = agent.data(
        "mutation($i: ID!) { setOnServiceDown(instanceId: $i, mode: DIRECT) { onServiceDown } }",
        json!({ "i": y }),
    );
    assert_eq!(set["setOnServiceDown"]["onServiceDown"], "DIRECT");
    mutate(&agent, "stopInstance", &y);
    common::wait_until("A to go direct while Y is down", TIMEOUT, || {
        net.curl(&net.a, "a.txt").is_some() && net.last_source("a.txt") == WAN_ROUTER
    });
    mutate(&agent, "startInstance", &y);
    running(&agent, &y);
    common::wait_until("A back through Y", TIMEOUT, || {
        net.curl(&net.a, "a.txt").is_some() && net.last_source("a.txt") == PROXY_OUT_Y
    });

    // MAC addresses route too.
    let unrouted = agent.data(
        "mutation($d: [String!]!) { unrouteDevices(devices: $d) }",
        json!({ "d": [A] }),
    );
    assert_eq!(unrouted["unrouteDevices"], json!([A]));
    assert!(net.curl(&net.a, "a.txt").is_some());
    assert_eq!(
        net.last_source("a.txt"),
        WAN_ROUTER,
        "unrouted: direct again"
    );
    assert_eq!(
        route(&agent, &x, &["02-00-5E-10-00-0A"])[0]["device"],
        A_MAC
    );
    assert!(net.curl(&net.a, "a.txt").is_some());
    assert_eq!(net.last_source("a.txt"), PROXY_OUT_X);
    assert!(
        !net.ping6(&net.a),
        "A's IPv6 must not leave when routed by MAC either"
    );
    // Someone's `nft flush ruleset` (`fw4 flush`, a script) deletes the agent's table, and with
    // it the mark a MAC-routed device goes by: the agent sees the deletion and puts its table
    // back as it was (the owner's firewall puts its own back, as fw4 would).
    assert_eq!(repairs(), repaired, "{}", agent.log());
    let before = net.agent_table().expect("the agent's table");
    net.nft(&["flush", "ruleset"]);
    net.nft(&[
        "-f",
        &net.root.path().join("owner.nft").display().to_string(),
    ]);
    common::wait_until("the agent to put its nftables table back", TIMEOUT, || {
        net.agent_table().is_some()
    });
    assert_eq!(net.agent_table(), Some(before.clone()));
    assert!(repairs() > repaired, "{}", agent.log());
    // Switched off without being deleted (`flags dormant`): put back too.
    let n = repairs();
    net.nft(&["add", "table", "inet", "nnc_agent", "{ flags dormant; }"]);
    common::wait_until("the agent to wake its table again", TIMEOUT, || {
        repairs() > n && net.agent_table().as_ref() == Some(&before)
    });
    assert!(net.curl(&net.a, "a.txt").is_some());
    assert_eq!(net.last_source("a.txt"), PROXY_OUT_X);
    assert!(!net.ping6(&net.a), "A's IPv6 is refused again");
    // A router forwards, and a new namespace inherits that: the agent turns it off in the
    // service's namespace and drops forwarding there too. Turned on again by hand, A's ICMP
    // (which no inbound takes) still does not come back out through the router.
    let ns = agent.instance(&x)["interface"]["netns"]
        .as_str()
        .unwrap()
        .to_owned();
    let in_service =
        |args: &[&str]| run(&[&["nsenter", &format!("--net={ns}")][..], args].concat());
    assert_eq!(
        in_service(&["cat", "/proc/sys/net/ipv4/conf/all/forwarding"]).trim(),
        "0"
    );
    in_service(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"]);
    let ping = |c: &TestNetns| {
        Command::new("ip")
            .args(["netns", "exec", &c.name, "ping", "-c1", "-W2", WAN_SERVER])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        !ping(&net.a),
        "A's ICMP left through the service's namespace"
    );
    assert!(ping(&net.b), "control: B's ICMP goes out");
    in_service(&["sysctl", "-qw", "net.ipv4.conf.all.forwarding=0"]);

    // A block holding the router's own LAN address gets no source rules (they would catch
    // what the router sends from it): A still goes through X by its mark, and the router
    // still answers A.
    agent.data(
        "mutation($d: [String!]!) { unrouteDevices(devices: $d) }",
        json!({ "d": [A_MAC] }),
    );
    route(&agent, &x, &["192.0.2.0/28"]);
    assert!(
        !net.router.ip(&["rule", "show"]).contains("192.0.2.0/28"),
        "{}",
        net.router.ip(&["rule", "show"])
    );
    assert!(net.curl(&net.a, "a.txt").is_some());
    assert_eq!(net.last_source("a.txt"), PROXY_OUT_X);
    let ping_router = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.a.name,
            "ping",
            "-c1",
            "-W2",
            "192.0.2.1",
        ])
        .output()
        .unwrap();
    assert!(ping_router.status.success(), "the router answers A");

    // Uninstall takes its routes away (after the service), and everything is as it was.
    agent.uninstall(&x);
    assert!(net.curl(&net.a, "a.txt").is_some());
    assert_eq!(net.last_source("a.txt"), WAN_ROUTER);
    agent.uninstall(&y);
    assert_eq!(
        agent.data("{ deviceRoutes { device } }", json!({}))["deviceRoutes"],
        json!([])
    );
    assert!(
        !net.boot_rules().exists(),
        "nothing routed: nothing kept for the boot"
    );
    assert_eq!(
        net.router_state(),
        baseline,
        "the router's rules, routes and ruleset are as they were"
    );
    let events = agent.log();
    assert!(
        events.contains("device.routed") || events.contains("routed through"),
        "{events}"
    );
}

/// How many connections the router's conntrack table holds from `src` to TCP port `port`
/// (read with conntrack-tools' `conntrack -L`).
fn tracked(net: &Net, src: &str, port: u16) -> usize {
    let family = if src.contains(':') { "ipv6" } else { "ipv4" };
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &net.router.name,
        "conntrack",
        "-L",
        "-f",
        family,
        "-p",
        "tcp",
        "-s",
        src,
        "--dport",
        &port.to_string(),
    ]);
    out.lines().filter(|l| l.contains("ESTABLISHED")).count()
}

/// A device's connections from before it was routed are ended: deleted from the router's
/// conntrack table, where a flowtable (fw4's flow offloading) would keep them on their
/// direct path (tests/vm.rs shows that with a real flowtable; this host kernel has none).
/// Its IPv6 ones too, found through the router's neighbour table; nobody else's, and not
/// its connections to the router itself.
#[test]
fn routing_a_device_ends_the_connections_it_had_before() {
    use std::net::{TcpListener, TcpStream};
    let net = net("ct");
    // Like fw4: an inet table with connection tracking, so IPv6 is tracked too.
    let owner = net.root.path().join("owner-ct.nft");
    std::fs::write(&owner, "table inet owner_ct {\n chain forward_ct {\n  type filter hook forward priority filter; policy accept;\n  ct state established,related counter accept\n }\n}\n").unwrap();
    net.nft(&["-f", &owner.display().to_string()]);
    let agent = net.agent();
    let x = install(&agent, "x", 8388);
    const V6_SERVER: &str = "2001:db8:2::2";
    let _servers = net
        .internet
        .run(|| [WAN_SERVER, V6_SERVER].map(|a| TcpListener::bind((a, 9100)).unwrap()));
    let _router_page = net
        .router
        .run(|| TcpListener::bind(("192.0.2.1", 9101)).unwrap());
    let open =
        |ns: &TestNetns, to: &str, port: u16| ns.run(|| TcpStream::connect((to, port)).unwrap());
    let _held: Vec<TcpStream> = vec![
        open(&net.a, WAN_SERVER, 9100),
        open(&net.a, V6_SERVER, 9100),
        open(&net.b, WAN_SERVER, 9100),
        open(&net.b, V6_SERVER, 9100),
        open(&net.b, "192.0.2.1", 9101),
    ];
    let (a6, b6) = ("2001:db8:1::10", "2001:db8:1::20");
    for (src, port) in [(A, 9100), (a6, 9100), (B, 9100), (b6, 9100)] {
        assert_eq!(
            tracked(&net, src, port),
            1,
            "control: {src} tracked before routing"
        );
    }
    route(&agent, &x, &[A]);
    assert_eq!(
        tracked(&net, A, 9100),
        0,
        "A's connection ended\n{}",
        agent.log()
    );
    assert_eq!(
        tracked(&net, a6, 9100),
        0,
        "A's IPv6 connection ended (its MAC's neighbour)"
    );
    assert_eq!(tracked(&net, B, 9100), 1, "B's untouched");
    assert_eq!(tracked(&net, b6, 9100), 1, "B's IPv6 untouched");
    assert!(
        agent.log().contains("ended 2 connection(s)"),
        "{}",
        agent.log()
    );
    // A change that routes nobody new ends nothing.
    route(&agent, &x, &[A]);
    assert_eq!(tracked(&net, B, 9100), 1);
    // B by its MAC address: its IPv4 and IPv6 connections, not the one to the router.
    route(&agent, &x, &[A, B_MAC]);
    assert_eq!(
        tracked(&net, B, 9100),
        0,
        "B's connection ended\n{}",
        agent.log()
    );
    assert_eq!(tracked(&net, b6, 9100), 0, "B's IPv6 connection ended");
    assert_eq!(
        tracked(&net, B, 9101),
        1,
        "B's connection to the router itself stays"
    );
    agent.uninstall(&x);
}

/// Debian's v2ray standing in for Xray: the same transparent path through its generator.
#[test]
fn v2ray_routes_devices_transparently_too() {
    let net = net("routev2");
    std::fs::copy("/usr/bin/v2ray", net.www.join("v2ray")).unwrap();
    let feature = json!({ "id": "xray", "name": "Xray (V2Ray 4 here)", "version": "4.34.0", "binary": "v2ray", "config": "xray",
        "service": { "args": ["-config", "{config}"], "check": ["-test", "-config", "{config}"] },
        "assets": { "x86_64": { "url": net.nginx.url("v2ray"), "sha256": common::sha256_file(&net.www.join("v2ray")) } } });
    let catalogue = common::write_catalogue(net.root.path(), &[feature]);
    let agent = net.start_agent(&catalogue);
    let baseline = net.router_state();
    let v2 = agent.install_with(
        "xray",
        "lan",
        json!({
            "dnsUpstream": WAN_SERVER,
            "outbound": { "type": "shadowsocks", "server": PROXY, "serverPort": 8389,
                          "method": "aes-128-gcm", "password": "nnc-test-password" }
        }),
    );
    running(&agent, &v2);
    route(&agent, &v2, &[A]);
    assert_eq!(
        net.curl(&net.a, "a.txt").as_deref(),
        Some("a.txt from the internet\n")
    );
    assert_eq!(net.last_source("a.txt"), PROXY_OUT_Y, "{}", agent.log());
    let router_log = net.dns_log("router");
    assert_eq!(
        net.dig(&net.a, "192.0.2.1", false).as_deref(),
        Some("203.0.113.80")
    );
    assert_eq!(
        net.dns_log("router"),
        router_log,
        "the router's resolver saw A's query"
    );
    assert!(net.curl(&net.b, "b.txt").is_some());
    assert_eq!(net.last_source("b.txt"), WAN_ROUTER);
    agent.uninstall(&v2);
    assert!(net.curl(&net.a, "a.txt").is_some());
    assert_eq!(net.last_source("a.txt"), WAN_ROUTER);
    assert_eq!(net.router_state(), baseline);
}

/// Benchmark, not a test (run by `tests/bench/run.sh`; asserts no timing): A through a
/// routed sing-box vs B direct in the same run. Added latency per request (median and p99 of
/// 200 `curl`s) and one 100 MB transfer each way, as ratios; then the rules the agent made.
#[test]
#[ignore = "benchmark: tests/bench/run.sh runs it"]
fn bench_routed_vs_direct() {
    let net = net("routebench");
    let agent = net.agent();
    let x = install(&agent, "x", 8388);
    route(&agent, &x, &[A]);
    let big = net.www.join("big.bin");
    run(&[
        "dd",
        "if=/dev/urandom",
        &format!("of={}", big.display()),
        "bs=1M",
        "count=100",
        "status=none",
    ]);
    // One curl from a LAN client, reporting `what` (curl's -w variable); `extra` before the URL.
    let measure = |client: &TestNetns, what: &str, extra: &[&str], url: &str| -> f64 {
        let head = [
            "ip",
            "netns",
            "exec",
            &client.name,
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            what,
            "--max-time",
            "60",
        ];
        let out = run(&[&head[..], extra, &[url]].concat());
        out.trim().parse::<f64>().unwrap()
    };
    let times = |client: &TestNetns, what: &str, file: &str, n: usize| -> Vec<f64> {
        let url = format!("http://{WAN_SERVER}:{}/{file}", net.nginx.port);
        let mut t: Vec<f64> = (0..n).map(|_| measure(client, what, &[], &url)).collect();
        t.sort_by(f64::total_cmp);
        t
    };
    let pct = |t: &[f64], p: f64| t[((t.len() as f64 - 1.0) * p).round() as usize];
    let (a, b) = (
        times(&net.a, "%{time_total}", "a.txt", 200),
        times(&net.b, "%{time_total}", "a.txt", 200),
    );
    println!(
        "request latency, 200 each: routed A median {:.2} ms p99 {:.2} ms; direct B median {:.2} ms p99 {:.2} ms; ratio median {:.2} p99 {:.2}",
        pct(&a, 0.5) * 1e3,
        pct(&a, 0.99) * 1e3,
        pct(&b, 0.5) * 1e3,
        pct(&b, 0.99) * 1e3,
        pct(&a, 0.5) / pct(&b, 0.5),
        pct(&a, 0.99) / pct(&b, 0.99)
    );
    let (a, b) = (
        times(&net.a, "%{speed_download}", "big.bin", 1)[0],
        times(&net.b, "%{speed_download}", "big.bin", 1)[0],
    );
    println!(
        "100 MB download: routed A {:.1} MB/s, direct B {:.1} MB/s, ratio {:.2}",
        a / 1e6,
        b / 1e6,
        a / b
    );
    // Upload: the LAN client PUTs 100 MB to a sink in the "internet" (Python's http.server,
    // reading the whole body before it answers 204).
    let sink_port = common::free_port();
    let sink = "import http.server, sys\nclass H(http.server.BaseHTTPRequestHandler):\n  def do_PUT(self):\n    left = int(self.headers.get('Content-Length', 0))\n    while left > 0:\n      b = self.rfile.read(min(left, 1 << 20))\n      if not b: break\n      left -= len(b)\n    self.send_response(204); self.end_headers()\n  def log_message(self, *a): pass\nhttp.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H).serve_forever()\n";
    let mut sink = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.internet.name,
            "python3",
            "-c",
            sink,
            WAN_SERVER,
        ])
        .arg(sink_port.to_string())
        .spawn()
        .unwrap();
    common::wait_until("the upload sink", Duration::from_secs(10), || {
        net.internet
            .run(|| std::net::TcpStream::connect((WAN_SERVER, sink_port)).is_ok())
    });
    let url = format!("http://{WAN_SERVER}:{sink_port}/upload");
    let big = big.display().to_string();
    let up = |client: &TestNetns| measure(client, "%{speed_upload}", &["-T", &big], &url);
    let (a, b) = (up(&net.a), up(&net.b));
    let _ = sink.kill();
    let _ = sink.wait();
    println!(
        "100 MB upload: routed A {:.1} MB/s, direct B {:.1} MB/s, ratio {:.2}",
        a / 1e6,
        b / 1e6,
        a / b
    );
    println!(
        "the agent's rules:\n{}",
        run(&[
            "ip",
            "netns",
            "exec",
            &net.router.name,
            "nft",
            "list",
            "table",
            "inet",
            "nnc_agent"
        ])
    );
    println!("{}", net.router.ip(&["rule", "show"]));
    agent.uninstall(&x);
}

/// Tor cannot bootstrap offline, so what is proved is arrival: A's TCP is held by tor on its
/// TransPort (never direct), A's DNS to the router reaches tor's DNSPort, not the router.
#[test]
fn tor_takes_routed_devices_tcp_on_its_transport_and_dns_on_its_dnsport() {
    let net = net("routetor");
    std::fs::copy("/usr/sbin/tor", net.www.join("tor")).unwrap();
    let feature = json!({ "id": "tor", "name": "Tor", "version": "0.4", "binary": "tor", "config": "tor",
        "assets": { "x86_64": { "url": net.nginx.url("tor"), "sha256": common::sha256_file(&net.www.join("tor")) } } });
    let catalogue = common::write_catalogue(net.root.path(), &[feature]);
    let agent = net.start_agent(&catalogue);
    let tor = agent.install_with("tor", "lan", json!({}));
    let p = running(&agent, &tor);
    let service = p["interface"]["serviceAddress"]
        .as_str()
        .unwrap()
        .to_owned();
    let netns = p["interface"]["netns"].as_str().unwrap().to_owned();
    route(&agent, &tor, &[A]);
    let inside = |args: &[&str]| run(&[&["nsenter", &format!("--net={netns}")][..], args].concat());
    let url = format!("http://{WAN_SERVER}:{}/a.txt", net.nginx.port);
    let mut curl = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.a.name,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "20",
            &url,
        ])
        .spawn()
        .unwrap();
    // Redirected connections reach tor from the router's side of the segment (.1), which its
    // SocksPolicy (private addresses) accepts although A is numbered from 192.0.2.0/24.
    let want = format!("{service}:9040");
    let mut seen = String::new();
    let held = (0..150).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        seen = inside(&["ss", "-tanH"]);
        // tor's end (peer: the router's side, with A's source port) and A's end of it.
        let ports: Vec<String> = seen
            .lines()
            .filter(|l| l.starts_with("ESTAB") && l.contains(&want))
            .filter_map(|l| {
                l.split_whitespace()
                    .nth(4)?
                    .rsplit_once(':')
                    .map(|(_, p)| p.to_owned())
            })
            .collect();
        let mine = run(&["ip", "netns", "exec", &net.a.name, "ss", "-tanH"]);
        ports.iter().any(|p| {
            mine.lines().any(|l| {
                l.starts_with("ESTAB") && l.contains(&format!("{A}:{p} ")) && l.contains(WAN_SERVER)
            })
        })
    });
    assert!(
        held,
        "A's connection is held by tor on its TransPort: {seen}\n{}\nA: {}\ntor: {}",
        inside(&["nft", "list", "table", "ip", "nnc_agent"]),
        run(&["ip", "netns", "exec", &net.a.name, "ss", "-tanH"]),
        agent.data(
            "query($i: ID!) { instanceLogs(id: $i, tail: 40) }",
            json!({ "i": tor })
        )
    );
    let _ = curl.kill();
    let _ = curl.wait();
    assert!(
        net.sources("a.txt").is_empty(),
        "nginx saw A: {:?}",
        net.sources("a.txt")
    );

    let router_log = net.dns_log("router");
    let _ = net.dig(&net.a, "192.0.2.1", false);
    let table = inside(&["nft", "list", "table", "ip", "nnc_agent"]);
    let dns_rule = table
        .lines()
        .find(|l| l.contains("dport 53"))
        .unwrap_or_default();
    assert!(
        dns_rule.contains("counter packets") && !dns_rule.contains("counter packets 0 "),
        "A's DNS query was redirected to tor's DNSPort: {table}"
    );
    assert!(
        inside(&["ss", "-ulnpH"])
            .lines()
            .any(|l| l.contains(&format!("{service}:9053")) && l.contains("tor")),
        "tor listens on its DNSPort"
    );
    assert_eq!(
        net.dns_log("router"),
        router_log,
        "the router's resolver saw A's query"
    );
    agent.uninstall(&tor);
}
