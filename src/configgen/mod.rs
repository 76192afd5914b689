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

    /// Settings as the renderer reads them: a `settings.link` parsed into `outbound` (and
    /// checked against the outbound forms this generator has), then the rules a JSON Schema
    /// cannot say. `settings` already passed the schema.
    pub(crate) fn expand(self, settings: &Value) -> Result<Value, String> {
        let mut s = settings.clone();
        if let Some(link) = s.as_object_mut().and_then(|o| o.remove("link")) {
            if s.get("outbound").is_some() {
                return Err("settings.link and settings.outbound exclude each other".into());
            }
            let o = link::parse(link.as_str().unwrap_or_default())
                .map_err(|e| format!("settings.link: {e}"))?;
            let forms = &self.schema()["properties"]["outbound"];
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
            s["outbound"] = o;
        }
        if let Some(o) = s.get("outbound") {
            check_outbound(o)?;
        }
        Ok(s)
    }

    /// Renders `settings` (checked against the schema; a link is expanded here).
    pub(crate) fn render(self, ctx: &Context, settings: &Value) -> Result<Rendered, String> {
        let settings = &self.expand(settings)?;
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

/// What answers show in place of a secret.
pub(crate) const REDACTED: &str = "(redacted)";

/// Calls `f` on every value `schema` marks `writeOnly`.
fn walk_secrets(schema: &Value, v: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    let schema = match schema.get("oneOf").and_then(Value::as_array) {
        Some(forms) => match forms.iter().find(|s| schema::check(s, v, "").is_ok()) {
            Some(s) => s,
            None => return,
        },
        None => schema,
    };
    if schema.get("writeOnly") == Some(&Value::Bool(true)) {
        return f(v);
    }
    match v {
        Value::Object(o) => {
            for (k, val) in o {
                if let Some(s) = schema.pointer(&format!("/properties/{k}")) {
                    walk_secrets(s, val, f);
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

/// `text` with every secret replaced by `REDACTED`.
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut t = text.to_owned();
    for s in secrets {
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
            };
            g.render(&ctx, &settings).map(|r| r.text)
        }
    }
}
