//! Bad input gets a clear error code and changes nothing: hostile archives, lying checksums,
//! malformed GraphQL requests, missing or wrong tokens, bad command lines.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Agent, Nginx, TempDir, feature, make_fixtures, sha256_file, write_catalogue};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);
/// The agent may unpack at most 16 MiB; the bombs inflate to 32 MiB.
const SMALL_CAP: &str = "[download]\nmax_bytes = 16777216\nretry_delay_secs = 0.05\nretries = 1\n";

fn find_named(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            out.push(p.display().to_string());
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            find_named(&p, prefix, out);
        }
    }
}

#[test]
fn hostile_archives_and_checksums_are_refused_with_their_codes() {
    let root = TempDir::new("hostile");
    let www = root.path().join("www");
    make_fixtures(
        &www,
        &["hostile", "/usr/bin/true", &(32u64 << 20).to_string()],
    );
    let nginx = Nginx::start(&www, "");
    let archive = |id: &str, file: &str, kind: &str| {
        let mut f = feature(
            id,
            "tool",
            json!({ "url": nginx.url(file), "sha256": sha256_file(&www.join(file)),
                    "archive": kind, "path": "bin/tool" }),
        );
        f["version"] = json!("1");
        f
    };
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            archive("traversal", "traversal.tar.gz", "tar.gz"),
            "installing",
            "UNSAFE_ARCHIVE",
        ),
        (
            archive("absolute", "absolute.tar.gz", "tar.gz"),
            "installing",
            "UNSAFE_ARCHIVE",
        ),
        (
            archive("symlink", "symlink.tar.gz", "tar.gz"),
            "installing",
            "UNSAFE_ARCHIVE",
        ),
        (
            archive("hardlink", "hardlink.tar.gz", "tar.gz"),
            "installing",
            "UNSAFE_ARCHIVE",
        ),
        (
            archive("device", "device.tar.gz", "tar.gz"),
            "installing",
            "UNSAFE_ARCHIVE",
        ),
        (
            archive("fifo", "fifo.tar.gz", "tar.gz"),
            "installing",
            "UNSAFE_ARCHIVE",
        ),
        (
            archive("duplicate", "duplicate.tar.gz", "tar.gz"),
            "installing",
            "UNSAFE_ARCHIVE",
        ),
        (
            archive("bomb", "bomb.tar.gz", "tar.gz"),
            "installing",
            "ARCHIVE_TOO_LARGE",
        ),
        (
            archive("missing", "missing.tar.gz", "tar.gz"),
            "installing",
            "BINARY_NOT_IN_ARCHIVE",
        ),
        (
            archive("garbage", "garbage.tar.gz", "tar.gz"),
            "installing",
            "ARCHIVE_INVALID",
        ),
        (
            archive("zip-traversal", "traversal.zip", "zip"),
            "installing",
            "UNSAFE_ARCHIVE",
        ),
        (
            archive("zip-symlink", "symlink.zip", "zip"),
            "installing",
            "UNSAFE_ARCHIVE",
        ),
        (
            archive("zip-bomb", "bomb.zip", "zip"),
            "installing",
            "ARCHIVE_TOO_LARGE",
        ),
        (
            feature(
                "wrong-sha",
                "tool",
                json!({ "url": nginx.url("missing.tar.gz"), "sha256": "ab".repeat(32) }),
            ),
            "verifying",
            "CHECKSUM_MISMATCH",
        ),
        (
            feature(
                "malformed-sums",
                "tool",
                json!({ "url": nginx.url("missing.tar.gz"), "checksums": nginx.url("malformed-checksums.txt") }),
            ),
            "verifying",
            "CHECKSUMS_INVALID",
        ),
        (
            feature(
                "unlisted",
                "tool",
                json!({ "url": nginx.url("missing.tar.gz"), "checksums": nginx.url("other-checksums.txt") }),
            ),
            "verifying",
            "CHECKSUM_NOT_LISTED",
        ),
        (
            feature(
                "no-sums",
                "tool",
                json!({ "url": nginx.url("missing.tar.gz"), "checksums": nginx.url("absent.txt") }),
            ),
            "verifying",
            "CHECKSUMS_UNAVAILABLE",
        ),
    ];
    let features: Vec<Value> = cases.iter().map(|c| c.0.clone()).collect();
    let catalogue = write_catalogue(root.path(), &features);
    let agent = Agent::start(&root.path().join("agent"), &catalogue, SMALL_CAP);
    let ids: Vec<String> = cases
        .iter()
        .map(|c| agent.install(c.0["id"].as_str().unwrap(), "h"))
        .collect();
    for ((f, step, code), id) in cases.iter().zip(&ids) {
        let inst = agent.wait_done(id, TIMEOUT);
        let ctx = format!("{}: {inst}", f["id"]);
        assert_eq!(inst["status"], "FAILED", "{ctx}");
        assert_eq!(inst["failedStep"], *step, "{ctx}");
        assert_eq!(inst["errorCode"], *code, "{ctx}");
        assert!(inst["binaryPath"].is_null(), "{ctx}");
        let version_dir = agent.data_dir.join(format!(
            "features/{}/{}",
            f["id"].as_str().unwrap(),
            f["version"].as_str().unwrap()
        ));
        for sub in ["bin", "download"] {
            let left: Vec<_> = std::fs::read_dir(version_dir.join(sub))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .collect();
            assert!(left.is_empty(), "{ctx}: left behind {left:?}");
        }
    }
    let wrong = agent.instance(&ids[cases.iter().position(|c| c.0["id"] == "wrong-sha").unwrap()]);
    assert_eq!(wrong["progress"]["status"], "verification_failed");
    let traversal = agent.instance(&ids[0]);
    assert!(
        traversal["error"]
            .as_str()
            .unwrap()
            .contains("../../evil-traversal"),
        "{traversal}"
    );

    // Nothing named evil-* was written anywhere outside the fixtures, nor in /tmp.
    let mut found = Vec::new();
    find_named(&root.path().join("agent"), "evil", &mut found);
    assert!(found.is_empty(), "{found:?}");
    assert!(!Path::new("/tmp/evil-absolute").exists());
    assert!(!root.path().join("evil-traversal").exists());
}

fn start_plain_agent(root: &TempDir) -> Agent {
    start_plain_agent_with(root, "")
}

fn start_plain_agent_with(root: &TempDir, extra_toml: &str) -> Agent {
    let catalogue = write_catalogue(
        root.path(),
        &[
            feature(
                "tool",
                "tool",
                json!({ "url": "http://127.0.0.1:9/tool", "sha256": "00".repeat(32) }),
            ),
            json!({ "id": "armonly", "name": "armonly", "version": "1", "binary": "b",
                    "assets": { "aarch64": { "url": "http://127.0.0.1:9/b", "sha256": "00".repeat(32) } } }),
        ],
    );
    Agent::start(root.path(), &catalogue, extra_toml)
}

const INSTALL: &str = "mutation($f: ID!, $r: ID!, $n: String!, $s: JSON) { installFeature(featureId: $f, routerId: $r, name: $n, settings: $s) { instanceId } }";

#[test]
fn bad_graphql_requests_get_codes_and_create_nothing() {
    let root = TempDir::new("badapi");
    let agent = start_plain_agent(&root);
    let install = |f: &str, r: &str, n: &str, s: Value| {
        agent.error_code(INSTALL, json!({ "f": f, "r": r, "n": n, "s": s }))
    };
    for name in ["../x", "UPPER", "abcdefghijklmnopq", "", "-lead", "a b"] {
        assert_eq!(
            install("tool", "local", name, Value::Null),
            "INVALID_NAME",
            "{name:?}"
        );
    }
    assert_eq!(
        install("nope", "local", "a", Value::Null),
        "UNKNOWN_FEATURE"
    );
    assert_eq!(
        install("tool", "mikrotik-1", "a", Value::Null),
        "UNKNOWN_ROUTER"
    );
    assert_eq!(
        install("armonly", "local", "a", Value::Null),
        "UNSUPPORTED_ARCH"
    );
    assert_eq!(
        install("tool", "local", "a", json!([1, 2])),
        "INVALID_SETTINGS"
    );
    assert_eq!(
        agent.error_code("{ instance(id: \"../../etc/passwd\") { id } }", json!({})),
        "INVALID_ID"
    );
    assert_eq!(
        agent.error_code("{ instance(id: \"0123456789abcdef\") { id } }", json!({})),
        "NOT_FOUND"
    );
    assert_eq!(
        agent.error_code(
            "mutation { uninstallInstance(id: \"x\") { instanceId } }",
            json!({})
        ),
        "INVALID_ID"
    );
    let deep = format!("{{ {}x{} }}", "a { ".repeat(12), " }".repeat(12));
    assert_eq!(agent.error_code(&deep, json!({})), "QUERY_TOO_DEEP");
    let very_deep = format!("{{ {}x{} }}", "a { ".repeat(100), " }".repeat(100));
    assert_eq!(agent.error_code(&very_deep, json!({})), "QUERY_TOO_DEEP");
    assert_eq!(
        agent.error_code("{ instances { nope } }", json!({})),
        "GRAPHQL_VALIDATION_FAILED"
    );
    assert_eq!(
        agent.error_code("{ instances {", json!({})),
        "GRAPHQL_PARSE_FAILED"
    );
    // Introspection is off unless the agent runs with --dev.
    assert_eq!(
        agent.gql("{ __schema { types { name } } }", json!({}))["data"]["__schema"],
        Value::Null
    );

    // HTTP-level refusals.
    let body = json!({ "query": "{ instances { id } }" }).to_string();
    let (status, v) = agent.post(&body, None);
    assert_eq!(
        (status, v["errors"][0]["extensions"]["code"].as_str()),
        (401, Some("UNAUTHENTICATED"))
    );
    let (status, _) = agent.post(&body, Some("not-the-token"));
    assert_eq!(status, 401);
    let (status, _) = agent.post(&body, Some(&format!("{}x", agent.token)));
    assert_eq!(status, 401);
    let huge =
        json!({ "query": format!("{{ instances {{ id }} }} #{}", "x".repeat(70_000)) }).to_string();
    let (status, v) = agent.post(&huge, Some(&agent.token));
    assert_eq!(
        (status, v["errors"][0]["extensions"]["code"].as_str()),
        (413, Some("BODY_TOO_LARGE"))
    );
    let (status, v) = agent.post("this is not json", Some(&agent.token));
    assert_eq!(
        (status, v["errors"][0]["extensions"]["code"].as_str()),
        (400, Some("BAD_REQUEST"))
    );
    let health = ureq::get(&format!("http://127.0.0.1:{}/health", agent.port))
        .call()
        .unwrap();
    assert_eq!(health.status(), 200);

    // None of it created anything.
    let list = agent.data("{ instances { id } }", json!({}));
    assert_eq!(list["instances"], json!([]));
    let features_dir = agent.data_dir.join("features");
    assert!(!features_dir.exists() || std::fs::read_dir(&features_dir).unwrap().count() == 0);
    assert!(
        !agent.log().contains(&agent.token),
        "the token leaked into the log"
    );
}

#[test]
fn websocket_refuses_a_missing_or_wrong_token() {
    let root = TempDir::new("wsauth");
    let agent = start_plain_agent(&root);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/subscribe.py");
    for token in ["wrong-token", ""] {
        let out = Command::new(common::python())
            .arg(&script)
            .args([&agent.url(), token, "rejected"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "token {token:?} was not refused: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        agent
            .log()
            .contains("connection_init without a valid token"),
        "{}",
        agent.log()
    );
}

#[test]
fn bad_command_lines_and_catalogues_exit_2_with_one_line() {
    let root = TempDir::new("cli");
    let bad_json = root.path().join("bad.json");
    std::fs::write(
        &bad_json,
        "{\"schema\": 1, \"features\": [ {\"id\": \"x\"} ] }",
    )
    .unwrap();
    let data = root.path().join("data");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["serve".into(), "--bogus".into()],
            "unknown option '--bogus'",
        ),
        (
            vec!["serve".into(), "--listen".into(), "nowhere".into()],
            "is not an address",
        ),
        (vec!["launch".into()], "unknown command"),
        (
            vec![
                "serve".into(),
                "--data-dir".into(),
                data.display().to_string(),
                "--catalogue".into(),
                "/nonexistent/cat.json".into(),
            ],
            "cannot read catalogue /nonexistent/cat.json",
        ),
        (
            vec![
                "serve".into(),
                "--data-dir".into(),
                data.display().to_string(),
                "--catalogue".into(),
                bad_json.display().to_string(),
            ],
            "not a valid catalogue",
        ),
        (
            vec![
                "serve".into(),
                "--data-dir".into(),
                data.display().to_string(),
                "--catalogue".into(),
                "http://127.0.0.1:9/cat.json".into(),
            ],
            "cannot load catalogue",
        ),
    ];
    for (args, needle) in cases {
        let out = Command::new(common::BIN).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        let last = stderr.lines().last().unwrap_or("");
        assert!(
            last.starts_with("nnc-agent: ") && last.contains(needle),
            "{args:?}: {stderr}"
        );
        assert_eq!(
            stderr
                .lines()
                .filter(|l| l.starts_with("nnc-agent: "))
                .count(),
            1,
            "{stderr}"
        );
    }
    let help = Command::new(common::BIN).arg("help").output().unwrap();
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--data-dir"));
}

#[test]
fn the_token_file_is_created_private_and_reused() {
    use std::os::unix::fs::PermissionsExt;
    let root = TempDir::new("token");
    let mut agent = start_plain_agent(&root);
    let token_file = agent.data_dir.join("token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let first = agent.token.clone();
    assert!(first.len() >= 32);
    agent.kill9();
    agent.restart();
    assert_eq!(agent.token, first, "the token changed across restarts");
    assert!(
        agent.log().contains(&token_file.display().to_string()),
        "the token's path is printed"
    );
    assert!(!agent.log().contains(&first));
}

/// `POST /graphql { instances }` on a fresh connection; the raw reply, headers included.
fn raw_post(agent: &Agent, token: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = r#"{"query":"{ instances { id } }"}"#;
    write!(
        s,
        "POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn status_of(reply: &str) -> u16 {
    reply
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP reply: {reply:?}"))
}

fn header_of<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    reply
        .split("\r\n\r\n")
        .next()?
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// The third-party WebSocket client's verdict on `token`: true when the agent refused it.
fn websocket_refuses(agent: &Agent, token: &str) -> bool {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/subscribe.py");
    Command::new(common::python())
        .arg(&script)
        .args([&agent.url(), token, "rejected"])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn repeated_wrong_tokens_lock_the_address_out_until_the_window_ends() {
    let root = TempDir::new("lockout");
    let agent = start_plain_agent_with(
        &root,
        "[api]\nauth_failure_limit = 3\nauth_window_secs = 4\n",
    );
    // Failures over HTTP and over the WebSocket's connection_init count together.
    assert_eq!(status_of(&raw_post(&agent, "guess-1")), 401);
    assert_eq!(status_of(&raw_post(&agent, "guess-2")), 401);
    assert!(websocket_refuses(&agent, "guess-3"));

    let locked = raw_post(&agent, "guess-4");
    assert_eq!(status_of(&locked), 429, "{locked}");
    assert!(locked.contains("\"RATE_LIMITED\""), "{locked}");
    let wait: u64 = header_of(&locked, "retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {locked}"));
    assert!((1..=4).contains(&wait), "Retry-After {wait}");
    // While locked out even the right token gets 429, so a guess cannot tell it hit.
    assert_eq!(status_of(&raw_post(&agent, &agent.token)), 429);
    assert!(websocket_refuses(&agent, &agent.token));
    let health = ureq::get(&format!("http://127.0.0.1:{}/health", agent.port))
        .call()
        .unwrap();
    assert_eq!(health.status(), 200, "/health stays open");

    common::wait_until("the lockout to end", Duration::from_secs(10), || {
        status_of(&raw_post(&agent, &agent.token)) == 200
    });
    assert!(
        !websocket_refuses(&agent, &agent.token),
        "the right token works again"
    );
    let log = agent.log();
    assert!(
        log.contains("3 failed authentications; refusing it"),
        "{log}"
    );
    assert!(!log.contains(&agent.token), "the token leaked into the log");
}

#[test]
fn connections_past_the_limit_get_503_and_a_websocket_keeps_its_slot() {
    let root = TempDir::new("connlimit");
    let agent = start_plain_agent_with(&root, "[api]\nmax_connections = 2\n");
    let events = agent.events();
    let idle = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let busy = raw_post(&agent, &agent.token);
    assert_eq!(status_of(&busy), 503, "{busy}");
    assert!(busy.contains("\"TOO_MANY_CONNECTIONS\""), "{busy}");
    assert_eq!(header_of(&busy, "retry-after"), Some("1"));

    // Closing the idle connection frees its slot; the subscription still holds the other.
    drop(idle);
    common::wait_until("a free slot", Duration::from_secs(10), || {
        status_of(&raw_post(&agent, &agent.token)) == 200
    });
    let idle = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status_of(&raw_post(&agent, &agent.token)), 503);
    drop(idle);
    drop(events);
    common::wait_until("both slots free", Duration::from_secs(10), || {
        let a = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let ok = status_of(&raw_post(&agent, &agent.token)) == 200;
        drop(a);
        ok
    });
    assert!(
        agent.log().contains("(api.max_connections)"),
        "{}",
        agent.log()
    );
}

#[test]
fn subscriptions_past_the_per_connection_limit_are_refused_with_an_error_message() {
    let root = TempDir::new("sublimit");
    let agent = start_plain_agent_with(&root, "[api]\nmax_subscriptions_per_connection = 3\n");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/subscribe.py");
    let out = common::run_ok(Command::new(common::python()).arg(&script).args([
        &agent.url(),
        &agent.token,
        "many",
        "5",
    ]));
    let mut lines = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap());
    let first = lines.next().unwrap();
    assert_eq!(first["running"], 3, "{out}");
    let refused = first["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 2, "{out}");
    for errors in refused {
        assert_eq!(
            errors[0]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS",
            "{out}"
        );
    }
    // Completing one frees its place for the next.
    assert_eq!(lines.next().unwrap()["extra"], "running", "{out}");
}
