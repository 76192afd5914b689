//! The agent's own log: one line per record on stderr, `time level [target] message`.
//!
//! Targets name the part of the agent speaking (`download-manager`, `interface-factory`,
//! `supervisor`, `api`). A full logging framework costs hundreds of KB; this costs a few.
//! Secrets (the API token) must never reach this log.

use std::io::Write;

use log::{LevelFilter, Log, Metadata, Record};

use crate::util;

struct StderrLogger {
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Crate-internal module paths are noise to a router user; dependencies keep theirs.
        let target = record.target();
        let target = target.strip_prefix("nnc_agent::").unwrap_or(target);
        let line = format!(
            "{} {:<5} [{}] {}\n",
            util::rfc3339(util::now_ms()),
            record.level(),
            target,
            record.args()
        );
        // One write per line so concurrent threads never interleave inside a line.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

pub(crate) fn init(level: LevelFilter) {
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
