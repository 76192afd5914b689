//! Share links parsed into the settings' `outbound` object (the form the schema describes),
//! written from the formats' own documents:
//!
//! - `vless://UUID@HOST:PORT?type=&security=&sni=&fp=&pbk=&sid=&spx=&flow=&path=&host=&serviceName=#NAME`
//!   (XTLS/Xray-core discussion #716, the VLESS/VMessAEAD share-link proposal; `trojan://PASSWORD@…`
//!   takes the same parameters, with `security=tls` by default);
//! - `vmess://BASE64(JSON)` (v2rayN: `add port id aid scy net type host path tls sni alpn fp ps`);
//! - `ss://` SIP002 (`BASE64URL(method:password)@HOST:PORT` or, as SIP022 requires for the
//!   2022 ciphers, percent-encoded `method:password@…`) and the older `ss://BASE64(method:password@HOST:PORT)`;
//! - `hysteria2://AUTH@HOST[:PORT]/?obfs=salamander&obfs-password=&sni=&insecure=` (also
//!   `hy2://`; Hysteria 2's URI scheme document, port 443 by default);
//! - `tuic://UUID:PASSWORD@HOST:PORT?congestion_control=&udp_relay_mode=&alpn=&sni=&allow_insecure=`.
//!
//! Whatever the generators cannot honour exactly (another transport, header obfuscation, a
//! plugin, port hopping, certificate pins, VLESS encryption) is refused with the parameter
//! named, so a link never becomes a config that quietly does something else. Unknown extra
//! parameters are ignored. Error messages never repeat the link or its secrets.

use std::net::Ipv6Addr;

use serde_json::{Map, Value, json};

type Res<T> = Result<T, String>;

/// The outbound a link describes.
pub(crate) fn parse(link: &str) -> Res<Value> {
    let link = link.trim();
    let (scheme, rest) = link
        .split_once("://")
        .ok_or("not a share link (no scheme://)")?;
    let scheme = scheme.to_ascii_lowercase();
    let (rest, name) = match rest.split_once('#') {
        Some((r, n)) => (r, Some(decode(n, "#name")?)),
        None => (rest, None),
    };
    let mut out = match scheme.as_str() {
        "vmess" => vmess(rest)?,
        "ss" => shadowsocks(rest)?,
        "vless" | "trojan" | "hysteria2" | "hy2" | "tuic" => {
            let u = Url::parse(rest, if scheme.starts_with('h') { 443 } else { 0 })?;
            match scheme.as_str() {
                "vless" => vless(&u)?,
                "trojan" => trojan(&u)?,
                "tuic" => tuic(&u)?,
                _ => hysteria2(&u)?,
            }
        }
        other => {
            return Err(format!(
                "{}:// links are not supported (vless, vmess, trojan, ss, hysteria2, hy2, tuic)",
                shown(other)
            ));
        }
    };
    // The name is only a label: what the "text" format refuses is dropped, not an error.
    let inner = out
        .remove("name")
        .and_then(|n| n.as_str().map(str::to_owned));
    let name: String = name
        .or(inner)
        .unwrap_or_default()
        .chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
        .take(64)
        .collect();
    if !name.trim().is_empty() {
        out.insert("name".into(), json!(name.trim()));
    }
    Ok(Value::Object(out))
}

/// A value as an error message may quote it: a short word, else only that there was one (a
/// link's values may be secrets, or junk from a third party's list).
fn shown(v: &str) -> &str {
    let word = v.len() <= 32
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'+'));
    if word { v } else { "(a value)" }
}

/// `%XX` decoding; the result must be UTF-8. `what` names the part in errors.
fn decode(s: &str, what: &str) -> Res<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{what}: bad percent-encoding"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{what}: not UTF-8"))
}

struct Url {
    user: Option<String>,
    host: String,
    port: u16,
    query: Vec<(String, String)>,
}

impl Url {
    /// `[USER@]HOST[:PORT][/][?QUERY]` (the scheme and `#name` already taken off); `default_port`
    /// 0 means the port is required.
    fn parse(rest: &str, default_port: u16) -> Res<Url> {
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if !matches!(path, "" | "/") {
            return Err("unexpected path after the host".into());
        }
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(decode(u, "the part before @")?), h),
            None => (None, authority),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or("host: unclosed [")?;
            h.parse::<Ipv6Addr>()
                .map_err(|_| "host: not an IPv6 address inside [ ]")?;
            if !after.is_empty() && !after.starts_with(':') {
                return Err("host: junk after ]".into());
            }
            (h, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let port = match port {
            Some(p) if p.contains([',', '-']) => {
                return Err("port hopping (several ports) is not supported".to_owned());
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| "the port is not a port number".to_owned())?,
            None if default_port > 0 => default_port,
            None => return Err("no port after the host".into()),
        };
        let mut pairs: Vec<(String, String)> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = decode(k, "a query parameter")?;
            let v = decode(v, shown(&k))?;
            if pairs.iter().any(|(seen, _)| *seen == k) {
                return Err(format!("{} is given twice", shown(&k)));
            }
            pairs.push((k, v));
        }
        Ok(Url {
            user,
            host: host.to_owned(),
            port,
            query: pairs,
        })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, keys: &[&str]) -> bool {
        keys.iter()
            .any(|k| matches!(self.get(k), Some("1" | "true")))
    }

    fn user(&self, what: &str) -> Res<&str> {
        self.user
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| format!("no {what} before @"))
    }

    fn base(&self, kind: &str) -> Map<String, Value> {
        server(kind, &self.host, self.port)
    }
}

fn server(kind: &str, host: &str, port: u16) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("type".into(), json!(kind));
    m.insert("server".into(), json!(host));
    m.insert("serverPort".into(), json!(port));
    m
}

/// The parameters that describe a stream, shared by the VLESS/Trojan query and the v2rayN
/// JSON (which names them differently).
#[derive(Default)]
struct Stream<'a> {
    network: &'a str,
    header: Option<&'a str>,
    security: &'a str,
    path: Option<&'a str>,
    host: Option<&'a str>,
    service: Option<&'a str>,
    grpc_mode: Option<&'a str>,
    sni: Option<&'a str>,
    alpn: Option<&'a str>,
    fingerprint: Option<&'a str>,
    insecure: bool,
    public_key: Option<&'a str>,
    short_id: Option<&'a str>,
    spider_x: Option<&'a str>,
}

impl Stream<'_> {
    fn from_query<'a>(u: &'a Url, default_security: &'static str) -> Stream<'a> {
        Stream {
            network: u.get("type").unwrap_or("tcp"),
            header: u.get("headerType"),
            security: u.get("security").unwrap_or(default_security),
            path: u.get("path"),
            host: u.get("host"),
            service: u.get("serviceName"),
            grpc_mode: u.get("mode"),
            sni: u.get("sni").or_else(|| u.get("peer")),
            alpn: u.get("alpn"),
            fingerprint: u.get("fp"),
            insecure: u.flag(&["allowInsecure", "insecure"]),
            public_key: u.get("pbk"),
            short_id: u.get("sid"),
            spider_x: u.get("spx"),
        }
    }

    /// Adds `transport` and `tls` to `out`.
    fn apply(&self, out: &mut Map<String, Value>) -> Res<()> {
        let mut t = Map::new();
        match self.network {
            "tcp" | "raw" => {
                if let Some(h) = self.header.filter(|h| *h != "none") {
                    return Err(format!("headerType={} is not supported (none)", shown(h)));
                }
            }
            "ws" | "httpupgrade" => {
                t.insert("type".into(), json!(self.network));
                if let Some(p) = self.path {
                    t.insert("path".into(), json!(p));
                }
                if let Some(h) = self.host {
                    t.insert("host".into(), json!(h));
                }
            }
            "grpc" => {
                if let Some(m) = self.grpc_mode.filter(|m| *m != "gun") {
                    return Err(format!("gRPC mode={} is not supported (gun)", shown(m)));
                }
                t.insert("type".into(), json!("grpc"));
                if let Some(s) = self.service {
                    t.insert("serviceName".into(), json!(s));
                }
            }
            other => {
                return Err(format!(
                    "transport {} is not supported (tcp, ws, grpc, httpupgrade)",
                    shown(other)
                ));
            }
        }
        if !t.is_empty() {
            out.insert("transport".into(), Value::Object(t));
        }
        match self.security {
            "none" | "" => {
                out.insert("tls".into(), json!({ "enabled": false }));
            }
            "tls" | "reality" => {
                let tls = tls(self.sni, self.alpn, self.fingerprint, self.insecure);
                out.insert("tls".into(), tls);
            }
            other => {
                return Err(format!(
                    "security={} is not supported (none, tls, reality)",
                    shown(other)
                ));
            }
        }
        if self.security == "reality" {
            if self.sni.is_none() {
                return Err("security=reality needs sni (the server name it borrows)".into());
            }
            let mut r = Map::new();
            r.insert(
                "publicKey".into(),
                json!(self.public_key.ok_or("security=reality needs pbk")?),
            );
            if let Some(s) = self.short_id {
                r.insert("shortId".into(), json!(s));
            }
            if let Some(s) = self.spider_x {
                r.insert("spiderX".into(), json!(s));
            }
            out["tls"]["reality"] = Value::Object(r);
        }
        Ok(())
    }
}

fn tls(sni: Option<&str>, alpn: Option<&str>, fp: Option<&str>, insecure: bool) -> Value {
    let mut tls = json!({ "enabled": true });
    if let Some(s) = sni {
        tls["serverName"] = json!(s);
    }
    if insecure {
        tls["insecure"] = json!(true);
    }
    if let Some(a) = alpn {
        tls["alpn"] = a.split(',').map(str::trim).collect();
    }
    if let Some(f) = fp {
        tls["fingerprint"] = json!(f);
    }
    tls
}

fn vless(u: &Url) -> Res<Map<String, Value>> {
    let mut out = u.base("vless");
    out.insert("uuid".into(), json!(u.user("UUID")?));
    if let Some(e) = u.get("encryption").filter(|e| *e != "none") {
        return Err(format!("encryption={} is not supported (none)", shown(e)));
    }
    let stream = Stream::from_query(u, "none");
    stream.apply(&mut out)?;
    if let Some(flow) = u.get("flow") {
        out.insert("flow".into(), json!(flow));
    }
    Ok(out)
}

fn trojan(u: &Url) -> Res<Map<String, Value>> {
    let mut out = u.base("trojan");
    out.insert("password".into(), json!(u.user("password")?));
    Stream::from_query(u, "tls").apply(&mut out)?;
    Ok(out)
}

fn hysteria2(u: &Url) -> Res<Map<String, Value>> {
    let mut out = u.base("hysteria2");
    out.insert("password".into(), json!(u.user("auth (password)")?));
    if u.get("pinSHA256").is_some() {
        return Err("pinSHA256 (certificate pinning) is not supported".into());
    }
    match u.get("obfs") {
        None => {}
        Some("salamander") => {
            let pw = u
                .get("obfs-password")
                .ok_or("obfs=salamander needs obfs-password")?;
            out.insert(
                "obfs".into(),
                json!({ "type": "salamander", "password": pw }),
            );
        }
        Some(o) => return Err(format!("obfs={} is not supported (salamander)", shown(o))),
    }
    let insecure = u.flag(&["insecure"]);
    out.insert("tls".into(), tls(u.get("sni"), None, None, insecure));
    Ok(out)
}

fn tuic(u: &Url) -> Res<Map<String, Value>> {
    let mut out = u.base("tuic");
    let (uuid, password) = u
        .user("UUID:password")?
        .split_once(':')
        .ok_or("no :password after the UUID")?;
    out.insert("uuid".into(), json!(uuid));
    out.insert("password".into(), json!(password));
    if let Some(c) = u.get("congestion_control") {
        out.insert("congestionControl".into(), json!(c));
    }
    if let Some(m) = u.get("udp_relay_mode") {
        out.insert("udpRelayMode".into(), json!(m));
    }
    let insecure = u.flag(&["allow_insecure", "insecure", "allowInsecure"]);
    out.insert(
        "tls".into(),
        tls(u.get("sni"), u.get("alpn"), None, insecure),
    );
    Ok(out)
}

/// v2rayN's `vmess://` JSON: numbers may come as strings.
fn vmess(rest: &str) -> Res<Map<String, Value>> {
    let raw = crate::util::base64_decode_lenient(rest).ok_or("vmess:// is not base64")?;
    let j: Value = serde_json::from_slice(&raw).map_err(|_| "vmess:// is not base64 of JSON")?;
    let text = |k: &str| -> Option<&str> {
        j.get(k)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let number = |k: &str| -> Res<Option<u64>> {
        match j.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(()),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| ()),
            Some(_) => Err(()),
        }
        .map_err(|()| format!("vmess {k} is not a number"))
    };
    let host = text("add").ok_or("vmess add (the server) is missing")?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = number("port")?
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or("vmess port is missing or not a port")?;
    let mut out = server("vmess", host, port);
    out.insert(
        "uuid".into(),
        json!(text("id").ok_or("vmess id (the UUID) is missing")?),
    );
    if let Some(a) = number("aid")?.filter(|a| *a > 0) {
        out.insert("alterId".into(), json!(a));
    }
    if let Some(s) = text("scy") {
        out.insert("security".into(), json!(s));
    }
    let network = text("net").unwrap_or("tcp");
    let kind = text("type");
    let stream = Stream {
        network,
        header: kind.filter(|_| network == "tcp"),
        grpc_mode: kind.filter(|_| network == "grpc"),
        security: text("tls").unwrap_or("none"),
        path: text("path").filter(|_| network != "grpc"),
        service: text("path").filter(|_| network == "grpc"),
        host: text("host"),
        sni: text("sni"),
        alpn: text("alpn"),
        fingerprint: text("fp"),
        insecure: matches!(text("allowInsecure"), Some("1" | "true")),
        ..Stream::default()
    };
    if stream.security == "reality" {
        return Err("vmess with reality is not supported".into());
    }
    stream.apply(&mut out)?;
    if let Some(n) = text("ps") {
        out.insert("name".into(), json!(n));
    }
    Ok(out)
}

/// SIP002 (`USERINFO@HOST:PORT[/][?plugin=]`) or the older all-base64 form.
fn shadowsocks(rest: &str) -> Res<Map<String, Value>> {
    // Standard base64 (the older form) may hold '/': only '?' ends it.
    let authority_end = rest.find('?').unwrap_or(rest.len());
    let (user, u) = if rest[..authority_end].contains('@') {
        let u = Url::parse(rest, 0)?;
        let info = u.user("method:password")?.to_owned();
        // Base64 userinfo has no ':'; SIP022's plain form (2022 ciphers) does.
        let info = if info.contains(':') {
            info
        } else {
            crate::util::base64_decode_lenient(&info)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or("the part before @ is neither method:password nor its base64")?
        };
        (info, u)
    } else {
        let raw = crate::util::base64_decode_lenient(rest[..authority_end].trim_end_matches('/'))
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or("ss:// is neither SIP002 nor base64 of method:password@host:port")?;
        let (info, hostport) = raw
            .rsplit_once('@')
            .ok_or("ss:// base64 has no @host:port")?;
        let u = Url::parse(&format!("{hostport}{}", &rest[authority_end..]), 0)?;
        (info.to_owned(), u)
    };
    if let Some(p) = u.get("plugin") {
        let name = p.split(';').next().unwrap_or_default();
        return Err(format!("plugin {} is not supported", shown(name)));
    }
    let (method, password) = user.split_once(':').ok_or("no method:password before @")?;
    let mut out = u.base("shadowsocks");
    out.insert("method".into(), json!(method.to_ascii_lowercase()));
    out.insert("password".into(), json!(password));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "123e4567-e89b-12d3-a456-426614174000";
    const PBK: &str = "jNXHt1yRo0vDuchQlIP6Z0ZvjT3KtzVI-T4E7RoLJS0";

    fn b64(s: &str) -> String {
        crate::util::base64_encode(s.as_bytes())
    }

    #[test]
    fn valid_links_parse_to_the_outbound_they_describe() {
        let vmess = format!(
            "vmess://{}",
            b64(&format!(
                r#"{{"v":"2","ps":"vm ws","add":"2001:db8::7","port":"8443","id":"{UUID}","aid":"0","scy":"auto","net":"ws","type":"none","host":"cdn.example.org","path":"/v","tls":"tls","sni":"cdn.example.org","alpn":"h2,http/1.1"}}"#
            ))
        );
        let ss_b64 = crate::util::base64_encode(b"chacha20-ietf-poly1305:pa:ss")
            .trim_end_matches('=')
            .replace('+', "-")
            .replace('/', "_");
        let cases = [
            (
                format!(
                    "vless://{UUID}@[2001:db8::1]:443?encryption=none&security=reality&sni=www.example.com&fp=chrome&pbk={PBK}&sid=0123abcd&spx=%2F&type=tcp&flow=xtls-rprx-vision#My%20REALITY"
                ),
                json!({ "type": "vless", "server": "2001:db8::1", "serverPort": 443, "uuid": UUID,
                        "flow": "xtls-rprx-vision", "name": "My REALITY",
                        "tls": { "enabled": true, "serverName": "www.example.com", "fingerprint": "chrome",
                                 "reality": { "publicKey": PBK, "shortId": "0123abcd", "spiderX": "/" } } }),
            ),
            (
                format!(
                    "VLESS://{UUID}@proxy.example.org:8443?type=grpc&serviceName=svc&security=tls&alpn=h2&allowInsecure=1"
                ),
                json!({ "type": "vless", "server": "proxy.example.org", "serverPort": 8443, "uuid": UUID,
                        "transport": { "type": "grpc", "serviceName": "svc" },
                        "tls": { "enabled": true, "insecure": true, "alpn": ["h2"] } }),
            ),
            (
                format!("vless://{UUID}@192.0.2.1:80?type=httpupgrade&path=%2Fup%3Fed%3D2048&host=h.example.org"),
                json!({ "type": "vless", "server": "192.0.2.1", "serverPort": 80, "uuid": UUID,
                        "transport": { "type": "httpupgrade", "path": "/up?ed=2048", "host": "h.example.org" },
                        "tls": { "enabled": false } }),
            ),
            (
                "trojan://p%40ss%3Aword@proxy.example.org:443?type=ws&path=%2Ft&sni=cdn.example.org#%F0%9F%87%A9%F0%9F%87%AA%20DE".to_owned(),
                json!({ "type": "trojan", "server": "proxy.example.org", "serverPort": 443, "password": "p@ss:word",
                        "transport": { "type": "ws", "path": "/t" }, "name": "🇩🇪 DE",
                        "tls": { "enabled": true, "serverName": "cdn.example.org" } }),
            ),
            (
                vmess,
                json!({ "type": "vmess", "server": "2001:db8::7", "serverPort": 8443, "uuid": UUID, "security": "auto",
                        "transport": { "type": "ws", "path": "/v", "host": "cdn.example.org" }, "name": "vm ws",
                        "tls": { "enabled": true, "serverName": "cdn.example.org", "alpn": ["h2", "http/1.1"] } }),
            ),
            (
                format!("ss://{ss_b64}@192.0.2.3:8388/?#classic"),
                json!({ "type": "shadowsocks", "server": "192.0.2.3", "serverPort": 8388,
                        "method": "chacha20-ietf-poly1305", "password": "pa:ss", "name": "classic" }),
            ),
            (
                "ss://2022-blake3-aes-256-gcm:YctPZ6U7xPPcU%2Bgp3u%2B0tx%2FtRizJN9K8y%2BuKlW2qjlI%3D@[2001:db8::3]:8388#ss2022".to_owned(),
                json!({ "type": "shadowsocks", "server": "2001:db8::3", "serverPort": 8388,
                        "method": "2022-blake3-aes-256-gcm", "password": "YctPZ6U7xPPcU+gp3u+0tx/tRizJN9K8y+uKlW2qjlI=", "name": "ss2022" }),
            ),
            (
                // Standard base64 with a '/' in it (the older form).
                format!("ss://{}#slash", b64("aes-256-gcm:???@192.0.2.4:8389")),
                json!({ "type": "shadowsocks", "server": "192.0.2.4", "serverPort": 8389,
                        "method": "aes-256-gcm", "password": "???", "name": "slash" }),
            ),
            (
                format!("ss://{}#old", b64("aes-256-gcm:pw@192.0.2.4:8389")),
                json!({ "type": "shadowsocks", "server": "192.0.2.4", "serverPort": 8389,
                        "method": "aes-256-gcm", "password": "pw", "name": "old" }),
            ),
            (
                "hysteria2://letmein@proxy.example.org/?obfs=salamander&obfs-password=gawrgura&sni=real.example.org&insecure=1".to_owned(),
                json!({ "type": "hysteria2", "server": "proxy.example.org", "serverPort": 443, "password": "letmein",
                        "obfs": { "type": "salamander", "password": "gawrgura" },
                        "tls": { "enabled": true, "serverName": "real.example.org", "insecure": true } }),
            ),
            (
                "hy2://user:pass@192.0.2.5:8443".to_owned(),
                json!({ "type": "hysteria2", "server": "192.0.2.5", "serverPort": 8443, "password": "user:pass",
                        "tls": { "enabled": true } }),
            ),
            (
                format!("tuic://{UUID}:secret@192.0.2.6:443?congestion_control=bbr&udp_relay_mode=native&alpn=h3&sni=t.example.org"),
                json!({ "type": "tuic", "server": "192.0.2.6", "serverPort": 443, "uuid": UUID, "password": "secret",
                        "congestionControl": "bbr", "udpRelayMode": "native",
                        "tls": { "enabled": true, "serverName": "t.example.org", "alpn": ["h3"] } }),
            ),
        ];
        for (link, want) in cases {
            assert_eq!(parse(&link).unwrap(), want, "{link}");
        }
    }

    #[test]
    fn invalid_links_name_the_part_and_never_the_secret() {
        for (link, words) in [
            ("https://example.org/", "https:// links are not supported"),
            ("vless:/x", "no scheme://"),
            ("vless://192.0.2.1:443", "no UUID before @"),
            ("vless://SECRETID@192.0.2.1", "no port after the host"),
            ("vless://SECRETID@192.0.2.1:0", "is not a port number"),
            ("vless://SECRETID@192.0.2.1:http", "is not a port number"),
            ("vless://SECRETID@[2001:db8::1:443", "unclosed ["),
            ("vless://SECRETID@[nope]:443", "not an IPv6 address"),
            ("vless://SECRETID@192.0.2.1:443/path", "unexpected path"),
            (
                "vless://SECRETID@192.0.2.1:443?type=kcp",
                "transport kcp is not supported",
            ),
            (
                "vless://SECRETID@192.0.2.1:443?type=tcp&headerType=http",
                "headerType=http",
            ),
            (
                "vless://SECRETID@192.0.2.1:443?security=xtls",
                "security=xtls",
            ),
            (
                "vless://SECRETID@192.0.2.1:443?security=reality&pbk=k",
                "needs sni",
            ),
            (
                "vless://SECRETID@192.0.2.1:443?security=reality&sni=a.example",
                "needs pbk",
            ),
            (
                "vless://SECRETID@192.0.2.1:443?encryption=mlkem768x25519plus",
                "encryption=",
            ),
            (
                "vless://SECRETID@192.0.2.1:443?type=grpc&mode=multi",
                "mode=multi",
            ),
            (
                "vless://SECRETID@192.0.2.1:443?sni=a&sni=b",
                "sni is given twice",
            ),
            ("vless://SECRET%zzID@192.0.2.1:443", "bad percent-encoding"),
            (
                "hysteria2://SECRETPW@192.0.2.1:443,5000-6000",
                "port hopping",
            ),
            (
                "hysteria2://SECRETPW@192.0.2.1?obfs=salamander",
                "needs obfs-password",
            ),
            ("hysteria2://SECRETPW@192.0.2.1?obfs=gfw", "obfs=gfw"),
            ("hysteria2://SECRETPW@192.0.2.1?pinSHA256=ab", "pinSHA256"),
            ("tuic://SECRETID@192.0.2.1:443", "no :password"),
            (
                "ss://SECRET%21%21@192.0.2.1:8388",
                "neither method:password nor its base64",
            ),
            ("ss://!!!", "neither SIP002 nor base64"),
            (
                "ss://YWVzLTI1Ni1nY206U0VDUkVU@192.0.2.1:8388?plugin=obfs-local%3Bobfs%3Dhttp",
                "plugin obfs-local",
            ),
            ("vmess://!!", "not base64"),
            ("vmess://e30", "add (the server) is missing"),
            // A secret where a port or a word was expected is never quoted back.
            (
                "tuic://123e4567-e89b-12d3-a456-426614174000:SECRETPW",
                "not a port number",
            ),
            ("hy2://u:SECRETPW?x@192.0.2.1", "not a port number"),
            (
                "vless://id@192.0.2.1:443?security=SECRET%0Aline",
                "security=(a value)",
            ),
            (
                "SECRET-but-a-very-long-scheme-name-beyond-32://x",
                "(a value):// links",
            ),
            ("vless://SECRETID@[2001:db8::1]junk", "junk after ]"),
            (
                "vless://SECRETID@192.0.2.1:443?path=%+F",
                "bad percent-encoding",
            ),
        ] {
            let e = parse(link).unwrap_err();
            assert!(e.contains(words), "{link}: {e}");
            assert!(!e.contains("SECRET"), "{link}: {e}");
        }
    }
}
