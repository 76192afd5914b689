//! Gives the errors async-graphql raises itself (parse, validation, limits) a stable
//! `extensions.code`, like the ones resolvers return, so clients can branch on codes alone.
//!
//! Done on the response, not in an async-graphql extension: with any extension registered,
//! every field of every query goes through the extension chain (boxed futures per field),
//! which cost a third of the `instances` query's time.

use crate::code::Code;
use async_graphql::ServerError;
use serde_json::Value;

/// The code of an error that carries none: async-graphql's own, before execution.
fn classify(message: &str) -> Code {
    if message.contains("ecursion") || message.contains("nested too deep") {
        Code::QueryTooDeep
    } else if message.contains("too complex") {
        Code::QueryTooComplex
    } else if message.contains("-->") {
        // The parser's (pest's) message points at the input: ` --> 1:14`.
        Code::GraphqlParseFailed
    } else {
        Code::GraphqlValidationFailed
    }
}

/// Adds the code to every error of a response that has none.
pub(super) fn add(errors: &mut [ServerError]) {
    for e in errors {
        let code = classify(&e.message);
        let ext = e.extensions.get_or_insert_with(Default::default);
        if ext.get("code").is_none() {
            ext.set("code", code.as_str());
        }
    }
}

/// The same for a WebSocket message async-graphql wrote: `error` (its payload a list of
/// errors) or `next`/`data` (a response with `errors`). Other messages come back as they are.
pub(super) fn add_to_message(text: String) -> String {
    if !text.contains("\"errors\"") && !text.contains("\"type\":\"error\"") {
        return text;
    }
    let Ok(mut v) = serde_json::from_str::<Value>(&text) else {
        return text;
    };
    let payload = &mut v["payload"];
    let list = if payload.is_array() {
        payload
    } else {
        &mut payload["errors"]
    };
    let Some(errors) = list.as_array_mut() else {
        return text;
    };
    for e in errors {
        let code = classify(e["message"].as_str().unwrap_or(""));
        let Some(obj) = e.as_object_mut() else {
            continue;
        };
        let ext = obj
            .entry("extensions")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(ext) = ext.as_object_mut() {
            ext.entry("code")
                .or_insert_with(|| Value::String(code.as_str().into()));
        }
    }
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema};

    struct Q;
    #[Object]
    impl Q {
        async fn a(&self) -> Q {
            Q
        }
        async fn x(&self) -> u8 {
            1
        }
    }

    /// The errors a real schema (same limits as the agent's) gives `query`, with codes.
    fn codes(query: &str) -> Vec<String> {
        let schema = Schema::build(Q, EmptyMutation, EmptySubscription)
            .limit_depth(8)
            .limit_complexity(20)
            .limit_recursive_depth(32)
            .finish();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut r = rt.block_on(schema.execute(query));
        add(&mut r.errors);
        if r.errors.is_empty() {
            return Vec::new();
        }
        let v = serde_json::to_value(&r).unwrap();
        let ws = add_to_message(
            serde_json::json!({"type": "error", "id": "1", "payload": v["errors"]}).to_string(),
        );
        let ws: Value = serde_json::from_str(&ws).unwrap();
        r.errors
            .iter()
            .zip(ws["payload"].as_array().unwrap())
            .map(|(e, w)| {
                let code = e.extensions.as_ref().unwrap().get("code").unwrap();
                let code = serde_json::to_value(code).unwrap();
                assert_eq!(code, w["extensions"]["code"], "HTTP and WebSocket agree");
                code.as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn async_graphqls_own_errors_get_their_codes() {
        assert_eq!(codes("{ a {"), ["GRAPHQL_PARSE_FAILED"]);
        assert_eq!(codes("{ nope }"), ["GRAPHQL_VALIDATION_FAILED"]);
        let deep = format!("{{ {}x{} }}", "a { ".repeat(12), " }".repeat(12));
        assert_eq!(codes(&deep), ["QUERY_TOO_DEEP"]);
        let very_deep = format!("{{ {}x{} }}", "a { ".repeat(100), " }".repeat(100));
        assert_eq!(codes(&very_deep), ["QUERY_TOO_DEEP"]);
        let wide = format!(
            "{{ {} }}",
            (0..30)
                .map(|i| format!("x{i}: x"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        assert_eq!(codes(&wide), ["QUERY_TOO_COMPLEX"]);
        assert!(codes("{ x }").is_empty());
    }

    #[test]
    fn a_code_already_there_is_kept_and_other_messages_pass_unchanged() {
        let msg = r#"{"type":"error","id":"7","payload":[{"message":"too many","extensions":{"code":"TOO_MANY_SUBSCRIPTIONS"}}]}"#;
        let v: Value = serde_json::from_str(&add_to_message(msg.into())).unwrap();
        assert_eq!(
            v["payload"][0]["extensions"]["code"],
            "TOO_MANY_SUBSCRIPTIONS"
        );
        let next = r#"{"type":"next","id":"1","payload":{"data":{"x":1}}}"#;
        assert_eq!(add_to_message(next.into()), next);
    }
}
