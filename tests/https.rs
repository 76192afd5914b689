//! Downloads over https from Debian's nginx with ECDSA P-256 certificates (what GitHub's and
//! most CDNs' chains are), through the agent's own TLS provider: ring for the ciphers, X25519
//! and P-384 key exchange, RustCrypto's `p256` for P-256 (src/tls.rs): root -> intermediate
//! (SHA-384) -> server (SHA-256), all P-256. The root is the agent's only one (`SSL_CERT_FILE`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{
    Agent, Nginx, P256_KEY, TempDir, feature, free_port, run_ok, sha256_file, write_catalogue,
};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(60);

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").args(args).current_dir(dir));
}

/// `openssl req` with a new unencrypted P-256 key and `args`.
fn req_p256(dir: &Path, args: &[&str]) {
    run_ok(
        Command::new("openssl")
            .arg("req")
            .args(P256_KEY)
            .arg("-nodes")
            .args(args)
            .current_dir(dir),
    );
}

/// A self-signed P-256 root CA in `dir`/`name`.pem and `name`.key.
fn root_ca(dir: &Path, name: &str) -> PathBuf {
    req_p256(
        dir,
        &[
            "-x509",
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

/// A P-256 certificate `name` signed by `issuer` with `digest`: an intermediate CA, or a
/// server certificate for 127.0.0.1. Returns `name`.pem; the key is `name`.key.
fn issue(dir: &Path, issuer: &str, name: &str, ca: bool, digest: &str) -> PathBuf {
    let subject = if ca {
        format!("/CN={name}")
    } else {
        "/CN=127.0.0.1".into()
    };
    req_p256(
        dir,
        &[
            "-subj",
            &subject,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    let ext = if ca {
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n"
    } else {
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
    };
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{issuer}.pem"),
            "-CAkey",
            &format!("{issuer}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            digest,
            "-extfile",
            &format!("{name}.ext"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
    dir.join(format!("{name}.pem"))
}

/// root -> intermediate (signed with SHA-384) -> server (SHA-256), all P-256: the chain file
/// nginx sends (server + intermediate) and the server's key. A verifier nobody here wrote
/// agrees that the chain is good.
fn chain(dir: &Path, root: &str, name: &str) -> (PathBuf, PathBuf) {
    let inter = format!("{name}-intermediate");
    let inter_pem = issue(dir, root, &inter, true, "-sha384");
    let leaf = issue(dir, &inter, name, false, "-sha256");
    run_ok(
        Command::new("openssl")
            .args(["verify", "-CAfile", &format!("{root}.pem"), "-untrusted"])
            .arg(&inter_pem)
            .arg(&leaf)
            .current_dir(dir),
    );
    let bundle = dir.join(format!("{name}-chain.pem"));
    let mut text = std::fs::read(&leaf).unwrap();
    text.extend(std::fs::read(&inter_pem).unwrap());
    std::fs::write(&bundle, text).unwrap();
    (bundle, dir.join(format!("{name}.key")))
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
    /// What nginx allows: so what the log must show was negotiated.
    protocol: String,
    curve: String,
}

fn serve(www: &Path, cert: &Path, key: &Path, protocols: &str, curves: &str) -> Server {
    let port = free_port();
    let nginx = Nginx::start(www, &tls_listener(port, cert, key, protocols, curves));
    Server {
        nginx,
        port,
        protocol: protocols.to_owned(),
        curve: curves.to_owned(),
    }
}

#[test]
fn installs_over_tls_1_2_and_1_3_with_p256_chains_and_refuses_an_unknown_ca() {
    let root = TempDir::new("https");
    let pki = root.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let ca_pem = root_ca(&pki, "ca");
    root_ca(&pki, "other-ca");
    let (cert, key) = chain(&pki, "ca", "server");
    let (stranger, stranger_key) = chain(&pki, "other-ca", "stranger");

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
        let (protocol, curve) = (&server.protocol, &server.curve);
        let id = agent.install(name, "main");
        let inst = agent.wait_done(&id, TIMEOUT);
        assert_eq!(
            inst["status"],
            "INSTALLED",
            "{name}: {inst}\n{}",
            agent.log()
        );
        assert_eq!(inst["sha256"], sha, "{name}");
        let requests = server.nginx.requests_for("/tor");
        assert_eq!(requests.len(), 1, "{name}: {requests:?}");
        assert!(
            requests[0].contains(&format!(" tls={protocol}/{curve} ")),
            "{name}: negotiated {requests:?}"
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
