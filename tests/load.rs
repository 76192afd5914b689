//! Load from LAN clients, bounded in time and on loopback only: 200 `events` subscribers (PyPI
//! gql), 5 installs at once from a rate-limited nginx, and 50 queries a second. Every
//! subscriber must see every event, in order, and the agent's memory stays small.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Agent, Nginx, TempDir, sha256_file};
use serde_json::{Value, json};

const SUBSCRIBERS: &str = "200";
const QPS: &str = "50";
/// Peak RSS the agent (a debug build here) may reach under this load: 25 MiB measured once
/// WebSocket buffers started small (37 MiB before); tests/bench/api_bench.py measures the
/// release binary.
const RSS_BOUND_KIB: u64 = 48 * 1024;

#[test]
fn two_hundred_subscribers_see_every_event_in_order_during_five_installs_and_queries() {
    let root = TempDir::new("load");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    for i in 0..5 {
        // A real ELF header (the agent checks it) padded to 12 MiB of random bytes.
        let mut data = std::fs::read("/usr/bin/true").unwrap();
        let mut pad = vec![0u8; 12 << 20];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut pad)
            .unwrap();
        data.extend_from_slice(&pad);
        std::fs::write(www.join(format!("f{i}")), data).unwrap();
    }
    // 6 MiB/s per download: each install takes about two seconds of progress events.
    let nginx = Nginx::start(&www, "limit_rate 6m;");
    let features: Vec<Value> = (0..5)
        .map(|i| {
            let f = format!("f{i}");
            json!({ "id": f, "name": "load", "version": "1", "binary": "tool",
                    "assets": { "x86_64": { "url": nginx.url(&f), "sha256": sha256_file(&www.join(&f)) } } })
        })
        .collect();
    let catalogue = common::write_catalogue(root.path(), &features);
    // The 200 "LAN clients" all come from 127.0.0.1 here, so that address may hold them all.
    let agent = Agent::start(
        root.path(),
        &catalogue,
        "[api]\nmax_connections_per_address = 256\n",
    );
    let idle = common::proc_status_kib(agent.pid(), "VmRSS:");
    let out = Command::new(common::python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/load.py"))
        .args([
            &agent.url(),
            &agent.token,
            SUBSCRIBERS,
            QPS,
            "f0",
            "f1",
            "f2",
            "f3",
            "f4",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "load.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let peak = common::proc_status_kib(agent.pid(), "VmHWM:");
    eprintln!("load: {r}\nagent RSS idle {idle} KiB, peak {peak} KiB");
    assert_eq!(r["all_saw_every_install"], true, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["reordered"], 0, "{r}");
    assert_eq!(r["missed_notices"], 0, "{r}");
    assert_eq!(
        r["events_min"], r["events_max"],
        "every subscriber saw the same events: {r}"
    );
    assert!(r["events_min"].as_u64().unwrap() > 5 * 4, "{r}");
    assert_eq!(r["queries_failed"], 0, "{r}");
    assert!(
        r["queries_per_s"].as_f64().unwrap() >= 40.0,
        "the query load fell short: {r}"
    );
    assert!(
        peak < RSS_BOUND_KIB,
        "peak RSS {peak} KiB over {RSS_BOUND_KIB} KiB"
    );
    for id in r["instances"].as_array().unwrap() {
        assert_eq!(agent.instance(id.as_str().unwrap())["status"], "INSTALLED");
    }
}
