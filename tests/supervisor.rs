//! The supervisor with real processes: Debian's tor and PyPI's sing-box configured by the
//! agent and answering SOCKS5, busybox as a probe of what a service sees from inside, crash
//! loops with backoff, kill -9 of the agent, and log rotation. (cgroup v2 limits need a kernel
//! with them: tests/vm.rs.)

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Agent, Nginx, TempDir, TestNetns, make_fixtures, sha256_file, singbox_binary, write_catalogue,
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);

fn busybox_feature(nginx: &Nginx, www: &Path, id: &str, script: &str, extra: Value) -> Value {
    let mut service = json!({ "args": ["sh", "-c", script] });
    if let (Some(s), Some(e)) = (service.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({ "id": id, "name": id, "version": "1", "binary": "busybox", "service": service,
            "assets": { "x86_64": { "url": nginx.url("busybox"), "sha256": sha256_file(&www.join("busybox")) } } })
}

/// A busybox httpd on 127.0.0.1:`port`, healthy once the port answers.
fn httpd_feature(nginx: &Nginx, www: &Path, id: &str, port: u16) -> Value {
    busybox_feature(
        nginx,
        www,
        id,
        &format!("exec httpd -f -p 127.0.0.1:{port}"),
        json!({ "health": { "tcp": port } }),
    )
}

fn www_with_busybox(root: &TempDir) -> PathBuf {
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/bin/busybox", www.join("busybox")).unwrap();
    www
}

fn process(agent: &Agent, id: &str) -> Value {
    agent.process(id)
}

fn wait_status(agent: &Agent, id: &str, want: &[&str]) -> Value {
    agent.wait_status(id, want, TIMEOUT)
}

fn socks5_greeting(port: u16) -> Vec<u8> {
    common::socks5_greeting(([127, 0, 0, 1], port).into())
}

fn pid_alive(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn tor_and_sing_box_run_answer_socks5_and_stop_on_sigterm() {
    let root = TempDir::new("svc-real");
    let www = root.path().join("www");
    make_fixtures(
        &www,
        &[
            "singbox",
            singbox_binary("amd64").to_str().unwrap(),
            "1.14.4",
        ],
    );
    std::fs::copy("/usr/sbin/tor", www.join("tor")).unwrap();
    let nginx = Nginx::start(&www, "");
    let catalogue = write_catalogue(
        root.path(),
        &[
            json!({ "id": "tor", "name": "Tor", "version": "0.4", "binary": "tor", "config": "tor",
                    "assets": { "x86_64": { "url": nginx.url("tor"), "sha256": sha256_file(&www.join("tor")) } } }),
            json!({ "id": "sing-box", "name": "sing-box", "version": "1.14.4", "binary": "sing-box", "config": "sing-box",
                    "assets": { "x86_64": { "url": nginx.url("sing-box-1.14.4-linux-amd64.tar.gz"), "checksums": nginx.url("checksums.txt"),
                                            "archive": "tar.gz", "path": "sing-box-1.14.4-linux-amd64/sing-box" } } }),
        ],
    );
    let agent = Agent::start(root.path(), &catalogue, "");
    let ports: Vec<u16> = (0..5).map(|_| common::free_port()).collect();
    let install = |f: &str, settings: Value| agent.install_with(f, "main", settings);
    let tor = install(
        "tor",
        json!({ "socksPort": ports[0], "transPort": ports[1], "dnsPort": ports[2], "controlPort": ports[3] }),
    );
    let sb = install("sing-box", json!({ "mixedPort": ports[4] }));
    for (id, port) in [(&tor, ports[0]), (&sb, ports[4])] {
        let p = wait_status(&agent, id, &["RUNNING", "FAILED"]);
        assert_eq!(p["status"], "RUNNING", "{p}\n{}", agent.log());
        assert_eq!(p["process"]["state"], "RUNNING");
        assert!(p["desiredRunning"].as_bool().unwrap());
        assert_eq!(
            socks5_greeting(port),
            [5, 0],
            "{id} does not speak SOCKS5 on {port}"
        );
    }
    let torrc =
        std::fs::read_to_string(agent.data_dir.join(format!("instances/{tor}/config/torrc")))
            .unwrap();
    assert!(
        torrc.contains(&format!("SocksPort 127.0.0.1:{}", ports[0])),
        "{torrc}"
    );
    for id in [&tor, &sb] {
        let pid = process(&agent, id)["process"]["pid"].as_i64().unwrap();
        let stopped = agent.data("mutation($id: ID!) { stopInstance(id: $id) { status process { state pid lastExitCode lastSignal } } }", json!({ "id": id }));
        let p = &stopped["stopInstance"];
        assert_eq!(p["status"], "STOPPED", "{p}");
        assert_eq!(p["process"]["state"], "STOPPED");
        assert_eq!(
            p["process"]["lastExitCode"],
            0,
            "{id}: SIGTERM should end it cleanly: {p}\n{}",
            agent.log()
        );
        assert!(p["process"]["lastSignal"].is_null());
        assert!(!pid_alive(pid), "pid {pid} still runs");
    }
    assert!(!agent.log().contains("ignored SIGTERM"), "{}", agent.log());
}

#[test]
fn a_crashing_child_backs_off_doubling_until_the_crash_loop_limit() {
    let root = TempDir::new("svc-crash");
    let www = www_with_busybox(&root);
    let nginx = Nginx::start(&www, "");
    let catalogue = write_catalogue(
        root.path(),
        &[busybox_feature(
            &nginx,
            &www,
            "crasher",
            "echo boom; exit 3",
            json!({ "health": { "tcp": 9 } }),
        )],
    );
    let agent = Agent::start(
        root.path(),
        &catalogue,
        "[supervisor]\nbackoff_initial_secs = 0.2\ncrash_limit = 4\n",
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/subscribe.py");
    let mut sub = Command::new(common::python())
        .arg(&script)
        .args([&agent.url(), &agent.token, "events", "100000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "subscribed");
    let id = agent.install("crasher", "c");
    let mut crashes: Vec<(Instant, Value)> = Vec::new();
    for line in lines.by_ref() {
        let ev: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if ev["type"] == "service.crashed" && ev["instanceId"] == id.as_str() {
            let last = ev["payload"]["nextBackoffMs"].is_null();
            crashes.push((Instant::now(), ev));
            if last {
                break;
            }
        }
    }
    let _ = sub.kill();
    let _ = sub.wait();
    let backoffs: Vec<Value> = crashes
        .iter()
        .map(|(_, e)| e["payload"]["nextBackoffMs"].clone())
        .collect();
    assert_eq!(
        backoffs,
        [json!(200), json!(400), json!(800), Value::Null],
        "{crashes:?}"
    );
    let counts: Vec<u64> = crashes
        .iter()
        .map(|(_, e)| e["payload"]["restartCount"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 2, 3, 4]);
    assert!(crashes.iter().all(|(_, e)| e["payload"]["exitCode"] == 3));
    // The waits really grow (timing noise allowed: each gap at least 80 % of its backoff).
    for (w, want_ms) in crashes.windows(2).zip([200u64, 400, 800]) {
        let gap = w[1].0 - w[0].0;
        assert!(
            gap >= Duration::from_millis(want_ms * 8 / 10),
            "gap {gap:?} < {want_ms} ms"
        );
    }
    let p = wait_status(&agent, &id, &["FAILED"]);
    assert_eq!(p["failedStep"], "starting", "{p}");
    let error = p["error"].as_str().unwrap();
    assert!(
        error.contains("crashed 4 times in a row")
            && error.contains("exited with code 3")
            && error.contains("boom"),
        "{error}"
    );
    assert_eq!(p["process"]["state"], "STOPPED");
    assert_eq!(p["process"]["lastExitCode"], 3);
}

#[test]
fn a_run_past_the_stable_window_resets_the_backoff() {
    let root = TempDir::new("svc-stable");
    let www = www_with_busybox(&root);
    let nginx = Nginx::start(&www, "");
    let port = common::free_port();
    let catalogue = write_catalogue(
        root.path(),
        &[busybox_feature(
            &nginx,
            &www,
            "flaky",
            &format!("httpd -f -p 127.0.0.1:{port} & sleep 0.8; exit 1"),
            json!({ "health": { "tcp": port } }),
        )],
    );
    let agent = Agent::start(
        root.path(),
        &catalogue,
        "[supervisor]\nbackoff_initial_secs = 0.2\nstable_secs = 0.5\ncrash_limit = 3\n",
    );
    let id = agent.install("flaky", "f");
    wait_status(&agent, &id, &["RUNNING"]);
    common::wait_until("six restarts", TIMEOUT, || {
        process(&agent, &id)["process"]["restartCount"]
            .as_u64()
            .unwrap_or(0)
            >= 6
    });
    let p = process(&agent, &id);
    assert_ne!(
        p["status"], "FAILED",
        "the crash-loop limit must not trip on stable runs: {p}"
    );
    let log = agent.log();
    let backoffs: Vec<&str> = log.lines().filter(|l| l.contains("-> BACKOFF")).collect();
    assert!(
        backoffs.len() >= 6 && backoffs.iter().all(|l| l.contains("restart in 0.2 s")),
        "{backoffs:?}"
    );
}

#[test]
fn what_a_service_sees_from_inside() {
    let root = TempDir::new("svc-iso");
    let ns = TestNetns::new("iso");
    let www = www_with_busybox(&root);
    let nginx = Nginx::start_in(&www, "", Some(&ns));
    let bin_dir = root.path().join("agent/data/features/probe/1/bin");
    let script = format!(
        "echo PID=$$; grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs|Uid|Gid):' /proc/self/status; echo HOST=$(hostname); \
         echo NET=$(ls /sys/class/net | tr '\\n' ' '); touch {}/x 2>&1 | sed 's/^/BIN=/'; \
         echo TMP=$(ls -A /tmp | wc -l); touch /tmp/mine && echo TMPW=ok; echo DONE; exec httpd -f -p 7000",
        bin_dir.display()
    );
    let catalogue = write_catalogue(
        root.path(),
        &[busybox_feature(
            &nginx,
            &www,
            "probe",
            &script,
            json!({ "health": { "tcp": 7000 }, "capabilities": ["CAP_NET_ADMIN"] }),
        )],
    );
    let toml = format!(
        "[vlan]\nmode = \"veth\"\nnetns_dir = {:?}\nrt_tables = {:?}\n",
        root.path().join("netns").display().to_string(),
        root.path().join("rt_tables").display().to_string()
    );
    let agent = Agent::start_in(
        &root.path().join("agent"),
        &catalogue,
        &toml,
        Some(&ns),
        &[],
    );
    let id = agent.install("probe", "iso");
    let p = wait_status(&agent, &id, &["RUNNING", "FAILED"]);
    assert_eq!(p["status"], "RUNNING", "{p}\n{}", agent.log());
    let mut out = Vec::new();
    common::wait_until("the probe's report", TIMEOUT, || {
        out = agent.data(
            "query($id: ID!) { instanceLogs(id: $id, tail: 50) }",
            json!({ "id": id }),
        )["instanceLogs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_owned())
            .collect();
        out.iter().any(|l| l == "DONE")
    });
    let field = |k: &str| {
        out.iter()
            .find_map(|l| l.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {out:?}"))
            .trim()
            .to_owned()
    };
    assert_eq!(
        field("PID="),
        "1",
        "the service is PID 1 of its own PID namespace"
    );
    // CAP_NET_ADMIN (bit 12) and nothing else, in every set that matters.
    for set in ["CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(field(set), "0000000000001000", "{set}");
    }
    assert_eq!(field("NoNewPrivs:"), "1");
    let uid = field("Uid:");
    assert!(
        uid.split_whitespace()
            .all(|u| u.parse::<u32>().unwrap() >= 61000),
        "{uid}"
    );
    assert!(
        field("Gid:")
            .split_whitespace()
            .all(|g| g.parse::<u32>().unwrap() >= 61000)
    );
    assert_eq!(field("HOST="), "nnc-probe-iso");
    assert_eq!(
        field("NET="),
        "eth0 lo",
        "only its own namespace's interfaces"
    );
    assert!(field("BIN=").contains("Read-only file system"), "{out:?}");
    assert_eq!(field("TMP="), "0", "a private, empty /tmp");
    assert_eq!(field("TMPW="), "ok");
    assert!(
        !Path::new("/tmp/mine").exists(),
        "the service wrote the host's /tmp"
    );
    agent.uninstall(&id);
}

#[test]
fn kill_9_of_the_agent_takes_its_services_along_and_the_next_start_brings_them_back() {
    let root = TempDir::new("svc-kill");
    let www = www_with_busybox(&root);
    let nginx = Nginx::start(&www, "");
    let (pa, pb) = (common::free_port(), common::free_port());
    let catalogue = write_catalogue(
        root.path(),
        &[
            httpd_feature(&nginx, &www, "web-a", pa),
            httpd_feature(&nginx, &www, "web-b", pb),
        ],
    );
    let mut agent = Agent::start(
        root.path(),
        &catalogue,
        "[supervisor]\nbackoff_initial_secs = 0.2\n",
    );
    let ids = [agent.install("web-a", "a"), agent.install("web-b", "b")];
    let pids: Vec<i64> = ids
        .iter()
        .map(|id| {
            wait_status(&agent, id, &["RUNNING"]);
            process(&agent, id)["process"]["pid"].as_i64().unwrap()
        })
        .collect();
    agent.kill9();
    common::wait_until(
        "services to die with the agent",
        Duration::from_secs(10),
        || pids.iter().all(|p| !pid_alive(*p)),
    );
    agent.restart();
    let mut new_pids = Vec::new();
    for id in &ids {
        let p = wait_status(&agent, id, &["RUNNING"]);
        let pid = p["process"]["pid"].as_i64().unwrap();
        assert!(!pids.contains(&pid));
        new_pids.push(pid);
    }
    // Exactly one process per service: nothing else listens on their ports' owners.
    for port in [pa, pb] {
        let owners = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ss -Hltnp 'sport = :{port}' | grep -o 'pid=[0-9]*' | sort -u | wc -l"
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&owners.stdout).trim(),
            "1",
            "port {port}"
        );
    }
    // Supervised again: a crash is noticed and the service comes back.
    // SAFETY-free: signalling a test-owned process by PID.
    Command::new("kill")
        .args(["-9", &new_pids[0].to_string()])
        .status()
        .unwrap();
    common::wait_until("restart after a crash", TIMEOUT, || {
        let p = process(&agent, &ids[0]);
        p["process"]["state"] == "RUNNING" && p["process"]["pid"].as_i64() != Some(new_pids[0])
    });
    let p = process(&agent, &ids[0]);
    assert_eq!(p["process"]["restartCount"], 1);
    assert_eq!(p["process"]["lastSignal"], 9);
    assert!(
        agent
            .log()
            .contains("starting 2 service(s) that were running before")
    );
}

#[test]
fn a_service_outlives_a_catalogue_that_drops_its_version() {
    let root = TempDir::new("svc-dropped");
    let www = www_with_busybox(&root);
    let nginx = Nginx::start(&www, "");
    let port = common::free_port();
    let web = httpd_feature(&nginx, &www, "web", port);
    let catalogue = write_catalogue(root.path(), std::slice::from_ref(&web));
    let mut agent = Agent::start(root.path(), &catalogue, "");
    let id = agent.install("web", "w");
    let first = wait_status(&agent, &id, &["RUNNING"])["process"]["pid"].clone();

    // The feed moves on to version 2 and no longer lists 1; the agent takes it at once.
    let mut next = web.clone();
    next["version"] = json!("2");
    write_catalogue(root.path(), &[next]);
    let r = agent.gql(
        "mutation { reloadCatalogue { catalogueSerial } }",
        json!({}),
    );
    assert!(r["errors"].is_null(), "{r}");
    let f = agent.data("{ features { versions } }", json!({}));
    assert_eq!(f["features"][0]["versions"], json!(["2"]), "{f}");

    // Version 1 still restarts (from what the instance kept of its definition) ...
    let r = agent.gql(
        "mutation($id: ID!) { restartInstance(id: $id) { status } }",
        json!({ "id": id }),
    );
    assert!(r["errors"].is_null(), "{r}");
    common::wait_until("a restarted version 1", TIMEOUT, || {
        let p = process(&agent, &id);
        p["status"] == "RUNNING" && p["process"]["pid"] != first && p["process"]["pid"].is_i64()
    });
    // ... and comes back after an agent restart, still version 1 and serving.
    agent.kill9();
    agent.restart();
    let p = wait_status(&agent, &id, &["RUNNING"]);
    assert_eq!(p["version"], "1", "{p}");
    let stream = std::net::TcpStream::connect(("127.0.0.1", port));
    assert!(stream.is_ok(), "httpd does not answer: {p}");
}

#[test]
fn a_child_that_never_reaches_exec_is_killed_and_reported() {
    let root = TempDir::new("svc-stall");
    let www = www_with_busybox(&root);
    let nginx = Nginx::start(&www, "");
    let port = common::free_port();
    let catalogue = write_catalogue(root.path(), &[httpd_feature(&nginx, &www, "web", port)]);
    let agent = Agent::start_in(
        root.path(),
        &catalogue,
        "[supervisor]\ncrash_limit = 1\n",
        None,
        &[("NNC_FAILPOINTS", "spawn.exec=error")],
    );
    let id = agent.install("web", "w");
    let p = wait_status(&agent, &id, &["FAILED"]);
    let error = p["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("neither ran it nor reported an error within 10 s"),
        "{p}"
    );
    // The stalled child was killed and reaped: the agent has no child left.
    let pid = agent.pid();
    let mut children = String::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        children += &std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
    }
    assert_eq!(children.trim(), "", "children of the agent: {children}");
}

#[test]
fn logs_rotate_within_their_budget_and_the_tail_spans_the_rotation() {
    let root = TempDir::new("svc-logs");
    let www = www_with_busybox(&root);
    let nginx = Nginx::start(&www, "");
    let port = common::free_port();
    let script = format!(
        "i=0; while [ $i -lt 600 ]; do echo line-$i-padding-padding; i=$((i+1)); done; echo last; exec httpd -f -p 127.0.0.1:{port}"
    );
    let catalogue = write_catalogue(
        root.path(),
        &[busybox_feature(
            &nginx,
            &www,
            "chatty",
            &script,
            json!({ "health": { "tcp": port } }),
        )],
    );
    let agent = Agent::start(
        root.path(),
        &catalogue,
        "[supervisor]\nlog_max_bytes = 4096\n",
    );
    let id = agent.install("chatty", "l");
    wait_status(&agent, &id, &["RUNNING"]);
    let dir = agent.data_dir.join(format!("instances/{id}/logs"));
    common::wait_until("the last line", TIMEOUT, || {
        std::fs::read_to_string(dir.join("service.log"))
            .unwrap_or_default()
            .contains("last")
    });
    let size = |n: &str| std::fs::metadata(dir.join(n)).map_or(0, |m| m.len());
    assert!(
        size("service.log") <= 4096 && size("service.log.1") <= 4096,
        "{} {}",
        size("service.log"),
        size("service.log.1")
    );
    assert!(size("service.log.1") > 0, "never rotated");
    let tail: Vec<String> = agent.data(
        "query($id: ID!) { instanceLogs(id: $id, tail: 120) }",
        json!({ "id": id }),
    )["instanceLogs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(tail.len(), 120);
    assert_eq!(tail.last().unwrap(), "last");
    let numbers: Vec<u32> = tail[..119]
        .iter()
        .map(|l| l.split('-').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (481..600).collect::<Vec<u32>>(),
        "the tail must be the last lines, in order, across both files"
    );
    let small = agent.data(
        "query($id: ID!) { instanceLogs(id: $id, tail: 3) }",
        json!({ "id": id }),
    );
    assert_eq!(
        small["instanceLogs"],
        json!([
            "line-598-padding-padding",
            "line-599-padding-padding",
            "last"
        ])
    );
}

#[test]
fn the_logs_subscription_streams_lines_as_printed() {
    let root = TempDir::new("svc-sub");
    let www = www_with_busybox(&root);
    let nginx = Nginx::start(&www, "");
    let port = common::free_port();
    let script = format!(
        "httpd -f -p 127.0.0.1:{port} & i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done"
    );
    let catalogue = write_catalogue(
        root.path(),
        &[busybox_feature(
            &nginx,
            &www,
            "ticker",
            &script,
            json!({ "health": { "tcp": port } }),
        )],
    );
    let agent = Agent::start(root.path(), &catalogue, "");
    let id = agent.install("ticker", "t");
    wait_status(&agent, &id, &["RUNNING"]);
    let out = Command::new(common::python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/subscribe.py"))
        .args([&agent.url(), &agent.token, "logs", &id, "5"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    let ticks: Vec<u32> = lines
        .iter()
        .map(|l| {
            l["line"]
                .as_str()
                .unwrap()
                .strip_prefix("tick-")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(ticks.windows(2).all(|w| w[1] == w[0] + 1), "{ticks:?}");
    assert!(lines.iter().all(|l| l["stream"] == "stdout"));
}
