//! Board profiles: what differs between routers (CPU target, where data lives, which interface
//! VLANs hang off, the VLAN pool, the cgroup root, resource defaults for services).
//!
//! The profiles in `board/` are compiled in, so `nnc-agent serve --board mt7621` works on the
//! router with nothing else installed; `--board FILE.toml` reads another one. A profile only
//! fills defaults: the config file and flags win.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;

const BOARDS: &[(&str, &str)] = &[
    ("x86_64-vm", include_str!("../board/x86_64-vm.toml")),
    ("aarch64-vm", include_str!("../board/aarch64-vm.toml")),
    ("mt7621", include_str!("../board/mt7621.toml")),
    ("ipq40xx", include_str!("../board/ipq40xx.toml")),
    ("ath79", include_str!("../board/ath79.toml")),
    (
        "mikrotik-arm64",
        include_str!("../board/mikrotik-arm64.toml"),
    ),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Board {
    #[serde(skip)]
    pub name: String,
    pub description: String,
    pub target: String,
    /// Catalogue architecture key.
    pub arch: String,
    pub data_dir: PathBuf,
    pub vlan: VlanProfile,
    pub cgroup: CgroupProfile,
    pub resources: Resources,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VlanProfile {
    pub parent: String,
    pub pool: [u16; 2],
    pub subnet_base: Ipv4Addr,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CgroupProfile {
    pub root: PathBuf,
}

/// Defaults for each service instance (a feature or the instance's settings may lower them).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Resources {
    pub memory_max: u64,
    pub pids_max: u32,
    /// `cpu.max` as the kernel writes it: "QUOTA PERIOD" in microseconds.
    pub cpu_max: String,
}

pub(crate) fn names() -> impl Iterator<Item = &'static str> {
    BOARDS.iter().map(|(n, _)| *n)
}

/// A built-in board by name, or a board file by path.
pub(crate) fn load(name_or_path: &str) -> Result<Board, String> {
    let (name, text) = match BOARDS.iter().find(|(n, _)| *n == name_or_path) {
        Some((n, t)) => ((*n).to_owned(), (*t).to_owned()),
        None if name_or_path.ends_with(".toml") => (
            name_or_path.to_owned(),
            std::fs::read_to_string(name_or_path)
                .map_err(|e| format!("cannot read board file {name_or_path}: {e}"))?,
        ),
        None => {
            return Err(format!(
                "unknown board '{name_or_path}' (built in: {})",
                names().collect::<Vec<_>>().join(", ")
            ));
        }
    };
    let mut board: Board =
        crate::util::from_toml(&text).map_err(|e| format!("board {name}: {}", e))?;
    board.name = name;
    validate(&board).map_err(|e| format!("board {}: {e}", board.name))?;
    Ok(board)
}

fn validate(b: &Board) -> Result<(), String> {
    if !crate::platform::ARCH_KEYS.contains(&b.arch.as_str()) {
        return Err(format!("arch '{}' is not a catalogue arch key", b.arch));
    }
    let [lo, hi] = b.vlan.pool;
    if lo == 0 || hi > 4094 || lo > hi {
        return Err(format!("vlan pool {lo}-{hi} must lie within 1-4094"));
    }
    if b.vlan.parent.is_empty() || b.vlan.parent.len() > 15 {
        return Err(format!(
            "vlan parent '{}' is not an interface name",
            b.vlan.parent
        ));
    }
    let parts: Vec<&str> = b.resources.cpu_max.split(' ').collect();
    if !matches!(parts.as_slice(), [q, p] if (q.parse::<u64>().is_ok() || *q == "max") && p.parse::<u64>().is_ok())
    {
        return Err(format!(
            "cpu_max '{}' is not \"QUOTA PERIOD\"",
            b.resources.cpu_max
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_board_file_is_built_in_and_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("board");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .trim_end_matches(".toml")
                    .to_owned()
            })
            .collect();
        on_disk.sort();
        let mut built_in: Vec<String> = names().map(str::to_owned).collect();
        built_in.sort();
        assert_eq!(on_disk, built_in);
        for name in names() {
            let b = load(name).unwrap();
            let expected_arch = b.target.split('-').next().unwrap();
            assert_eq!(
                b.arch, expected_arch,
                "{name}: target {} vs arch {}",
                b.target, b.arch
            );
        }
    }

    #[test]
    fn unknown_boards_and_bad_values_are_refused() {
        assert!(
            load("wrt54g")
                .unwrap_err()
                .contains("unknown board 'wrt54g'")
        );
        let dir = std::env::temp_dir().join(format!("nnc-board-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("b.toml");
        let text =
            include_str!("../board/mt7621.toml").replace("pool = [100, 199]", "pool = [100, 5000]");
        std::fs::write(&path, text).unwrap();
        assert!(
            load(path.to_str().unwrap())
                .unwrap_err()
                .contains("must lie within 1-4094")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
