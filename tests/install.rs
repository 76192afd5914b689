//! The install flow end to end against real components: Debian's nginx serving real binaries
//! packed the way their upstreams ship them, the real agent binary, a third-party GraphQL
//! client, and `kill -9`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{
    Agent, Nginx, TempDir, feature, make_fixtures, sha256_file, singbox_binary, write_catalogue,
};
use serde_json::{Value, json};

const SINGBOX_TGZ: &str = "sing-box-1.14.4-linux-amd64.tar.gz";
const INSTALL_TIMEOUT: Duration = Duration::from_secs(120);

fn singbox_feature(nginx: &Nginx, location: &str) -> Value {
    json!({
        "id": "sing-box", "name": "sing-box", "version": "1.14.4", "binary": "sing-box",
        "assets": { "x86_64": {
            "url": nginx.url(&format!("{location}{SINGBOX_TGZ}")),
            "checksums": nginx.url("checksums.txt"),
            "archive": "tar.gz",
            "path": "sing-box-1.14.4-linux-amd64/sing-box"
        } }
    })
}

fn www_with_singbox(root: &TempDir) -> std::path::PathBuf {
    let www = root.path().join("www");
    let bin = singbox_binary("amd64");
    make_fixtures(&www, &["singbox", bin.to_str().unwrap(), "1.14.4"]);
    www
}

fn run(binary: &str, arg: &str) -> String {
    let out = Command::new(binary).arg(arg).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn installs_sing_box_xray_zip_and_raw_tor_from_nginx() {
    let root = TempDir::new("real");
    let www = www_with_singbox(&root);
    make_fixtures(&www, &["xrayzip", "/usr/bin/v2ray", "Xray-linux-64"]);
    std::fs::copy("/usr/sbin/tor", www.join("tor")).unwrap();
    let nginx = Nginx::start(&www, "");
    let catalogue = write_catalogue(
        root.path(),
        &[
            singbox_feature(&nginx, ""),
            json!({ "id": "xray", "name": "Xray", "version": "4.34.0", "binary": "xray",
                    "assets": { "x86_64": { "url": nginx.url("Xray-linux-64.zip"),
                        "sha256": sha256_file(&www.join("Xray-linux-64.zip")),
                        "archive": "zip", "path": "xray" } } }),
            feature(
                "tor",
                "tor",
                json!({ "url": nginx.url("tor"), "sha256": sha256_file(&www.join("tor")) }),
            ),
        ],
    );
    let agent = Agent::start(root.path(), &catalogue, "");

    let features = agent.data("{ features { id version supported arches } }", json!({}));
    assert_eq!(
        features["features"].as_array().unwrap().len(),
        3,
        "{features}"
    );

    let cases = [
        (
            "sing-box",
            SINGBOX_TGZ,
            "checksums",
            singbox_binary("amd64"),
            "version",
            "sing-box version 1.14.4",
        ),
        (
            "xray",
            "Xray-linux-64.zip",
            "pin",
            "/usr/bin/v2ray".into(),
            "-version",
            "V2Ray 4.34.0",
        ),
        (
            "tor",
            "tor",
            "pin",
            "/usr/sbin/tor".into(),
            "--version",
            "Tor version",
        ),
    ];
    let ids: Vec<String> = cases.iter().map(|c| agent.install(c.0, "main")).collect();
    for (id, (feature_id, file, verified_by, source, arg, expect)) in ids.iter().zip(&cases) {
        let inst = agent.wait_done(id, INSTALL_TIMEOUT);
        assert_eq!(
            inst["status"],
            "INSTALLED",
            "{feature_id}: {inst}\n{}",
            agent.log()
        );
        assert_eq!(inst["featureId"], *feature_id);
        assert_eq!(inst["sha256"], sha256_file(&www.join(file)), "{feature_id}");
        assert_eq!(inst["verifiedBy"], *verified_by);
        assert_eq!(inst["progress"]["status"], "completed");
        assert_eq!(inst["progress"]["percent"], 100.0);
        assert!(inst["failedStep"].is_null() && inst["error"].is_null());
        let path = inst["binaryPath"].as_str().unwrap();
        assert!(path.starts_with(agent.data_dir.to_str().unwrap()), "{path}");
        assert_eq!(
            sha256_file(Path::new(path)),
            sha256_file(source),
            "{feature_id}: binary differs from the source"
        );
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "{feature_id}");
        let out = run(path, arg);
        assert!(
            out.contains(expect),
            "{feature_id}: {path} {arg} printed {out}"
        );
        // Nothing but the binary is left behind: the archive and the .part file are gone.
        let version_dir = Path::new(path).parent().unwrap().parent().unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(version_dir.join("download"))
            .unwrap()
            .collect();
        assert!(leftovers.is_empty(), "{feature_id}: {leftovers:?}");
    }
    let listed = agent.data("{ instances { id status createdAt updatedAt } }", json!({}));
    assert_eq!(listed["instances"].as_array().unwrap().len(), 3);
}

#[test]
fn two_installs_of_one_feature_share_a_single_download() {
    let root = TempDir::new("single");
    let www = www_with_singbox(&root);
    let nginx = Nginx::start(
        &www,
        "location /slow/ { alias WWW/; limit_rate 8m; }"
            .replace("WWW", www.to_str().unwrap())
            .as_str(),
    );
    let catalogue = write_catalogue(root.path(), &[singbox_feature(&nginx, "slow/")]);
    let agent = Agent::start(root.path(), &catalogue, "");
    let a = agent.install("sing-box", "first");
    let b = agent.install("sing-box", "second");
    let (ia, ib) = (
        agent.wait_done(&a, INSTALL_TIMEOUT),
        agent.wait_done(&b, INSTALL_TIMEOUT),
    );
    assert_eq!(ia["status"], "INSTALLED", "{ia}");
    assert_eq!(ib["status"], "INSTALLED", "{ib}");
    assert_eq!(ia["binaryPath"], ib["binaryPath"]);
    let gets = nginx.requests_for(&format!("/slow/{SINGBOX_TGZ}"));
    assert_eq!(gets.len(), 1, "expected one GET on the wire: {gets:?}");
    assert!(
        agent.log().contains("joining the running download"),
        "{}",
        agent.log()
    );
    // A later install reuses the verified binary (its recorded hash still matches): no GET.
    let c = agent.install("sing-box", "third");
    assert_eq!(agent.wait_done(&c, INSTALL_TIMEOUT)["status"], "INSTALLED");
    assert_eq!(nginx.requests_for(&format!("/slow/{SINGBOX_TGZ}")).len(), 1);
    assert!(agent.log().contains("verified binary already in place"));
    // The same name twice for one feature is refused.
    let code = agent.error_code(
        "mutation { installFeature(featureId: \"sing-box\", routerId: \"local\", name: \"first\") { instanceId } }",
        json!({}),
    );
    assert_eq!(code, "NAME_TAKEN");
}

#[test]
fn gql_client_sees_non_decreasing_progress_until_completed() {
    let root = TempDir::new("gql");
    let www = www_with_singbox(&root);
    let nginx = Nginx::start(
        &www,
        &format!(
            "location /slow/ {{ alias {}/; limit_rate 3m; }}",
            www.display()
        ),
    );
    let catalogue = write_catalogue(root.path(), &[singbox_feature(&nginx, "slow/")]);
    let agent = Agent::start(root.path(), &catalogue, "");
    let id = agent.install("sing-box", "watched");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/subscribe.py");
    let out = Command::new(common::python())
        .arg(&script)
        .args([&agent.url(), &agent.token, "progress", &id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gql client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let items: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let percents: Vec<f64> = items
        .iter()
        .map(|i| i["percent"].as_f64().unwrap())
        .collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "percentages went down: {percents:?}"
    );
    assert_eq!(items.last().unwrap()["status"], "completed", "{items:?}");
    let downloading: Vec<_> = items
        .iter()
        .filter(|i| i["status"] == "downloading" && i["percent"].as_f64().unwrap() > 0.0)
        .collect();
    assert!(
        downloading.len() >= 5,
        "expected several progress steps during a ~5 s download: {items:?}"
    );
    assert!(items.iter().all(|i| i["instanceId"] == id.as_str()));
    let total = items.last().unwrap()["totalBytes"].as_u64().unwrap();
    assert_eq!(
        total,
        std::fs::metadata(www.join(SINGBOX_TGZ)).unwrap().len()
    );
}

#[test]
fn events_subscription_carries_the_whole_flow_in_order() {
    let root = TempDir::new("events");
    let www = www_with_singbox(&root);
    let nginx = Nginx::start(&www, "");
    let catalogue = write_catalogue(root.path(), &[singbox_feature(&nginx, "")]);
    let agent = Agent::start(root.path(), &catalogue, "");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/subscribe.py");
    let mut child = Command::new(common::python())
        .arg(&script)
        .args([&agent.url(), &agent.token, "events", "1000000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "subscribed");
    std::thread::sleep(Duration::from_millis(300));
    let id = agent.install("sing-box", "evented");
    let mut events = Vec::new();
    for line in lines.by_ref() {
        let ev: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let done = ev["type"] == "service.installed";
        events.push(ev);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "gap or reorder in {seqs:?}"
    );
    let statuses: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "instance.status.changed")
        .map(|e| e["payload"]["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["DOWNLOADING", "VERIFYING", "INSTALLING", "INSTALLED"],
        "{events:?}"
    );
    let installed = events.last().unwrap();
    assert_eq!(installed["instanceId"], id.as_str());
    assert_eq!(
        installed["payload"]["sha256"],
        sha256_file(&www.join(SINGBOX_TGZ))
    );
    assert_eq!(installed["payload"]["verifiedBy"], "checksums");
    assert!(events.iter().any(
        |e| e["type"] == "service.install.progress" && e["payload"]["status"] == "downloading"
    ));
}

#[test]
fn kill_9_mid_download_resumes_from_the_bytes_on_disk() {
    let root = TempDir::new("kill9");
    let www = www_with_singbox(&root);
    let nginx = Nginx::start(
        &www,
        &format!(
            "location /slow/ {{ alias {}/; limit_rate 2m; }}",
            www.display()
        ),
    );
    let catalogue = write_catalogue(root.path(), &[singbox_feature(&nginx, "slow/")]);
    let mut agent = Agent::start(root.path(), &catalogue, "");
    let id = agent.install("sing-box", "resumed");
    common::wait_until("4 MB on disk", Duration::from_secs(60), || {
        agent.instance(&id)["progress"]["bytesDownloaded"]
            .as_u64()
            .unwrap_or(0)
            > 4 << 20
    });
    agent.kill9();
    let part = agent.data_dir.join(format!(
        "features/sing-box/1.14.4/download/{SINGBOX_TGZ}.part"
    ));
    let kept = std::fs::metadata(&part).expect("part file kept").len();
    assert!(kept > 4 << 20, "{kept}");
    assert!(
        !agent
            .data_dir
            .join("features/sing-box/1.14.4/bin/sing-box")
            .exists()
    );

    agent.restart();
    let inst = agent.wait_done(&id, INSTALL_TIMEOUT);
    assert_eq!(inst["status"], "INSTALLED", "{inst}\n{}", agent.log());
    assert_eq!(inst["sha256"], sha256_file(&www.join(SINGBOX_TGZ)));
    let gets = nginx.requests_for(&format!("/slow/{SINGBOX_TGZ}"));
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(gets[0].contains(" 200 "), "{gets:?}");
    assert!(
        gets[1].contains(" 206 ") && gets[1].contains("range=\"bytes="),
        "{gets:?}"
    );
    let resumed_from: u64 = gets[1]
        .split("bytes=")
        .nth(1)
        .and_then(|r| r.split('-').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        resumed_from >= kept.min(4 << 20),
        "resumed from {resumed_from}, {kept} were on disk"
    );
}

#[test]
fn a_binary_for_another_cpu_is_refused_and_never_put_in_place() {
    let root = TempDir::new("arch");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy(singbox_binary("arm64"), www.join("sing-box-arm64")).unwrap();
    let nginx = Nginx::start(&www, "");
    let catalogue = write_catalogue(
        root.path(),
        &[feature(
            "sing-box",
            "sing-box",
            json!({ "url": nginx.url("sing-box-arm64"), "sha256": sha256_file(&www.join("sing-box-arm64")) }),
        )],
    );
    let agent = Agent::start(root.path(), &catalogue, "");
    let id = agent.install("sing-box", "wrong");
    let inst = agent.wait_done(&id, INSTALL_TIMEOUT);
    assert_eq!(inst["status"], "FAILED");
    assert_eq!(inst["failedStep"], "installing");
    assert_eq!(inst["errorCode"], "WRONG_ARCH");
    assert!(
        inst["error"].as_str().unwrap().contains("AArch64"),
        "{inst}"
    );
    assert!(inst["binaryPath"].is_null());
    let bin_dir = agent.data_dir.join("features/sing-box/1.0.0/bin");
    assert_eq!(
        std::fs::read_dir(&bin_dir).unwrap().count(),
        0,
        "something was left in {}",
        bin_dir.display()
    );

    // A FAILED instance can be uninstalled, which frees its name and its files.
    agent.data(
        &format!("mutation {{ uninstallInstance(id: \"{id}\") {{ instanceId }} }}"),
        json!({}),
    );
    assert!(!agent.data_dir.join("features/sing-box/1.0.0").exists());
    let again = agent.install("sing-box", "wrong");
    assert_ne!(again, id);
}
