//! Downloads over https from Debian's nginx with ECDSA P-256 certificates (what GitHub's and
//! most CDNs' chains are), through the agent's own TLS provider: ring for the ciphers, X25519
//! and P-384 key exchange, RustCrypto's `p256` for P-256 signatures (src/tls.rs). The CA is
//! the agent's only root, given by `SSL_CERT_FILE`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Agent, Nginx, TempDir, feature, free_port, run_ok, sha256_file, write_catalogue};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").args(args).current_dir(dir));
}

/// A P-256 CA (its self-signature with SHA-384) in `dir`/`name`.pem and `name`.key.
fn ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-sha384",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
    dir.join(format!("{name}.pem"))
}

/// A P-256 server certificate for 127.0.0.1 signed by `ca` with SHA-256: (cert, key).
fn leaf(dir: &Path, ca: &str, name: &str) -> (PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    std::fs::write(
        dir.join(format!("{name}.ext")),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-sha256",
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
    // A verifier nobody here wrote agrees that the chain is good.
    openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            &format!("{ca}.pem"),
            &format!("{name}.pem"),
        ],
    );
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

/// An nginx `server` part: one more listener on 127.0.0.1 with TLS.
fn tls_listener(port: u16, cert: &Path, key: &Path, protocols: &str, curves: &str) -> String {
    format!(
        "listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {}; ssl_protocols {protocols}; ssl_ecdh_curve {curves};",
        cert.display(),
        key.display()
    )
}

struct Server {
    nginx: Nginx,
    port: u16,
}

fn serve(www: &Path, cert: &Path, key: &Path, protocols: &str, curves: &str) -> Server {
    let port = free_port();
    let nginx = Nginx::start(www, &tls_listener(port, cert, key, protocols, curves));
    Server { nginx, port }
}

#[test]
fn installs_over_tls_1_2_and_1_3_with_p256_chains_and_refuses_an_unknown_ca() {
    let root = TempDir::new("https");
    let pki = root.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca_pem = ca(&pki, "ca");
    ca(&pki, "other-ca");
    let (cert, key) = leaf(&pki, "ca", "server");
    let (stranger, stranger_key) = leaf(&pki, "other-ca", "stranger");

    let www = root.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy("/usr/sbin/tor", www.join("tor")).unwrap();
    let sha = sha256_file(&www.join("tor"));

    // TLS 1.3 and 1.2 (ECDHE-ECDSA: the key exchange signed with the P-256 key) with each key
    // exchange group the agent offers (P-256 ones make the agent's own ECDH meet OpenSSL's), and
    // a server whose CA the agent does not know.
    let servers = [
        ("tls13", serve(&www, &cert, &key, "TLSv1.3", "X25519")),
        (
            "tls13-p256",
            serve(&www, &cert, &key, "TLSv1.3", "prime256v1"),
        ),
        (
            "tls13-p384",
            serve(&www, &cert, &key, "TLSv1.3", "secp384r1"),
        ),
        ("tls12", serve(&www, &cert, &key, "TLSv1.2", "X25519")),
        (
            "tls12-p256",
            serve(&www, &cert, &key, "TLSv1.2", "prime256v1"),
        ),
        (
            "stranger",
            serve(&www, &stranger, &stranger_key, "TLSv1.3", "X25519"),
        ),
    ];
    let (stranger_server, trusted) = servers.split_last().unwrap();
    let features: Vec<Value> = servers
        .iter()
        .map(|(name, s)| {
            feature(
                name,
                "tor",
                json!({ "url": format!("https://127.0.0.1:{}/tor", s.port), "sha256": sha }),
            )
        })
        .collect();
    let catalogue = write_catalogue(root.path(), &features);
    let ca_file = ca_pem.to_str().unwrap();
    let agent = Agent::start_in(
        root.path(),
        &catalogue,
        "",
        None,
        &[("SSL_CERT_FILE", ca_file)],
    );

    for (name, server) in trusted {
        let id = agent.install(name, "main");
        let inst = agent.wait_done(&id, TIMEOUT);
        assert_eq!(
            inst["status"],
            "INSTALLED",
            "{name}: {inst}\n{}",
            agent.log()
        );
        assert_eq!(inst["sha256"], sha, "{name}");
        assert_eq!(
            server.nginx.requests_for("/tor").len(),
            1,
            "{name}: one request, over TLS"
        );
    }

    let id = agent.install("stranger", "main");
    let inst = agent.wait_done(&id, TIMEOUT);
    assert_eq!(inst["status"], "FAILED", "{inst}");
    let error = inst["error"].as_str().unwrap();
    assert!(
        error.contains("TLS certificate is refused") && error.contains("UnknownIssuer"),
        "the error names the untrusted issuer: {error}"
    );
    assert!(
        !error.contains("attempts"),
        "a refused certificate is not retried: {error}"
    );
    assert!(
        stranger_server.1.nginx.requests_for("/tor").is_empty(),
        "no request was sent to a server the agent does not trust"
    );
}
