//! System packages for real: a local apt repository (packages built with `dpkg-deb`, a flat
//! `file:` source) that the agent's apt-get installs from, through `APT_CONFIG` pointing at
//! that source only. The package the agent installed goes when its last instance goes; one the
//! system had already stays; a package apt cannot find fails with apt's words.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Agent, TempDir, run_ok};
use serde_json::json;

const TIMEOUT: Duration = Duration::from_secs(120);
const MINE: &str = "nnc-test-tool";
const THEIRS: &str = "nnc-test-preinstalled";

/// Purges the test packages however the test ends.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        for p in [MINE, THEIRS] {
            let _ = Command::new("dpkg").args(["--purge", p]).output();
        }
    }
}

fn installed(name: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}|${Version}", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .strip_prefix("ii |")
        .map(str::to_owned)
}

/// A .deb of `name` `version` holding `/usr/bin/{name}` (a copy of /usr/bin/true).
fn deb(dir: &Path, name: &str, version: &str) -> std::path::PathBuf {
    let root = dir.join(format!("build-{name}"));
    std::fs::create_dir_all(root.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::copy("/usr/bin/true", root.join("usr/bin").join(name)).unwrap();
    let arch = run_ok(Command::new("dpkg").arg("--print-architecture"));
    std::fs::write(
        root.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: {}\nMaintainer: nnc-agent tests <tests@example.invalid>\nDescription: a test package for nnc-agent\n",
            arch.trim()
        ),
    )
    .unwrap();
    let out = dir.join(format!("{name}_{version}.deb"));
    run_ok(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&root)
            .arg(&out),
    );
    out
}

/// A flat repository in `repo` (Packages written from `dpkg-deb --field` and the files'
/// sizes and hashes) and an apt configuration that knows only it.
fn repository(dir: &Path, debs: &[&Path]) -> std::path::PathBuf {
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let mut packages = String::new();
    for d in debs {
        let name = d.file_name().unwrap().to_string_lossy().into_owned();
        std::fs::copy(d, repo.join(&name)).unwrap();
        let fields = run_ok(Command::new("dpkg-deb").arg("--field").arg(d));
        let size = std::fs::metadata(d).unwrap().len();
        packages.push_str(&format!(
            "{}Filename: ./{name}\nSize: {size}\nSHA256: {}\n\n",
            fields.trim_end().to_owned() + "\n",
            common::sha256_file(d)
        ));
    }
    std::fs::write(repo.join("Packages"), packages).unwrap();
    let state = dir.join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(state.join(d)).unwrap();
    }
    std::fs::write(
        state.join("sources.list"),
        format!("deb [trusted=yes] file:{} ./\n", repo.display()),
    )
    .unwrap();
    let conf = state.join("apt.conf");
    std::fs::write(
        &conf,
        format!(
            "Dir::Etc::SourceList \"{s}/sources.list\";\nDir::Etc::SourceParts \"{s}/none\";\nDir::State::Lists \"{s}/lists\";\nDir::Cache \"{s}/cache\";\n",
            s = state.display()
        ),
    )
    .unwrap();
    conf
}

#[test]
fn apt_packages_are_installed_shared_and_removed_only_when_the_agent_installed_them() {
    let _purge = Purge;
    for p in [MINE, THEIRS] {
        assert_eq!(installed(p), None, "{p} is on this machine before the test");
    }
    let root = TempDir::new("apt");
    let dir = root.path();
    let mine = deb(dir, MINE, "1.2.3-1");
    let theirs = deb(dir, THEIRS, "7.0-2");
    let apt_conf = repository(dir, &[&mine, &theirs]);
    // The system has THEIRS already (installed by its owner, not the agent).
    run_ok(Command::new("dpkg").arg("-i").arg(&theirs));

    let pkg = |id: &str, name: &str| {
        json!({ "id": id, "name": id, "version": "1.0.0", "binary": name,
                "assets": { "x86_64": {
                    "package": { "apt": name, "apk": name, "opkg": name },
                    "path": format!("/usr/bin/{name}") } } })
    };
    let catalogue = common::write_catalogue(
        dir,
        &[
            pkg("mine", MINE),
            pkg("theirs", THEIRS),
            pkg("nowhere", "nnc-test-absent"),
            pkg("unlisted", "nnc-test-unlisted"),
        ],
    );
    // The packages this router's owner lets a catalogue install.
    let trust = format!("[trust]\npackages = [\"{MINE}\", \"{THEIRS}\", \"nnc-test-absent\"]\n");
    let apt = apt_conf.to_string_lossy().into_owned();
    let agent = Agent::start_in(
        &dir.join("agent"),
        &catalogue,
        &trust,
        None,
        &[("APT_CONFIG", &apt)],
    );

    let a = agent.install("mine", "a");
    let i = agent.wait_done(&a, TIMEOUT);
    assert_eq!(i["status"], "INSTALLED", "{i}\n{}", agent.log());
    assert_eq!(i["binaryPath"], format!("/usr/bin/{MINE}"));
    assert_eq!(i["verifiedBy"], format!("package:apt:{MINE}=1.2.3-1"));
    assert_eq!(installed(MINE).as_deref(), Some("1.2.3-1"));
    let b = agent.install("mine", "b");
    assert_eq!(agent.wait_done(&b, TIMEOUT)["status"], "INSTALLED");

    let t = agent.install("theirs", "t");
    let i = agent.wait_done(&t, TIMEOUT);
    assert_eq!(i["status"], "INSTALLED", "{i}");
    assert_eq!(i["verifiedBy"], format!("package:apt:{THEIRS}=7.0-2"));

    let n = agent.install("nowhere", "n");
    let i = agent.wait_done(&n, TIMEOUT);
    assert_eq!(i["status"], "FAILED", "{i}");
    assert_eq!(i["errorCode"], "PACKAGE_FAILED");
    assert!(
        i["error"]
            .as_str()
            .unwrap()
            .contains("Unable to locate package nnc-test-absent"),
        "{i}"
    );

    // A package the router's owner did not allow: refused before apt runs (apt would have
    // said PACKAGE_FAILED: the repository has no such package either).
    let u = agent.install("unlisted", "u");
    let i = agent.wait_done(&u, TIMEOUT);
    assert_eq!(i["errorCode"], "PACKAGE_NOT_ALLOWED", "{i}");
    assert!(
        i["error"].as_str().unwrap().contains("[trust] packages"),
        "{i}"
    );

    // The package the agent installed stays while an instance uses it, then goes.
    agent.uninstall(&a);
    common::wait_until("a to be gone", TIMEOUT, || {
        agent.gql(
            "query($i: ID!) { instance(id: $i) { id } }",
            json!({ "i": a }),
        )["data"]["instance"]
            .is_null()
    });
    assert_eq!(
        installed(MINE).as_deref(),
        Some("1.2.3-1"),
        "b still uses it"
    );
    agent.uninstall(&b);
    common::wait_until("the agent's package to be removed", TIMEOUT, || {
        installed(MINE).is_none()
    });
    // The system's own package is never removed by the agent.
    agent.uninstall(&t);
    common::wait_until("t to be gone", TIMEOUT, || {
        agent.gql(
            "query($i: ID!) { instance(id: $i) { id } }",
            json!({ "i": t }),
        )["data"]["instance"]
            .is_null()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(installed(THEIRS).as_deref(), Some("7.0-2"));
}
