//! Service configurations, one generator per feature, all the same shape (`tor.rs`,
//! `singbox.rs`, `xray.rs`): a JSON Schema of the feature's settings, a renderer that turns
//! an instance's context and settings into the service's config file, the arguments that run
//! it and the arguments that make the service check its own config.
//!
//! Every instance gets its own file under `{instance}/config/`; nothing is shared between two
//! instances of one feature. Rendering is deterministic (snapshot tests rely on it).

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

    pub(crate) fn render(self, ctx: &Context, settings: &Value) -> Result<Rendered, String> {
        match self {
            Generator::Tor => tor::render(ctx, settings),
            Generator::SingBox => singbox::render(ctx, settings),
            Generator::Xray => xray::render(ctx, settings),
        }
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
            listen,
            mark,
            dir,
        } => {
            let g = find(&generator)?;
            let settings: Value = serde_json::from_str(&settings)
                .map_err(|e| format!("--settings is not JSON: {e}"))?;
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
