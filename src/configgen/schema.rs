//! A JSON Schema subset, enough for the settings schemas the generators publish: `type`,
//! `properties`, `required`, `additionalProperties: false`, `enum`, `const`, `oneOf`,
//! `minimum`/`maximum`, `minLength`/`maxLength`, `items`/`minItems`/`maxItems`, and a few `format`s
//! (`hostname`, `uuid`, `nickname`, `text`, `x25519`, `shortid`, `path`, `url`); `writeOnly` marks secrets. Other keywords are not used by our schemas; a
//! validator elsewhere reads the same schema the standard way.

use serde_json::Value;

/// Checks `value` against `schema`; the error names the path (`outbound.serverPort`).
pub(crate) fn validate(schema: &Value, value: &Value) -> Result<(), String> {
    check(schema, value, "settings")
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "null" => v.is_null(),
        _ => false,
    }
}

fn format_ok(format: &str, s: &str) -> bool {
    let b = s.as_bytes();
    match format {
        // A DNS name or an IPv4/IPv6 literal.
        "hostname" => {
            s.parse::<std::net::IpAddr>().is_ok()
                || (!s.is_empty()
                    && s.len() <= 253
                    && s.split('.').all(|l| {
                        !l.is_empty()
                            && l.len() <= 63
                            && !l.starts_with('-')
                            && !l.ends_with('-')
                            && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                    }))
        }
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "uuid" => {
            b.len() == 36
                && b.iter().enumerate().all(|(i, c)| {
                    if matches!(i, 8 | 13 | 18 | 23) {
                        *c == b'-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                })
        }
        // A REALITY public key: base64url (no padding) of 32 bytes.
        "x25519" => {
            s.len() == 43 && crate::util::base64_decode_lenient(s).is_some_and(|k| k.len() == 32)
        }
        // An http(s) URL with a host.
        "url" => s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"))
            .is_some_and(|rest| {
                !rest.is_empty()
                    && !rest.starts_with('/')
                    && s.bytes()
                        .all(|c| c.is_ascii_graphic() && c != b'"' && c != b'\\')
            }),
        // An HTTP request path: `/`, then printable ASCII, `%` only before two hex digits.
        "path" => {
            b.first() == Some(&b'/')
                && b.iter()
                    .all(|c| c.is_ascii_graphic() && *c != b'"' && *c != b'\\')
                && b.iter().enumerate().all(|(i, c)| {
                    *c != b'%'
                        || b.get(i + 1..i + 3)
                            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
                })
        }
        // A REALITY short id: up to 16 hex digits, an even number of them.
        "shortid" => {
            b.len() <= 16 && b.len().is_multiple_of(2) && b.iter().all(u8::is_ascii_hexdigit)
        }
        // Tor relay nicknames: 1-19 letters and digits.
        "nickname" => (1..=19).contains(&b.len()) && b.iter().all(u8::is_ascii_alphanumeric),
        // Free text that goes into a config file: printable, no line breaks or quotes.
        "text" => s.chars().all(|c| !c.is_control() && c != '"' && c != '\\'),
        _ => true,
    }
}

pub(super) fn check(schema: &Value, v: &Value, path: &str) -> Result<(), String> {
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let matching: Vec<usize> = options
            .iter()
            .enumerate()
            .filter(|(_, s)| check(s, v, path).is_ok())
            .map(|(i, _)| i)
            .collect();
        if matching.len() != 1 {
            // Report against the option whose `type` const matches, when there is one, or
            // the only option of the value's JSON type.
            let same_type: Vec<&Value> = options
                .iter()
                .filter(|s| {
                    s.get("type")
                        .and_then(Value::as_str)
                        .is_some_and(|t| type_ok(t, v))
                })
                .collect();
            let hint = options
                .iter()
                .find(|s| {
                    s.pointer("/properties/type/const")
                        .is_some_and(|c| Some(c) == v.get("type"))
                })
                .or(same_type.first().filter(|_| same_type.len() == 1).copied())
                .map(|s| check(s, v, path));
            return match hint {
                Some(Err(e)) => Err(e),
                _ => Err(format!(
                    "{path} matches {} of the allowed forms, not exactly one",
                    matching.len()
                )),
            };
        }
    }
    if let Some(c) = schema.get("const")
        && c != v
    {
        return Err(format!("{path} must be {c}"));
    }
    if let Some(ty) = schema.get("type").and_then(Value::as_str)
        && !type_ok(ty, v)
    {
        return Err(format!("{path} must be of type {ty}"));
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
        return Err(format!("{path} must be one of {}", list.join(", ")));
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            return Err(format!("{path} must be at least {min}"));
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            return Err(format!("{path} must be at most {max}"));
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
            && len < min
        {
            return Err(format!("{path} must be at least {min} characters"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
            && len > max
        {
            return Err(format!("{path} must be at most {max} characters"));
        }
        if let Some(f) = schema.get("format").and_then(Value::as_str)
            && !format_ok(f, s)
        {
            return Err(format!("{path} is not a valid {f}"));
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
            && (items.len() as u64) < min
        {
            return Err(format!("{path} needs at least {min} items"));
        }
        if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
            && items.len() as u64 > max
        {
            return Err(format!("{path} has more than {max} items"));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(item_schema, item, &format!("{path}[{i}]"))?;
            }
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        if let Some(required) = schema.get("required").and_then(Value::as_array) {
            for r in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return Err(format!("{path}.{r} is required"));
                }
            }
        }
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => check(s, val, &format!("{path}.{k}"))?,
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{path}.{k} is not a known setting"));
                }
                None => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_subset_reports_the_failing_path() {
        let schema = json!({
            "type": "object", "additionalProperties": false,
            "properties": {
                "port": { "type": "integer", "minimum": 1, "maximum": 65535 },
                "out": { "oneOf": [
                    { "type": "object", "required": ["type", "id"], "additionalProperties": false,
                      "properties": { "type": { "const": "a" }, "id": { "type": "string", "format": "uuid" } } },
                    { "type": "object", "required": ["type"], "additionalProperties": false,
                      "properties": { "type": { "const": "b" } } }
                ] }
            }
        });
        validate(&schema, &json!({ "port": 1080 })).unwrap();
        validate(&schema, &json!({ "out": { "type": "b" } })).unwrap();
        validate(
            &schema,
            &json!({ "out": { "type": "a", "id": "123e4567-e89b-12d3-a456-426614174000" } }),
        )
        .unwrap();
        for (bad, needle) in [
            (json!({ "port": 0 }), "settings.port must be at least 1"),
            (
                json!({ "port": "80" }),
                "settings.port must be of type integer",
            ),
            (json!({ "nope": 1 }), "settings.nope is not a known setting"),
            (
                json!({ "out": { "type": "a", "id": "x" } }),
                "settings.out.id is not a valid uuid",
            ),
            (
                json!({ "out": { "type": "c" } }),
                "matches 0 of the allowed forms",
            ),
            (json!([]), "settings must be of type object"),
        ] {
            let e = validate(&schema, &bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn formats() {
        assert!(
            format_ok("hostname", "proxy.example.org")
                && format_ok("hostname", "192.0.2.7")
                && format_ok("hostname", "::1")
        );
        assert!(
            !format_ok("hostname", "bad host")
                && !format_ok("hostname", "-x.org")
                && !format_ok("hostname", "")
        );
        assert!(format_ok("nickname", "nncRelay1") && !format_ok("nickname", "has space"));
        assert!(!format_ok("text", "line\nbreak") && !format_ok("text", "quote\""));
    }
}
