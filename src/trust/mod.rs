//! Trust: signed catalogues and checksums files, the catalogue serial that must not go
//! backwards, and trust-on-first-use pins of verified digests.
//!
//! A catalogue `SRC` may come with `SRC.sig` (signify/usign format, see `signify.rs`) or
//! `SRC.minisig` (minisign, `minisign.rs`; tried only when there is no `.sig`). A signature
//! that is present must verify against a trusted key, and one that is there but unreadable
//! refuses the catalogue: only an absent one makes it "unsigned". With `require_signature`
//! (the default once trusted keys are configured) it must be present. Only a trusted
//! catalogue (signed by a trusted key, or any when no keys are configured) raises the stored
//! serial and becomes the "last trusted" copy under the data dir; when a later one fails (bad
//! or missing signature, lower serial, unreachable feed), the agent says why and keeps using
//! the last trusted copy.
//!
//! Pins: the first verified SHA-256 of each feature+version+arch is recorded; a later
//! catalogue or checksums file that names another digest for the same version is refused
//! (`PIN_MISMATCH`) until `unpinFeature` clears it.

mod error;
pub(crate) mod minisign;
pub(crate) mod signify;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::catalogue::Catalogue;
use crate::http_client::GetError;
use crate::store::Store;
pub(crate) use error::TrustError;

/// Who may sign catalogues and checksums files, and what is required of them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policy {
    /// Refuse a catalogue without a signature from a trusted key. On by default once
    /// `trusted_keys` names a key; only an explicit `require_signature = false` turns it off.
    pub require_signature: bool,
    /// Public keys (signify / usign format) from files or directories of files.
    pub trusted_keys: Vec<signify::PublicKey>,
    /// Accept a catalogue whose `serial` is lower than one already seen.
    pub allow_downgrade: bool,
    /// System packages a catalogue may have the package manager install (as root, with
    /// their maintainer scripts): `[trust] packages`; `None` is the built-in catalogue's.
    pub packages: Option<Vec<String>>,
}

impl Policy {
    /// Whether a catalogue may install the system package `name`.
    pub(crate) fn package_allowed(&self, name: &str) -> bool {
        match &self.packages {
            None => name == "tor",
            Some(list) => list.iter().any(|p| p == name),
        }
    }
}

/// Where the catalogue comes from and what it must be to be used: `--catalogue` (none: the
/// built-in one), the trust policy, and the HTTP settings it is fetched with.
#[derive(Debug, Clone, Default)]
pub(crate) struct Feed {
    pub source: Option<String>,
    pub policy: Policy,
    pub http: crate::http_client::Settings,
    /// Where release digests are read (`digest: "github"` assets).
    pub github: crate::github::Settings,
}

/// `nnc-agent catalogue keygen|sign|verify`, for feed publishers.
#[derive(Debug)]
pub(crate) enum Command {
    Keygen {
        public: PathBuf,
        secret: PathBuf,
        comment: String,
    },
    Sign {
        secret: PathBuf,
        file: PathBuf,
        sig: PathBuf,
    },
    Verify {
        public: PathBuf,
        file: PathBuf,
        sig: PathBuf,
    },
}

const SERIAL_KEY: &str = "catalogue/serial";
const CATALOGUE_CAP: u64 = 4 << 20;
const SIGNATURE_CAP: u64 = 4096;

/// Reads `what` (for messages) from a URL or a file, at most `cap` bytes.
fn read_source(
    what: &str,
    src: &str,
    http: &crate::http_client::Settings,
    cap: u64,
) -> Result<Vec<u8>, GetError> {
    let (absent, message) = if src.starts_with("http://") || src.starts_with("https://") {
        let agent = crate::http_client::agent(http);
        match crate::http_client::get_small(&agent, src, cap) {
            Ok(body) => return Ok(body),
            Err(e) => (
                matches!(e, GetError::NotFound(_)),
                format!("cannot load {what}: {e}"),
            ),
        }
    } else {
        let read =
            std::fs::File::open(src).map_err(|e| (e.kind() == ErrorKind::NotFound, e.to_string()));
        match read.and_then(|f| crate::http_client::read_capped(f, cap).map_err(|e| (false, e))) {
            Ok(body) => return Ok(body),
            Err((absent, e)) => (absent, format!("cannot read {what} {src}: {e}")),
        }
    };
    Err(if absent {
        GetError::NotFound(message)
    } else {
        GetError::Failed(message)
    })
}

/// The detached signature next to catalogue `src`: `SRC.sig`, else `SRC.minisig`. `Ok(None)`
/// only when neither is there (no such file, HTTP 404/410). One that is there but cannot be
/// read (I/O or server error, timeout, over its cap, not text) refuses the catalogue instead
/// of making it "unsigned", and a bad `.sig` never falls back to the `.minisig`: otherwise
/// whoever can break the signature's download could strip it.
fn read_signature(
    src: &str,
    http: &crate::http_client::Settings,
) -> Result<Option<String>, TrustError> {
    for ext in ["sig", "minisig"] {
        let path = format!("{src}.{ext}");
        match read_source("catalogue signature", &path, http, SIGNATURE_CAP) {
            Ok(bytes) => {
                return String::from_utf8(bytes).map(Some).map_err(|_| {
                    TrustError::Format(format!("catalogue {src}: signature {path} is not text (not UTF-8); the catalogue is refused"))
                });
            }
            Err(GetError::NotFound(_)) => {}
            Err(GetError::Failed(e)) => {
                return Err(TrustError::Unavailable(format!(
                    "catalogue {src}: {e}; a signature that is there but unreadable refuses the catalogue (only a missing one counts as unsigned): fix the signature or its server"
                )));
            }
        }
    }
    Ok(None)
}

/// A detached signature of either format (told apart by its content) over `bytes`; the id of
/// the trusted key that made it.
pub(crate) fn verify_detached(
    bytes: &[u8],
    sig: &str,
    keys: &[signify::PublicKey],
) -> Result<String, TrustError> {
    if minisign::is_minisig(sig) {
        minisign::verify(bytes, sig, keys)
    } else {
        signify::verify(bytes, sig, keys)
    }
}

/// Checks a document's detached signature under the policy; `Ok(None)` = unsigned, allowed.
pub(crate) fn check_signature(
    what: &str,
    bytes: &[u8],
    sig: Option<&str>,
    trust: &Policy,
    required: bool,
) -> Result<Option<String>, TrustError> {
    match sig {
        Some(sig) => verify_detached(bytes, sig, &trust.trusted_keys)
            .map(Some)
            .map_err(|e| e.within(format!("{what}: bad signature"))),
        None if required => Err(TrustError::Unsigned(what.to_owned())),
        None => Ok(None),
    }
}

/// One candidate catalogue judged under the policy (signature, then content, then serial).
fn judge(
    src: &str,
    bytes: &[u8],
    sig: Option<&str>,
    policy: &Policy,
    store: &Store,
) -> Result<Catalogue, TrustError> {
    let signed_by = check_signature(
        &format!("catalogue {src}"),
        bytes,
        sig,
        policy,
        policy.require_signature,
    )?;
    let mut catalogue =
        Catalogue::parse(bytes, src).map_err(|e| TrustError::Refused(e.to_string()))?;
    catalogue.signed_by = signed_by;
    let seen = store
        .trust_value(SERIAL_KEY)?
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if catalogue.serial < seen && !policy.allow_downgrade {
        return Err(TrustError::Refused(format!(
            "catalogue {src}: serial {} is older than serial {seen} already in use (a replayed or rolled-back feed?); set trust.allow_downgrade to accept it",
            catalogue.serial
        )));
    }
    Ok(catalogue)
}

fn last_trusted(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("catalogue");
    (
        dir.join("last-trusted.json"),
        dir.join("last-trusted.json.sig"),
    )
}

/// Whether an accepted catalogue is trusted enough to raise the stored serial and become the
/// last trusted copy: signed by a trusted key, or any catalogue when no keys are configured
/// (then the source itself is what is trusted). An unsigned one accepted only because
/// `require_signature = false` must not, or it could lock the real signed feed out as a
/// "downgrade".
fn raises_serial(catalogue: &Catalogue, trust: &Policy) -> bool {
    catalogue.signed_by.is_some() || trust.trusted_keys.is_empty()
}

/// Reads the configured catalogue from its source and judges it under the trust policy; a
/// trusted one (`raises_serial`) raises the stored serial and becomes the last trusted copy.
pub(crate) fn fresh_catalogue(
    feed: &Feed,
    store: &Store,
    data_dir: &Path,
) -> Result<Catalogue, TrustError> {
    let Some(src) = feed.source.as_deref() else {
        return Catalogue::builtin().map_err(|e| TrustError::Refused(e.to_string()));
    };
    let bytes = read_source("catalogue", src, &feed.http, CATALOGUE_CAP)
        .map_err(|e| TrustError::Unavailable(e.to_string()))?;
    let sig = read_signature(src, &feed.http)?;
    let catalogue = judge(src, &bytes, sig.as_deref(), &feed.policy, store)?;
    let serial = catalogue.serial;
    if !raises_serial(&catalogue, &feed.policy) {
        log::warn!(target: "api", "catalogue {src} (serial {serial}) is unsigned and accepted only because trust.require_signature = false; it does not raise the stored serial nor replace the last trusted copy");
        return Ok(catalogue);
    }
    store.put_trust_value(SERIAL_KEY, &json!(serial))?;
    let (copy, copy_sig) = last_trusted(data_dir);
    let saved = std::fs::create_dir_all(copy.parent().unwrap_or(data_dir))
        .and_then(|()| crate::util::write_atomic(&copy, &bytes))
        .and_then(|()| match &sig {
            Some(s) => crate::util::write_atomic(&copy_sig, s.as_bytes()),
            None => std::fs::remove_file(&copy_sig).or(Ok(())),
        });
    if let Err(e) = saved {
        log::warn!(target: "api", "cannot keep a copy of the trusted catalogue: {e}");
    }
    if let Some(k) = &catalogue.signed_by {
        log::info!(target: "api", "catalogue {src} (serial {serial}) signed by trusted key {k}");
    }
    Ok(catalogue)
}

/// Loads the configured catalogue under the trust policy at start, falling back to the last
/// trusted copy (with a warning saying why) when the fresh one is refused or unreachable. The
/// copy is judged by the same rules (its signature read the same way).
pub(crate) fn load_catalogue(
    feed: &Feed,
    store: &Store,
    data_dir: &Path,
) -> Result<Catalogue, TrustError> {
    if !feed.policy.require_signature && !feed.policy.trusted_keys.is_empty() {
        log::warn!(target: "api", "trust.require_signature = false: unsigned catalogues are accepted although trust.trusted_keys are configured (they never raise the stored serial)");
    }
    match fresh_catalogue(feed, store, data_dir) {
        Ok(catalogue) => Ok(catalogue),
        Err(why) => {
            let Some(src) = feed.source.as_deref() else {
                return Err(why);
            };
            let (copy, _) = last_trusted(data_dir);
            let Ok(bytes) = std::fs::read(&copy) else {
                return Err(why);
            };
            let source = format!("last trusted copy of {src}");
            let catalogue = read_signature(&copy.display().to_string(), &feed.http)
                .and_then(|sig| judge(&source, &bytes, sig.as_deref(), &feed.policy, store))
                .map_err(|e| {
                    TrustError::Refused(format!(
                        "{why}; and the last trusted copy is no longer acceptable: {e}"
                    ))
                })?;
            log::error!(target: "api", "{why}; keeping the last trusted catalogue (serial {})", catalogue.serial);
            Ok(catalogue)
        }
    }
}

/// The TOFU key of an artifact (`feature/version/arch`).
fn pin_key(artifact: &str) -> String {
    format!("tofu/{artifact}")
}

/// The digest first verified for this artifact, if any.
pub(crate) fn pinned(store: &Store, artifact: &str) -> Result<Option<String>, TrustError> {
    Ok(store
        .trust_value(&pin_key(artifact))?
        .and_then(|v| v.get("sha256").and_then(|s| s.as_str()).map(str::to_owned)))
}

pub(crate) fn pin(store: &Store, artifact: &str, sha256: &str) -> Result<(), TrustError> {
    Ok(store.put_trust_value(
        &pin_key(artifact),
        &json!({ "sha256": sha256, "at": crate::util::now_ms() }),
    )?)
}

/// Clears the pins of a feature (one version, or all); returns how many went.
pub(crate) fn unpin(
    store: &Store,
    feature: &str,
    version: Option<&str>,
) -> Result<usize, TrustError> {
    let prefix = match version {
        Some(v) => format!("tofu/{feature}/{v}/"),
        None => format!("tofu/{feature}/"),
    };
    Ok(store.remove_trust_prefix(&prefix)?)
}

/// `nnc-agent catalogue keygen|sign|verify`.
pub(crate) fn command(c: Command) -> Result<String, TrustError> {
    let io = |p: &Path| {
        let path = p.to_owned();
        move |source| TrustError::Io { path, source }
    };
    let read = |p: &Path| std::fs::read(p).map_err(io(p));
    let text = |p: &Path| read(p).map(|b| String::from_utf8_lossy(&b).into_owned());
    match c {
        Command::Keygen {
            public,
            secret,
            comment,
        } => {
            let (pk, sk) = signify::keygen(&comment)?;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&secret)
                .map_err(io(&secret))?;
            f.write_all(sk.as_bytes()).map_err(io(&secret))?;
            std::fs::write(&public, pk).map_err(io(&public))?;
            let key = signify::parse_public(&text(&public)?)?;
            Ok(format!(
                "key {} written to {} and {}\n",
                key.id(),
                public.display(),
                secret.display()
            ))
        }
        Command::Sign { secret, file, sig } => {
            let name = secret
                .file_name()
                .map(|n| n.to_string_lossy().replace(".sec", ".pub"))
                .unwrap_or_default();
            let s = signify::sign(&read(&file)?, &text(&secret)?, &name)?;
            std::fs::write(&sig, s).map_err(io(&sig))?;
            Ok(format!("signature written to {}\n", sig.display()))
        }
        Command::Verify { public, file, sig } => {
            let key = signify::parse_public(&text(&public)?)?;
            let id = verify_detached(&read(&file)?, &text(&sig)?, &[key])?;
            Ok(format!("Signature Verified (key {id})\n"))
        }
    }
}
