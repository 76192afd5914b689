//! OpenBSD signify / OpenWrt usign keys and detached signatures (ed25519).
//!
//! Every file is two lines: `untrusted comment: ...` and base64 of a small struct:
//!
//! ```text
//! public key  "Ed" | keynum[8] | key[32]
//! signature   "Ed" | keynum[8] | sig[64]            (ed25519 over the message itself)
//! secret key  "Ed" "BK" | rounds u32 BE | salt[16] | checksum[8] | keynum[8] | key[64]
//! ```
//!
//! The checksum is the first 8 bytes of SHA-512 of the secret key. Only unencrypted secret
//! keys (`rounds` = 0, what `signify -G -n` writes) are read: the agent never holds a
//! passphrase. `keynum` is usign's key fingerprint (the name of files in `/etc/opkg/keys`).

use ed25519_compact::{KeyPair, PublicKey as EdPublic, SecretKey, Seed, Signature};

use super::TrustError;
use crate::util::{base64_decode, base64_encode};

const COMMENT: &str = "untrusted comment: ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PublicKey {
    pub keynum: [u8; 8],
    key: [u8; 32],
}

impl PublicKey {
    pub(crate) fn id(&self) -> String {
        crate::util::hex(&self.keynum)
    }
}

/// Splits a signify file into its comment and decoded body, checking the body's size and
/// algorithm tag.
fn body(text: &str, what: &str, len: usize) -> Result<(String, Vec<u8>), TrustError> {
    let mut lines = text.lines();
    let comment = lines
        .next()
        .and_then(|l| l.strip_prefix(COMMENT))
        .ok_or_else(|| {
            TrustError::Format(format!(
                "{what}: the first line must start with '{COMMENT}'"
            ))
        })?;
    let b64 = lines
        .next()
        .ok_or_else(|| TrustError::Format(format!("{what}: no base64 line after the comment")))?;
    let raw = base64_decode(b64.trim())
        .ok_or_else(|| TrustError::Format(format!("{what}: not base64")))?;
    if raw.len() != len {
        return Err(TrustError::Format(format!(
            "{what}: {} bytes, expected {len}",
            raw.len()
        )));
    }
    if &raw[..2] != b"Ed" {
        return Err(TrustError::Format(format!("{what}: not an Ed25519 {what}")));
    }
    Ok((comment.to_owned(), raw))
}

pub(crate) fn parse_public(text: &str) -> Result<PublicKey, TrustError> {
    let (_, raw) = body(text, "public key", 42)?;
    let mut keynum = [0u8; 8];
    keynum.copy_from_slice(&raw[2..10]);
    let mut key = [0u8; 32];
    key.copy_from_slice(&raw[10..42]);
    Ok(PublicKey { keynum, key })
}

/// A detached signature: the key it names and the signature bytes.
pub(crate) fn parse_signature(text: &str) -> Result<([u8; 8], [u8; 64]), TrustError> {
    let (_, raw) = body(text, "signature", 74)?;
    let mut keynum = [0u8; 8];
    keynum.copy_from_slice(&raw[2..10]);
    let mut sig = [0u8; 64];
    sig.copy_from_slice(&raw[10..74]);
    Ok((keynum, sig))
}

/// Checks `sig_text` over `message` against `keys`; returns the id of the key that signed.
pub(crate) fn verify(
    message: &[u8],
    sig_text: &str,
    keys: &[PublicKey],
) -> Result<String, TrustError> {
    let (keynum, sig) = parse_signature(sig_text)?;
    let key = trusted_key(&keynum, keys)?;
    check(key, message, &sig)?;
    Ok(key.id())
}

/// The trusted key a signature names, or an error listing the trusted ones.
pub(crate) fn trusted_key<'k>(
    keynum: &[u8; 8],
    keys: &'k [PublicKey],
) -> Result<&'k PublicKey, TrustError> {
    keys.iter()
        .find(|k| k.keynum == *keynum)
        .ok_or_else(|| TrustError::UntrustedKey {
            key: crate::util::hex(keynum),
            trusted: keys.iter().map(PublicKey::id).collect(),
        })
}

/// One ed25519 signature by `key` over `message`.
pub(crate) fn check(key: &PublicKey, message: &[u8], sig: &[u8; 64]) -> Result<(), TrustError> {
    let public = EdPublic::from_slice(&key.key)
        .map_err(|e| TrustError::Format(format!("key {}: {e}", key.id())))?;
    let signature =
        Signature::from_slice(sig).map_err(|e| TrustError::Format(format!("signature: {e}")))?;
    public.verify(message, &signature).map_err(|_| {
        TrustError::Mismatch(format!(
            "the signature by key {} does not match the data",
            key.id()
        ))
    })
}

/// A new key pair: (public key file, secret key file), unencrypted like `signify -G -n`.
pub(crate) fn keygen(comment: &str) -> Result<(String, String), TrustError> {
    let mut seed = [0u8; 32];
    let mut keynum = [0u8; 8];
    let mut salt = [0u8; 16];
    for buf in [&mut seed[..], &mut keynum[..], &mut salt[..]] {
        let hex = crate::util::random_hex(buf.len()).map_err(TrustError::Random)?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
    }
    let kp = KeyPair::from_seed(Seed::new(seed));
    let mut public = b"Ed".to_vec();
    public.extend_from_slice(&keynum);
    public.extend_from_slice(kp.pk.as_ref());
    let mut secret = b"EdBK".to_vec();
    secret.extend_from_slice(&0u32.to_be_bytes());
    secret.extend_from_slice(&salt);
    secret.extend_from_slice(&sha512(kp.sk.as_ref()).as_ref()[..8]);
    secret.extend_from_slice(&keynum);
    secret.extend_from_slice(kp.sk.as_ref());
    Ok((
        format!(
            "{COMMENT}{comment} public key\n{}\n",
            base64_encode(&public)
        ),
        format!(
            "{COMMENT}{comment} secret key\n{}\n",
            base64_encode(&secret)
        ),
    ))
}

/// Signs `message` with an unencrypted secret key file; returns the signature file, whose
/// comment names the public key file the way signify does.
pub(crate) fn sign(
    message: &[u8],
    secret_text: &str,
    pubkey_name: &str,
) -> Result<String, TrustError> {
    let (_, raw) = body(secret_text, "secret key", 104)?;
    if &raw[2..4] != b"BK" {
        return Err(TrustError::Format(
            "secret key: unknown key derivation".into(),
        ));
    }
    if raw[4..8] != [0, 0, 0, 0] {
        return Err(TrustError::Format("secret key: it is passphrase-protected; the agent reads only keys made with 'keygen' or 'signify -G -n'".into()));
    }
    let key = &raw[40..104];
    if sha512(key).as_ref()[..8] != raw[24..32] {
        return Err(TrustError::Format(
            "secret key: checksum mismatch (corrupt key file)".into(),
        ));
    }
    let sk =
        SecretKey::from_slice(key).map_err(|e| TrustError::Format(format!("secret key: {e}")))?;
    let sig = sk.sign(message, None);
    let mut out = b"Ed".to_vec();
    out.extend_from_slice(&raw[32..40]);
    out.extend_from_slice(sig.as_ref());
    Ok(format!(
        "{COMMENT}verify with {pubkey_name}\n{}\n",
        base64_encode(&out)
    ))
}

/// SHA-512 (ring's: rustls links it for TLS already).
fn sha512(data: &[u8]) -> ring::digest::Digest {
    ring::digest::digest(&ring::digest::SHA512, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_keys_sign_and_verify_and_refuse_tampering() {
        let (public, secret) = keygen("test").unwrap();
        let key = parse_public(&public).unwrap();
        let sig = sign(b"catalogue", &secret, "test.pub").unwrap();
        assert!(sig.starts_with("untrusted comment: verify with test.pub\n"));
        assert_eq!(
            verify(b"catalogue", &sig, std::slice::from_ref(&key)).unwrap(),
            key.id()
        );
        assert!(
            verify(b"catalogue!", &sig, std::slice::from_ref(&key))
                .unwrap_err()
                .to_string()
                .contains("does not match")
        );
        let (other, _) = keygen("other").unwrap();
        let e = verify(b"catalogue", &sig, &[parse_public(&other).unwrap()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a trusted key"), "{e}");
        assert!(
            parse_public("RWQ=\n")
                .unwrap_err()
                .to_string()
                .contains("untrusted comment")
        );
        assert!(
            parse_signature(&public)
                .unwrap_err()
                .to_string()
                .contains("expected 74")
        );
    }
}
