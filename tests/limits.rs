//! Limits a catalogue cannot widen: the config generator's settings schema, the operator's
//! `download.max_bytes`, and the free space of the data dir's file system.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Agent, Nginx, TempDir, Tmpfs, feature, make_fixtures, sha256_file, write_catalogue};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);
const INSTALL: &str = "mutation($f: ID!, $n: String!, $s: JSON) { installFeature(featureId: $f, routerId: \"local\", name: $n, settings: $s) { instanceId } }";

/// Every file under `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(files_under(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn a_permissive_catalogue_schema_cannot_let_a_line_break_into_a_torrc() {
    let root = TempDir::new("schema-widen");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/usr/bin/tor", www.join("tor")).unwrap();
    let nginx = Nginx::start(&www, "");
    let mut tor = feature(
        "tor",
        "tor",
        json!({ "url": nginx.url("tor"), "sha256": sha256_file(&www.join("tor")) }),
    );
    tor["config"] = json!("tor");
    // Hostile: "anything goes", which would let the bridge line end and a new torrc line start.
    tor["settingsSchema"] = json!({ "type": "object" });
    let catalogue = write_catalogue(root.path(), &[tor]);
    let agent = Agent::start(&root.path().join("agent"), &catalogue, "");

    let doc = agent.gql(
        INSTALL,
        json!({ "f": "tor", "n": "t", "s": { "bridges": ["1.2.3.4:443\nExitRelay 1"] } }),
    );
    let error = &doc["errors"][0];
    assert_eq!(error["extensions"]["code"], "INVALID_SETTINGS", "{doc}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("settings.bridges[0] is not a valid text"),
        "{doc}"
    );
    // Nothing was recorded, downloaded or written.
    assert_eq!(
        agent.data("{ instances { id } }", json!({}))["instances"],
        json!([])
    );
    assert!(
        nginx.requests_for("/tor").is_empty(),
        "{}",
        nginx.access_log()
    );
    for dir in ["features", "instances"] {
        let left = files_under(&agent.data_dir.join(dir));
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
    // What clients are shown is the generator's schema, not the catalogue's permissive one.
    let shown = agent.data("{ features { id settingsSchema } }", json!({}));
    let generator: Value = serde_json::from_str(&common::run_ok(
        Command::new(common::BIN).args(["config", "schema", "tor"]),
    ))
    .unwrap();
    assert_eq!(shown["features"][0]["settingsSchema"], generator, "{shown}");
}

#[test]
fn a_catalogue_size_cannot_raise_download_max_bytes() {
    let root = TempDir::new("size-cap");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/usr/bin/true", www.join("tool")).unwrap();
    let size = std::fs::metadata(www.join("tool")).unwrap().len();
    let max_bytes = size / 2;
    let nginx = Nginx::start(&www, "");
    // The catalogue claims (truthfully) a size above the operator's cap.
    let catalogue = write_catalogue(
        root.path(),
        &[feature(
            "tool",
            "tool",
            json!({ "url": nginx.url("tool"), "sha256": sha256_file(&www.join("tool")), "size": size }),
        )],
    );
    let agent = Agent::start(
        &root.path().join("agent"),
        &catalogue,
        &format!("[download]\nmax_bytes = {max_bytes}\nretries = 1\nretry_delay_secs = 0.05\n"),
    );
    let inst = agent.wait_done(&agent.install("tool", "t"), TIMEOUT);
    assert_eq!(inst["status"], "FAILED", "{inst}");
    assert_eq!(inst["failedStep"], "downloading", "{inst}");
    assert_eq!(inst["errorCode"], "TOO_LARGE", "{inst}");
    assert!(
        inst["error"]
            .as_str()
            .unwrap_or_default()
            .contains("download.max_bytes"),
        "{inst}"
    );
    let left = files_under(&agent.data_dir.join("features/tool"));
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn an_archive_member_larger_than_the_free_space_fails_disk_full_and_leaves_nothing() {
    let root = TempDir::new("unpack-space");
    let www = root.path().join("www");
    // 32 MiB of zeros, about 32 KiB compressed, for an 8 MiB file system.
    make_fixtures(&www, &["big", &(32u64 << 20).to_string()]);
    let nginx = Nginx::start(&www, "");
    let archive = |id: &str, file: &str, kind: &str| {
        feature(
            id,
            "tool",
            json!({ "url": nginx.url(file), "sha256": sha256_file(&www.join(file)),
                    "archive": kind, "path": "bin/tool" }),
        )
    };
    let catalogue = write_catalogue(
        root.path(),
        &[
            archive("big-tgz", "big.tar.gz", "tar.gz"),
            archive("big-zip", "big.zip", "zip"),
        ],
    );
    let dir = root.path().join("agent");
    let _disk = Tmpfs::mount(&dir, "8m");
    // The operator's cap allows 64 MiB: the free space is what must stop it.
    let agent = Agent::start(
        &dir,
        &catalogue,
        "[download]\nmax_bytes = 67108864\nretries = 1\nretry_delay_secs = 0.05\n",
    );
    for id in ["big-tgz", "big-zip"] {
        let inst = agent.wait_done(&agent.install(id, "b"), TIMEOUT);
        assert_eq!(inst["status"], "FAILED", "{id}: {inst}");
        assert_eq!(inst["failedStep"], "installing", "{id}: {inst}");
        assert_eq!(inst["errorCode"], "DISK_FULL", "{id}: {inst}");
        assert!(
            inst["error"]
                .as_str()
                .unwrap_or_default()
                .contains("not enough free space"),
            "{id}: {inst}"
        );
        let left = files_under(&agent.data_dir.join("features").join(id));
        assert!(left.is_empty(), "{id}: left behind {left:?}");
    }
}
