//! The API: GraphQL over HTTP (`POST /graphql`) and WebSocket (`graphql-transport-ws` on the
//! same path), plus an unauthenticated `GET /health`, served by hyper on the runtime thread.
//!
//! Owns authentication and request limits; never touches disk or network itself (resolvers
//! go through the installer).

mod codes;
mod guard;
pub(crate) mod parsed;
pub(crate) mod schema;
mod slots;
pub(crate) mod web;
mod ws;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::code::Code;
use crate::install::Installer;
use crate::util;

pub(crate) use schema::AppSchema;
use slots::{Refused, Slot, Slots};

/// Largest GraphQL request body accepted (413 beyond).
const MAX_BODY: usize = 64 * 1024;
/// A client that has not sent a request's headers this long after the last request (or after
/// connecting) is dropped; before it authenticates, `api.unauthenticated_timeout_secs` is
/// the (usually shorter) limit for the whole connection.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The API token, kept only as its SHA-256 so comparisons take constant time whatever the
/// length of what a client presents.
/// How much the API lets one LAN client take: connections, subscriptions, token guesses.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Open TCP connections (HTTP and WebSocket together); more get a 503.
    pub max_connections: usize,
    /// Open connections from one peer address; more get a 503 and take no global slot.
    pub max_connections_per_address: usize,
    /// A connection that has made no authenticated request by then is closed.
    pub unauthenticated_timeout: Duration,
    /// Live subscriptions on one WebSocket; more are refused with an `error` message.
    pub max_subscriptions: usize,
    /// Failed authentications from one address within `auth_window` before it is locked out
    /// for the rest of that window.
    pub auth_failures: u32,
    pub auth_window: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            max_connections_per_address: 16,
            unauthenticated_timeout: Duration::from_secs(10),
            max_subscriptions: 32,
            auth_failures: 10,
            auth_window: Duration::from_secs(60),
        }
    }
}

pub(crate) struct Token([u8; 32]);

impl Token {
    pub(crate) fn new(secret: &str) -> Token {
        Token(Sha256::digest(secret.trim().as_bytes()).into())
    }

    pub(crate) fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        util::ct_eq(&digest, &self.0)
    }
}

pub(crate) struct Api {
    schema: AppSchema,
    parsed: parsed::Parsed,
    token: Token,
    limits: Limits,
    guard: guard::AuthGuard,
}

impl Api {
    pub(crate) fn new(
        installer: Arc<Installer>,
        board: Option<crate::board::Board>,
        token: Token,
        dev: bool,
        limits: Limits,
    ) -> Api {
        Api {
            schema: schema::build(installer, board, dev),
            parsed: parsed::Parsed::default(),
            token,
            guard: guard::AuthGuard::new(limits.auth_failures, limits.auth_window),
            limits,
        }
    }

    /// 429 when `peer` is locked out after too many failed authentications.
    fn lockout(&self, peer: SocketAddr) -> Option<Reply> {
        let wait = self.guard.locked(peer.ip())?;
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut r = error_reply(
            StatusCode::TOO_MANY_REQUESTS,
            Code::RateLimited,
            &format!("too many failed authentications from this address; retry in {secs} s"),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        Some(r)
    }

    /// Records the outcome of a token check for the lockout.
    fn authenticated(&self, peer: SocketAddr, ok: bool) -> bool {
        if ok {
            self.guard.succeeded(peer.ip());
        } else {
            self.guard.failed(peer.ip());
        }
        ok
    }

    /// `Authorization: Bearer <token>`; `None` when the header is absent.
    fn bearer_ok(&self, req: &Request<Incoming>) -> Option<bool> {
        let value = req.headers().get(header::AUTHORIZATION)?;
        let text = value.to_str().unwrap_or("");
        let ok = match text.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                self.token.matches(token)
            }
            _ => false,
        };
        Some(ok)
    }
}

/// What a connection refused at a connection limit gets before it is closed.
fn busy_reply(refused: &Refused) -> Vec<u8> {
    let message = match refused {
        Refused::Global => "too many open connections to the agent (api.max_connections)",
        Refused::PerAddress => {
            "too many open connections from this address (api.max_connections_per_address); close some or retry later"
        }
    };
    let body = format!(
        r#"{{"errors":[{{"message":"{message}","extensions":{{"code":"{}"}}}}]}}"#,
        Code::TooManyConnections
    );
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes the 503, half-closes, then drains what the client sent, so the close does not turn
/// into a reset that destroys the reply before the client reads it.
async fn refuse(mut stream: TcpStream, refused: Refused) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        stream.write_all(&busy_reply(&refused)).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 1024];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Accepts connections until the process ends.
pub(crate) async fn serve(listener: TcpListener, api: Arc<Api>) {
    let limits = &api.limits;
    let slots = Slots::new(limits.max_connections, limits.max_connections_per_address);
    // When each kind of refusal was last logged: a flood must not flood the log too.
    let mut last_warned: [Option<std::time::Instant>; 2] = [None; 2];
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of fds or similar: back off instead of spinning.
                log::warn!(target: "api", "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let deadline = tokio::time::Instant::now() + limits.unauthenticated_timeout;
        let slot = match slots.take(peer.ip(), deadline) {
            Ok(slot) => slot,
            Err(refused) => {
                let last = &mut last_warned[usize::from(refused == Refused::PerAddress)];
                if last.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                    *last = Some(std::time::Instant::now());
                    match refused {
                        Refused::Global => log::warn!(
                            target: "api",
                            "{} connections open (api.max_connections); refusing {peer}",
                            limits.max_connections
                        ),
                        Refused::PerAddress => log::warn!(
                            target: "api",
                            "{} connections open from {} (api.max_connections_per_address); refusing more from it",
                            limits.max_connections_per_address,
                            peer.ip()
                        ),
                    }
                }
                crate::util::spawn(refuse(stream, refused));
                continue;
            }
        };
        crate::util::spawn(connection(stream, peer, Arc::clone(&api), slot));
    }
}

/// Serves one connection; closes it at its deadline unless it has authenticated by then.
async fn connection(stream: TcpStream, peer: SocketAddr, api: Arc<Api>, slot: Slot) {
    let deadline = slot.deadline();
    let held = Arc::clone(&slot);
    let service = hyper::service::service_fn(move |req| {
        let api = Arc::clone(&api);
        let slot = Arc::clone(&slot);
        async move { Ok::<_, Infallible>(handle(req, &api, peer, slot).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    // An upgrade ends `conn` at once: the WebSocket then keeps the slot and the deadline.
    let result = match tokio::time::timeout_at(deadline, conn.as_mut()).await {
        Ok(result) => result,
        Err(_) if held.authenticated() => conn.await,
        Err(_) => {
            log::debug!(target: "api", "closing the connection from {peer}: no authenticated request in time (api.unauthenticated_timeout_secs)");
            return;
        }
    };
    if let Err(e) = result {
        log::debug!(target: "api", "connection from {peer}: {e}");
    }
}

type Reply = Response<Full<Bytes>>;

fn json_reply(status: StatusCode, body: &serde_json::Value) -> Reply {
    bytes_reply(status, body.to_string().into_bytes())
}

/// A JSON document already serialised.
fn bytes_reply(status: StatusCode, body: Vec<u8>) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A GraphQL-shaped error document for failures outside GraphQL execution.
fn error_reply(status: StatusCode, code: Code, message: &str) -> Reply {
    json_reply(
        status,
        &json!({ "errors": [ { "message": message, "extensions": { "code": code.as_str() } } ] }),
    )
}

async fn handle(req: Request<Incoming>, api: &Arc<Api>, peer: SocketAddr, slot: Slot) -> Reply {
    if req.method() == Method::GET
        && let Some(page) = web::file(&req)
    {
        return page;
    }
    // A page of another site the owner has open may not drive the API (nor spend the
    // owner's failed-token allowance): browsers say where a request comes from.
    if req.uri().path() == "/graphql" && cross_origin(&req) {
        log::warn!(target: "api", "refused a request from {peer} made by a page of another site");
        return error_reply(
            StatusCode::FORBIDDEN,
            Code::CrossOrigin,
            "a page of another site may not use this agent's API (its Origin is not this Host; a reverse proxy must pass Host on)",
        );
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => json_reply(
            StatusCode::OK,
            &json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }),
        ),
        (_, "/graphql") if ws::is_upgrade(&req) => ws::upgrade(req, api, peer, slot),
        (&Method::POST, "/graphql") => graphql_post(req, api, peer, &slot).await,
        (_, "/graphql") => {
            let mut r = error_reply(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::MethodNotAllowed,
                "use POST for queries and mutations, a graphql-transport-ws WebSocket for subscriptions",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST, GET"));
            r
        }
        _ => error_reply(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            "no such path; the API is at /graphql, the page at /",
        ),
    }
}

/// A browser's request whose `Origin` is not this agent (scheme://Host). Clients that are not
/// browsers send no `Origin` and are judged by their token alone.
fn cross_origin<B>(req: &Request<B>) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return false;
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let authority = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map_or("", |(_, a)| a);
    host.is_empty() || !authority.eq_ignore_ascii_case(host)
}

async fn graphql_post(
    req: Request<Incoming>,
    api: &Arc<Api>,
    peer: SocketAddr,
    slot: &Slot,
) -> Reply {
    if let Some(locked) = api.lockout(peer) {
        return locked;
    }
    if !api.authenticated(peer, api.bearer_ok(&req) == Some(true)) {
        log::warn!(target: "api", "unauthenticated request from {peer}");
        let mut r = error_reply(
            StatusCode::UNAUTHORIZED,
            Code::Unauthenticated,
            "missing or wrong bearer token (Authorization: Bearer <token from the agent's token file>)",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    slot.authenticate();
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let too_large = || {
        error_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::BodyTooLarge,
            &format!("request body exceeds {MAX_BODY} bytes"),
        )
    };
    if declared.is_some_and(|n| n > MAX_BODY) {
        return too_large();
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return too_large();
        }
        Err(e) => {
            return error_reply(
                StatusCode::BAD_REQUEST,
                Code::BadRequest,
                &format!("cannot read body: {e}"),
            );
        }
    };
    answer(&api.schema, &api.parsed, &body).await
}

/// A request body (already authenticated and size-limited) to its reply.
pub(crate) async fn answer(schema: &AppSchema, parsed: &parsed::Parsed, body: &[u8]) -> Reply {
    let mut request: async_graphql::Request = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error_reply(
                StatusCode::BAD_REQUEST,
                Code::BadRequest,
                &format!("body is not a GraphQL request ({{\"query\": ...}}): {e}"),
            );
        }
    };
    parsed.prepare(&mut request);
    let mut response = schema.execute(request).await;
    codes::add(&mut response.errors);
    match serde_json::to_vec(&response) {
        Ok(v) => bytes_reply(StatusCode::OK, v),
        Err(e) => error_reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            Code::Internal,
            &e.to_string(),
        ),
    }
}
