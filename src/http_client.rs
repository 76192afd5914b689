//! The one HTTP client configuration (ureq) used for catalogues, checksum files and binaries.
//!
//! TLS roots come from the system bundle (OpenWrt's `ca-bundle`, Debian's `ca-certificates`)
//! instead of a compiled-in copy: it saves ~250 KB and follows the router's own updates.
//! No `Accept-Encoding`: a transparently gunzipped body would make `Range` offsets wrong.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

/// HTTP client and download-manager tuning (`[download]`). Defaults suit a home router on a slow uplink.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// TCP connect (and TLS handshake) budget.
    pub connect_timeout: Duration,
    /// A read that brings no byte for this long counts as a stall; the download resumes.
    pub stall_timeout: Duration,
    /// Upper bound for any single download and for what an archive unpacks to; a catalogue's
    /// `size` can only lower it for the download, never raise it.
    pub max_bytes: u64,
    /// Failed attempts in a row (without progress) before the install fails.
    pub retries: u32,
    /// First pause between attempts; doubles up to 30 s.
    pub retry_delay: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(30),
            max_bytes: 256 << 20,
            retries: 5,
            retry_delay: Duration::from_secs(1),
        }
    }
}

/// Where routers and Debian keep the PEM bundle of trusted roots.
const CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/ssl/cert.pem",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The system's trusted roots, read and parsed once, at the first HTTP client made (parsing
/// a CA bundle is a third of the agent's start-up work, so it is not done before serving).
fn system_roots() -> Arc<Vec<ureq::tls::Certificate<'static>>> {
    static ROOTS: std::sync::OnceLock<Arc<Vec<ureq::tls::Certificate<'static>>>> =
        std::sync::OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| Arc::new(read_system_roots())))
}

/// `SSL_CERT_FILE` (the variable OpenSSL, curl and Go read) names the bundle instead: a
/// router owner's own CA, or a test's. It is then the only one read.
fn bundle_paths() -> Vec<String> {
    match std::env::var("SSL_CERT_FILE") {
        Ok(p) if !p.is_empty() => vec![p],
        _ => CA_BUNDLES.map(String::from).to_vec(),
    }
}

fn read_system_roots() -> Vec<ureq::tls::Certificate<'static>> {
    let paths = bundle_paths();
    for path in &paths {
        let pem = match std::fs::read(path) {
            Ok(pem) => pem,
            Err(e) if paths.len() == 1 => {
                log::error!(target: "download-manager", "SSL_CERT_FILE {path}: {e}");
                continue;
            }
            Err(_) => continue,
        };
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if !certs.is_empty() {
            log::debug!(target: "download-manager", "{} trusted roots from {path}", certs.len());
            return certs;
        }
    }
    log::error!(
        target: "download-manager",
        "no trusted root certificates in {}: https downloads fail until a CA bundle is installed and the agent restarted",
        paths.join(", ")
    );
    Vec::new()
}

/// What is wrong with a server's certificate, when that is why a request failed and trying
/// again cannot mend it (curl and browsers do not either), so a download fails at once. Not a
/// certificate outside its validity period: a router without a real-time clock boots with a
/// stale time, and its downloads must outlast the NTP sync.
pub(crate) fn certificate_refused(e: &ureq::Error) -> Option<String> {
    use rustls::CertificateError as C;
    let tls = match e {
        ureq::Error::Rustls(r) => r,
        ureq::Error::Io(io) => io.get_ref()?.downcast_ref::<rustls::Error>()?,
        _ => return None,
    };
    match tls {
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => None,
        rustls::Error::InvalidCertificate(_) if system_roots().is_empty() => Some(format!(
            "no trusted root certificates were loaded ({}; see the agent's log), so no https \
             server can be trusted: install a CA bundle and restart the agent",
            bundle_paths().join(", ")
        )),
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
            Some(format!("the server's TLS certificate is refused ({tls})"))
        }
        _ => None,
    }
}

/// An HTTP client made at its first use (off the runtime thread: downloads run blocking).
pub(crate) struct LazyAgent {
    cfg: Settings,
    agent: std::sync::OnceLock<ureq::Agent>,
}

impl LazyAgent {
    pub(crate) fn new(cfg: Settings) -> LazyAgent {
        LazyAgent {
            cfg,
            agent: std::sync::OnceLock::new(),
        }
    }

    pub(crate) fn get(&self) -> &ureq::Agent {
        self.agent.get_or_init(|| agent(&self.cfg))
    }
}

fn tls() -> ureq::tls::TlsConfig {
    ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::Specific(system_roots()))
        .unversioned_rustls_crypto_provider(crate::tls::provider())
        .build()
}

/// ureq's builder with small buffers. Its defaults (128 KiB in, 128 KiB out, zero-filled
/// when a connection first uses them, and once more for TLS's own transport) cost a
/// download 512 KiB of RSS over https; a router has little, and 32 KiB reads are not
/// slower to hash. A response header must fit the input buffer.
pub(crate) fn builder() -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    ureq::Agent::config_builder()
        .input_buffer_size(32 * 1024)
        .max_response_header_size(32 * 1024)
        .output_buffer_size(16 * 1024)
}

pub(crate) fn agent(cfg: &Settings) -> ureq::Agent {
    let tls = tls();
    builder()
        .http_status_as_error(false)
        .timeout_connect(Some(cfg.connect_timeout))
        .timeout_recv_response(Some(cfg.stall_timeout))
        .timeout_per_read(Some(cfg.stall_timeout))
        .max_redirects(10)
        .user_agent(concat!("nnc-agent/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build()
        .into()
}

/// A client of an agent (the CLI; https through a reverse proxy too): never through a proxy
/// from the environment (it would see the token).
pub(crate) fn agent_direct() -> ureq::Agent {
    builder()
        .proxy(None)
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        // `updateInstance` answers when the new version runs or the old one is back.
        .timeout_global(Some(Duration::from_secs(900)))
        .user_agent(concat!("nnc-agent/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls())
        .build()
        .into()
}

/// Why a small GET brought no document. Only `NotFound` (404/410) means "it is not there";
/// callers that treat a missing document as allowed (an unsigned catalogue) must treat every
/// other failure as a refusal.
#[derive(Debug)]
pub(crate) enum GetError {
    NotFound(String),
    Failed(String),
}

impl std::fmt::Display for GetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GetError::NotFound(m) | GetError::Failed(m) => f.write_str(m),
        }
    }
}

/// GETs a small document (catalogue, checksums file, signature), refusing more than `cap` bytes.
pub(crate) fn get_small(agent: &ureq::Agent, url: &str, cap: u64) -> Result<Vec<u8>, GetError> {
    get_small_within(agent, url, cap, Duration::from_secs(3600))
}

/// `get_small` that gives up after `deadline` in all, however slowly the server sends.
pub(crate) fn get_small_within(
    agent: &ureq::Agent,
    url: &str,
    cap: u64,
    deadline: Duration,
) -> Result<Vec<u8>, GetError> {
    let resp = agent
        .get(url)
        .config()
        .timeout_global(Some(deadline))
        .build()
        .call()
        .map_err(|e| GetError::Failed(format!("GET {url}: {e}")))?;
    let status = resp.status();
    if status == 404 || status == 410 {
        return Err(GetError::NotFound(format!(
            "GET {url}: server answered {status}"
        )));
    }
    if status != 200 {
        return Err(GetError::Failed(format!(
            "GET {url}: server answered {status}"
        )));
    }
    read_capped(resp.into_body().into_reader(), cap)
        .map_err(|e| GetError::Failed(format!("GET {url}: {e}")))
}

/// Reads at most `cap` bytes; more is an error, not a truncation.
pub(crate) fn read_capped(r: impl Read, cap: u64) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    r.take(cap + 1)
        .read_to_end(&mut body)
        .map_err(|e| e.to_string())?;
    if body.len() as u64 > cap {
        return Err(format!("larger than {cap} bytes"));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError as C;

    /// A TLS failure as ureq reports it (rustls's error inside an io::Error).
    fn failed(e: rustls::Error) -> ureq::Error {
        ureq::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    #[test]
    fn a_refused_certificate_is_final_but_a_clock_before_ntp_is_not() {
        for refused in [
            rustls::Error::InvalidCertificate(C::UnknownIssuer),
            rustls::Error::InvalidCertificate(C::NotValidForName),
            rustls::Error::InvalidCertificate(C::BadSignature),
            rustls::Error::NoCertificatesPresented,
        ] {
            let why = certificate_refused(&failed(refused.clone()));
            assert!(why.is_some(), "{refused:?} is retried");
        }
        for retried in [
            rustls::Error::InvalidCertificate(C::Expired),
            rustls::Error::InvalidCertificate(C::NotValidYet),
            rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure),
        ] {
            assert_eq!(
                certificate_refused(&failed(retried.clone())),
                None,
                "{retried:?}"
            );
        }
        assert_eq!(certificate_refused(&ureq::Error::ConnectionFailed), None);
    }
}
