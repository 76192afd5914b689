//! What router users install: OpenWrt .ipk (24.10) and .apk (25.12) packages with signed feed
//! indexes, and RouterOS container images, built from the static binaries in `dist/` and
//! checked by tools that did not write them (Python's ar/tar/hash code, a reader of our own
//! for apk v3, signify-openbsd, openssl, skopeo).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn dist() -> PathBuf {
    std::env::var("NNC_DIST").map_or_else(|_| Path::new(ROOT).join("dist"), PathBuf::from)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// (Rust target, OpenWrt package architecture, board profile in the default config).
const TARGETS: [(&str, &str, &str); 5] = [
    ("x86_64-unknown-linux-musl", "x86_64", ""),
    ("aarch64-unknown-linux-musl", "aarch64_generic", ""),
    (
        "armv7-unknown-linux-musleabihf",
        "arm_cortex-a7_neon-vfpv4",
        "ipq40xx",
    ),
    ("mipsel-unknown-linux-musl", "mipsel_24kc", "mt7621"),
    ("mips-unknown-linux-musl", "mips_24kc", "ath79"),
];

#[test]
fn ipk_packages_unpack_cleanly_and_the_feed_index_is_signed() {
    let tmp = common::TempDir::new("ipk");
    let (public, secret) = (tmp.path().join("feed.pub"), tmp.path().join("feed.sec"));
    run(Command::new("signify-openbsd")
        .args(["-G", "-n", "-c", "nnc-agent test feed", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret));
    let dist = dist();
    let out = dist.join("openwrt");
    run(Command::new("bash")
        .arg(Path::new(ROOT).join("openwrt/build-ipk.sh"))
        .arg(&secret)
        .env("NNC_DIST", &dist));
    for (target, arch, board) in TARGETS {
        let ipk = std::fs::read_dir(out.join(arch))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        run(Command::new("python3")
            .arg(Path::new(ROOT).join("tests/packaging/check_ipk.py"))
            .arg(&ipk)
            .arg(out.join("Packages"))
            .args([arch, board]));
        // The binary inside is the one built for the target.
        assert!(
            ipk.to_string_lossy().ends_with(&format!("_{arch}.ipk")),
            "{}",
            ipk.display()
        );
        assert!(dist.join(target).join("nnc-agent").exists());
    }
    // The index signature verifies with the feed key (usign format: signify-openbsd reads it)...
    run(Command::new("signify-openbsd")
        .args(["-V", "-q", "-p"])
        .arg(&public)
        .arg("-m")
        .arg(out.join("Packages"))
        .arg("-x")
        .arg(out.join("Packages.sig")));
    let sig = std::fs::read_to_string(out.join("Packages.sig")).unwrap();
    assert!(sig.starts_with("untrusted comment: "), "{sig}");
    // ...Packages.gz is the same index...
    let gz = run(Command::new("sh").arg("-c").arg(format!(
        "gzip -dc {} | cmp - {}",
        out.join("Packages.gz").display(),
        out.join("Packages").display()
    )));
    assert!(gz.is_empty());
    // ...and neither another key nor a changed index passes.
    let other_pub = tmp.path().join("other.pub");
    run(Command::new("signify-openbsd")
        .args(["-G", "-n", "-p"])
        .arg(&other_pub)
        .arg("-s")
        .arg(tmp.path().join("other.sec")));
    let wrong_key = Command::new("signify-openbsd")
        .args(["-V", "-q", "-p"])
        .arg(&other_pub)
        .arg("-m")
        .arg(out.join("Packages"))
        .arg("-x")
        .arg(out.join("Packages.sig"))
        .status()
        .unwrap();
    assert!(!wrong_key.success(), "verified with the wrong key");
    let tampered = tmp.path().join("Packages");
    let mut text = std::fs::read_to_string(out.join("Packages")).unwrap();
    text = text.replacen("Depends: ", "Depends: evil, ", 1);
    std::fs::write(&tampered, text).unwrap();
    let bad = Command::new("signify-openbsd")
        .args(["-V", "-q", "-p"])
        .arg(&public)
        .arg("-m")
        .arg(&tampered)
        .arg("-x")
        .arg(out.join("Packages.sig"))
        .status()
        .unwrap();
    assert!(!bad.success(), "a changed index verified");
}

/// OpenWrt 25.12's apk v3 packages and their signed `packages.adb`, read back by a reader
/// that did not write them (tests/packaging/check_apk.py: structure, alignment, hashes) and
/// the index signature verified by `openssl`.
#[test]
fn apk_packages_and_their_signed_index_read_back_and_verify() {
    let tmp = common::TempDir::new("apk");
    let (key, other) = (tmp.path().join("feed.key"), tmp.path().join("other.key"));
    for k in [&key, &other] {
        run(Command::new("openssl")
            .args([
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
            ])
            .arg(k));
    }
    let dist = dist();
    run(Command::new("bash")
        .arg(Path::new(ROOT).join("openwrt/build-apk.sh"))
        .arg(&key)
        .env("NNC_DIST", &dist));
    let out = dist.join("openwrt-apk");
    let version = format!("{}-r1", env!("CARGO_PKG_VERSION"));
    let check = |arch: &str, pem: &Path, target: &str, board: &str| {
        let dir = out.join(arch);
        Command::new("python3")
            .arg(Path::new(ROOT).join("tests/packaging/check_apk.py"))
            .arg(dir.join(format!("nnc-agent-{version}.apk")))
            .arg(dir.join("packages.adb"))
            .arg(pem)
            .arg(dist.join(target).join("nnc-agent"))
            .args([arch, board])
            .output()
            .unwrap()
    };
    for (target, arch, board) in TARGETS {
        let pem = out.join(arch).join("nnc-agent-feed.pem");
        let r = check(arch, &pem, target, board);
        assert!(
            r.status.success(),
            "{arch}: {}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        );
        // The shipped key is the feed key's public half; another key does not verify.
        let other_pem = tmp.path().join("other.pem");
        run(Command::new("openssl")
            .args(["ec", "-pubout", "-in"])
            .arg(&other)
            .arg("-out")
            .arg(&other_pem));
        let r = check(arch, &other_pem, target, board);
        assert!(!r.status.success(), "{arch}: verified with another key");
    }
}

#[test]
fn routeros_container_images_have_a_consistent_layout() {
    let dist = dist();
    run(Command::new("bash")
        .arg(Path::new(ROOT).join("cross/container/build.sh"))
        .env("NNC_DIST", &dist));
    let tmp = common::TempDir::new("oci");
    for arch in ["arm64", "arm", "amd64"] {
        let image = dist.join("container").join(format!("nnc-agent-{arch}.tar"));
        run(Command::new("python3")
            .arg(Path::new(ROOT).join("tests/packaging/check_image.py"))
            .arg(&image)
            .arg(arch));
        // skopeo, an independent implementation, reads it and verifies every digest on copy.
        let inspect = run(Command::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}", image.display())));
        let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
        assert_eq!(v["Architecture"], arch, "{v}");
        assert_eq!(v["Os"], "linux");
        let oci = tmp.path().join(arch);
        run(Command::new("skopeo")
            .arg("copy")
            .arg("--quiet")
            .arg(format!("docker-archive:{}", image.display()))
            .arg(format!("oci:{}:nnc", oci.display())));
        assert!(oci.join("index.json").exists());
    }
}
