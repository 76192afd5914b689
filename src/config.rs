//! `serve`'s configuration: flags (parsed by `cli`), the TOML file and the defaults, merged
//! into each subsystem's own settings type.
//!
//! Every `serve` option is accepted as a flag and as a key of the TOML file given by
//! `--config`; explicit flags win over the file, the file wins over built-in defaults.
//! Anything wrong here is reported as one line and exit code 2 by `main`.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::board::{self, Board};
use crate::trust::{self, Feed};
use crate::vif::routeros::api::{Endpoint, TlsTrust};
use crate::vif::{self, VlanMode};
use crate::{api, http_client, routing, supervisor};

/// Everything `serve` needs, after flags, file and defaults are merged.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub token_file: PathBuf,
    pub log_level: log::LevelFilter,
    pub dev: bool,
    /// The board profile given with `--board`, if any.
    pub board: Option<Board>,
    /// The local router's interfaces (the Linux backend).
    pub vlan: vif::LocalSettings,
    /// RouterOS routers reached through their API.
    pub routers: Vec<vif::RouterSettings>,
    pub supervisor: supervisor::Settings,
    /// The catalogue's source, the trust policy and the HTTP settings of every download.
    pub feed: Feed,
    pub api: api::Limits,
    pub routing: routing::Settings,
    pub updates: crate::install::updates::Settings,
}

#[derive(Debug)]
pub(crate) struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub(crate) fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(msg.into()))
}

/// The TOML file. Unknown keys are refused: a typo must not silently fall back to a default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    catalogue: Option<String>,
    token_file: Option<PathBuf>,
    log_level: Option<String>,
    dev: Option<bool>,
    board: Option<String>,
    #[serde(default)]
    download: FileDownload,
    #[serde(default)]
    vlan: FileVlan,
    #[serde(default)]
    routers: Vec<FileRouter>,
    #[serde(default)]
    supervisor: FileSupervisor,
    #[serde(default)]
    trust: FileTrust,
    #[serde(default)]
    api: FileApi,
    #[serde(default)]
    routing: FileRouting,
    #[serde(default)]
    github: FileGithub,
    #[serde(default)]
    updates: FileUpdates,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpdates {
    /// Seconds between update checks; 0 turns them off.
    check_interval_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGithub {
    /// GitHub's REST API (GitHub Enterprise: `https://HOST/api/v3`).
    api_url: Option<String>,
    token_file: Option<PathBuf>,
    max_wait_secs: Option<f64>,
}

fn github_settings(f: &FileGithub) -> Result<crate::github::Settings, ConfigError> {
    let d = crate::github::Settings::default();
    let api_url = f.api_url.clone().unwrap_or(d.api_url);
    if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
        return err(format!("github.api_url '{api_url}' must be an http(s) URL"));
    }
    Ok(crate::github::Settings {
        api_url,
        token_file: f.token_file.clone(),
        max_wait: secs("max_wait_secs", f.max_wait_secs, d.max_wait)
            .map_err(|e| ConfigError(e.0.replace("download.", "github.")))?,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRouting {
    /// Where the device-routing rules are kept for the boot firewall; `""` for nowhere.
    boot_rules: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApi {
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    unauthenticated_timeout_secs: Option<f64>,
    max_subscriptions_per_connection: Option<usize>,
    auth_failure_limit: Option<u32>,
    auth_window_secs: Option<f64>,
}

fn api_limits(f: &FileApi) -> Result<api::Limits, ConfigError> {
    let d = api::Limits::default();
    let api_secs = |name: &str, v: Option<f64>, default: Duration| {
        secs(name, v, default).map_err(|e| ConfigError(e.0.replace("download.", "api.")))
    };
    let limits = api::Limits {
        max_connections: f.max_connections.unwrap_or(d.max_connections),
        max_connections_per_address: f
            .max_connections_per_address
            .unwrap_or(d.max_connections_per_address),
        unauthenticated_timeout: api_secs(
            "unauthenticated_timeout_secs",
            f.unauthenticated_timeout_secs,
            d.unauthenticated_timeout,
        )?,
        max_subscriptions: f
            .max_subscriptions_per_connection
            .unwrap_or(d.max_subscriptions),
        auth_failures: f.auth_failure_limit.unwrap_or(d.auth_failures),
        auth_window: api_secs("auth_window_secs", f.auth_window_secs, d.auth_window)?,
    };
    if limits.max_connections == 0
        || limits.max_connections_per_address == 0
        || limits.max_subscriptions == 0
        || limits.auth_failures == 0
    {
        return err(
            "api.max_connections, api.max_connections_per_address, api.max_subscriptions_per_connection and api.auth_failure_limit must be at least 1",
        );
    }
    Ok(limits)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTrust {
    require_signature: Option<bool>,
    #[serde(default)]
    trusted_keys: Vec<PathBuf>,
    allow_downgrade: Option<bool>,
    packages: Option<Vec<String>>,
}

/// Reads every trusted key: a file, or each file of a directory (like /etc/opkg/keys).
fn trust_config(t: &FileTrust) -> Result<trust::Policy, ConfigError> {
    let mut keys = Vec::new();
    for path in &t.trusted_keys {
        let files: Vec<PathBuf> = if path.is_dir() {
            let mut f: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| ConfigError(format!("trust.trusted_keys {}: {e}", path.display())))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            f.sort();
            f
        } else {
            vec![path.clone()]
        };
        for f in files {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| ConfigError(format!("trust.trusted_keys {}: {e}", f.display())))?;
            let key = trust::signify::parse_public(&text)
                .map_err(|e| ConfigError(format!("trust.trusted_keys {}: {e}", f.display())))?;
            keys.push(key);
        }
    }
    // Configured keys are worthless if an unsigned catalogue is still taken: whoever can strip
    // the signature could serve anything.
    let require_signature = t.require_signature.unwrap_or(!keys.is_empty());
    if require_signature && keys.is_empty() {
        return err("trust.require_signature is on but trust.trusted_keys names no key");
    }
    Ok(trust::Policy {
        require_signature,
        trusted_keys: keys,
        allow_downgrade: t.allow_downgrade.unwrap_or(false),
        packages: t.packages.clone(),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSupervisor {
    cgroup_root: Option<PathBuf>,
    uid_range: Option<[u32; 2]>,
    crash_limit: Option<u32>,
    backoff_initial_secs: Option<f64>,
    backoff_max_secs: Option<f64>,
    stable_secs: Option<f64>,
    stop_grace_secs: Option<f64>,
    log_max_bytes: Option<u64>,
    probe_interval_secs: Option<f64>,
    probe_timeout_secs: Option<f64>,
    probe_threshold: Option<u32>,
    startup_timeout_secs: Option<f64>,
    memory_max: Option<u64>,
    pids_max: Option<u32>,
    cpu_max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileVlan {
    mode: Option<String>,
    parent: Option<String>,
    pool: Option<[u16; 2]>,
    subnet_base: Option<Ipv4Addr>,
    netns_dir: Option<PathBuf>,
    rt_tables: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRouter {
    id: String,
    kind: String,
    host: String,
    port: Option<u16>,
    #[serde(default)]
    tls: bool,
    tls_fingerprint: Option<String>,
    tls_ca_file: Option<PathBuf>,
    user: String,
    password_file: PathBuf,
    parent_interface: String,
    vlan_pool: Option<[u16; 2]>,
    timeout_secs: Option<f64>,
    command_timeout_secs: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDownload {
    connect_timeout_secs: Option<f64>,
    stall_timeout_secs: Option<f64>,
    max_bytes: Option<u64>,
    retries: Option<u32>,
    retry_delay_secs: Option<f64>,
}

/// Flags given on the command line, before merging.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    pub config: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    pub catalogue: Option<String>,
    pub token_file: Option<PathBuf>,
    pub log_level: Option<String>,
    pub board: Option<String>,
    pub dev: bool,
}

/// `serve`'s configuration: the flags, the `--config` file they name, and the defaults.
pub(crate) fn load(flags: Flags) -> Result<Config, ConfigError> {
    let file = match &flags.config {
        Some(path) => read_file_config(path)?,
        None => FileConfig::default(),
    };
    merge(flags, file)
}

fn read_file_config(path: &PathBuf) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .or_else(|e| err(format!("cannot read config file {}: {e}", path.display())))?;
    crate::util::from_toml(&text).or_else(|e| {
        let msg = e.to_string();
        err(format!("config file {}: {msg}", path.display()))
    })
}

fn secs(name: &str, v: Option<f64>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) if s.is_finite() && s > 0.0 && s < 86_400.0 => Ok(Duration::from_secs_f64(s)),
        Some(s) => err(format!(
            "download.{name} must be between 0 and 86400 seconds, got {s}"
        )),
    }
}

fn merge(flags: Flags, file: FileConfig) -> Result<Config, ConfigError> {
    let board = match flags.board.or(file.board) {
        None => None,
        Some(name) => {
            let b = board::load(&name).map_err(ConfigError)?;
            let host = crate::platform::host_arch();
            if b.arch != host {
                return err(format!(
                    "board {} is for {} ({}); this agent is built for {host}",
                    b.name, b.arch, b.target
                ));
            }
            Some(b)
        }
    };
    let data_dir = flags
        .data_dir
        .or(file.data_dir)
        .or_else(|| board.as_ref().map(|b| b.data_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("./nnc-data"));
    let listen_text = flags
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let listen: SocketAddr = listen_text.parse().or_else(|_| {
        err(format!(
            "--listen '{listen_text}' is not an address like 127.0.0.1:8080"
        ))
    })?;
    let level_text = flags
        .log_level
        .or(file.log_level)
        .unwrap_or_else(|| "info".to_owned());
    let log_level: log::LevelFilter = level_text.parse().or_else(|_| {
        err(format!(
            "--log-level '{level_text}' is not one of error, warn, info, debug, trace"
        ))
    })?;
    let token_file = flags
        .token_file
        .or(file.token_file)
        .unwrap_or_else(|| data_dir.join("token"));
    let d = http_client::Settings::default();
    let download = http_client::Settings {
        connect_timeout: secs(
            "connect_timeout_secs",
            file.download.connect_timeout_secs,
            d.connect_timeout,
        )?,
        stall_timeout: secs(
            "stall_timeout_secs",
            file.download.stall_timeout_secs,
            d.stall_timeout,
        )?,
        max_bytes: file.download.max_bytes.unwrap_or(d.max_bytes),
        retries: file.download.retries.unwrap_or(d.retries),
        retry_delay: secs(
            "retry_delay_secs",
            file.download.retry_delay_secs,
            d.retry_delay,
        )?,
    };
    let vlan = merge_vlan(&file.vlan, board.as_ref())?;
    let routers = file
        .routers
        .iter()
        .map(|r| router_config(r, &vlan))
        .collect::<Result<Vec<_>, _>>()?;
    for (i, r) in routers.iter().enumerate() {
        if routers[..i].iter().any(|o| o.id == r.id) {
            return err(format!("router '{}' is configured twice", r.id));
        }
    }
    let supervisor = merge_supervisor(&file.supervisor, board.as_ref())?;
    let trust = trust_config(&file.trust)?;
    let api = api_limits(&file.api)?;
    let routing = routing::Settings {
        boot_rules: match &file.routing.boot_rules {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            // fw4 (OpenWrt) includes this directory's files when it loads the firewall.
            None => Path::new(FW4_RULESET_POST)
                .parent()
                .filter(|d| d.parent().is_some_and(Path::is_dir))
                .map(|_| PathBuf::from(FW4_RULESET_POST)),
        },
    };
    let updates = crate::install::updates::Settings {
        check_interval: secs(
            "check_interval_secs",
            file.updates.check_interval_secs,
            crate::install::updates::Settings::default().check_interval,
        )
        .map_err(|e| ConfigError(e.0.replace("download.", "updates.")))?,
    };
    Ok(Config {
        api,
        routing,
        updates,
        supervisor,
        vlan,
        routers,
        board,
        data_dir,
        listen,
        feed: Feed {
            source: flags.catalogue.or(file.catalogue),
            policy: trust,
            http: download,
            github: github_settings(&file.github)?,
        },
        token_file,
        log_level,
        dev: flags.dev || file.dev.unwrap_or(false),
    })
}

/// fw4 includes `ruleset-post/*.nft` after its own table at every start and reload.
const FW4_RULESET_POST: &str = "/usr/share/nftables.d/ruleset-post/nnc-agent.nft";

fn check_pool(what: &str, pool: [u16; 2]) -> Result<(), ConfigError> {
    // The VLAN id is also the third octet of the instance's subnet.
    if pool[0] == 0 || pool[1] > 254 || pool[0] > pool[1] {
        return err(format!(
            "{what} pool {}-{} must lie within 1-254 (the id is the subnet's third octet)",
            pool[0], pool[1]
        ));
    }
    Ok(())
}

fn merge_vlan(file: &FileVlan, board: Option<&Board>) -> Result<vif::LocalSettings, ConfigError> {
    let mode = match file.mode.as_deref() {
        Some("off") => VlanMode::Off,
        Some("vlan") => VlanMode::Vlan,
        Some("veth") => VlanMode::Veth,
        Some(other) => return err(format!("vlan.mode '{other}' is not one of off, vlan, veth")),
        // A board is a router: it gets interfaces. A bare development run does not.
        None if board.is_some() => VlanMode::Vlan,
        None => VlanMode::Off,
    };
    let parent = file
        .parent
        .clone()
        .or_else(|| board.map(|b| b.vlan.parent.clone()))
        .unwrap_or_else(|| "eth0".to_owned());
    let pool = file
        .pool
        .or_else(|| board.map(|b| b.vlan.pool))
        .unwrap_or([100, 199]);
    check_pool("vlan", pool)?;
    let subnet_base = file
        .subnet_base
        .or_else(|| board.map(|b| b.vlan.subnet_base))
        .unwrap_or(Ipv4Addr::new(10, 99, 0, 0));
    if subnet_base.octets()[2..] != [0, 0] {
        return err(format!("vlan.subnet_base {subnet_base} must end in .0.0"));
    }
    Ok(vif::LocalSettings {
        mode,
        parent,
        pool,
        subnet_base,
        netns_dir: file
            .netns_dir
            .clone()
            .unwrap_or_else(|| "/run/netns".into()),
        rt_tables: file
            .rt_tables
            .clone()
            .unwrap_or_else(|| "/etc/iproute2/rt_tables.d/nnc.conf".into()),
    })
}

fn merge_supervisor(
    f: &FileSupervisor,
    board: Option<&Board>,
) -> Result<supervisor::Settings, ConfigError> {
    let d = supervisor::Policy::default();
    let s = |name: &str, v: Option<f64>, def: Duration| {
        secs(name, v, def).map_err(|e| ConfigError(e.0.replace("download.", "supervisor.")))
    };
    let uid_range = f.uid_range.unwrap_or([61000, 61999]);
    if uid_range[0] < 1000 || uid_range[0] > uid_range[1] {
        return err(format!(
            "supervisor.uid_range {}-{} must start at 1000 or above",
            uid_range[0], uid_range[1]
        ));
    }
    let cpu_max = f
        .cpu_max
        .clone()
        .or_else(|| board.map(|b| b.resources.cpu_max.clone()))
        .unwrap_or_else(|| "max 100000".into());
    Ok(supervisor::Settings {
        cgroup_root: f
            .cgroup_root
            .clone()
            .or_else(|| board.map(|b| b.cgroup.root.clone()))
            .unwrap_or_else(|| "/sys/fs/cgroup/nnc".into()),
        uid_range,
        policy: supervisor::Policy {
            backoff_initial: s(
                "backoff_initial_secs",
                f.backoff_initial_secs,
                d.backoff_initial,
            )?,
            backoff_max: s("backoff_max_secs", f.backoff_max_secs, d.backoff_max)?,
            stable_after: s("stable_secs", f.stable_secs, d.stable_after)?,
            crash_limit: f.crash_limit.unwrap_or(d.crash_limit).max(1),
            stop_grace: s("stop_grace_secs", f.stop_grace_secs, d.stop_grace)?,
            log_max_bytes: f.log_max_bytes.unwrap_or(d.log_max_bytes),
        },
        probe_interval: s(
            "probe_interval_secs",
            f.probe_interval_secs,
            Duration::from_secs(2),
        )?,
        probe_timeout: s(
            "probe_timeout_secs",
            f.probe_timeout_secs,
            Duration::from_secs(2),
        )?,
        probe_threshold: f.probe_threshold.unwrap_or(3).max(1),
        startup_timeout: s(
            "startup_timeout_secs",
            f.startup_timeout_secs,
            Duration::from_secs(60),
        )?,
        limits: supervisor::Limits {
            memory_max: f
                .memory_max
                .or_else(|| board.map(|b| b.resources.memory_max))
                .unwrap_or(64 << 20),
            pids_max: f
                .pids_max
                .or_else(|| board.map(|b| b.resources.pids_max))
                .unwrap_or(64),
            cpu_max,
        },
    })
}

fn router_config(
    r: &FileRouter,
    vlan: &vif::LocalSettings,
) -> Result<vif::RouterSettings, ConfigError> {
    let what = format!("router '{}'", r.id);
    if !crate::ids::is_feature_id(&r.id) || r.id == crate::ids::LOCAL_ROUTER {
        return err(format!(
            "{what}: id must match ^[a-z0-9][a-z0-9-]{{0,31}}$ and not be 'local'"
        ));
    }
    if r.kind != "routeros" {
        return err(format!(
            "{what}: kind '{}' is not supported (routeros)",
            r.kind
        ));
    }
    let pool = r.vlan_pool.unwrap_or(vlan.pool);
    check_pool(&what, pool)?;
    let password = std::fs::read_to_string(&r.password_file)
        .map_err(|e| {
            ConfigError(format!(
                "{what}: cannot read {}: {e}",
                r.password_file.display()
            ))
        })?
        .trim_end_matches(['\r', '\n'])
        .to_owned();
    let tls = match (&r.tls_fingerprint, &r.tls_ca_file) {
        (Some(fp), _) => {
            let hex: String = fp.chars().filter(|c| *c != ':').collect();
            let sha = crate::util::parse_sha256_hex(&hex).ok_or_else(|| {
                ConfigError(format!(
                    "{what}: tls_fingerprint must be a SHA-256 (64 hex digits)"
                ))
            })?;
            Some(TlsTrust::Fingerprint(sha))
        }
        (None, Some(ca)) => Some(TlsTrust::CaFile(ca.clone())),
        (None, None) if r.tls => {
            return err(format!("{what}: tls needs tls_fingerprint or tls_ca_file"));
        }
        (None, None) => None,
    };
    let router_secs = |name: &str, v: Option<f64>, default: Duration| {
        secs(name, v, default)
            .map_err(|e| ConfigError(e.0.replace("download.", &format!("{what}: "))))
    };
    Ok(vif::RouterSettings {
        id: r.id.clone(),
        endpoint: Endpoint {
            host: r.host.clone(),
            port: r.port.unwrap_or(if tls.is_some() { 8729 } else { 8728 }),
            tls,
            user: r.user.clone(),
            password,
            timeout: router_secs("timeout_secs", r.timeout_secs, Duration::from_secs(5))?,
            command_timeout: router_secs(
                "command_timeout_secs",
                r.command_timeout_secs,
                Duration::from_secs(15),
            )?,
        },
        parent: r.parent_interface.clone(),
        pool,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn serve(s: &str) -> Config {
        match crate::cli::parse(&args(s)).unwrap() {
            crate::cli::Command::Serve(c) => *c,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = serve("serve");
        assert_eq!(c.data_dir, PathBuf::from("./nnc-data"));
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.token_file, PathBuf::from("./nnc-data/token"));
        assert!(c.feed.source.is_none());
        assert!(!c.dev);
    }

    #[test]
    fn flags_accept_both_spellings_and_token_follows_data_dir() {
        let c =
            serve("serve --data-dir /tmp/x --listen=0.0.0.0:9 --dev --catalogue http://h/c.json");
        assert_eq!(c.token_file, PathBuf::from("/tmp/x/token"));
        assert_eq!(c.listen.port(), 9);
        assert!(c.dev);
        assert_eq!(c.feed.source.as_deref(), Some("http://h/c.json"));
    }

    #[test]
    fn bad_flags_are_one_clear_error() {
        for (line, needle) in [
            ("serve --bogus", "unknown option '--bogus'"),
            ("serve --listen", "--listen needs a value"),
            ("serve --listen nowhere", "is not an address"),
            ("serve --log-level loud", "is not one of"),
            ("frobnicate", "unknown command"),
            (
                "serve --config /nonexistent/nnc.toml",
                "cannot read config file",
            ),
        ] {
            let e = crate::cli::parse(&args(line)).unwrap_err().0;
            assert!(e.contains(needle), "{line}: {e}");
            assert!(!e.contains('\n'), "{line}: multi-line error {e:?}");
        }
    }

    /// A board for the machine running the tests (they also run under qemu-user).
    fn host_board() -> (&'static str, &'static str, &'static str) {
        match crate::platform::host_arch() {
            "aarch64" => ("aarch64-vm", "/data/nnc", "ath79"),
            "armv7" => ("ipq40xx", "/opt/nnc", "ath79"),
            "mipsel" => ("mt7621", "/opt/nnc", "ath79"),
            "mips" => ("ath79", "/opt/nnc", "mt7621"),
            _ => ("x86_64-vm", "/data/nnc", "ath79"),
        }
    }

    #[test]
    fn a_board_fills_defaults_and_flags_win() {
        let (board, data_dir, foreign) = host_board();
        let c = serve(&format!("serve --board {board}"));
        assert_eq!(c.data_dir, PathBuf::from(data_dir));
        assert_eq!(c.board.as_ref().unwrap().vlan.pool, [100, 199]);
        let c = serve(&format!("serve --board {board} --data-dir /tmp/d"));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/d"));
        let e = crate::cli::parse(&args(&format!("serve --board {foreign}")))
            .unwrap_err()
            .0;
        assert!(e.contains(&format!("board {foreign} is for")), "{e}");
    }

    #[test]
    fn vlan_and_routers_from_the_file() {
        let dir = std::env::temp_dir().join(format!("nnc-cfg-r-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let path = dir.join("nnc.toml");
        let write = |text: &str| std::fs::write(&path, text).unwrap();
        write(&format!(
            "[vlan]\nmode = \"veth\"\npool = [10, 20]\n[[routers]]\nid = \"mt\"\nkind = \"routeros\"\nhost = \"192.0.2.1\"\nuser = \"nnc\"\npassword_file = {:?}\nparent_interface = \"bridge\"\ntls_fingerprint = \"{}\"\n",
            pw.display().to_string(),
            "ab:".repeat(31) + "ab"
        ));
        let c = serve(&format!("serve --config {}", path.display()));
        assert_eq!(c.vlan.mode, VlanMode::Veth);
        assert_eq!(c.vlan.pool, [10, 20]);
        assert_eq!(c.routers.len(), 1);
        let r = &c.routers[0];
        assert_eq!(
            (r.endpoint.port, r.endpoint.password.as_str(), r.pool),
            (8729, "s3cret", [10, 20])
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "the router password shows in the config's Debug output"
        );
        for (text, needle) in [
            ("[vlan]\nmode = \"bridge\"\n", "vlan.mode 'bridge'"),
            ("[vlan]\npool = [100, 300]\n", "must lie within 1-254"),
            ("[vlan]\nsubnet_base = \"10.99.1.0\"\n", "must end in .0.0"),
            (
                "[[routers]]\nid = \"local\"\nkind = \"routeros\"\nhost = \"h\"\nuser = \"u\"\npassword_file = \"/x\"\nparent_interface = \"p\"\n",
                "not be 'local'",
            ),
            (
                "[[routers]]\nid = \"m\"\nkind = \"routeros\"\nhost = \"h\"\nuser = \"u\"\npassword_file = \"/nonexistent\"\nparent_interface = \"p\"\n",
                "cannot read /nonexistent",
            ),
        ] {
            write(text);
            let e = crate::cli::parse(&args(&format!("serve --config {}", path.display())))
                .unwrap_err()
                .0;
            assert!(e.contains(needle), "{text}: {e}");
        }
        assert_eq!(serve("serve").vlan.mode, VlanMode::Off);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn trusted_keys_require_signatures_unless_explicitly_turned_off() {
        let dir = std::env::temp_dir().join(format!("nnc-cfg-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("feed.pub");
        std::fs::write(&key, trust::signify::keygen("t").unwrap().0).unwrap();
        let trust = |require: Option<bool>, keys: Vec<PathBuf>| {
            trust_config(&FileTrust {
                require_signature: require,
                trusted_keys: keys,
                allow_downgrade: None,
                packages: None,
            })
        };
        assert!(trust(None, vec![key.clone()]).unwrap().require_signature);
        assert!(
            !trust(Some(false), vec![key.clone()])
                .unwrap()
                .require_signature
        );
        assert!(!trust(None, vec![]).unwrap().require_signature);
        let e = trust(Some(true), vec![]).unwrap_err().0;
        assert!(e.contains("names no key"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn api_limits_from_the_file_with_defaults_and_refusals() {
        let d = serve("serve").api;
        assert_eq!(
            (d.max_connections, d.max_connections_per_address),
            (256, 16)
        );
        assert_eq!(d.unauthenticated_timeout, Duration::from_secs(10));
        let dir = std::env::temp_dir().join(format!("nnc-cfg-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nnc.toml");
        std::fs::write(
            &path,
            "[api]\nmax_connections_per_address = 4\nunauthenticated_timeout_secs = 2.5\n",
        )
        .unwrap();
        let c = serve(&format!("serve --config {}", path.display()));
        assert_eq!(c.api.max_connections_per_address, 4);
        assert_eq!(c.api.unauthenticated_timeout, Duration::from_millis(2500));
        let pw = dir.join("pw");
        std::fs::write(&pw, "p\n").unwrap();
        let router = format!(
            "[[routers]]\nid = \"mt\"\nkind = \"routeros\"\nhost = \"h\"\nuser = \"u\"\npassword_file = {:?}\nparent_interface = \"p\"\n",
            pw.display().to_string()
        );
        std::fs::write(&path, &router).unwrap();
        let ep = &serve(&format!("serve --config {}", path.display())).routers[0].endpoint;
        assert_eq!(
            (ep.port, ep.timeout, ep.command_timeout),
            (8728, Duration::from_secs(5), Duration::from_secs(15))
        );
        for (text, needle) in [
            (
                "[api]\nmax_connections_per_address = 0\n".to_owned(),
                "api.max_connections_per_address",
            ),
            (
                "[api]\nunauthenticated_timeout_secs = -1\n".to_owned(),
                "api.unauthenticated_timeout_secs must be between",
            ),
            (
                format!("{router}command_timeout_secs = 0\n"),
                "router 'mt': command_timeout_secs must be between",
            ),
        ] {
            std::fs::write(&path, &text).unwrap();
            let e = crate::cli::parse(&args(&format!("serve --config {}", path.display())))
                .unwrap_err()
                .0;
            assert!(e.contains(needle), "{text}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn file_keys_apply_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("nnc-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nnc.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/nnc\"\nlisten = \"127.0.0.1:7000\"\n[download]\nstall_timeout_secs = 2.5\nretries = 9\n",
        )
        .unwrap();
        let c = serve(&format!(
            "serve --config {} --listen 127.0.0.1:7001",
            path.display()
        ));
        assert_eq!(c.data_dir, PathBuf::from("/srv/nnc"));
        assert_eq!(c.listen.port(), 7001);
        assert_eq!(c.feed.http.stall_timeout, Duration::from_millis(2500));
        assert_eq!(c.feed.http.retries, 9);

        std::fs::write(&path, "data_dri = \"/x\"\n").unwrap();
        let e = crate::cli::parse(&args(&format!("serve --config {}", path.display())))
            .unwrap_err()
            .0;
        assert!(e.contains("unknown field `data_dri`"), "{e}");
        // A wrong value names its key; a syntax error its line.
        for (text, says) in [
            (
                "[api]\nmax_connections = \"many\"\n",
                "for key `api.max_connections`",
            ),
            ("[[routers]]\nid = 1\n", "for key `routers[0].id`"),
            ("listen = 5\n", "for key `listen`"),
            ("[api]\nmax_connections = \n", "at line 2"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = crate::cli::parse(&args(&format!("serve --config {}", path.display())))
                .unwrap_err()
                .0;
            assert!(e.contains(says), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{text:?}: {e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
