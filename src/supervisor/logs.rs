//! A service's stdout and stderr, kept in `{instance}/logs/service.log` and rotated by size:
//! when the file would pass `max_bytes`, it becomes `service.log.1` (replacing the previous
//! one) and a new file starts, so at most `2 × max_bytes` stay on flash. Lines also go to
//! subscribers of the `logs` subscription.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

const FILE: &str = "service.log";
const OLD: &str = "service.log.1";

pub(crate) struct RotatingLog {
    dir: PathBuf,
    max_bytes: u64,
    file: Option<File>,
    written: u64,
}

impl RotatingLog {
    pub(crate) fn open(dir: &Path, max_bytes: u64) -> std::io::Result<RotatingLog> {
        std::fs::create_dir_all(dir)?;
        let written = std::fs::metadata(dir.join(FILE)).map_or(0, |m| m.len());
        Ok(RotatingLog {
            dir: dir.to_owned(),
            max_bytes: max_bytes.max(1024),
            file: None,
            written,
        })
    }

    /// Appends one line (a newline is added).
    pub(crate) fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        let len = line.len() as u64 + 1;
        if self.written + len > self.max_bytes && self.written > 0 {
            self.file = None;
            std::fs::rename(self.dir.join(FILE), self.dir.join(OLD))?;
            self.written = 0;
        }
        if self.file.is_none() {
            self.file = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.join(FILE))?,
            );
        }
        if let Some(f) = self.file.as_mut() {
            // A single line longer than the whole budget is cut: the budget is the budget.
            let keep = usize::try_from(self.max_bytes.saturating_sub(1))
                .unwrap_or(usize::MAX)
                .min(line.len());
            let mut cut = keep;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            f.write_all(&line.as_bytes()[..cut])?;
            f.write_all(b"\n")?;
            self.written += cut as u64 + 1;
        }
        Ok(())
    }
}

/// The last `n` lines of an instance's log, across the rotation.
pub(crate) fn tail(dir: &Path, n: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for name in [OLD, FILE] {
        if let Ok(f) = File::open(dir.join(name)) {
            lines.extend(BufReader::new(f).lines().map_while(Result::ok));
        }
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_keeps_the_budget_and_tail_spans_both_files() {
        let dir = std::env::temp_dir().join(format!("nnc-logs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut log = RotatingLog::open(&dir, 1024).unwrap();
        for i in 0..200 {
            log.write_line(&format!("line {i:04} {}", "x".repeat(20)))
                .unwrap();
        }
        let size = |n: &str| std::fs::metadata(dir.join(n)).map_or(0, |m| m.len());
        assert!(
            size(FILE) <= 1024 && size(OLD) <= 1024,
            "{} {}",
            size(FILE),
            size(OLD)
        );
        // 33 lines fit a file; 200 = 6 × 33 + 2: the old file has 33, the current one 2.
        let t = tail(&dir, 30);
        assert_eq!(t.len(), 30);
        assert!(t.last().unwrap().starts_with("line 0199"));
        let numbers: Vec<u32> = t.iter().map(|l| l[5..9].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
        assert_eq!(
            tail(&dir, 10_000).len(),
            (size(FILE) + size(OLD)) as usize / 31
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
