//! kill -9 at every step boundary of install, update and uninstall (and mid-provisioning): a
//! failpoint aborts the agent exactly there (`NNC_FAILPOINTS=name=abort`, what kill -9 does,
//! without the race), the agent starts again, and the invariants must hold once it settles:
//! the status tells the truth, no interface, table, route, namespace or process is left that
//! no instance owns, every binary in place is the verified one, and the state is consistent.
//! (A kill mid-download is tests/install.rs's `kill_9_mid_download_...`.)

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::feed::Feed;
use common::{Agent, TestNetns, sha256_file};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);
const PORT: u16 = 8000;

struct Rig {
    ns: TestNetns,
    feed: Feed,
    busybox_sha: String,
}

fn rig(tag: &str) -> Rig {
    let ns = TestNetns::new(tag);
    let feed = Feed::serve(tag, Some(&ns), &[("busybox", "/bin/busybox")]);
    let busybox_sha = feed.sha256("busybox");
    let entry = |version: &str| {
        json!({ "id": "web", "name": "web", "version": version, "binary": "busybox",
                "service": { "args": ["httpd", "-f", "-p", PORT.to_string()], "health": { "tcp": PORT } },
                "assets": { "x86_64": feed.asset("busybox") } })
    };
    let catalogue = [entry("1"), entry("2")];
    Rig {
        ns,
        feed: feed.with_catalogue(&catalogue),
        busybox_sha,
    }
}

impl Rig {
    fn netns_dir(&self) -> PathBuf {
        self.feed.path().join("netns")
    }

    fn rt_tables(&self) -> PathBuf {
        self.feed.path().join("rt_tables.d/nnc.conf")
    }

    fn agent(&self, failpoint: Option<&str>) -> Agent {
        let toml = format!(
            "[vlan]\nmode = \"veth\"\npool = [100, 109]\nrt_tables = {:?}\nnetns_dir = {:?}\n[supervisor]\nbackoff_initial_secs = 0.2\n",
            self.rt_tables().display().to_string(),
            self.netns_dir().display().to_string()
        );
        let spec = failpoint.map(|f| format!("{f}=abort")).unwrap_or_default();
        self.feed.agent("agent", &toml, Some(&self.ns), &spec)
    }

    /// Restarts a running agent so that it aborts at `failpoint`.
    fn rearm(&self, agent: &mut Agent, failpoint: &str) {
        agent.kill9();
        agent.restart_with(&[("NNC_FAILPOINTS", &format!("{failpoint}=abort"))]);
    }

    fn install(&self, agent: &Agent) -> String {
        agent.install("web", "w")
    }

    /// Checks every invariant; `expect` is the instance's expected status (None: gone).
    fn assert_invariants(&self, agent: &Agent, id: &str, expect: Option<(&str, &str)>, case: &str) {
        let all = agent.data(
            "{ instances { id status version } interfaces { name instanceId status } }",
            json!({}),
        );
        let instances = all["instances"].as_array().unwrap();
        let interfaces = all["interfaces"].as_array().unwrap();
        let links: Vec<String> = self
            .ns
            .ip(&["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_owned())
            .filter(|n| n.starts_with("nnc"))
            .collect();
        let namespaces: Vec<String> = std::fs::read_dir(self.netns_dir())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        let tables = std::fs::read_to_string(self.rt_tables()).unwrap_or_default();
        let table_lines = tables
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .count();
        let routes = self.ns.ip(&["route", "show", "table", "all"]);
        let ctx = format!(
            "[{case}] {all}\nlinks {links:?}\nnetns {namespaces:?}\n{}",
            agent.log()
        );
        match expect {
            None => {
                assert!(instances.is_empty(), "{ctx}");
                assert!(interfaces.is_empty(), "{ctx}");
                assert!(links.is_empty(), "leaked links: {ctx}");
                assert!(namespaces.is_empty(), "leaked namespaces: {ctx}");
                assert_eq!(table_lines, 0, "leaked table names: {tables}\n{ctx}");
                assert!(
                    !routes.contains("table 11"),
                    "leaked routes: {routes}\n{ctx}"
                );
                assert!(
                    !agent.data_dir.join(format!("instances/{id}")).exists(),
                    "{ctx}"
                );
                assert_eq!(
                    service_processes(&agent.data_dir),
                    Vec::<i32>::new(),
                    "{ctx}"
                );
            }
            Some((status, version)) => {
                assert_eq!(instances.len(), 1, "{ctx}");
                let p = agent.process(id);
                assert_eq!(p["status"], status, "{ctx}\n{p}");
                assert_eq!(p["version"], version, "{ctx}\n{p}");
                assert_eq!(interfaces.len(), 1, "{ctx}");
                assert_eq!(interfaces[0]["status"], "ACTIVE", "{ctx}");
                // The segment, its bridge and the host end of the service's veth; nothing else.
                assert_eq!(links.len(), 4, "{ctx}");
                assert_eq!(namespaces.len(), 1, "{ctx}");
                assert_eq!(table_lines, 1, "{tables}\n{ctx}");
                let pid = p["process"]["pid"]
                    .as_i64()
                    .map(|p| i32::try_from(p).unwrap());
                if status == "RUNNING" {
                    let pid = pid.unwrap_or_else(|| panic!("RUNNING without a pid: {ctx}\n{p}"));
                    assert_eq!(
                        service_processes(&agent.data_dir),
                        [pid],
                        "one service process, the recorded one: {ctx}"
                    );
                    let addr = p["interface"]["serviceAddress"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    let reachable = self.ns.run(|| {
                        std::net::TcpStream::connect_timeout(
                            &format!("{addr}:{PORT}").parse().unwrap(),
                            Duration::from_secs(3),
                        )
                        .is_ok()
                    });
                    assert!(reachable, "RUNNING but nothing listens: {ctx}");
                }
            }
        }
        // Every binary in place is the verified one; no staging left behind.
        for bin in binaries(&agent.data_dir) {
            assert_eq!(
                sha256_file(&bin),
                self.busybox_sha,
                "{} [{case}]",
                bin.display()
            );
        }
    }
}

/// Binaries in place under the data dir.
fn binaries(data: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for f in std::fs::read_dir(data.join("features"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for v in std::fs::read_dir(f.path()).into_iter().flatten().flatten() {
            for b in std::fs::read_dir(v.path().join("bin"))
                .into_iter()
                .flatten()
                .flatten()
            {
                out.push(b.path());
            }
        }
    }
    out
}

/// Processes running a binary from this data dir (the services of this test's agent).
fn service_processes(data: &Path) -> Vec<i32> {
    let features = data.join("features");
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|exe| exe.starts_with(&features))
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// The failpoint must have killed the agent; it starts again without failpoints.
fn died_and_restarted(agent: &mut Agent, fp: &str) {
    assert!(
        agent.wait_exit(TIMEOUT),
        "[{fp}] the failpoint did not fire\n{}",
        agent.log()
    );
    agent.restart_with(&[]);
}

fn settle(agent: &Agent, id: &str) -> Value {
    agent.wait_status(id, &["RUNNING", "FAILED", "STOPPED", "INSTALLED"], TIMEOUT)
}

#[test]
fn kill_9_at_every_install_step_is_repaired_at_the_next_start() {
    let rig = rig("kill-install");
    let mut cases = 0;
    for fp in [
        "install.fetch",
        "install.provision",
        "vif.create.3",
        "install.configure",
        "install.start",
        "install.finish",
    ] {
        let mut agent = rig.agent(Some(fp));
        let id = rig.install(&agent);
        died_and_restarted(&mut agent, fp);
        let p = settle(&agent, &id);
        assert_eq!(p["status"], "RUNNING", "[{fp}] {p}\n{}", agent.log());
        rig.assert_invariants(&agent, &id, Some(("RUNNING", "1")), fp);
        agent.uninstall(&id);
        rig.assert_invariants(&agent, &id, None, &format!("{fp} then uninstall"));
        agent.kill9();
        cases += 1;
    }
    assert_eq!(cases, 6);
}

#[test]
fn kill_9_at_every_update_step_rolls_back_at_the_next_start() {
    let rig = rig("kill-update");
    let mut agent = rig.agent(None);
    let id = rig.install(&agent);
    settle(&agent, &id);
    for fp in [
        "update.staged",
        "update.checked",
        "update.swapped",
        "update.recorded",
        "update.started",
    ] {
        rig.rearm(&mut agent, fp);
        agent.wait_status(&id, &["RUNNING"], TIMEOUT);
        agent.data(
            "mutation($id: ID!) { updateInstance(id: $id, version: \"2\") { status } }",
            json!({ "id": id }),
        );
        died_and_restarted(&mut agent, fp);
        let p = settle(&agent, &id);
        assert_eq!(p["errorCode"], "UPDATE_INTERRUPTED", "[{fp}] {p}");
        rig.assert_invariants(&agent, &id, Some(("RUNNING", "1")), fp);
        assert_eq!(
            binaries(&agent.data_dir).len(),
            1,
            "[{fp}] only version 1 stays"
        );
    }
    // And the update still works afterwards.
    agent.data(
        "mutation($id: ID!) { updateInstance(id: $id, version: \"2\") { status } }",
        json!({ "id": id }),
    );
    common::wait_until("version 2", TIMEOUT, || {
        agent.process(&id)["version"] == "2" && agent.process(&id)["status"] == "RUNNING"
    });
    rig.assert_invariants(
        &agent,
        &id,
        Some(("RUNNING", "2")),
        "update after the matrix",
    );
}

#[test]
fn kill_9_during_uninstall_is_finished_at_the_next_start() {
    let rig = rig("kill-uninstall");
    for fp in ["uninstall.stopped", "uninstall.unprovisioned"] {
        let mut agent = rig.agent(None);
        let id = rig.install(&agent);
        settle(&agent, &id);
        rig.rearm(&mut agent, fp);
        agent.wait_status(&id, &["RUNNING"], TIMEOUT);
        // The agent dies under the request: no answer is expected.
        let _ = agent.try_post(
            &json!({ "query": "mutation($id: ID!) { uninstallInstance(id: $id) { instanceId } }", "variables": { "id": id } }).to_string(),
            Some(&agent.token.clone()),
        );
        died_and_restarted(&mut agent, fp);
        common::wait_until("the uninstall to finish", TIMEOUT, || {
            agent.data("{ instances { id } }", json!({}))["instances"] == json!([])
        });
        rig.assert_invariants(&agent, &id, None, fp);
        assert!(
            binaries(&agent.data_dir).is_empty(),
            "[{fp}] the binary goes with its last instance"
        );
        agent.kill9();
    }
}
