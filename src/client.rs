//! The command-line client (`nnc-agent install|list|status|logs|…`): a LAN client of the
//! agent's own GraphQL API, the one the web page and scripts use, so nothing here can do more
//! than a client with the token can. Installs show a progress bar on a terminal and plain
//! lines through a pipe; `logs -f` follows the `logs` subscription over a WebSocket.
//!
//! Exit codes: 0 done; 1 the agent refused or the operation failed (the error's code is
//! printed); 2 a bad command line; 3 the agent cannot be reached or answered nonsense;
//! 4 the token is missing or wrong.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::http_client;

pub(crate) const EXIT_FAILED: u8 = 1;
pub(crate) const EXIT_USAGE: u8 = 2;
pub(crate) const EXIT_UNREACHABLE: u8 = 3;
pub(crate) const EXIT_UNAUTHENTICATED: u8 = 4;

/// Where the agent is and how to prove who we are.
#[derive(Debug, Default)]
pub(crate) struct Conn {
    /// `http://HOST:PORT` (a trailing `/graphql` is accepted).
    pub url: String,
    pub token: Option<String>,
    pub token_file: String,
}

#[derive(Debug)]
pub(crate) enum Verb {
    Install {
        feature: String,
        name: String,
        router: String,
        settings: Option<String>,
        link: Option<String>,
    },
    List,
    Features,
    Status(String),
    Logs {
        id: String,
        follow: bool,
        tail: u32,
    },
    Update {
        id: String,
        version: String,
    },
    Uninstall(String),
    /// `start`, `stop`, `restart`: the mutation's name.
    Control(&'static str, String),
    Route {
        id: String,
        devices: Vec<String>,
    },
    Unroute(Vec<String>),
    Devices,
}

#[derive(Debug)]
pub(crate) struct Command {
    pub conn: Conn,
    pub verb: Verb,
}

/// Why a command did not do its job: the exit code and one line for people.
pub(crate) struct Failure(pub u8, pub String);

type Outcome<T> = Result<T, Failure>;

fn failed(message: impl Into<String>) -> Failure {
    Failure(EXIT_FAILED, message.into())
}

struct Client {
    endpoint: String,
    token: String,
    http: ureq::Agent,
}

impl Client {
    fn new(conn: Conn) -> Outcome<Client> {
        let base = conn.url.trim_end_matches('/');
        let base = base.strip_suffix("/graphql").unwrap_or(base);
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure(
                EXIT_USAGE,
                format!("--url {:?} is not an http(s) URL", conn.url),
            ));
        }
        let token = match conn.token {
            Some(t) => t,
            None => std::fs::read_to_string(&conn.token_file)
                .map_err(|e| {
                    Failure(
                        EXIT_UNAUTHENTICATED,
                        format!(
                            "no token: cannot read {} ({e}); give --token, NNC_TOKEN or --token-file",
                            conn.token_file
                        ),
                    )
                })?
                .trim()
                .to_owned(),
        };
        Ok(Client {
            endpoint: format!("{base}/graphql"),
            token,
            http: http_client::agent_direct(),
        })
    }

    /// One query or mutation; its `data`, or the first error as a failure with its code.
    fn gql(&self, query: &str, variables: Value) -> Outcome<Value> {
        let body = json!({ "query": query, "variables": variables }).to_string();
        let unreachable = |e: String| {
            Failure(
                EXIT_UNREACHABLE,
                format!("cannot reach the agent at {}: {e}", self.endpoint),
            )
        };
        let resp = self
            .http
            .post(&self.endpoint)
            .header("authorization", &format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .send(body.as_bytes())
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = http_client::read_capped(resp.into_body().into_reader(), 8 << 20)
            .map_err(unreachable)?;
        let doc: Value = serde_json::from_slice(&bytes)
            .map_err(|_| unreachable(format!("HTTP {status} with a body that is not JSON")))?;
        if let Some(e) = doc["errors"].get(0) {
            let code = e["extensions"]["code"].as_str().unwrap_or("ERROR");
            let message = e["message"].as_str().unwrap_or("");
            let exit = if code == "UNAUTHENTICATED" {
                EXIT_UNAUTHENTICATED
            } else {
                EXIT_FAILED
            };
            return Err(Failure(exit, format!("{code}: {message}")));
        }
        Ok(doc["data"].clone())
    }
}

const INSTANCE_FIELDS: &str = "id name featureId version status error errorCode failedStep \
     progress { status percent bytesDownloaded totalBytes } process { state pid restartCount } \
     interface { name address serviceAddress } devices";

/// Runs a client command; what it prints goes to stdout, the failure line to the caller.
pub(crate) fn run(cmd: Command) -> Outcome<()> {
    let c = Client::new(cmd.conn)?;
    let out = &mut std::io::stdout();
    match cmd.verb {
        Verb::Install {
            feature,
            name,
            router,
            settings,
            link,
        } => {
            let mut settings: Value = match settings {
                Some(s) => serde_json::from_str(&s)
                    .map_err(|e| Failure(EXIT_USAGE, format!("--settings is not JSON: {e}")))?,
                None => json!({}),
            };
            if let Some(l) = link {
                match settings.as_object_mut() {
                    Some(o) => o.insert("link".into(), Value::String(l)),
                    None => return Err(Failure(EXIT_USAGE, "--settings must be an object".into())),
                };
            }
            let d = c.gql(
                "mutation($f: ID!, $r: ID!, $n: String!, $s: JSON) { installFeature(featureId: $f, routerId: $r, name: $n, settings: $s) { instanceId } }",
                json!({ "f": feature, "r": router, "n": name, "s": settings }),
            )?;
            let id = d["installFeature"]["instanceId"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let _ = writeln!(out, "instance {id}: installing {feature} as {name:?}");
            follow(&c, &id, out, None)
        }
        Verb::Update { id, version } => {
            c.gql(
                "mutation($i: ID!, $v: String!) { updateInstance(id: $i, version: $v) { id } }",
                json!({ "i": id, "v": version }),
            )?;
            let _ = writeln!(out, "instance {id}: updating to {version}");
            follow(&c, &id, out, Some(&version))
        }
        Verb::Uninstall(id) => {
            c.gql(
                "mutation($i: ID!) { uninstallInstance(id: $i) { instanceId } }",
                json!({ "i": id }),
            )?;
            let _ = writeln!(out, "instance {id}: uninstalling");
            let started = Instant::now();
            loop {
                let gone = match c.gql(
                    "query($i: ID!) { instance(id: $i) { status error } }",
                    json!({ "i": id }),
                ) {
                    Err(Failure(_, m)) if m.starts_with("NOT_FOUND") => true,
                    Err(f) => return Err(f),
                    Ok(d) if d["instance"]["status"] == "FAILED" => {
                        return Err(failed(format!(
                            "uninstall failed: {}",
                            d["instance"]["error"].as_str().unwrap_or("")
                        )));
                    }
                    Ok(_) => false,
                };
                if gone {
                    let _ = writeln!(out, "instance {id}: removed");
                    return Ok(());
                }
                if started.elapsed() > WAIT {
                    return Err(failed("still uninstalling after 10 minutes"));
                }
                std::thread::sleep(POLL);
            }
        }
        Verb::Control(verb, id) => {
            let q = format!("mutation($i: ID!) {{ {verb}Instance(id: $i) {{ status }} }}");
            let d = c.gql(&q, json!({ "i": id }))?;
            let status = &d[format!("{verb}Instance")]["status"];
            let _ = writeln!(out, "instance {id}: {}", status.as_str().unwrap_or("?"));
            Ok(())
        }
        Verb::List => {
            let d = c.gql(
                "{ instances { id name featureId version status errorCode } }",
                json!({}),
            )?;
            let rows: Vec<[String; 5]> = list(&d["instances"])
                .iter()
                .map(|i| {
                    let mut status = s(&i["status"]);
                    if let Some(code) = i["errorCode"].as_str() {
                        status = format!("{status} ({code})");
                    }
                    [
                        s(&i["id"]),
                        s(&i["name"]),
                        s(&i["featureId"]),
                        s(&i["version"]),
                        status,
                    ]
                })
                .collect();
            table(out, ["ID", "NAME", "FEATURE", "VERSION", "STATUS"], &rows);
            Ok(())
        }
        Verb::Features => {
            let d = c.gql(
                "{ features { id version supported versions latestVersion } }",
                json!({}),
            )?;
            let rows: Vec<[String; 5]> = list(&d["features"])
                .iter()
                .map(|f| {
                    let versions: Vec<String> = list(&f["versions"]).iter().map(s).collect();
                    [
                        s(&f["id"]),
                        s(&f["version"]),
                        if f["supported"] == true { "yes" } else { "no" }.into(),
                        versions.join(","),
                        f["latestVersion"].as_str().unwrap_or("-").into(),
                    ]
                })
                .collect();
            table(
                out,
                ["FEATURE", "VERSION", "HERE", "VERSIONS", "LATEST"],
                &rows,
            );
            Ok(())
        }
        Verb::Status(id) => {
            let q = format!("query($i: ID!) {{ instance(id: $i) {{ {INSTANCE_FIELDS} }} }}");
            let d = c.gql(&q, json!({ "i": id }))?;
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&d["instance"]).unwrap_or_default()
            );
            Ok(())
        }
        Verb::Logs { id, follow, tail } => {
            // Subscribe first, so that no line falls between the tail and the stream.
            let mut ws = if follow {
                Some(Ws::open(&c, &id)?)
            } else {
                None
            };
            let d = c.gql(
                "query($i: ID!, $t: Int) { instanceLogs(id: $i, tail: $t) }",
                json!({ "i": id, "t": tail }),
            )?;
            let tty = std::io::stdout().is_terminal();
            for l in list(&d["instanceLogs"]) {
                if writeln!(out, "{}", shown(l.as_str().unwrap_or(""), tty)).is_err() {
                    return Ok(());
                }
            }
            let _ = out.flush();
            match ws.as_mut() {
                Some(ws) => ws.follow(out),
                None => Ok(()),
            }
        }
        Verb::Route { id, devices } => {
            let d = c.gql(
                "mutation($i: ID!, $d: [String!]!) { routeDevices(instanceId: $i, devices: $d) { device } }",
                json!({ "i": id, "d": devices }),
            )?;
            for r in list(&d["routeDevices"]) {
                let _ = writeln!(out, "{} -> {id}", s(&r["device"]));
            }
            Ok(())
        }
        Verb::Unroute(devices) => {
            let d = c.gql(
                "mutation($d: [String!]!) { unrouteDevices(devices: $d) }",
                json!({ "d": devices }),
            )?;
            for r in list(&d["unrouteDevices"]) {
                let _ = writeln!(out, "{} direct", s(r));
            }
            Ok(())
        }
        Verb::Devices => {
            let d = c.gql("{ deviceRoutes { device instanceId since } }", json!({}))?;
            let rows: Vec<[String; 3]> = list(&d["deviceRoutes"])
                .iter()
                .map(|r| [s(&r["device"]), s(&r["instanceId"]), s(&r["since"])])
                .collect();
            table(out, ["DEVICE", "INSTANCE", "SINCE"], &rows);
            Ok(())
        }
    }
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn table<const N: usize>(out: &mut impl Write, head: [&str; N], rows: &[[String; N]]) {
    let mut widths = head.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (c, w) in cells.zip(widths) {
            l.push_str(&format!("{c:<w$}  "));
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(&mut head.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
}

const POLL: Duration = Duration::from_millis(250);
const WAIT: Duration = Duration::from_secs(600);

/// Watches an instance until its install, update or start ends: a redrawn bar on a
/// terminal, a line per step (and per 10 %) through a pipe.
/// `version`: the version an update must end at (a rolled-back update ends RUNNING at the
/// old one, with the reason in `error`).
fn follow(c: &Client, id: &str, out: &mut impl Write, version: Option<&str>) -> Outcome<()> {
    let tty = std::io::stdout().is_terminal();
    let q = format!("query($i: ID!) {{ instance(id: $i) {{ {INSTANCE_FIELDS} }} }}");
    let started = Instant::now();
    let mut last_status = String::new();
    let mut last_decile = -1;
    let mut rate = Rate::default();
    let mut drawn = false;
    loop {
        let d = c.gql(&q, json!({ "i": id }))?;
        let i = &d["instance"];
        let status = s(&i["status"]);
        let p = &i["progress"];
        let done = p["bytesDownloaded"].as_u64().unwrap_or(0);
        let total = p["totalBytes"].as_u64();
        let percent = p["percent"].as_f64().unwrap_or(0.0);
        let downloading = p["status"] == "downloading";
        if downloading {
            let bps = rate.sample(done);
            if tty {
                let _ = write!(out, "\r\x1b[K{}", bar(percent, done, total, bps));
                drawn = true;
            } else if (percent / 10.0) as i32 > last_decile {
                last_decile = (percent / 10.0) as i32;
                let line = bar(percent, done, total, bps);
                let _ = writeln!(
                    out,
                    "downloading {}",
                    &line[line.find(']').map_or(0, |i| i + 2)..]
                );
            }
        }
        if status != last_status {
            if drawn && !downloading {
                let _ = write!(out, "\r\x1b[K{}\n", bar(100.0, done, total, None));
                drawn = false;
            }
            if !downloading {
                let _ = writeln!(out, "{}", status.to_lowercase().replace('_', " "));
            }
            last_status.clone_from(&status);
        }
        let _ = out.flush();
        match status.as_str() {
            "RUNNING" | "INSTALLED" | "STOPPED" => {
                if let Some(want) = version
                    && i["version"] != want
                {
                    return Err(failed(format!(
                        "{}: {} (still at {})",
                        i["errorCode"].as_str().unwrap_or("UPDATE_FAILED"),
                        i["error"].as_str().unwrap_or("the update did not take"),
                        s(&i["version"])
                    )));
                }
                let _ = writeln!(out, "instance {id}: {status}");
                return Ok(());
            }
            "FAILED" => {
                return Err(failed(format!(
                    "{}: {} (failed at {})",
                    i["errorCode"].as_str().unwrap_or("FAILED"),
                    i["error"].as_str().unwrap_or(""),
                    i["failedStep"].as_str().unwrap_or("?")
                )));
            }
            _ => {}
        }
        if started.elapsed() > WAIT {
            return Err(failed(format!("still {status} after 10 minutes")));
        }
        std::thread::sleep(POLL);
    }
}

/// Download rate over the last few seconds.
#[derive(Default)]
struct Rate {
    samples: std::collections::VecDeque<(Instant, u64)>,
}

impl Rate {
    fn sample(&mut self, bytes: u64) -> Option<f64> {
        let now = Instant::now();
        self.samples.push_back((now, bytes));
        while self.samples.len() > 2 && now - self.samples[0].0 > Duration::from_secs(3) {
            self.samples.pop_front();
        }
        let (t0, b0) = self.samples[0];
        let secs = (now - t0).as_secs_f64();
        (secs > 0.2).then(|| bytes.saturating_sub(b0) as f64 / secs)
    }
}

fn human(bytes: f64) -> String {
    if bytes >= 1048576.0 {
        format!("{:.1} MiB", bytes / 1048576.0)
    } else {
        format!("{:.0} KiB", bytes / 1024.0)
    }
}

/// `[#######-----]  58.0%  7.0 MiB/12.0 MiB  1.2 MiB/s  ETA 4s`
fn bar(percent: f64, done: u64, total: Option<u64>, bps: Option<f64>) -> String {
    let filled = ((percent.clamp(0.0, 100.0) / 100.0) * 24.0) as usize;
    let mut l = format!(
        "[{}{}] {percent:5.1}%  {}",
        "#".repeat(filled),
        "-".repeat(24 - filled),
        human(done as f64)
    );
    if let Some(t) = total {
        l.push_str(&format!("/{}", human(t as f64)));
    }
    if let Some(r) = bps.filter(|r| *r > 0.0) {
        l.push_str(&format!("  {}/s", human(r)));
        if let Some(t) = total {
            l.push_str(&format!("  ETA {:.0}s", t.saturating_sub(done) as f64 / r));
        }
    }
    l
}

/// How long `logs -f` waits on a silent agent before pinging it, and then for the pong.
const IDLE: Duration = Duration::from_secs(30);

/// A service's line as printed: on a terminal only colour sequences (SGR) pass, no other
/// control sequence a service could use on the user's terminal.
fn shown(line: &str, tty: bool) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        if c == '\x1b' {
            let seq = rest[1..].strip_prefix('[').map(|r| {
                let end = r
                    .find(|ch: char| !(ch.is_ascii_digit() || ch == ';'))
                    .unwrap_or(r.len());
                (&r[..end], r[end..].chars().next())
            });
            match seq {
                Some((params, Some('m'))) => {
                    if tty {
                        out.push_str("\x1b[");
                        out.push_str(params);
                        out.push('m');
                    }
                    rest = &rest[3 + params.len()..];
                }
                // Any other control sequence goes whole (cursor moves, clearing ...).
                Some((params, Some(f))) if ('\x40'..='\x7e').contains(&f) => {
                    rest = &rest[3 + params.len()..];
                }
                _ => rest = &rest[1..],
            }
            continue;
        }
        if !c.is_control() || c == '\t' {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A `graphql-transport-ws` subscription to one instance's log lines.
struct Ws {
    socket: tokio_tungstenite::tungstenite::WebSocket<std::net::TcpStream>,
    /// The close code the agent sent, if it closed.
    closed: Option<u16>,
}

impl Ws {
    fn open(c: &Client, id: &str) -> Outcome<Ws> {
        use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};
        let url = c.endpoint.replacen("http", "ws", 1);
        let unreachable = |e: String| Failure(EXIT_UNREACHABLE, format!("WebSocket {url}: {e}"));
        if url.starts_with("wss:") {
            return Err(Failure(
                EXIT_USAGE,
                "logs -f needs a plain http:// agent URL".into(),
            ));
        }
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| unreachable(e.to_string()))?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            tungstenite::http::HeaderValue::from_static("graphql-transport-ws"),
        );
        let host = req
            .uri()
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']']);
        let port = req.uri().port_u16().unwrap_or(80);
        let stream =
            std::net::TcpStream::connect((host, port)).map_err(|e| unreachable(e.to_string()))?;
        // A silent agent is pinged (graphql-transport-ws ping/pong) and given up on when it
        // does not answer: `logs -f` never hangs on a dead link.
        let _ = stream.set_read_timeout(Some(IDLE));
        let _ = stream.set_write_timeout(Some(IDLE));
        let (socket, _) =
            tungstenite::client::client(req, stream).map_err(|e| unreachable(e.to_string()))?;
        let mut ws = Ws {
            socket,
            closed: None,
        };
        let send = |ws: &mut Ws, v: Value| {
            ws.socket
                .send(Message::text(v.to_string()))
                .map_err(|e| unreachable(e.to_string()))
        };
        send(
            &mut ws,
            json!({ "type": "connection_init", "payload": { "token": c.token } }),
        )?;
        match ws.next()? {
            Some(m) if m["type"] == "connection_ack" => {}
            _ => {
                return Err(match ws.closed {
                    Some(4403) => Failure(
                        EXIT_UNAUTHENTICATED,
                        "UNAUTHENTICATED: the agent refused the token".into(),
                    ),
                    Some(4429) => {
                        failed("RATE_LIMITED: too many failed tokens from here; retry later")
                    }
                    code => unreachable(format!("the agent closed the connection ({code:?})")),
                });
            }
        }
        send(
            &mut ws,
            json!({ "type": "subscribe", "id": "1", "payload": {
                "query": "subscription($i: ID!) { logs(instanceId: $i) { stream line } }",
                "variables": { "i": id } } }),
        )?;
        Ok(ws)
    }

    /// The next protocol message (answering pings, pinging a silent agent); None when the
    /// agent closed.
    fn next(&mut self) -> Outcome<Option<Value>> {
        use tokio_tungstenite::tungstenite::{Error, Message};
        let mut pinged = false;
        loop {
            let m = match self.socket.read() {
                Ok(m) => m,
                Err(Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if pinged {
                        return Err(Failure(
                            EXIT_UNREACHABLE,
                            format!(
                                "the agent did not answer a ping within {} s",
                                IDLE.as_secs()
                            ),
                        ));
                    }
                    pinged = true;
                    let _ = self.socket.send(Message::text(r#"{"type":"ping"}"#));
                    continue;
                }
                Err(_) => return Ok(None),
            };
            pinged = false;
            let Message::Text(t) = m else {
                if let Message::Close(frame) = m {
                    self.closed = frame.map(|f| u16::from(f.code));
                    return Ok(None);
                }
                continue;
            };
            let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
            match v["type"].as_str() {
                Some("ping") => {
                    let _ = self.socket.send(Message::text(r#"{"type":"pong"}"#));
                }
                Some("pong") => {}
                _ => return Ok(Some(v)),
            }
        }
    }

    fn follow(&mut self, out: &mut impl Write) -> Outcome<()> {
        let tty = std::io::stdout().is_terminal();
        while let Some(m) = self.next()? {
            match m["type"].as_str() {
                Some("next") => {
                    let l = &m["payload"]["data"]["logs"];
                    let line = shown(l["line"].as_str().unwrap_or(""), tty);
                    // The reader went away (`logs -f | head`): done.
                    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                        return Ok(());
                    }
                }
                Some("error") => {
                    let e = &m["payload"][0];
                    return Err(failed(format!(
                        "{}: {}",
                        e["extensions"]["code"].as_str().unwrap_or("ERROR"),
                        e["message"].as_str().unwrap_or("")
                    )));
                }
                Some("complete") => return Ok(()),
                _ => {}
            }
        }
        Err(Failure(
            EXIT_UNREACHABLE,
            "the agent closed the log stream".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_lines_keep_colour_on_a_terminal_and_nothing_else() {
        let line = "\x1b[36mINFO\x1b[0m started \x1b]52;c;ZXZpbA==\x07 \x1b[2Jx\r\tok";
        assert_eq!(
            shown(line, true),
            "\x1b[36mINFO\x1b[0m started ]52;c;ZXZpbA== x\tok"
        );
        assert_eq!(shown(line, false), "INFO started ]52;c;ZXZpbA== x\tok");
    }

    #[test]
    fn bar_shows_bytes_rate_and_eta() {
        let b = bar(50.0, 6 << 20, Some(12 << 20), Some(2.0 * 1048576.0));
        assert_eq!(
            b,
            "[############------------]  50.0%  6.0 MiB/12.0 MiB  2.0 MiB/s  ETA 3s"
        );
        assert_eq!(
            bar(0.0, 0, None, None),
            "[------------------------]   0.0%  0 KiB"
        );
    }
}
