//! Opening compressed tarballs by their content, not their name.
//!
//! Snapshots (`gentoo-YYYYMMDD.tar.xz`, older `portage-*.tar.bz2`) and stages
//! (`stage3-*.tar.xz`, `*.tbz2`, `*.tar.zst`) all arrive as one of a handful of
//! compressions. Both the snapshot importer and the stage store read them through
//! [`open_decompressed`], which sniffs the magic bytes.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

/// The compression of a tarball, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `FD 37 7A 58 5A 00`: xz (`.tar.xz`, the mirrors' format).
    Xz,
    /// `BZh`: bzip2 (`.tar.bz2`, `.tbz2`, older snapshots and stage4s).
    Bzip2,
    /// `1F 8B`: gzip (`.tar.gz`, `.tgz`).
    Gzip,
    /// `28 B5 2F FD`: zstd (`.tar.zst`).
    Zstd,
    /// No known magic: read as a plain tar (which the tar reader then checks).
    None,
}

impl Compression {
    /// Detect the compression from the first bytes of a file.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0x00]) {
            Compression::Xz
        } else if head.starts_with(b"BZh") {
            Compression::Bzip2
        } else if head.starts_with(&[0x1F, 0x8B]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "uncompressed",
        })
    }
}

/// Wrap `reader` in the decompressor its first bytes call for.
///
/// Multi-member streams (concatenated xz, bzip2 or gzip members, as parallel
/// compressors such as pixz, pbzip2 and pigz write them) are read to the end.
pub fn decompress<R: Read + 'static>(reader: R) -> io::Result<(Box<dyn Read>, Compression)> {
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let head = reader.fill_buf()?;
    let compression = Compression::sniff(head);
    let stream: Box<dyn Read> = match compression {
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(reader)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(reader)),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        Compression::None => Box::new(reader),
    };
    Ok((stream, compression))
}

/// Open the file at `path` and wrap it in the decompressor its content calls for.
pub fn open_decompressed(path: &Path) -> io::Result<(Box<dyn Read>, Compression)> {
    decompress(File::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn roundtrip(compression: Compression, data: &[u8]) -> Vec<u8> {
        let packed: Vec<u8> = match compression {
            Compression::Xz => {
                let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(data, 1).unwrap(),
            Compression::None => data.to_vec(),
        };
        let (mut r, found) = decompress(io::Cursor::new(packed)).unwrap();
        assert_eq!(found, compression);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn every_compression_is_detected_and_decoded() {
        let data = b"ustar payload ".repeat(1000);
        for c in [
            Compression::Xz,
            Compression::Bzip2,
            Compression::Gzip,
            Compression::Zstd,
            Compression::None,
        ] {
            assert_eq!(roundtrip(c, &data), data, "{c}");
        }
    }

    #[test]
    fn truncated_xz_is_an_error() {
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
        e.write_all(&b"x".repeat(100_000)).unwrap();
        let mut packed = e.finish().unwrap();
        packed.truncate(packed.len() / 2);
        let (mut r, _) = decompress(io::Cursor::new(packed)).unwrap();
        let mut out = Vec::new();
        assert!(r.read_to_end(&mut out).is_err());
    }
}
