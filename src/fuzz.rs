//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz): each feeds arbitrary bytes to
//! one parser the agent exposes to the outside world. None may panic, hang or allocate without
//! bound; errors are the expected outcome for almost every input.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use crate::catalogue::{ArchiveKind, Catalogue};

/// The catalogue parser and validator.
pub fn catalogue(data: &[u8]) {
    let _ = Catalogue::parse(data, "fuzz");
}

/// GNU `sha256sum` / OpenSSL `.dgst` checksums files.
pub fn checksums(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::install::checksums::lookup(text, "sing-box-1.12.0-linux-arm64.tar.gz");
    }
}

/// signify / usign public keys and signatures, and verification with a fixed key.
pub fn signature(data: &[u8]) {
    static KEY: OnceLock<Option<crate::trust::signify::PublicKey>> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let (public, _) = crate::trust::signify::keygen("fuzz").ok()?;
        crate::trust::signify::parse_public(&public).ok()
    });
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::trust::signify::parse_public(text);
    if let Some(key) = key {
        let _ = crate::trust::verify_detached(b"catalogue", text, std::slice::from_ref(key));
    }
}

/// RouterOS API replies (length-prefixed words, sentences, `!re/!done/!trap/!fatal`).
pub fn routeros_reply(data: &[u8]) {
    let mut r = data;
    let _ = crate::vif::routeros::api::read_reply(&mut r, "t1");
}

/// The ELF header check.
pub fn elf(data: &[u8]) {
    let _ = crate::install::elf::check(data, crate::install::elf::Machine::host());
}

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("nnc-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    })
}

fn archive(data: &[u8], kind: ArchiveKind, name: &str) {
    let file = scratch().join(name);
    let dest = scratch().join(format!("{name}.out"));
    if std::fs::write(&file, data).is_ok() {
        let _ = crate::install::archive::extract_member(&file, kind, "bin/tool", &dest, 1 << 20);
    }
    let _ = std::fs::remove_file(&dest);
}

/// Safe extraction of a member from a tar.gz (traversal, links, bombs …).
pub fn tar_gz(data: &[u8]) {
    archive(data, ArchiveKind::TarGz, "a.tar.gz");
}

/// Safe extraction of a member from a zip (our own central-directory reader).
pub fn zip(data: &[u8]) {
    archive(data, ArchiveKind::Zip, "a.zip");
}

/// Share links and subscription bodies (third parties write both): parsed, checked and
/// rendered by both generators.
pub fn share_link(data: &[u8]) {
    use crate::configgen::{Context, Generator};
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let ctx = Context {
        listen: std::net::IpAddr::from([10, 99, 1, 2]),
        mark: None,
        data_dir: PathBuf::from("/d"),
        transparent: true,
        control_secret: Some("fuzz".into()),
    };
    for g in [Generator::SingBox, Generator::Xray] {
        // As the settings schema lets it through: a link of at most 4096 characters.
        if text.chars().count() <= 4096 {
            let _ = g.render(&ctx, &serde_json::json!({ "link": text }));
        }
        if let Ok((servers, _)) = g.subscription(text) {
            let _ = g.render(&ctx, &serde_json::json!({ "outbounds": servers }));
        }
    }
}

/// The GraphQL request path, body to response, against an agent with an empty catalogue and
/// no interfaces (nothing a request does can reach the network).
pub fn graphql(data: &[u8]) {
    struct Agent {
        rt: tokio::runtime::Runtime,
        schema: crate::api::AppSchema,
        parsed: crate::api::parsed::Parsed,
    }
    static AGENT: OnceLock<Agent> = OnceLock::new();
    let agent = AGENT.get_or_init(|| {
        let dir = scratch().join("agent");
        let args: Vec<String> = ["serve", "--data-dir", &dir.display().to_string()]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let Ok(crate::cli::Command::Serve(cfg)) = crate::cli::parse(&args) else {
            panic!("fuzz agent config");
        };
        let _ = std::fs::create_dir_all(&dir);
        let layout = crate::install::Layout::new(dir);
        let store = crate::store::Store::open(&layout.state_db()).expect("fuzz store");
        let catalogue =
            Catalogue::parse(br#"{"schema": 1, "features": []}"#, "fuzz").expect("empty");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let installer = rt.block_on(async {
            crate::assemble(
                &cfg,
                store,
                catalogue,
                layout,
                crate::supervisor::Support::probe(),
            )
        });
        let schema = crate::api::schema::build(Arc::clone(&installer), None, false);
        Agent {
            rt,
            schema,
            parsed: Default::default(),
        }
    });
    let _ = agent
        .rt
        .block_on(crate::api::answer(&agent.schema, &agent.parsed, data));
}
