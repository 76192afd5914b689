//! Xray (and V2Ray 4, whose format is the common subset used here): a `socks` inbound and a
//! `dokodemo-door` (transparent) inbound on the instance's address, the user's proxy outbound
//! (or `freedom` without one: never both), with `sockopt.mark` set to the instance's routing mark.

use serde_json::{Value, json};

use super::{Context, DNS_PORT, Rendered, TRANSPARENT_PORT, port, port_schema};

pub(super) const FILE: &str = "config.json";

pub(super) fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "socksPort": port_schema(),
            "transparentPort": port_schema(),
            "logLevel": { "enum": ["debug", "info", "warning", "error", "none"] },
            "dnsUpstream": super::dns_upstream_schema(),
            "outbound": super::singbox::outbound_schema(false, Some(&["tcp", "ws", "grpc"]))
        }
    })
}

fn stream(mark: Option<u32>, tls: bool, server: &str, network: &str) -> Value {
    let mut s = json!({ "network": network });
    if tls {
        s["security"] = json!("tls");
        s["tlsSettings"] = json!({ "serverName": server });
    }
    if let Some(m) = mark {
        s["sockopt"] = json!({ "mark": m });
    }
    s
}

fn user_outbound(o: &Value, mark: Option<u32>) -> Value {
    let kind = o["type"].as_str().unwrap_or_default();
    let server = o["server"].as_str().unwrap_or_default();
    let port = &o["serverPort"];
    let tls_on = |default: bool| {
        o.pointer("/tls/enabled")
            .and_then(Value::as_bool)
            .unwrap_or(default)
    };
    let (settings, tls) = match kind {
        "vless" => (
            json!({ "vnext": [{ "address": server, "port": port, "users": [{ "id": o["uuid"], "encryption": "none" }] }] }),
            tls_on(false),
        ),
        "vmess" => (
            json!({ "vnext": [{ "address": server, "port": port, "users": [{ "id": o["uuid"], "security": o.get("security").and_then(Value::as_str).unwrap_or("auto") }] }] }),
            tls_on(false),
        ),
        "trojan" => (
            json!({ "servers": [{ "address": server, "port": port, "password": o["password"] }] }),
            tls_on(true),
        ),
        _ => (
            json!({ "servers": [{ "address": server, "port": port, "method": o["method"], "password": o["password"] }] }),
            false,
        ),
    };
    let network = o.get("transport").and_then(Value::as_str).unwrap_or("tcp");
    json!({ "tag": "proxy", "protocol": kind, "settings": settings, "streamSettings": stream(mark, tls, server, network) })
}

pub(super) fn render(ctx: &Context, s: &Value) -> Result<Rendered, String> {
    let listen = ctx.listen.to_string();
    let socks = port(s, "socksPort", 10808);
    // The first outbound is the default route; with an upstream proxy there is no `freedom`
    // outbound at all, so nothing can leave directly.
    let outbounds = match s.get("outbound") {
        Some(o) => vec![user_outbound(o, ctx.mark)],
        None => vec![
            json!({ "tag": "direct", "protocol": "freedom", "streamSettings": stream(ctx.mark, false, "", "tcp") }),
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
