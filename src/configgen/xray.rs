//! Xray (and V2Ray 4, whose format is the common subset used here): a `socks` inbound and a
//! `dokodemo-door` (transparent) inbound on the instance's address, the user's proxy outbound
//! (or `freedom` without one: never both), with `sockopt.mark` set to the instance's routing mark.

use serde_json::{Map, Value, json};

use super::{Context, DNS_PORT, Rendered, TRANSPARENT_PORT, port, port_schema};

pub(super) const FILE: &str = "config.json";

pub(super) fn schema() -> Value {
    let mut s = json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "socksPort": port_schema(),
            "transparentPort": port_schema(),
            "logLevel": { "enum": ["debug", "info", "warning", "error", "none"] },
            "dnsUpstream": super::dns_upstream_schema(),
            "outbound": super::singbox::outbound_schema(false)
        }
    });
    super::singbox::server_choices(&mut s["properties"], false);
    s
}

/// `streamSettings`: the transport, TLS or REALITY, and the routing mark. `o` is the user's
/// outbound (None: `freedom`).
fn stream(mark: Option<u32>, o: Option<&Value>) -> Value {
    let t = o.and_then(|o| o.get("transport"));
    let network = t
        .and_then(|t| t.get("type").unwrap_or(t).as_str())
        .unwrap_or("tcp");
    let mut s = json!({ "network": network });
    let field = |k: &str| t.and_then(|t| t.get(k)).cloned();
    match network {
        "ws" => {
            let mut ws = Map::new();
            if let Some(p) = field("path") {
                ws.insert("path".into(), p);
            }
            if let Some(h) = field("host") {
                ws.insert("headers".into(), json!({ "Host": h }));
            }
            if !ws.is_empty() {
                s["wsSettings"] = Value::Object(ws);
            }
        }
        "httpupgrade" => {
            s["httpupgradeSettings"] = json!({ "path": field("path").unwrap_or(json!("/")) });
            if let Some(h) = field("host") {
                s["httpupgradeSettings"]["host"] = h;
            }
        }
        "grpc" => {
            if let Some(n) = field("serviceName") {
                s["grpcSettings"] = json!({ "serviceName": n });
            }
        }
        _ => {}
    }
    if let Some(o) = o {
        let kind = o["type"].as_str().unwrap_or_default();
        let tls = o.get("tls");
        let get = |k: &str| tls.and_then(|t| t.get(k));
        let on = get("enabled")
            .and_then(Value::as_bool)
            .unwrap_or(kind == "trojan");
        if on && kind != "shadowsocks" {
            let name = get("serverName").unwrap_or(&o["server"]).clone();
            let fingerprint = get("fingerprint").cloned();
            if let Some(r) = get("reality") {
                let mut rs = json!({ "serverName": name, "publicKey": r["publicKey"],
                    "fingerprint": fingerprint.unwrap_or(json!("chrome")),
                    "shortId": r.get("shortId").cloned().unwrap_or(json!("")) });
                if let Some(x) = r.get("spiderX") {
                    rs["spiderX"] = x.clone();
                }
                s["security"] = json!("reality");
                s["realitySettings"] = rs;
            } else {
                let mut ts = json!({ "serverName": name });
                if get("insecure") == Some(&Value::Bool(true)) {
                    ts["allowInsecure"] = json!(true);
                }
                if let Some(a) = get("alpn") {
                    ts["alpn"] = a.clone();
                }
                if let Some(f) = fingerprint {
                    ts["fingerprint"] = f;
                }
                s["security"] = json!("tls");
                s["tlsSettings"] = ts;
            }
        }
    }
    if let Some(m) = mark {
        s["sockopt"] = json!({ "mark": m });
    }
    s
}

fn user_outbound(o: &Value, mark: Option<u32>) -> Value {
    let kind = o["type"].as_str().unwrap_or_default();
    let server = &o["server"];
    let port = &o["serverPort"];
    let settings = match kind {
        "vless" => {
            let mut user = json!({ "id": o["uuid"], "encryption": "none" });
            if let Some(f) = o.get("flow") {
                user["flow"] = f.clone();
            }
            json!({ "vnext": [{ "address": server, "port": port, "users": [user] }] })
        }
        "vmess" => {
            let mut user = json!({ "id": o["uuid"], "security": o.get("security").and_then(Value::as_str).unwrap_or("auto") });
            if let Some(a) = o.get("alterId") {
                user["alterId"] = a.clone();
            }
            json!({ "vnext": [{ "address": server, "port": port, "users": [user] }] })
        }
        "trojan" => {
            json!({ "servers": [{ "address": server, "port": port, "password": o["password"] }] })
        }
        _ => {
            json!({ "servers": [{ "address": server, "port": port, "method": o["method"], "password": o["password"] }] })
        }
    };
    json!({ "tag": "proxy", "protocol": kind, "settings": settings, "streamSettings": stream(mark, Some(o)) })
}

pub(super) fn render(ctx: &Context, s: &Value) -> Result<Rendered, String> {
    let listen = ctx.listen.to_string();
    let socks = port(s, "socksPort", 10808);
    // The first outbound is the default route; with an upstream proxy there is no `freedom`
    // outbound at all, so nothing can leave directly.
    // Several servers: the one `selectOutbound` pinned, else the first (no automatic choice:
    // Xray's observatory and balancers are beyond V2Ray 4, the checker here).
    let chosen = s
        .get("outbounds")
        .and_then(Value::as_array)
        .and_then(|list| {
            let tags = super::tags(list);
            let pinned = s.get(super::SELECTED).and_then(Value::as_str);
            let i = tags
                .iter()
                .position(|t| Some(t.as_str()) == pinned)
                .unwrap_or(0);
            list.get(i)
        });
    let outbounds = match s.get("outbound").or(chosen) {
        Some(o) => vec![user_outbound(o, ctx.mark)],
        None => vec![
            json!({ "tag": "direct", "protocol": "freedom", "streamSettings": stream(ctx.mark, None) }),
        ],
    };
    super::check_reserved(ctx, s, &["socksPort", "transparentPort"])?;
    let mut config = json!({
        "log": { "loglevel": s.get("logLevel").and_then(Value::as_str).unwrap_or("warning") },
        "inbounds": [
            { "tag": "socks-in", "protocol": "socks", "listen": listen, "port": socks,
              "settings": { "auth": "noauth", "udp": true } },
            { "tag": "transparent-in", "protocol": "dokodemo-door", "listen": listen,
              "port": port(s, "transparentPort", 12345),
              "settings": { "network": "tcp,udp", "followRedirect": true } }
        ],
        "outbounds": outbounds
    });
    if ctx.transparent
        && let Some(inbounds) = config["inbounds"].as_array_mut()
    {
        // Device routing: routed devices' TCP (redirected in the namespace) and DNS, both
        // through the first outbound.
        inbounds.push(
            json!({ "tag": "transparent-tcp", "protocol": "dokodemo-door", "listen": listen,
            "port": TRANSPARENT_PORT, "settings": { "network": "tcp", "followRedirect": true } }),
        );
        inbounds.push(json!({ "tag": "dns-in", "protocol": "dokodemo-door", "listen": listen,
            "port": DNS_PORT, "settings": { "address": super::dns_upstream(s), "port": 53, "network": "tcp,udp" } }));
    }
    let text = serde_json::to_string_pretty(&config).map_err(|e| e.to_string())? + "\n";
    Ok(Rendered {
        text,
        health_port: socks,
        needs_net_admin: ctx.mark.is_some(),
    })
}
