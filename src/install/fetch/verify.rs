//! Verification: the digest a download must have (the catalogue's pin, a checksums file and
//! its signature), the trust-on-first-use pin of what was verified, and file hashing.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::catalogue::Asset;
use crate::code::Code;
use crate::store::Step;
use crate::util;

use super::{CHECKSUMS_CAP, Downloads, StepError};
use crate::install::checksums;

impl Downloads {
    /// `+signature:KEY` when the asset's checksums file is signed by a trusted key, `""` when
    /// it is not signed; an error when the signature is missing or bad.
    fn checksums_signer(&self, asset: &Asset, url: &str, text: &str) -> Result<String, StepError> {
        let Some(sig_url) = &asset.checksums_sig else {
            return Ok(String::new());
        };
        let sig = crate::http_client::get_small(self.agent.get(), sig_url, 4096).map_err(|e| {
            StepError::new(Step::Verifying, Code::SignatureUnavailable, e.to_string())
        })?;
        let key = crate::trust::check_signature(
            &format!("checksums file {url}"),
            text.as_bytes(),
            Some(&String::from_utf8_lossy(&sig)),
            &self.trust,
            true,
        )
        .map_err(|e| StepError::new(Step::Verifying, e.code(), e.to_string()))?;
        Ok(key.map(|k| format!("+signature:{k}")).unwrap_or_default())
    }

    /// The digest the download must have, and what vouches for it.
    pub(super) fn expected_digest(&self, asset: &Asset) -> Result<([u8; 32], String), StepError> {
        let pinned = asset.sha256.as_deref().and_then(util::parse_sha256_hex);
        let listed = match &asset.checksums {
            None => None,
            Some(url) => {
                let body = crate::http_client::get_small(self.agent.get(), url, CHECKSUMS_CAP)
                    .map_err(|e| {
                        StepError::new(Step::Verifying, Code::ChecksumsUnavailable, e.to_string())
                    })?;
                let text = String::from_utf8(body).map_err(|_| {
                    StepError::new(
                        Step::Verifying,
                        Code::ChecksumsInvalid,
                        format!("checksums file {url} is not text"),
                    )
                })?;
                let digest = checksums::lookup(&text, asset.file_name()).map_err(|e| {
                    let code = match e {
                        checksums::ChecksumsError::NotListed { .. } => Code::ChecksumNotListed,
                        _ => Code::ChecksumsInvalid,
                    };
                    StepError::new(Step::Verifying, code, format!("{e} ({url})"))
                })?;
                let sig = self.checksums_signer(asset, url, &text)?;
                Some((digest, format!("checksums{sig}")))
            }
        };
        // GitHub's digest stands beside a checksums file like a second one: both must agree.
        let listed = match (listed, asset.digest.as_deref()) {
            (listed, Some("github")) => {
                let g = self.github_digest(asset)?;
                match listed {
                    Some((l, _)) if l != g => {
                        return Err(StepError::new(
                            Step::Verifying,
                            Code::ChecksumMismatch,
                            format!(
                                "the checksums file lists {} for {} but GitHub's release lists {}",
                                util::hex(&l),
                                asset.file_name(),
                                util::hex(&g)
                            ),
                        ));
                    }
                    Some((l, by)) => Some((l, format!("{by}+github-digest"))),
                    None => Some((g, "github-digest".to_owned())),
                }
            }
            (listed, _) => listed,
        };
        match (pinned, listed) {
            (Some(p), Some((l, by))) if p != l => Err(StepError::new(
                Step::Verifying,
                Code::ChecksumMismatch,
                format!(
                    "the catalogue pins {} for {} but {by} lists {}",
                    util::hex(&p),
                    asset.file_name(),
                    util::hex(&l)
                ),
            )),
            (Some(p), Some((_, by))) => Ok((p, format!("pin+{by}"))),
            (Some(p), None) => Ok((p, "pin".into())),
            (None, Some((l, by))) => Ok((l, by)),
            (None, None) => Err(StepError::new(
                Step::Verifying,
                Code::ChecksumMissing,
                "the catalogue gives no way to verify this asset".into(),
            )),
        }
    }

    /// The SHA-256 GitHub's release lists for the asset.
    fn github_digest(&self, asset: &Asset) -> Result<[u8; 32], StepError> {
        use crate::github::Error as E;
        crate::github::asset_digest(self.agent.get(), &self.github, &asset.url).map_err(|e| {
            let code = match e {
                E::NotARelease(_) | E::Invalid(_) => Code::ChecksumsInvalid,
                E::Unavailable(_) => Code::ChecksumsUnavailable,
                E::RateLimited(_) => Code::UpstreamRateLimited,
                E::NotListed(_) => Code::ChecksumNotListed,
                E::NoDigest(_) => Code::ChecksumMissing,
            };
            StepError::new(Step::Verifying, code, e.to_string())
        })
    }

    /// Refuses a digest that differs from the one first verified for this artifact; returns
    /// whether a pin was there (`+tofu` is added to `verified_by` then).
    pub(super) fn check_pin(
        &self,
        id: &str,
        expected: &[u8; 32],
        verified_by: &mut String,
    ) -> Result<bool, StepError> {
        let first = crate::trust::pinned(&self.store, id)
            .map_err(|e| StepError::new(Step::Verifying, e.code(), e.to_string()))?;
        let Some(p) = first else {
            return Ok(false);
        };
        if p != util::hex(expected) {
            return Err(StepError::new(
                Step::Verifying,
                Code::PinMismatch,
                format!(
                    "{id} was first verified as sha256 {p}; {verified_by} now says {}: refused until an operator clears the pin (unpinFeature)",
                    util::hex(expected)
                ),
            ));
        }
        verified_by.push_str("+tofu");
        Ok(true)
    }
}

pub(super) struct HashWriter<'a>(pub &'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn hash_file(path: &Path) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut File::open(path)?, &mut HashWriter(&mut hasher))?;
    Ok(hasher.finalize().into())
}
