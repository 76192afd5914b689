//! The config generators through `nnc-agent config render`, judged by the real services:
//! snapshots of what each generator writes for typical settings (each snapshot also accepted
//! by the real checker), and a property test: settings sampled from each published schema
//! render to configs that tor, sing-box and (for the Xray generator) Debian's v2ray accept.
//!
//! Snapshots live in `tests/snapshots/`; `NNC_UPDATE_SNAPSHOTS=1` rewrites them after an
//! intended change (review the diff).
//!
//! Settings the schema accepts but only the service can judge are left out of the sampling,
//! and each has a test proving the checker refuses it (tests/lifecycle.rs): free-form Tor
//! bridge lines, sing-box hysteria2 with TLS turned off, and the gRPC transport, which Xray
//! has and V2Ray 4 (our stand-in) does not.

mod common;

use std::path::Path;
use std::process::Command;

use common::{BIN, Rng, TempDir};
use serde_json::{Value, json};

const SNAPSHOT_DIR: &str = "/var/lib/nnc/instances/0123456789abcdef";

fn render(
    generator: &str,
    settings: &Value,
    listen: &str,
    mark: Option<u32>,
    dir: &Path,
) -> Result<String, String> {
    let mut c = Command::new(BIN);
    c.args([
        "config",
        "render",
        generator,
        "--settings",
        &settings.to_string(),
        "--listen",
        listen,
        "--dir",
    ])
    .arg(dir);
    if let Some(m) = mark {
        c.args(["--mark", &m.to_string()]);
    }
    let out = c.output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn check(generator: &str, file: &Path) -> Result<(), String> {
    common::checker_verdict(generator, file)
}

/// Renders into a real instance directory and lets the service check the result.
fn render_and_check(
    work: &Path,
    n: usize,
    generator: &str,
    settings: &Value,
    listen: &str,
    mark: Option<u32>,
) -> Result<(), String> {
    let dir = work.join(format!("i{n}"));
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let text =
        render(generator, settings, listen, mark, &dir).map_err(|e| format!("render: {e}"))?;
    let file = dir.join(if generator == "tor" {
        "torrc"
    } else {
        "config.json"
    });
    std::fs::write(&file, &text).unwrap();
    check(generator, &file).map_err(|e| format!("{e}\n--- config ---\n{text}"))
}

const UUID: &str = "123e4567-e89b-12d3-a456-426614174000";
const PBK: &str = "jNXHt1yRo0vDuchQlIP6Z0ZvjT3KtzVI-T4E7RoLJS0";

/// What this machine's checkers cannot load, and the one refusal each must give: PyPI's
/// sing-box is built without `with_utls` (upstream's release builds have it), Debian's V2Ray 4
/// stands in for Xray and predates gRPC, HTTPUpgrade and the 2022 ciphers. These configs are
/// judged by their snapshots, written from sing-box's and Xray's documentation.
fn refused_here(name: &str) -> Option<&'static str> {
    match name {
        "sing-box-vless-reality-vision" => {
            Some("uTLS, which is required by reality is not included in this build")
        }
        "sing-box-trojan-utls-httpupgrade" => Some("uTLS is not included in this build"),
        "xray-vless-grpc-tls" => Some("unknown transport protocol: grpc"),
        "xray-trojan-httpupgrade" => Some("unknown transport protocol: httpupgrade"),
        "xray-ss2022" => Some("unknown cipher method: 2022-blake3-aes-128-gcm"),
        _ => None,
    }
}

fn snapshot_cases() -> Vec<(&'static str, &'static str, Value, &'static str, Option<u32>)> {
    let vif = "10.99.105.2";
    let mark = Some(1105);
    vec![
        ("tor-default", "tor", json!({}), "127.0.0.1", None),
        (
            "tor-segment-ports",
            "tor",
            json!({ "socksPort": 1080, "transPort": 9041, "dnsPort": 5353, "controlPort": 9151 }),
            vif,
            None,
        ),
        (
            "tor-bridges",
            "tor",
            json!({ "bridges": ["192.0.2.10:443 4352E58420E68F5E40BF7C74FADDCCD9D1349413", "[2001:db8::1]:9001"] }),
            vif,
            None,
        ),
        (
            "tor-bridge-relay",
            "tor",
            json!({ "relay": { "orPort": 9001, "nickname": "nncBridge", "contactInfo": "admin at example dot org", "bridge": true } }),
            vif,
            None,
        ),
        ("sing-box-default", "sing-box", json!({}), "127.0.0.1", None),
        (
            "sing-box-segment-tproxy",
            "sing-box",
            json!({ "mixedPort": 7890, "tproxyPort": 7893, "redirectPort": 7892, "logLevel": "warn" }),
            vif,
            mark,
        ),
        (
            "sing-box-vless-tls",
            "sing-box",
            json!({ "outbound": { "type": "vless", "server": "proxy.example.org", "serverPort": 443, "uuid": UUID, "tls": { "enabled": true, "serverName": "cdn.example.org" } } }),
            vif,
            mark,
        ),
        (
            "sing-box-vmess",
            "sing-box",
            json!({ "outbound": { "type": "vmess", "server": "192.0.2.1", "serverPort": 10086, "uuid": UUID, "security": "aes-128-gcm" } }),
            vif,
            mark,
        ),
        (
            "sing-box-trojan",
            "sing-box",
            json!({ "outbound": { "type": "trojan", "server": "proxy.example.org", "serverPort": 443, "password": "correct horse" } }),
            vif,
            mark,
        ),
        (
            "sing-box-shadowsocks",
            "sing-box",
            json!({ "outbound": { "type": "shadowsocks", "server": "192.0.2.1", "serverPort": 8388, "method": "chacha20-ietf-poly1305", "password": "pw" } }),
            vif,
            mark,
        ),
        (
            "sing-box-hysteria2",
            "sing-box",
            json!({ "outbound": { "type": "hysteria2", "server": "proxy.example.org", "serverPort": 443, "password": "pw", "tls": { "insecure": true } } }),
            vif,
            mark,
        ),
        (
            "sing-box-vless-reality-vision",
            "sing-box",
            json!({ "link": format!("vless://{UUID}@[2001:db8::1]:443?encryption=none&security=reality&sni=www.example.com&fp=firefox&pbk={PBK}&sid=0123abcd&spx=%2F&type=tcp&flow=xtls-rprx-vision#REALITY") }),
            vif,
            mark,
        ),
        (
            "sing-box-trojan-utls-httpupgrade",
            "sing-box",
            json!({ "link": "trojan://pw@proxy.example.org:443?type=httpupgrade&path=%2Fup&host=cdn.example.org&sni=cdn.example.org&fp=chrome&alpn=http%2F1.1" }),
            vif,
            mark,
        ),
        (
            "sing-box-vmess-grpc",
            "sing-box",
            json!({ "outbound": { "type": "vmess", "server": "192.0.2.1", "serverPort": 443, "uuid": UUID, "alterId": 0,
                                  "transport": { "type": "grpc", "serviceName": "svc" }, "tls": { "enabled": true, "alpn": ["h2"] } } }),
            vif,
            mark,
        ),
        (
            "sing-box-hysteria2-salamander",
            "sing-box",
            json!({ "link": "hysteria2://pw@proxy.example.org:8443/?obfs=salamander&obfs-password=ob&sni=real.example.org" }),
            vif,
            mark,
        ),
        (
            "sing-box-tuic",
            "sing-box",
            json!({ "link": format!("tuic://{UUID}:pw@192.0.2.6:443?congestion_control=bbr&udp_relay_mode=quic&alpn=h3&sni=t.example.org") }),
            vif,
            mark,
        ),
        (
            "sing-box-ss2022",
            "sing-box",
            json!({ "link": "ss://2022-blake3-aes-256-gcm:YctPZ6U7xPPcU%2Bgp3u%2B0tx%2FtRizJN9K8y%2BuKlW2qjlI%3D@192.0.2.3:8388#ss2022" }),
            vif,
            mark,
        ),
        (
            "sing-box-outbounds-urltest",
            "sing-box",
            json!({ "probeUrl": "http://192.0.2.80/generate_204", "outbounds": [
                { "type": "trojan", "server": "a.example.org", "serverPort": 443, "password": "pw", "name": "A" },
                { "type": "shadowsocks", "server": "192.0.2.3", "serverPort": 8388, "method": "aes-128-gcm", "password": "pw", "name": "A" },
                { "type": "vless", "server": "2001:db8::9", "serverPort": 443, "uuid": UUID, "tls": { "enabled": true } }
            ] }),
            vif,
            mark,
        ),
        ("xray-default", "xray", json!({}), "127.0.0.1", None),
        (
            "xray-outbounds-first",
            "xray",
            json!({ "outbounds": [
                { "type": "trojan", "server": "a.example.org", "serverPort": 443, "password": "pw", "name": "A" },
                { "type": "shadowsocks", "server": "192.0.2.3", "serverPort": 8388, "method": "aes-128-gcm", "password": "pw" }
            ] }),
            vif,
            mark,
        ),
        (
            "xray-vless-reality-vision",
            "xray",
            json!({ "link": format!("vless://{UUID}@[2001:db8::1]:443?encryption=none&security=reality&sni=www.example.com&fp=firefox&pbk={PBK}&sid=0123abcd&spx=%2F&type=tcp&flow=xtls-rprx-vision#REALITY") }),
            vif,
            mark,
        ),
        (
            "xray-vless-grpc-tls",
            "xray",
            json!({ "link": format!("vless://{UUID}@proxy.example.org:443?type=grpc&serviceName=svc&security=tls&sni=cdn.example.org&fp=chrome&alpn=h2&allowInsecure=1") }),
            vif,
            mark,
        ),
        (
            "xray-trojan-httpupgrade",
            "xray",
            json!({ "link": "trojan://pw@proxy.example.org:443?type=httpupgrade&path=%2Fup&host=cdn.example.org" }),
            vif,
            mark,
        ),
        (
            "xray-vmess-ws",
            "xray",
            json!({ "outbound": { "type": "vmess", "server": "192.0.2.1", "serverPort": 443, "uuid": UUID, "alterId": 0,
                                  "transport": { "type": "ws", "path": "/v", "host": "cdn.example.org" }, "tls": { "enabled": true, "serverName": "cdn.example.org" } } }),
            vif,
            mark,
        ),
        (
            "xray-ss2022",
            "xray",
            json!({ "link": "ss://2022-blake3-aes-128-gcm:k2UwYq1T0lB8hmR3nV6sJg%3D%3D@192.0.2.3:8388" }),
            vif,
            mark,
        ),
        (
            "xray-vless-ws-tls",
            "xray",
            json!({ "socksPort": 1081, "transparentPort": 12346, "outbound": { "type": "vless", "server": "proxy.example.org", "serverPort": 443, "uuid": UUID, "transport": "ws", "tls": { "enabled": true } } }),
            vif,
            mark,
        ),
        (
            "xray-vmess",
            "xray",
            json!({ "outbound": { "type": "vmess", "server": "192.0.2.1", "serverPort": 10086, "uuid": UUID } }),
            vif,
            mark,
        ),
        (
            "xray-trojan",
            "xray",
            json!({ "outbound": { "type": "trojan", "server": "proxy.example.org", "serverPort": 443, "password": "pw" } }),
            vif,
            mark,
        ),
        (
            "xray-shadowsocks",
            "xray",
            json!({ "logLevel": "error", "outbound": { "type": "shadowsocks", "server": "192.0.2.1", "serverPort": 8388, "method": "aes-256-gcm", "password": "pw" } }),
            vif,
            mark,
        ),
    ]
}

#[test]
fn generated_configs_match_their_snapshots_and_the_real_checkers_accept_them() {
    let update = std::env::var_os("NNC_UPDATE_SNAPSHOTS").is_some();
    let snapshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let work = TempDir::new("snapshots");
    let mut mismatches = Vec::new();
    for (n, (name, generator, settings, listen, mark)) in snapshot_cases().into_iter().enumerate() {
        let text = render(generator, &settings, listen, mark, Path::new(SNAPSHOT_DIR)).unwrap();
        let ext = if generator == "tor" { "torrc" } else { "json" };
        let file = snapshots.join(format!("{name}.{ext}"));
        if update {
            std::fs::write(&file, &text).unwrap();
        } else {
            let want = std::fs::read_to_string(&file).unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (create it with NNC_UPDATE_SNAPSHOTS=1 and review it)",
                    file.display()
                )
            });
            if want != text {
                mismatches.push(format!("{name}:\n--- want\n{want}\n--- got\n{text}"));
            }
        }
        let verdict = render_and_check(work.path(), n, generator, &settings, listen, mark);
        match (refused_here(name), verdict) {
            (None, v) => v.unwrap_or_else(|e| panic!("{name}: the real checker refuses it: {e}")),
            (Some(why), Err(e)) => {
                // That refusal and no other: the checker's verdict is its last line.
                let verdict = e.split("--- config ---").next().unwrap_or_default();
                let last = verdict
                    .lines()
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or_default();
                assert!(
                    last.contains(why),
                    "{name}: refused, but not for {why:?}: {e}"
                );
            }
            (Some(why), Ok(())) => panic!("{name}: expected this build to refuse it ({why})"),
        }
    }
    assert!(
        mismatches.is_empty(),
        "snapshots differ (NNC_UPDATE_SNAPSHOTS=1 to accept):\n{}",
        mismatches.join("\n")
    );
}

fn sample_string(format: Option<&str>, min: u64, max: u64, rng: &mut Rng) -> String {
    match format {
        Some("uuid") => {
            let hex: String = (0..32)
                .map(|_| *rng.pick(&b"0123456789abcdef"[..]) as char)
                .collect();
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        }
        Some("ipv4") => format!("198.51.100.{}", 1 + rng.below(254)),
        Some("url") => format!("http://192.0.2.{}/p{}", 1 + rng.below(254), rng.below(100)),
        Some("x25519") => {
            let key: Vec<u8> = (0..32).map(|_| rng.next() as u8).collect();
            common::base64url(&key)
        }
        Some("path") => {
            let seg: String = (0..rng.below(12))
                .map(|_| *rng.pick(&b"abcXYZ019-_.~!$&'()*+,;=:@/?"[..]) as char)
                .collect();
            if rng.coin() {
                format!("/{seg}%2F%e6")
            } else {
                format!("/{seg}")
            }
        }
        Some("shortid") => {
            let len = 2 * rng.below(9) as usize;
            (0..len)
                .map(|_| *rng.pick(&b"0123456789abcdef"[..]) as char)
                .collect()
        }
        Some("hostname") => {
            let label = |rng: &mut Rng| -> String {
                let len = 1 + rng.below(12);
                (0..len)
                    .map(|_| *rng.pick(&b"abcdefghijklmnopqrstuvwxyz0123456789"[..]) as char)
                    .collect()
            };
            match rng.below(4) {
                0 => format!("192.0.2.{}", 1 + rng.below(254)),
                1 => format!("2001:db8::{:x}", rng.below(0xffff)),
                _ => format!("{}.{}.example", label(rng), label(rng)),
            }
        }
        Some("nickname") => {
            let len = 1 + rng.below(19);
            (0..len)
                .map(|_| {
                    *rng.pick(
                        &b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[..],
                    ) as char
                })
                .collect()
        }
        _ => {
            // Printable text, some of it beyond ASCII, without quotes, backslashes or control
            // characters (what the "text" format allows).
            let chars: Vec<char> = "abcXYZ019 -_.:/@#%&()[]{}=+*!?,;~éü€日本".chars().collect();
            let max = max.min(40);
            let len = min + rng.below(max.saturating_sub(min) + 1);
            (0..len.max(min)).map(|_| *rng.pick(&chars)).collect()
        }
    }
}

/// A value the schema accepts (our schemas use this subset of JSON Schema).
fn sample(schema: &Value, rng: &mut Rng) -> Value {
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        return sample(rng.pick(options), rng);
    }
    if let Some(c) = schema.get("const") {
        return c.clone();
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        return rng.pick(e).clone();
    }
    let num = |k: &str| schema.get(k).and_then(Value::as_u64);
    match schema.get("type").and_then(Value::as_str) {
        Some("object") => {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut out = serde_json::Map::new();
            for (k, s) in schema["properties"].as_object().unwrap() {
                if required.contains(&k.as_str()) || rng.coin() {
                    out.insert(k.clone(), sample(s, rng));
                }
            }
            Value::Object(out)
        }
        Some("integer") => {
            let (lo, hi) = (
                num("minimum").unwrap_or(0),
                num("maximum").unwrap_or(1 << 20),
            );
            json!(lo + rng.below(hi - lo + 1))
        }
        Some("boolean") => json!(rng.coin()),
        Some("string") => json!(sample_string(
            schema.get("format").and_then(Value::as_str),
            num("minLength").unwrap_or(0),
            num("maxLength").unwrap_or(64),
            rng
        )),
        Some("array") => {
            let min = num("minItems").unwrap_or(0);
            let n = min + rng.below(num("maxItems").unwrap_or(4).min(4).saturating_sub(min) + 1);
            Value::Array((0..n).map(|_| sample(&schema["items"], rng)).collect())
        }
        other => panic!("the sampler does not know type {other:?} in {schema}"),
    }
}

/// Leaves out what only the service can judge (see the module comment), what this machine's
/// builds lack (uTLS and REALITY in PyPI's sing-box; gRPC, HTTPUpgrade, REALITY and the 2022
/// ciphers in V2Ray 4: each has a snapshot and, for sing-box, the refusal is tested), and the
/// rules across fields `expand` enforces (tested in tests/links.rs).
fn checker_only(generator: &str, settings: &mut Value) {
    let s = settings.as_object_mut().unwrap();
    // Links have their own corpus (tests/links.rs), a subscription is fetched by the agent
    // (tests/traffic.rs); `outbound` and `outbounds` exclude each other.
    s.remove("link");
    s.remove("subscription");
    if s.contains_key("outbound") {
        s.remove("outbounds");
    }
    if generator == "tor" {
        s.remove("bridges");
        return;
    }
    if let Some(o) = s.get_mut("outbound") {
        checker_only_outbound(generator, o);
    }
    for o in s
        .get_mut("outbounds")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        checker_only_outbound(generator, o);
    }
}

fn checker_only_outbound(generator: &str, o: &mut Value) {
    let kind = o["type"].as_str().unwrap().to_owned();
    if let Some(tls) = o.get_mut("tls").and_then(Value::as_object_mut) {
        tls.remove("reality");
        if generator == "sing-box" {
            tls.remove("fingerprint");
        }
    }
    if matches!(kind.as_str(), "hysteria2" | "tuic")
        && let Some(tls) = o.get_mut("tls")
    {
        tls["enabled"] = json!(true);
    }
    if o.get("flow").is_some() {
        o.as_object_mut().unwrap().remove("transport");
        o["tls"]["enabled"] = json!(true);
    }
    let method = o
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if let Some(cipher) = method.strip_prefix("2022-blake3-") {
        if generator == "xray" {
            o["method"] = json!("aes-256-gcm");
        } else {
            let key = if cipher.starts_with("aes-128") {
                "k2UwYq1T0lB8hmR3nV6sJg=="
            } else {
                "YctPZ6U7xPPcU+gp3u+0tx/tRizJN9K8y+uKlW2qjlI="
            };
            o["password"] = json!(key);
        }
    }
    if generator == "xray" {
        let t = o.get("transport").cloned().unwrap_or(Value::Null);
        let kind = t.get("type").unwrap_or(&t);
        if kind == "grpc" || kind == "httpupgrade" {
            o["transport"] = json!("ws");
        }
    }
}

fn schema_of(generator: &str) -> Value {
    let out = Command::new(BIN)
        .args(["config", "schema", generator])
        .output()
        .unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn any_settings_the_schema_accepts_render_to_a_config_the_real_checker_accepts() {
    const SAMPLES: usize = 120;
    let work = TempDir::new("property");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut n = 0;
    for generator in ["tor", "sing-box", "xray"] {
        let schema = schema_of(generator);
        for i in 0..SAMPLES {
            let mut settings = sample(&schema, &mut rng);
            checker_only(generator, &mut settings);
            let (listen, mark) = if rng.coin() {
                (
                    format!("10.99.{}.2", 100 + rng.below(100)),
                    Some(1100 + u32::try_from(rng.below(100)).unwrap()),
                )
            } else {
                ("127.0.0.1".to_owned(), None)
            };
            n += 1;
            render_and_check(work.path(), n, generator, &settings, &listen, mark)
                .unwrap_or_else(|e| panic!("{generator} sample {i}: {settings}\n{e}"));
        }
    }
    assert_eq!(n, 3 * SAMPLES);
}

#[test]
fn render_refuses_settings_outside_the_schema() {
    let dir = TempDir::new("render-refuses");
    for (generator, settings, words) in [
        (
            "sing-box",
            json!({ "mixedPort": 0 }),
            "settings.mixedPort must be at least 1",
        ),
        (
            "tor",
            json!({ "relay": { "orPort": 9001, "nickname": "has space" } }),
            "settings.relay.nickname is not a valid nickname",
        ),
        (
            "xray",
            json!({ "outbound": { "type": "vless", "server": "x", "serverPort": 1 } }),
            "settings.outbound.uuid is required",
        ),
        (
            "tor",
            json!({ "socksPort": "9050\nExitRelay 1" }),
            "settings.socksPort must be of type integer",
        ),
    ] {
        let e = render(generator, &settings, "127.0.0.1", None, dir.path()).unwrap_err();
        assert!(e.contains(words), "{generator} {settings}: {e}");
    }
    let e = render("nginx", &json!({}), "127.0.0.1", None, dir.path()).unwrap_err();
    assert!(e.contains("no config generator"), "{e}");
}
