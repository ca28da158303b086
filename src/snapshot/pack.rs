//! Writing a snapshot's objects as one git packfile plus its index.
//!
//! Why a writer of our own: a snapshot is ~130k small files. Loose objects mean
//! 130k file creations (as slow as extracting the tarball, see DESIGN.md), and
//! libgit2's mempack backend holds every object uncompressed in memory until it
//! dumps a pack (over the 256 MB budget for a 500 MB tree). The simplest format
//! git reads, a version 2 pack of whole (non-delta) objects, is small to write:
//!
//! * pack: `PACK`, version 2, object count (patched at the end, when it is
//!   known), then per object a type/size varint header and the zlib-deflated
//!   body, then the SHA-1 of everything before it (gitformat-pack(5));
//! * index: version 2 with fan-out table, sorted ids, CRC-32s of the packed
//!   entries and offsets (gitformat-pack(5), "idx files"), which we can write
//!   straight from what we recorded while packing, without inflating and
//!   re-hashing every object as `git index-pack` or libgit2's indexer would.
//!
//! Bodies are deflated at level 1: a snapshot is written once and read often,
//! and `git gc` can always recompress and delta it later. Both files are written
//! to a temporary directory and only [`FinishedPack::install`] moves them into
//! `objects/pack/`, the `.idx` last, because git only sees a pack once its index
//! exists.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};

use flate2::{Compress, Compression, FlushCompress, Status};
use git2::Oid;
use sha1::{Digest, Sha1};

use super::error::{Error, Result};

/// The kinds of object a snapshot pack holds, with their pack type codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A commit (type 1).
    Commit = 1,
    /// A tree (type 2).
    Tree = 2,
    /// A blob (type 3).
    Blob = 3,
    /// An annotated tag (type 4).
    Tag = 4,
}

impl ObjectKind {
    fn name(self) -> &'static str {
        match self {
            ObjectKind::Commit => "commit",
            ObjectKind::Tree => "tree",
            ObjectKind::Blob => "blob",
            ObjectKind::Tag => "tag",
        }
    }
}

/// The git object id of `data` as an object of `kind`: SHA-1 over
/// `"<kind> <len>\0"` followed by the data.
pub fn object_id(kind: ObjectKind, data: &[u8]) -> Oid {
    let mut h = Sha1::new();
    h.update(format!("{} {}\0", kind.name(), data.len()).as_bytes());
    h.update(data);
    let digest: [u8; 20] = h.finalize().into();
    Oid::from_bytes(&digest).expect("invariant: a SHA-1 digest is 20 bytes")
}

/// One packed object, as the index needs it.
struct IdxEntry {
    oid: Oid,
    crc32: u32,
    offset: u64,
}

/// One object as it goes into a pack: its type/size header and zlib stream,
/// and the CRC-32 of both for the index.
#[derive(Debug)]
pub struct PackedObject {
    bytes: Vec<u8>,
    crc32: u32,
}

/// Deflates objects into [`PackedObject`]s; one per thread, so that the
/// expensive part of packing can run on every core.
pub struct Deflater {
    compress: Compress,
}

impl Default for Deflater {
    fn default() -> Self {
        Deflater::new()
    }
}

impl Deflater {
    /// A deflater at level 1.
    pub fn new() -> Deflater {
        Deflater {
            compress: Compress::new(Compression::fast(), true),
        }
    }

    /// Pack `data` as an object of `kind`.
    pub fn pack(&mut self, kind: ObjectKind, data: &[u8]) -> PackedObject {
        let mut bytes = Vec::with_capacity(data.len() + data.len() / 16 + 80);
        encode_header(&mut bytes, kind, data.len() as u64);
        self.compress.reset();
        let mut input = data;
        loop {
            let before_in = self.compress.total_in();
            let status = self
                .compress
                .compress_vec(input, &mut bytes, FlushCompress::Finish)
                .expect("invariant: deflating a whole in-memory buffer with Finish cannot fail");
            input = &input[(self.compress.total_in() - before_in) as usize..];
            match status {
                Status::StreamEnd => break,
                Status::Ok | Status::BufError => bytes.reserve(bytes.capacity().max(64)),
            }
        }
        let crc32 = crc32fast::hash(&bytes);
        PackedObject { bytes, crc32 }
    }
}

/// A pack being written into a temporary directory.
pub struct PackWriter {
    dir: PathBuf,
    path: PathBuf,
    out: BufWriter<File>,
    /// Bytes written so far, i.e. the offset of the next object.
    offset: u64,
    entries: Vec<IdxEntry>,
    /// Ids already in this pack, to write each object once.
    seen: std::collections::HashSet<Oid>,
    deflater: Deflater,
}

impl PackWriter {
    /// Start a pack in `dir` (which must exist and be on the repository's file
    /// system, so that installing is a rename).
    pub fn create(dir: &Path) -> Result<PackWriter> {
        let path = dir.join("incoming.pack");
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(Error::io("creating", &path))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // The count is patched in by `finish`, once known.
        out.write_all(b"PACK\0\0\0\x02\0\0\0\0")
            .map_err(Error::io("writing", &path))?;
        Ok(PackWriter {
            dir: dir.to_owned(),
            path,
            out,
            offset: 12,
            entries: Vec::new(),
            seen: Default::default(),
            deflater: Deflater::new(),
        })
    }

    /// Whether an object with this id is already in the pack.
    pub fn contains(&self, oid: &Oid) -> bool {
        self.seen.contains(oid)
    }

    /// Objects written so far.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no object was written.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Append `data` as an object of `kind` whose id the caller computed with
    /// [`object_id`]. Objects already in the pack are skipped.
    pub fn add(&mut self, kind: ObjectKind, oid: Oid, data: &[u8]) -> Result<()> {
        if self.seen.contains(&oid) {
            return Ok(());
        }
        let packed = self.deflater.pack(kind, data);
        self.add_packed(oid, &packed)
    }

    /// Append an object another thread already packed with a [`Deflater`].
    /// Objects already in the pack are skipped.
    pub fn add_packed(&mut self, oid: Oid, packed: &PackedObject) -> Result<()> {
        if !self.seen.insert(oid) {
            return Ok(());
        }
        self.out
            .write_all(&packed.bytes)
            .map_err(Error::io("writing", &self.path))?;
        self.entries.push(IdxEntry {
            oid,
            crc32: packed.crc32,
            offset: self.offset,
        });
        self.offset += packed.bytes.len() as u64;
        Ok(())
    }

    /// Finish the pack: patch the object count, append the trailer, write the
    /// index. `None` (and no files) if no object was written.
    pub fn finish(self) -> Result<Option<FinishedPack>> {
        self.finish_with(Vec::new())
    }

    /// Finish the pack as [`PackWriter::finish`] does, after appending `last`
    /// (kind, id as [`object_id`] gives it, data; objects already in the pack
    /// are skipped). The trailer's SHA-1 covers the object count in the
    /// header, so it can only be computed once the count is known: knowing
    /// `last` up front, the pack written so far is hashed on another thread
    /// while these objects are deflated and appended.
    pub fn finish_with(
        mut self,
        last: Vec<(ObjectKind, Oid, Vec<u8>)>,
    ) -> Result<Option<FinishedPack>> {
        let last: Vec<_> = last
            .into_iter()
            .filter(|(_, oid, _)| self.seen.insert(*oid))
            .collect();
        let PackWriter {
            dir,
            path,
            out,
            offset,
            mut entries,
            mut deflater,
            ..
        } = self;
        let file = out
            .into_inner()
            .map_err(|e| Error::io("writing", &path)(e.into_error()))?;
        if entries.is_empty() && last.is_empty() {
            drop(file);
            fs::remove_file(&path).map_err(Error::io("removing", &path))?;
            return Ok(None);
        }
        let count = u32::try_from(entries.len() + last.len()).map_err(|_| {
            Error::io("writing", &path)(std::io::Error::other("more than 2^32 objects"))
        })?;
        let io = |a| Error::io(a, &path);
        file.write_all_at(&count.to_be_bytes(), 8)
            .map_err(io("writing"))?;
        let written = offset;
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let checksum = std::thread::scope(|s| {
            let file = &file;
            // What is on disk is read back from the page cache; the objects
            // appended meanwhile come over the channel, in order.
            let hasher = s.spawn(move || hash_pack(file, written, rx));
            // Owned by the appender, so that the hasher stops on an early return too.
            let appended = append_objects(file, last, &mut deflater, &mut entries, offset, tx);
            let hashed = match hasher.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            appended.map_err(io("writing"))?;
            hashed.map_err(io("reading back"))
        })?;
        (&file).write_all(&checksum).map_err(io("writing"))?;
        file.sync_all().map_err(io("syncing"))?;
        drop(file);

        install_index(&dir, &path, entries, &checksum).map(Some)
    }
}

/// The SHA-1 of a pack: the `written` bytes on disk in `file` (read back
/// from the page cache), then the objects appended meanwhile, in order,
/// as they come over `rx`.
fn hash_pack(file: &File, written: u64, rx: Receiver<Vec<u8>>) -> std::io::Result<[u8; 20]> {
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < written {
        let n = buf.len().min((written - pos) as usize);
        file.read_exact_at(&mut buf[..n], pos)?;
        h.update(&buf[..n]);
        pos += n as u64;
    }
    for bytes in rx {
        h.update(&bytes);
    }
    Ok(h.finalize().into())
}

/// Deflate and append `last` to the pack `file` at `offset`, noting each in
/// `entries` and sending its bytes to the hasher over `tx`.
fn append_objects(
    file: &File,
    last: Vec<(ObjectKind, Oid, Vec<u8>)>,
    deflater: &mut Deflater,
    entries: &mut Vec<IdxEntry>,
    mut offset: u64,
    tx: Sender<Vec<u8>>,
) -> std::io::Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    for (kind, oid, data) in last {
        let packed = deflater.pack(kind, &data);
        out.write_all(&packed.bytes)?;
        entries.push(IdxEntry {
            oid,
            crc32: packed.crc32,
            offset,
        });
        offset += packed.bytes.len() as u64;
        // The hasher only stops early after an error of its own.
        let _ = tx.send(packed.bytes);
    }
    out.flush()
}

/// Name the finished pack at `path` after its `checksum` and write its index
/// beside it in `dir`.
fn install_index(
    dir: &Path,
    path: &Path,
    mut entries: Vec<IdxEntry>,
    checksum: &[u8; 20],
) -> Result<FinishedPack> {
    // Sort on integer keys: comparing git2 Oids goes through libgit2.
    entries.sort_unstable_by_key(|e| oid_key(&e.oid));
    let idx = build_index(&entries, checksum);
    let name = format!("pack-{}", hex(checksum));
    let pack = dir.join(format!("{name}.pack"));
    let idx_path = dir.join(format!("{name}.idx"));
    fs::rename(path, &pack).map_err(Error::io("renaming", path))?;
    let mut f = File::create(&idx_path).map_err(Error::io("creating", &idx_path))?;
    f.write_all(&idx)
        .and_then(|()| f.sync_all())
        .map_err(Error::io("writing", &idx_path))?;
    Ok(FinishedPack {
        pack,
        idx: idx_path,
        objects: entries.len(),
    })
}

/// An id as integers that sort in the id's byte order.
fn oid_key(oid: &Oid) -> (u64, u64, u32) {
    let b = oid.as_bytes();
    let word = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    (
        word(0),
        word(8),
        u32::from_be_bytes(b[16..20].try_into().expect("4 bytes")),
    )
}

/// A complete pack and index, still outside the repository.
#[derive(Debug)]
pub struct FinishedPack {
    pack: PathBuf,
    idx: PathBuf,
    /// Objects in the pack.
    pub objects: usize,
}

impl FinishedPack {
    /// Move the pack, then its index, into `objects_pack_dir`; the paths
    /// they now have, for [`uninstall`] if what follows fails. If the index
    /// cannot be moved, the pack is taken out again.
    pub fn install(self, objects_pack_dir: &Path) -> Result<Vec<PathBuf>> {
        fs::create_dir_all(objects_pack_dir).map_err(Error::io("creating", objects_pack_dir))?;
        let mut installed = Vec::new();
        for from in [&self.pack, &self.idx] {
            let to =
                objects_pack_dir.join(from.file_name().expect("invariant: pack files have names"));
            if let Err(e) = fs::rename(from, &to) {
                uninstall(&installed);
                return Err(Error::io("installing", &to)(e));
            }
            installed.push(to);
        }
        Ok(installed)
    }
}

/// Take an installed pack out of the repository again: the index first, so
/// that no reader ever finds an index without its pack.
pub fn uninstall(installed: &[PathBuf]) {
    for path in installed.iter().rev() {
        if let Err(e) = fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a pack of a failed import");
        }
    }
}

/// The pack entry header: type and size as a little-endian base-128 varint
/// whose first byte holds 3 type bits and 4 size bits.
fn encode_header(out: &mut Vec<u8>, kind: ObjectKind, mut size: u64) {
    out.clear();
    let mut byte = ((kind as u8) << 4) | (size & 0x0f) as u8;
    size >>= 4;
    while size != 0 {
        out.push(byte | 0x80);
        byte = (size & 0x7f) as u8;
        size >>= 7;
    }
    out.push(byte);
}

/// A version 2 pack index for `entries` (sorted by id).
fn build_index(entries: &[IdxEntry], pack_checksum: &[u8; 20]) -> Vec<u8> {
    let mut idx = Vec::with_capacity(1072 + entries.len() * 28 + 40);
    idx.extend_from_slice(b"\xfftOc\0\0\0\x02");
    let mut fanout = [0u32; 256];
    for e in entries {
        fanout[e.oid.as_bytes()[0] as usize] += 1;
    }
    let mut total = 0u32;
    for n in fanout {
        total += n;
        idx.extend_from_slice(&total.to_be_bytes());
    }
    for e in entries {
        idx.extend_from_slice(e.oid.as_bytes());
    }
    for e in entries {
        idx.extend_from_slice(&e.crc32.to_be_bytes());
    }
    // Offsets that do not fit in 31 bits go to a table of 64-bit offsets.
    let mut large = Vec::new();
    for e in entries {
        let small = if e.offset < 0x8000_0000 {
            e.offset as u32
        } else {
            large.push(e.offset);
            0x8000_0000 | (large.len() as u32 - 1)
        };
        idx.extend_from_slice(&small.to_be_bytes());
    }
    for off in large {
        idx.extend_from_slice(&off.to_be_bytes());
    }
    idx.extend_from_slice(pack_checksum);
    let own: [u8; 20] = Sha1::digest(&idx).into();
    idx.extend_from_slice(&own);
    idx
}

/// Lowercase hex of `bytes`.
pub use crate::http::hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_ids_match_libgit2() {
        for data in [&b""[..], b"hello\n", &[0u8; 70_000]] {
            assert_eq!(
                object_id(ObjectKind::Blob, data),
                Oid::hash_object(git2::ObjectType::Blob, data).unwrap()
            );
        }
    }

    #[test]
    fn header_varint_matches_the_format() {
        let mut h = Vec::new();
        encode_header(&mut h, ObjectKind::Blob, 15);
        assert_eq!(h, [0x3f]);
        encode_header(&mut h, ObjectKind::Blob, 16);
        assert_eq!(h, [0xb0, 0x01]);
        encode_header(&mut h, ObjectKind::Tree, 1000);
        // 1000 = 0b11_1110_1000: low nibble 8, then 62.
        assert_eq!(h, [0xa8, 62]);
    }

    #[test]
    fn git_reads_what_we_pack() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init_bare(tmp.path().join("r.git")).unwrap();
        let work = tmp.path().join("work");
        fs::create_dir(&work).unwrap();
        let mut w = PackWriter::create(&work).unwrap();
        let mut ids = Vec::new();
        for i in 0..500u32 {
            let data = format!("object {i}\n")
                .repeat(i as usize % 50 + 1)
                .into_bytes();
            let oid = object_id(ObjectKind::Blob, &data);
            w.add(ObjectKind::Blob, oid, &data).unwrap();
            w.add(ObjectKind::Blob, oid, &data).unwrap(); // deduplicated
            ids.push((oid, data));
        }
        assert_eq!(w.len(), 500);
        // The last objects, handed over at the end, one of them twice and
        // one already in the pack: each is written once.
        let mut last = Vec::new();
        for i in 0..50u32 {
            let data = format!("last {i}\n").repeat(i as usize + 1).into_bytes();
            let oid = object_id(ObjectKind::Blob, &data);
            last.push((ObjectKind::Blob, oid, data.clone()));
            ids.push((oid, data));
        }
        last.push(last[7].clone());
        last.push((ObjectKind::Blob, ids[3].0, ids[3].1.clone()));
        let pack = w.finish_with(last).unwrap().unwrap();
        assert_eq!(pack.objects, 550);
        pack.install(&repo.path().join("objects/pack")).unwrap();
        let odb = repo.odb().unwrap();
        for (oid, data) in &ids {
            assert_eq!(odb.read(*oid).unwrap().data(), &data[..]);
        }
        let out = std::process::Command::new("git")
            .args(["fsck", "--strict", "--no-dangling"])
            .current_dir(repo.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let verify = std::process::Command::new("git")
            .arg("verify-pack")
            .arg(
                fs::read_dir(repo.path().join("objects/pack"))
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .find(|p| p.extension().is_some_and(|e| e == "idx"))
                    .unwrap(),
            )
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "{}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }

    #[test]
    fn an_empty_pack_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let w = PackWriter::create(tmp.path()).unwrap();
        assert!(w.finish().unwrap().is_none());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }
}
