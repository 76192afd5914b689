//! Staging: the verified download becomes the binary — renamed, or safely extracted from its
//! archive — is checked against this machine's ELF header, and is put in place with one
//! `rename` (fsynced), so a crash never leaves a half-written binary where one is expected.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::catalogue::ArchiveKind;
use crate::code::Code;
use crate::store::Step;

use super::{Downloads, FetchRequest, StepError, io_step};
use crate::install::{archive, elf};

impl Downloads {
    /// Puts the verified download's binary at `staged`: a rename for a raw binary (whose
    /// hash is the download's), a safe extraction for an archive. Returns the binary's SHA-256.
    fn stage_binary(
        &self,
        req: &FetchRequest,
        part: &Path,
        staged: &Path,
        download_sha256: [u8; 32],
    ) -> Result<[u8; 32], StepError> {
        let asset = &req.asset;
        match (asset.archive, &asset.path) {
            (ArchiveKind::None, _) => fs::rename(part, staged)
                .map(|()| download_sha256)
                .map_err(|e| io_step(Step::Installing, staged, &e)),
            (kind, Some(member)) => {
                // `size` is the archive's, not what it unpacks to: only the operator's cap
                // bounds the extraction.
                archive::extract_member(part, kind, member, staged, self.cfg.max_bytes)
                    .map_err(|e| StepError::new(Step::Installing, e.code(), e.to_string()))
            }
            (_, None) => Err(StepError::new(
                Step::Installing,
                Code::ArchiveInvalid,
                "catalogue names no path inside the archive".into(),
            )),
        }
    }

    /// Stages the binary and checks it fits this machine; on failure nothing is left staged
    /// (and an archive download is removed: it would only be unpacked the same way again).
    /// Returns the binary's SHA-256.
    pub(super) fn stage_checked(
        &self,
        req: &FetchRequest,
        part: &Path,
        staged: &Path,
        download_sha256: [u8; 32],
    ) -> Result<[u8; 32], StepError> {
        let placed = self
            .stage_binary(req, part, staged, download_sha256)
            .and_then(|sha| {
                elf::check_file(staged, self.machine)
                    .map_err(|m| StepError::new(Step::Installing, Code::WrongArch, m))?;
                // A dynamically linked build whose loader or libraries this system lacks
                // (a glibc build on musl) is refused before anything is provisioned.
                elf::check_runtime(staged)
                    .map(|()| sha)
                    .map_err(|m| StepError::new(Step::Verifying, Code::WrongAbi, m))
            });
        if placed.is_err() {
            let _ = fs::remove_file(staged);
            if req.asset.archive != ArchiveKind::None {
                let _ = fs::remove_file(part);
            }
        }
        placed
    }
}

/// chmod 0755, fsync, rename over the destination, fsync the directory.
pub(super) fn install_file(staged: &Path, dest: &Path) -> std::io::Result<()> {
    let f = File::open(staged)?;
    f.set_permissions(fs::Permissions::from_mode(0o755))?;
    f.sync_all()?;
    fs::rename(staged, dest)?;
    if let Some(dir) = dest.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}
