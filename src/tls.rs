//! The one rustls crypto provider (downloads and the RouterOS API): ring's, except that P-256
//! (ECDSA signatures, and ECDHE after X25519) is RustCrypto's `p256`.
//!
//! Why: on aarch64 and x86_64 ring's P-256 carries a 148 KiB precomputed base-point table
//! (`ecp_nistz256_precomputed`, 5% of the aarch64 binary); `p256` costs a fraction of it
//! (aarch64 -173 KB in all). Verification handles public data only. `p256`'s ECDH is written
//! to be constant-time but has had no independent audit: it runs only with a server that
//! refuses X25519, with a fresh key per connection. What the agent downloads is checked by its
//! pinned or signed hash whatever TLS did; the RouterOS API's login does rely on it with a
//! router that lacks X25519. P-256 must be offered at all because a TLS 1.2 server accepts a
//! P-256 certificate only from a client that lists the curve.

use std::sync::{Arc, OnceLock};

use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rustls::crypto::{
    ActiveKeyExchange, CryptoProvider, GetRandomFailed, KeyProvider, SecureRandom, SharedSecret,
    SupportedKxGroup, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::SignatureVerificationAlgorithm;
use rustls::pki_types::{AlgorithmIdentifier, InvalidSignature, PrivateKeyDer, alg_id};
use rustls::{NamedGroup, PeerMisbehaved, SignatureScheme};
use webpki::ring as algs;

/// ECDSA over P-256 with the message hashed by `hash` (ring's SHA-256 or SHA-384).
#[derive(Debug)]
struct P256 {
    hash: &'static ring::digest::Algorithm,
    signature_alg_id: AlgorithmIdentifier,
}

impl SignatureVerificationAlgorithm for P256 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        // The SPKI's key as ring takes it: an uncompressed SEC1 point only (`from_sec1_bytes`
        // alone would take compressed ones too), on the curve. The signature is DER (r, s),
        // each checked to be in 1..n by `from_der`.
        let key = uncompressed_point(public_key)
            .and_then(|k| p256::ecdsa::VerifyingKey::from_sec1_bytes(k).ok())
            .ok_or(InvalidSignature)?;
        let signature =
            p256::ecdsa::Signature::from_der(signature).map_err(|_| InvalidSignature)?;
        let digest = ring::digest::digest(self.hash, message);
        key.verify_prehash(digest.as_ref(), &signature)
            .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ECDSA_P256
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.signature_alg_id
    }
}

static P256_SHA256: P256 = P256 {
    hash: &ring::digest::SHA256,
    signature_alg_id: alg_id::ECDSA_SHA256,
};
static P256_SHA384: P256 = P256 {
    hash: &ring::digest::SHA384,
    signature_alg_id: alg_id::ECDSA_SHA384,
};

/// rustls's list for ring, with the two P-256 entries replaced.
static ALGORITHMS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[
        &P256_SHA256,
        &P256_SHA384,
        algs::ECDSA_P384_SHA256,
        algs::ECDSA_P384_SHA384,
        algs::ED25519,
        algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
        algs::RSA_PKCS1_2048_8192_SHA256,
        algs::RSA_PKCS1_2048_8192_SHA384,
        algs::RSA_PKCS1_2048_8192_SHA512,
        algs::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
        algs::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
        algs::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
    ],
    mapping: &[
        // TLS 1.2 does not fix the curve by the scheme; TLS 1.3 does.
        (
            SignatureScheme::ECDSA_NISTP384_SHA384,
            &[algs::ECDSA_P384_SHA384, &P256_SHA384],
        ),
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[&P256_SHA256, algs::ECDSA_P384_SHA256],
        ),
        (SignatureScheme::ED25519, &[algs::ED25519]),
        (
            SignatureScheme::RSA_PSS_SHA512,
            &[algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PSS_SHA384,
            &[algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PSS_SHA256,
            &[algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA512,
            &[algs::RSA_PKCS1_2048_8192_SHA512],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA384,
            &[algs::RSA_PKCS1_2048_8192_SHA384],
        ),
        (
            SignatureScheme::RSA_PKCS1_SHA256,
            &[algs::RSA_PKCS1_2048_8192_SHA256],
        ),
    ],
};

#[derive(Debug)]
struct Random;

impl SecureRandom for Random {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        use ring::rand::SecureRandom as _;
        ring::rand::SystemRandom::new()
            .fill(buf)
            .map_err(|_| GetRandomFailed)
    }
}

/// ECDHE over P-256 (rustls's `secp256r1`).
#[derive(Debug)]
struct P256Kx;

struct P256Exchange {
    secret: p256::SecretKey,
    public: Vec<u8>,
}

impl SupportedKxGroup for P256Kx {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        // A uniformly random scalar in 1..n: 32 random bytes, drawn again in the rare case
        // (about 2^-32) that they are 0 or not below n.
        // A source that keeps failing that test is broken: give up after 100 draws, as ring does.
        let mut bytes = Wiped([0u8; 32]);
        let mut secret = None;
        for _ in 0..100 {
            Random.fill(&mut bytes.0)?;
            if let Ok(k) = p256::SecretKey::from_slice(&bytes.0) {
                secret = Some(k);
                break;
            }
        }
        let secret = secret.ok_or(GetRandomFailed)?;
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let public = secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec();
        Ok(Box::new(P256Exchange { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::secp256r1
    }
}

impl ActiveKeyExchange for P256Exchange {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, rustls::Error> {
        // TLS sends the uncompressed point only (RFC 8446 4.2.8.2); `from_sec1_bytes` refuses
        // the identity and points off the curve.
        let peer = uncompressed_point(peer)
            .and_then(|p| p256::PublicKey::from_sec1_bytes(p).ok())
            .ok_or(PeerMisbehaved::InvalidKeyShare)?;
        let shared = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
        Ok(SharedSecret::from(&shared.raw_secret_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::secp256r1
    }
}

/// `bytes` if they are an uncompressed SEC1 point of P-256 (0x04, X, Y): the only form TLS
/// key shares (RFC 8446 4.2.8.2) and ring's ECDSA keys take.
fn uncompressed_point(bytes: &[u8]) -> Option<&[u8]> {
    (bytes.len() == 65 && bytes[0] == 4).then_some(bytes)
}

/// Bytes wiped when dropped (the scalar's source).
struct Wiped([u8; 32]);

impl Drop for Wiped {
    fn drop(&mut self) {
        use p256::elliptic_curve::zeroize::Zeroize;
        self.0.zeroize();
    }
}

/// The agent presents no client certificate, so it loads no private key (ring's key
/// provider would link its P-256 signing, and with it the table).
#[derive(Debug)]
struct NoKeys;

impl KeyProvider for NoKeys {
    fn load_private_key(
        &self,
        _key: PrivateKeyDer<'static>,
    ) -> Result<Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        Err(rustls::Error::General(
            "client certificates are not supported".into(),
        ))
    }
}

/// The provider every TLS client of the agent uses (made once).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| {
        use rustls::crypto::ring::kx_group;
        Arc::new(CryptoProvider {
            cipher_suites: rustls::crypto::ring::DEFAULT_CIPHER_SUITES.to_vec(),
            kx_groups: vec![kx_group::X25519, &P256Kx, kx_group::SECP384R1],
            signature_verification_algorithms: ALGORITHMS,
            secure_random: &Random,
            key_provider: &NoKeys,
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// openssl makes a P-256 key and signs with it: (the key's SEC1 point, DER signatures of
    /// `msg` with SHA-256 and with SHA-384).
    fn openssl_signed(dir: &std::path::Path, msg: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        std::fs::write(dir.join("msg"), msg).unwrap();
        run(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "key.pem",
        ]);
        let spki = run(&["ec", "-in", "key.pem", "-pubout", "-outform", "DER"]);
        // The SPKI ends with the BIT STRING holding the uncompressed point (0x04 || X || Y).
        let point = spki[spki.len() - 65..].to_vec();
        assert_eq!(point[0], 4);
        let sha256 = run(&["dgst", "-sha256", "-sign", "key.pem", "msg"]);
        let sha384 = run(&["dgst", "-sha384", "-sign", "key.pem", "msg"]);
        (point, sha256, sha384)
    }

    /// (r, s) of a DER signature, re-encoded with s replaced by n - s.
    fn high_s(der: &[u8]) -> Vec<u8> {
        let sig = p256::ecdsa::Signature::from_der(der).unwrap();
        let (r, s) = sig.split_scalars();
        let flipped = p256::ecdsa::Signature::from_scalars(*r, -*s).unwrap();
        flipped.to_der().as_bytes().to_vec()
    }

    #[test]
    fn p256_signatures_from_openssl_verify_and_tampered_ones_do_not() {
        let dir = std::env::temp_dir().join(format!("nnc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let msg = b"the TLS 1.3 handshake transcript, or a certificate's TBS bytes";
        let (key, sha256, sha384) = openssl_signed(&dir, msg);
        let _ = std::fs::remove_dir_all(&dir);

        assert!(P256_SHA256.verify_signature(&key, msg, &sha256).is_ok());
        assert!(P256_SHA384.verify_signature(&key, msg, &sha384).is_ok());
        // ECDSA accepts both s and n - s (so does ring's verifier, which this replaces).
        assert!(
            P256_SHA256
                .verify_signature(&key, msg, &high_s(&sha256))
                .is_ok()
        );

        let refused = |alg: &P256, key: &[u8], msg: &[u8], sig: &[u8]| {
            assert!(alg.verify_signature(key, msg, sig).is_err(), "accepted");
        };
        // The wrong hash for the signature, a changed message, a changed signature.
        refused(&P256_SHA384, &key, msg, &sha256);
        refused(&P256_SHA256, &key, msg, &sha384);
        refused(&P256_SHA256, &key, b"another message", &sha256);
        let mut bent = sha256.clone();
        let last = bent.len() - 1;
        bent[last] ^= 1;
        refused(&P256_SHA256, &key, msg, &bent);
        // Not DER, a point off the curve, a compressed or truncated key.
        refused(&P256_SHA256, &key, msg, &sha256[..sha256.len() - 1]);
        let mut off_curve = key.clone();
        off_curve[64] ^= 1;
        refused(&P256_SHA256, &off_curve, msg, &sha256);
        refused(&P256_SHA256, &key[..33], msg, &sha256);
        // The same key compressed (0x02/0x03 and X): a valid point, refused like ring does.
        let mut compressed = key[..33].to_vec();
        compressed[0] = 2 + (key[64] & 1);
        assert!(p256::ecdsa::VerifyingKey::from_sec1_bytes(&compressed).is_ok());
        refused(&P256_SHA256, &compressed, msg, &sha256);
        refused(&P256_SHA256, &[], msg, &sha256);

        // ring's own verifier (what rustls used before) gives the same verdict on each case.
        type Case<'a> = (
            &'a P256,
            &'a dyn SignatureVerificationAlgorithm,
            &'a [u8],
            &'a [u8],
            &'a [u8],
        );
        let cases: [Case; 14] = [
            (&P256_SHA256, algs::ECDSA_P256_SHA256, &key, msg, &sha256),
            (&P256_SHA384, algs::ECDSA_P256_SHA384, &key, msg, &sha384),
            (
                &P256_SHA256,
                algs::ECDSA_P256_SHA256,
                &key,
                msg,
                &high_s(&sha256),
            ),
            (&P256_SHA384, algs::ECDSA_P256_SHA384, &key, msg, &sha256),
            (&P256_SHA256, algs::ECDSA_P256_SHA256, &key, msg, &sha384),
            (
                &P256_SHA256,
                algs::ECDSA_P256_SHA256,
                &key,
                b"another message",
                &sha256,
            ),
            (&P256_SHA256, algs::ECDSA_P256_SHA256, &key, msg, &bent),
            (
                &P256_SHA256,
                algs::ECDSA_P256_SHA256,
                &key,
                msg,
                &sha256[..sha256.len() - 1],
            ),
            (
                &P256_SHA256,
                algs::ECDSA_P256_SHA256,
                &off_curve,
                msg,
                &sha256,
            ),
            (
                &P256_SHA256,
                algs::ECDSA_P256_SHA256,
                &key[..33],
                msg,
                &sha256,
            ),
            (
                &P256_SHA256,
                algs::ECDSA_P256_SHA256,
                &compressed,
                msg,
                &sha256,
            ),
            (&P256_SHA256, algs::ECDSA_P256_SHA256, &[], msg, &sha256),
            (
                &P256_SHA384,
                algs::ECDSA_P256_SHA384,
                &compressed,
                msg,
                &sha384,
            ),
            (
                &P256_SHA384,
                algs::ECDSA_P256_SHA384,
                &key,
                msg,
                &high_s(&sha384),
            ),
        ];
        for (i, (ours, ring, key, msg, sig)) in cases.iter().enumerate() {
            assert_eq!(
                ours.verify_signature(key, msg, sig).is_ok(),
                ring.verify_signature(key, msg, sig).is_ok(),
                "case {i}"
            );
        }
    }

    #[test]
    fn p256_key_exchange_agrees_with_itself_and_refuses_bad_shares() {
        let (a, b) = (P256Kx.start().unwrap(), P256Kx.start().unwrap());
        assert_eq!(a.pub_key().len(), 65);
        assert_ne!(a.pub_key(), b.pub_key());
        let (a_pub, b_pub) = (a.pub_key().to_vec(), b.pub_key().to_vec());
        let ab = a.complete(&b_pub).unwrap();
        let ba = b.complete(&a_pub).unwrap();
        assert_eq!(ab.secret_bytes(), ba.secret_bytes());
        assert_eq!(ab.secret_bytes().len(), 32);

        let mut off_curve = b_pub.clone();
        off_curve[64] ^= 1;
        let mut compressed = b_pub[..33].to_vec();
        compressed[0] = 2 + (b_pub[64] & 1);
        for bad in [off_curve, compressed, vec![0u8], vec![4u8; 65], Vec::new()] {
            let c = P256Kx.start().unwrap();
            assert!(c.complete(&bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn the_provider_offers_x25519_first_and_loads_no_keys() {
        let p = provider();
        let groups: Vec<_> = p.kx_groups.iter().map(|g| g.name()).collect();
        assert_eq!(
            groups,
            [
                NamedGroup::X25519,
                NamedGroup::secp256r1,
                NamedGroup::secp384r1
            ]
        );
        assert!(
            p.signature_verification_algorithms
                .supported_schemes()
                .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
        );
        let mut buf = [0u8; 32];
        p.secure_random.fill(&mut buf).unwrap();
        assert_ne!(buf, [0u8; 32]);
    }
}
