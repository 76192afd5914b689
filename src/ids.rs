//! The names the agent hands out and accepts: feature, instance and router ids, instance
//! names. They become directory names, interface names and store keys, so each is a
//! conservative slug checked in one place.

/// The router the agent runs on (its own interfaces, the Linux backend).
pub(crate) const LOCAL_ROUTER: &str = "local";

/// `^[a-z0-9][a-z0-9-]{0,max-1}$`
fn is_slug(s: &str, max: usize) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= max
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// `^[a-z0-9][a-z0-9-]{0,31}$`: feature ids (and router ids) become directory names.
pub(crate) fn is_feature_id(s: &str) -> bool {
    is_slug(s, 32)
}

/// `^[a-z0-9][a-z0-9-]{0,15}$`
pub(crate) fn is_instance_name(s: &str) -> bool {
    is_slug(s, 16)
}

/// Instance ids are 16 lowercase hex digits.
pub(crate) fn is_instance_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_follow_the_contract() {
        for ok in ["a", "tor-1", "0abc", "abcdefghijklmnop"] {
            assert!(is_instance_name(ok), "{ok}");
        }
        for bad in [
            "",
            "../x",
            "UPPER",
            "abcdefghijklmnopq",
            "-a",
            "a_b",
            "a b",
            "é",
        ] {
            assert!(!is_instance_name(bad), "{bad}");
        }
    }

    #[test]
    fn instance_ids_are_16_hex() {
        assert!(is_instance_id("0123456789abcdef"));
        assert!(!is_instance_id("0123456789ABCDEF"));
        assert!(!is_instance_id("../../etc/passwd"));
        assert!(!is_instance_id(""));
    }
}
