//! The web page (`web/`, gzipped into the binary by `build.rs`) at `/`, on the API's own
//! listener. Static files only: the page is a client of `/graphql` like any other and holds
//! no secret; the token is typed in by the user. Served under a Content-Security-Policy that
//! lets it load only itself and talk only to this agent.

use std::io::Read;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

/// The page's files: path, type, gzipped bytes.
const FILES: [(&str, &str, &[u8]); 3] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!(concat!(env!("OUT_DIR"), "/index.html.gz")),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!(concat!(env!("OUT_DIR"), "/app.js.gz")),
    ),
    (
        "/app.css",
        "text/css; charset=utf-8",
        include_bytes!(concat!(env!("OUT_DIR"), "/app.css.gz")),
    ),
];

/// Nothing but this agent: no inline script or style, no frames, no other origin.
/// (`connect-src 'self'` covers the same-origin WebSocket.)
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `Accept-Encoding` lists gzip (or `*`) without `q=0`.
fn accepts_gzip(header: &str) -> bool {
    header.split(',').any(|e| {
        let mut parts = e.split(';').map(str::trim);
        let coding = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q == 0.0)
        });
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && !refused
    })
}

/// The reply for a GET of one of the page's paths; None for any other path.
pub(crate) fn file<B>(req: &Request<B>) -> Option<Response<Full<Bytes>>> {
    let (_, kind, gz) = FILES.iter().find(|(p, _, _)| *p == req.uri().path())?;
    let gzip_ok = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(accepts_gzip);
    let body = if gzip_ok {
        Bytes::from_static(gz)
    } else {
        let mut plain = Vec::new();
        if crate::gz::GzDecoder::new(*gz)
            .read_to_end(&mut plain)
            .is_err()
        {
            plain.clear();
        }
        Bytes::from(plain)
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    if gzip_ok {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_is_served_gzipped_or_plain_under_a_strict_policy() {
        let get = |path: &str, enc: Option<&str>| {
            let mut b = Request::builder().uri(path);
            if let Some(e) = enc {
                b = b.header("accept-encoding", e);
            }
            file(&b.body(()).unwrap())
        };
        let gz = get("/", Some("gzip, deflate, br")).unwrap();
        assert_eq!(gz.headers()["content-encoding"], "gzip");
        assert!(
            gz.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        let plain = get("/app.js", None).unwrap();
        assert!(plain.headers().get("content-encoding").is_none());
        assert!(get("/nope", Some("gzip")).is_none());
        assert!(accepts_gzip("deflate, gzip;q=0.5") && accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0") && !accepts_gzip("br") && !accepts_gzip("gzipx"));
        // The whole page within the issue's budget (48 KiB gzipped).
        let total: usize = FILES.iter().map(|(_, _, gz)| gz.len()).sum();
        assert!(total < 48 << 10, "{total}");
    }
}
