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
    // Dynamically linked builds this system cannot run: /usr/bin/true with its loader
    // renamed to one nobody has, and with its C library renamed.
    let true_bin = std::fs::read("/usr/bin/true").unwrap();
    let patched = |from: &[u8], to: &[u8]| {
        assert_eq!(from.len(), to.len());
        let mut b = true_bin.clone();
        let at = b
            .windows(from.len())
            .position(|w| w == from)
            .unwrap_or_else(|| panic!("{} not in /usr/bin/true", String::from_utf8_lossy(from)));
        b[at..at + to.len()].copy_from_slice(to);
        b
    };
    std::fs::write(
        www.join("foreign-loader"),
        patched(
            b"/lib64/ld-linux-x86-64.so.2\0",
            b"/lib/ld-absent-x86_64.so.1\0\0",
        ),
    )
    .unwrap();
    std::fs::write(
        www.join("missing-lib"),
        patched(b"libc.so.6\0", b"libq.so.6\0"),
    )
    .unwrap();
    let nginx = Nginx::start(&www, "");
    let plain = |id: &str, file: &str| {
        feature(
            id,
            "tool",
            json!({ "url": nginx.url(file), "sha256": sha256_file(&www.join(file)) }),
        )
    };
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
        (
            plain("foreign-loader", "foreign-loader"),
            "verifying",
            "WRONG_ABI",
        ),
        (
            plain("missing-lib", "missing-lib"),
            "verifying",
            "WRONG_ABI",
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
    let error_of = |id: &str| {
        let i = agent.instance(&ids[cases.iter().position(|c| c.0["id"] == id).unwrap()]);
        i["error"].as_str().unwrap().to_owned()
    };
    let e = error_of("foreign-loader");
    assert!(e.contains("loader /lib/ld-absent-x86_64.so.1"), "{e}");
    let e = error_of("missing-lib");
    assert!(e.contains("needs libq.so.6,"), "{e}");
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

/// A connection to the agent from `source`, another address of 127.0.0.0/8, as a second LAN
/// client would make it (std cannot bind a client socket before connecting).
fn connect_from(source: [u8; 4], agent: &Agent) -> TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    let [a, b, c, d] = source;
    bind(fd.as_raw_fd(), &SockaddrIn::new(a, b, c, d, 0)).unwrap();
    connect(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, agent.port)).unwrap();
    TcpStream::from(fd)
}

/// Reads one HTTP response (headers and a Content-Length body); `None` once the agent has
/// closed the connection.
fn read_response(s: &mut TcpStream) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = header_of(&text, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                return Some(text);
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// An authenticated `{ instances }` on an open keep-alive connection.
fn post_on(s: &mut TcpStream, token: &str) -> Option<String> {
    let body = r#"{"query":"{ instances { id } }"}"#;
    let request = format!(
        "POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).ok()?;
    read_response(s)
}

/// Waits (at most `limit`) for the agent to close `s`, whose peer sends nothing more.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        Ok(_) => panic!("the agent sent something on an idle connection"),
    }
}

#[test]
fn one_address_cannot_lock_the_owner_out_and_unauthenticated_connections_are_closed() {
    use std::time::Instant;
    const DEADLINE: Duration = Duration::from_secs(3);
    let root = TempDir::new("peraddr");
    let agent = start_plain_agent_with(
        &root,
        "[api]\nmax_connections = 64\nmax_connections_per_address = 16\nunauthenticated_timeout_secs = 3\n",
    );

    // Meanwhile 127.0.0.3 keeps three connections busy without ever authenticating: one asks
    // for /health over keep-alive every 300 ms, one drips its request headers, one is a
    // WebSocket that never sends `connection_init`.
    let health = {
        let mut s = connect_from([127, 0, 0, 3], &agent);
        std::thread::spawn(move || {
            let started = Instant::now();
            let mut answered = 0;
            while started.elapsed() < Duration::from_secs(15) {
                if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    .is_err()
                {
                    break;
                }
                match read_response(&mut s) {
                    Some(r) if status_of(&r) == 200 => answered += 1,
                    Some(r) => panic!("/health answered {r}"),
                    None => break,
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            (answered, started.elapsed())
        })
    };
    let dripping = {
        let mut s = connect_from([127, 0, 0, 3], &agent);
        std::thread::spawn(move || {
            let started = Instant::now();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 256];
            while started.elapsed() < Duration::from_secs(15) {
                if s.write_all(b"a").is_err() {
                    break;
                }
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => panic!(
                        "answered a half-sent request: {}",
                        String::from_utf8_lossy(&buf[..n])
                    ),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            started.elapsed()
        })
    };

    // A WebSocket upgraded without a token that never sends `connection_init`.
    let silent_ws = {
        let mut s = connect_from([127, 0, 0, 3], &agent);
        std::thread::spawn(move || {
            let started = Instant::now();
            s.write_all(b"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws\r\n\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            (got, started.elapsed())
        })
    };

    // The attacker at 127.0.0.2 opens 300 connections and sends nothing.
    let opened = Instant::now();
    let attack: Vec<TcpStream> = (0..300)
        .map(|_| connect_from([127, 0, 0, 2], &agent))
        .collect();
    // The owner still gets an answer at once, and keeps a keep-alive connection.
    let asked = Instant::now();
    let reply = raw_post(&agent, &agent.token);
    assert_eq!(status_of(&reply), 200, "{reply}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "the owner waited {:?}",
        asked.elapsed()
    );
    let mut owner = TcpStream::connect(("127.0.0.1", agent.port)).unwrap();
    owner
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let first = post_on(&mut owner, &agent.token).expect("an answer on keep-alive");
    assert_eq!(status_of(&first), 200, "{first}");

    // Beyond 16, each got the raw 503 naming the per-address limit and was closed; the
    // first 16 are still open and silent.
    std::thread::sleep(Duration::from_millis(500));
    let mut held = Vec::new();
    let mut refused = 0;
    for mut s in attack {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut text = String::new();
        match s.read_to_string(&mut text) {
            Ok(_) => {
                assert_eq!(status_of(&text), 503, "{text}");
                assert!(text.contains("\"TOO_MANY_CONNECTIONS\""), "{text}");
                assert!(text.contains("(api.max_connections_per_address)"), "{text}");
                assert_eq!(header_of(&text, "retry-after"), Some("1"), "{text}");
                refused += 1;
            }
            Err(e) if text.is_empty() && e.kind() == std::io::ErrorKind::WouldBlock => {
                held.push(s);
            }
            Err(e) => panic!("{e}: {text:?}"),
        }
    }
    assert!(
        opened.elapsed() < DEADLINE,
        "the checks above took too long to tell held from closed: {:?}",
        opened.elapsed()
    );
    assert_eq!((held.len(), refused), (16, 284));

    // The agent closes the idle ones once the unauthenticated timeout has passed (well
    // before hyper's 10 s header timeout would).
    for s in &mut held {
        assert!(closed_within(s, Duration::from_secs(8)), "still open");
        let at = opened.elapsed();
        assert!(
            at >= DEADLINE - Duration::from_millis(100) && at < Duration::from_secs(8),
            "idle connection closed after {at:?}"
        );
    }
    let (answered, closed_after) = health.join().unwrap();
    assert!(answered >= 3, "only {answered} /health answers");
    assert!(
        closed_after >= DEADLINE - Duration::from_millis(100)
            && closed_after < Duration::from_secs(8),
        "/health keep-alive closed after {closed_after:?}"
    );
    let closed_after = dripping.join().unwrap();
    assert!(
        closed_after >= DEADLINE - Duration::from_millis(100)
            && closed_after < Duration::from_secs(8),
        "dripping headers closed after {closed_after:?}"
    );

    let (got, closed_after) = silent_ws.join().unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text:?}");
    // A close frame with code 4408 (0x1138): connection_init did not come in time.
    assert!(got.windows(2).any(|w| w == [0x11, 0x38]), "{text:?}");
    assert!(
        closed_after >= DEADLINE - Duration::from_millis(100)
            && closed_after < Duration::from_secs(8),
        "silent WebSocket closed after {closed_after:?}"
    );

    // The owner's authenticated connection outlives the unauthenticated timeout.
    std::thread::sleep(
        (opened + DEADLINE + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
    );
    let second = post_on(&mut owner, &agent.token).expect("the authenticated connection stays");
    assert_eq!(status_of(&second), 200, "{second}");

    // Closed connections gave their places back: 16 fit again, the 17th is refused.
    let again: Vec<TcpStream> = (0..16)
        .map(|_| connect_from([127, 0, 0, 2], &agent))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = connect_from([127, 0, 0, 2], &agent);
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut text = String::new();
    let _ = extra.read_to_string(&mut text);
    assert!(
        text.contains("(api.max_connections_per_address)"),
        "{text:?}"
    );
    drop(again);
    assert!(
        agent.log().contains("(api.max_connections_per_address)"),
        "{}",
        agent.log()
    );
}
