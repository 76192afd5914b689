//! The MikroTik RouterOS API (ports 8728, and 8729 over TLS): sentences of length-prefixed
//! words ending in an empty word. Requests are a command word (`/ip/address/add`), attribute
//! words (`=name=value`), query words (`?name=value`) and a `.tag`; replies are `!re` (a row),
//! `!done` (the end, maybe with `=ret=` holding a new item's `.id`), `!trap` (an error, still
//! followed by `!done`), `!empty` (no rows, RouterOS 7.18+) and `!fatal` (the router closes
//! the connection).
//!
//! This client is synchronous and used from blocking threads: one command at a time, each with
//! its own tag. The router is not trusted with the agent's memory or time: words, sentences
//! and whole replies have size caps, every read and write waits at most `timeout`, and each
//! command (connect and login count as one) must be answered in full within
//! `command_timeout`, however slowly the router drips its bytes. Past any of these the call
//! fails and the connection is dropped.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Words longer than this are refused (RouterOS values are short; this bounds memory).
const MAX_WORD: usize = 64 << 10;
/// Sentences with more words, or more bytes of words, than these are refused.
const MAX_SENTENCE_WORDS: usize = 256;
const MAX_SENTENCE_BYTES: usize = 256 << 10;
/// Replies with more `!re` rows than this are refused (our prints ask for a few columns of
/// the agent's own objects; a home router's tables are far smaller).
const MAX_REPLY_ROWS: usize = 10_000;
/// What all sentences of one reply may hold, each word counted as its length plus
/// `WORD_COST` (roughly what keeping a short word costs), so a flood of tiny words is bounded
/// as well as a few large ones.
const MAX_REPLY_BYTES: usize = 4 << 20;
const WORD_COST: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApiError {
    /// Connecting, reading or writing failed (the connection is unusable afterwards).
    Io(String),
    /// The router refused the command.
    Trap {
        message: String,
        category: Option<String>,
    },
    /// The router closed the session.
    Fatal(String),
    /// The bytes are not the RouterOS API.
    Protocol(String),
}

impl ApiError {
    /// Whether the connection must be dropped and opened again.
    pub(crate) fn breaks_connection(&self) -> bool {
        !matches!(self, ApiError::Trap { .. })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Io(e) => write!(f, "connection: {e}"),
            ApiError::Trap { message, .. } => write!(f, "router refused: {message}"),
            ApiError::Fatal(m) => write!(f, "router closed the session: {m}"),
            ApiError::Protocol(m) => {
                write!(
                    f,
                    "not a RouterOS API reply: {m}; the connection was dropped"
                )
            }
        }
    }
}

fn io(e: &io::Error) -> ApiError {
    ApiError::Io(e.to_string())
}

/// Appends the length prefix RouterOS uses for a word of `len` bytes.
pub(crate) fn encode_length(len: usize, out: &mut Vec<u8>) {
    // Lengths never exceed MAX_WORD here, so the casts below cannot truncate.
    #[allow(clippy::cast_possible_truncation)]
    let n = len as u32;
    match len {
        0..0x80 => out.push(n as u8),
        0x80..0x4000 => out.extend_from_slice(&((n | 0x8000) as u16).to_be_bytes()),
        0x4000..0x20_0000 => out.extend_from_slice(&(n | 0x00C0_0000).to_be_bytes()[1..]),
        0x20_0000..0x1000_0000 => out.extend_from_slice(&(n | 0xE000_0000).to_be_bytes()),
        _ => {
            out.push(0xF0);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// Encodes a sentence: each word with its length, then the empty word.
pub(crate) fn encode_sentence<S: AsRef<str>>(words: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for w in words {
        let b = w.as_ref().as_bytes();
        encode_length(b.len(), &mut out);
        out.extend_from_slice(b);
    }
    out.push(0);
    out
}

/// Reads one word length prefix. `Ok(None)` at a clean end of stream before any byte.
fn read_length(r: &mut dyn Read) -> Result<Option<usize>, ApiError> {
    let mut first = [0u8; 1];
    match r.read(&mut first) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(io(&e)),
    }
    let b = first[0];
    let (extra, value) = match b {
        0x00..=0x7F => (0, u32::from(b)),
        0x80..=0xBF => (1, u32::from(b & 0x3F)),
        0xC0..=0xDF => (2, u32::from(b & 0x1F)),
        0xE0..=0xEF => (3, u32::from(b & 0x0F)),
        0xF0 => (4, 0),
        _ => {
            return Err(ApiError::Protocol(format!(
                "reserved control byte {b:#04x}"
            )));
        }
    };
    let mut rest = [0u8; 4];
    r.read_exact(&mut rest[..extra]).map_err(|e| io(&e))?;
    let len = rest[..extra]
        .iter()
        .fold(value, |acc, byte| (acc << 8) | u32::from(*byte));
    Ok(Some(len as usize))
}

/// Reads one sentence (its words, without the terminating empty word). `budget` is what the
/// reply may still hold (see `MAX_REPLY_BYTES`); the sentence's words are taken from it.
pub(crate) fn read_sentence(r: &mut dyn Read, budget: &mut usize) -> Result<Vec<String>, ApiError> {
    let mut words = Vec::new();
    let mut bytes = 0;
    loop {
        let len = match read_length(r)? {
            Some(n) => n,
            None if words.is_empty() => {
                return Err(ApiError::Io("connection closed by the router".into()));
            }
            None => return Err(ApiError::Protocol("connection closed mid-sentence".into())),
        };
        if len == 0 {
            if words.is_empty() {
                // An empty sentence carries nothing; RouterOS does not send them.
                continue;
            }
            return Ok(words);
        }
        let over = |what: String| Err(ApiError::Protocol(what));
        if len > MAX_WORD {
            return over(format!(
                "a word of {len} bytes is over the agent's limit of {MAX_WORD}"
            ));
        }
        if words.len() == MAX_SENTENCE_WORDS {
            return over(format!(
                "a sentence is over the agent's limit of {MAX_SENTENCE_WORDS} words"
            ));
        }
        bytes += len;
        if bytes > MAX_SENTENCE_BYTES {
            return over(format!(
                "a sentence is over the agent's limit of {MAX_SENTENCE_BYTES} bytes"
            ));
        }
        let Some(left) = budget.checked_sub(len + WORD_COST) else {
            return over(format!(
                "the reply is over the agent's limit of {MAX_REPLY_BYTES} bytes ({WORD_COST} counted per word)"
            ));
        };
        *budget = left;
        let mut buf = vec![0u8; len];
        r.read_exact(&mut buf).map_err(|e| io(&e))?;
        words.push(
            String::from_utf8(buf).map_err(|_| ApiError::Protocol("word is not UTF-8".into()))?,
        );
    }
}

/// What a command returned.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// One map per `!re` sentence.
    pub rows: Vec<BTreeMap<String, String>>,
    /// The attributes of `!done` (`ret` for `add`).
    pub done: BTreeMap<String, String>,
}

/// Parses the sentences answering the command tagged `tag`, stopping at its `!done`.
pub(crate) fn read_reply(r: &mut dyn Read, tag: &str) -> Result<Reply, ApiError> {
    read_reply_keeping(r, tag, &mut |_| true)
}

/// `read_reply` keeping only the `!re` rows `keep` wants: the others cost neither rows nor
/// bytes of the reply's limits (a large table filtered as it streams, within the command's
/// timeout).
fn read_reply_keeping(
    r: &mut dyn Read,
    tag: &str,
    keep: &mut dyn FnMut(&BTreeMap<String, String>) -> bool,
) -> Result<Reply, ApiError> {
    let mut reply = Reply::default();
    let mut trap: Option<ApiError> = None;
    let mut budget = MAX_REPLY_BYTES;
    loop {
        let before = budget;
        let words = read_sentence(r, &mut budget)?;
        let kind = words[0].as_str();
        let mut attrs = BTreeMap::new();
        let mut sentence_tag = None;
        for w in &words[1..] {
            if let Some(t) = w.strip_prefix(".tag=") {
                sentence_tag = Some(t);
            } else if let Some(rest) = w.strip_prefix('=') {
                // "=name=value"; the value may itself contain '='.
                let (k, v) = rest.split_once('=').unwrap_or((rest, ""));
                attrs.insert(k.to_owned(), v.to_owned());
            }
        }
        if kind == "!fatal" {
            let message = words.get(1).cloned().unwrap_or_default();
            return Err(ApiError::Fatal(message));
        }
        if sentence_tag.is_some_and(|t| t != tag) {
            return Err(ApiError::Protocol(format!(
                "reply tagged {:?} while waiting for {tag}",
                sentence_tag.unwrap_or_default()
            )));
        }
        match kind {
            "!re" if reply.rows.len() == MAX_REPLY_ROWS => {
                return Err(ApiError::Protocol(format!(
                    "the reply is over the agent's limit of {MAX_REPLY_ROWS} rows"
                )));
            }
            "!re" if !keep(&attrs) => budget = before,
            "!re" => reply.rows.push(attrs),
            "!empty" => {}
            "!trap" => {
                trap.get_or_insert(ApiError::Trap {
                    message: attrs
                        .remove("message")
                        .unwrap_or_else(|| "unknown error".into()),
                    category: attrs.remove("category"),
                });
            }
            "!done" => {
                reply.done = attrs;
                return match trap {
                    Some(e) => Err(e),
                    None => Ok(reply),
                };
            }
            other => return Err(ApiError::Protocol(format!("unknown reply word {other:?}"))),
        }
    }
}

/// Where and how to reach a router's API.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: Option<TlsTrust>,
    pub user: String,
    pub password: String,
    /// Longest wait for any one read or write (`timeout_secs`).
    pub timeout: Duration,
    /// Longest a command may take in all, its whole reply included; connect, TLS handshake
    /// and login count as one command (`command_timeout_secs`).
    pub command_timeout: Duration,
}

/// Never prints the password, whatever formats an `Endpoint` later.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

/// How the router's TLS certificate is trusted: RouterOS usually has a self-signed one, so a
/// pinned SHA-256 fingerprint of it is the practical choice; a CA file works too.
#[derive(Debug, Clone)]
pub(crate) enum TlsTrust {
    Fingerprint([u8; 32]),
    CaFile(std::path::PathBuf),
}

/// The TCP connection to the router. It sits under TLS too, so the deadline holds even while
/// rustls loops over a record that a peer drips byte by byte: each read or write waits at most
/// `per_io`, and never past the deadline of the command in progress.
pub(super) struct Socket {
    tcp: TcpStream,
    per_io: Duration,
    command: Duration,
    deadline: Instant,
}

impl Socket {
    /// Starts the clock of a new command.
    fn arm(&mut self) {
        self.deadline = Instant::now() + self.command;
    }

    /// How long the next read or write may wait, and whether the deadline (not `per_io`) is
    /// what limits it.
    fn wait(&self) -> io::Result<(Duration, bool)> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timed_out(true));
        }
        Ok(if left < self.per_io {
            (left, true)
        } else {
            (self.per_io, false)
        })
    }

    fn timed_out(&self, deadline: bool) -> io::Error {
        let message = if deadline {
            format!(
                "the router did not answer in full within the {} s the command may take (command_timeout_secs)",
                self.command.as_secs_f64()
            )
        } else {
            format!(
                "no data from the router for {} s (timeout_secs)",
                self.per_io.as_secs_f64()
            )
        };
        io::Error::new(io::ErrorKind::TimedOut, message)
    }

    fn finish<T>(&self, deadline: bool, r: io::Result<T>) -> io::Result<T> {
        match r {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(self.timed_out(deadline))
            }
            other => other,
        }
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (wait, deadline) = self.wait()?;
        self.tcp.set_read_timeout(Some(wait))?;
        let r = self.tcp.read(buf);
        self.finish(deadline, r)
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let (wait, deadline) = self.wait()?;
        self.tcp.set_write_timeout(Some(wait))?;
        let r = self.tcp.write(buf);
        self.finish(deadline, r)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tcp.flush()
    }
}

/// The byte stream words travel on: the socket itself, or TLS over it.
pub(super) trait Stream: Read + Write + Send {
    fn socket(&mut self) -> &mut Socket;
}

impl Stream for Socket {
    fn socket(&mut self) -> &mut Socket {
        self
    }
}

impl Stream for rustls::StreamOwned<rustls::ClientConnection, Socket> {
    fn socket(&mut self) -> &mut Socket {
        &mut self.sock
    }
}

pub(crate) struct Client {
    stream: BufReader<Box<dyn Stream>>,
    next_tag: u32,
}

impl Client {
    /// Connects and logs in (`/login =name= =password=`, RouterOS 6.43 and later), all
    /// within one `command_timeout`.
    pub(crate) fn connect(ep: &Endpoint) -> Result<Client, ApiError> {
        let deadline = Instant::now() + ep.command_timeout;
        let addr = (ep.host.as_str(), ep.port)
            .to_socket_addrs()
            .map_err(|e| io(&e))?
            .next()
            .ok_or_else(|| ApiError::Io(format!("{} does not resolve", ep.host)))?;
        let tcp = TcpStream::connect_timeout(&addr, ep.timeout.min(ep.command_timeout))
            .map_err(|e| io(&e))?;
        tcp.set_nodelay(true).map_err(|e| io(&e))?;
        let socket = Socket {
            tcp,
            per_io: ep.timeout,
            command: ep.command_timeout,
            deadline,
        };
        let stream: Box<dyn Stream> = match &ep.tls {
            None => Box::new(socket),
            Some(trust) => Box::new(super::tls::wrap(socket, &ep.host, trust)?),
        };
        let mut client = Client {
            stream: BufReader::new(stream),
            next_tag: 1,
        };
        client
            .exchange(
                "/login",
                &[("name", &ep.user), ("password", &ep.password)],
                &[],
                &mut |_| true,
            )
            .map_err(|e| match e {
                ApiError::Trap { message, .. } => ApiError::Trap {
                    message: format!("login as {} failed: {message}", ep.user),
                    category: None,
                },
                other => other,
            })?;
        Ok(client)
    }

    /// Runs one command and waits for its `!done`, within `command_timeout`.
    pub(crate) fn call(
        &mut self,
        command: &str,
        attrs: &[(&str, &str)],
        queries: &[(&str, &str)],
    ) -> Result<Reply, ApiError> {
        self.call_keeping(command, attrs, queries, &mut |_| true)
    }

    /// `call` keeping only the rows `keep` wants (see `read_reply_keeping`).
    pub(crate) fn call_keeping(
        &mut self,
        command: &str,
        attrs: &[(&str, &str)],
        queries: &[(&str, &str)],
        keep: &mut dyn FnMut(&BTreeMap<String, String>) -> bool,
    ) -> Result<Reply, ApiError> {
        self.stream.get_mut().socket().arm();
        self.exchange(command, attrs, queries, keep)
    }

    fn exchange(
        &mut self,
        command: &str,
        attrs: &[(&str, &str)],
        queries: &[(&str, &str)],
        keep: &mut dyn FnMut(&BTreeMap<String, String>) -> bool,
    ) -> Result<Reply, ApiError> {
        let tag = self.next_tag.to_string();
        self.next_tag = self.next_tag.wrapping_add(1);
        let mut words: Vec<String> = Vec::with_capacity(2 + attrs.len() + queries.len());
        words.push(command.to_owned());
        words.extend(attrs.iter().map(|(k, v)| format!("={k}={v}")));
        words.extend(queries.iter().map(|(k, v)| format!("?{k}={v}")));
        words.push(format!(".tag={tag}"));
        let stream = self.stream.get_mut();
        stream
            .write_all(&encode_sentence(&words))
            .and_then(|()| stream.flush())
            .map_err(|e| io(&e))?;
        read_reply_keeping(&mut self.stream, &tag, keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_len(n: usize) -> usize {
        let mut out = Vec::new();
        encode_length(n, &mut out);
        read_length(&mut out.as_slice()).unwrap().unwrap()
    }

    #[test]
    fn lengths_round_trip_at_every_boundary() {
        for n in [
            0,
            1,
            0x7F,
            0x80,
            0x3FFF,
            0x4000,
            0x1F_FFFF,
            0x20_0000,
            0xFFF_FFFF,
            0x1000_0000,
        ] {
            assert_eq!(roundtrip_len(n), n, "{n:#x}");
        }
        let mut out = Vec::new();
        encode_length(0x80, &mut out);
        assert_eq!(out, [0x80, 0x80]);
        out.clear();
        encode_length(0x4000, &mut out);
        assert_eq!(out, [0xC0, 0x40, 0x00]);
    }

    #[test]
    fn replies_parse_rows_ret_traps_and_empty() {
        let mut bytes = Vec::new();
        bytes.extend(encode_sentence(&["!re", "=.id=*1", "=name=a=b", ".tag=7"]));
        bytes.extend(encode_sentence(&["!empty", ".tag=7"]));
        bytes.extend(encode_sentence(&["!done", "=ret=*2", ".tag=7"]));
        let r = read_reply(&mut bytes.as_slice(), "7").unwrap();
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0]["name"], "a=b");
        assert_eq!(r.done["ret"], "*2");

        let mut bytes = Vec::new();
        bytes.extend(encode_sentence(&[
            "!trap",
            "=category=1",
            "=message=no such item",
            ".tag=3",
        ]));
        bytes.extend(encode_sentence(&["!done", ".tag=3"]));
        let e = read_reply(&mut bytes.as_slice(), "3").unwrap_err();
        assert_eq!(
            e,
            ApiError::Trap {
                message: "no such item".into(),
                category: Some("1".into())
            }
        );
        assert!(!e.breaks_connection());
    }

    #[test]
    fn broken_replies_are_errors_not_panics() {
        let fatal = encode_sentence(&["!fatal", "session terminated on request"]);
        assert!(
            matches!(read_reply(&mut fatal.as_slice(), "1"), Err(ApiError::Fatal(m)) if m.contains("terminated"))
        );
        let other_tag = encode_sentence(&["!done", ".tag=9"]);
        assert!(matches!(
            read_reply(&mut other_tag.as_slice(), "1"),
            Err(ApiError::Protocol(_))
        ));
        let unknown = encode_sentence(&["!weird"]);
        assert!(matches!(
            read_reply(&mut unknown.as_slice(), "1"),
            Err(ApiError::Protocol(_))
        ));
        let truncated = &encode_sentence(&["!done", "=ret=*1"])[..5];
        assert!(read_reply(&mut &truncated[..], "1").is_err());
        assert!(matches!(
            read_reply(&mut &[0xF8u8][..], "1"),
            Err(ApiError::Protocol(_))
        ));
        assert!(matches!(
            read_reply(&mut &[][..], "1"),
            Err(ApiError::Io(_))
        ));
        let huge = [0xF0u8, 0x7F, 0xFF, 0xFF, 0xFF];
        assert!(matches!(
            read_reply(&mut &huge[..], "1"),
            Err(ApiError::Protocol(_))
        ));
    }

    #[test]
    fn rows_not_kept_count_against_no_limit() {
        let mut bytes = Vec::new();
        for i in 0..(MAX_REPLY_ROWS + 5_000) {
            // 15,000 rows of ~400 bytes: over the reply's 4 MiB as well as its row count.
            let filler = format!("=src-address={}", "9".repeat(300));
            bytes.extend(encode_sentence(&[
                "!re",
                &format!("=.id=*{i:X}"),
                &filler,
                ".tag=1",
            ]));
        }
        bytes.extend(encode_sentence(&["!done", ".tag=1"]));
        assert!(read_reply(&mut bytes.as_slice(), "1").is_err());
        let r = read_reply_keeping(&mut bytes.as_slice(), "1", &mut |r| {
            r[".id"].ends_with("00")
        })
        .unwrap();
        let kept = (0..MAX_REPLY_ROWS + 5_000)
            .filter(|i| format!("{i:X}").ends_with("00"))
            .count();
        assert_eq!(r.rows.len(), kept);
    }

    /// The Protocol error `bytes` gets, which must name the limit it broke.
    fn refusal(bytes: &[u8]) -> String {
        match read_reply(&mut &bytes[..], "1") {
            Err(ApiError::Protocol(m)) => m,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }

    #[test]
    fn words_sentences_and_replies_past_their_caps_are_refused() {
        let word = |n: usize| format!("={}", "x".repeat(n - 1));
        // At the cap a word passes; one byte more does not (refused before it is read).
        let mut ok = encode_sentence(&["!re".to_owned(), word(MAX_WORD)]);
        ok.extend(encode_sentence(&["!done"]));
        assert_eq!(read_reply(&mut ok.as_slice(), "1").unwrap().rows.len(), 1);
        let mut prefix_only = Vec::new();
        encode_length(1 << 20, &mut prefix_only);
        prefix_only.splice(
            0..0,
            encode_sentence(&["!re"]).split_last().unwrap().1.to_vec(),
        );
        let m = refusal(&prefix_only);
        assert!(
            m.contains("a word of 1048576 bytes is over the agent's limit of 65536"),
            "{m}"
        );

        let many: Vec<String> = std::iter::once("!re".to_owned())
            .chain((0..MAX_SENTENCE_WORDS).map(|i| format!("=k{i}=v")))
            .collect();
        let m = refusal(&encode_sentence(&many));
        assert!(
            m.contains(&format!(
                "a sentence is over the agent's limit of {MAX_SENTENCE_WORDS} words"
            )),
            "{m}"
        );

        let big: Vec<String> = std::iter::once("!re".to_owned())
            .chain((0..5).map(|_| word(MAX_WORD)))
            .collect();
        let m = refusal(&encode_sentence(&big));
        assert!(
            m.contains(&format!(
                "a sentence is over the agent's limit of {MAX_SENTENCE_BYTES} bytes"
            )),
            "{m}"
        );

        let mut rows = Vec::new();
        for i in 0..=MAX_REPLY_ROWS {
            rows.extend(encode_sentence(&["!re".to_owned(), format!("=.id=*{i}")]));
        }
        rows.extend(encode_sentence(&["!done"]));
        let m = refusal(&rows);
        assert!(
            m.contains(&format!(
                "the reply is over the agent's limit of {MAX_REPLY_ROWS} rows"
            )),
            "{m}"
        );

        // Few rows of large words, then many rows of tiny words: both meet the byte cap.
        let mut large = Vec::new();
        for _ in 0..=MAX_REPLY_BYTES / MAX_WORD {
            large.extend(encode_sentence(&["!re".to_owned(), word(MAX_WORD)]));
        }
        let m = refusal(&large);
        assert!(
            m.contains(&format!(
                "the reply is over the agent's limit of {MAX_REPLY_BYTES} bytes"
            )),
            "{m}"
        );
        let tiny: Vec<String> = std::iter::once("!re".to_owned())
            .chain((0..250).map(|_| "=a=".to_owned()))
            .collect();
        let mut small = Vec::new();
        for _ in 0..MAX_REPLY_ROWS {
            small.extend(encode_sentence(&tiny));
        }
        let m = refusal(&small);
        assert!(
            m.contains(&format!(
                "the reply is over the agent's limit of {MAX_REPLY_BYTES} bytes"
            )),
            "{m}"
        );
    }

    /// A socket to a peer on 127.0.0.1 that runs `peer` on its side of the connection.
    fn socket_to(
        per_io: Duration,
        command: Duration,
        peer: impl FnOnce(TcpStream) + Send + 'static,
    ) -> (Socket, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || peer(listener.accept().unwrap().0));
        let mut socket = Socket {
            tcp: TcpStream::connect(addr).unwrap(),
            per_io,
            command,
            deadline: Instant::now(),
        };
        socket.arm();
        (socket, server)
    }

    #[test]
    fn a_reply_dripped_under_the_read_timeout_is_cut_off_at_the_command_deadline() {
        let (mut socket, server) = socket_to(
            Duration::from_millis(300),
            Duration::from_secs(1),
            |mut peer| {
                // Endless `!re` rows, one byte every 100 ms, until the client hangs up.
                let row = encode_sentence(&["!re", "=.id=*1", ".tag=1"]);
                for b in row.iter().cycle() {
                    std::thread::sleep(Duration::from_millis(100));
                    if peer.write_all(&[*b]).is_err() {
                        break;
                    }
                }
            },
        );
        let started = Instant::now();
        let e = read_reply(&mut socket, "1").unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(1500),
            "{took:?}"
        );
        assert!(e.breaks_connection());
        assert!(
            e.to_string()
                .contains("did not answer in full within the 1 s the command may take"),
            "{e}"
        );
        drop(socket);
        server.join().unwrap();
    }

    #[test]
    fn a_silent_router_fails_the_read_after_the_per_read_timeout() {
        let (mut socket, server) = socket_to(
            Duration::from_millis(200),
            Duration::from_secs(10),
            |peer| {
                std::thread::sleep(Duration::from_millis(600));
                drop(peer);
            },
        );
        let started = Instant::now();
        let e = read_reply(&mut socket, "1").unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(
            e.to_string()
                .contains("no data from the router for 0.2 s (timeout_secs)"),
            "{e}"
        );
        server.join().unwrap();
    }
}
