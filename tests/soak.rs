//! Soak: one service crash-looping under backoff while a client queries once a second, for
//! `NNC_SOAK_SECS` (default 60 in CI; the closing note's figure is from 1800). After a warm-up
//! the agent's open fds, RSS and state database must not grow beyond the stated bounds.

mod common;

use std::time::{Duration, Instant};

use common::{Agent, Nginx, TempDir, sha256_file};
use serde_json::json;

/// Growth allowed between the end of the warm-up and the end of the soak.
const FD_GROWTH: i64 = 2;
const RSS_GROWTH_KIB: i64 = 4 * 1024;
const DB_GROWTH_BYTES: i64 = 1 << 20;
const WARMUP: Duration = Duration::from_secs(15);

struct Sample {
    fds: i64,
    rss_kib: i64,
    db_bytes: i64,
}

fn sample(agent: &Agent) -> Sample {
    let pid = agent.pid();
    Sample {
        fds: i64::try_from(
            std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .count(),
        )
        .unwrap(),
        rss_kib: i64::try_from(common::proc_status_kib(pid, "VmRSS:")).unwrap(),
        db_bytes: i64::try_from(
            std::fs::metadata(agent.data_dir.join("state.redb"))
                .unwrap()
                .len(),
        )
        .unwrap(),
    }
}

#[test]
fn a_crash_looping_service_does_not_make_the_agent_grow() {
    let secs: u64 = std::env::var("NNC_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let root = TempDir::new("soak");
    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/bin/busybox", www.join("busybox")).unwrap();
    let nginx = Nginx::start(&www, "");
    let catalogue = common::write_catalogue(
        root.path(),
        &[
            json!({ "id": "crasher", "name": "crasher", "version": "1", "binary": "busybox",
                  "service": { "args": ["sh", "-c", "echo starting; sleep 0.3; echo dying >&2; exit 3"],
                               "health": { "exec": ["/bin/true"] } },
                  "assets": { "x86_64": { "url": nginx.url("busybox"), "sha256": sha256_file(&www.join("busybox")) } } }),
        ],
    );
    let agent = Agent::start(
        root.path(),
        &catalogue,
        "[supervisor]\nbackoff_initial_secs = 0.2\nbackoff_max_secs = 1\nstable_secs = 600\ncrash_limit = 1000000\nlog_max_bytes = 65536\n",
    );
    let id = agent.install("crasher", "c");
    let start = Instant::now();
    let mut warm: Option<Sample> = None;
    while start.elapsed() < WARMUP + Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_secs(1));
        agent.data(
            "{ instances { id status process { state restartCount } } }",
            json!({}),
        );
        if warm.is_none() && start.elapsed() >= WARMUP {
            warm = Some(sample(&agent));
        }
    }
    let warm = warm.unwrap();
    let end = sample(&agent);
    let p = agent.process(&id);
    let restarts = p["process"]["restartCount"].as_i64().unwrap();
    eprintln!(
        "soak {secs} s: {restarts} restarts; fds {} -> {}, RSS {} -> {} KiB, state.redb {} -> {} bytes",
        warm.fds, end.fds, warm.rss_kib, end.rss_kib, warm.db_bytes, end.db_bytes
    );
    assert!(
        restarts as u64 >= secs / 2,
        "it should have crash-looped: {p}"
    );
    assert!(
        end.fds - warm.fds <= FD_GROWTH,
        "fds grew {} -> {}",
        warm.fds,
        end.fds
    );
    assert!(
        end.rss_kib - warm.rss_kib <= RSS_GROWTH_KIB,
        "RSS grew {} -> {} KiB",
        warm.rss_kib,
        end.rss_kib
    );
    assert!(
        end.db_bytes - warm.db_bytes <= DB_GROWTH_BYTES,
        "state.redb grew {} -> {}",
        warm.db_bytes,
        end.db_bytes
    );
    let logs: u64 = std::fs::read_dir(agent.data_dir.join(format!("instances/{id}/logs")))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert!(
        logs <= 2 * 65536 + 4096,
        "service logs stay within their budget: {logs} bytes"
    );
}
