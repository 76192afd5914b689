//! TLS for the RouterOS API (port 8729) with rustls. RouterOS routers usually present a
//! self-signed certificate, so the usual trust is a pinned SHA-256 fingerprint of it
//! (`tls_fingerprint` in the router's config); a CA file works for routers with a proper
//! chain. RouterOS's certificate-less anonymous-DH mode is not supported by rustls: give the
//! API service a certificate (`/ip service set api-ssl certificate=...`).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};
use sha2::{Digest, Sha256};

use super::api::{ApiError, Socket, TlsTrust};

/// Accepts exactly the certificate whose SHA-256 is pinned (signatures still checked).
#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if crate::util::ct_eq(&seen, &self.sha256) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "router certificate sha256 {} is not the pinned {}",
                crate::util::hex(&seen),
                crate::util::hex(&self.sha256)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn tls_err(e: impl std::fmt::Display) -> ApiError {
    ApiError::Io(format!("TLS: {e}"))
}

/// TLS over `socket`, the handshake done (within the socket's deadline: connect and login are
/// one command).
pub(super) fn wrap(
    mut socket: Socket,
    host: &str,
    trust: &TlsTrust,
) -> Result<StreamOwned<ClientConnection, Socket>, ApiError> {
    let provider = crate::tls::provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let config = match trust {
        TlsTrust::Fingerprint(sha256) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                sha256: *sha256,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        TlsTrust::CaFile(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| tls_err(format!("cannot read {}: {e}", path.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            for item in ureq::tls::parse_pem(&pem) {
                if let Ok(ureq::tls::PemItem::Certificate(c)) = item {
                    roots
                        .add(CertificateDer::from(c.der().to_vec()))
                        .map_err(tls_err)?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    let name = ServerName::try_from(host.to_owned()).map_err(tls_err)?;
    let mut conn = ClientConnection::new(Arc::new(config), name).map_err(tls_err)?;
    // Finish the handshake now so a wrong certificate fails the connect, not the first command.
    while conn.is_handshaking() {
        conn.complete_io(&mut socket).map_err(tls_err)?;
    }
    Ok(StreamOwned::new(conn, socket))
}
