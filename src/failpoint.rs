//! Failpoints: named places where a test can make the agent fail or die on purpose, so that a
//! crash or an error lands exactly at a step boundary.
//!
//! `NNC_FAILPOINTS="vif.create.3=error,install.fetched=abort"` — `error` makes `hit` return an
//! error at that point, `abort` kills the process there (what `kill -9` would do, without the
//! race). Unset in production; reading the variable once costs nothing afterwards.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Error,
    Abort,
}

fn points() -> &'static [(String, Action)] {
    static POINTS: OnceLock<Vec<(String, Action)>> = OnceLock::new();
    POINTS.get_or_init(|| {
        std::env::var("NNC_FAILPOINTS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|spec| {
                let (name, action) = spec.trim().split_once('=')?;
                let action = match action {
                    "error" => Action::Error,
                    "abort" => Action::Abort,
                    _ => return None,
                };
                Some((name.to_owned(), action))
            })
            .collect()
    })
}

/// `Err` with a message naming the failpoint when a test asked for an error here; never
/// returns when it asked for an abort.
pub(crate) fn hit(name: &str) -> Result<(), String> {
    match points().iter().find(|(n, _)| n == name).map(|(_, a)| *a) {
        None => Ok(()),
        Some(Action::Error) => Err(format!("failpoint {name} injected a failure")),
        Some(Action::Abort) => {
            log::error!(target: "api", "failpoint {name}: aborting as asked");
            std::process::abort();
        }
    }
}
