//! Why a key, signature, catalogue or pin was refused. Callers branch on the kind (`code`);
//! people read `Display`, which is the same text the agent always printed.

use std::fmt;
use std::path::PathBuf;

use crate::code::Code;
use crate::store::StoreError;

#[derive(Debug)]
pub(crate) enum TrustError {
    /// Not a key, signature or secret key file of the expected format.
    Format(String),
    /// Signed by a key that is not one of the trusted ones.
    UntrustedKey { key: String, trusted: Vec<String> },
    /// The signature does not verify: the data or the trusted comment changed.
    Mismatch(String),
    /// No signature where the policy requires one; names what was checked.
    Unsigned(String),
    /// The catalogue or its signature could not be read (only a missing signature is
    /// "unsigned": one that is there but unreadable refuses the catalogue).
    Unavailable(String),
    /// The catalogue itself is refused: its content, or a serial older than one in use.
    Refused(String),
    /// The agent's own state (serial, pins) could not be read or written.
    State(StoreError),
    /// A key or signature file could not be read or written (`nnc-agent catalogue`).
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// No randomness for a new key.
    Random(std::io::Error),
    /// What was being checked, around why it failed.
    In {
        what: String,
        source: Box<TrustError>,
    },
}

impl TrustError {
    /// `what` around this error: "{what}: {self}".
    pub(crate) fn within(self, what: impl Into<String>) -> TrustError {
        TrustError::In {
            what: what.into(),
            source: Box::new(self),
        }
    }

    /// The client-facing code of a signature check that failed this way.
    pub(crate) fn code(&self) -> Code {
        match self {
            TrustError::Format(_)
            | TrustError::UntrustedKey { .. }
            | TrustError::Mismatch(_)
            | TrustError::Unsigned(_) => Code::BadSignature,
            TrustError::Unavailable(_) => Code::SignatureUnavailable,
            TrustError::Refused(_) => Code::CatalogueRefused,
            TrustError::State(_) => Code::StateError,
            TrustError::Io { .. } | TrustError::Random(_) => Code::IoError,
            TrustError::In { source, .. } => source.code(),
        }
    }
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::Format(m)
            | TrustError::Mismatch(m)
            | TrustError::Unavailable(m)
            | TrustError::Refused(m) => f.write_str(m),
            TrustError::UntrustedKey { key, trusted } => {
                write!(f, "signed by key {key}, which is not a trusted key (")?;
                if trusted.is_empty() {
                    f.write_str("none configured)")
                } else {
                    write!(f, "{})", trusted.join(", "))
                }
            }
            TrustError::Unsigned(what) => write!(
                f,
                "{what}: no signature, and trust.require_signature is on (the default when trust.trusted_keys are set): sign it with a trusted key"
            ),
            TrustError::State(e) => write!(f, "{e}"),
            TrustError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            TrustError::Random(e) => write!(f, "no randomness: {e}"),
            TrustError::In { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for TrustError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TrustError::State(e) => Some(e),
            TrustError::Io { source, .. } | TrustError::Random(source) => Some(source),
            TrustError::In { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

impl From<StoreError> for TrustError {
    fn from(e: StoreError) -> Self {
        TrustError::State(e)
    }
}
