//! Stage export: a directory tree (a stage's rootfs, or the read-only merged
//! view of a stage and its layers, see [`crate::layer::LowerView`]) written as a
//! stage4 tarball that `stage add` reads back to an identical tree.
//!
//! The archive is POSIX ustar with PAX records, as `tar --format=pax
//! --numeric-owner --xattrs --acls` would write it: numeric owners only, modes
//! with setuid/setgid/sticky, mtimes, xattrs (`security.capability`, `user.*`,
//! ACLs) as `SCHILY.xattr.<name>`, long names as PAX `path`/`linkpath`,
//! hardlinks as link entries to the first name seen (tracked by device and
//! inode), symlinks, device nodes and fifos. Entries come in sorted order,
//! each directory before its contents, so two exports of one tree are equal.
//!
//! It is xz-compressed on all CPUs (liblzma's multi-threaded encoder) into a
//! temporary file next to the destination, renamed over it only when complete.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use tar::{EntryType, Header};
use tracing::{info, warn};

use crate::error::{io, Error, Result};

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportStats {
    /// Entries written (the root directory included).
    pub entries: u64,
    /// Bytes of regular file data.
    pub bytes: u64,
    /// Size of the compressed tarball.
    pub tarball_bytes: u64,
}

/// Write the tree at `root` as an xz-compressed tarball at `out` (atomically:
/// a temporary file in the same directory, renamed at the end). `progress`
/// gets entries and data bytes written so far.
pub fn export_tree(root: &Path, out: &Path, progress: &dyn Fn(u64, u64)) -> Result<ExportStats> {
    export_tree_noting(root, out, &|_| Ok(()), progress)
}

/// [`export_tree`], calling `note` with the temporary file's path before the
/// file is created (again for each name tried), so that the caller can
/// record it where a clean-up after a `kill -9` will find it.
pub fn export_tree_noting(
    root: &Path,
    out: &Path,
    note: &dyn Fn(&Path) -> io::Result<()>,
    progress: &dyn Fn(u64, u64),
) -> Result<ExportStats> {
    export_with(root, out, &Layout::default(), note, progress)
}

/// What goes into a tarball besides the tree, and under which name.
#[derive(Debug, Default)]
pub struct Layout<'a> {
    /// A regular file written first: its name, bytes and mtime.
    pub head: Option<(&'a str, &'a [u8], u64)>,
    /// The directory the tree is written as (`upper/`); empty: the root.
    pub prefix: &'a str,
    /// Keep `trusted.overlay.opaque` (a layer's opaque directories), which
    /// a stage never holds.
    pub keep_opaque: bool,
}

/// [`export_tree_noting`] with a [`Layout`]: the tree of a layer (its upper
/// directory, whiteouts and opaque directories as overlayfs reads them)
/// under `upper/`, its `layer.json` first.
pub fn export_with(
    root: &Path,
    out: &Path,
    layout: &Layout<'_>,
    note: &dyn Fn(&Path) -> io::Result<()>,
    progress: &dyn Fn(u64, u64),
) -> Result<ExportStats> {
    let start = Instant::now();
    let tmp = create_temp(out, note)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let stream = xz2::stream::MtStreamBuilder::new()
        .threads(threads)
        .preset(6)
        .check(xz2::stream::Check::Crc64)
        .encoder()
        .map_err(|e| io("starting the xz encoder for", out)(io::Error::other(e)))?;
    let file = tmp
        .as_file()
        .try_clone()
        .map_err(io("opening", tmp.path()))?;
    let xz = xz2::write::XzEncoder::new_stream(BufWriter::with_capacity(1 << 20, file), stream);
    let mut writer = Writer {
        // tar writes 512-byte headers one by one: batch them, or every one
        // is a call into the multi-threaded encoder.
        tar: tar::Builder::new(BufWriter::with_capacity(1 << 20, xz)),
        root: root.to_owned(),
        out: out.to_owned(),
        links: HashMap::new(),
        stats: ExportStats::default(),
        progress,
        prefix: layout.prefix.as_bytes().to_vec(),
        keep_opaque: layout.keep_opaque,
    };
    if let Some((name, data, mtime)) = layout.head {
        writer.head(name, data, mtime)?;
    }
    writer.entry(Path::new(""))?;
    writer.dir(Path::new(""))?;
    let stats = writer.stats;
    let file = finish_xz(writer.tar, out)?;
    file.sync_all().map_err(io("syncing", tmp.path()))?;
    let tarball_bytes = file.metadata().map_err(io("reading", tmp.path()))?.len();
    tmp.persist(out)
        .map_err(|e| io("renaming into place", out)(e.error))?;
    let stats = ExportStats {
        tarball_bytes,
        ..stats
    };
    info!(
        entries = stats.entries,
        bytes = stats.bytes,
        tarball_bytes,
        secs = start.elapsed().as_secs_f64(),
        "tree exported"
    );
    Ok(stats)
}

/// The temporary file next to `out` that becomes it, 0600 until renamed;
/// `note` is told each name tried before the file is created.
fn create_temp(
    out: &Path,
    note: &dyn Fn(&Path) -> io::Result<()>,
) -> Result<tempfile::NamedTempFile> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = out
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{} is not a file name", out.display())))?;
    tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .make_in(dir, |path| {
            note(path)?;
            use std::os::unix::fs::OpenOptionsExt;
            // As tempfile makes its own: 0600 until renamed into place.
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
        })
        .map_err(io("creating a temporary file in", dir))
}

/// End the tar and the xz stream around it: the file they were written to.
fn finish_xz(tar: tar::Builder<BufWriter<XzOut>>, out: &Path) -> Result<File> {
    let xz = tar
        .into_inner()
        .map_err(io("writing", out))?
        .into_inner()
        .map_err(|e| io("writing", out)(e.into_error()))?;
    let mut buf = xz.finish().map_err(io("writing", out))?;
    buf.flush().map_err(io("writing", out))?;
    buf.into_inner()
        .map_err(|e| io("writing", out)(e.into_error()))
}

/// The xz stream a tarball is written through.
type XzOut = xz2::write::XzEncoder<BufWriter<File>>;

struct Writer<'a, W: Write> {
    tar: tar::Builder<W>,
    root: PathBuf,
    out: PathBuf,
    /// (dev, ino) of multiply-linked files → the first name written.
    links: HashMap<(u64, u64), PathBuf>,
    stats: ExportStats,
    progress: &'a dyn Fn(u64, u64),
    /// Prepended to every name (`upper/`).
    prefix: Vec<u8>,
    /// Whether `trusted.overlay.opaque` is kept.
    keep_opaque: bool,
}

impl<W: Write> Writer<'_, W> {
    /// A regular file of `data` called `name`, root's, 0644.
    fn head(&mut self, name: &str, data: &[u8], mtime: u64) -> Result<()> {
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        h.set_size(data.len() as u64);
        h.set_device_major(0).map_err(io("writing", &self.out))?;
        h.set_device_minor(0).map_err(io("writing", &self.out))?;
        set_raw_name(&mut h, name.as_bytes());
        h.set_cksum();
        self.tar
            .append(&h, data)
            .map_err(io("writing", &self.out))?;
        self.stats.entries += 1;
        self.stats.bytes += data.len() as u64;
        Ok(())
    }

    /// Write the contents of directory `rel`, sorted, depth first.
    fn dir(&mut self, rel: &Path) -> Result<()> {
        let path = self.root.join(rel);
        let mut names: Vec<_> = fs::read_dir(&path)
            .map_err(io("reading", &path))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()
            .map_err(io("reading", &path))?;
        names.sort();
        for name in names {
            let child = rel.join(&name);
            if self.entry(&child)? {
                self.dir(&child)?;
            }
        }
        Ok(())
    }

    /// Write one entry; true if it is a directory to descend into.
    fn entry(&mut self, rel: &Path) -> Result<bool> {
        let path = self.root.join(rel);
        let md = fs::symlink_metadata(&path).map_err(io("reading", &path))?;
        let mut h = Header::new_ustar();
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(u64::from(md.uid()));
        h.set_gid(u64::from(md.gid()));
        h.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
        h.set_size(0);
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut name = if rel.as_os_str().is_empty() && self.prefix.is_empty() {
            b"./".to_vec()
        } else {
            let mut n = self.prefix.clone();
            if !n.is_empty() && !rel.as_os_str().is_empty() {
                n.push(b'/');
            }
            n.extend_from_slice(rel.as_os_str().as_bytes());
            n
        };
        let Some(data) = self.typed_header(rel, &path, &md, &mut h, &mut pax)? else {
            warn!(path = %path.display(), "socket left out of the tarball");
            return Ok(false);
        };
        let is_dir = md.file_type().is_dir();
        if is_dir && !name.ends_with(b"/") {
            name.push(b'/');
        }
        if !matches!(h.entry_type(), EntryType::Char | EntryType::Block) {
            // GNU tar writes zeros, not an empty field, for non-devices.
            h.set_device_major(0).map_err(io("writing", &self.out))?;
            h.set_device_minor(0).map_err(io("writing", &self.out))?;
        }
        path_name(&mut h, &mut pax, &name);
        xattr_records(&path, &mut pax, self.keep_opaque)?;
        if !pax.is_empty() {
            self.append_pax(rel, &md, &pax)?;
        }
        h.set_cksum();
        self.append(&h, data, &md, &path)?;
        self.stats.entries += 1;
        (self.progress)(self.stats.entries, self.stats.bytes);
        Ok(is_dir)
    }

    /// Set the entry type of `h` and what goes with it (link target, size,
    /// device number): the file to read the data from, if any; `None` for
    /// what a tarball cannot hold (a socket).
    fn typed_header(
        &mut self,
        rel: &Path,
        path: &Path,
        md: &fs::Metadata,
        h: &mut Header,
        pax: &mut Vec<(String, Vec<u8>)>,
    ) -> Result<Option<Option<File>>> {
        let ft = md.file_type();
        if ft.is_dir() {
            h.set_entry_type(EntryType::Directory);
        } else if ft.is_file() {
            let first = (md.nlink() > 1)
                .then(|| self.links.get(&(md.dev(), md.ino())).cloned())
                .flatten();
            if let Some(first) = first {
                h.set_entry_type(EntryType::Link);
                link_name(h, pax, "linkpath", first.as_os_str().as_bytes());
            } else {
                if md.nlink() > 1 {
                    self.links.insert((md.dev(), md.ino()), rel.to_owned());
                }
                h.set_entry_type(EntryType::Regular);
                h.set_size(md.len());
                return Ok(Some(Some(File::open(path).map_err(io("opening", path))?)));
            }
        } else if ft.is_symlink() {
            h.set_entry_type(EntryType::Symlink);
            let target = fs::read_link(path).map_err(io("reading", path))?;
            link_name(h, pax, "linkpath", target.as_os_str().as_bytes());
        } else if ft.is_char_device() || ft.is_block_device() {
            h.set_entry_type(if ft.is_char_device() {
                EntryType::Char
            } else {
                EntryType::Block
            });
            self.device_number(h, md, path)?;
        } else if ft.is_fifo() {
            h.set_entry_type(EntryType::Fifo);
        } else {
            return Ok(None);
        }
        Ok(Some(None))
    }

    /// Put a device node's number in `h`.
    fn device_number(&self, h: &mut Header, md: &fs::Metadata, path: &Path) -> Result<()> {
        let dev = md.rdev();
        let (major, minor) = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev));
        let bad = |_| {
            Error::Invalid(format!(
                "device number of {} too large for tar",
                path.display()
            ))
        };
        h.set_device_major(u32::try_from(major).map_err(bad)?)
            .map_err(io("writing", &self.out))?;
        h.set_device_minor(u32::try_from(minor).map_err(bad)?)
            .map_err(io("writing", &self.out))?;
        Ok(())
    }

    /// Write the PAX extended header holding `pax` for entry `rel`.
    fn append_pax(
        &mut self,
        rel: &Path,
        md: &fs::Metadata,
        pax: &[(String, Vec<u8>)],
    ) -> Result<()> {
        let records = pax_records(pax);
        let mut x = Header::new_ustar();
        let base = rel.file_name().unwrap_or(OsStr::new("root")).as_bytes();
        let mut xname = b"PaxHeaders/".to_vec();
        xname.extend_from_slice(&base[..base.len().min(80)]);
        set_raw_name(&mut x, &xname);
        x.set_entry_type(EntryType::XHeader);
        x.set_mode(0o644);
        x.set_size(records.len() as u64);
        x.set_mtime(u64::try_from(md.mtime()).unwrap_or(0));
        x.set_cksum();
        self.tar
            .append(&x, records.as_slice())
            .map_err(io("writing", &self.out))
    }

    /// Write header `h` and, for a regular file, exactly the size it states
    /// from `data`.
    fn append(
        &mut self,
        h: &Header,
        data: Option<File>,
        md: &fs::Metadata,
        path: &Path,
    ) -> Result<()> {
        match data {
            Some(f) => {
                // The size is the one in the header: a file that changed while
                // read would corrupt the archive, so read exactly that much.
                let mut limited = io::Read::take(f, md.len());
                self.tar
                    .append(h, &mut limited)
                    .map_err(io("writing", &self.out))?;
                if limited.limit() != 0 {
                    return Err(Error::Invalid(format!(
                        "{} shrank while being exported",
                        path.display()
                    )));
                }
                self.stats.bytes += md.len();
            }
            None => self
                .tar
                .append(h, io::empty())
                .map_err(io("writing", &self.out))?,
        }
        Ok(())
    }
}

/// Add the xattrs of `path` to `pax`, sorted (the order a filesystem lists
/// them in is its own): not overlayfs's own, but for `keep_opaque` its mark
/// of an opaque directory.
fn xattr_records(path: &Path, pax: &mut Vec<(String, Vec<u8>)>, keep_opaque: bool) -> Result<()> {
    let mut attrs: Vec<_> = xattr::list(path)
        .map_err(io("listing xattrs of", path))?
        .collect();
    attrs.sort();
    for attr in attrs {
        let key = attr.to_string_lossy();
        // overlayfs bookkeeping never belongs in a stage; in a layer only
        // the opaque mark means something elsewhere.
        if key.starts_with("trusted.overlay.") && !(keep_opaque && key == OPAQUE) {
            continue;
        }
        if let Some(value) = xattr::get(path, &attr).map_err(io("reading xattrs of", path))? {
            pax.push((format!("SCHILY.xattr.{key}"), value));
        }
    }
    Ok(())
}

/// The xattr overlayfs marks an opaque directory with.
pub const OPAQUE: &str = "trusted.overlay.opaque";

/// Put `name` in the header, or in a PAX `path` record if ustar cannot hold it.
fn path_name(h: &mut Header, pax: &mut Vec<(String, Vec<u8>)>, name: &[u8]) {
    if name.len() < 100 {
        set_raw_name(h, name);
    } else {
        set_raw_name(h, &name[..99]);
        pax.push(("path".into(), name.to_vec()));
    }
}

/// Put a link target in the header, or in a PAX record if too long.
fn link_name(h: &mut Header, pax: &mut Vec<(String, Vec<u8>)>, key: &str, target: &[u8]) {
    if target.len() < 100 {
        let field = &mut h.as_old_mut().linkname;
        field.fill(0);
        field[..target.len()].copy_from_slice(target);
    } else {
        pax.push((key.into(), target.to_vec()));
    }
}

/// The ustar name field, verbatim (the tar crate's `set_path` normalises and
/// refuses some names).
fn set_raw_name(h: &mut Header, name: &[u8]) {
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
}

/// PAX extended header records: `"<len> <key>=<value>\n"`, where `<len>`
/// counts the whole record including its own digits (POSIX.1-2001, pax(1)).
pub fn pax_records<V: AsRef<[u8]>>(records: &[(String, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let value = value.as_ref();
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while rest + len.to_string().len() != len {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} {key}=").as_bytes());
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pax_record_lengths_count_themselves() {
        let r = pax_records(&[("path".into(), vec![b'a'; 95])]);
        let text = String::from_utf8(r).unwrap();
        let (len, _) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), text.len());
    }

    #[test]
    fn export_writes_sorted_entries_links_and_long_names() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let long = "d".repeat(120);
        fs::create_dir_all(root.join("b").join(&long)).unwrap();
        fs::write(root.join("a"), "hello").unwrap();
        fs::hard_link(root.join("a"), root.join("b/a2")).unwrap();
        std::os::unix::fs::symlink("x".repeat(150), root.join("b/l")).unwrap();
        fs::write(root.join("b").join(&long).join("f"), "deep").unwrap();
        xattr::set(root.join("a"), "user.test", b"v").unwrap();
        let out = dir.path().join("out.tar.xz");
        let stats = export_tree(&root, &out, &|_, _| {}).unwrap();
        assert_eq!(stats.entries, 7);
        assert_eq!(stats.bytes, 9);

        let mut raw = Vec::new();
        xz2::read::XzDecoder::new(File::open(&out).unwrap())
            .read_to_end(&mut raw)
            .unwrap();
        let mut ar = tar::Archive::new(raw.as_slice());
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().into_owned();
            let kind = e.header().entry_type();
            let link = e.link_name().unwrap().map(|l| l.into_owned());
            let mut xattrs = Vec::new();
            if let Some(p) = e.pax_extensions().unwrap() {
                for x in p {
                    let x = x.unwrap();
                    if x.key().unwrap().starts_with("SCHILY.xattr.") {
                        xattrs.push(x.key().unwrap().to_owned());
                    }
                }
            }
            seen.push((path, kind, link, xattrs));
        }
        let names: Vec<_> = seen
            .iter()
            .map(|s| s.0.to_string_lossy().trim_end_matches('/').to_owned())
            .collect();
        assert_eq!(
            names,
            [
                ".".to_owned(),
                "a".into(),
                "b".into(),
                "b/a2".into(),
                format!("b/{long}"),
                format!("b/{long}/f"),
                "b/l".into()
            ]
        );
        assert_eq!(seen[1].3, ["SCHILY.xattr.user.test"]);
        assert_eq!(seen[3].1, EntryType::Link);
        assert_eq!(seen[3].2.as_deref(), Some(Path::new("a")));
        assert_eq!(seen[6].2.as_deref(), Some(Path::new(&"x".repeat(150))));
        // Nothing else left next to the tarball.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
