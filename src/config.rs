//! Command line and configuration file.
//!
//! Every `serve` option is accepted as a flag and as a key of the TOML file given by
//! `--config`; explicit flags win over the file, the file wins over built-in defaults.
//! Anything wrong here is reported as one line and exit code 2 by `main`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::board::{self, Board};

pub(crate) const USAGE: &str = "\
nnc-agent: installs, isolates and supervises network services on this router

usage:
  nnc-agent serve [options]      run the agent (GraphQL on --listen)
  nnc-agent version              print the version
  nnc-agent help                 this text

serve options (each also a key of the --config TOML file, with '_' for '-'):
  --config FILE        TOML file with any of the keys below
  --data-dir DIR       state, binaries and instances (default ./nnc-data)
  --listen ADDR        GraphQL address (default 127.0.0.1:8080; port 0 picks one)
  --catalogue SRC      catalogue JSON file path or http(s) URL (default: built-in)
  --token-file FILE    API bearer token (default {data-dir}/token, created 0600)
  --log-level LEVEL    error|warn|info|debug|trace (default info)
  --board NAME|FILE    board profile for defaults (x86_64-vm, aarch64-vm, mt7621,
                       ipq40xx, ath79, mikrotik-arm64, or a .toml file)
  --dev                enable GraphQL introspection
";

#[derive(Debug)]
pub(crate) enum Command {
    Serve(Box<Config>),
    Version,
    Help,
}

/// Everything `serve` needs, after flags, file and defaults are merged.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub catalogue: Option<String>,
    pub token_file: PathBuf,
    pub log_level: log::LevelFilter,
    pub dev: bool,
    /// The board profile given with `--board`, if any.
    pub board: Option<Board>,
    pub download: DownloadConfig,
}

/// Download-manager tuning. Defaults suit a home router on a slow uplink.
#[derive(Debug, Clone)]
pub(crate) struct DownloadConfig {
    /// TCP connect (and TLS handshake) budget.
    pub connect_timeout: Duration,
    /// A read that brings no byte for this long counts as a stall; the download resumes.
    pub stall_timeout: Duration,
    /// Upper bound for any single download or extracted file when the catalogue gives no size.
    pub max_bytes: u64,
    /// Failed attempts in a row (without progress) before the install fails.
    pub retries: u32,
    /// First pause between attempts; doubles up to 30 s.
    pub retry_delay: Duration,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(30),
            max_bytes: 256 << 20,
            retries: 5,
            retry_delay: Duration::from_secs(1),
        }
    }
}

#[derive(Debug)]
pub(crate) struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ConfigError> {
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
struct Flags {
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    catalogue: Option<String>,
    token_file: Option<PathBuf>,
    log_level: Option<String>,
    board: Option<String>,
    dev: bool,
}

pub(crate) fn parse_command(args: &[String]) -> Result<Command, ConfigError> {
    match args.first().map(String::as_str) {
        None | Some("help" | "--help" | "-h") => Ok(Command::Help),
        Some("version" | "--version" | "-V") => Ok(Command::Version),
        Some("serve") => {
            let flags = parse_flags(&args[1..])?;
            let file = match &flags.config {
                Some(path) => read_file_config(path)?,
                None => FileConfig::default(),
            };
            merge(flags, file).map(|c| Command::Serve(Box::new(c)))
        }
        Some(other) => err(format!("unknown command '{other}' (try 'nnc-agent help')")),
    }
}

fn parse_flags(args: &[String]) -> Result<Flags, ConfigError> {
    let mut flags = Flags::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (arg.as_str(), None),
        };
        if name == "--dev" {
            if inline.is_some() {
                return err("--dev takes no value");
            }
            flags.dev = true;
            continue;
        }
        let mut value = || -> Result<String, ConfigError> {
            match inline.clone().or_else(|| it.next().cloned()) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => err(format!("{name} needs a value")),
            }
        };
        match name {
            "--config" => flags.config = Some(value()?.into()),
            "--data-dir" => flags.data_dir = Some(value()?.into()),
            "--listen" => flags.listen = Some(value()?),
            "--catalogue" => flags.catalogue = Some(value()?),
            "--token-file" => flags.token_file = Some(value()?.into()),
            "--log-level" => flags.log_level = Some(value()?),
            "--board" => flags.board = Some(value()?),
            _ => return err(format!("unknown option '{name}' (try 'nnc-agent help')")),
        }
    }
    Ok(flags)
}

fn read_file_config(path: &PathBuf) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .or_else(|e| err(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).or_else(|e| {
        let msg = e.message().to_owned();
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
            let host = crate::catalogue::host_arch();
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
    let d = DownloadConfig::default();
    let download = DownloadConfig {
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
    Ok(Config {
        board,
        data_dir,
        listen,
        catalogue: flags.catalogue.or(file.catalogue),
        token_file,
        log_level,
        dev: flags.dev || file.dev.unwrap_or(false),
        download,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn serve(s: &str) -> Config {
        match parse_command(&args(s)).unwrap() {
            Command::Serve(c) => *c,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = serve("serve");
        assert_eq!(c.data_dir, PathBuf::from("./nnc-data"));
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.token_file, PathBuf::from("./nnc-data/token"));
        assert!(c.catalogue.is_none());
        assert!(!c.dev);
    }

    #[test]
    fn flags_accept_both_spellings_and_token_follows_data_dir() {
        let c =
            serve("serve --data-dir /tmp/x --listen=0.0.0.0:9 --dev --catalogue http://h/c.json");
        assert_eq!(c.token_file, PathBuf::from("/tmp/x/token"));
        assert_eq!(c.listen.port(), 9);
        assert!(c.dev);
        assert_eq!(c.catalogue.as_deref(), Some("http://h/c.json"));
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
            let e = parse_command(&args(line)).unwrap_err().0;
            assert!(e.contains(needle), "{line}: {e}");
            assert!(!e.contains('\n'), "{line}: multi-line error {e:?}");
        }
    }

    /// A board for the machine running the tests (they also run under qemu-user).
    fn host_board() -> (&'static str, &'static str, &'static str) {
        match crate::catalogue::host_arch() {
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
        let e = parse_command(&args(&format!("serve --board {foreign}")))
            .unwrap_err()
            .0;
        assert!(e.contains(&format!("board {foreign} is for")), "{e}");
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
        assert_eq!(c.download.stall_timeout, Duration::from_millis(2500));
        assert_eq!(c.download.retries, 9);

        std::fs::write(&path, "data_dri = \"/x\"\n").unwrap();
        let e = parse_command(&args(&format!("serve --config {}", path.display())))
            .unwrap_err()
            .0;
        assert!(e.contains("unknown field `data_dri`"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
