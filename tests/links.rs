//! Share links through `nnc-agent config render GEN --link`, judged by the real checkers:
//! a corpus written from the formats' documents (odd-but-valid forms included: IPv6 hosts in
//! brackets, percent-encoding, missing optional parts, `#name` fragments), invalid links that
//! must be refused naming the part, and a property test over generated links: each renders,
//! the rendered outbound carries exactly what the link said, and sing-box accepts it.
//! (The parser's own unit tests in src/configgen/link.rs pin the parsed outbounds.)

mod common;

use std::path::Path;
use std::process::Command;

use common::{BIN, Rng, TempDir};
use serde_json::{Value, json};

const UUID: &str = "123e4567-e89b-12d3-a456-426614174000";
const PBK: &str = "jNXHt1yRo0vDuchQlIP6Z0ZvjT3KtzVI-T4E7RoLJS0";

fn render(generator: &str, link: &str, dir: &Path) -> Result<String, String> {
    let out = Command::new(BIN)
        .args([
            "config",
            "render",
            generator,
            "--link",
            link,
            "--listen",
            "10.99.7.2",
            "--mark",
            "1107",
            "--dir",
        ])
        .arg(dir)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The real checker's verdict on `config` (written into `dir`).
fn check(generator: &str, config: &str, dir: &Path) -> Result<(), String> {
    let file = dir.join("config.json");
    std::fs::write(&file, config).unwrap();
    common::checker_verdict(generator, &file)
}

fn b64(s: &str) -> String {
    let b = common::base64url(s.as_bytes());
    b.replace('-', "+").replace('_', "/")
}

/// Valid links; `uTLS` marks those PyPI's sing-box refuses for want of uTLS (and only for
/// that), `xray` those the Xray generator renders and V2Ray 4 can check too.
fn corpus() -> Vec<(String, &'static str)> {
    let vmess = |j: Value| format!("vmess://{}", b64(&j.to_string()));
    vec![
        (format!("vless://{UUID}@proxy.example.org:443?security=tls&sni=cdn.example.org&type=tcp&flow=xtls-rprx-vision#Vision"), "xray"),
        (format!("vless://{UUID}@[2001:db8::1]:443?encryption=none&security=reality&sni=www.example.com&fp=chrome&pbk={PBK}&sid=0123abcd&spx=%2F&type=tcp&flow=xtls-rprx-vision#R"), "uTLS"),
        (format!("vless://{UUID}@192.0.2.1:443?security=reality&sni=www.example.com&pbk={PBK}"), "uTLS"),
        (format!("vless://{UUID}@192.0.2.1:80"), "xray"),
        (format!("vless://{UUID}@192.0.2.1:80?type=ws&path=%2Fws%3Fed%3D2048&host=h.example.org#%E4%BD%A0%E5%A5%BD"), "xray"),
        (format!("vless://{UUID}@192.0.2.1:443?type=grpc&serviceName=grpc%20svc&security=tls&alpn=h2"), ""),
        (format!("vless://{UUID}@192.0.2.1:80?type=httpupgrade&path=/up&host=h.example.org"), ""),
        (format!("vless://{UUID}@proxy.example.org:443/?security=tls&fp=firefox&sni=proxy.example.org"), "uTLS"),
        (format!("VLESS://{UUID}@Proxy.Example.org:443?security=tls&allowInsecure=true&unknown=ignored#"), "xray"),
        ("trojan://p%40ss%3Aword@proxy.example.org:443#%F0%9F%87%A9%F0%9F%87%AA".to_owned(), "xray"),
        ("trojan://pw@[2001:db8::2]:8443?security=tls&sni=t.example.org&type=ws&path=%2Ft&allowInsecure=1".to_owned(), "xray"),
        ("trojan://pw@192.0.2.2:443?type=grpc&serviceName=t".to_owned(), ""),
        (vmess(json!({ "v": "2", "ps": "vm", "add": "192.0.2.3", "port": "10086", "id": UUID, "aid": "0", "net": "tcp", "type": "none", "tls": "" })), "xray"),
        (vmess(json!({ "add": "2001:db8::3", "port": 443, "id": UUID, "aid": 0, "scy": "aes-128-gcm", "net": "ws", "host": "v.example.org", "path": "/v", "tls": "tls", "sni": "v.example.org" })), "xray"),
        (vmess(json!({ "add": "v.example.org", "port": "443", "id": UUID, "net": "grpc", "path": "svc", "tls": "tls" })), ""),
        (format!("ss://{}@192.0.2.4:8388#plain", b64("aes-256-gcm:pw").trim_end_matches('=')), "xray"),
        (format!("ss://{}@192.0.2.4:8388/?#padded", b64("chacha20-ietf-poly1305:pw")), "xray"),
        (format!("ss://{}#legacy", b64("aes-128-gcm:p@ss@192.0.2.4:8389")), "xray"),
        ("ss://2022-blake3-aes-128-gcm:k2UwYq1T0lB8hmR3nV6sJg%3D%3D@[2001:db8::4]:8388#2022".to_owned(), ""),
        ("ss://2022-blake3-chacha20-poly1305:YctPZ6U7xPPcU%2Bgp3u%2B0tx%2FtRizJN9K8y%2BuKlW2qjlI%3D@192.0.2.4:8388".to_owned(), ""),
        ("hysteria2://pw@proxy.example.org/?sni=proxy.example.org".to_owned(), ""),
        ("hy2://user:pass@192.0.2.5:8443?obfs=salamander&obfs-password=o%26b&insecure=1#hy2".to_owned(), ""),
        (format!("tuic://{UUID}:pw@192.0.2.6:443?congestion_control=bbr&udp_relay_mode=native&alpn=h3&sni=t.example.org"), ""),
        (format!("tuic://{UUID}:p%3Aw@[2001:db8::6]:443"), ""),
    ]
}

#[test]
fn every_corpus_link_renders_a_config_the_real_checker_accepts() {
    let dir = TempDir::new("links-corpus");
    for (link, tag) in corpus() {
        let config =
            render("sing-box", &link, dir.path()).unwrap_or_else(|e| panic!("{link}: {e}"));
        match (tag, check("sing-box", &config, dir.path())) {
            ("uTLS", Err(e)) => assert!(
                e.contains("uTLS") && e.contains("is not included in this build"),
                "{link}: {e}"
            ),
            ("uTLS", Ok(())) => panic!("{link}: PyPI's sing-box was expected to lack uTLS"),
            (_, Err(e)) => panic!("{link}: sing-box refuses it: {e}\n{config}"),
            (_, Ok(())) => {}
        }
        if tag == "xray" {
            let config =
                render("xray", &link, dir.path()).unwrap_or_else(|e| panic!("xray {link}: {e}"));
            check("xray", &config, dir.path())
                .unwrap_or_else(|e| panic!("xray {link}: {e}\n{config}"));
        }
    }
}

#[test]
fn invalid_links_are_refused_naming_the_part() {
    let dir = TempDir::new("links-invalid");
    for (generator, link, words) in [
        (
            "sing-box",
            "socks5://192.0.2.1:1080",
            "socks5:// links are not supported",
        ),
        ("sing-box", "vless://192.0.2.1:443", "no UUID before @"),
        (
            "sing-box",
            "vless://not-a-uuid@192.0.2.1:443",
            "settings.link.uuid is not a valid uuid",
        ),
        (
            "sing-box",
            &format!("vless://{UUID}@bad_host:443"),
            "settings.link.server is not a valid hostname",
        ),
        (
            "sing-box",
            &format!("vless://{UUID}@192.0.2.1:443?fp=netscape&security=tls"),
            "settings.link.tls.fingerprint must be one of",
        ),
        (
            "sing-box",
            &format!("vless://{UUID}@192.0.2.1:443?flow=xtls-rprx-vision"),
            "flow xtls-rprx-vision needs the tcp transport and tls.enabled",
        ),
        (
            "sing-box",
            &format!("vless://{UUID}@192.0.2.1:443?flow=xtls-rprx-direct&security=tls"),
            "settings.link.flow must be one of",
        ),
        (
            "sing-box",
            &format!("vless://{UUID}@192.0.2.1:443?security=reality&sni=a.example&pbk=short"),
            "settings.link.tls.reality.publicKey is not a valid x25519",
        ),
        (
            "sing-box",
            &format!(
                "vless://{UUID}@192.0.2.1:443?security=reality&sni=a.example&pbk={PBK}&sid=xyz"
            ),
            "shortId is not a valid shortid",
        ),
        (
            "sing-box",
            &format!("vless://{UUID}@192.0.2.1:443?type=ws&path=no-slash"),
            "transport.path is not a valid path",
        ),
        (
            "sing-box",
            &format!("vless://{UUID}@192.0.2.1:443?type=xhttp"),
            "transport xhttp is not supported",
        ),
        (
            "sing-box",
            "ss://2022-blake3-aes-128-gcm:c2hvcnQ%3D@192.0.2.1:8388",
            "must be base64 of a 16-byte key",
        ),
        (
            "sing-box",
            "ss://rc4-md5:pw@192.0.2.1:8388",
            "settings.link.method must be one of",
        ),
        (
            "sing-box",
            "hysteria2://pw@192.0.2.1:443,8000-9000",
            "port hopping (several ports) is not supported",
        ),
        (
            "xray",
            &format!("tuic://{UUID}:pw@192.0.2.1:443"),
            "tuic links are not supported by this feature's generator",
        ),
        (
            "xray",
            "hy2://pw@192.0.2.1",
            "hysteria2 links are not supported",
        ),
        (
            "tor",
            "trojan://pw@192.0.2.1:443",
            "settings.link is not a known setting",
        ),
    ] {
        let e = render(generator, link, dir.path()).unwrap_err();
        assert!(e.contains(words), "{generator} {link}: {e}");
        assert!(e.lines().count() == 1, "one line: {e}");
    }
    // A link and an outbound at once: which one would win is not the agent's guess.
    let out = Command::new(BIN)
        .args(["config", "render", "sing-box", "--link", "trojan://pw@192.0.2.1:443", "--settings"])
        .arg(json!({ "outbound": { "type": "trojan", "server": "192.0.2.9", "serverPort": 1, "password": "x" } }).to_string())
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("exclude each other"),
        "{e}"
    );
}

/// Every byte outside the unreserved set percent-encoded (what a careful encoder writes);
/// a careless one leaves most of them alone, and both must parse.
fn encode(s: &str, all: bool) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric()
                || b"-._~".contains(&b)
                || (!all && b"!$'()*+,;:@".contains(&b))
            {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn generated_links_render_exactly_what_they_say_and_sing_box_accepts_them() {
    const SAMPLES: usize = 80;
    let dir = TempDir::new("links-property");
    let mut rng = Rng(0x5DEE_CE66_D1CE_4E5B);
    for i in 0..SAMPLES {
        let host = match rng.below(3) {
            0 => format!("192.0.2.{}", 1 + rng.below(254)),
            1 => format!("2001:db8::{:x}", 1 + rng.below(0xfffe)),
            _ => format!("n{}.example.org", rng.below(1000)),
        };
        let authority_host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let port = 1 + rng.below(65535);
        let password = format!(
            "p{}{}",
            *rng.pick(&["", "@", ":", "/", "#", "?", "&", "=", "%", " ", "é"]),
            rng.below(1 << 20)
        );
        let sni = format!("s{}.example.net", rng.below(100));
        let path = format!(
            "/{}{}",
            *rng.pick(&["", "a", "ws"]),
            *rng.pick(&["", "?ed=2048", "/x"])
        );
        let name = *rng.pick(&["", "🇩🇪 Frankfurt #1", "a&b=c", "plain"]);
        let all = rng.below(2) == 0;
        let kind = *rng.pick(&["vless", "trojan", "hysteria2", "shadowsocks"]);
        let transport = if kind == "vless" || kind == "trojan" {
            *rng.pick(&["tcp", "ws", "httpupgrade", "grpc"])
        } else {
            "tcp"
        };
        let mut query = Vec::new();
        if transport != "tcp" {
            query.push(format!("type={transport}"));
        }
        if transport == "ws" || transport == "httpupgrade" {
            query.push(format!("path={}", encode(&path, all)));
        }
        if transport == "grpc" {
            query.push("serviceName=svc".to_owned());
        }
        let tls = kind != "shadowsocks" && (kind != "vless" || rng.below(2) == 0);
        if tls {
            if kind == "vless" {
                query.push("security=tls".into());
            }
            query.push(format!("sni={sni}"));
        }
        let fragment = if name.is_empty() {
            String::new()
        } else {
            format!("#{}", encode(name, true))
        };
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        let link = match kind {
            "vless" => format!("vless://{UUID}@{authority_host}:{port}{q}{fragment}"),
            "trojan" => format!(
                "trojan://{}@{authority_host}:{port}{q}{fragment}",
                encode(&password, all)
            ),
            "hysteria2" => format!(
                "hysteria2://{}@{authority_host}:{port}/{q}{fragment}",
                encode(&password, all)
            ),
            _ => format!(
                "ss://aes-256-gcm:{}@{authority_host}:{port}{fragment}",
                encode(&password, true)
            ),
        };
        let config = render("sing-box", &link, dir.path())
            .unwrap_or_else(|e| panic!("sample {i} {link}: {e}"));
        let c: Value = serde_json::from_str(&config).unwrap();
        let o = &c["outbounds"][0];
        let ctx = format!("sample {i} {link}\n{o}");
        assert_eq!(o["server"], json!(host), "{ctx}");
        assert_eq!(o["server_port"], json!(port), "{ctx}");
        match kind {
            "vless" => assert_eq!(o["uuid"], json!(UUID), "{ctx}"),
            "shadowsocks" => assert_eq!(
                (&o["method"], &o["password"]),
                (&json!("aes-256-gcm"), &json!(password)),
                "{ctx}"
            ),
            _ => assert_eq!(o["password"], json!(password), "{ctx}"),
        }
        assert_eq!(o["tls"]["enabled"].as_bool().unwrap_or(false), tls, "{ctx}");
        if tls {
            assert_eq!(o["tls"]["server_name"], json!(sni), "{ctx}");
        }
        let t = &o["transport"];
        match transport {
            "tcp" => assert!(t.is_null(), "{ctx}"),
            "ws" => assert_eq!(t, &json!({ "type": "ws", "path": path }), "{ctx}"),
            "httpupgrade" => {
                assert_eq!(t, &json!({ "type": "httpupgrade", "path": path }), "{ctx}")
            }
            _ => assert_eq!(
                t,
                &json!({ "type": "grpc", "service_name": "svc" }),
                "{ctx}"
            ),
        }
        check("sing-box", &config, dir.path()).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    }
}
