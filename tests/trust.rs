//! Signed catalogues and checksums files (signify / usign format, and minisign) with
//! Debian's signify-openbsd and minisign as the independent implementations, the catalogue
//! serial, and trust-on-first-use pins.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Agent, BIN, Nginx, TempDir, run_ok, sha256_file};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

fn agent_cli(args: &[&Path]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("catalogue").args(args);
    c
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (p, s) = (
        dir.join(format!("{name}.pub")),
        dir.join(format!("{name}.sec")),
    );
    run_ok(
        Command::new(BIN)
            .args(["catalogue", "keygen"])
            .arg(&p)
            .arg(&s),
    );
    (p, s)
}

fn sign(sec: &Path, file: &Path) {
    run_ok(
        Command::new(BIN)
            .args(["catalogue", "sign"])
            .arg(sec)
            .arg(file),
    );
}

#[test]
fn keys_and_signatures_interoperate_with_signify_both_ways() {
    let dir = TempDir::new("signify");
    let msg = dir.path().join("catalogue.json");
    std::fs::write(&msg, b"{\"schema\": 1, \"features\": []}\n").unwrap();
    let sig = dir.path().join("catalogue.json.sig");

    // Our key pair: signify verifies what we sign and signs with our secret key.
    let (ours_pub, ours_sec) = keygen(dir.path(), "ours");
    sign(&ours_sec, &msg);
    run_ok(
        Command::new("signify-openbsd")
            .args(["-V", "-p"])
            .arg(&ours_pub)
            .arg("-m")
            .arg(&msg),
    );
    std::fs::remove_file(&sig).unwrap();
    run_ok(
        Command::new("signify-openbsd")
            .args(["-S", "-s"])
            .arg(&ours_sec)
            .arg("-m")
            .arg(&msg),
    );
    let out = run_ok(&mut agent_cli(&[Path::new("verify"), &ours_pub, &msg]));
    assert!(out.starts_with("Signature Verified"), "{out}");

    // signify's key pair (unencrypted): we verify what it signs and sign with its key.
    let (theirs_pub, theirs_sec) = (dir.path().join("theirs.pub"), dir.path().join("theirs.sec"));
    run_ok(
        Command::new("signify-openbsd")
            .args(["-G", "-n", "-p"])
            .arg(&theirs_pub)
            .arg("-s")
            .arg(&theirs_sec),
    );
    run_ok(
        Command::new("signify-openbsd")
            .args(["-S", "-s"])
            .arg(&theirs_sec)
            .arg("-m")
            .arg(&msg),
    );
    run_ok(&mut agent_cli(&[Path::new("verify"), &theirs_pub, &msg]));
    sign(&theirs_sec, &msg);
    run_ok(
        Command::new("signify-openbsd")
            .args(["-V", "-p"])
            .arg(&theirs_pub)
            .arg("-m")
            .arg(&msg),
    );

    // A wrong key, a changed message and a corrupt signature are all refused.
    let refused = |args: &[&Path]| {
        let out = agent_cli(args).output().unwrap();
        assert!(!out.status.success(), "{args:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(refused(&[Path::new("verify"), &ours_pub, &msg]).contains("not a trusted key"));
    std::fs::write(&msg, b"{\"schema\": 1, \"features\": [] }\n").unwrap();
    assert!(refused(&[Path::new("verify"), &theirs_pub, &msg]).contains("does not match"));
    std::fs::write(&sig, "untrusted comment: x\nRWQ=\n").unwrap();
    assert!(refused(&[Path::new("verify"), &theirs_pub, &msg]).contains("bytes, expected 74"));
}

#[test]
fn minisign_signatures_prehashed_and_legacy_verify_and_a_minisig_feed_is_trusted() {
    let dir = TempDir::new("minisign");
    let (public, secret) = (dir.path().join("feed.pub"), dir.path().join("feed.key"));
    // -W: no password, so nothing is asked on the closed stdin.
    run_ok(
        Command::new("minisign")
            .args(["-G", "-W", "-p"])
            .arg(&public)
            .arg("-s")
            .arg(&secret)
            .stdin(std::process::Stdio::null()),
    );
    let www = dir.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/usr/bin/true", www.join("true")).unwrap();
    let nginx = Nginx::start(&www, "");
    let cat = dir.path().join("feed.json");
    std::fs::write(
        &cat,
        catalogue_doc(7, &[tool(&nginx, &www, "true", "2.0.0")]),
    )
    .unwrap();
    let (prehashed, legacy) = (
        dir.path().join("feed.json.minisig"),
        dir.path().join("legacy.minisig"),
    );
    let s = |p: &Path| p.display().to_string();
    run_ok(
        Command::new("minisign")
            .args([
                "-S",
                "-s",
                &s(&secret),
                "-m",
                &s(&cat),
                "-t",
                "feed serial 7",
            ])
            .stdin(std::process::Stdio::null()),
    );
    run_ok(
        Command::new("minisign")
            .args([
                "-S",
                "-l",
                "-s",
                &s(&secret),
                "-m",
                &s(&cat),
                "-x",
                &s(&legacy),
            ])
            .stdin(std::process::Stdio::null()),
    );
    assert!(
        std::fs::read_to_string(&prehashed)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("RU"),
        "ED (prehashed, base64 RU...) is minisign's default"
    );
    for sig in [&prehashed, &legacy] {
        let out = run_ok(&mut agent_cli(&[Path::new("verify"), &public, &cat, sig]));
        assert!(out.starts_with("Signature Verified"), "{out}");
    }

    // A changed file, an edited trusted comment, a signify key that is not the signer.
    let refused = |sig: &Path, key: &Path| {
        let out = agent_cli(&[Path::new("verify"), key, &cat, sig])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{sig:?} was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let original = std::fs::read_to_string(&prehashed).unwrap();
    let edited = dir.path().join("edited.minisig");
    std::fs::write(&edited, original.replace("feed serial 7", "feed serial 9")).unwrap();
    assert!(
        refused(&edited, &public).contains("trusted comment"),
        "edited comment"
    );
    let (stranger, _) = keygen(dir.path(), "stranger");
    assert!(refused(&prehashed, &stranger).contains("not a trusted key"));
    let bytes = std::fs::read(&cat).unwrap();
    std::fs::write(&cat, [&bytes[..], b" "].concat()).unwrap();
    assert!(refused(&prehashed, &public).contains("does not match"));
    assert!(refused(&legacy, &public).contains("does not match"));
    std::fs::write(&cat, &bytes).unwrap();

    // The agent takes FEED.minisig when there is no FEED.sig, under require_signature.
    let trust = format!(
        "[trust]\nrequire_signature = true\ntrusted_keys = [{:?}]\n",
        s(&public)
    );
    let agent = Agent::start(&dir.path().join("agent"), &cat, &trust);
    let f = features(&agent);
    assert_eq!(f["features"][0]["version"], "2.0.0", "{f}");
    assert_eq!(f["agent"]["catalogueSerial"], 7, "{f}");
    assert_eq!(
        f["agent"]["catalogueSignedBy"].as_str().map(str::len),
        Some(16),
        "{f}"
    );
}

fn catalogue_doc(serial: u64, features: &[Value]) -> String {
    json!({ "schema": 1, "serial": serial, "features": features }).to_string()
}

fn tool(nginx: &Nginx, www: &Path, file: &str, version: &str) -> Value {
    json!({ "id": "tool", "name": "tool", "version": version, "binary": "tool",
            "assets": { "x86_64": { "url": nginx.url(file), "sha256": sha256_file(&www.join(file)) } } })
}

fn features(agent: &Agent) -> Value {
    agent.data(
        "{ features { id version } agent { catalogue catalogueSerial catalogueSignedBy } }",
        json!({}),
    )
}

#[test]
fn signed_catalogues_are_enforced_and_the_last_trusted_one_stays_in_use() {
    let root = TempDir::new("signed-catalogue");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/usr/bin/true", www.join("true")).unwrap();
    let nginx = Nginx::start(&www, "");
    let (public, secret) = keygen(root.path(), "feed");
    let (_, stranger) = keygen(root.path(), "stranger");
    let cat = root.path().join("feed.json");
    let sig = root.path().join("feed.json.sig");
    let write = |serial: u64, version: &str, signer: Option<&Path>| {
        std::fs::write(
            &cat,
            catalogue_doc(serial, &[tool(&nginx, &www, "true", version)]),
        )
        .unwrap();
        let _ = std::fs::remove_file(&sig);
        if let Some(s) = signer {
            sign(s, &cat);
        }
    };
    let trust = format!(
        "[trust]\nrequire_signature = true\ntrusted_keys = [{:?}]\n",
        public.display().to_string()
    );
    write(5, "1.0.0", Some(&secret));
    let mut agent = Agent::start(root.path(), &cat, &trust);
    let f = features(&agent);
    assert_eq!(f["features"][0]["version"], "1.0.0");
    assert_eq!(f["agent"]["catalogueSerial"], 5);
    let signed_by = f["agent"]["catalogueSignedBy"].as_str().unwrap().to_owned();
    assert_eq!(signed_by.len(), 16, "{f}");

    // Tampered (a new version without a new signature), unsigned, signed by a stranger, or
    // an older serial: each is refused with its reason, and version 1.0.0 stays in use.
    let tampered = || {
        let doc = catalogue_doc(6, &[tool(&nginx, &www, "true", "6.6.6")]);
        std::fs::write(&cat, doc).unwrap();
    };
    for (case, prepare, reason) in [
        (
            "tampered",
            Box::new(tampered) as Box<dyn Fn()>,
            "does not match the data",
        ),
        (
            "unsigned",
            Box::new(|| write(6, "6.6.6", None)),
            "no signature, and trust.require_signature is on",
        ),
        (
            "stranger",
            Box::new(|| write(6, "6.6.6", Some(&stranger))),
            "not a trusted key",
        ),
        (
            "replayed",
            Box::new(|| write(3, "0.9.0", Some(&secret))),
            "serial 3 is older than serial 5",
        ),
    ] {
        agent.kill9();
        prepare();
        agent.restart();
        let f = features(&agent);
        assert_eq!(f["features"][0]["version"], "1.0.0", "[{case}] {f}");
        assert!(
            f["agent"]["catalogue"]
                .as_str()
                .unwrap()
                .starts_with("last trusted copy"),
            "[{case}] {f}"
        );
        assert!(
            agent.log().contains(reason),
            "[{case}] no '{reason}' in the log:\n{}",
            agent.log()
        );
    }

    // A properly signed newer catalogue is taken.
    agent.kill9();
    write(7, "2.0.0", Some(&secret));
    agent.restart();
    let f = features(&agent);
    assert_eq!(
        (
            f["features"][0]["version"].as_str(),
            f["agent"]["catalogueSerial"].as_u64()
        ),
        (Some("2.0.0"), Some(7)),
        "{f}"
    );
    agent.kill9();

    // Without a last trusted copy a refused catalogue stops the start, saying why.
    write(8, "3.0.0", Some(&stranger));
    let fresh = root.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let config = fresh.join("nnc.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\ncatalogue = {:?}\n{trust}",
            fresh.join("data").display().to_string(),
            cat.display().to_string()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad signature") && err.contains("not a trusted key"),
        "{err}"
    );
}

#[test]
fn the_catalogue_reloads_without_a_restart_and_a_refused_one_changes_nothing() {
    let root = TempDir::new("reload");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/usr/bin/true", www.join("true")).unwrap();
    let nginx = Nginx::start(&www, "");
    let (public, secret) = keygen(root.path(), "feed");
    let cat = root.path().join("feed.json");
    let write = |serial: u64, versions: &[&str], signed: bool| {
        let entries: Vec<Value> = versions
            .iter()
            .map(|v| tool(&nginx, &www, "true", v))
            .collect();
        std::fs::write(&cat, catalogue_doc(serial, &entries)).unwrap();
        if signed {
            sign(&secret, &cat);
        }
    };
    write(5, &["1.0.0"], true);
    let trust = format!(
        "[trust]\nrequire_signature = true\ntrusted_keys = [{:?}]\n",
        public.display().to_string()
    );
    let agent = Agent::start(root.path(), &cat, &trust);
    let pid = agent.pid();
    let id = agent.install("tool", "one");
    assert_eq!(agent.wait_done(&id, TIMEOUT)["status"], "INSTALLED");
    let events = agent.events();

    const RELOAD: &str =
        "mutation { reloadCatalogue { catalogue catalogueSerial catalogueSignedBy } }";
    write(6, &["2.0.0", "1.0.0"], true);
    let r = agent.data(RELOAD, json!({}));
    assert_eq!(r["reloadCatalogue"]["catalogueSerial"], 6, "{r}");
    let versions = agent.data("{ features { id version versions } }", json!({}));
    assert_eq!(versions["features"][0]["version"], "2.0.0", "{versions}");
    common::wait_until("a catalogue.reloaded event", TIMEOUT, || {
        events
            .all()
            .iter()
            .any(|e| e["type"] == "catalogue.reloaded" && e["payload"]["serial"] == 6)
    });

    // Refused reloads say why and leave serial 6 in use.
    for (case, prepare, reason) in [
        (
            "tampered",
            Box::new(|| {
                let doc = catalogue_doc(9, &[tool(&nginx, &www, "true", "9.9.9")]);
                std::fs::write(&cat, doc).unwrap();
            }) as Box<dyn Fn()>,
            "does not match the data",
        ),
        (
            "replayed",
            Box::new(|| write(4, &["0.9.0"], true)),
            "serial 4 is older than serial 6",
        ),
    ] {
        prepare();
        let doc = agent.gql(RELOAD, json!({}));
        assert_eq!(
            doc["errors"][0]["extensions"]["code"], "CATALOGUE_REFUSED",
            "[{case}] {doc}"
        );
        let message = doc["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(reason), "[{case}] {message}");
        let f = features(&agent);
        assert_eq!(
            (
                f["features"][0]["version"].as_str(),
                f["agent"]["catalogueSerial"].as_u64()
            ),
            (Some("2.0.0"), Some(6)),
            "[{case}] {f}"
        );
    }

    // What the reload brought can be used at once: the instance moves to 2.0.0, and the
    // agent never restarted.
    let q = "mutation($id: ID!, $v: String!) { updateInstance(id: $id, version: $v) { status } }";
    let r = agent.gql(q, json!({ "id": id, "v": "2.0.0" }));
    assert!(r["errors"].is_null(), "{r}");
    common::wait_until("the update to 2.0.0", TIMEOUT, || {
        let i = agent.instance(&id);
        i["status"] == "INSTALLED" && i["version"] == "2.0.0"
    });
    assert_eq!(agent.pid(), pid, "the agent restarted");
}

#[test]
fn first_verified_digests_are_pinned_until_an_operator_unpins() {
    let root = TempDir::new("tofu");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/usr/bin/true", www.join("a")).unwrap();
    std::fs::copy("/usr/bin/false", www.join("b")).unwrap();
    let nginx = Nginx::start(&www, "");
    let cat = root.path().join("feed.json");
    std::fs::write(&cat, catalogue_doc(1, &[tool(&nginx, &www, "a", "1.0.0")])).unwrap();
    let mut agent = Agent::start(root.path(), &cat, "");
    let id = agent.install("tool", "t");
    let done = agent.wait_done(&id, TIMEOUT);
    assert_eq!(done["status"], "INSTALLED", "{done}");
    agent.uninstall(&id);

    // Same version, another binary: the pin from the first install refuses it.
    agent.kill9();
    std::fs::write(&cat, catalogue_doc(2, &[tool(&nginx, &www, "b", "1.0.0")])).unwrap();
    agent.restart();
    let id = agent.install("tool", "t");
    let failed = agent.wait_done(&id, TIMEOUT);
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["errorCode"], "PIN_MISMATCH", "{failed}");
    assert_eq!(failed["failedStep"], "verifying");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains(&sha256_file(&www.join("a"))),
        "{failed}"
    );
    assert!(
        !agent.data_dir.join("features/tool/1.0.0/bin/tool").exists(),
        "nothing unpinned is put in place"
    );
    agent.uninstall(&id);

    let n = agent.data(
        "mutation { unpinFeature(featureId: \"tool\", version: \"1.0.0\") }",
        json!({}),
    );
    assert_eq!(n["unpinFeature"], 1);
    assert!(
        agent.log().contains("pins of tool 1.0.0 cleared"),
        "{}",
        agent.log()
    );
    let id = agent.install("tool", "t");
    let done = agent.wait_done(&id, TIMEOUT);
    assert_eq!(done["status"], "INSTALLED", "{done}");
    assert_eq!(done["sha256"], sha256_file(&www.join("b")));
    // Installed again from the same pin: the pin vouches too.
    agent.uninstall(&id);
    let id = agent.install("tool", "t");
    assert_eq!(agent.wait_done(&id, TIMEOUT)["verifiedBy"], "pin+tofu");
}

#[test]
fn a_signed_checksums_file_is_checked_against_the_trusted_keys() {
    let root = TempDir::new("checksums-sig");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/usr/bin/true", www.join("tool-1")).unwrap();
    std::fs::write(
        www.join("SHA256SUMS"),
        format!("{}  tool-1\n", sha256_file(&www.join("tool-1"))),
    )
    .unwrap();
    let (public, secret) = keygen(root.path(), "feed");
    let (_, stranger) = keygen(root.path(), "stranger");
    sign(&secret, &www.join("SHA256SUMS"));
    std::fs::copy(www.join("SHA256SUMS.sig"), www.join("good.sig")).unwrap();
    sign(&stranger, &www.join("SHA256SUMS"));
    std::fs::copy(www.join("SHA256SUMS.sig"), www.join("stranger.sig")).unwrap();
    let nginx = Nginx::start(&www, "");
    let entry = |id: &str, sig: &str| {
        json!({ "id": id, "name": id, "version": "1", "binary": "tool",
                "assets": { "x86_64": { "url": nginx.url("tool-1"), "checksums": nginx.url("SHA256SUMS"), "checksums_sig": nginx.url(sig) } } })
    };
    let cat = common::write_catalogue(
        root.path(),
        &[entry("good", "good.sig"), entry("bad", "stranger.sig")],
    );
    // Configured keys make the catalogue's own signature mandatory too.
    sign(&secret, &cat);
    let trust = format!(
        "[trust]\ntrusted_keys = [{:?}]\n",
        public.display().to_string()
    );
    let agent = Agent::start(root.path(), &cat, &trust);
    let good = agent.wait_done(&agent.install("good", "g"), TIMEOUT);
    assert_eq!(good["status"], "INSTALLED", "{good}");
    assert!(
        good["verifiedBy"]
            .as_str()
            .unwrap()
            .starts_with("checksums+signature:"),
        "{good}"
    );
    let bad = agent.wait_done(&agent.install("bad", "b"), TIMEOUT);
    assert_eq!(bad["errorCode"], "BAD_SIGNATURE", "{bad}");
    assert!(
        bad["error"].as_str().unwrap().contains("not a trusted key"),
        "{bad}"
    );
}

const RELOAD: &str = "mutation { reloadCatalogue { catalogue catalogueSerial catalogueSignedBy } }";

fn trusted_keys(public: &Path, extra: &str) -> String {
    format!(
        "[trust]\n{extra}trusted_keys = [{:?}]\n",
        public.display().to_string()
    )
}

/// Runs `serve` on a fresh data dir under `dir` with `catalogue` (a path or URL) and the
/// `[trust]` TOML; the start must be refused with exit code 2. Returns stderr. An agent that
/// starts instead is killed and the test fails (it never hangs on one).
fn start_refused(dir: &Path, catalogue: &str, trust: &str) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("nnc.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:0\"\ncatalogue = {catalogue:?}\n{trust}",
            dir.join("data").display().to_string()
        ),
    )
    .unwrap();
    let (stdout, stderr) = (dir.join("stdout.log"), dir.join("stderr.log"));
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        let listening = std::fs::read_to_string(&stdout).is_ok_and(|o| o.contains("listening"));
        if listening || start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&stderr).unwrap_or_default();
    assert_eq!(status, Some(2), "the agent was not refused: {err}");
    err
}

#[test]
fn configured_keys_alone_make_a_signature_mandatory_at_start_and_on_reload() {
    let root = TempDir::new("keys-require");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/usr/bin/true", www.join("true")).unwrap();
    let nginx = Nginx::start(&www, "");
    let (public, secret) = keygen(root.path(), "feed");
    let cat = root.path().join("feed.json");
    // Keys, and no require_signature key at all.
    let trust = trusted_keys(&public, "");
    std::fs::write(
        &cat,
        catalogue_doc(5, &[tool(&nginx, &www, "true", "1.0.0")]),
    )
    .unwrap();

    let err = start_refused(
        &root.path().join("fresh"),
        &cat.display().to_string(),
        &trust,
    );
    assert!(
        err.contains("no signature, and trust.require_signature is on"),
        "{err}"
    );

    sign(&secret, &cat);
    let agent = Agent::start(&root.path().join("agent"), &cat, &trust);
    let f = features(&agent);
    assert_eq!(f["agent"]["catalogueSerial"], 5, "{f}");
    assert_eq!(
        f["agent"]["catalogueSignedBy"].as_str().map(str::len),
        Some(16),
        "{f}"
    );

    std::fs::write(
        &cat,
        catalogue_doc(6, &[tool(&nginx, &www, "true", "6.6.6")]),
    )
    .unwrap();
    std::fs::remove_file(root.path().join("feed.json.sig")).unwrap();
    let doc = agent.gql(RELOAD, json!({}));
    assert_eq!(
        doc["errors"][0]["extensions"]["code"], "CATALOGUE_REFUSED",
        "{doc}"
    );
    let message = doc["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("no signature"), "{message}");
    let f = features(&agent);
    assert_eq!(
        (
            f["features"][0]["version"].as_str(),
            f["agent"]["catalogueSerial"].as_u64()
        ),
        (Some("1.0.0"), Some(5)),
        "{f}"
    );
}

#[test]
fn a_signature_that_is_there_but_unreadable_refuses_the_catalogue_and_never_falls_back_to_minisig()
{
    let root = TempDir::new("sig-unreadable");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/usr/bin/true", www.join("true")).unwrap();
    // The .sig answers 500 while the flag file exists, and is served as a file otherwise.
    let nginx = Nginx::start(
        &www,
        "location = /catalogue.json.sig { if (-f $document_root/sig-broken) { return 500; } }",
    );
    let broken = www.join("sig-broken");
    let (public, secret) = keygen(root.path(), "feed");
    let cat = www.join("catalogue.json");
    let (sig, minisig) = (
        www.join("catalogue.json.sig"),
        www.join("catalogue.json.minisig"),
    );
    let url = nginx.url("catalogue.json");
    let sig_url = nginx.url("catalogue.json.sig");
    // A valid detached signature under the .minisig name (the agent tells formats apart by
    // content), and the same one as .sig when `with_sig`.
    let publish = |serial: u64, version: &str, with_sig: bool| {
        std::fs::write(
            &cat,
            catalogue_doc(serial, &[tool(&nginx, &www, "true", version)]),
        )
        .unwrap();
        run_ok(&mut agent_cli(&[
            Path::new("sign"),
            &secret,
            &cat,
            &minisig,
        ]));
        let _ = std::fs::remove_file(&sig);
        if with_sig {
            std::fs::copy(&minisig, &sig).unwrap();
        }
    };
    let trust = trusted_keys(&public, "");

    // No .sig at all (404): the .minisig is what is checked.
    publish(5, "1.0.0", false);
    let mut agent = Agent::start(&root.path().join("agent"), Path::new(&url), &trust);
    let f = features(&agent);
    assert_eq!(f["agent"]["catalogueSerial"], 5, "{f}");
    assert_eq!(
        f["agent"]["catalogueSignedBy"].as_str().map(str::len),
        Some(16),
        "{f}"
    );

    // A .sig that answers 500, a .sig of bytes that are not text, a .sig that is text but no
    // signature: each refuses the reload although a valid .minisig sits next to it.
    publish(6, "6.6.6", true);
    std::fs::write(&broken, "").unwrap();
    let not_text = [0xffu8, 0xfe, 0x00, 0x80, 0x81];
    for (case, prepare, reason) in [
        (
            "500",
            Box::new(|| {}) as Box<dyn Fn()>,
            "server answered 500",
        ),
        (
            "not UTF-8",
            Box::new(|| {
                std::fs::remove_file(&broken).unwrap();
                std::fs::write(&sig, not_text).unwrap();
            }),
            "is not text (not UTF-8)",
        ),
        (
            "garbage text",
            Box::new(|| std::fs::write(&sig, "garbage, not a signature\n").unwrap()),
            "bad signature",
        ),
    ] {
        prepare();
        let doc = agent.gql(RELOAD, json!({}));
        assert_eq!(
            doc["errors"][0]["extensions"]["code"], "CATALOGUE_REFUSED",
            "[{case}] {doc}"
        );
        let message = doc["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(&sig_url) || case == "garbage text",
            "[{case}] {message}"
        );
        assert!(message.contains(reason), "[{case}] {message}");
        let f = features(&agent);
        assert_eq!(
            (
                f["features"][0]["version"].as_str(),
                f["agent"]["catalogueSerial"].as_u64()
            ),
            (Some("1.0.0"), Some(5)),
            "[{case}] {f}"
        );
    }
    assert!(
        nginx
            .requests_for("/catalogue.json.sig")
            .iter()
            .any(|l| l.contains(" 500 ")),
        "{}",
        nginx.access_log()
    );

    // At start: the last trusted copy (serial 5) is used, with the reason in the log; with
    // no copy the start fails.
    agent.kill9();
    std::fs::copy(&minisig, &sig).unwrap();
    std::fs::write(&broken, "").unwrap();
    agent.restart();
    let f = features(&agent);
    assert_eq!(f["agent"]["catalogueSerial"], 5, "{f}");
    assert!(
        f["agent"]["catalogue"]
            .as_str()
            .unwrap_or_default()
            .starts_with("last trusted copy"),
        "{f}"
    );
    assert!(
        agent
            .log()
            .contains(&format!("GET {sig_url}: server answered 500")),
        "{}",
        agent.log()
    );
    let err = start_refused(&root.path().join("fresh"), &url, &trust);
    assert!(err.contains(&sig_url) && err.contains("500"), "{err}");

    // A local .sig that cannot be read (a directory) is no more "absent" than a 500.
    let local = root.path().join("local");
    std::fs::create_dir_all(local.join("feed.json.sig")).unwrap();
    std::fs::copy(&cat, local.join("feed.json")).unwrap();
    std::fs::copy(&minisig, local.join("feed.json.minisig")).unwrap();
    let err = start_refused(
        &root.path().join("fresh-local"),
        &local.join("feed.json").display().to_string(),
        &trust,
    );
    assert!(
        err.contains(&local.join("feed.json.sig").display().to_string())
            && err.contains("Is a directory"),
        "{err}"
    );
}

#[test]
fn with_require_signature_off_an_unsigned_catalogue_is_accepted_but_never_raises_the_serial() {
    let root = TempDir::new("unsigned-serial");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/usr/bin/true", www.join("true")).unwrap();
    let nginx = Nginx::start(&www, "");
    let (public, secret) = keygen(root.path(), "feed");
    let cat = root.path().join("feed.json");
    let sig = root.path().join("feed.json.sig");
    let write = |serial: u64, version: &str, signed: bool| {
        std::fs::write(
            &cat,
            catalogue_doc(serial, &[tool(&nginx, &www, "true", version)]),
        )
        .unwrap();
        let _ = std::fs::remove_file(&sig);
        if signed {
            sign(&secret, &cat);
        }
    };
    let trust = trusted_keys(&public, "require_signature = false\n");

    // An unsigned catalogue with a huge serial is taken...
    write(9999, "9.9.9", false);
    let mut agent = Agent::start(root.path(), &cat, &trust);
    let f = features(&agent);
    assert_eq!(f["agent"]["catalogueSerial"], 9999, "{f}");
    assert!(f["agent"]["catalogueSignedBy"].is_null(), "{f}");

    // ...but it did not raise the stored serial: the real signed feed, serial 5, is taken.
    write(5, "1.0.0", true);
    let r = agent.data(RELOAD, json!({}));
    assert_eq!(r["reloadCatalogue"]["catalogueSerial"], 5, "{r}");
    let f = features(&agent);
    assert_eq!(
        (
            f["features"][0]["version"].as_str(),
            f["agent"]["catalogueSerial"].as_u64()
        ),
        (Some("1.0.0"), Some(5)),
        "{f}"
    );

    // The start said that keys are configured but not required.
    assert!(
        agent.log().contains(
            "unsigned catalogues are accepted although trust.trusted_keys are configured"
        ),
        "{}",
        agent.log()
    );

    // An unsigned catalogue is still held to the stored serial.
    write(3, "0.3.0", false);
    let doc = agent.gql(RELOAD, json!({}));
    assert_eq!(
        doc["errors"][0]["extensions"]["code"], "CATALOGUE_REFUSED",
        "{doc}"
    );
    let message = doc["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("serial 3 is older than serial 5"),
        "{message}"
    );

    // An unsigned serial 7 is used, but the last trusted copy stays the signed serial 5.
    write(7, "7.0.0", false);
    let r = agent.data(RELOAD, json!({}));
    assert_eq!(r["reloadCatalogue"]["catalogueSerial"], 7, "{r}");
    agent.kill9();
    std::fs::write(&cat, "not a catalogue").unwrap();
    agent.restart();
    let f = features(&agent);
    assert_eq!(
        (
            f["features"][0]["version"].as_str(),
            f["agent"]["catalogueSerial"].as_u64()
        ),
        (Some("1.0.0"), Some(5)),
        "{f}"
    );
    assert_eq!(
        f["agent"]["catalogueSignedBy"].as_str().map(str::len),
        Some(16),
        "{f}"
    );
}
