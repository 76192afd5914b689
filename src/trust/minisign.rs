//! minisign detached signatures (`.minisig`), verification only. Four lines:
//!
//! ```text
//! untrusted comment: ...
//! base64( "ED" | keynum[8] | sig[64] )     sig over BLAKE2b-512(file)  (minisign ≥ 0.10 default)
//!      or "Ed" | keynum[8] | sig[64]       sig over the file itself    (minisign -l, legacy)
//! trusted comment: ...
//! base64( global_sig[64] )                 sig over sig[64] | the trusted comment's text
//! ```
//!
//! Public keys have signify's layout (`"Ed" | keynum[8] | key[32]`), so `signify::parse_public`
//! reads minisign `.pub` files as they are, and both kinds sit in `trust.trusted_keys`.

use blake2::{Blake2b512, Digest};

use super::TrustError;
use super::signify::{self, PublicKey};

const TRUSTED: &str = "trusted comment: ";

/// Whether a signature file is minisign's (it has a trusted comment line).
pub(crate) fn is_minisig(text: &str) -> bool {
    text.lines().nth(2).is_some_and(|l| l.starts_with(TRUSTED))
}

fn decode(line: Option<&str>, what: &str, len: usize) -> Result<Vec<u8>, TrustError> {
    let bad = |m: String| TrustError::Format(format!("minisign signature: {m}"));
    let line = line.ok_or_else(|| bad(format!("no {what} line")))?;
    let raw = crate::util::base64_decode(line.trim())
        .ok_or_else(|| bad(format!("the {what} is not base64")))?;
    if raw.len() != len {
        return Err(bad(format!(
            "the {what} has {} bytes, expected {len}",
            raw.len()
        )));
    }
    Ok(raw)
}

/// Checks a `.minisig` over `message` against `keys`, the trusted comment included; returns
/// the id of the key that signed.
pub(crate) fn verify(message: &[u8], text: &str, keys: &[PublicKey]) -> Result<String, TrustError> {
    let mut lines = text.lines();
    if !lines
        .next()
        .is_some_and(|l| l.starts_with("untrusted comment: "))
    {
        return Err(TrustError::Format(
            "minisign signature: the first line must start with 'untrusted comment: '".into(),
        ));
    }
    let raw = decode(lines.next(), "signature", 74)?;
    let trusted = lines
        .next()
        .and_then(|l| l.strip_prefix(TRUSTED))
        .ok_or_else(|| {
            TrustError::Format(format!(
                "minisign signature: the third line must start with '{TRUSTED}'"
            ))
        })?;
    let global = decode(lines.next(), "global signature", 64)?;

    let mut keynum = [0u8; 8];
    keynum.copy_from_slice(&raw[2..10]);
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&raw[10..74]);
    let key = signify::trusted_key(&keynum, keys)?;
    match &raw[..2] {
        b"ED" => signify::check(key, &Blake2b512::digest(message), &sig)?,
        b"Ed" => signify::check(key, message, &sig)?,
        _ => {
            return Err(TrustError::Format(
                "minisign signature: unknown algorithm (neither ED nor Ed)".into(),
            ));
        }
    }
    let mut covered = sig.to_vec();
    covered.extend_from_slice(trusted.as_bytes());
    let mut global_sig = [0u8; 64];
    global_sig.copy_from_slice(&global);
    signify::check(key, &covered, &global_sig).map_err(|_| {
        TrustError::Mismatch(format!(
            "the trusted comment signed by key {} was altered",
            key.id()
        ))
    })?;
    Ok(key.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blake2b_512_matches_rfc_7693() {
        // RFC 7693, Appendix A: BLAKE2b-512("abc").
        assert_eq!(
            crate::util::hex(&Blake2b512::digest(b"abc")),
            "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1\
             7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923"
        );
    }

    #[test]
    fn malformed_minisigs_are_errors_not_panics() {
        let (public, _) = signify::keygen("t").unwrap();
        let keys = [signify::parse_public(&public).unwrap()];
        for bad in [
            "",
            "untrusted comment: x\n",
            "untrusted comment: x\nRWQ=\ntrusted comment: t\nAAAA\n",
            "comment: x\nRWQ=\ntrusted comment: t\nAAAA\n",
        ] {
            assert!(verify(b"m", bad, &keys).is_err(), "{bad:?}");
        }
        assert!(is_minisig(
            "untrusted comment: x\nRWQ=\ntrusted comment: t\nAAAA\n"
        ));
        assert!(!is_minisig("untrusted comment: x\nRWQ=\n"));
    }
}
