//! GitHub's REST API, the one read verification needs: a release by its tag, whose assets
//! carry a `digest` (`"sha256:<hex>"`, on every asset uploaded since 2025-06-03).
//!
//! `GET {api}/repos/{owner}/{repo}/releases/tags/{tag}` with `Accept:
//! application/vnd.github+json` and `X-GitHub-Api-Version: 2022-11-28`; the owner, repository,
//! tag and asset name come from the download URL (`…/{owner}/{repo}/releases/download/{tag}/
//! {name}`, github.com or a GitHub Enterprise host). A token, when configured, is read from its
//! file at each request and sent as `Authorization: Bearer`; it is never logged. Rate limits
//! (403 or 429 with `x-ratelimit-remaining: 0` or `retry-after`) are waited out a bounded
//! number of times when the wait is short, then reported with when the limit resets.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

/// `[github]`.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The REST API's base URL (GitHub Enterprise: `https://HOST/api/v3`).
    pub api_url: String,
    /// A file holding a token (raises the anonymous limit of 60 requests an hour).
    pub token_file: Option<PathBuf>,
    /// The longest rate-limit wait that is sat out (longer: the error says when to retry).
    pub max_wait: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            api_url: "https://api.github.com".into(),
            token_file: None,
            max_wait: Duration::from_secs(60),
        }
    }
}

/// Attempts after a rate-limit answer, beyond the first.
const RATE_LIMIT_RETRIES: u32 = 2;
/// A release document larger than this is refused.
const RELEASE_CAP: u64 = 4 << 20;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Error {
    /// The URL is not a release download URL.
    NotARelease(String),
    /// The API could not be asked, or answered something other than the release.
    Unavailable(String),
    /// Still rate-limited after the bounded retries.
    RateLimited(String),
    /// The answer is not a release document.
    Invalid(String),
    /// The release has no asset of that name.
    NotListed(String),
    /// The asset has no (SHA-256) digest.
    NoDigest(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotARelease(m)
            | Error::Unavailable(m)
            | Error::RateLimited(m)
            | Error::Invalid(m)
            | Error::NotListed(m)
            | Error::NoDigest(m) => f.write_str(m),
        }
    }
}

/// A release asset named by its download URL.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ReleaseAsset<'a> {
    pub owner: &'a str,
    pub repo: &'a str,
    pub tag: &'a str,
    pub name: &'a str,
}

/// `SCHEME://HOST/{owner}/{repo}/releases/download/{tag}/{name}`, nothing else.
pub(crate) fn release_asset(url: &str) -> Option<ReleaseAsset<'_>> {
    let rest = url.split(['?', '#']).next()?.split_once("://")?.1;
    let (_host, path) = rest.split_once('/')?;
    if path.split('/').count() != 6 {
        return None;
    }
    let mut seg = path.rsplit('/');
    let (name, tag, download, releases, repo, owner) = (
        seg.next()?,
        seg.next()?,
        seg.next()?,
        seg.next()?,
        seg.next()?,
        seg.next()?,
    );
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'%' && b != b'\\')
    };
    (download == "download"
        && releases == "releases"
        && [owner, repo, tag, name].into_iter().all(ok))
    .then_some(ReleaseAsset {
        owner,
        repo,
        tag,
        name,
    })
}

/// The SHA-256 GitHub lists for the release asset at `url`.
pub(crate) fn asset_digest(
    agent: &ureq::Agent,
    s: &Settings,
    url: &str,
) -> Result<[u8; 32], Error> {
    let a = release_asset(url).ok_or_else(|| {
        Error::NotARelease(format!(
            "{url} is not a GitHub release download URL (…/OWNER/REPO/releases/download/TAG/NAME)"
        ))
    })?;
    let api = format!(
        "{}/repos/{}/{}/releases/tags/{}",
        s.api_url.trim_end_matches('/'),
        a.owner,
        a.repo,
        a.tag
    );
    let body = get_json(agent, s, &api)?;
    digest_in(&body, &a, &api)
}

/// The tag of the repository's latest release (`GET /repos/O/R/releases/latest`: the newest
/// that is neither a draft nor a prerelease).
pub(crate) fn latest_tag(
    agent: &ureq::Agent,
    s: &Settings,
    owner: &str,
    repo: &str,
) -> Result<String, Error> {
    let api = format!(
        "{}/repos/{owner}/{repo}/releases/latest",
        s.api_url.trim_end_matches('/')
    );
    let body = get_json(agent, s, &api)?;
    let release: Value = serde_json::from_slice(&body)
        .map_err(|e| Error::Invalid(format!("{api}: not a release document: {e}")))?;
    release
        .get("tag_name")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Error::Invalid(format!("{api}: the release has no tag_name")))
}

fn digest_in(body: &[u8], a: &ReleaseAsset<'_>, api: &str) -> Result<[u8; 32], Error> {
    let release: Value = serde_json::from_slice(body)
        .map_err(|e| Error::Invalid(format!("{api}: not a release document: {e}")))?;
    let assets = release
        .get("assets")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Invalid(format!("{api}: the release has no `assets` list")))?;
    let asset = assets
        .iter()
        .find(|x| x.get("name").and_then(Value::as_str) == Some(a.name))
        .ok_or_else(|| {
            Error::NotListed(format!(
                "release {} of {}/{} has no asset '{}' ({} others)",
                a.tag,
                a.owner,
                a.repo,
                a.name,
                assets.len()
            ))
        })?;
    let no_digest = |what: &str| {
        Error::NoDigest(format!(
            "GitHub lists {what} for asset '{}' of release {} of {}/{} (assets uploaded before 2025-06-03 have none): pin its sha256 in the catalogue instead",
            a.name, a.tag, a.owner, a.repo
        ))
    };
    match asset.get("digest").and_then(Value::as_str) {
        None => Err(no_digest("no digest")),
        Some(d) => d
            .strip_prefix("sha256:")
            .and_then(crate::util::parse_sha256_hex)
            .ok_or_else(|| no_digest(&format!("digest {d:?}, not a sha256,"))),
    }
}

fn get_json(agent: &ureq::Agent, s: &Settings, url: &str) -> Result<Vec<u8>, Error> {
    let token = match &s.token_file {
        None => None,
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|e| {
                Error::Unavailable(format!("GitHub token file {}: {e}", p.display()))
            })?;
            Some(t.trim().to_owned()).filter(|t| !t.is_empty())
        }
    };
    let mut attempt = 0;
    loop {
        let mut req = agent
            .get(url)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(t) = &token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let resp = req
            .call()
            .map_err(|e| Error::Unavailable(format!("GET {url}: {e}")))?;
        let status = resp.status().as_u16();
        if status == 200 {
            return crate::http_client::read_capped(resp.into_body().into_reader(), RELEASE_CAP)
                .map_err(|e| Error::Unavailable(format!("GET {url}: {e}")));
        }
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let limited = (status == 403 || status == 429)
            && (header("retry-after").is_some() || header("x-ratelimit-remaining") == Some("0"));
        if !limited {
            let what = if status == 404 {
                "no such release (or a private repository without a token)"
            } else {
                "not the release"
            };
            return Err(Error::Unavailable(format!(
                "GET {url}: GitHub answered {status}: {what}"
            )));
        }
        let wait = wait_for(header("retry-after"), header("x-ratelimit-reset"));
        attempt += 1;
        if attempt > RATE_LIMIT_RETRIES || wait > s.max_wait {
            return Err(Error::RateLimited(format!(
                "GET {url}: GitHub's rate limit (answer {status}); it allows requests again in {} s{}",
                wait.as_secs(),
                if token.is_none() {
                    " (a token in [github] token_file raises the limit)"
                } else {
                    ""
                }
            )));
        }
        log::warn!(target: "download-manager", "GitHub rate limit: retrying in {} s", wait.as_secs());
        std::thread::sleep(wait);
    }
}

/// How long a rate-limit answer asks to wait: `retry-after` seconds, else until
/// `x-ratelimit-reset` (epoch seconds), else a minute (GitHub's advice for secondary limits).
fn wait_for(retry_after: Option<&str>, reset: Option<&str>) -> Duration {
    if let Some(s) = retry_after.and_then(|v| v.parse::<u64>().ok()) {
        return Duration::from_secs(s);
    }
    if let Some(at) = reset.and_then(|v| v.parse::<u64>().ok()) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        return Duration::from_secs(at.saturating_sub(now).max(1));
    }
    Duration::from_secs(60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_repo_tag_and_name_come_from_the_download_url() {
        assert_eq!(
            release_asset(
                "https://github.com/SagerNet/sing-box/releases/download/v1.14.4/sing-box-1.14.4-linux-arm64.tar.gz"
            ),
            Some(ReleaseAsset {
                owner: "SagerNet",
                repo: "sing-box",
                tag: "v1.14.4",
                name: "sing-box-1.14.4-linux-arm64.tar.gz"
            })
        );
        assert!(release_asset("http://127.0.0.1:8/o/r/releases/download/t/n?x=1").is_some());
        for bad in [
            "https://github.com/o/r/releases/latest/n",
            "https://github.com/o/releases/download/t/n",
            "https://github.com/o/r/releases/download/t/",
            "https://github.com/o/r/releases/download/../n",
            "https://github.com/o/r/releases/download/t%2f/n",
            "https://github.com/x/o/r/releases/download/t/n",
            "n",
        ] {
            assert_eq!(release_asset(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_digest_is_read_from_the_named_asset() {
        let a = release_asset("https://github.com/o/r/releases/download/v1/b.tgz").unwrap();
        let hex = "ab".repeat(32);
        let doc = format!(
            r#"{{"tag_name":"v1","assets":[{{"name":"a.tgz","digest":"sha256:{}"}},{{"name":"b.tgz","digest":"sha256:{hex}"}}]}}"#,
            "cd".repeat(32)
        );
        assert_eq!(digest_in(doc.as_bytes(), &a, "api"), Ok([0xab; 32]));
        let cases = [
            (
                r#"{"assets":[{"name":"a.tgz"}]}"#,
                "has no asset 'b.tgz' (1 others)",
            ),
            (
                r#"{"assets":[{"name":"b.tgz","digest":null}]}"#,
                "lists no digest",
            ),
            (
                r#"{"assets":[{"name":"b.tgz","digest":"sha1:00"}]}"#,
                "not a sha256",
            ),
            (r#"{"message":"Not Found"}"#, "no `assets` list"),
            ("<html>", "not a release document"),
        ];
        for (doc, want) in cases {
            let e = digest_in(doc.as_bytes(), &a, "api")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{doc}: {e}");
        }
    }

    #[test]
    fn rate_limit_waits_follow_the_headers() {
        assert_eq!(wait_for(Some("7"), None), Duration::from_secs(7));
        assert_eq!(wait_for(None, Some("0")), Duration::from_secs(1));
        assert_eq!(wait_for(None, None), Duration::from_secs(60));
    }
}
