//! Checksum files: GNU `sha256sum` output, and the OpenSSL `dgst` digests some upstreams
//! (Xray) publish beside each asset.
//!
//! GNU lines are `<64 hex><two spaces or " *"><name>`; `#` comments and blank lines are
//! skipped and CRLF line ends accepted. A `.dgst` file holds `SHA2-256= <hex>` (one asset per
//! file) or `SHA256(<name>)= <hex>`.

use crate::util;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChecksumsError {
    /// A line is neither a comment nor a checksum entry.
    Malformed { line: usize, text: String },
    /// The file parsed but does not list the asset.
    NotListed { name: String, listed: usize },
    /// The same name appears twice with different digests.
    Conflicting { name: String },
}

impl std::fmt::Display for ChecksumsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChecksumsError::Malformed { line, text } => {
                write!(
                    f,
                    "checksums file line {line} is not '<sha256>  <name>': {text:?}"
                )
            }
            ChecksumsError::NotListed { name, listed } => write!(
                f,
                "checksums file does not list '{name}' ({listed} other entries)"
            ),
            ChecksumsError::Conflicting { name } => {
                write!(
                    f,
                    "checksums file lists '{name}' twice with different digests"
                )
            }
        }
    }
}

/// Finds the SHA-256 of `name` in a checksums file.
pub(crate) fn lookup(text: &str, name: &str) -> Result<[u8; 32], ChecksumsError> {
    let mut found: Option<[u8; 32]> = None;
    let mut nameless: Vec<[u8; 32]> = Vec::new();
    let mut listed = 0usize;
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let malformed = || ChecksumsError::Malformed {
            line: i + 1,
            text: line.chars().take(120).collect(),
        };
        let (digest, entry_name) = match parse_line(line) {
            Line::Entry(d, n) => (d, Some(n)),
            Line::Nameless(d) => (d, None),
            Line::OtherDigest => continue,
            Line::Bad => return Err(malformed()),
        };
        match entry_name {
            None => nameless.push(digest),
            Some(n) => {
                listed += 1;
                // A leading "./" is how `sha256sum ./file` prints names.
                if n.strip_prefix("./").unwrap_or(n) == name {
                    if matches!(found, Some(prev) if prev != digest) {
                        return Err(ChecksumsError::Conflicting { name: name.into() });
                    }
                    found = Some(digest);
                }
            }
        }
    }
    if let Some(d) = found {
        return Ok(d);
    }
    // A `.dgst` sidecar names no file: it is the digest of the one asset it sits beside.
    match nameless.as_slice() {
        [d] if listed == 0 => Ok(*d),
        _ => Err(ChecksumsError::NotListed {
            name: name.into(),
            listed,
        }),
    }
}

enum Line<'a> {
    Entry([u8; 32], &'a str),
    Nameless([u8; 32]),
    /// A digest of another algorithm in a `.dgst` file (MD5=, SHA1=, SHA2-512= ...).
    OtherDigest,
    Bad,
}

fn parse_line(line: &str) -> Line<'_> {
    // GNU: 64 hex, then "  name" (text mode) or " *name" (binary mode).
    if line.len() > 66 && line.is_char_boundary(64) && line.is_char_boundary(66) {
        let (hex, rest) = line.split_at(64);
        if let Some(d) = util::parse_sha256_hex(hex)
            && (rest.starts_with("  ") || rest.starts_with(" *"))
        {
            return Line::Entry(d, &rest[2..]);
        }
    }
    // OpenSSL dgst: "SHA2-256= hex", "SHA256(name)= hex".
    if let Some((label, value)) = line.split_once("= ") {
        let label = label.trim();
        let value = value.trim();
        if label == "SHA2-256" || label == "SHA256" {
            return util::parse_sha256_hex(value).map_or(Line::Bad, Line::Nameless);
        }
        for prefix in ["SHA256(", "SHA2-256("] {
            if let Some(n) = label.strip_prefix(prefix).and_then(|r| r.strip_suffix(')')) {
                return util::parse_sha256_hex(value).map_or(Line::Bad, |d| Line::Entry(d, n));
            }
        }
        if label
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'(' || c == b')' || c == b'.')
        {
            return Line::OtherDigest;
        }
    }
    Line::Bad
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

    #[test]
    fn gnu_text_and_binary_modes_comments_and_crlf() {
        let text = format!("# release 1\r\n\r\n{A}  one.tar.gz\r\n{B} *two.zip\r\n");
        assert_eq!(lookup(&text, "one.tar.gz").unwrap(), [0xaa; 32]);
        assert_eq!(lookup(&text, "two.zip").unwrap(), [0xbb; 32]);
        assert_eq!(lookup(&format!("{A}  ./x"), "x").unwrap(), [0xaa; 32]);
    }

    #[test]
    fn unknown_name_is_a_clear_error() {
        let text = format!("{A}  one.tar.gz\n");
        assert_eq!(
            lookup(&text, "other").unwrap_err(),
            ChecksumsError::NotListed {
                name: "other".into(),
                listed: 1
            }
        );
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        for text in [
            format!("{A}  ok\nnot a checksum line\n"),
            format!("{A}  ok\n{}  short\n", &A[..63]),
            format!("{A}  ok\n{A} nospace\n"),
            format!("{A}  ok\nSHA2-256= xyz\n"),
        ] {
            match lookup(&text, "ok") {
                Err(ChecksumsError::Malformed { line: 2, .. }) => {}
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn conflicting_duplicates_are_refused() {
        let text = format!("{A}  x\n{B}  x\n");
        assert!(matches!(
            lookup(&text, "x"),
            Err(ChecksumsError::Conflicting { .. })
        ));
    }

    #[test]
    fn dgst_sidecars() {
        let text = format!("MD5= 0123\nSHA1= 4567\nSHA2-256= {A}\nSHA2-512= 89ab\n");
        assert_eq!(lookup(&text, "Xray-linux-64.zip").unwrap(), [0xaa; 32]);
        let text = format!("SHA256(one.zip)= {A}\nSHA256(two.zip)= {B}\n");
        assert_eq!(lookup(&text, "two.zip").unwrap(), [0xbb; 32]);
        // OpenSSL 1.x spelling, as older Xray releases wrote it.
        let text = format!("MD5= 0123\nSHA1= 4567\nSHA256= {B}\nSHA512= 89ab\n");
        assert_eq!(
            lookup(&text, "Xray-linux-mips32le.zip").unwrap(),
            [0xbb; 32]
        );
    }
}
