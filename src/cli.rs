//! The command line: its grammar and its usage text. `serve`'s options are turned into a
//! `Config` by `config`; the other commands are handed to the module that does them.

use std::path::PathBuf;

use crate::client::{self, Conn, Verb};
use crate::config::{self, Config, ConfigError, Flags, err};
use crate::{configgen, trust};

pub(crate) const USAGE: &str = "\
nnc-agent: installs, isolates and supervises network services on this router

usage:
  nnc-agent serve [options]      run the agent (GraphQL on --listen)
  nnc-agent config schema GEN    the JSON Schema of a generator's settings (tor, sing-box, xray)
  nnc-agent config render GEN [--settings JSON] [--link URL] [--listen IP] [--mark N] [--dir DIR]
                                 print the config the agent would write (settings checked
                                 against the schema first, as installFeature does; --link
                                 is settings.link, a share link)
  nnc-agent catalogue keygen PUB SEC [COMMENT]   a signify-compatible key pair (unencrypted)
  nnc-agent catalogue sign SEC FILE [SIG]        detached signature (default FILE.sig)
  nnc-agent catalogue verify PUB FILE [SIG]      check one: signify/usign or minisign (.minisig)
  nnc-agent schema               the GraphQL schema (SDL) clients can generate types from
  nnc-agent version              print the version
  nnc-agent help                 this text

client commands (over the agent's GraphQL API, like any LAN client):
  nnc-agent install FEATURE --name N [--router R] [--settings JSON] [--link URL]
                                 install and follow it to the end with a progress bar
  nnc-agent features | list | devices          what can be installed, the instances, routes
  nnc-agent status ID | start ID | stop ID | restart ID | uninstall ID
  nnc-agent logs ID [-f] [--tail N]            the service's output (-f: keep following)
  nnc-agent update ID VERSION                  move an instance to another version
  nnc-agent route ID DEVICE... | unroute DEVICE...   send LAN devices through an instance
  each takes --url URL (NNC_URL, default http://127.0.0.1:8080), --token T (NNC_TOKEN) or
  --token-file F (NNC_TOKEN_FILE, default {--data-dir, default ./nnc-data}/token).
  exit codes: 0 done, 1 refused or failed (the error code is printed), 2 bad command line,
  3 agent unreachable, 4 missing or wrong token.

serve options (each also a key of the --config TOML file, with '_' for '-'):
  --config FILE        TOML file with any of the keys below
  --data-dir DIR       state, binaries and instances (default ./nnc-data)
  --listen ADDR        GraphQL address (default 127.0.0.1:8080; port 0 picks one)
  --catalogue SRC      catalogue JSON file path or http(s) URL (default: built-in)
  --token-file FILE    API bearer token (default {data-dir}/token, created 0600)
  --log-level LEVEL    error|warn|info|debug|trace (default info; release builds
                       carry error to info only: debug and trace show what info does)
  --board NAME|FILE    board profile for defaults (x86_64-vm, aarch64-vm, mt7621,
                       ipq40xx, ath79, mikrotik-arm64, or a .toml file)
  --dev                enable GraphQL introspection
environment: SSL_CERT_FILE, the PEM bundle of roots https trusts (default: the system's)
";

#[derive(Debug)]
pub(crate) enum Command {
    Serve(Box<Config>),
    /// `config schema|render`: the config generators without an agent.
    Config(configgen::Command),
    /// `catalogue keygen|sign|verify`: for feed publishers.
    Catalogue(trust::Command),
    /// `schema`: the GraphQL SDL.
    Schema,
    /// The client verbs (`install`, `list`, ...).
    Client(client::Command),
    Version,
    Help,
}

/// A client command line: the verb's positional arguments and the shared flags.
fn parse_client_command(verb: &str, args: &[String]) -> Result<Command, ConfigError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let mut conn = Conn {
        url: env("NNC_URL").unwrap_or_else(|| "http://127.0.0.1:8080".into()),
        token: env("NNC_TOKEN"),
        token_file: String::new(),
    };
    let mut token_file = env("NNC_TOKEN_FILE");
    let mut data_dir = "nnc-data".to_owned();
    let (mut name, mut router, mut settings, mut link) = (None, "local".to_owned(), None, None);
    let (mut follow, mut tail) = (false, 100);
    let mut pos: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "-f" || arg == "--follow" {
            follow = true;
            continue;
        }
        if !arg.starts_with("--") {
            pos.push(arg.clone());
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_owned())),
            None => (arg.as_str(), None),
        };
        let Some(value) = inline.or_else(|| it.next().cloned()) else {
            return err(format!("{flag} needs a value"));
        };
        match flag {
            "--url" => conn.url = value,
            "--token" => conn.token = Some(value),
            "--token-file" => token_file = Some(value),
            "--data-dir" => data_dir = value,
            "--name" => name = Some(value),
            "--router" => router = value,
            "--settings" => settings = Some(value),
            "--link" => link = Some(value),
            "--tail" => {
                tail = value
                    .parse()
                    .map_err(|_| ConfigError(format!("--tail {value:?} is not a number")))?;
            }
            other => return err(format!("unknown option '{other}' for {verb}")),
        }
    }
    conn.token_file = token_file.unwrap_or_else(|| format!("{data_dir}/token"));
    let one = |what: &str| -> Result<String, ConfigError> {
        match pos.as_slice() {
            [one] => Ok(one.clone()),
            _ => err(format!("usage: nnc-agent {verb} {what}")),
        }
    };
    let none = || -> Result<(), ConfigError> {
        if pos.is_empty() {
            Ok(())
        } else {
            err(format!("{verb} takes no arguments"))
        }
    };
    let verb = match verb {
        "install" => Verb::Install {
            feature: one("FEATURE --name N [--router R] [--settings JSON] [--link URL]")?,
            name: name.ok_or_else(|| ConfigError("install needs --name N".into()))?,
            router,
            settings,
            link,
        },
        "list" => none().map(|()| Verb::List)?,
        "features" => none().map(|()| Verb::Features)?,
        "devices" => none().map(|()| Verb::Devices)?,
        "status" => Verb::Status(one("ID")?),
        "uninstall" => Verb::Uninstall(one("ID")?),
        "start" => Verb::Control("start", one("ID")?),
        "stop" => Verb::Control("stop", one("ID")?),
        "restart" => Verb::Control("restart", one("ID")?),
        "logs" => Verb::Logs {
            id: one("ID [-f] [--tail N]")?,
            follow,
            tail,
        },
        "update" => match pos.as_slice() {
            [id, version] => Verb::Update {
                id: id.clone(),
                version: version.clone(),
            },
            _ => return err("usage: nnc-agent update ID VERSION"),
        },
        "route" => match pos.split_first() {
            Some((id, devices)) if !devices.is_empty() => Verb::Route {
                id: id.clone(),
                devices: devices.to_vec(),
            },
            _ => return err("usage: nnc-agent route ID DEVICE..."),
        },
        _ if pos.is_empty() => return err("usage: nnc-agent unroute DEVICE..."),
        _ => Verb::Unroute(pos),
    };
    Ok(Command::Client(client::Command { conn, verb }))
}

fn parse_catalogue_command(args: &[String]) -> Result<Command, ConfigError> {
    let p = |i: usize| args.get(i).map(PathBuf::from);
    let sig_of = |f: &PathBuf| PathBuf::from(format!("{}.sig", f.display()));
    let cmd = match (args.first().map(String::as_str), args.len()) {
        (Some("keygen"), 3 | 4) => trust::Command::Keygen {
            public: p(1).unwrap_or_default(),
            secret: p(2).unwrap_or_default(),
            comment: args.get(3).cloned().unwrap_or_else(|| "nnc-agent".into()),
        },
        (Some("sign"), 3 | 4) => {
            let file = p(2).unwrap_or_default();
            trust::Command::Sign {
                secret: p(1).unwrap_or_default(),
                sig: p(3).unwrap_or_else(|| sig_of(&file)),
                file,
            }
        }
        (Some("verify"), 3 | 4) => {
            let file = p(2).unwrap_or_default();
            trust::Command::Verify {
                public: p(1).unwrap_or_default(),
                sig: p(3).unwrap_or_else(|| sig_of(&file)),
                file,
            }
        }
        _ => {
            return err(
                "usage: nnc-agent catalogue keygen PUB SEC [COMMENT] | sign SEC FILE [SIG] | verify PUB FILE [SIG]",
            );
        }
    };
    Ok(Command::Catalogue(cmd))
}

fn parse_config_command(args: &[String]) -> Result<Command, ConfigError> {
    let generator = args.get(1).cloned().unwrap_or_default();
    match args.first().map(String::as_str) {
        Some("schema") if args.len() == 2 => {
            Ok(Command::Config(configgen::Command::Schema(generator)))
        }
        Some("render") if args.len() >= 2 => {
            let mut settings = "{}".to_owned();
            let mut link = None;
            let mut listen = std::net::IpAddr::from([127, 0, 0, 1]);
            let mut mark = None;
            let mut dir = PathBuf::from("/var/lib/nnc/instance");
            let mut it = args[2..].iter();
            while let Some(flag) = it.next() {
                let Some(value) = it.next() else {
                    return err(format!("{flag} needs a value"));
                };
                match flag.as_str() {
                    "--settings" => settings.clone_from(value),
                    "--link" => link = Some(value.clone()),
                    "--listen" => {
                        listen = value.parse().map_err(|_| {
                            ConfigError(format!("--listen {value:?} is not an IP address"))
                        })?;
                    }
                    "--mark" => {
                        mark = Some(value.parse().map_err(|_| {
                            ConfigError(format!("--mark {value:?} is not a number"))
                        })?);
                    }
                    "--dir" => dir = PathBuf::from(value),
                    other => return err(format!("unknown option '{other}' for config render")),
                }
            }
            Ok(Command::Config(configgen::Command::Render {
                generator,
                settings,
                link,
                listen,
                mark,
                dir,
            }))
        }
        _ => err(
            "usage: nnc-agent config schema GEN | config render GEN [--settings JSON] [--link URL] [--listen IP] [--mark N] [--dir DIR]",
        ),
    }
}

/// The command a command line asks for; a bad one is one line for people.
pub(crate) fn parse(args: &[String]) -> Result<Command, ConfigError> {
    match args.first().map(String::as_str) {
        None | Some("help" | "--help" | "-h") => Ok(Command::Help),
        Some("version" | "--version" | "-V") => Ok(Command::Version),
        Some("serve") => {
            let flags = parse_flags(&args[1..])?;
            config::load(flags).map(|c| Command::Serve(Box::new(c)))
        }
        Some("config") => parse_config_command(&args[1..]),
        Some("catalogue") => parse_catalogue_command(&args[1..]),
        Some("schema") if args.len() == 1 => Ok(Command::Schema),
        Some(
            v @ ("install" | "list" | "features" | "devices" | "status" | "uninstall" | "start"
            | "stop" | "restart" | "logs" | "update" | "route" | "unroute"),
        ) => parse_client_command(v, &args[1..]),
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
