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
        "serverPort": port_schema()
    })
}

fn tls_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "enabled": { "type": "boolean" },
            "serverName": { "type": "string", "format": "hostname" },
            "insecure": { "type": "boolean" }
        }
    })
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

/// The allowed outbound forms. Xray adds its transports (`tcp`, `ws`, `grpc`) to every form.
pub(super) fn outbound_schema(with_hysteria: bool, transports: Option<&[&str]>) -> Value {
    let password = json!({ "type": "string", "format": "text", "minLength": 1, "maxLength": 128 });
    let uuid = json!({ "type": "string", "format": "uuid" });
    let mut forms = vec![
        outbound(
            "vless",
            &["uuid"],
            json!({ "uuid": uuid, "tls": tls_schema() }),
        ),
        outbound(
            "vmess",
            &["uuid"],
            json!({
                "uuid": uuid,
                "security": { "enum": ["auto", "none", "zero", "aes-128-gcm", "chacha20-poly1305"] },
                "tls": tls_schema()
            }),
        ),
        outbound(
            "trojan",
            &["password"],
            json!({ "password": password, "tls": tls_schema() }),
        ),
        outbound(
            "shadowsocks",
            &["method", "password"],
            json!({
                "method": { "enum": ["aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305"] },
                "password": password
            }),
        ),
    ];
    if with_hysteria {
        forms.push(outbound(
            "hysteria2",
            &["password"],
            json!({ "password": password, "tls": tls_schema() }),
        ));
    }
    if let Some(t) = transports {
        for f in &mut forms {
            if let Some(p) = f.get_mut("properties").and_then(Value::as_object_mut) {
                p.insert("transport".into(), json!({ "enum": t }));
            }
        }
    }
    json!({ "oneOf": forms })
}

pub(super) fn schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "mixedPort": port_schema(),
            "tproxyPort": port_schema(),
            "redirectPort": port_schema(),
            "logLevel": { "enum": ["trace", "debug", "info", "warn", "error", "fatal", "panic"] },
            "dnsUpstream": super::dns_upstream_schema(),
            "outbound": outbound_schema(true, None)
        }
    })
}

fn tls_json(t: Option<&Value>, server: &str, required: bool) -> Option<Value> {
    let enabled = t
        .and_then(|t| t.get("enabled"))
        .and_then(Value::as_bool)
        .unwrap_or(required);
    if !enabled {
        return None;
    }
    let name = t
        .and_then(|t| t.get("serverName"))
        .and_then(Value::as_str)
        .unwrap_or(server);
    let insecure = t
        .and_then(|t| t.get("insecure"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Some(json!({ "enabled": true, "server_name": name, "insecure": insecure }))
}

fn user_outbound(o: &Value) -> Value {
    let kind = o["type"].as_str().unwrap_or_default();
    let server = o["server"].as_str().unwrap_or_default();
    let mut out = Map::new();
    out.insert("type".into(), json!(kind));
    out.insert("tag".into(), json!("proxy"));
    out.insert("server".into(), json!(server));
    out.insert("server_port".into(), o["serverPort"].clone());
    match kind {
        "vless" => {
            out.insert("uuid".into(), o["uuid"].clone());
        }
        "vmess" => {
            out.insert("uuid".into(), o["uuid"].clone());
            out.insert(
                "security".into(),
                json!(o.get("security").and_then(Value::as_str).unwrap_or("auto")),
            );
        }
        "shadowsocks" => {
            out.insert("method".into(), o["method"].clone());
            out.insert("password".into(), o["password"].clone());
        }
        _ => {
            out.insert("password".into(), o["password"].clone());
        }
    }
    // trojan and hysteria2 are TLS protocols: TLS is on unless turned off explicitly.
    let tls_default = matches!(kind, "trojan" | "hysteria2");
    if kind != "shadowsocks"
        && let Some(tls) = tls_json(o.get("tls"), server, tls_default)
    {
        out.insert("tls".into(), tls);
    }
    Value::Object(out)
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
    let (outbounds, final_tag) = match s.get("outbound") {
        Some(o) => (vec![user_outbound(o)], "proxy"),
        None => (vec![json!({ "type": "direct", "tag": "direct" })], "direct"),
    };
    let mut route = json!({ "final": final_tag });
    if let Some(mark) = ctx.mark {
        route["default_mark"] = json!(mark);
    }
    let mut config = json!({
        "log": { "level": s.get("logLevel").and_then(Value::as_str).unwrap_or("info"), "timestamp": true },
        "inbounds": inbounds,
        "outbounds": outbounds,
        "route": route,
        "experimental": { "cache_file": { "enabled": true, "path": format!("{}/cache.db", ctx.data_dir.display()) } }
    });
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
