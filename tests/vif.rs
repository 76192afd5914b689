//! The Linux interface factory against the real kernel, in a network namespace of the test's
//! own (the host has veth, bridges, routes and namespaces but no 8021q, so the VLAN device is
//! a veth pair here; tests/vm.rs makes the real VLAN in a VM). Every object is made with
//! netlink by the agent and inspected with iproute2.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::feed::Feed;
use common::{Agent, TestNetns, run_ok};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

struct Setup {
    ns: TestNetns,
    feed: Feed,
    rt_tables: PathBuf,
    /// Where this test's agents put service namespaces (not the shared /run/netns, so that
    /// tests running side by side do not see each other's).
    netns_dir: PathBuf,
}

fn setup(tag: &str) -> Setup {
    let ns = TestNetns::new(tag);
    let feed = Feed::tool(tag, Some(&ns));
    let rt_tables = feed.path().join("rt_tables.d/nnc.conf");
    let netns_dir = feed.path().join("netns");
    Setup {
        ns,
        feed,
        rt_tables,
        netns_dir,
    }
}

impl Setup {
    fn toml(&self, pool: [u16; 2]) -> String {
        format!(
            "[vlan]\nmode = \"veth\"\npool = [{}, {}]\nrt_tables = {:?}\nnetns_dir = {:?}\n",
            pool[0],
            pool[1],
            self.rt_tables.display().to_string(),
            self.netns_dir.display().to_string()
        )
    }

    fn agent(&self, dir: &str, pool: [u16; 2], failpoints: &str) -> Agent {
        self.feed
            .agent(dir, &self.toml(pool), Some(&self.ns), failpoints)
    }

    /// Everything an interface could leave behind, as iproute2 prints it.
    fn snapshot(&self) -> String {
        let netns: Vec<String> = std::fs::read_dir(&self.netns_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("nnc-"))
            .collect();
        format!(
            "links {}\naddrs {}\nroutes {}\nrules {}\nnetns {netns:?}\nrt_tables {:?}\n",
            self.ns.ip(&["-j", "-d", "link", "show"]),
            self.ns.ip(&["-j", "addr", "show"]),
            self.ns.ip(&["-j", "route", "show", "table", "all"]),
            self.ns.ip(&["-j", "rule", "show"]),
            std::fs::read_to_string(&self.rt_tables)
                .ok()
                .map(|t| t
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect::<Vec<_>>())
                .unwrap_or_default()
        )
    }

    fn link(&self, name: &str) -> Option<Value> {
        let v: Value = serde_json::from_str(&self.ns.ip(&["-j", "-d", "link", "show"])).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .find(|l| l["ifname"] == name)
            .cloned()
    }

    fn nnc_links(&self) -> Vec<String> {
        let v: Value = serde_json::from_str(&self.ns.ip(&["-j", "link", "show"])).unwrap();
        let mut names: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| {
                l["ifname"]
                    .as_str()
                    .filter(|n| n.starts_with("nnc"))
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        names
    }
}

/// A command run inside a service namespace of this test.
fn in_service(s: &Setup, netns: &str, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", s.netns_dir.join(netns).display()))
        .args(args);
    c
}

#[test]
fn segments_are_routable_pool_limited_and_removed_without_a_trace() {
    let s = setup("vif");
    let agent = s.agent("agent", [100, 101], "");
    let before = s.snapshot();

    let a = agent.install("tool", "a");
    let ia = agent.wait_done(&a, TIMEOUT);
    assert_eq!(ia["status"], "INSTALLED", "{ia}\n{}", agent.log());
    let iface = &ia["interface"];
    assert_eq!(iface["status"], "ACTIVE");
    assert_eq!(iface["vlanId"], 100);
    assert_eq!(iface["name"], "nnc100");
    assert_eq!(iface["alias"], "nnc-tool-a");
    assert_eq!(iface["address"], "10.99.100.1/24");
    assert_eq!(iface["serviceAddress"], "10.99.100.2");
    assert_eq!(iface["routingTable"], "nnc-tool-a");
    let netns = format!("nnc-{a}");
    assert_eq!(
        iface["netns"],
        s.netns_dir.join(&netns).display().to_string()
    );

    // The objects, as the kernel has them.
    let bridge = s.link("nnc100").expect("bridge nnc100");
    assert_eq!(bridge["linkinfo"]["info_kind"], "bridge");
    assert_eq!(bridge["ifalias"], format!("nnc-tool-a nnc:{a}"));
    for port in ["nnc100v", "nnc100h"] {
        assert_eq!(
            s.link(port).unwrap_or_else(|| panic!("{port}"))["master"],
            "nnc100",
            "{port}"
        );
    }
    assert!(
        s.ns.ip(&["-4", "addr", "show", "dev", "nnc100"])
            .contains("10.99.100.1/24")
    );
    let table = s.ns.ip(&["route", "show", "table", "1100"]);
    assert!(
        table.contains("default via 10.99.100.2 dev nnc100"),
        "{table}"
    );
    let rt = std::fs::read_to_string(&s.rt_tables).unwrap();
    assert!(rt.lines().any(|l| l == "1100\tnnc-tool-a"), "{rt}");
    let inside = run_ok(&mut in_service(
        &s,
        &netns,
        &["ip", "-4", "addr", "show", "dev", "eth0"],
    ));
    assert!(inside.contains("10.99.100.2/24"), "{inside}");
    let inside_routes = run_ok(&mut in_service(&s, &netns, &["ip", "route"]));
    assert!(
        inside_routes.contains("default via 10.99.100.1 dev eth0"),
        "{inside_routes}"
    );
    // The segment carries traffic both ways: service -> router and router -> service.
    run_ok(&mut in_service(
        &s,
        &netns,
        &["ping", "-c", "1", "-W", "3", "10.99.100.1"],
    ));
    run_ok(Command::new("ip").args([
        "netns",
        "exec",
        &s.ns.name,
        "ping",
        "-c",
        "1",
        "-W",
        "3",
        "10.99.100.2",
    ]));

    // A second instance gets the next VLAN id; a third finds the pool exhausted, makes nothing.
    let b = agent.install("tool", "b");
    assert_eq!(agent.wait_done(&b, TIMEOUT)["interface"]["vlanId"], 101);
    let c = agent.install("tool", "c");
    let ic = agent.wait_done(&c, TIMEOUT);
    assert_eq!(ic["status"], "FAILED", "{ic}");
    assert_eq!(ic["failedStep"], "provisioning");
    assert_eq!(ic["errorCode"], "VLAN_POOL_EXHAUSTED");
    assert!(ic["interface"].is_null());
    assert_eq!(
        s.nnc_links(),
        [
            "nnc100", "nnc100h", "nnc100l", "nnc100v", "nnc101", "nnc101h", "nnc101l", "nnc101v"
        ]
    );

    // Removing one frees its id for the next instance.
    agent.uninstall(&a);
    assert!(
        s.link("nnc100").is_none() && s.link("nnc100v").is_none() && s.link("nnc100h").is_none()
    );
    assert!(!s.netns_dir.join(&netns).exists());
    assert!(
        !std::fs::read_to_string(&s.rt_tables)
            .unwrap()
            .contains("nnc-tool-a")
    );
    agent.uninstall(&c);
    let d = agent.install("tool", "d");
    assert_eq!(agent.wait_done(&d, TIMEOUT)["interface"]["vlanId"], 100);
    agent.uninstall(&b);
    agent.uninstall(&d);
    assert_eq!(
        s.snapshot(),
        before,
        "uninstalling everything must restore the namespace"
    );
    let events = agent.log();
    assert!(events.contains("interface.created") && events.contains("interface.removed"));
}

#[test]
fn a_failure_at_any_step_leaves_the_namespace_as_it_was() {
    let s = setup("vifstep");
    for step in 1..=7 {
        let mut agent = s.agent(
            &format!("agent{step}"),
            [100, 199],
            &format!("vif.create.{step}=error"),
        );
        let before = s.snapshot();
        let id = agent.install("tool", "x");
        let inst = agent.wait_done(&id, TIMEOUT);
        assert_eq!(inst["status"], "FAILED", "step {step}: {inst}");
        assert_eq!(inst["failedStep"], "provisioning", "step {step}");
        assert!(
            inst["error"]
                .as_str()
                .unwrap()
                .contains(&format!("vif.create.{step}")),
            "{inst}"
        );
        assert!(inst["interface"].is_null(), "step {step}");
        assert_eq!(
            agent.data("{ interfaces { name } }", json!({}))["interfaces"],
            json!([])
        );
        assert_eq!(
            s.snapshot(),
            before,
            "step {step}: the namespace differs after the rollback\n{}",
            agent.log()
        );
        let rolled_back = agent.log().matches("rolled back").count();
        assert_eq!(
            rolled_back,
            match step {
                1 => 0,
                2 => 1,
                3 => 2,
                4 => 3,
                5 => 4,
                6 => 5,
                // 6 added the route and the table's name
                _ => 7,
            },
            "step {step}"
        );
        agent.kill9();
    }
}

#[test]
fn kill_9_during_provisioning_is_repaired_at_the_next_start() {
    let s = setup("vifkill");
    let mut agent = s.agent("agent", [100, 199], "vif.create.5=abort");
    let before = s.snapshot();
    let id = agent.install("tool", "k");
    assert!(agent.wait_exit(TIMEOUT), "the abort failpoint did not fire");
    // Half made: segment, bridge, address and namespace exist.
    assert!(s.link("nnc100").is_some() && s.link("nnc100v").is_some());
    assert!(s.netns_dir.join(format!("nnc-{id}")).exists());

    agent.restart_with(&[]);
    let inst = agent.wait_done(&id, TIMEOUT);
    assert_eq!(inst["status"], "INSTALLED", "{inst}\n{}", agent.log());
    assert_eq!(inst["interface"]["status"], "ACTIVE");
    assert!(
        agent.log().contains("was left Creating; rolling it back"),
        "{}",
        agent.log()
    );
    assert_eq!(
        s.nnc_links(),
        ["nnc100", "nnc100h", "nnc100l", "nnc100v"],
        "exactly one complete segment"
    );
    agent.uninstall(&id);
    assert_eq!(s.snapshot(), before);

    // Objects nobody owns (the state was lost with the crash) are removed at start.
    agent.kill9();
    let mut orphaned = s.agent("agent2", [100, 199], "vif.create.6=abort");
    let id = orphaned.install("tool", "o");
    assert!(orphaned.wait_exit(TIMEOUT));
    assert!(s.link("nnc100").is_some());
    std::fs::remove_file(orphaned.data_dir.join("state.redb")).unwrap();
    orphaned.restart_with(&[]);
    common::wait_until("orphans removed", TIMEOUT, || s.link("nnc100").is_none());
    assert!(orphaned.log().contains(&format!(
        "removing objects tagged nnc:{id} that no record owns"
    )));
    assert_eq!(s.snapshot(), before);
}

#[test]
fn vanished_objects_of_an_active_interface_are_recreated_at_start() {
    let s = setup("vifgone");
    let mut agent = s.agent("agent", [100, 199], "");
    let id = agent.install("tool", "g");
    assert_eq!(agent.wait_done(&id, TIMEOUT)["status"], "INSTALLED");
    agent.kill9();
    // Someone deleted the bridge (and with it the address and the table's route).
    s.ns.ip(&["link", "del", "nnc100"]);
    assert!(s.link("nnc100").is_none());
    agent.restart();
    common::wait_until("bridge recreated", TIMEOUT, || s.link("nnc100").is_some());
    assert!(
        agent.log().contains("vanished; recreating"),
        "{}",
        agent.log()
    );
    let inst = agent.instance(&id);
    assert_eq!(inst["interface"]["status"], "ACTIVE", "{inst}");
    assert_eq!(s.nnc_links(), ["nnc100", "nnc100h", "nnc100l", "nnc100v"]);
    let table = s.ns.ip(&["route", "show", "table", "1100"]);
    assert!(
        table.contains("default via 10.99.100.2 dev nnc100"),
        "{table}"
    );
    agent.uninstall(&id);
}

#[test]
fn vlan_mode_needs_8021q_and_says_so() {
    let s = setup("vif8021q");
    s.ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
    let toml = format!(
        "[vlan]\nmode = \"vlan\"\nparent = \"p0\"\nrt_tables = {:?}\nnetns_dir = {:?}\n",
        s.rt_tables.display().to_string(),
        s.netns_dir.display().to_string()
    );
    let agent = Agent::start_in(
        &s.feed.path().join("agent"),
        &s.feed.catalogue,
        &toml,
        Some(&s.ns),
        &[],
    );
    let id = agent.install("tool", "v");
    let inst = agent.wait_done(&id, TIMEOUT);
    if std::path::Path::new("/sys/module/8021q").exists() {
        // A kernel with VLAN support makes the real VLAN device on the parent.
        assert_eq!(inst["status"], "INSTALLED", "{inst}");
        let vlan = s.link("nnc100v").unwrap();
        assert_eq!(vlan["linkinfo"]["info_data"]["id"], 100);
    } else {
        // This host's kernel has no 8021q (the VM tests make real VLANs).
        assert_eq!(inst["status"], "FAILED", "{inst}");
        assert_eq!(inst["failedStep"], "provisioning");
        let e = inst["error"].as_str().unwrap();
        assert!(
            e.contains("no 802.1Q VLAN support") && e.contains("8021q"),
            "{e}"
        );
        assert!(s.link("nnc100v").is_none() && s.link("nnc100").is_none());
    }
}

/// Why services get no routing mark (and so no CAP_NET_ADMIN for one): the kernel clears a
/// packet's mark when it crosses a veth into another namespace. The router side here routes
/// marked packets to `prohibit`; a ping marked inside the "service" namespace still gets an
/// answer, while the same mark set on the router side is refused.
#[test]
fn a_socket_mark_set_in_a_service_namespace_does_not_cross_its_veth() {
    let service = TestNetns::new("mark-svc");
    let router = TestNetns::new("mark-rtr");
    run_ok(Command::new("ip").args([
        "-n",
        &service.name,
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "h0",
        "netns",
        &router.name,
    ]));
    service.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"]);
    service.ip(&["link", "set", "eth0", "up"]);
    router.ip(&["addr", "add", "198.51.100.1/24", "dev", "h0"]);
    router.ip(&["link", "set", "h0", "up"]);
    router.ip(&["rule", "add", "fwmark", "1105", "lookup", "1105"]);
    router.ip(&["route", "add", "prohibit", "default", "table", "1105"]);
    router.ip(&[
        "route",
        "add",
        "prohibit",
        "198.51.100.0/24",
        "table",
        "1105",
    ]);
    let ping = |ns: &TestNetns, mark: Option<&str>, to: &str| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name, "ping", "-c1", "-W2"]);
        if let Some(m) = mark {
            c.args(["-m", m]);
        }
        c.arg(to).output().unwrap().status.success()
    };
    assert!(ping(&service, None, "198.51.100.1"));
    assert!(
        ping(&service, Some("1105"), "198.51.100.1"),
        "a mark set in the service namespace reached the router's policy rules"
    );
    assert!(
        !ping(&router, Some("1105"), "198.51.100.2"),
        "control: on the router side the same mark is routed to prohibit"
    );
}

/// Installs provisioned at the same moment each get their segment and their routing table's
/// name (they once raced on the one `rt_tables.d` file and one of them failed).
#[test]
fn segments_provisioned_at_once_all_succeed() {
    let s = setup("vif-race");
    let agent = s.agent("agent", [100, 199], "");
    let ids: Vec<String> = (0..4)
        .map(|i| agent.install("tool", &format!("t{i}")))
        .collect();
    for id in &ids {
        let done = agent.wait_done(id, TIMEOUT);
        assert_eq!(done["status"], "INSTALLED", "{done}");
    }
    let names = std::fs::read_to_string(&s.rt_tables).unwrap();
    for i in 0..4 {
        assert!(names.contains(&format!("nnc-tool-t{i}")), "{names}");
    }
    for id in &ids {
        agent.uninstall(id);
    }
}
