//! Compresses the web page (`web/`) into OUT_DIR, so the binary carries it gzipped and serves
//! those bytes as they are (`src/api/web.rs`). Deterministic: no name, no time in the header.

use std::io::Write;

fn main() {
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    for name in ["index.html", "app.js", "app.css"] {
        let path = format!("web/{name}");
        println!("cargo:rerun-if-changed={path}");
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut gz = flate2::GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), flate2::Compression::best());
        gz.write_all(&text).expect("gzip");
        let bytes = gz.finish().expect("gzip");
        std::fs::write(format!("{out}/{name}.gz"), bytes).expect("write");
    }
}
