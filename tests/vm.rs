//! The agent on real kernels: Debian's x86_64, arm64 and mipsel (malta) kernels booted under
//! QEMU (TCG) by `cross/vm/run.py`, with the cross-built static binaries from `dist/` (built by
//! `cross/build.sh`). In each VM the agent starts as the router's service; from the host a real
//! client reaches its GraphQL API through QEMU's hostfwd; the guest proves the kernel offers
//! 8021q VLANs and cgroup v2 memory/pids/cpu. In the x86_64 VM the agent also provisions a real
//! VLAN for an installed feature, and removes it again, carries LAN traffic through sing-box
//! over it, and routes a plain LAN client through it by its MAC address (device routing, with
//! the host's nft), ending the connection the owner's flowtable had offloaded.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

fn dist_binary(target: &str) -> PathBuf {
    let dist = std::env::var("NNC_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("dist"));
    let bin = dist.join(target).join("nnc-agent");
    assert!(
        bin.exists(),
        "{} is missing: run cross/build.sh {target} first",
        bin.display()
    );
    bin
}

/// The guest's API through hostfwd.
struct Guest {
    port: u16,
    token: String,
}

impl Guest {
    fn post(&self, token: Option<&str>, query: &str, variables: Value) -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent
            .post(&format!("http://127.0.0.1:{}/graphql", self.port))
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", &format!("Bearer {t}"));
        }
        let mut resp = req
            .send(json!({ "query": query, "variables": variables }).to_string())
            .expect("POST through hostfwd");
        let status = resp.status().as_u16();
        (
            status,
            serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap(),
        )
    }

    fn data(&self, query: &str, variables: Value) -> Value {
        let (status, v) = self.post(Some(&self.token), query, variables);
        assert_eq!(status, 200, "{v}");
        assert!(v.get("errors").is_none(), "{v}");
        v["data"].clone()
    }
}

/// Boots one VM with `script`; `on_ready(n, guest)` runs on the host each time the guest
/// waits for it and returns the line the guest gets. Returns all events.
fn boot(
    arch: &str,
    target: &str,
    script: &str,
    files: &[String],
    on_ready: impl FnMut(u64, &Guest) -> String,
) -> Vec<Value> {
    boot_with(arch, target, script, files, "", on_ready)
}

/// `boot` with extra kernel modules loaded in the guest.
fn boot_with(
    arch: &str,
    target: &str,
    script: &str,
    files: &[String],
    modules: &str,
    mut on_ready: impl FnMut(u64, &Guest) -> String,
) -> Vec<Value> {
    let root = common::TempDir::new(&format!("vm-{arch}"));
    let log = root.path().join("console.log");
    let mut cmd = Command::new("python3");
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("cross/vm/run.py"))
        .args(["--arch", arch, "--timeout", "300", "--script"])
        .arg(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/vm")
                .join(script),
        )
        .arg("--agent")
        .arg(dist_binary(target))
        .arg("--log")
        .arg(&log);
    if !modules.is_empty() {
        cmd.args(["--modules", modules]);
    }
    for f in files {
        cmd.args(["--file", f]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cross/vm/run.py");
    let mut stdin = child.stdin.take().unwrap();
    let events: Vec<Value> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap())
        .inspect(|ev| {
            eprintln!("[{arch}] {ev}");
            if ev["event"] == "ready" {
                let guest = Guest {
                    port: u16::try_from(ev["port"].as_u64().unwrap()).unwrap(),
                    token: ev["token"].as_str().unwrap().to_owned(),
                };
                let line = on_ready(ev["n"].as_u64().unwrap(), &guest);
                writeln!(stdin, "{line}").unwrap();
            }
        })
        .collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "run.py failed");
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    let end = events
        .iter()
        .find(|e| e["event"] == "end")
        .expect("end event");
    assert_eq!(end["rc"], 0, "qemu exit: {end}\n{console}");
    let results = end["results"].as_array().unwrap();
    let failed: Vec<&Value> = results.iter().filter(|r| r["ok"] != true).collect();
    assert!(
        failed.is_empty(),
        "{arch}: guest checks failed: {failed:?}\n{console}"
    );
    let starts: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "timing")
        .map(|t| format!("{} s", t["exec_to_serving_s"]))
        .collect();
    assert!(!starts.is_empty(), "no timing from the guest");
    eprintln!(
        "[{arch}] launch->init {:.1} s, exec->serving {} (first start, then on the same data dir), launch->power-off {} s",
        events.iter().find(|e| e["event"] == "boot").unwrap()["seconds"]
            .as_f64()
            .unwrap(),
        starts.join(", "),
        end["seconds"]
    );
    for m in events.iter().filter(|e| e["event"] == "guest_memory") {
        eprintln!(
            "[{arch}] agent memory: {}",
            m["info"].as_str().unwrap_or_default()
        );
    }
    events
}

fn result_names(events: &[Value]) -> Vec<String> {
    events.iter().find(|e| e["event"] == "end").unwrap()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Host side of basic.sh: GraphQL through hostfwd with ureq and with the gql client.
/// Every named guest check ran (that each passed, `boot` asserts).
fn assert_results(events: &[Value], want: &[&str]) {
    let names = result_names(events);
    for name in want {
        assert!(
            names.iter().any(|n| n == name),
            "no result {name}: {names:?}"
        );
    }
}

fn serve_check(arch_key: &str, board: &str) -> impl FnMut(u64, &Guest) -> String {
    move |_, guest| {
        let v = guest.data(
            "{ agent { version arch board { name vlanParent vlanPool } } features { id } }",
            json!({}),
        );
        assert_eq!(v["agent"]["arch"], arch_key, "{v}");
        assert_eq!(v["agent"]["board"]["name"], board, "{v}");
        assert_eq!(v["features"].as_array().unwrap().len(), 3, "{v}");
        let (status, _) = guest.post(None, "{ instances { id } }", json!({}));
        assert_eq!(status, 401);
        let out = Command::new(common::python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/subscribe.py"))
            .args([
                &format!("http://127.0.0.1:{}/graphql", guest.port),
                &guest.token,
                "query",
                "{ agent { arch } instances { id } }",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "gql client: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["agent"]["arch"], arch_key);
        "finish".to_owned()
    }
}

fn basic(arch: &str, target: &str, arch_key: &str, board: &str) {
    let events = boot(arch, target, "basic.sh", &[], serve_check(arch_key, board));
    assert_results(
        &events,
        &[
            "vlan-create",
            "vlan-listed",
            "cgroup-memory",
            "cgroup-pids",
            "cgroup-cpu",
            "cgroup-limits",
            "agent-alive-after-host-queries",
        ],
    );
}

#[test]
fn x86_64_vm_serves_graphql_and_offers_vlans_and_cgroups() {
    basic("amd64", "x86_64-unknown-linux-musl", "x86_64", "x86_64-vm");
}

#[test]
fn aarch64_vm_serves_graphql_and_offers_vlans_and_cgroups() {
    basic(
        "arm64",
        "aarch64-unknown-linux-musl",
        "aarch64",
        "aarch64-vm",
    );
}

#[test]
fn mipsel_vm_serves_graphql() {
    basic("mipsel", "mipsel-unknown-linux-musl", "mipsel", "mt7621");
}

#[test]
fn x86_64_vm_provisions_a_real_vlan_and_removes_it() {
    let root = common::TempDir::new("vm-vlan");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    // Any x86_64 executable will do as the feature's binary: the agent's own.
    std::fs::copy(dist_binary("x86_64-unknown-linux-musl"), www.join("tool")).unwrap();
    let nginx = common::Nginx::start(&www, "");
    let catalogue = root.path().join("catalogue.json");
    std::fs::write(
        &catalogue,
        json!({ "schema": 1, "features": [ {
            "id": "tool", "name": "tool", "version": "1", "binary": "tool",
            "assets": { "x86_64": {
                // The guest reaches the host's loopback as 10.0.2.2 (QEMU user networking).
                "url": format!("http://10.0.2.2:{}/tool", nginx.port),
                "sha256": common::sha256_file(&www.join("tool")) } } } ] })
        .to_string(),
    )
    .unwrap();
    let mut id = String::new();
    let events = boot(
        "amd64",
        "x86_64-unknown-linux-musl",
        "vlan.sh",
        &[format!("{}=/etc/nnc/catalogue.json", catalogue.display())],
        |n, guest| match n {
            1 => {
                let d = guest.data("mutation { installFeature(featureId: \"tool\", routerId: \"local\", name: \"vm\") { instanceId } }", json!({}));
                id = d["installFeature"]["instanceId"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let mut inst = Value::Null;
                common::wait_until("install in the VM", Duration::from_secs(120), || {
                    inst = guest.data("query($id: ID!) { instance(id: $id) { status error interface { name vlanId address serviceAddress routingTable status } } }", json!({ "id": id }))["instance"].clone();
                    matches!(inst["status"].as_str(), Some("INSTALLED" | "FAILED"))
                });
                assert_eq!(inst["status"], "INSTALLED", "{inst}");
                assert_eq!(inst["interface"]["vlanId"], 100, "{inst}");
                assert_eq!(inst["interface"]["address"], "10.99.100.1/24");
                assert_eq!(inst["interface"]["status"], "ACTIVE");
                format!("check {id}")
            }
            2 => {
                guest.data(
                    "mutation($id: ID!) { uninstallInstance(id: $id) { instanceId } }",
                    json!({ "id": id }),
                );
                assert_eq!(
                    guest.data("{ interfaces { name } }", json!({}))["interfaces"],
                    json!([])
                );
                "removed".to_owned()
            }
            _ => "finish".to_owned(),
        },
    );
    assert_results(
        &events,
        &[
            "vlan-device",
            "table-route",
            "service-reaches-router",
            "router-reaches-service",
            "no-links",
            "no-netns",
            "no-table-route",
        ],
    );
    assert!(
        nginx
            .requests_for("/tool")
            .iter()
            .any(|l| l.contains(" 200 ")),
        "the guest never downloaded"
    );
}

#[test]
fn x86_64_vm_enforces_cgroup_limits_on_services() {
    let root = common::TempDir::new("vm-cgroup");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/bin/busybox", www.join("busybox")).unwrap();
    let nginx = common::Nginx::start(&www, "");
    let feature = |id: &str, script: &str| {
        json!({ "id": id, "name": id, "version": "1", "binary": "busybox",
                "service": { "args": ["sh", "-c", script], "health": { "exec": ["/bin/true"] } },
                "assets": { "x86_64": { "url": format!("http://10.0.2.2:{}/busybox", nginx.port),
                                        "sha256": common::sha256_file(&www.join("busybox")) } } })
    };
    let catalogue = root.path().join("catalogue.json");
    std::fs::write(
        &catalogue,
        json!({ "schema": 1, "features": [
            // dd's 64 MiB buffer, filled from /dev/zero, cannot fit a 16 MiB memory.max.
            feature("hog", "exec dd if=/dev/zero of=/dev/null bs=64M count=1000"),
            // A subshell forks until pids.max stops it (it may die of that); the service lives on.
            feature("bomb", "(i=0; while [ $i -lt 64 ]; do sleep 600 & i=$((i+1)); done); echo forked; exec sleep 600"),
            feature("capped", "exec sleep 600"),
        ] })
        .to_string(),
    )
    .unwrap();
    let config = root.path().join("nnc.toml");
    std::fs::write(
        &config,
        "board = \"x86_64-vm\"\nlisten = \"0.0.0.0:8080\"\ntoken_file = \"/etc/nnc/token\"\ncatalogue = \"/etc/nnc/catalogue.json\"\n\
         [vlan]\nmode = \"off\"\n[supervisor]\nbackoff_initial_secs = 0.3\ncrash_limit = 100\n",
    )
    .unwrap();
    let events = boot(
        "amd64",
        "x86_64-unknown-linux-musl",
        "cgroup.sh",
        &[
            format!("{}=/etc/nnc/catalogue.json", catalogue.display()),
            format!("{}=/etc/nnc/nnc.toml", config.display()),
        ],
        |n, guest| {
            if n > 1 {
                return "finish".to_owned();
            }
            assert_eq!(
                guest.data("{ agent { resourceLimits } }", json!({}))["agent"]["resourceLimits"],
                true
            );
            let install = |f: &str, settings: Value| {
                guest.data(
                    "mutation($f: ID!, $s: JSON) { installFeature(featureId: $f, routerId: \"local\", name: \"t\", settings: $s) { instanceId } }",
                    json!({ "f": f, "s": settings }),
                )["installFeature"]["instanceId"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            };
            let hog = install("hog", json!({ "memoryMax": 16777216 }));
            let bomb = install("bomb", json!({ "pidsMax": 16 }));
            let capped = install(
                "capped",
                json!({ "cpuMax": "25000 100000", "memoryMax": 33554432 }),
            );
            let process = |id: &str| {
                guest.data("query($id: ID!) { instance(id: $id) { status error process { state restartCount lastSignal lastExitCode } } }", json!({ "id": id }))["instance"].clone()
            };
            // The hog is OOM-killed (SIGKILL) in its cgroup, and restarted; the agent lives on.
            let mut last = Value::Null;
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while !(last["process"]["restartCount"].as_u64().unwrap_or(0) >= 2
                && last["process"]["lastSignal"] == 9)
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the hog was not OOM-killed and restarted: {last}\n{}",
                    guest.data(
                        "query($id: ID!) { instanceLogs(id: $id, tail: 5) }",
                        json!({ "id": hog })
                    )
                );
                std::thread::sleep(Duration::from_millis(200));
                last = process(&hog);
            }
            for id in [&bomb, &capped] {
                common::wait_until("RUNNING", Duration::from_secs(120), || {
                    process(id)["status"] == "RUNNING"
                });
            }
            format!("check {hog} {bomb} {capped}")
        },
    );
    assert_results(
        &events,
        &[
            "oom-killed-in-its-cgroup",
            "bomb-pids-capped",
            "bomb-forks-refused",
            "capped-cpu-max",
            "agent-alive",
        ],
    );
}

/// What device routing needs in the x86_64 guest: the host's `nft` with its libraries (same
/// architecture; the initramfs is busybox only), and the nftables modules.
/// With a flowtable (fw4's flow offloading) and ctnetlink, through which the agent ends the
/// connections a newly routed device had.
const NFT_MODULES: &str = "crc32c_generic nf_tables nft_chain_nat nft_nat nft_redir nft_ct nft_reject_inet nf_conntrack nf_nat nf_flow_table_inet nft_flow_offload nf_conntrack_netlink";

fn host_nft() -> Vec<String> {
    let out = Command::new("ldd")
        .arg("/usr/sbin/nft")
        .output()
        .expect("ldd");
    assert!(
        out.status.success(),
        "nft (Debian nftables) must be installed: run tests/setup.sh"
    );
    let mut files = vec!["/usr/sbin/nft=/sbin/nft".to_owned()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libx.so.1 => /lib/.../libx.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .last()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        if path.starts_with('/') {
            let real = std::fs::canonicalize(path).unwrap();
            files.push(format!("{}={path}", real.display()));
        }
    }
    files
}

#[test]
fn x86_64_vm_carries_lan_traffic_through_sing_box_over_a_real_vlan() {
    let root = common::TempDir::new("vm-traffic");
    let www = root.path().join("www");
    common::make_fixtures(
        &www,
        &[
            "singbox",
            common::singbox_binary("amd64").to_str().unwrap(),
            "1.14.4",
        ],
    );
    let nginx = common::Nginx::start(&www, "");
    let host = |p: &str| format!("http://10.0.2.2:{}/{p}", nginx.port);
    let catalogue = root.path().join("catalogue.json");
    std::fs::write(
        &catalogue,
        json!({ "schema": 1, "features": [ {
            "id": "sing-box", "name": "sing-box", "version": "1.14.4", "binary": "sing-box", "config": "sing-box",
            "assets": { "x86_64": { "url": host("sing-box-1.14.4-linux-amd64.tar.gz"), "checksums": host("checksums.txt"),
                                    "archive": "tar.gz", "path": "sing-box-1.14.4-linux-amd64/sing-box" } } } ] })
        .to_string(),
    )
    .unwrap();
    let config = root.path().join("nnc.toml");
    std::fs::write(
        &config,
        "board = \"x86_64-vm\"\nlisten = \"0.0.0.0:8080\"\ntoken_file = \"/etc/nnc/token\"\ncatalogue = \"/etc/nnc/catalogue.json\"\n\
         [vlan]\nmode = \"vlan\"\nparent = \"lan0\"\n",
    )
    .unwrap();
    let mut id = String::new();
    let mut files = vec![
        format!("{}=/etc/nnc/catalogue.json", catalogue.display()),
        format!("{}=/etc/nnc/nnc.toml", config.display()),
    ];
    files.extend(host_nft());
    let events = boot_with(
        "amd64",
        "x86_64-unknown-linux-musl",
        "traffic.sh",
        &files,
        NFT_MODULES,
        |n, guest| match n {
            1 => {
                let d = guest.data("mutation { installFeature(featureId: \"sing-box\", routerId: \"local\", name: \"vm\", settings: { mixedPort: 2080 }) { instanceId } }", json!({}));
                id = d["installFeature"]["instanceId"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                let mut inst = Value::Null;
                common::wait_until(
                    "sing-box running in the VM",
                    Duration::from_secs(200),
                    || {
                        inst = guest.data("query($id: ID!) { instance(id: $id) { status error interface { vlanId serviceAddress } } }", json!({ "id": id }))["instance"].clone();
                        matches!(inst["status"].as_str(), Some("RUNNING" | "FAILED"))
                    },
                );
                assert_eq!(inst["status"], "RUNNING", "{inst}");
                format!(
                    "check {} {}",
                    inst["interface"]["vlanId"],
                    inst["interface"]["serviceAddress"].as_str().unwrap()
                )
            }
            2 => {
                let d = guest.data(
                    "mutation($id: ID!) { routeDevices(instanceId: $id, devices: [\"02:00:5E:10:00:0A\"]) { device } }",
                    json!({ "id": id }),
                );
                assert_eq!(
                    d["routeDevices"],
                    json!([{ "device": "02:00:5e:10:00:0a" }])
                );
                "routed".to_owned()
            }
            3 => {
                guest.data(
                    "mutation($id: ID!) { uninstallInstance(id: $id) { instanceId } }",
                    json!({ "id": id }),
                );
                "removed".to_owned()
            }
            _ => "finish".to_owned(),
        },
    );
    assert_results(
        &events,
        &[
            "vlan-on-lan0",
            "lan-through-sing-box",
            "server-saw-the-service",
            "untagged-is-not-the-segment",
            "lan-direct-before-routing",
            "connection-offloaded",
            "offloaded-connection-ended",
            "routed-lan-through-sing-box",
            "routed-not-seen-directly",
            "unrouted-after-uninstall",
            "no-links",
            "agent-alive",
        ],
    );
}
