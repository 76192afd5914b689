//! Downloads from a server that misbehaves the ways real mirrors do: drops, stalls, wrong
//! lengths, ignored or wrong ranges, changing ETags, errors. Each install must end with the
//! verified binary in place or FAILED with a precise error, never with an unverified file.

mod common;

use std::path::Path;
use std::time::Duration;

use common::fault::FaultServer;
use common::{Agent, TempDir, feature, sha256_file, write_catalogue};
use serde_json::json;

const FAST_RETRIES: &str =
    "[download]\nstall_timeout_secs = 1\nretry_delay_secs = 0.05\nretries = 3\n";
const TIMEOUT: Duration = Duration::from_secs(60);

struct Case {
    mode: &'static str,
    /// Expected final status, failed step and error code.
    status: &'static str,
    step: Option<&'static str>,
    code: Option<&'static str>,
    /// Expected fault-server log for this mode (`HALF`/`LEN` stand for byte offsets).
    log: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        mode: "drop",
        status: "INSTALLED",
        step: None,
        code: None,
        log: &["200 -", "206 HALF"],
    },
    Case {
        mode: "stall",
        status: "INSTALLED",
        step: None,
        code: None,
        log: &["200 -", "206 HALF"],
    },
    Case {
        mode: "badlen-long",
        status: "INSTALLED",
        step: None,
        code: None,
        log: &["200 -", "416 LEN", "200 -"],
    },
    Case {
        mode: "norange",
        status: "INSTALLED",
        step: None,
        code: None,
        log: &["200 -", "200 HALF"],
    },
    Case {
        mode: "badrange",
        status: "INSTALLED",
        step: None,
        code: None,
        log: &["200 -", "206 HALF", "200 -"],
    },
    Case {
        mode: "flipetag",
        status: "INSTALLED",
        step: None,
        code: None,
        log: &["200 -", "206 HALF", "200 -"],
    },
    Case {
        mode: "badlen-short",
        status: "FAILED",
        step: Some("verifying"),
        code: Some("CHECKSUM_MISMATCH"),
        log: &["200 -"],
    },
    Case {
        mode: "status404",
        status: "FAILED",
        step: Some("downloading"),
        code: Some("DOWNLOAD_FAILED"),
        log: &["404 -"],
    },
    Case {
        mode: "status500",
        status: "FAILED",
        step: Some("downloading"),
        code: Some("DOWNLOAD_FAILED"),
        log: &["500 -", "500 -", "500 -", "500 -"],
    },
];

#[test]
fn every_fault_ends_verified_or_failed_precisely() {
    let root = TempDir::new("faults");
    let source = Path::new("/usr/sbin/tor");
    let data = std::fs::read(source).unwrap();
    let (len, half) = (data.len(), data.len() / 2);
    let sha = sha256_file(source);
    let server = FaultServer::start(&[("tor", data)]);
    let features: Vec<_> = CASES
        .iter()
        .map(|c| {
            feature(
                c.mode,
                "tor",
                json!({ "url": server.url(c.mode, "tor"), "sha256": sha }),
            )
        })
        .collect();
    let catalogue = write_catalogue(root.path(), &features);
    let agent = Agent::start(root.path(), &catalogue, FAST_RETRIES);
    let ids: Vec<_> = CASES.iter().map(|c| agent.install(c.mode, "x")).collect();

    for (case, id) in CASES.iter().zip(&ids) {
        let inst = agent.wait_done(id, TIMEOUT);
        let ctx = format!("{}: {inst}", case.mode);
        assert_eq!(inst["status"], case.status, "{ctx}\n{}", agent.log());
        assert_eq!(inst["failedStep"].as_str(), case.step, "{ctx}");
        assert_eq!(inst["errorCode"].as_str(), case.code, "{ctx}");
        let bin = agent
            .data_dir
            .join(format!("features/{}/1.0.0/bin/tor", case.mode));
        if case.status == "INSTALLED" {
            assert_eq!(inst["sha256"], sha.as_str(), "{ctx}");
            assert_eq!(
                sha256_file(&bin),
                sha,
                "{ctx}: the binary in place is not the verified one"
            );
        } else {
            assert!(!bin.exists(), "{ctx}: an unverified file was put in place");
            assert!(inst["binaryPath"].is_null(), "{ctx}");
            let message = inst["error"].as_str().unwrap();
            assert!(!message.is_empty());
        }
        let log: Vec<String> = server
            .log()
            .into_iter()
            .filter_map(|l| {
                l.strip_prefix(&format!("{} ", case.mode))
                    .map(str::to_owned)
            })
            .collect();
        let expected: Vec<String> = case
            .log
            .iter()
            .map(|l| {
                l.replace("HALF", &half.to_string())
                    .replace("LEN", &len.to_string())
            })
            .collect();
        assert_eq!(log, expected, "{}: requests on the wire", case.mode);
    }
    let by_mode = |mode: &str| &ids[CASES.iter().position(|c| c.mode == mode).unwrap()];
    let e404 = agent.instance(by_mode("status404"))["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(e404.contains("404"), "{e404}");
    let e500 = agent.instance(by_mode("status500"))["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        e500.contains("gave up after 4 failed attempts") && e500.contains("500"),
        "{e500}"
    );
    let mismatch = agent.instance(by_mode("badlen-short"));
    assert_eq!(
        mismatch["progress"]["status"], "verification_failed",
        "{mismatch}"
    );
    assert!(
        mismatch["error"].as_str().unwrap().contains("expected"),
        "{mismatch}"
    );
    // A failed verification deletes the download.
    let dl = agent.data_dir.join("features/badlen-short/1.0.0/download");
    assert_eq!(
        std::fs::read_dir(&dl).unwrap().count(),
        0,
        "{}",
        dl.display()
    );
    assert!(
        agent.log().contains("stalled: no data for 1 s"),
        "{}",
        agent.log()
    );
}

#[test]
fn a_body_larger_than_the_catalogue_size_is_refused() {
    let root = TempDir::new("size");
    let data = std::fs::read("/usr/sbin/tor").unwrap();
    let size = data.len() / 2;
    let sha = sha256_file(Path::new("/usr/sbin/tor"));
    let server = FaultServer::start(&[("tor", data)]);
    let catalogue = write_catalogue(
        root.path(),
        &[feature(
            "sized",
            "tor",
            json!({ "url": server.url("ok", "tor"), "sha256": sha, "size": size }),
        )],
    );
    let agent = Agent::start(root.path(), &catalogue, FAST_RETRIES);
    let id = agent.install("sized", "x");
    let inst = agent.wait_done(&id, TIMEOUT);
    assert_eq!(inst["status"], "FAILED");
    assert_eq!(inst["errorCode"], "TOO_LARGE", "{inst}");
    assert_eq!(inst["failedStep"], "downloading");
    let dl = agent.data_dir.join("features/sized/1.0.0/download");
    assert_eq!(std::fs::read_dir(&dl).unwrap().count(), 0);
}

#[test]
fn a_download_that_cannot_fit_fails_before_filling_the_disk() {
    let root = TempDir::new("diskfull");
    // The data dir on a 2 MiB tmpfs.
    let mnt = root.path().join("agent");
    let _disk = common::Tmpfs::mount(&mnt, "2m");
    let sha = sha256_file(Path::new("/usr/sbin/tor"));
    let server = FaultServer::start(&[("tor", std::fs::read("/usr/sbin/tor").unwrap())]);
    let catalogue = write_catalogue(
        root.path(),
        &[feature(
            "big",
            "tor",
            json!({ "url": server.url("ok", "tor"), "sha256": sha }),
        )],
    );
    let agent = Agent::start(&mnt, &catalogue, FAST_RETRIES);
    let id = agent.install("big", "x");
    let inst = agent.wait_done(&id, TIMEOUT);
    assert_eq!(inst["status"], "FAILED", "{inst}");
    assert_eq!(inst["errorCode"], "DISK_FULL", "{inst}");
    assert!(inst["error"].as_str().unwrap().contains("free"), "{inst}");
    let part = agent.data_dir.join("features/big/1.0.0/download/tor.part");
    assert_eq!(
        std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0),
        0,
        "bytes were written"
    );
}
