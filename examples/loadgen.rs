//! A load client for the benchmarks (not part of the agent): many `events` subscribers over
//! graphql-transport-ws on one thread, each timing every event from the agent's `at` to its
//! arrival. It reports its own CPU time, so a run can show the client kept up.
//!
//! usage: loadgen URL TOKEN SUBSCRIBERS
//!   prints `ready` once every subscription is acknowledged, collects until a line (or EOF)
//!   arrives on stdin, then prints one JSON object and exits.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

#[derive(Default)]
struct Seen {
    seqs: Vec<u64>,
    latencies_ms: Vec<i64>,
    missed: u64,
}

/// Milliseconds since midnight UTC of an RFC 3339 `...THH:MM:SS.mmmZ`.
fn ms_of_day(at: &str) -> Option<i64> {
    let t = at.split_once('T')?.1.trim_end_matches('Z');
    let (hms, frac) = t.split_once('.').unwrap_or((t, "0"));
    let mut p = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, m, s) = (p.next()??, p.next()??, p.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + frac.get(..3).unwrap_or(frac).parse::<i64>().ok()?)
}

fn now_ms_of_day() -> i64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_millis() % 86_400_000) as i64
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

async fn subscriber(
    url: String,
    token: String,
    ready: tokio::sync::mpsc::Sender<()>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Seen, String> {
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| e.to_string())?;
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let host = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .ok_or("no host")?;
    let tcp = TcpStream::connect(&host).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let send = |v: Value| Message::text(v.to_string());
    ws.send(send(
        json!({"type": "connection_init", "payload": {"token": token}}),
    ))
    .await
    .map_err(|e| e.to_string())?;
    let mut seen = Seen::default();
    let mut stop = stop;
    let mut subscribed = false;
    loop {
        let msg = tokio::select! {
            m = ws.next() => match m {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed by the agent".into()),
            },
            _ = stop.changed() => break,
        };
        let Message::Text(text) = msg else { continue };
        let v: Value = serde_json::from_str(text.as_str()).map_err(|e| e.to_string())?;
        match v["type"].as_str() {
            Some("connection_ack") if !subscribed => {
                ws.send(send(json!({"id": "1", "type": "subscribe",
                    "payload": {"query": "subscription { events { seq type at } }"}})))
                    .await
                    .map_err(|e| e.to_string())?;
                subscribed = true;
                // The agent registers the subscription as it reads this message; a ping
                // answered after it proves it has.
                ws.send(send(json!({"type": "ping"})))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Some("pong") => {
                let _ = ready.send(()).await;
            }
            Some("next") => {
                let ev = &v["payload"]["data"]["events"];
                if ev["type"] == "events.missed" {
                    seen.missed += 1;
                    continue;
                }
                let now = now_ms_of_day();
                if let Some(at) = ev["at"].as_str().and_then(ms_of_day) {
                    seen.latencies_ms.push((now - at).rem_euclid(86_400_000));
                }
                seen.seqs.push(ev["seq"].as_u64().unwrap_or(0));
            }
            Some("error") | Some("complete") => return Err(format!("agent said {v}")),
            _ => {}
        }
    }
    let _ = ws.close(None).await;
    Ok(seen)
}

fn pct(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    Some(sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, token, n] = &args[..] else {
        eprintln!("usage: loadgen URL TOKEN SUBSCRIBERS");
        std::process::exit(2);
    };
    let n: usize = n.parse().expect("SUBSCRIBERS is a number");
    let url = url.replacen("http://", "ws://", 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(n.max(1));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                tokio::spawn(subscriber(
                    url.clone(),
                    token.clone(),
                    ready_tx.clone(),
                    stop_rx.clone(),
                ))
            })
            .collect();
        for _ in 0..n {
            if tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
                .await
                .ok()
                .flatten()
                .is_none()
            {
                eprintln!("loadgen: not every subscription was acknowledged within 60 s");
                std::process::exit(1);
            }
        }
        println!("ready");
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        let mut line = String::new();
        let _ = tokio::io::BufReader::new(tokio::io::stdin())
            .read_line(&mut line)
            .await;
        let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
        let _ = stop_tx.send(true);
        let mut all = Vec::new();
        let (mut counts, mut lost, mut reordered, mut missed, mut failed) =
            (Vec::new(), 0u64, 0u64, 0u64, Vec::new());
        for t in tasks {
            match t.await {
                Ok(Ok(s)) => {
                    reordered += s.seqs.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
                    if let (Some(a), Some(b)) = (s.seqs.first(), s.seqs.last()) {
                        let mut uniq = s.seqs.clone();
                        uniq.dedup();
                        lost += (b - a + 1).saturating_sub(uniq.len() as u64);
                    }
                    missed += s.missed;
                    counts.push(s.seqs.len());
                    all.extend(s.latencies_ms);
                }
                Ok(Err(e)) => failed.push(e),
                Err(e) => failed.push(e.to_string()),
            }
        }
        all.sort_unstable();
        println!(
            "{}",
            json!({
                "subscribers": n, "failed": failed.len(), "first_failure": failed.first(),
                "events_min": counts.iter().min(), "events_max": counts.iter().max(),
                "deliveries": all.len(), "lost": lost, "reordered": reordered, "missed_notices": missed,
                "latency_ms": { "p50": pct(&all, 0.5), "p99": pct(&all, 0.99), "max": all.last() },
                "client_cpu_s": (cpu * 1000.0).round() / 1000.0, "wall_s": (wall * 1000.0).round() / 1000.0,
                "client_cpu_share": ((cpu / wall.max(1e-9)) * 1000.0).round() / 1000.0,
            })
        );
    });
}
