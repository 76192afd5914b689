//! The agent on real kernels: Debian's x86_64, arm64 and mipsel (malta) kernels booted under
//! QEMU (TCG) by `cross/vm/run.py`, with the cross-built static binaries from `dist/` (built by
//! `cross/build.sh`). In each VM the agent starts as the router's service; from the host a real
//! client reaches its GraphQL API through QEMU's hostfwd; the guest proves the kernel offers
//! 8021q VLANs and cgroup v2 memory/pids/cpu.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

fn gql_post(port: u16, token: Option<&str>, query: &str) -> (u16, Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent
        .post(&format!("http://127.0.0.1:{port}/graphql"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", &format!("Bearer {t}"));
    }
    let mut resp = req
        .send(json!({ "query": query }).to_string())
        .expect("POST through hostfwd");
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap(),
    )
}

/// Boots one VM, runs the host-side checks when the guest is ready, returns the guest results.
fn boot(arch: &str, target: &str, arch_key: &str, board: &str) {
    let root = common::TempDir::new(&format!("vm-{arch}"));
    let log = root.path().join("console.log");
    let mut child = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("cross/vm/run.py"))
        .args(["--arch", arch, "--timeout", "300", "--script"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/basic.sh"))
        .arg("--agent")
        .arg(dist_binary(target))
        .arg("--log")
        .arg(&log)
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
                let port = u16::try_from(ev["port"].as_u64().unwrap()).unwrap();
                let token = ev["token"].as_str().unwrap();
                let (status, v) = gql_post(
                    port,
                    Some(token),
                    "{ agent { version arch board { name vlanParent vlanPool } } features { id } }",
                );
                assert_eq!(status, 200, "{v}");
                assert_eq!(v["data"]["agent"]["arch"], arch_key, "{v}");
                assert_eq!(v["data"]["agent"]["board"]["name"], board, "{v}");
                assert_eq!(v["data"]["features"].as_array().unwrap().len(), 3, "{v}");
                let (status, _) = gql_post(port, None, "{ instances { id } }");
                assert_eq!(status, 401);
                let out = Command::new(common::python())
                    .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/subscribe.py"))
                    .args([
                        &format!("http://127.0.0.1:{port}/graphql"),
                        token,
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
                writeln!(stdin, "finish").unwrap();
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
    assert!(
        events.iter().any(|e| e["event"] == "ready"),
        "guest never got ready:\n{console}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "guest_host"),
        "the host's finish never reached the guest:\n{console}"
    );
    let results = end["results"].as_array().unwrap();
    let failed: Vec<&Value> = results.iter().filter(|r| r["ok"] != true).collect();
    assert!(
        failed.is_empty(),
        "{arch}: guest checks failed: {failed:?}\n{console}"
    );
    for name in [
        "vlan-create",
        "vlan-listed",
        "cgroup-memory",
        "cgroup-pids",
        "cgroup-cpu",
        "cgroup-limits",
        "agent-alive-after-host-queries",
    ] {
        assert!(
            results.iter().any(|r| r["name"] == name),
            "{arch}: no result {name}"
        );
    }
    let timing = events
        .iter()
        .find(|e| e["event"] == "timing")
        .expect("timing");
    eprintln!(
        "[{arch}] boot->init {:.1} s, exec->serving {} s, launch->power-off {} s",
        events.iter().find(|e| e["event"] == "boot").unwrap()["seconds"]
            .as_f64()
            .unwrap(),
        timing["exec_to_serving_s"],
        end["seconds"]
    );
}

#[test]
fn x86_64_vm_serves_graphql_and_offers_vlans_and_cgroups() {
    boot("amd64", "x86_64-unknown-linux-musl", "x86_64", "x86_64-vm");
}

#[test]
fn aarch64_vm_serves_graphql_and_offers_vlans_and_cgroups() {
    boot(
        "arm64",
        "aarch64-unknown-linux-musl",
        "aarch64",
        "aarch64-vm",
    );
}

#[test]
fn mipsel_vm_serves_graphql() {
    boot("mipsel", "mipsel-unknown-linux-musl", "mipsel", "mt7621");
}
