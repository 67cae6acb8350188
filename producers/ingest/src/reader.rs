//! Turns an object's byte stream into a bounded, transparently decompressed `Read`.

use std::io::{self, BufRead, BufReader, Read};

/// Marks errors that come from the object store (retriable), as opposed to bad data.
#[derive(Debug)]
pub struct SourceError(pub io::Error);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "reading the object: {}", self.0)
    }
}

impl std::error::Error for SourceError {}

/// Wraps the object stream so that its errors are tagged [`SourceError`].
pub struct Source<R>(pub R);

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::other(SourceError(e)))
    }
}

/// Whether an I/O error came from the object store rather than from the data.
pub fn is_source_error(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<SourceError>())
}

/// Compression of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// From a key's extension or a Content-Encoding.
    pub fn from_hint(key: &str, content_encoding: Option<&str>) -> Option<Self> {
        let enc = content_encoding.unwrap_or_default().to_ascii_lowercase();
        let key = key.to_ascii_lowercase();
        if enc.contains("gzip") || key.ends_with(".gz") || key.ends_with(".gzip") {
            Some(Compression::Gzip)
        } else if enc.contains("zstd") || key.ends_with(".zst") || key.ends_with(".zstd") {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// Caps the bytes read; the error says the limit was hit (a decompression bomb, or a file
/// larger than allowed).
pub struct Capped<R> {
    inner: R,
    left: u64,
    cap: u64,
}

/// Error text of a hit cap.
pub const CAP_HIT: &str = "decompressed size exceeds";

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{CAP_HIT} the limit of {} bytes (--max-decompressed-bytes)",
                    self.cap
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Error text of a zstd frame whose window is above the limit.
pub const WINDOW_HIT: &str = "zstd frame needs a decoder window above";

/// Bounds on decompression.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Most bytes read after decompression.
    pub max_decompressed: u64,
    /// Largest zstd window, as a power of two: the decoder allocates the window, so a frame
    /// compressed with `--long=31` would ask for 2 GiB of one small pod.
    pub zstd_window_log_max: u32,
}

/// The zstd decoder, with the window limit's error made readable.
struct ZstdLimited<R: BufRead> {
    inner: zstd::stream::read::Decoder<'static, R>,
    window_log_max: u32,
}

impl<R: BufRead> Read for ZstdLimited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if !is_source_error(&e) && e.to_string().contains("too much memory") {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{WINDOW_HIT} 2^{} bytes, the limit (--max-zstd-window-log); compress without --long or --ultra",
                        self.window_log_max
                    ),
                )
            } else {
                e
            }
        })
    }
}

/// Opens `src` for reading: sniffs gzip and zstd magic bytes (a hint from the key or
/// Content-Encoding is checked against them), and caps the decompressed size and the zstd window.
pub fn open<'a, R: Read + 'a>(
    src: R,
    hint: Option<Compression>,
    limits: ReadLimits,
) -> io::Result<(Box<dyn Read + 'a>, Compression)> {
    let max_decompressed = limits.max_decompressed;
    let mut buf = BufReader::with_capacity(64 * 1024, Source(src));
    let head = buf.fill_buf()?;
    let sniffed = if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    };
    if let Some(h) = hint {
        if h != sniffed && !head.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the name or Content-Encoding says {} but the bytes are not {} (corrupt or mislabelled upload)", h.name(), h.name()),
            ));
        }
    }
    let inner: Box<dyn Read + 'a> = match sniffed {
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buf)),
        Compression::Zstd => {
            let mut inner = zstd::stream::read::Decoder::with_buffer(buf)?;
            inner.window_log_max(limits.zstd_window_log_max)?;
            Box::new(ZstdLimited {
                inner,
                window_log_max: limits.zstd_window_log_max,
            })
        }
        Compression::None => Box::new(buf),
    };
    Ok((
        Box::new(Capped {
            inner,
            left: max_decompressed,
            cap: max_decompressed,
        }),
        sniffed,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lim(max_decompressed: u64) -> ReadLimits {
        ReadLimits {
            max_decompressed,
            zstd_window_log_max: 24,
        }
    }

    #[test]
    fn a_zstd_window_above_the_limit_is_refused_with_the_limit() {
        // 4 MiB of varied bytes compressed with a 2^22 window (long-distance matching).
        let data: Vec<u8> = (0..4u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.window_log(22).unwrap();
        enc.long_distance_matching(true).unwrap();
        enc.write_all(&data).unwrap();
        let z = enc.finish().unwrap();
        let tight = ReadLimits {
            zstd_window_log_max: 20,
            ..lim(1 << 30)
        };
        let (mut r, _) = open(&z[..], None, tight).unwrap();
        let e = std::io::copy(&mut r, &mut std::io::sink()).unwrap_err();
        assert!(e.to_string().contains(WINDOW_HIT), "{e}");
        assert!(e.to_string().contains("2^20"), "{e}");
        assert!(!is_source_error(&e));
        let within = ReadLimits {
            zstd_window_log_max: 22,
            ..lim(1 << 30)
        };
        let (mut r, _) = open(&z[..], None, within).unwrap();
        assert_eq!(
            std::io::copy(&mut r, &mut std::io::sink()).unwrap(),
            4 << 20
        );
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_and_zstd_are_read_transparently() {
        let data = b"sku,name\nA,b\n";
        let g = gz(data);
        let (mut r, c) = open(&g[..], None, lim(1 << 20)).unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!((out.as_slice(), c), (&data[..], Compression::Gzip));
        let z = zstd::encode_all(&data[..], 3).unwrap();
        let (mut r, c) = open(&z[..], Some(Compression::Zstd), lim(1 << 20)).unwrap();
        out.clear();
        r.read_to_end(&mut out).unwrap();
        assert_eq!((out.as_slice(), c), (&data[..], Compression::Zstd));
    }

    #[test]
    fn bombs_and_corruption_are_data_errors() {
        let bomb = gz(&vec![b'a'; 10 << 20]);
        let (mut r, _) = open(&bomb[..], None, lim(1 << 20)).unwrap();
        let e = std::io::copy(&mut r, &mut std::io::sink()).unwrap_err();
        assert!(e.to_string().contains(CAP_HIT));
        assert!(!is_source_error(&e));
        let mut corrupt = gz(b"hello world, hello world");
        let n = corrupt.len();
        corrupt[n / 2] ^= 0xff;
        corrupt.truncate(n - 4);
        let (mut r, _) = open(&corrupt[..], None, lim(1 << 20)).unwrap();
        assert!(std::io::copy(&mut r, &mut std::io::sink()).is_err());
        assert!(open(&b"plain,csv"[..], Some(Compression::Gzip), lim(10)).is_err());
    }
}
