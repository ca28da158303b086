//! Reading, hashing and decompressing a tarball on a second thread.
//!
//! Unpacking a stage is two kinds of work: decompressing (xz: CPU) and creating
//! tens of thousands of small files (syscalls, disk). `tar -xJf` overlaps them
//! by running `xz -d` as a separate process; this does the same with a thread
//! that reads the file once, feeds every byte to sha256 (the stage's digest),
//! decompresses, and hands 256 KiB chunks to the unpacker over a bounded
//! channel.

use crate::digest::StageDigest;
use std::cell::RefCell;
use std::fs::File;
use std::io::{self, Read};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::archive::{self, Compression};

const CHUNK: usize = 256 * 1024;
/// Chunks in flight: enough to ride out a burst of slow file creation.
const DEPTH: usize = 16;

/// What the reading thread found once the whole file was read.
#[derive(Debug)]
pub(crate) struct Finished {
    /// The compression detected from the first bytes.
    pub compression: Compression,
    /// Sha256 of the whole file.
    pub digest: StageDigest,
}

/// The reading side of the pipe: owns the thread.
#[derive(Debug)]
pub(crate) struct Pipe {
    handle: JoinHandle<io::Result<Finished>>,
    read: Arc<AtomicU64>,
}

/// The decompressed stream, for the unpacker. Read errors of the file or the
/// decompressor arrive here, in order; the end of the stream is EOF.
pub(crate) struct Stream {
    rx: Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Pipe {
    /// Start reading `file` on a new thread.
    pub fn start(file: File) -> io::Result<(Pipe, Stream)> {
        let rest = file.try_clone()?;
        let read = Arc::new(AtomicU64::new(0));
        let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(DEPTH);
        let counter = Arc::clone(&read);
        let handle = std::thread::Builder::new()
            .name("stage-read".into())
            .spawn(move || {
                let hasher = Rc::new(RefCell::new(Sha256::new()));
                let hashing = Hashing {
                    inner: file,
                    hasher: Rc::clone(&hasher),
                    read: Arc::clone(&counter),
                };
                let (mut stream, compression) = match archive::decompress(hashing) {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return Err(io::Error::other("tarball unreadable"));
                    }
                };
                loop {
                    let mut buf = vec![0; CHUNK];
                    let n = match fill(&mut stream, &mut buf) {
                        Ok(n) => n,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return Err(io::Error::other("tarball unreadable"));
                        }
                    };
                    if n == 0 {
                        break;
                    }
                    buf.truncate(n);
                    if tx.send(Ok(buf)).is_err() {
                        return Err(io::Error::other("unpacking stopped"));
                    }
                }
                drop(tx);
                drop(stream);
                // The decompressor may stop short of the end of the file
                // (padding after the last stream): hash the rest through the
                // shared file offset.
                io::copy(
                    &mut Hashing {
                        inner: rest,
                        hasher: Rc::clone(&hasher),
                        read: counter,
                    },
                    &mut io::sink(),
                )?;
                let digest = hasher.borrow_mut().finalize_reset();
                Ok(Finished {
                    compression,
                    digest: StageDigest::of_sha256(&digest.into()),
                })
            })?;
        Ok((
            Pipe { handle, read },
            Stream {
                rx,
                chunk: Vec::new(),
                pos: 0,
            },
        ))
    }

    /// Bytes of the file read so far.
    pub fn bytes_read(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.read)
    }

    /// Wait for the thread. Call after the [`Stream`] was read to its end (or
    /// dropped, to stop early).
    pub fn finish(self) -> io::Result<Finished> {
        self.handle
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the tarball reading thread panicked")))
    }
}

impl Read for Stream {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                // The sender is gone: the end of the stream.
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len() - self.pos);
        out[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Read until `buf` is full or the stream ends.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads through to `inner`, hashing and counting every byte.
struct Hashing<R> {
    inner: R,
    hasher: Rc<RefCell<Sha256>>,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.borrow_mut().update(&buf[..n]);
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn stream_is_the_decompressed_file_and_digest_covers_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gz");
        let data = b"tar-ish payload ".repeat(50_000);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&data).unwrap();
        let packed = e.finish().unwrap();
        std::fs::write(&path, &packed).unwrap();

        let (pipe, mut stream) = Pipe::start(File::open(&path).unwrap()).unwrap();
        let mut out = Vec::new();
        stream.read_to_end(&mut out).unwrap();
        drop(stream);
        let counter = pipe.bytes_read();
        let done = pipe.finish().unwrap();
        assert_eq!(out.len(), data.len());
        assert_eq!(done.compression, Compression::Gzip);
        assert_eq!(counter.load(Ordering::Relaxed), packed.len() as u64);
        let want: String = Sha256::digest(&packed)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(done.digest, want);
    }

    #[test]
    fn stopping_early_ends_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big");
        std::fs::write(&path, vec![7u8; 8 * CHUNK * DEPTH]).unwrap();
        let (pipe, mut stream) = Pipe::start(File::open(&path).unwrap()).unwrap();
        let mut first = [0u8; 10];
        stream.read_exact(&mut first).unwrap();
        drop(stream);
        assert!(pipe.finish().is_err());
    }
}
