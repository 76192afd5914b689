//! sing-box (configuration format of 1.12 and later: typed DNS servers, no legacy `sniff`
//! inbound fields): a `mixed` (SOCKS + HTTP) inbound on the instance's address, optional
//! `tproxy` and `redirect` inbounds, the user's proxy outbound (or `direct` without one: never both), and a
//! route whose `final` is an outbound that exists and whose `default_mark` is the instance's
//! routing mark.

use serde_json::{Map, Value, json};

use super::{Context, DNS_PORT, Rendered, TRANSPARENT_PORT, port, port_schema};

pub(super) const FILE: &str = "config.json";

fn server_properties() -> Value {
    json!({
        "server": { "type": "string", "format": "hostname" },
        "serverPort": port_schema(),
        "name": { "type": "string", "format": "text", "maxLength": 64,
                  "description": "a label (a share link's #name)" }
    })
}

/// Secrets: accepted, written into the config file, never shown again (JSON Schema's
/// `writeOnly`; `redact` replaces them in answers and `secrets` collects them for scrubbing).
fn secret(mut schema: Value) -> Value {
    schema["writeOnly"] = json!(true);
    schema
}

/// uTLS ClientHello fingerprints both sing-box and Xray know.
const FINGERPRINTS: [&str; 10] = [
    "chrome",
    "firefox",
    "edge",
    "safari",
    "360",
    "qq",
    "ios",
    "android",
    "random",
    "randomized",
];

fn tls_schema(reality: bool) -> Value {
    let mut props = json!({
        "enabled": { "type": "boolean" },
        "serverName": { "type": "string", "format": "hostname" },
        "insecure": { "type": "boolean" },
        "alpn": { "type": "array", "maxItems": 8,
                  "items": { "type": "string", "format": "text", "minLength": 1, "maxLength": 32 } },
        "fingerprint": { "enum": FINGERPRINTS,
                         "description": "uTLS fingerprint (sing-box: a build with the with_utls tag)" }
    });
    if reality {
        props["reality"] = json!({
            "type": "object", "additionalProperties": false, "required": ["publicKey"],
            "description": "REALITY (needs tls.serverName; sing-box: a build with with_utls)",
            "properties": {
                "publicKey": { "type": "string", "format": "x25519" },
                "shortId": secret(json!({ "type": "string", "format": "shortid" })),
                "spiderX": { "type": "string", "format": "path", "maxLength": 256, "description": "Xray only" }
            }
        });
    }
    json!({ "type": "object", "additionalProperties": false, "properties": props })
}

/// `tcp`, `ws`, `grpc` (the older string form) or an object with the transport's fields.
fn transport_schema() -> Value {
    let text = |max: u64| json!({ "type": "string", "format": "text", "maxLength": max });
    json!({ "oneOf": [
        { "enum": ["tcp", "ws", "grpc"] },
        { "type": "object", "additionalProperties": false, "required": ["type"],
          "properties": {
            "type": { "enum": ["ws", "grpc", "httpupgrade"] },
            "path": { "type": "string", "format": "path", "maxLength": 256 },
            "host": { "type": "string", "format": "hostname" },
            "serviceName": text(128)
          } }
    ] })
}

/// One allowed outbound form: `type` fixed to `kind`, plus its own fields.
fn outbound(kind: &str, required: &[&str], extra: Value) -> Value {
    let mut props = server_properties();
    if let (Some(p), Value::Object(e)) = (props.as_object_mut(), extra) {
        p.extend(e);
        p.insert("type".into(), json!({ "const": kind }));
    }
    let mut req = vec!["type", "server", "serverPort"];
    req.extend_from_slice(required);
    json!({ "type": "object", "additionalProperties": false, "required": req, "properties": props })
}

/// The allowed outbound forms; Xray has no hysteria2 and tuic.
pub(super) fn outbound_schema(quic_protocols: bool) -> Value {
    let password =
        secret(json!({ "type": "string", "format": "text", "minLength": 1, "maxLength": 128 }));
    let uuid = secret(json!({ "type": "string", "format": "uuid" }));
    let mut forms = vec![
        outbound(
            "vless",
            &["uuid"],
            json!({ "uuid": uuid, "flow": { "enum": ["xtls-rprx-vision"] },
                    "tls": tls_schema(true), "transport": transport_schema() }),
        ),
        outbound(
            "vmess",
            &["uuid"],
            json!({
                "uuid": uuid,
                "security": { "enum": ["auto", "none", "zero", "aes-128-gcm", "chacha20-poly1305"] },
                "alterId": { "type": "integer", "minimum": 0, "maximum": 65535 },
                "tls": tls_schema(false),
                "transport": transport_schema()
            }),
        ),
        outbound(
            "trojan",
            &["password"],
            json!({ "password": password, "tls": tls_schema(true), "transport": transport_schema() }),
        ),
        outbound(
            "shadowsocks",
            &["method", "password"],
            json!({
                "method": { "enum": ["aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305",
                                     "2022-blake3-aes-128-gcm", "2022-blake3-aes-256-gcm",
                                     "2022-blake3-chacha20-poly1305"],
                            "description": "a 2022 cipher's password is base64 of a 16-byte (aes-128) or 32-byte key" },
                "password": password
            }),
        ),
    ];
    if quic_protocols {
        forms.push(outbound(
            "hysteria2",
            &["password"],
            json!({ "password": password, "tls": tls_schema(false),
                    "obfs": { "type": "object", "additionalProperties": false, "required": ["type", "password"],
                              "properties": { "type": { "const": "salamander" }, "password": password } } }),
        ));
        forms.push(outbound(
            "tuic",
            &["uuid", "password"],
            json!({ "uuid": uuid, "password": password, "tls": tls_schema(false),
                    "congestionControl": { "enum": ["cubic", "new_reno", "bbr"] },
                    "udpRelayMode": { "enum": ["native", "quic"] } }),
        ));
    }
    json!({ "oneOf": forms })
}

/// The ways to name the upstream servers, besides `outbound`: one share link, several
/// servers, or a subscription the agent fetches (and refreshes).
pub(super) fn server_choices(props: &mut Value, quic_protocols: bool) {
    props["link"] = secret(
        json!({ "type": "string", "format": "text", "minLength": 1, "maxLength": 4096,
        "description": "a share link (vless://, vmess://, trojan://, ss://, hysteria2://, tuic://) instead of outbound" }),
    );
    props["outbounds"] = json!({ "type": "array", "minItems": 1, "maxItems": super::MAX_OUTBOUNDS,
        "items": outbound_schema(quic_protocols),
        "description": "several servers: sing-box picks by latency (urltest), selectOutbound pins one; Xray uses the pinned one or the first" });
    props["subscription"] = secret(
        json!({ "type": "string", "format": "url", "maxLength": 2048,
        "description": "a URL returning share links (base64 or plain, one per line), fetched by the agent at install and every subscriptionRefresh seconds" }),
    );
    props["subscriptionHttp"] = json!({ "type": "boolean",
        "description": "accept a plain http:// subscription (anyone on the way could choose the servers; default false: https only)" });
    props["subscriptionHttp"] = json!({ "type": "boolean",
        "description": "accept a plain http:// subscription (anyone on the way could choose the servers; default false: https only)" });
    props["subscriptionRefresh"] = json!({ "type": "integer", "minimum": 0, "maximum": 2_592_000,
        "description": "seconds between refreshes of the subscription: 0 never, else at least 300 (default 86400)" });
}

pub(super) fn schema() -> Value {
    let mut s = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "mixedPort": port_schema(),
            "tproxyPort": port_schema(),
            "redirectPort": port_schema(),
            "logLevel": { "enum": ["trace", "debug", "info", "warn", "error", "fatal", "panic"] },
            "dnsUpstream": super::dns_upstream_schema(),
            "outbound": outbound_schema(true),
            "probeUrl": { "type": "string", "format": "url", "maxLength": 512,
                          "description": "what urltest fetches through each server to measure it (default https://www.gstatic.com/generate_204)" }
        }
    });
    server_choices(&mut s["properties"], true);
    s
}

fn tls_json(t: Option<&Value>, server: &str, required: bool) -> Option<Value> {
    let get = |k: &str| t.and_then(|t| t.get(k));
    if !get("enabled").and_then(Value::as_bool).unwrap_or(required) {
        return None;
    }
    let name = get("serverName").and_then(Value::as_str).unwrap_or(server);
    let insecure = get("insecure").and_then(Value::as_bool).unwrap_or(false);
    let mut tls = json!({ "enabled": true, "server_name": name, "insecure": insecure });
    if let Some(a) = get("alpn") {
        tls["alpn"] = a.clone();
    }
    let reality = get("reality");
    // REALITY runs on uTLS: without a fingerprint it borrows Chrome's.
    let fingerprint = get("fingerprint")
        .and_then(Value::as_str)
        .or(reality.map(|_| "chrome"));
    if let Some(f) = fingerprint {
        tls["utls"] = json!({ "enabled": true, "fingerprint": f });
    }
    if let Some(r) = reality {
        tls["reality"] = json!({ "enabled": true, "public_key": r["publicKey"],
                                 "short_id": r.get("shortId").and_then(Value::as_str).unwrap_or("") });
    }
    Some(tls)
}

/// The V2Ray transport, when it is not plain TCP.
fn transport_json(t: Option<&Value>) -> Option<Value> {
    let t = t?;
    let kind = t.get("type").unwrap_or(t).as_str()?;
    let mut out = json!({ "type": kind });
    let get = |k: &str| t.get(k).cloned();
    match kind {
        "ws" => {
            if let Some(p) = get("path") {
                out["path"] = p;
            }
            if let Some(h) = get("host") {
                out["headers"] = json!({ "Host": h });
            }
        }
        "httpupgrade" => {
            for k in ["path", "host"] {
                if let Some(v) = get(k) {
                    out[k] = v;
                }
            }
        }
        "grpc" => {
            if let Some(s) = get("serviceName") {
                out["service_name"] = s;
            }
        }
        _ => return None,
    }
    Some(out)
}

fn user_outbound(o: &Value) -> Value {
    let kind = o["type"].as_str().unwrap_or_default();
    let server = o["server"].as_str().unwrap_or_default();
    let mut out = Map::new();
    out.insert("type".into(), json!(kind));
    out.insert("tag".into(), json!("proxy"));
    out.insert("server".into(), json!(server));
    out.insert("server_port".into(), o["serverPort"].clone());
    let fields: &[(&str, &str)] = match kind {
        "vless" => &[("uuid", "uuid"), ("flow", "flow")],
        "vmess" => &[("uuid", "uuid"), ("alterId", "alter_id")],
        "shadowsocks" => &[("method", "method"), ("password", "password")],
        "tuic" => &[
            ("uuid", "uuid"),
            ("password", "password"),
            ("congestionControl", "congestion_control"),
            ("udpRelayMode", "udp_relay_mode"),
        ],
        _ => &[("password", "password"), ("obfs", "obfs")],
    };
    for (from, to) in fields {
        if let Some(v) = o.get(*from) {
            out.insert((*to).into(), v.clone());
        }
    }
    if kind == "vmess" {
        out.insert(
            "security".into(),
            json!(o.get("security").and_then(Value::as_str).unwrap_or("auto")),
        );
    }
    // trojan, hysteria2 and tuic are TLS protocols: TLS is on unless turned off explicitly.
    let tls_default = matches!(kind, "trojan" | "hysteria2" | "tuic");
    if kind != "shadowsocks"
        && let Some(tls) = tls_json(o.get("tls"), server, tls_default)
    {
        out.insert("tls".into(), tls);
    }
    if let Some(t) = transport_json(o.get("transport")) {
        out.insert("transport".into(), t);
    }
    Value::Object(out)
}

/// Several servers: each under its tag, a `urltest` (`auto`) over them, and the `proxy`
/// selector above both, on `auto` unless one is pinned.
fn servers(s: &Value, list: &[Value]) -> Vec<Value> {
    let tags = super::tags(list);
    let mut out: Vec<Value> = list
        .iter()
        .zip(&tags)
        .map(|(o, t)| {
            let mut o = user_outbound(o);
            o["tag"] = json!(t);
            o
        })
        .collect();
    let probe = s
        .get("probeUrl")
        .and_then(Value::as_str)
        .unwrap_or("https://www.gstatic.com/generate_204");
    out.push(json!({ "type": "urltest", "tag": super::AUTO, "outbounds": tags, "url": probe, "interval": "3m" }));
    let selected = s
        .get(super::SELECTED)
        .and_then(Value::as_str)
        .filter(|t| tags.iter().any(|x| x == t))
        .unwrap_or(super::AUTO);
    let mut choices = vec![json!(super::AUTO)];
    choices.extend(tags.iter().map(|t| json!(t)));
    out.push(
        json!({ "type": "selector", "tag": "proxy", "outbounds": choices, "default": selected,
                     "interrupt_exist_connections": true }),
    );
    out
}

pub(super) fn render(ctx: &Context, s: &Value) -> Result<Rendered, String> {
    let listen = ctx.listen.to_string();
    let mixed = port(s, "mixedPort", 2080);
    let mut inbounds =
        vec![json!({ "type": "mixed", "tag": "mixed-in", "listen": listen, "listen_port": mixed })];
    if let Some(p) = s.get("tproxyPort").and_then(Value::as_u64) {
        inbounds.push(json!({ "type": "tproxy", "tag": "tproxy-in", "listen": listen, "listen_port": p, "network": "tcp" }));
    }
    if let Some(p) = s.get("redirectPort").and_then(Value::as_u64) {
        inbounds.push(
            json!({ "type": "redirect", "tag": "redirect-in", "listen": listen, "listen_port": p }),
        );
    }
    super::check_reserved(ctx, s, &["mixedPort", "tproxyPort", "redirectPort"])?;
    if ctx.transparent {
        inbounds.push(json!({ "type": "redirect", "tag": "transparent-in", "listen": listen, "listen_port": TRANSPARENT_PORT }));
        inbounds.push(
            json!({ "type": "direct", "tag": "dns-in", "listen": listen, "listen_port": DNS_PORT }),
        );
    }
    // With an upstream proxy there is no `direct` outbound at all: nothing a rule, a sniffer
    // or a future default could pick sends a routed device's traffic out unproxied.
    let (outbounds, final_tag) = match (
        s.get("outbound"),
        s.get("outbounds").and_then(Value::as_array),
    ) {
        (Some(o), _) => (vec![user_outbound(o)], "proxy"),
        (None, Some(list)) => (servers(s, list), "proxy"),
        (None, None) => (vec![json!({ "type": "direct", "tag": "direct" })], "direct"),
    };
    let mut route = json!({ "final": final_tag });
    if let Some(mark) = ctx.mark {
        route["default_mark"] = json!(mark);
    }
    let several = final_tag == "proxy" && s.get("outbounds").is_some();
    let mut config = json!({
        "log": { "level": s.get("logLevel").and_then(Value::as_str).unwrap_or("info"), "timestamp": true },
        "inbounds": inbounds,
        "outbounds": outbounds,
        "route": route,
        "experimental": { "cache_file": { "enabled": true, "path": format!("{}/cache.db", ctx.data_dir.display()) } }
    });
    if let (true, Some(secret)) = (several, &ctx.control_secret) {
        // The Clash API, for the agent to read each server's latency (urltest's history).
        let ports = [mixed, port(s, "tproxyPort", 0), port(s, "redirectPort", 0)];
        if ports.contains(&super::CONTROL_PORT) {
            return Err(format!(
                "port {} is taken by the control API of an instance with several servers",
                super::CONTROL_PORT
            ));
        }
        config["experimental"]["clash_api"] = json!({ "external_controller": format!("{listen}:{}", super::CONTROL_PORT), "secret": secret });
    }
    if ctx.transparent {
        // Routed devices' DNS: answered by sing-box, over TCP through the outbound.
        let mut server =
            json!({ "type": "tcp", "tag": "upstream", "server": super::dns_upstream(s) });
        if final_tag == "proxy" {
            server["detour"] = json!("proxy");
        }
        config["dns"] = json!({ "servers": [server], "final": "upstream" });
        config["route"]["rules"] = json!([{ "inbound": ["dns-in"], "action": "hijack-dns" }]);
    }
    let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())? + "\n";
    Ok(Rendered {
        text,
        health_port: mixed,
        needs_net_admin: ctx.mark.is_some(),
    })
}
