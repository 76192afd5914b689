//! A deliberately unreliable HTTP/1.1 file server (test-only), for the failures nginx will
//! not produce on demand. Paths are `/{mode}/{file}`; the first request of a mode misbehaves
//! (or every request, for the modes that always do), later ones answer correctly with `Range`
//! support. Every request is logged as `mode status range`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    files: HashMap<String, Vec<u8>>,
    hits: HashMap<String, u32>,
    log: Vec<String>,
}

pub struct FaultServer {
    pub port: u16,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
}

struct Req {
    path: String,
    range_from: Option<u64>,
    if_range: Option<String>,
}

impl FaultServer {
    pub fn start(files: &[(&str, Vec<u8>)]) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut s = Shared::default();
        for (name, data) in files {
            s.files.insert((*name).to_owned(), data.clone());
        }
        let shared = Arc::new(Mutex::new(s));
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, st) = (Arc::clone(&shared), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (sh, st) = (Arc::clone(&sh), Arc::clone(&st));
                        std::thread::spawn(move || serve(conn, &sh, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FaultServer { port, shared, stop }
    }

    pub fn url(&self, mode: &str, file: &str) -> String {
        format!("http://127.0.0.1:{}/{mode}/{file}", self.port)
    }

    /// `mode status range` per request, in order.
    pub fn log(&self) -> Vec<String> {
        self.shared.lock().unwrap().log.clone()
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn read_request(conn: &TcpStream) -> Option<Req> {
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split(' ').nth(1)?.to_owned();
    let (mut range_from, mut if_range) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h == "\r\n" {
            break;
        }
        let (name, value) = h.split_once(':')?;
        let value = value.trim().to_owned();
        match name.to_ascii_lowercase().as_str() {
            "range" => {
                range_from = value
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse().ok());
            }
            "if-range" => if_range = Some(value),
            _ => {}
        }
    }
    Some(Req {
        path,
        range_from,
        if_range,
    })
}

fn serve(mut conn: TcpStream, shared: &Mutex<Shared>, stop: &AtomicBool) {
    let Some(req) = read_request(&conn) else {
        return;
    };
    let mut parts = req.path.trim_start_matches('/').splitn(2, '/');
    let mode = parts.next().unwrap_or("").to_owned();
    let file = parts.next().unwrap_or("").to_owned();
    let (data, hit) = {
        let mut s = shared.lock().unwrap();
        let hit = {
            let h = s.hits.entry(mode.clone()).or_insert(0);
            *h += 1;
            *h
        };
        (s.files.get(&file).cloned(), hit)
    };
    let log = |status: u16| {
        shared.lock().unwrap().log.push(format!(
            "{mode} {status} {}",
            req.range_from.map_or("-".into(), |r| r.to_string())
        ));
    };
    let Some(data) = data else {
        log(404);
        let _ = conn
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let len = data.len();
    let half = len / 2;
    // The ETag a correct response carries; "flipetag" changes it on every request.
    let etag = if mode == "flipetag" {
        format!("\"v{hit}\"")
    } else {
        "\"v1\"".to_owned()
    };
    let head = |status: &str, extra: &str, cl: usize| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {cl}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\n{extra}Connection: close\r\n\r\n"
        )
    };
    let first = hit == 1;
    match mode.as_str() {
        "status404" => {
            log(404);
            let _ = conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
        "status500" => {
            log(500);
            let _ = conn.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
        // First response: half the body, then the connection drops.
        "drop" | "norange" | "badrange" | "flipetag" if first => {
            log(200);
            let _ = conn.write_all(head("200 OK", "", len).as_bytes());
            let _ = conn.write_all(&data[..half]);
            return;
        }
        // First response: half the body, then silence until the client gives up.
        "stall" if first => {
            log(200);
            let _ = conn.write_all(head("200 OK", "", len).as_bytes());
            let _ = conn.write_all(&data[..half]);
            let _ = conn.flush();
            for _ in 0..600 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            return;
        }
        // First response announces more bytes than it sends, then closes.
        "badlen-long" if first => {
            log(200);
            let _ = conn.write_all(head("200 OK", "", len + 1000).as_bytes());
            let _ = conn.write_all(&data);
            return;
        }
        // Every response announces (and sends) fewer bytes than the file has.
        "badlen-short" => {
            log(200);
            let _ = conn.write_all(head("200 OK", "", half).as_bytes());
            let _ = conn.write_all(&data[..half]);
            return;
        }
        // Later requests: Range is ignored, the whole file comes back with 200.
        "norange" => {
            log(200);
            let _ = conn.write_all(head("200 OK", "", len).as_bytes());
            let _ = conn.write_all(&data);
            return;
        }
        // Later ranged requests: 206 whose Content-Range starts at 0, not where asked.
        "badrange" if req.range_from.is_some() => {
            log(206);
            let extra = format!("Content-Range: bytes 0-{}/{len}\r\n", len - 1);
            let _ = conn.write_all(head("206 Partial Content", &extra, len).as_bytes());
            let _ = conn.write_all(&data);
            return;
        }
        // Later ranged requests: a 206 although the ETag changed (If-Range should have
        // produced a 200).
        "flipetag" if req.range_from.is_some() => {
            let from = usize::try_from(req.range_from.unwrap()).unwrap().min(len);
            log(206);
            let extra = format!("Content-Range: bytes {from}-{}/{len}\r\n", len - 1);
            let _ = conn.write_all(head("206 Partial Content", &extra, len - from).as_bytes());
            let _ = conn.write_all(&data[from..]);
            return;
        }
        _ => {}
    }
    // Correct behaviour: honour Range when If-Range (if any) matches.
    let ranged = req
        .range_from
        .filter(|_| req.if_range.as_ref().is_none_or(|v| *v == etag));
    match ranged {
        Some(from) if from as usize >= len => {
            log(416);
            let _ = conn.write_all(
                format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(),
            );
        }
        Some(from) => {
            let from = from as usize;
            log(206);
            let extra = format!("Content-Range: bytes {from}-{}/{len}\r\n", len - 1);
            let _ = conn.write_all(head("206 Partial Content", &extra, len - from).as_bytes());
            let _ = conn.write_all(&data[from..]);
        }
        None => {
            log(200);
            let _ = conn.write_all(head("200 OK", "", len).as_bytes());
            let _ = conn.write_all(&data);
        }
    }
}
