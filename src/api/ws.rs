//! GraphQL subscriptions over WebSocket (`graphql-transport-ws`, and the legacy `graphql-ws`).
//!
//! The handshake is answered here; the connection then belongs to one task that checks the
//! token in `connection_init` (or the upgrade request's `Authorization` header) before
//! handing the stream to async-graphql. Unauthenticated sockets are closed with 4403, silent
//! ones with 4408, as the graphql-transport-ws protocol specifies.

use crate::code::Code;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::http::{WebSocket, WebSocketProtocols as Protocols, WsMessage};
use futures_util::{SinkExt, StreamExt, future};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::{Api, Reply, Slot, error_reply};

/// Largest WebSocket message accepted from a client.
const MAX_MESSAGE: usize = 64 * 1024;
/// What a connection's read buffer starts at (it grows to the message being read; tungstenite
/// zero-fills all of it, so every byte here is resident once per subscriber).
const READ_BUFFER: usize = 512;
/// Replies queued while a client's socket refuses writes; past this the connection ends.
const MAX_WRITE_BUFFER: usize = 1024 * 1024;
/// How long a client may take to send `connection_init` (and never past its connection's
/// unauthenticated deadline).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

fn pick_protocol(req: &Request<Incoming>) -> Option<Protocols> {
    req.headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().parse::<Protocols>().ok())
}

pub(super) fn upgrade(
    req: Request<Incoming>,
    api: &Arc<Api>,
    peer: SocketAddr,
    slot: Slot,
) -> Reply {
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (Some(key), true) = (key, version_ok) else {
        let mut r = error_reply(
            StatusCode::BAD_REQUEST,
            Code::BadRequest,
            "not a WebSocket version 13 handshake",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    };
    let Some(protocol) = pick_protocol(&req) else {
        return error_reply(
            StatusCode::BAD_REQUEST,
            Code::BadRequest,
            "Sec-WebSocket-Protocol must offer graphql-transport-ws (or graphql-ws)",
        );
    };
    if let Some(locked) = api.lockout(peer) {
        return locked;
    }
    let pre_authenticated = match api.bearer_ok(&req) {
        Some(false) => {
            api.authenticated(peer, false);
            log::warn!(target: "api", "WebSocket from {peer} with a wrong bearer token");
            return error_reply(
                StatusCode::UNAUTHORIZED,
                Code::Unauthenticated,
                "wrong bearer token",
            );
        }
        Some(true) => {
            slot.authenticate();
            api.authenticated(peer, true)
        }
        None => false,
    };
    let accept = derive_accept_key(key.as_bytes());
    let api = Arc::clone(api);
    // Only the upgrade goes into the task: the request (headers and all) ends here.
    let upgrade = hyper::upgrade::on(req);
    crate::util::spawn(async move {
        // The connection's slot stays taken while the WebSocket lives.
        match upgrade.await {
            Ok(upgraded) => {
                run(
                    TokioIo::new(upgraded),
                    protocol,
                    &api,
                    pre_authenticated,
                    peer,
                    &slot,
                )
                .await;
            }
            Err(e) => log::debug!(target: "api", "WebSocket upgrade from {peer} failed: {e}"),
        }
    });
    let mut r = Reply::new(http_body_util::Full::default());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol.sec_websocket_protocol()),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// The token a client put in its `connection_init` payload: `{"token": T}`, or an
/// `Authorization: Bearer T` given as a payload key (as several clients send headers).
fn payload_token(payload: &Value) -> Option<&str> {
    if let Some(t) = payload.get("token").and_then(Value::as_str) {
        return Some(t);
    }
    let headers = payload.get("headers").unwrap_or(payload);
    ["Authorization", "authorization"]
        .iter()
        .find_map(|k| headers.get(*k).and_then(Value::as_str))
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t)
}

async fn run(
    io: TokioIo<hyper::upgrade::Upgraded>,
    protocol: Protocols,
    api: &Arc<Api>,
    pre_authenticated: bool,
    peer: SocketAddr,
    slot: &Slot,
) {
    // tungstenite's defaults (128 KiB read buffer allocated up front, 128 KiB write
    // batching) cost 160 KiB per subscriber; a client message is small and every reply is
    // flushed at once, so buffers start small and grow only to the largest message.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let (mut sink, source) = ws.split();
    // Only data messages go to GraphQL; the socket ends at a close frame or an error.
    let mut source = source
        .take_while(|m| future::ready(matches!(m, Ok(msg) if !msg.is_close())))
        .filter_map(|m| {
            future::ready(match m {
                Ok(Message::Text(t)) => Some(t.as_bytes().to_vec()),
                Ok(Message::Binary(b)) => Some(b.to_vec()),
                _ => None,
            })
        })
        .boxed();

    let close = |code: u16, reason: &str| {
        Message::Close(Some(CloseFrame {
            code: code.into(),
            reason: reason.to_owned().into(),
        }))
    };
    let mut init_by = tokio::time::Instant::now() + INIT_TIMEOUT;
    if !slot.authenticated() {
        init_by = init_by.min(slot.deadline());
    }
    let first = match tokio::time::timeout_at(init_by, source.next()).await {
        Ok(Some(first)) => first,
        Ok(None) => return,
        Err(_) => {
            let _ = sink
                .send(close(4408, "Connection initialisation timeout"))
                .await;
            return;
        }
    };
    // Parsed in a scope of its own: the message's JSON tree is not kept for the connection's life.
    let (is_init, token_ok) = {
        let init: Value = serde_json::from_slice(&first).unwrap_or(Value::Null);
        let payload = init.get("payload").unwrap_or(&Value::Null);
        (
            init.get("type").and_then(Value::as_str) == Some("connection_init"),
            payload_token(payload).is_some_and(|t| api.token.matches(t)),
        )
    };
    if !is_init {
        let _ = sink
            .send(close(4401, "Unauthorized: send connection_init first"))
            .await;
        return;
    }
    if !pre_authenticated && api.lockout(peer).is_some() {
        let _ = sink
            .send(close(4429, "Too many failed authentications; retry later"))
            .await;
        return;
    }
    let authorized = pre_authenticated || api.authenticated(peer, token_ok);
    if !authorized {
        log::warn!(target: "api", "WebSocket from {peer}: connection_init without a valid token");
        let _ = sink
            .send(close(4403, "Forbidden: missing or wrong token"))
            .await;
        return;
    }
    slot.authenticate();
    // Subscriptions beyond the connection's limit never reach async-graphql; their refusal
    // is queued in `Live` and goes out between the replies (woken by `Notify`, which, unlike
    // a channel, allocates nothing until a refusal exists).
    let live = Arc::new((Mutex::new(Live::default()), tokio::sync::Notify::new()));
    let gate = Arc::clone(&live);
    let max = api.limits.max_subscriptions;
    let input = futures_util::stream::once(future::ready(first))
        .chain(source)
        .filter(move |raw| {
            let (live, wake) = &*gate;
            let admitted = live.lock().map_or(true, |mut l| match l.admit(raw, max) {
                Ok(()) => true,
                Err(id) => {
                    l.refused.push(refusal(protocol, &id, max));
                    wake.notify_one();
                    false
                }
            });
            future::ready(admitted)
        });
    let mut output = WebSocket::new(api.schema.clone(), input, protocol);
    let (gate, wake) = &*live;
    'connection: loop {
        tokio::select! {
            msg = output.next() => match msg {
                Some(WsMessage::Text(text)) => {
                    if let Ok(mut l) = gate.lock() {
                        l.replied(&text);
                    }
                    let text = super::codes::add_to_message(text);
                    if sink.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                Some(WsMessage::Close(code, reason)) => {
                    let _ = sink.send(close(code, &reason)).await;
                    break;
                }
                None => break,
            },
            () = wake.notified() => {
                let texts = gate.lock().map(|mut l| std::mem::take(&mut l.refused));
                for text in texts.unwrap_or_default() {
                    if sink.send(Message::text(text)).await.is_err() {
                        break 'connection;
                    }
                }
            }
        }
    }
    let _ = sink.close().await;
}

/// The `type` and `id` of a protocol message.
#[derive(serde::Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
}

fn head(raw: &[u8]) -> Option<Head<'_>> {
    serde_json::from_slice(raw).ok()
}

/// The operations running on one connection, by id, and the refusals not yet sent.
#[derive(Default)]
struct Live {
    ids: HashSet<String>,
    refused: Vec<String>,
}

impl Live {
    /// A client message: `Err(id)` when it starts an operation past the limit.
    fn admit(&mut self, raw: &[u8], max: usize) -> Result<(), String> {
        let Some(Head { kind, id: Some(id) }) = head(raw) else {
            return Ok(());
        };
        match &*kind {
            "subscribe" | "start" if !self.ids.contains(&*id) => {
                if self.ids.len() >= max {
                    return Err(id.into_owned());
                }
                self.ids.insert(id.into_owned());
            }
            "complete" | "stop" => {
                self.ids.remove(&*id);
            }
            _ => {}
        }
        Ok(())
    }

    /// A server message: an operation ends with `complete` or `error`.
    fn replied(&mut self, text: &str) {
        if let Some(Head { kind, id: Some(id) }) = head(text.as_bytes()) {
            if kind == "complete" || kind == "error" {
                self.ids.remove(&*id);
            }
        }
    }
}

/// The protocol's `error` message for an operation refused at the subscription limit.
fn refusal(protocol: Protocols, id: &str, max: usize) -> String {
    let error = serde_json::json!({
        "message": format!(
            "too many subscriptions on this connection (limit {max}, api.max_subscriptions_per_connection); complete one or open another connection"
        ),
        "extensions": { "code": Code::TooManySubscriptions.as_str() },
    });
    let payload = match protocol {
        Protocols::GraphQLWS => Value::Array(vec![error]),
        Protocols::SubscriptionsTransportWS => error,
    };
    serde_json::json!({ "type": "error", "id": id, "payload": payload }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_counts_live_operations_by_id() {
        let mut live = Live::default();
        let sub = |id: &str| format!(r#"{{"type":"subscribe","id":"{id}","payload":{{}}}}"#);
        assert_eq!(live.admit(sub("1").as_bytes(), 2), Ok(()));
        assert_eq!(
            live.admit(sub("1").as_bytes(), 2),
            Ok(()),
            "a duplicate id is not counted twice"
        );
        assert_eq!(live.admit(sub("2").as_bytes(), 2), Ok(()));
        assert_eq!(live.admit(sub("3").as_bytes(), 2), Err("3".to_owned()));
        // The client ends one, the server ends the other.
        assert_eq!(live.admit(br#"{"type":"complete","id":"1"}"#, 2), Ok(()));
        live.replied(r#"{"type":"complete","id":"2"}"#);
        assert_eq!(live.admit(sub("3").as_bytes(), 2), Ok(()));
        assert_eq!(
            live.admit(b"not json", 2),
            Ok(()),
            "garbage is async-graphql's to refuse"
        );
    }

    #[test]
    fn the_refusal_has_each_protocols_error_shape() {
        let v: Value = serde_json::from_str(&refusal(Protocols::GraphQLWS, "7", 3)).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["id"], "7");
        assert_eq!(
            v["payload"][0]["extensions"]["code"],
            Code::TooManySubscriptions.as_str()
        );
        let v: Value =
            serde_json::from_str(&refusal(Protocols::SubscriptionsTransportWS, "7", 3)).unwrap();
        assert_eq!(v["payload"]["extensions"]["code"], "TOO_MANY_SUBSCRIPTIONS");
    }
}
