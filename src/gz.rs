//! gzip (RFC 1952) and raw deflate as readers, and CRC-32: the archives' and the web page's.
//! miniz_oxide inflates (what flate2 would call); the gzip framing and the CRC are a few lines
//! here, where flate2 brought two gzip header parsers and crc32fast's 16 KiB table.

use miniz_oxide::inflate::stream::{InflateState, inflate};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};
use std::io::{self, BufRead, Read};

/// CRC-32 (ISO-HDLC: gzip's and zip's), one table lookup per byte.
#[derive(Clone, Copy)]
pub(crate) struct Crc32(u32);

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Crc32 {
    pub(crate) fn new() -> Crc32 {
        Crc32(!0)
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        let mut c = self.0;
        for &b in data {
            c = CRC_TABLE[usize::from((c as u8) ^ b)] ^ (c >> 8);
        }
        self.0 = c;
    }

    pub(crate) fn sum(self) -> u32 {
        !self.0
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// A raw deflate stream (RFC 1951) read from `inner`; reads no byte past its end.
pub(crate) struct Inflate<R> {
    inner: R,
    state: Box<InflateState>,
    ended: bool,
}

impl<R: BufRead> Inflate<R> {
    pub(crate) fn new(inner: R) -> Inflate<R> {
        Inflate {
            inner,
            state: InflateState::new_boxed(DataFormat::Raw),
            ended: false,
        }
    }
}

impl<R: BufRead> Read for Inflate<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || self.ended {
            return Ok(0);
        }
        loop {
            let input = self.inner.fill_buf()?;
            let eof = input.is_empty();
            let r = inflate(&mut self.state, input, out, MZFlush::None);
            self.inner.consume(r.bytes_consumed);
            match r.status {
                Ok(MZStatus::StreamEnd) => {
                    self.ended = true;
                    return Ok(r.bytes_written);
                }
                Ok(_) if r.bytes_written > 0 => return Ok(r.bytes_written),
                Ok(_) if r.bytes_consumed > 0 => {}
                Err(MZError::Buf) | Ok(_) if eof => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the compressed data ends early",
                    ));
                }
                Ok(_) | Err(MZError::Buf) => return Err(invalid("inflate made no progress")),
                Err(_) => return Err(invalid("the compressed data is corrupt")),
            }
        }
    }
}

/// A gzip file's first member: its header checked and skipped, its data inflated, its
/// trailer (CRC-32 and length) checked at the end.
pub(crate) struct GzDecoder<R> {
    inflate: Inflate<R>,
    crc: Crc32,
    size: u32,
    state: Gz,
}

#[derive(PartialEq)]
enum Gz {
    Header,
    Data,
    Done,
}

impl<R: BufRead> GzDecoder<R> {
    pub(crate) fn new(inner: R) -> GzDecoder<R> {
        GzDecoder {
            inflate: Inflate::new(inner),
            crc: Crc32::new(),
            size: 0,
            state: Gz::Header,
        }
    }

    fn header(&mut self) -> io::Result<()> {
        const FHCRC: u8 = 2;
        const FEXTRA: u8 = 4;
        const FNAME: u8 = 8;
        const FCOMMENT: u8 = 16;
        let r = &mut self.inflate.inner;
        let mut fixed = [0u8; 10];
        r.read_exact(&mut fixed)
            .map_err(|_| invalid("not gzip data"))?;
        if fixed[..3] != [0x1f, 0x8b, 8] {
            return Err(invalid("not gzip data"));
        }
        let flags = fixed[3];
        if flags & 0xe0 != 0 {
            return Err(invalid("gzip header with reserved flags"));
        }
        if flags & FEXTRA != 0 {
            let mut len = [0u8; 2];
            r.read_exact(&mut len)?;
            let len = u64::from(u16::from_le_bytes(len));
            if io::copy(&mut (&mut *r).take(len), &mut io::sink())? != len {
                return Err(invalid("gzip header ends early"));
            }
        }
        for field in [FNAME, FCOMMENT] {
            if flags & field != 0 {
                skip_to_nul(r)?;
            }
        }
        if flags & FHCRC != 0 {
            r.read_exact(&mut [0u8; 2])?;
        }
        Ok(())
    }

    fn trailer(&mut self) -> io::Result<()> {
        let mut t = [0u8; 8];
        self.inflate
            .inner
            .read_exact(&mut t)
            .map_err(|_| invalid("gzip trailer missing"))?;
        let [c0, c1, c2, c3, s0, s1, s2, s3] = t;
        if u32::from_le_bytes([c0, c1, c2, c3]) != self.crc.sum() {
            return Err(invalid("gzip data fails its CRC-32 check"));
        }
        if u32::from_le_bytes([s0, s1, s2, s3]) != self.size {
            return Err(invalid("gzip data has the wrong length"));
        }
        Ok(())
    }
}

/// Skips a zero-terminated header field (a name or comment) of at most 64 KiB, keeping none
/// of it.
fn skip_to_nul(r: &mut impl BufRead) -> io::Result<()> {
    const MAX: usize = 64 << 10;
    let mut skipped = 0;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Err(invalid("gzip header ends early"));
        }
        let (n, done) = match buf.iter().position(|&b| b == 0) {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        r.consume(n);
        skipped += n;
        if done {
            return Ok(());
        }
        if skipped > MAX {
            return Err(invalid("gzip header field over 64 KiB"));
        }
    }
}

impl<R: BufRead> Read for GzDecoder<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.state == Gz::Header {
            self.header()?;
            self.state = Gz::Data;
        }
        if self.state == Gz::Done || out.is_empty() {
            return Ok(0);
        }
        let n = self.inflate.read(out)?;
        self.crc.update(&out[..n]);
        // ISIZE is the length modulo 2^32.
        self.size = self.size.wrapping_add(n as u32);
        if self.inflate.ended {
            // Done whatever the trailer says: a second read must not take more bytes for one.
            self.state = Gz::Done;
            self.trailer()?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8], name: Option<&str>) -> Vec<u8> {
        let mut b = flate2::GzBuilder::new();
        if let Some(n) = name {
            b = b.filename(n).comment("c").extra(vec![1, 2, 3]);
        }
        let mut w = b.write(Vec::new(), flate2::Compression::default());
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn gunzip(gz: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // A one-byte buffer: every state is crossed at every position.
        GzDecoder::new(io::BufReader::with_capacity(1, gz)).read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn crc32_is_the_standard_one() {
        let mut c = Crc32::new();
        c.update(b"123456789");
        assert_eq!(c.sum(), 0xCBF4_3926);
        assert_eq!(Crc32::new().sum(), 0);
    }

    #[test]
    fn gzip_round_trips_with_every_header_field_and_stops_at_its_end() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for name in [None, Some("x.tar")] {
            let mut gz = gzip(&data, name);
            assert_eq!(gunzip(&gz).unwrap(), data);
            // What follows the first member is not read.
            gz.extend_from_slice(b"trailing");
            assert_eq!(gunzip(&gz).unwrap(), data);
        }
        assert_eq!(gunzip(&gzip(b"", None)).unwrap(), b"");
    }

    #[test]
    fn damaged_gzip_is_an_error() {
        let data = b"hello router, hello router, hello router";
        let good = gzip(data, Some("n"));
        for cut in 1..good.len() {
            assert!(gunzip(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut crc = good.clone();
        let at = crc.len() - 8;
        crc[at] ^= 1;
        let e = gunzip(&crc).unwrap_err();
        assert!(e.to_string().contains("CRC-32"), "{e}");
        let mut len = good.clone();
        let at = len.len() - 1;
        len[at] ^= 1;
        assert!(gunzip(&len).is_err());
        assert!(gunzip(b"PK\x03\x04 not gzip").is_err());
        // A name without its end is refused after 64 KiB, not kept.
        let mut endless = vec![0x1f, 0x8b, 8, 8, 0, 0, 0, 0, 0, 3];
        endless.resize(1 << 20, b'a');
        let e = gunzip(&endless).unwrap_err();
        assert!(e.to_string().contains("64 KiB"), "{e}");
        let mut body = good;
        body[20] ^= 0xff;
        assert!(gunzip(&body).is_err());
    }
}
