//! Paths under the data directory: every path the agent writes is made here.

use std::path::{Path, PathBuf};

use super::fetch::ArtifactDirs;

/// Paths under the data directory. Every path the agent writes is made here.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(super) base: PathBuf,
}

impl Layout {
    pub(crate) fn new(base: PathBuf) -> Layout {
        Layout { base }
    }

    pub(crate) fn state_db(&self) -> PathBuf {
        self.base.join("state.redb")
    }

    /// `{base}/features/{feature}/{version}`: binaries per version, so an update can roll back.
    pub(super) fn feature_version(&self, feature: &str, version: &str) -> PathBuf {
        self.features_dir().join(feature).join(version)
    }

    pub(super) fn artifact(&self, feature: &str, version: &str) -> ArtifactDirs {
        let dir = self.feature_version(feature, version);
        ArtifactDirs {
            download: dir.join("download"),
            bin: dir.join("bin"),
        }
    }

    pub(super) fn features_dir(&self) -> PathBuf {
        self.base.join("features")
    }

    pub(super) fn instance_dir(&self, id: &str) -> PathBuf {
        self.instances_dir().join(id)
    }

    pub(super) fn instances_dir(&self) -> PathBuf {
        self.base.join("instances")
    }

    /// An empty directory, root's: each service's root file system is mounted on it inside
    /// the service's own mount namespace (the host never sees anything there).
    pub(crate) fn sandbox_root(&self) -> PathBuf {
        self.base.join("rootfs")
    }

    /// Sets the modes that keep services out of what is not theirs, for systems where they
    /// share the agent's view of the file system: the data dir and `instances/` can be
    /// passed through but not listed, the state and the catalogue copies are root's alone.
    pub(crate) fn protect(&self) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let mode =
            |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        for (dir, m) in [
            (self.base.clone(), 0o711),
            (self.instances_dir(), 0o711),
            (self.features_dir(), 0o755),
            (self.base.join("catalogue"), 0o700),
            (self.sandbox_root(), 0o700),
        ] {
            match std::fs::DirBuilder::new().mode(m).create(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => mode(&dir, m)?,
            }
        }
        Ok(())
    }
}
