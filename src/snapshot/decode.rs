//! The decoding side of the import pipeline: read the tarball once (md5,
//! gpgv's input, progress), decompress it and hand the tar on in chunks.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::rc::Rc;
use std::sync::mpsc::{Receiver, SyncSender};

use md5::{Digest, Md5};

use super::error::{Error, Result};
use super::{pack, verify};
use portroot_runner::archive::{decompress, Compression};

/// What the decoding thread learnt about the compressed stream.
pub(super) struct Decoded {
    pub(super) md5: Option<String>,
    pub(super) compressed: u64,
    pub(super) compression: Compression,
}

/// Counts and (optionally) md5-hashes the compressed bytes as they are read.
pub(super) struct TallyReader {
    pub(super) file: File,
    pub(super) tally: Rc<RefCell<Tally>>,
}

pub(super) struct Tally {
    pub(super) md5: Option<Md5>,
    /// The signature check's gpgv, fed the same bytes.
    pub(super) gpgv: Option<verify::GpgvInput>,
    pub(super) bytes: u64,
    /// Bytes read since the decompressor last gave any output.
    pub(super) quiet: u64,
    pub(super) bar: Option<indicatif::ProgressBar>,
}

impl Tally {
    pub(super) fn add(&mut self, buf: &[u8]) {
        if let Some(h) = &mut self.md5 {
            h.update(buf);
        }
        if let Some(g) = &mut self.gpgv {
            g.feed(buf);
        }
        self.bytes += buf.len() as u64;
        self.quiet += buf.len() as u64;
        if let Some(bar) = &self.bar {
            bar.set_position(self.bytes);
        }
    }
}

impl Read for TallyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tally.borrow().quiet > MAX_QUIET_INPUT {
            // Endless input the decompressor takes without a byte of output,
            // such as zeros after an xz stream (read as stream padding).
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "more than 64 MiB of input without any output from the decompressor",
            ));
        }
        let n = self.file.read(buf)?;
        self.tally.borrow_mut().add(&buf[..n]);
        Ok(n)
    }
}

pub(super) fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} importing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr())
        .with_style(style)
}

/// Compressed bytes the decompressor may take without giving any output.
pub(super) const MAX_QUIET_INPUT: u64 = 64 << 20;

/// Bytes of decompressed tar per chunk handed from the decoding thread to
/// the tar parser.
pub(super) const CHUNK_BYTES: usize = 256 << 10;

/// Chunks in flight between the decoding thread and the tar parser.
pub(super) const CHUNK_DEPTH: usize = 8;

/// The decoding thread: read (md5, progress) and decompress the whole file,
/// handing the decompressed bytes on in chunks, then an error if decoding
/// failed. On two cores decompression alone fills one, so it runs on its own,
/// while tar parsing and the per-entry copies and checks go with the rest.
/// Returns `None` if decoding failed (the error went down the channel) or the
/// parser hung up.
pub(super) fn decode(
    file: File,
    path: &Path,
    tx: SyncSender<io::Result<Vec<u8>>>,
    spare: Receiver<Vec<u8>>,
    progress: bool,
    want_md5: bool,
    gpgv: Option<verify::GpgvInput>,
) -> Result<Option<Decoded>> {
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    // A second handle on the same open file (same offset), to read whatever the
    // decompressor leaves behind into the md5.
    let mut tail = file.try_clone().map_err(Error::io("opening", path))?;
    let tally = Rc::new(RefCell::new(Tally {
        md5: want_md5.then(Md5::new),
        gpgv,
        bytes: 0,
        quiet: 0,
        bar: progress.then(|| progress_bar(len)),
    }));
    let reader = TallyReader {
        file,
        tally: Rc::clone(&tally),
    };
    let (mut stream, compression) = match decompress(reader) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e));
            return Ok(None);
        }
    };
    // Read to the very end of the compressed stream: only there does the
    // decompressor check its trailer (xz's CRC, gzip's length), so a stream
    // cut after the tar's last entry is still caught.
    if !send_chunks(&mut stream, &tx, &spare, &tally) {
        return Ok(None);
    }
    drop(tx);
    drop(stream);
    let rest = read_trailer(&mut tail, path)?;
    let mut tally = tally.borrow_mut();
    tally.add(&rest);
    // The end of gpgv's input.
    tally.gpgv = None;
    if let Some(bar) = tally.bar.take() {
        bar.finish_and_clear();
    }
    Ok(Some(Decoded {
        md5: tally.md5.take().map(|h| pack::hex(&h.finalize())),
        compressed: tally.bytes,
        compression,
    }))
}

/// Hand the decompressed `stream` on in chunks, to its end: false if it
/// failed (the error went down the channel) or the parser hung up.
pub(super) fn send_chunks(
    stream: &mut impl Read,
    tx: &SyncSender<io::Result<Vec<u8>>>,
    spare: &Receiver<Vec<u8>>,
    tally: &RefCell<Tally>,
) -> bool {
    loop {
        // Buffers come back from the parser once read, already initialised.
        let mut buf = spare.try_recv().unwrap_or_else(|_| vec![0; CHUNK_BYTES]);
        let mut filled = 0;
        while filled < buf.len() {
            match stream.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    filled += n;
                    tally.borrow_mut().quiet = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if filled > 0 {
                        buf.truncate(filled);
                        let _ = tx.send(Ok(buf));
                    }
                    let _ = tx.send(Err(e));
                    return false;
                }
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        if tx.send(Ok(buf)).is_err() {
            return false;
        }
    }
    true
}

/// What follows the compressed stream, but no more than a tar's padding:
/// endless input must end.
pub(super) fn read_trailer(tail: &mut File, path: &Path) -> Result<Vec<u8>> {
    // Whatever follows the compressed stream is hashed too, but only up to the
    // same padding a tar may have: endless input must end.
    let mut rest = Vec::new();
    tail.take(MAX_TAR_PADDING + 1)
        .read_to_end(&mut rest)
        .map_err(Error::io("reading", path))?;
    if rest.len() as u64 > MAX_TAR_PADDING {
        return Err(Error::Tar {
            path: path.to_owned(),
            entries: 0,
            source: io::Error::new(
                io::ErrorKind::InvalidData,
                "more than 1 MiB of data after the end of the compressed stream",
            ),
        });
    }
    Ok(rest)
}

/// The tar parser's side of [`decode`]: its chunks as one byte stream.
pub(super) struct ChunkReader {
    pub(super) rx: Receiver<io::Result<Vec<u8>>>,
    pub(super) spare: SyncSender<Vec<u8>>,
    pub(super) chunk: Vec<u8>,
    pub(super) pos: usize,
    /// Bytes handed out so far.
    pub(super) consumed: u64,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.chunk.len() {
            let next = match self.rx.recv() {
                Ok(chunk) => chunk?,
                // The decoder is done (or failed, and said so before).
                Err(_) => return Ok(0),
            };
            let mut done = std::mem::replace(&mut self.chunk, next);
            self.pos = 0;
            if done.capacity() >= CHUNK_BYTES {
                done.resize(CHUNK_BYTES, 0);
                let _ = self.spare.try_send(done);
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        self.consumed += n as u64;
        Ok(n)
    }
}

/// Zero bytes accepted after the end-of-archive blocks: the padding of the
/// last record, for blocking factors up to 2048 (tar's default is 20, 10 KiB).
/// Anything longer, like endless input (`/dev/zero`), is refused.
pub(super) const MAX_TAR_PADDING: u64 = 1 << 20;
