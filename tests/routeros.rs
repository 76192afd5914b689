//! The RouterOS backend against a protocol-faithful simulator (tests/routeros/sim.py, itself
//! checked against the third-party clients librouteros and routeros-api): the seed's four
//! objects on install, nothing left after a failure at any step, a dropped connection, or a
//! kill -9 mid-sequence; unreachable routers refused; TLS with a pinned certificate.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Agent, Nginx, TempDir, feature, sha256_file, write_catalogue};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);
const MENUS: [&str; 4] = [
    "/interface/vlan",
    "/ip/address",
    "/routing/table",
    "/ip/route",
];

struct Sim {
    port: u16,
    state: PathBuf,
    child: Child,
}

impl Sim {
    fn start(dir: &Path, args: &[&str]) -> Sim {
        let state = dir.join(format!("sim-{}.json", common::free_port()));
        let mut child = Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/routeros/sim.py"))
            .arg("--state")
            .arg(&state)
            .args(["--password", "secret"])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .expect("sim port")
            .parse()
            .unwrap();
        Sim { port, state, child }
    }

    fn state(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(&self.state).unwrap()).unwrap()
    }

    /// All objects, menu by menu.
    fn objects(&self) -> Vec<(String, Value)> {
        let st = self.state();
        MENUS
            .iter()
            .flat_map(|m| {
                st["menus"][m]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| ((*m).to_owned(), o.clone()))
                    .collect::<Vec<_>>()
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

struct Setup {
    root: TempDir,
    _nginx: Nginx,
    catalogue: PathBuf,
    password: PathBuf,
}

fn setup(tag: &str) -> Setup {
    let root = TempDir::new(tag);
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/usr/bin/true", www.join("tool")).unwrap();
    let nginx = Nginx::start(&www, "");
    let catalogue = write_catalogue(
        root.path(),
        &[feature(
            "tool",
            "tool",
            json!({ "url": nginx.url("tool"), "sha256": sha256_file(&www.join("tool")) }),
        )],
    );
    let password = root.path().join("router.password");
    std::fs::write(&password, "secret\n").unwrap();
    Setup {
        root,
        _nginx: nginx,
        catalogue,
        password,
    }
}

impl Setup {
    fn router_toml(&self, port: u16, extra: &str) -> String {
        format!(
            "[[routers]]\nid = \"mt\"\nkind = \"routeros\"\nhost = \"127.0.0.1\"\nport = {port}\nuser = \"admin\"\npassword_file = {:?}\nparent_interface = \"bridge\"\ntimeout_secs = 3\n{extra}\n",
            self.password.display().to_string()
        )
    }

    fn agent(&self, dir: &str, port: u16, extra: &str, failpoints: &str) -> Agent {
        let env: Vec<(&str, &str)> = if failpoints.is_empty() {
            vec![]
        } else {
            vec![("NNC_FAILPOINTS", failpoints)]
        };
        Agent::start_in(
            &self.root.path().join(dir),
            &self.catalogue,
            &self.router_toml(port, extra),
            None,
            &env,
        )
    }
}

fn assert_four_objects(sim: &Sim, id: &str, name: &str, vlan: u16) {
    let objects = sim.objects();
    assert_eq!(objects.len(), 4, "{objects:?}");
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
    for (menu, o) in &objects {
        assert_eq!(o["comment"], tag.as_str(), "{menu} is not tagged");
    }
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
    let sim = Sim::start(s.root.path(), &[]);
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
    assert_four_objects(&sim, &a, "a", 100);
    let listed = agent.data("{ interfaces { instanceId routerId vlanId } }", json!({}));
    assert_eq!(
        listed["interfaces"],
        json!([{ "instanceId": a, "routerId": "mt", "vlanId": 100 }])
    );

    let b = agent.install_on("tool", "mt", "b");
    assert_eq!(agent.wait_done(&b, TIMEOUT)["interface"]["vlanId"], 101);
    assert_eq!(sim.objects().len(), 8);
    agent.uninstall(&a);
    agent.uninstall(&b);
    assert_eq!(sim.objects(), vec![], "uninstall left objects behind");
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
    for step in 1..=4 {
        for how in ["--fail-at", "--drop-at"] {
            let sim = Sim::start(s.root.path(), &[how, &step.to_string()]);
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
    let sim = Sim::start(s.root.path(), &[]);
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
    let sim = Sim::start(s.root.path(), &[]);
    // Objects tagged for an instance this agent never had: removed at start.
    let orphan = Command::new(common::python())
        .args(["-c", &format!(
            "import librouteros; api = librouteros.connect(host='127.0.0.1', port={}, username='admin', password='secret'); api.path('interface','vlan').add(name='stale', **{{'vlan-id': 150, 'interface': 'bridge', 'comment': 'nnc:0123456789abcdef'}})",
            sim.port
        )])
        .status()
        .unwrap();
    assert!(orphan.success());
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
    assert_four_objects(&sim, &id, "k", 100);
}

#[test]
fn tls_with_a_pinned_certificate_and_routeros_7_18_empty_replies() {
    let s = setup("rostls");
    let (cert, key) = (
        s.root.path().join("cert.pem"),
        s.root.path().join("key.pem"),
    );
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=router",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(ok.success());
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(&cert)
        .output()
        .unwrap()
        .stdout;
    let der_file = s.root.path().join("cert.der");
    std::fs::write(&der_file, der).unwrap();
    let fingerprint = sha256_file(&der_file);
    let sim = Sim::start(
        s.root.path(),
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
    let id = agent.install_on("tool", "mt", "t");
    assert_eq!(
        agent.wait_done(&id, TIMEOUT)["status"],
        "INSTALLED",
        "{}",
        agent.log()
    );
    assert_four_objects(&sim, &id, "t", 100);
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
    let sim = Sim::start(s.root.path(), &[]);
    let mut agent = s.agent("agent", sim.port, "", "");
    let id = agent.install_on("tool", "mt", "g");
    assert_eq!(agent.wait_done(&id, TIMEOUT)["status"], "INSTALLED");
    agent.kill9();
    // Someone removed the route on the router.
    let removed = Command::new(common::python())
        .args(["-c", &format!(
            "import librouteros; api = librouteros.connect(host='127.0.0.1', port={}, username='admin', password='secret'); r = api.path('ip','route'); r.remove(*[x['.id'] for x in r])",
            sim.port
        )])
        .status()
        .unwrap();
    assert!(removed.success());
    assert_eq!(sim.objects().len(), 3);
    agent.restart();
    common::wait_until("objects recreated", TIMEOUT, || sim.objects().len() == 4);
    assert!(
        agent.log().contains("vanished; recreating"),
        "{}",
        agent.log()
    );
    assert_four_objects(&sim, &id, "g", 100);
}
