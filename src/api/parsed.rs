//! The few query documents the API parsed last, by their exact text: a LAN client (the page,
//! the CLI, a dashboard polling `instances`) sends the same handful of queries again and
//! again, and parsing one is a good part of answering it. Only parsing is saved: every
//! request is still validated (depth, complexity, the schema's rules) like an unparsed one.
//! Bounded: a few entries, none longer than a typical query; what fails to parse is not kept
//! (async-graphql parses it again and reports the error).

use std::sync::Mutex;

use async_graphql::parser::types::ExecutableDocument;

/// Documents kept.
const ENTRIES: usize = 8;
/// Longer query texts are parsed every time.
const MAX_QUERY: usize = 2048;

#[derive(Default)]
pub(crate) struct Parsed {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Counts lookups: an entry's `used` is the count at its last use.
    clock: u64,
    /// The least recently used is evicted first.
    entries: Vec<Entry>,
}

struct Entry {
    query: String,
    doc: ExecutableDocument,
    used: u64,
}

impl Parsed {
    /// Gives `request` its parsed document, from the cache or parsed now and kept.
    pub(crate) fn prepare(&self, request: &mut async_graphql::Request) {
        if request.query.len() > MAX_QUERY {
            return;
        }
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Inner { clock, entries } = &mut *guard;
        *clock += 1;
        if let Some(e) = entries.iter_mut().find(|e| e.query == request.query) {
            e.used = *clock;
            request.set_parsed_query(e.doc.clone());
            return;
        }
        let Ok(doc) = async_graphql::parser::parse_query(&request.query) else {
            return;
        };
        if entries.len() >= ENTRIES {
            let oldest = (0..entries.len())
                .min_by_key(|&i| entries[i].used)
                .unwrap_or(0);
            entries.swap_remove(oldest);
        }
        entries.push(Entry {
            query: request.query.clone(),
            doc: doc.clone(),
            used: *clock,
        });
        request.set_parsed_query(doc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(cache: &Parsed) -> Vec<String> {
        let guard = cache.inner.lock().unwrap();
        guard.entries.iter().map(|e| e.query.clone()).collect()
    }

    #[test]
    fn keeps_the_most_recent_documents_and_nothing_unparsable_or_long() {
        let cache = Parsed::default();
        let mut r = async_graphql::Request::new("{ instances { id } }");
        cache.prepare(&mut r);
        assert!(r.parsed_query().is_ok());
        assert_eq!(texts(&cache), ["{ instances { id } }"]);
        for i in 0..ENTRIES + 3 {
            cache.prepare(&mut async_graphql::Request::new(format!("{{ a{i} }}")));
        }
        let kept = texts(&cache);
        assert_eq!(kept.len(), ENTRIES);
        assert!(
            !kept.iter().any(|q| q.contains("instances")),
            "least recently used evicted: {kept:?}"
        );
        assert!(kept.iter().any(|q| q == &format!("{{ a{} }}", ENTRIES + 2)));
        cache.prepare(&mut async_graphql::Request::new("{ instances { id }"));
        cache.prepare(&mut async_graphql::Request::new(format!(
            "{{ {} }}",
            "a ".repeat(MAX_QUERY)
        )));
        assert!(
            texts(&cache)
                .iter()
                .all(|q| q.len() <= MAX_QUERY && !q.contains("instances"))
        );
    }
}
