//! The tar side of the import pipeline: walk the entries the decoder hands
//! on, check each, and send those that belong in the tree to the workers.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc::sync_channel;

use super::decode::{decode, ChunkReader, CHUNK_DEPTH, MAX_TAR_PADDING};
use super::error::{Error, Result};
use super::tree::{check_entry, check_symlink, EntryKind, PathSplitter, SnapshotPath};
use super::verify;
use super::workers::{Batches, Item};
use portroot_runner::archive::Compression;

/// The largest single file accepted. Portage trees hold nothing near it (their
/// biggest files are a few MB); the cap keeps memory bounded on hostile input.
pub const MAX_FILE_SIZE: u64 = 64 << 20;

/// Entries per batch.
pub(super) const BATCH_ITEMS: usize = 128;

/// Content bytes per batch (a batch ends after the entry that crosses it).
pub(super) const BATCH_BYTES: usize = 1 << 20;

/// What the reader thread learnt about the stream itself.
pub(super) struct Streamed {
    pub(super) md5: Option<String>,
    pub(super) compressed: u64,
    pub(super) compression: Compression,
    pub(super) entries: u64,
}

/// The reader thread: decompress (on a thread of its own, see [`decode`]),
/// walk the tar, check every entry, send the ones that belong in the tree.
/// Returns `None` early if the packer hung up, which it only does after an
/// error of its own.
pub(super) fn read_entries(
    path: &Path,
    tx: Batches,
    progress: bool,
    want_md5: bool,
    gpgv: Option<verify::GpgvInput>,
) -> Result<Option<Streamed>> {
    let file = File::open(path).map_err(Error::io("opening", path))?;
    let (chunk_tx, chunk_rx) = sync_channel(CHUNK_DEPTH);
    let (spare_tx, spare_rx) = sync_channel(CHUNK_DEPTH);
    let stream = ChunkReader {
        rx: chunk_rx,
        spare: spare_tx,
        chunk: Vec::new(),
        pos: 0,
        consumed: 0,
    };
    let owned = path.to_owned();
    // Not a scoped thread: when the parser stops early, the decoder may sit in
    // a read of a pipe that delivers nothing more, and the import must end
    // anyway. It ends by itself at its next hand-over, on the closed channel.
    let decoder = std::thread::spawn(move || {
        decode(file, &owned, chunk_tx, spare_rx, progress, want_md5, gpgv)
    });
    let Some(entries) = parse_entries(path, stream, tx)? else {
        return Ok(None);
    };
    // The parser read the stream to its end: the decoder is done.
    let decoded = match decoder.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    let decoded = decoded?.expect(
        "invariant: the decoder reports its failures through the stream, which was read to its end",
    );
    Ok(Some(Streamed {
        md5: decoded.md5,
        compressed: decoded.compressed,
        compression: decoded.compression,
        entries,
    }))
}

/// Walk the tar in `stream`; `Some(entries)` once all of it was read, `None`
/// if the packer hung up.
pub(super) fn parse_entries(
    path: &Path,
    stream: ChunkReader,
    mut tx: Batches,
) -> Result<Option<u64>> {
    let mut entries = 0u64;
    let mut archive = tar::Archive::new(stream);
    let mut splitter = PathSplitter::default();
    let mut batch = Vec::with_capacity(BATCH_ITEMS);
    let mut batch_bytes = 0;
    // Where the next header would start, after the last entry's data.
    let mut data_end = 0u64;
    for entry in archive.entries().map_err(tar_error(path, 0))? {
        if portroot_runner::interrupt::requested() {
            return Err(Error::Interrupted);
        }
        let mut entry = entry.map_err(tar_error(path, entries))?;
        entries += 1;
        data_end = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let Some(inside) = tree_path(&mut splitter, &raw, kind)? else {
            continue;
        };
        let at = Located {
            tarball: path,
            entries,
            raw,
            path: inside,
        };
        let item = entry_item(&mut entry, kind, at, &mut splitter)?;
        batch_bytes += item.len();
        batch.push(item);
        if batch.len() >= BATCH_ITEMS || batch_bytes >= BATCH_BYTES {
            batch_bytes = 0;
            if !tx.send(std::mem::replace(
                &mut batch,
                Vec::with_capacity(BATCH_ITEMS),
            )) {
                return Ok(None);
            }
        }
    }
    if !batch.is_empty() && !tx.send(batch) {
        return Ok(None);
    }
    drop(tx);
    let stream = archive.into_inner();
    check_tar_end(path, stream, data_end, entries)?;
    Ok(Some(entries))
}

/// The error for a tar that cannot be read after `entries` entries.
pub(super) fn tar_error(path: &Path, entries: u64) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Tar {
        path,
        entries,
        source: one_line(source),
    }
}

/// Where tar entry `raw` (of type `kind`) goes in the tree: `None` for what
/// the tree leaves out (the top directory, excluded paths, directories,
/// which exist through their contents), after checking it.
pub(super) fn tree_path(
    splitter: &mut PathSplitter,
    raw: &[u8],
    kind: tar::EntryType,
) -> Result<Option<String>> {
    match splitter.split(raw)? {
        SnapshotPath::Excluded => Ok(None),
        SnapshotPath::Top if kind.is_dir() => Ok(None),
        SnapshotPath::Top => Err(Error::entry(
            raw,
            "a file at the top level: a snapshot has one top directory",
        )),
        SnapshotPath::Inside(p) if kind.is_dir() => {
            check_entry(raw, &p, EntryKind::Dir, None)?;
            Ok(None)
        }
        SnapshotPath::Inside(p) => Ok(Some(p)),
    }
}

/// A tar entry that belongs in the tree.
pub(super) struct Located<'a> {
    /// The tarball.
    pub(super) tarball: &'a Path,
    /// Entries read so far, this one included.
    pub(super) entries: u64,
    /// Its path as written in the tar.
    pub(super) raw: Vec<u8>,
    /// Its path in the tree.
    pub(super) path: String,
}

/// The item a file, symlink or hardlink entry becomes, once checked; any
/// other entry type is refused.
pub(super) fn entry_item(
    entry: &mut tar::Entry<'_, ChunkReader>,
    kind: tar::EntryType,
    at: Located<'_>,
    splitter: &mut PathSplitter,
) -> Result<Item> {
    let Located {
        tarball,
        entries,
        raw,
        path,
    } = at;
    let link_target = |entry: &tar::Entry<'_, ChunkReader>| {
        entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default()
    };
    match kind {
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            let size = entry.size();
            if size > MAX_FILE_SIZE {
                return Err(Error::entry(
                    &raw,
                    format!("{size} bytes is too large for a portage tree file"),
                ));
            }
            let exec = entry.header().mode().map_err(tar_error(tarball, entries))? & 0o100 != 0;
            let mut data = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut data)
                .map_err(tar_error(tarball, entries))?;
            check_entry(&raw, &path, EntryKind::File, Some(&data))?;
            Ok(Item::File {
                raw,
                path,
                exec,
                data,
            })
        }
        tar::EntryType::Symlink => {
            let target = link_target(entry);
            check_symlink(&raw, &path, &target)?;
            check_entry(&raw, &path, EntryKind::Symlink, None)?;
            let target =
                String::from_utf8(target).expect("invariant: check_symlink accepts only UTF-8");
            Ok(Item::Symlink { raw, path, target })
        }
        tar::EntryType::Link => {
            let target = link_target(entry);
            let target = match splitter.split(&target) {
                Ok(SnapshotPath::Inside(t)) => t,
                _ => {
                    let t = String::from_utf8_lossy(&target).into_owned();
                    return Err(Error::entry(
                        &raw,
                        format!("hardlink to {t:?}, outside the snapshot tree"),
                    ));
                }
            };
            check_entry(&raw, &path, EntryKind::Hardlink, None)?;
            Ok(Item::Hardlink { raw, path, target })
        }
        tar::EntryType::Char | tar::EntryType::Block => Err(Error::entry(
            &raw,
            "device node (not allowed in a portage snapshot)",
        )),
        tar::EntryType::Fifo => Err(Error::entry(
            &raw,
            "fifo (not allowed in a portage snapshot)",
        )),
        other => Err(Error::entry(
            &raw,
            format!("unsupported tar entry type {other:?}"),
        )),
    }
}

/// After the tar reader stopped, at the first zero block or at the end of the
/// input: check that the archive really ended there (two zero blocks, then
/// only zero padding, [`MAX_TAR_PADDING`] at most), and read the stream to its
/// end, where the decoder reports a bad trailer, if any.
pub(super) fn check_tar_end(
    path: &Path,
    mut stream: ChunkReader,
    data_end: u64,
    entries: u64,
) -> Result<()> {
    let truncated = |problem: &str| Error::Tar {
        path: path.to_owned(),
        entries,
        source: io::Error::new(io::ErrorKind::InvalidData, problem.to_owned()),
    };
    // The reader stopped at the end of the input if it read nothing past the
    // last entry's data; else it read the first zero block.
    if stream.consumed < data_end + 512 {
        return Err(truncated("no end-of-archive blocks"));
    }
    let mut trailing = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Tar {
                    path: path.to_owned(),
                    entries,
                    source: one_line(e),
                })
            }
        };
        if let Some(at) = buf[..n].iter().position(|b| *b != 0) {
            if trailing + (at as u64) < 512 {
                return Err(truncated("only one end-of-archive block"));
            }
            return Err(truncated("data after the end of the archive"));
        }
        trailing += n as u64;
        if trailing > MAX_TAR_PADDING {
            return Err(truncated(
                "more than 1 MiB of padding after the end of the archive",
            ));
        }
    }
    if trailing < 512 {
        return Err(truncated("only one end-of-archive block"));
    }
    Ok(())
}

/// The tar reader quotes raw header bytes in some errors: keep the message to
/// one printable line of reasonable length.
pub(super) fn one_line(err: io::Error) -> io::Error {
    let msg = err.to_string();
    if msg.len() <= 200 && !msg.contains(|c: char| c.is_control()) {
        return err;
    }
    let mut clean: String = msg.escape_debug().collect();
    if clean.len() > 200 {
        let cut = (0..=200)
            .rev()
            .find(|i| clean.is_char_boundary(*i))
            .unwrap_or(0);
        clean.truncate(cut);
        clean.push_str("...");
    }
    io::Error::new(err.kind(), clean)
}
