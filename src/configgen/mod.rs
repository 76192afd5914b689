//! Service configurations, one generator per feature, all the same shape (`tor.rs`,
//! `singbox.rs`, `xray.rs`): a JSON Schema of the feature's settings, a renderer that turns
//! an instance's context and settings into the service's config file, the arguments that run
//! it and the arguments that make the service check its own config.
//!
//! Every instance gets its own file under `{instance}/config/`; nothing is shared between two
//! instances of one feature. Rendering is deterministic (snapshot tests rely on it).

mod link;
mod schema;
mod singbox;
mod tor;
mod xray;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub(crate) use schema::validate;

/// With a segment, every generator adds a transparent TCP inbound and a DNS inbound on the
/// segment address at these ports: device routing sends routed devices' traffic there.
pub(crate) const TRANSPARENT_PORT: u16 = 9040;
pub(crate) const DNS_PORT: u16 = 9053;
/// sing-box's Clash API (latencies) when an instance has several servers.
pub(crate) const CONTROL_PORT: u16 = 9097;
/// Where DNS queries of routed devices go (through the service) unless `dnsUpstream` says.
const DNS_UPSTREAM: &str = "1.1.1.1";

/// What a generator knows about the instance it configures.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// The address the service listens on: `.2` of its VIF, or loopback without one.
    pub listen: IpAddr,
    /// The routing mark for the service's own connections (only with a VIF).
    pub mark: Option<u32>,
    pub data_dir: PathBuf,
    /// The instance has a segment: add the transparent and DNS inbounds.
    pub transparent: bool,
    /// With several servers, sing-box's Clash API on `listen:CONTROL_PORT` with this secret:
    /// how the agent reads each server's latency.
    pub control_secret: Option<String>,
}

/// A rendered configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rendered {
    pub text: String,
    /// The port the health probe connects to (on `Context::listen`).
    pub health_port: u16,
    /// Whether the service needs CAP_NET_ADMIN (to set its routing mark) inside its namespace.
    pub needs_net_admin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Generator {
    Tor,
    SingBox,
    Xray,
}

/// Settings every feature accepts: resource limits for its process.
fn resource_properties() -> Value {
    json!({
        "memoryMax": { "type": "integer", "minimum": 4194304, "maximum": 17179869184u64,
                       "description": "memory.max of the service's cgroup, in bytes" },
        "pidsMax": { "type": "integer", "minimum": 4, "maximum": 65536 },
        "cpuMax": { "type": "string", "format": "text", "maxLength": 32,
                    "description": "cpu.max: \"QUOTA PERIOD\" in microseconds, or \"max PERIOD\"" }
    })
}

pub(crate) fn port_schema() -> Value {
    json!({ "type": "integer", "minimum": 1, "maximum": 65535 })
}

/// The upstream resolver routed devices' DNS is sent to (through the service's outbound).
pub(crate) fn dns_upstream(settings: &Value) -> &str {
    settings
        .get("dnsUpstream")
        .and_then(Value::as_str)
        .unwrap_or(DNS_UPSTREAM)
}

pub(crate) fn dns_upstream_schema() -> Value {
    json!({ "type": "string", "format": "ipv4",
            "description": "resolver (IPv4) for routed devices' DNS, reached through the service" })
}

/// Refuses settings that put one of `keys` on a port the transparent inbounds use.
pub(crate) fn check_reserved(ctx: &Context, settings: &Value, keys: &[&str]) -> Result<(), String> {
    if !ctx.transparent {
        return Ok(());
    }
    for k in keys {
        if let Some(p) = settings.get(*k).and_then(Value::as_u64)
            && (p == u64::from(TRANSPARENT_PORT) || p == u64::from(DNS_PORT))
        {
            return Err(format!(
                "{k} {p} is taken: ports {TRANSPARENT_PORT} and {DNS_PORT} are the transparent and DNS inbounds of device routing"
            ));
        }
    }
    Ok(())
}

/// A setting as a port, or its default.
pub(crate) fn port(settings: &Value, key: &str, default: u16) -> u16 {
    settings
        .get(key)
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(default)
}

impl Generator {
    pub(crate) fn by_name(name: &str) -> Option<Generator> {
        match name {
            "tor" => Some(Generator::Tor),
            "sing-box" => Some(Generator::SingBox),
            "xray" => Some(Generator::Xray),
            _ => None,
        }
    }

    /// The config file's name in the instance's config directory.
    pub(crate) fn file_name(self) -> &'static str {
        match self {
            Generator::Tor => tor::FILE,
            Generator::SingBox => singbox::FILE,
            Generator::Xray => xray::FILE,
        }
    }

    /// The JSON Schema of the feature's settings (resource limits included).
    pub(crate) fn schema(self) -> Value {
        let mut s = match self {
            Generator::Tor => tor::schema(),
            Generator::SingBox => singbox::schema(),
            Generator::Xray => xray::schema(),
        };
        if let (Some(props), Value::Object(extra)) = (
            s.get_mut("properties").and_then(Value::as_object_mut),
            resource_properties(),
        ) {
            props.extend(extra);
        }
        s
    }

    /// Settings as the renderer reads them: a `settings.link` parsed into `outbound`, a
    /// subscription's fetched servers (`FETCHED`, put there by the installer) as `outbounds`,
    /// then the rules a JSON Schema cannot say. `settings` already passed the schema.
    pub(crate) fn expand(self, settings: &Value) -> Result<Value, String> {
        let mut s = settings.clone();
        let Some(obj) = s.as_object_mut() else {
            return Ok(s);
        };
        let fetched = obj.remove(FETCHED);
        let given: Vec<&str> = ["link", "outbound", "outbounds", "subscription"]
            .into_iter()
            .filter(|k| obj.contains_key(*k))
            .collect();
        if let [a, b, ..] = given[..] {
            return Err(format!(
                "settings.{a} and settings.{b} exclude each other: give one"
            ));
        }
        if let Some(link) = obj.remove("link") {
            let o = self.outbound_from_link(link.as_str().unwrap_or_default())?;
            obj.insert("outbound".into(), o);
        }
        if obj.contains_key("subscription") {
            let refresh = obj.get("subscriptionRefresh").and_then(Value::as_u64);
            if refresh.is_some_and(|r| r > 0 && r < 300) {
                return Err(
                    "settings.subscriptionRefresh must be 0 (never) or at least 300 seconds".into(),
                );
            }
            if let Some(list) = fetched {
                obj.remove("subscription");
                obj.insert("outbounds".into(), list);
            }
        }
        if let Some(o) = obj.get("outbound") {
            check_outbound(o)?;
        }
        for o in obj
            .get("outbounds")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            check_outbound(o)?;
        }
        Ok(s)
    }

    /// One share link as an outbound of a form this generator has.
    fn outbound_from_link(self, link: &str) -> Result<Value, String> {
        outbound_of_forms(&self.schema()["properties"]["outbound"], link)
    }

    /// A subscription's body (base64 of a list of links, or the plain list; one link per
    /// line): the servers this generator can use, and for each line it cannot, why. At least
    /// one usable server, or nothing.
    pub(crate) fn subscription(self, body: &str) -> Result<(Vec<Value>, Vec<String>), String> {
        let body = body.trim();
        let text = if body.contains("://") {
            body.to_owned()
        } else {
            crate::util::base64_decode_lenient(body)
                .and_then(|b| String::from_utf8(b).ok())
                .filter(|t| t.contains("://"))
                .ok_or("the subscription is neither a list of share links nor base64 of one")?
        };
        let schema = self.schema();
        let forms = &schema["properties"]["outbound"];
        let (mut servers, mut skipped, mut unlisted) = (Vec::new(), Vec::new(), 0);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parsed = if line.len() > 4096 {
                Err("longer than 4096 bytes".to_owned())
            } else if servers.len() == MAX_OUTBOUNDS {
                Err(format!("more than {MAX_OUTBOUNDS} servers"))
            } else {
                outbound_of_forms(forms, line).and_then(|o| match o["server"].as_str() {
                    Some(h) if inside(h) => {
                        Err(format!("{h} is a loopback, private or link-local address"))
                    }
                    _ => Ok(o),
                })
            };
            match parsed {
                Ok(o) => servers.push(o),
                // Only the first reasons are kept: a body of junk must not fill the record.
                Err(e) if skipped.len() < MAX_SKIPPED => {
                    skipped.push(format!(
                        "line {}: {}",
                        n + 1,
                        e.trim_start_matches("settings.link: ")
                    ));
                }
                Err(_) => unlisted += 1,
            }
        }
        if unlisted > 0 {
            skipped.push(format!("{unlisted} more lines skipped"));
        }
        if servers.is_empty() {
            let first = skipped.first().map_or("no links", String::as_str);
            return Err(format!("no usable server in the subscription ({first})"));
        }
        Ok((servers, skipped))
    }

    /// Renders `settings` (checked against the schema; a link is expanded here).
    pub(crate) fn render(self, ctx: &Context, settings: &Value) -> Result<Rendered, String> {
        let settings = &self.expand(settings)?;
        if settings.get("subscription").is_some() {
            // Never a config without the servers (it would go out directly).
            return Err("the subscription has not been fetched yet (the agent fetches it when it installs the instance)".into());
        }
        if settings.get("outbounds").is_some_and(|o| !o.is_array())
            || settings.get("outbound").is_some_and(|o| !o.is_object())
        {
            return Err("settings.outbound(s) is malformed: no config without its servers".into());
        }
        match self {
            Generator::Tor => tor::render(ctx, settings),
            Generator::SingBox => singbox::render(ctx, settings),
            Generator::Xray => xray::render(ctx, settings),
        }
    }

    /// The secrets in `settings` (a link's among them): no message may repeat them.
    pub(crate) fn secrets(self, settings: &Value) -> Vec<String> {
        let mut found = Vec::new();
        let schema = self.schema();
        let mut all = vec![settings.clone()];
        all.extend(self.expand(settings).ok());
        for mut s in all {
            walk_secrets(&schema, &mut s, &mut |v| {
                if let Some(t) = v.as_str().filter(|t| !t.is_empty()) {
                    found.push(t.to_owned());
                }
            });
        }
        found
    }

    /// What a checker's refusal means for the user, when the words are known: a sing-box
    /// built without `with_utls` cannot run REALITY or a uTLS fingerprint at all.
    pub(crate) fn explain_refusal(self, output: &str) -> Option<&'static str> {
        (self == Generator::SingBox
            && output.contains("uTLS")
            && output.contains("not included in this build"))
        .then_some(
            "this sing-box build has no uTLS (`sing-box version` lists no with_utls tag): REALITY and tls.fingerprint need a build with it, such as upstream's release builds",
        )
    }

    /// Arguments that run the service with `config`.
    pub(crate) fn run_args(self, config: &Path) -> Vec<String> {
        let c = config.display().to_string();
        match self {
            Generator::Tor => vec!["-f".into(), c],
            Generator::SingBox => vec!["run".into(), "-c".into(), c],
            Generator::Xray => vec!["run".into(), "-c".into(), c],
        }
    }

    /// Arguments that make the service check `config` and exit.
    pub(crate) fn check_args(self, config: &Path) -> Vec<String> {
        let c = config.display().to_string();
        match self {
            Generator::Tor => vec!["--verify-config".into(), "-f".into(), c],
            Generator::SingBox => vec!["check".into(), "-c".into(), c],
            Generator::Xray => vec!["run".into(), "-test".into(), "-c".into(), c],
        }
    }
}

/// `settings` with every secret (`writeOnly` in `schema`) replaced: what answers show.
pub(crate) fn redact(schema: &Value, settings: &Value) -> Value {
    let mut s = settings.clone();
    walk_secrets(schema, &mut s, &mut |v| *v = json!(REDACTED));
    s
}

/// One share link as an outbound of one of `forms` (a generator's outbound schema).
fn outbound_of_forms(forms: &Value, link: &str) -> Result<Value, String> {
    let o = link::parse(link).map_err(|e| format!("settings.link: {e}"))?;
    let known = forms["oneOf"].as_array().is_some_and(|f| {
        f.iter()
            .any(|f| f["properties"]["type"]["const"] == o["type"])
    });
    if !known {
        return Err(format!(
            "settings.link: {} links are not supported by this feature's generator",
            o["type"].as_str().unwrap_or_default()
        ));
    }
    schema::check(forms, &o, "settings.link")?;
    check_outbound(&o)?;
    Ok(o)
}

/// Where the installer puts a subscription's fetched servers in the settings it renders
/// (not a setting: the schema refuses it from clients).
pub(crate) const FETCHED: &str = "_fetched";
/// Where the installer puts the server `selectOutbound` pinned.
pub(crate) const SELECTED: &str = "_selected";
/// The selector's automatic choice (sing-box's `urltest`; Xray: the first server).
pub(crate) const AUTO: &str = "auto";
pub(crate) const MAX_OUTBOUNDS: usize = 64;
/// How many skipped lines of a subscription are listed (with why).
const MAX_SKIPPED: usize = 16;

/// A server address a third party's list must not name: the service's own loopback, the
/// router's networks (private and link-local ranges), nothing at all, multicast.
fn inside(host: &str) -> bool {
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => {
            a.is_loopback()
                || a.is_private()
                || a.is_link_local()
                || a.is_unspecified()
                || a.is_multicast()
                || a.is_broadcast()
        }
        Ok(std::net::IpAddr::V6(a)) => {
            let s = a.segments()[0];
            a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (s & 0xfe00) == 0xfc00
                || (s & 0xffc0) == 0xfe80
                || a.to_ipv4_mapped().is_some_and(|m| inside(&m.to_string()))
        }
        Err(_) => {
            let h = host.to_ascii_lowercase();
            h == "localhost" || h.ends_with(".localhost")
        }
    }
}

/// The outbound tags of a list of servers: each one's name, made unique (`name #N`), or
/// `server-N`; never one of the tags the generators use themselves.
pub(crate) fn tags(outbounds: &[Value]) -> Vec<String> {
    let mut tags: Vec<String> = Vec::with_capacity(outbounds.len());
    for (i, o) in outbounds.iter().enumerate() {
        let name = o.get("name").and_then(Value::as_str).unwrap_or_default();
        let base = if name.is_empty() {
            format!("server-{}", i + 1)
        } else {
            name.to_owned()
        };
        let (mut tag, mut n) = (base.clone(), i + 1);
        while tags.contains(&tag) || matches!(tag.as_str(), AUTO | "proxy" | "direct") {
            tag = format!("{base} #{n}");
            n += 1;
        }
        tags.push(tag);
    }
    tags
}

/// What answers show in place of a secret.
pub(crate) const REDACTED: &str = "(redacted)";

/// Calls `f` on every value `schema` marks `writeOnly`.
fn walk_secrets(schema: &Value, v: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    let schema = match schema.get("oneOf").and_then(Value::as_array) {
        // The form the value is (else the one its `type` names); without one, every
        // string in it counts as a secret: fail closed.
        Some(forms) => match forms
            .iter()
            .find(|s| schema::check(s, v, "").is_ok())
            .or_else(|| {
                forms.iter().find(|s| {
                    s.pointer("/properties/type/const")
                        .is_some_and(|c| Some(c) == v.get("type"))
                })
            }) {
            Some(s) => s,
            None => return every_string(v, f),
        },
        None => schema,
    };
    if schema.get("writeOnly") == Some(&Value::Bool(true)) {
        return f(v);
    }
    match v {
        Value::Object(o) => {
            for (k, val) in o {
                match schema.pointer(&format!("/properties/{k}")) {
                    Some(s) => walk_secrets(s, val, f),
                    // A field this schema does not know (an older or newer record's): its
                    // strings count as secrets.
                    None => every_string(val, f),
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for item in items {
                    walk_secrets(s, item, f);
                }
            }
        }
        _ => {}
    }
}

fn every_string(v: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    match v {
        Value::String(_) => f(v),
        Value::Array(items) => items.iter_mut().for_each(|i| every_string(i, f)),
        Value::Object(o) => o.values_mut().for_each(|i| every_string(i, f)),
        _ => {}
    }
}

/// `text` with every secret replaced by `REDACTED`.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    // Longest first: a short secret inside a longer one must not leave the rest of it.
    let mut sorted: Vec<&String> = secrets.iter().collect();
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    sorted.dedup();
    let mut t = text.to_owned();
    for s in sorted {
        t = t.replace(s.as_str(), REDACTED);
    }
    t
}

/// Rules across fields of one outbound.
fn check_outbound(o: &Value) -> Result<(), String> {
    let tls_on = o.pointer("/tls/enabled").and_then(Value::as_bool);
    if o.get("flow").is_some() {
        let tcp = o
            .get("transport")
            .is_none_or(|t| t == "tcp" || t.get("type").is_some_and(|t| t == "tcp"));
        if !tcp || tls_on != Some(true) {
            return Err(
                "settings.outbound.flow xtls-rprx-vision needs the tcp transport and tls.enabled"
                    .into(),
            );
        }
    }
    if o.pointer("/tls/reality").is_some()
        && (tls_on != Some(true) || o.pointer("/tls/serverName").is_none())
    {
        return Err("settings.outbound.tls.reality needs tls.enabled and tls.serverName".into());
    }
    if let Some(m) = o.get("method").and_then(Value::as_str)
        && let Some(cipher) = m.strip_prefix("2022-blake3-")
    {
        let len = if cipher.starts_with("aes-128") {
            16
        } else {
            32
        };
        let password = o["password"].as_str().unwrap_or_default();
        // `iPSK:uPSK` for servers with several users: every key the same length.
        let ok = password
            .split(':')
            .all(|k| crate::util::base64_decode(k).is_some_and(|key| key.len() == len));
        if !ok {
            return Err(format!(
                "settings.outbound.password of {m} must be base64 of a {len}-byte key (openssl rand -base64 {len})"
            ));
        }
    }
    Ok(())
}

/// Replaces `{config}` in catalogue-given argument templates.
pub(crate) fn expand(template: &[String], config: &Path) -> Vec<String> {
    let c = config.display().to_string();
    template.iter().map(|a| a.replace("{config}", &c)).collect()
}

/// `nnc-agent config schema|render`.
#[derive(Debug)]
pub(crate) enum Command {
    Schema(String),
    Render {
        generator: String,
        settings: String,
        /// `--link`: a share link put into the settings as `link`.
        link: Option<String>,
        listen: std::net::IpAddr,
        mark: Option<u32>,
        dir: PathBuf,
    },
}

/// `nnc-agent config schema|render`: what a generator publishes or writes, for people and
/// for tests that feed the output to the real checkers.
pub(crate) fn command(c: Command) -> Result<String, String> {
    let find = |name: &str| {
        Generator::by_name(name)
            .ok_or_else(|| format!("no config generator {name:?} (tor, sing-box, xray)"))
    };
    match c {
        Command::Schema(name) => {
            let schema = find(&name)?.schema();
            serde_json::to_string_pretty(&schema)
                .map(|s| s + "\n")
                .map_err(|e| e.to_string())
        }
        Command::Render {
            generator,
            settings,
            link,
            listen,
            mark,
            dir,
        } => {
            let g = find(&generator)?;
            let mut settings: Value = serde_json::from_str(&settings)
                .map_err(|e| format!("--settings is not JSON: {e}"))?;
            if let (Some(l), Some(o)) = (link, settings.as_object_mut()) {
                o.insert("link".into(), json!(l));
            }
            validate(&g.schema(), &settings)?;
            let ctx = Context {
                listen,
                mark,
                data_dir: dir.join("data"),
                transparent: !listen.is_loopback(),
                control_secret: None,
            };
            g.render(&ctx, &settings).map(|r| r.text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_keep_the_usable_servers_and_say_why_others_are_not() {
        let list = "trojan://pw@a.example.org:443#A\n\n# a comment\nvless://x@b.example.org:443\n\
                    tuic://123e4567-e89b-12d3-a456-426614174000:pw@c.example.org:443#T\n\
                    ss://YWVzLTEyOC1nY206cHc@192.0.2.3:8388#A\n";
        let (servers, skipped) = Generator::SingBox.subscription(list).unwrap();
        assert_eq!(servers.len(), 3);
        assert_eq!(skipped, ["line 4: settings.link.uuid is not a valid uuid"]);
        assert_eq!(tags(&servers), ["A", "T", "A #3"]);
        // The same list in base64 (URL-safe, unpadded), and for Xray, which has no TUIC.
        let b64 = crate::util::base64_encode(list.as_bytes())
            .replace('+', "-")
            .replace('/', "_");
        let (servers, skipped) = Generator::Xray
            .subscription(b64.trim_end_matches('='))
            .unwrap();
        assert_eq!((servers.len(), skipped.len()), (2, 2), "{skipped:?}");
        assert!(
            skipped[1].contains("tuic links are not supported"),
            "{skipped:?}"
        );
        // Third parties' lists name no server inside the router's networks, and a list of
        // junk is summarised, not kept line by line.
        for inner in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "169.254.0.1",
            "[fd00::1]",
            "[fe80::1]",
            "localhost",
            "[::ffff:192.168.0.1]",
        ] {
            let e = Generator::SingBox
                .subscription(&format!("trojan://pw@{inner}:443"))
                .unwrap_err();
            assert!(
                e.contains("loopback, private or link-local"),
                "{inner}: {e}"
            );
        }
        let junk = format!("trojan://pw@a.example.org:443\n{}", "x://y\n".repeat(100));
        let (_, skipped) = Generator::SingBox.subscription(&junk).unwrap();
        assert_eq!(skipped.len(), MAX_SKIPPED + 1);
        assert_eq!(skipped.last().unwrap(), "84 more lines skipped");
        for bad in ["<html>503</html>", "", "dHJvamFu"] {
            let e = Generator::SingBox.subscription(bad).unwrap_err();
            assert!(
                e.contains("neither a list of share links nor base64"),
                "{bad}: {e}"
            );
        }
        let e = Generator::SingBox
            .subscription("vless://nope@x.example:1\nhttp://x\n")
            .unwrap_err();
        assert!(
            e.starts_with("no usable server in the subscription (line 1:"),
            "{e}"
        );
    }

    #[test]
    fn several_sing_box_servers_get_a_control_api_for_latencies() {
        let ctx = Context {
            listen: "10.99.1.2".parse().unwrap(),
            mark: None,
            data_dir: "/d".into(),
            transparent: true,
            control_secret: Some("s3cret".into()),
        };
        let two = |extra: Value| {
            let mut s = json!({ "outbounds": [
                { "type": "trojan", "server": "a.example", "serverPort": 443, "password": "pw" },
                { "type": "trojan", "server": "b.example", "serverPort": 443, "password": "pw" }
            ] });
            s.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            s
        };
        let text = Generator::SingBox
            .render(&ctx, &two(json!({})))
            .unwrap()
            .text;
        let c: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            c["experimental"]["clash_api"],
            json!({ "external_controller": "10.99.1.2:9097", "secret": "s3cret" })
        );
        let e = Generator::SingBox
            .render(&ctx, &two(json!({ "mixedPort": 9097 })))
            .unwrap_err();
        assert!(e.contains("port 9097 is taken"), "{e}");
        // One server: no control API.
        let one = json!({ "outbound": { "type": "trojan", "server": "a.example", "serverPort": 443, "password": "pw" } });
        let text = Generator::SingBox.render(&ctx, &one).unwrap().text;
        assert!(!text.contains("clash_api"), "{text}");
    }

    #[test]
    fn tags_are_unique_and_never_the_generators_own() {
        let named = |n: &str| json!({ "name": n });
        let list = [
            named("proxy"),
            json!({}),
            named("auto"),
            named("x"),
            named("x"),
            json!({}),
        ];
        assert_eq!(
            tags(&list),
            ["proxy #1", "server-2", "auto #3", "x", "x #5", "server-6"]
        );
        let list = [named("a"), named("a #2"), named("a")];
        assert_eq!(tags(&list), ["a", "a #2", "a #3"]);
        let list = [named("auto #1"), named("auto")];
        assert_eq!(tags(&list), ["auto #1", "auto #2"]);
    }

    #[test]
    fn secrets_are_redacted_in_answers_and_found_for_scrubbing() {
        let g = Generator::SingBox;
        let uuid = "123e4567-e89b-12d3-a456-426614174000";
        let s = json!({ "mixedPort": 2080, "outbounds": [
            { "type": "vless", "server": "a.example", "serverPort": 1, "uuid": uuid,
              "tls": { "reality": { "publicKey": "k", "shortId": "abcd" } } },
            { "type": "hysteria2", "server": "b.example", "serverPort": 2, "password": "pw1",
              "obfs": { "type": "salamander", "password": "pw2" } }
        ] });
        let shown = redact(&g.schema(), &s);
        assert_eq!(shown["mixedPort"], 2080);
        assert_eq!(shown["outbounds"][0]["uuid"], REDACTED);
        assert_eq!(shown["outbounds"][0]["tls"]["reality"]["shortId"], REDACTED);
        assert_eq!(shown["outbounds"][0]["tls"]["reality"]["publicKey"], "k");
        assert_eq!(shown["outbounds"][1]["obfs"]["password"], REDACTED);
        // A value of no known form (an older agent's settings): all its strings hidden.
        let odd = redact(
            &g.schema(),
            &json!({ "outbound": { "type": "future", "key": "s3cret" } }),
        );
        assert_eq!(
            odd["outbound"],
            json!({ "type": REDACTED, "key": REDACTED })
        );
        let link = json!({ "link": "trojan://pw3@c.example:443" });
        let mut found = g.secrets(&s);
        found.extend(g.secrets(&link));
        for secret in [
            uuid,
            "abcd",
            "pw1",
            "pw2",
            "pw3",
            "trojan://pw3@c.example:443",
        ] {
            assert!(found.iter().any(|f| f == secret), "{secret}: {found:?}");
        }
        assert_eq!(
            scrub("uuid 123e4567-e89b-12d3-a456-426614174000 bad", &found),
            "uuid (redacted) bad"
        );
        // A short secret inside a longer one: the longer goes whole.
        let nested = ["12".to_owned(), uuid.to_owned()];
        assert_eq!(scrub(&format!("id {uuid}"), &nested), "id (redacted)");
    }
}
