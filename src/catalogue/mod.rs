//! The catalogue: which features exist, which version of each, and where the binary for each
//! CPU architecture comes from and how to verify it.
//!
//! Loaded once at start from `--catalogue` (a file or an http(s) URL) or the built-in default.
//! Everything that later becomes a path component (feature id, version, binary name, archive
//! member) is validated here, so no other module has to wonder whether a catalogue string can
//! escape the data directory.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::is_feature_id;
use crate::platform::ARCH_KEYS;
use crate::util;

/// The built-in default: upstream release URLs, versions pinned. See ARCHITECTURE.md for where
/// each entry's verification data comes from.
const BUILTIN: &str = include_str!("builtin.json");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub(crate) enum ArchiveKind {
    #[serde(rename = "none")]
    None,
    #[serde(rename = "tar.gz")]
    TarGz,
    #[serde(rename = "zip")]
    Zip,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub(crate) struct Asset {
    /// The download (empty for a `package` asset).
    #[serde(default)]
    pub url: String,
    /// A system package instead of a download: the package's name per package manager
    /// (`apk`, `opkg`, `apt`); `path` is then the absolute path of the binary it installs.
    #[serde(default)]
    pub package: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub sha256: Option<String>,
    /// URL of a GNU `sha256sum` file listing the asset by the file name of `url`.
    #[serde(default)]
    pub checksums: Option<String>,
    /// URL of the checksums file's detached signature (signify/usign or minisign), checked
    /// against the trusted keys.
    #[serde(default)]
    pub checksums_sig: Option<String>,
    /// `"github"`: the digest GitHub's REST API lists for this release asset (`url` must be a
    /// release download URL).
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default = "archive_none")]
    pub archive: ArchiveKind,
    /// Member of the archive that is the binary.
    #[serde(default)]
    pub path: Option<String>,
    /// Exact size in bytes of the download, when known: a larger body is refused. It only
    /// lowers `download.max_bytes`, never raises it.
    #[serde(default)]
    pub size: Option<u64>,
}

fn archive_none() -> ArchiveKind {
    ArchiveKind::None
}

impl Asset {
    /// The last path segment of the URL: the name looked up in a checksums file.
    pub(crate) fn file_name(&self) -> &str {
        let path = self.url.split(['?', '#']).next().unwrap_or("");
        path.rsplit('/').next().unwrap_or("")
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Feature {
    pub id: String,
    pub name: String,
    pub version: String,
    /// File name the binary gets on disk.
    pub binary: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The config generator (`tor`, `sing-box`, `xray`) that configures and runs it.
    #[serde(default)]
    pub config: Option<String>,
    /// How to run it (overrides what the generator says).
    #[serde(default)]
    pub service: Option<Service>,
    #[serde(default)]
    pub assets: BTreeMap<String, Asset>,
    #[serde(default)]
    pub settings_schema: Option<Value>,
    /// Where newer versions are published (update checks).
    #[serde(default)]
    pub upstream: Option<Upstream>,
}

/// A feature's GitHub releases: `repo` is `https://HOST/OWNER/REPO`, `tag` the release tag
/// with `{version}`, `assets` per arch the release file (and the binary inside it, and the
/// checksums file beside it) with `{version}`. A newer version's asset is the current one's
/// with these rendered (same verification and archive kind).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Upstream {
    pub repo: String,
    pub tag: String,
    pub assets: BTreeMap<String, UpstreamAsset>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamAsset {
    pub name: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub checksums: Option<String>,
}

impl Upstream {
    /// The version a release tag names (`v1.2.3` with tag `v{version}`: `1.2.3`).
    pub(crate) fn version_of(&self, tag: &str) -> Option<String> {
        let (pre, post) = self.tag.split_once("{version}")?;
        let v = tag.strip_prefix(pre)?.strip_suffix(post)?;
        is_safe_component(v, 64).then(|| v.to_owned())
    }

    /// `feature` at `version`: its assets rendered from the templates, the rest as it is.
    pub(crate) fn render(&self, feature: &Feature, version: &str) -> Feature {
        let t = |s: &str| s.replace("{version}", version);
        let release = format!(
            "{}/releases/download/{}",
            self.repo.trim_end_matches('/'),
            t(&self.tag)
        );
        let mut f = feature.clone();
        f.version = version.to_owned();
        f.assets = self
            .assets
            .iter()
            .filter_map(|(arch, u)| {
                let mut a = feature.assets.get(arch)?.clone();
                a.url = format!("{release}/{}", t(&u.name));
                a.path = u.path.as_deref().map(t).or(a.path);
                a.checksums = u
                    .checksums
                    .as_deref()
                    .map(|c| format!("{release}/{}", t(c)));
                // A signature of the current checksums file says nothing about another one.
                a.checksums_sig = None;
                a.sha256 = None;
                a.size = None;
                Some((arch.clone(), a))
            })
            .collect();
        f
    }

    /// `OWNER/REPO` of `repo`.
    pub(crate) fn owner_repo(&self) -> Option<(&str, &str)> {
        let path = self.repo.split_once("://")?.1.split_once('/')?.1;
        let (o, r) = path.trim_end_matches('/').split_once('/')?;
        let plain = |s: &str| {
            is_safe_component(s, 100)
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        (plain(o) && plain(r)).then_some((o, r))
    }
}

/// Whether version `a` is newer than `b`: their dot- or dash-separated parts compared in
/// order, numbers as numbers (`1.10.0` > `1.9.3`); a version with more parts that starts
/// like the other is newer (`1.2.1` > `1.2`). Unlike versions (a text part against a number)
/// are never newer.
pub(crate) fn newer(a: &str, b: &str) -> bool {
    let parts = |v: &str| -> Vec<String> { v.split(['.', '-', '+']).map(str::to_owned).collect() };
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        match (x.parse::<u64>(), y.parse::<u64>()) {
            (Ok(x), Ok(y)) if x != y => return x > y,
            (Ok(_), Ok(_)) => {}
            _ if x == y => {}
            _ => return false,
        }
    }
    // `1.2.1` is newer than `1.2`; `1.2.3-rc1` is not newer than `1.2.3` (a pre-release).
    pa.len() > pb.len() && pa[pb.len()].starts_with(|c: char| c.is_ascii_digit())
}

/// How a feature's binary runs as a service.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Service {
    /// Arguments after the program; `{config}` is the instance's config file.
    #[serde(default)]
    pub args: Option<Vec<String>>,
    /// Arguments that make the binary check `{config}` and exit (0: good).
    #[serde(default)]
    pub check: Option<Vec<String>>,
    #[serde(default)]
    pub health: Option<HealthSpec>,
    /// Capabilities the service keeps (e.g. `CAP_NET_ADMIN` for tun), inside its namespace.
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub memory_max: Option<u64>,
    #[serde(default)]
    pub pids_max: Option<u32>,
    #[serde(default)]
    pub cpu_max: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum HealthSpec {
    /// Connect to this port on the service's address.
    Tcp(u16),
    /// Run this command; exit 0 is healthy.
    Exec(Vec<String>),
}

/// Linux capability numbers by name (the ones a network service may plausibly need).
pub(crate) fn capability(name: &str) -> Option<u32> {
    Some(match name {
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_BROADCAST" => 11,
        "CAP_NET_ADMIN" => 12,
        "CAP_NET_RAW" => 13,
        "CAP_SYS_RESOURCE" => 24,
        _ => return None,
    })
}

impl Feature {
    pub(crate) fn asset(&self, arch: &str) -> Option<&Asset> {
        self.assets.get(arch)
    }

    /// A copy with only `arch`'s asset: what an instance keeps of its feature.
    pub(crate) fn for_arch(&self, arch: &str) -> Feature {
        let mut f = self.clone();
        f.assets.retain(|a, _| a == arch);
        f
    }

    pub(crate) fn generator(&self) -> Option<crate::configgen::Generator> {
        self.config
            .as_deref()
            .and_then(crate::configgen::Generator::by_name)
    }

    /// Whether installing it ends with a running service (it has a generator or arguments).
    pub(crate) fn runs(&self) -> bool {
        self.generator().is_some() || self.service.as_ref().is_some_and(|s| s.args.is_some())
    }

    /// The schema shown to clients: its generator's (which the catalogue's `settingsSchema`
    /// may only narrow, see `check_settings`), else the catalogue's.
    pub(crate) fn schema(&self) -> Option<serde_json::Value> {
        self.generator()
            .map(crate::configgen::Generator::schema)
            .or_else(|| self.settings_schema.clone())
    }

    /// Checks settings against the generator's schema AND the catalogue's: a catalogue can
    /// narrow what the agent's own renderer accepts, never widen it (a permissive schema
    /// must not let a line break into a torrc).
    /// A share link is judged twice: as given, and as the outbound it expands to.
    pub(crate) fn check_settings(&self, settings: &Value) -> Result<(), String> {
        let own = self.generator().map(crate::configgen::Generator::schema);
        for schema in own.iter().chain(&self.settings_schema) {
            crate::configgen::validate(schema, settings)?;
        }
        if let Some(g) = self.generator() {
            let expanded = g.expand(settings)?;
            for schema in own.iter().chain(&self.settings_schema) {
                crate::configgen::validate(schema, &expanded)?;
            }
        }
        Ok(())
    }

    /// Settings as answers show them: secrets redacted.
    pub(crate) fn redact(&self, settings: &Value) -> Value {
        self.schema().map_or_else(
            || settings.clone(),
            |s| crate::configgen::redact(&s, settings),
        )
    }

    /// The secrets in settings, for scrubbing messages.
    pub(crate) fn secrets(&self, settings: &Value) -> Vec<String> {
        self.generator()
            .map(|g| g.secrets(settings))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Catalogue {
    pub features: Vec<Feature>,
    /// Where it came from, for messages.
    pub source: String,
    /// The publisher's serial number (0 when absent); it must not go backwards.
    pub serial: u64,
    /// The trusted key that signed it, when it was signed.
    pub signed_by: Option<String>,
}

#[derive(Debug)]
pub(crate) struct CatalogueError(pub String);

impl fmt::Display for CatalogueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Deserialize)]
struct Document {
    schema: u32,
    #[serde(default)]
    serial: u64,
    features: Vec<Feature>,
}

impl Catalogue {
    pub(crate) fn builtin() -> Result<Catalogue, CatalogueError> {
        Catalogue::parse(BUILTIN.as_bytes(), "built-in catalogue")
    }

    /// The current version of a feature: the first entry with its id.
    pub(crate) fn feature(&self, id: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.id == id)
    }

    /// A feature at a given version (an update target or the version an instance has).
    pub(crate) fn feature_version(&self, id: &str, version: &str) -> Option<&Feature> {
        self.features
            .iter()
            .find(|f| f.id == id && f.version == version)
    }

    /// Every version the catalogue offers for a feature, current first.
    pub(crate) fn versions(&self, id: &str) -> Vec<&str> {
        self.features
            .iter()
            .filter(|f| f.id == id)
            .map(|f| f.version.as_str())
            .collect()
    }

    /// This catalogue with `f` added (a newer version an update check found).
    pub(crate) fn with(&self, f: Feature) -> Catalogue {
        let mut c = self.clone();
        if c.feature_version(&f.id, &f.version).is_none() {
            c.features.push(f);
        }
        c
    }

    /// One entry per feature id: the current version of each.
    pub(crate) fn current(&self) -> impl Iterator<Item = &Feature> {
        self.features
            .iter()
            .enumerate()
            .filter(|(i, f)| !self.features[..*i].iter().any(|o| o.id == f.id))
            .map(|(_, f)| f)
    }

    /// Parses and validates a catalogue document. Errors name the feature and the field.
    pub(crate) fn parse(bytes: &[u8], source: &str) -> Result<Catalogue, CatalogueError> {
        let fail = |msg: String| CatalogueError(format!("{source}: {msg}"));
        let doc: Document = serde_json::from_slice(bytes)
            .map_err(|e| fail(format!("not a valid catalogue: {e}")))?;
        if doc.schema != 1 {
            return Err(fail(format!(
                "schema {} is not supported (this agent reads schema 1)",
                doc.schema
            )));
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &doc.features {
            validate_feature(f).map_err(|m| fail(format!("feature '{}': {m}", f.id)))?;
            // A feature may be listed once per version: the first entry is its current one,
            // the others are what updateInstance can move an instance to.
            if !seen.insert((f.id.as_str(), f.version.as_str())) {
                return Err(fail(format!(
                    "feature '{}' {} is listed twice",
                    f.id, f.version
                )));
            }
        }
        Ok(Catalogue {
            features: doc.features,
            source: source.to_owned(),
            serial: doc.serial,
            signed_by: None,
        })
    }
}

fn validate_upstream(f: &Feature, u: &Upstream) -> Result<(), String> {
    if !is_http_url(&u.repo) || u.owner_repo().is_none() {
        return Err(format!(
            "upstream repo '{}' must be https://HOST/OWNER/REPO",
            u.repo
        ));
    }
    if u.version_of(&u.tag.replace("{version}", &f.version))
        .as_deref()
        != Some(f.version.as_str())
    {
        return Err(format!(
            "upstream tag '{}' must contain {{version}} once",
            u.tag
        ));
    }
    for (arch, a) in &u.assets {
        if !f.assets.contains_key(arch) {
            return Err(format!(
                "upstream asset {arch} has no asset of the current version to follow"
            ));
        }
        let names = [Some(&a.name), a.path.as_ref(), a.checksums.as_ref()];
        if names
            .into_iter()
            .flatten()
            .any(|n| !is_safe_member(&n.replace("{version}", "1")))
        {
            return Err(format!(
                "upstream asset {arch}: names must be relative paths"
            ));
        }
    }
    for (arch, a) in &f.assets {
        if u.assets.contains_key(arch) && a.digest.is_none() && u.assets[arch].checksums.is_none() {
            return Err(format!(
                "upstream asset {arch} gives newer versions no way to be verified (digest or checksums)"
            ));
        }
    }
    // The current version rendered from the templates must be the current assets.
    let rendered = u.render(f, &f.version);
    for (arch, a) in &rendered.assets {
        let current = &f.assets[arch];
        if a.url != current.url || a.path != current.path || a.checksums != current.checksums {
            return Err(format!(
                "upstream asset {arch} renders {} for {}, but the asset is {}",
                a.url, f.version, current.url
            ));
        }
    }
    Ok(())
}

fn validate_feature(f: &Feature) -> Result<(), String> {
    if let Some(u) = &f.upstream {
        validate_upstream(f, u)?;
    }
    if !is_feature_id(&f.id) {
        return Err("id must match ^[a-z0-9][a-z0-9-]{0,31}$".into());
    }
    if !is_safe_component(&f.version, 64) {
        return Err(format!(
            "version '{}' must be 1-64 characters of A-Z a-z 0-9 . _ + - and not start with '.'",
            f.version
        ));
    }
    if !is_safe_component(&f.binary, 64) {
        return Err(format!("binary '{}' is not a plain file name", f.binary));
    }
    if let Some(c) = &f.config
        && crate::configgen::Generator::by_name(c).is_none()
    {
        return Err(format!("config '{c}' is not one of tor, sing-box, xray"));
    }
    if let Some(svc) = &f.service {
        for cap in &svc.capabilities {
            if capability(cap).is_none() {
                return Err(format!("capability '{cap}' is not one this agent grants"));
            }
        }
        if f.config.is_none() && svc.args.is_none() && (svc.check.is_some() || svc.health.is_some())
        {
            return Err("service needs 'args' (or a 'config' generator) to run".into());
        }
    }
    for (arch, asset) in &f.assets {
        if !ARCH_KEYS.contains(&arch.as_str()) {
            return Err(format!(
                "asset key '{arch}' is not one of {}",
                ARCH_KEYS.join(", ")
            ));
        }
        validate_asset(asset).map_err(|m| format!("asset {arch}: {m}"))?;
    }
    Ok(())
}

fn validate_asset(a: &Asset) -> Result<(), String> {
    if let Some(names) = &a.package {
        return validate_package(a, names);
    }
    if !is_http_url(&a.url) {
        return Err(format!("url '{}' must be an http(s) URL", a.url));
    }
    if a.file_name().is_empty() {
        return Err(format!("url '{}' does not end in a file name", a.url));
    }
    if a.sha256.is_none() && a.checksums.is_none() && a.digest.is_none() {
        return Err("needs sha256, checksums or digest to be verifiable".into());
    }
    match a.digest.as_deref() {
        Some("github") if crate::github::release_asset(&a.url).is_none() => {
            return Err(format!(
                "digest \"github\" needs a release download URL (SCHEME://HOST/OWNER/REPO/releases/download/TAG/NAME), got '{}'",
                a.url
            ));
        }
        None | Some("github") => {}
        Some(d) => return Err(format!("digest '{d}' is not one of: github")),
    }
    if let Some(h) = &a.sha256
        && util::parse_sha256_hex(h).is_none()
    {
        return Err(format!("sha256 must be 64 hex digits, got '{h}'"));
    }
    if let Some(c) = &a.checksums_sig {
        if a.checksums.is_none() {
            return Err("checksums_sig without checksums".into());
        }
        if !is_http_url(c) {
            return Err(format!("checksums_sig '{c}' must be an http(s) URL"));
        }
    }
    if let Some(c) = &a.checksums
        && !is_http_url(c)
    {
        return Err(format!("checksums '{c}' must be an http(s) URL"));
    }
    match (a.archive, &a.path) {
        (ArchiveKind::None, _) => {}
        (_, None) => return Err("an archive needs 'path', the binary inside it".into()),
        (_, Some(p)) => {
            if !is_safe_member(p) {
                return Err(format!(
                    "path '{p}' must be relative without '.' or '..' components"
                ));
            }
        }
    }
    Ok(())
}

/// A package asset: known managers, plain package names, an absolute binary path in a system
/// binary directory, and nothing of a download.
fn validate_package(a: &Asset, names: &BTreeMap<String, String>) -> Result<(), String> {
    if !a.url.is_empty() || a.sha256.is_some() || a.checksums.is_some() || a.digest.is_some() {
        return Err("a package asset has no url, sha256, checksums or digest (its package manager verifies it)".into());
    }
    if names.is_empty() {
        return Err("package names no package manager".into());
    }
    for (m, n) in names {
        if !["apk", "opkg", "apt"].contains(&m.as_str()) {
            return Err(format!(
                "package manager '{m}' is not one of apk, opkg, apt"
            ));
        }
        let plain = n.len() <= 64
            && n.starts_with(|c: char| c.is_ascii_alphanumeric())
            && n.bytes().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'+' | b'-')
            });
        if !plain {
            return Err(format!(
                "package name '{n}' ({m}) is not a plain package name"
            ));
        }
    }
    let path = a.path.as_deref().unwrap_or("");
    let in_bin = ["/usr/bin/", "/usr/sbin/", "/bin/", "/sbin/"]
        .iter()
        .any(|d| {
            path.strip_prefix(d)
                .is_some_and(|rest| is_safe_component(rest, 64))
        });
    if !in_bin {
        return Err(format!(
            "a package asset's path must be its binary in /usr/bin, /usr/sbin, /bin or /sbin, got '{path}'"
        ));
    }
    Ok(())
}

/// One path component made of a conservative character set, never `.`-leading.
fn is_safe_component(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && !s.starts_with('.')
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'+' | b'-'))
}

/// A relative archive member path: components separated by '/', none empty, '.' or '..'.
pub(crate) fn is_safe_member(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 255
        && !p.starts_with('/')
        && !p.contains('\\')
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    matches!(rest, Some(r) if !r.is_empty() && !r.starts_with('/') && !s.chars().any(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(asset: &str) -> String {
        format!(
            r#"{{"schema":1,"features":[{{"id":"sing-box","name":"sing-box","version":"1.14.4",
            "binary":"sing-box","unknown":"ignored","assets":{{"x86_64":{asset}}}}}]}}"#
        )
    }

    #[test]
    fn builtin_catalogue_is_valid_and_lists_the_three_services() {
        let c = Catalogue::builtin().unwrap();
        for id in ["tor", "sing-box", "xray"] {
            let f = c.feature(id).unwrap_or_else(|| panic!("{id} missing"));
            for arch in ARCH_KEYS {
                assert!(f.asset(arch).is_some(), "{id} has no {arch} asset");
            }
        }
        // MIPS: soft-float builds, which run with or without an FPU (the agent's own MIPS
        // builds are soft-float too); a hard-float one needs an FPU or the kernel's emulator.
        for arch in ["mips", "mipsel"] {
            let x = c.feature("xray").unwrap().asset(arch).unwrap();
            assert_eq!(x.path.as_deref(), Some("xray_softfloat"));
            let s = c.feature("sing-box").unwrap().asset(arch).unwrap();
            assert!(s.url.ends_with("-softfloat.tar.gz"), "{}", s.url);
        }
    }

    #[test]
    fn a_good_asset_parses_with_defaults() {
        let c = Catalogue::parse(
            doc(r#"{"url":"http://127.0.0.1/a/sing-box.tar.gz?x=1","checksums":"http://127.0.0.1/a/checksums.txt","archive":"tar.gz","path":"d/sing-box"}"#).as_bytes(),
            "t",
        )
        .unwrap();
        let a = c.feature("sing-box").unwrap().asset("x86_64").unwrap();
        assert_eq!(a.file_name(), "sing-box.tar.gz");
        assert_eq!(a.archive, ArchiveKind::TarGz);
        assert!(c.feature("sing-box").unwrap().asset("mips").is_none());
    }

    #[test]
    fn bad_assets_are_refused_with_the_field_named() {
        for (asset, needle) in [
            (r#"{"url":"ftp://x/a"}"#, "must be an http(s) URL"),
            (
                r#"{"url":"http://x/a"}"#,
                "needs sha256, checksums or digest",
            ),
            (
                r#"{"url":"http://x/a","digest":"github"}"#,
                "needs a release download URL",
            ),
            (
                r#"{"url":"http://x/o/r/releases/download/t/a","digest":"sha1"}"#,
                "is not one of: github",
            ),
            (
                r#"{"url":"http://x/a","sha256":"abc"}"#,
                "sha256 must be 64 hex digits",
            ),
            (r#"{"url":"http://x/a","sha256":"ZZ"}"#, "64 hex digits"),
            (
                r#"{"url":"http://x/a","checksums":"http://x/c","archive":"zip"}"#,
                "needs 'path'",
            ),
            (
                r#"{"url":"http://x/a","checksums":"http://x/c","archive":"zip","path":"../b"}"#,
                "must be relative",
            ),
            (
                r#"{"url":"http://x/a","checksums":"http://x/c","archive":"rar","path":"b"}"#,
                "unknown variant",
            ),
        ] {
            let e = Catalogue::parse(doc(asset).as_bytes(), "t").unwrap_err().0;
            assert!(e.contains(needle), "{asset}: {e}");
            assert!(
                e.contains("feature 'sing-box'") || e.contains("not a valid catalogue"),
                "{e}"
            );
        }
    }

    #[test]
    fn path_like_identifiers_are_refused() {
        for (id, version, binary, needle) in [
            ("../x", "1", "b", "id must match"),
            ("UP", "1", "b", "id must match"),
            ("ok", "../1", "b", "version"),
            ("ok", "1", "a/b", "binary"),
        ] {
            let text = format!(
                r#"{{"schema":1,"features":[{{"id":"{id}","name":"n","version":"{version}","binary":"{binary}","assets":{{}}}}]}}"#
            );
            let e = Catalogue::parse(text.as_bytes(), "t").unwrap_err().0;
            assert!(e.contains(needle), "{text}: {e}");
        }
        let e = Catalogue::parse(br#"{"schema":2,"features":[]}"#, "t")
            .unwrap_err()
            .0;
        assert!(e.contains("schema 2 is not supported"), "{e}");
    }

    #[test]
    fn a_catalogue_schema_narrows_the_generators_and_never_widens_it() {
        let text = r#"{"schema":1,"features":[{"id":"tor","name":"tor","version":"1","binary":"tor",
            "config":"tor","settingsSchema":{"type":"object","properties":{"bridges":{"maxItems":1}}},
            "assets":{}}]}"#;
        let c = Catalogue::parse(text.as_bytes(), "t").unwrap();
        let tor = c.feature("tor").unwrap();
        let bridges = |b: Value| serde_json::json!({ "bridges": b });
        tor.check_settings(&bridges(serde_json::json!(["1.2.3.4:443"])))
            .unwrap();
        let e = tor
            .check_settings(&bridges(serde_json::json!(["1.2.3.4:443\nExitRelay 1"])))
            .unwrap_err();
        assert!(e.contains("settings.bridges[0] is not a valid text"), "{e}");
        let e = tor
            .check_settings(&bridges(serde_json::json!(["1.2.3.4:1", "1.2.3.4:2"])))
            .unwrap_err();
        assert!(e.contains("more than 1 items"), "{e}");
        assert_eq!(
            tor.schema(),
            Some(crate::configgen::Generator::Tor.schema()),
            "clients see the generator's schema"
        );
    }

    #[test]
    fn member_paths_are_checked() {
        assert!(is_safe_member("a/b/c"));
        for bad in ["", "/a", "a/../b", "./a", "a//b", "a\\b", ".."] {
            assert!(!is_safe_member(bad), "{bad}");
        }
    }

    #[test]
    fn versions_compare_by_their_numbers() {
        assert!(newer("1.10.0", "1.9.3"));
        assert!(newer("1.2.1", "1.2"));
        assert!(newer("25.10.15", "25.8.3"));
        assert!(!newer("1.2.3", "1.2.3"));
        assert!(!newer("1.9.3", "1.10.0"));
        assert!(!newer("system", "1.0"));
        assert!(
            !newer("1.2.3-beta", "1.2.3-rc"),
            "text parts are never newer"
        );
        assert!(
            !newer("1.2.3-rc1", "1.2.3"),
            "a pre-release is not newer than its release"
        );
    }

    #[test]
    fn a_newer_release_renders_from_the_upstream_templates() {
        let c = Catalogue::builtin().unwrap();
        let sb = c.feature("sing-box").unwrap();
        let u = sb.upstream.as_ref().unwrap();
        assert_eq!(u.version_of("v1.15.0").as_deref(), Some("1.15.0"));
        assert_eq!(u.version_of("1.15.0"), None);
        let next = u.render(sb, "1.15.0");
        let a = next.asset("aarch64").unwrap();
        assert_eq!(
            a.url,
            "https://github.com/SagerNet/sing-box/releases/download/v1.15.0/sing-box-1.15.0-linux-arm64.tar.gz"
        );
        assert_eq!(
            a.path.as_deref(),
            Some("sing-box-1.15.0-linux-arm64/sing-box")
        );
        assert_eq!(a.digest.as_deref(), Some("github"));
        let x = c.feature("xray").unwrap();
        let next = x.upstream.as_ref().unwrap().render(x, "26.1.1");
        assert_eq!(
            next.asset("mips").unwrap().checksums.as_deref(),
            Some(
                "https://github.com/XTLS/Xray-core/releases/download/v26.1.1/Xray-linux-mips32.zip.dgst"
            )
        );
    }
}
