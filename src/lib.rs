//! nnc-agent: runs on the router and turns "install Tor / sing-box / Xray" into one GraphQL
//! call. See ARCHITECTURE.md for the map.
//!
//! A library only so that fuzz targets (`fuzz/`) can reach the parsers through `fuzz`; the
//! program is `run`, called by `main.rs`.

mod api;
mod board;
mod catalogue;
mod cli;
mod client;
mod code;
mod config;
mod configgen;
mod events;
mod failpoint;
#[doc(hidden)]
pub mod fuzz;
mod github;
mod gz;
mod http_client;
mod ids;
mod install;
mod logger;
mod platform;
mod routing;
mod store;
mod supervisor;
mod tls;
mod trust;
mod util;
mod vif;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use cli::Command;
use config::Config;

/// Exit code for configuration and start-up errors (bad flags, unreadable catalogue ...).
const EXIT_CONFIG: u8 = 2;

/// The whole program: parses the command line and runs the command.
pub fn run() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nnc-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match command {
        Command::Help => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!(
                "nnc-agent {} ({})",
                env!("CARGO_PKG_VERSION"),
                platform::host_arch()
            );
            ExitCode::SUCCESS
        }
        Command::Schema => {
            print!("{}", api::schema::sdl());
            ExitCode::SUCCESS
        }
        Command::Client(c) => match client::run(c) {
            Ok(()) => ExitCode::SUCCESS,
            Err(client::Failure(code, message)) => {
                eprintln!("nnc-agent: {message}");
                ExitCode::from(code)
            }
        },
        Command::Catalogue(c) => match trust::command(c) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("nnc-agent: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Config(c) => match configgen::command(c) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("nnc-agent: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Serve(cfg) => match serve(*cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("nnc-agent: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
    }
}

/// Sets everything up; returns only on a start-up error (the server runs until killed).
fn serve(cfg: Config) -> Result<(), String> {
    logger::init(cfg.log_level);
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| format!("cannot create data dir {}: {e}", cfg.data_dir.display()))?;
    let data_dir = cfg
        .data_dir
        .canonicalize()
        .map_err(|e| format!("data dir {}: {e}", cfg.data_dir.display()))?;
    let token = load_or_create_token(&cfg.token_file)?;
    let layout = install::Layout::new(data_dir.clone());
    layout
        .protect()
        .map_err(|e| format!("cannot set the modes of {}: {e}", data_dir.display()))?;
    let store = store::Store::open(&layout.state_db()).map_err(|e| e.to_string())?;
    // Before any thread is started: what services can be confined with here.
    let support = supervisor::Support::probe();
    let catalogue =
        trust::load_catalogue(&cfg.feed, &store, &data_dir).map_err(|e| e.to_string())?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
        let local = listener
            .local_addr()
            .map_err(|e| format!("cannot read the listening address: {e}"))?;
        let installer = assemble(&cfg, store, catalogue, layout, support);
        // Repair interfaces an earlier run left half-made before any install continues.
        let factory = Arc::clone(&installer.interfaces);
        crate::util::blocking(move || factory.reconcile()).await;
        // Watching before the table is put back: a deletion in between is seen too.
        installer.routing.watch_if_routed();
        // Routed devices are refused (not sent direct) before any service runs again.
        match installer.routing.call(routing::Op::Restore).await {
            Ok(routing::Reply::Count(n)) if n > 0 => {
                log::info!(target: "routing", "{n} device route(s) in place");
            }
            Ok(_) => {}
            Err(e) => {
                log::error!(target: "routing", "cannot put the device routes in place: {}", e.message);
            }
        }
        follow_services(&installer);
        let resumed = installer.resume_interrupted().map_err(|e| e.to_string())?;
        installer
            .recover_reconfiguring()
            .map_err(|e| e.to_string())?;
        let rolled_back = installer.recover_updates().await.map_err(|e| e.to_string())?;
        installer
            .resume_uninstalls()
            .await
            .map_err(|e| e.to_string())?;
        if rolled_back > 0 {
            log::warn!(target: "api", "{rolled_back} interrupted update(s) rolled back");
        }
        installer.collect_artifacts().await;
        let restarted = installer.restart_wanted().map_err(|e| e.to_string())?;
        if restarted > 0 {
            log::info!(target: "supervisor", "starting {restarted} service(s) that were running before");
        }
        log::info!(target: "api", "data dir {}, catalogue {} ({} features), {resumed} interrupted install(s) resumed",
            data_dir.display(), installer.catalogue().source, installer.catalogue().features.len());
        log::info!(target: "api", "API token in {} (send it as 'Authorization: Bearer <token>')", cfg.token_file.display());
        if let Some(b) = &cfg.board {
            log::info!(target: "api", "board {}: {}", b.name, b.description);
        }
        crate::util::spawn(Arc::clone(&installer).refresh_subscriptions_forever());
        installer.restore_found();
        let interval = cfg.updates.check_interval;
        if !interval.is_zero() {
            crate::util::spawn(Arc::clone(&installer).check_updates_forever(interval));
        }
        let api = Arc::new(api::Api::new(
            installer,
            cfg.board.clone(),
            token,
            cfg.dev,
            cfg.api.clone(),
        ));
        // The one line scripts wait for; printed after the socket is bound.
        println!("nnc-agent listening on http://{local}/graphql");
        let _ = std::io::stdout().flush();
        api::serve(listener, api).await;
        Ok(())
    })
}

/// Tells routing whenever a service starts or stops running (`onServiceDown: DIRECT`). A
/// subscriber that fell behind asks the supervisor for every routed instance's state instead.
fn follow_services(installer: &Arc<install::Installer>) {
    let mut rx = installer.bus.subscribe();
    let installer = Arc::clone(installer);
    crate::util::spawn(async move {
        loop {
            let changed: Vec<(String, bool)> = match rx.recv().await {
                Ok(event) => match (&event.kind, &event.instance_id) {
                    (events::EventKind::ProcessStateChanged { to, .. }, Some(id)) => {
                        vec![(id.clone(), *to == events::ProcState::Running)]
                    }
                    _ => continue,
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let Ok(routing::Reply::Routes(routes)) =
                        installer.routing.call(routing::Op::Routes).await
                    else {
                        continue;
                    };
                    let mut ids: Vec<String> = routes.into_iter().map(|r| r.instance_id).collect();
                    ids.sort();
                    ids.dedup();
                    ids.into_iter()
                        .map(|id| {
                            let running = installer
                                .supervisor
                                .info(&id)
                                .is_some_and(|p| p.state == events::ProcState::Running);
                            (id, running)
                        })
                        .collect()
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            for (id, running) in changed {
                let _ = installer
                    .routing
                    .call(routing::Op::ServiceState(id, running))
                    .await;
            }
        }
    });
}

/// The installer with its interface factory and supervisor, wired together (no I/O).
fn assemble(
    cfg: &Config,
    store: store::Store,
    catalogue: catalogue::Catalogue,
    layout: install::Layout,
    support: supervisor::Support,
) -> Arc<install::Installer> {
    let bus = events::Bus::new(4096);
    let interfaces = Arc::new(vif::InterfaceFactory::new(
        store.clone(),
        bus.clone(),
        vif::routers(
            &cfg.vlan,
            &cfg.routers,
            support.user.then_some(cfg.supervisor.uid_range),
        ),
    ));
    let cgroups = supervisor::Cgroups::new(&cfg.supervisor.cgroup_root);
    let supervisor = Arc::new(supervisor::Supervisor::new(
        bus.clone(),
        cgroups,
        cfg.supervisor.policy.clone(),
        support,
    ));
    let installer = Arc::new(install::Installer::new(
        store,
        bus,
        catalogue,
        layout,
        install::Settings {
            feed: cfg.feed.clone(),
            supervisor: cfg.supervisor.clone(),
            routing: cfg.routing.clone(),
        },
        interfaces,
        supervisor,
    ));
    installer.attach_supervisor();
    installer
}

/// Reads the API token, creating a random one (mode 0600) on first start.
fn load_or_create_token(path: &Path) -> Result<api::Token, String> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(api::Token::new(&text)),
        Ok(_) => return Err(format!("token file {} is empty", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read token file {}: {e}", path.display())),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let secret = util::random_hex(32).map_err(|e| format!("no randomness for the token: {e}"))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(format!("{secret}\n").as_bytes()))
        .map_err(|e| format!("cannot create token file {}: {e}", path.display()))?;
    log::info!(target: "api", "created a new API token in {}", path.display());
    Ok(api::Token::new(&secret))
}
