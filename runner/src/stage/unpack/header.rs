//! Reading a tar entry's header: its type, its name split into harmless
//! components, its owner, mode, mtime and xattrs.

use std::io::{self, Read};

use nix::sys::time::TimeSpec;
use tar::EntryType;

/// The tar crate quotes raw header bytes in some messages; keep the error to one
/// printable line.
pub(super) fn printable(e: io::Error) -> io::Error {
    let text = e.to_string();
    if text.chars().all(|c| !c.is_control()) {
        return e;
    }
    io::Error::new(e.kind(), text.escape_debug().to_string())
}

/// Owner, mode, time and xattrs of one entry.
pub(super) struct Meta {
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// Permission bits including setuid, setgid and sticky.
    pub(super) mode: u32,
    pub(super) mtime: TimeSpec,
    pub(super) xattrs: Vec<(String, Vec<u8>)>,
}

/// What an entry is, from its type flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Hardlink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
    /// Carries nothing to unpack (PAX global header, GNU volume label).
    Skip,
}

impl Kind {
    pub(super) fn of(ty: EntryType) -> Option<Kind> {
        Some(match ty.as_byte() {
            b'0' | b'\0' | b'7' | b'S' => Kind::File,
            b'1' => Kind::Hardlink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            b'g' | b'V' => Kind::Skip,
            _ => return None,
        })
    }
}

/// Split an archive name into the components below the root. The root itself
/// (`./`, `.`) is the empty list.
pub(crate) fn components(name: &[u8]) -> std::result::Result<Vec<&[u8]>, &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name[0] == b'/' {
        return Err("absolute path");
    }
    // Linux opens no path this long (PATH_MAX, with its NUL): refused here in
    // a word rather than by the kernel with the whole name in the message.
    if name.len() >= 4096 {
        return Err("path of 4096 bytes or more, longer than Linux can open (PATH_MAX)");
    }
    let comps: Vec<&[u8]> = name
        .split(|b| *b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    if comps.iter().any(|c| *c == b"..") {
        return Err("path leaves the root through ..");
    }
    Ok(comps)
}

/// An archive name as messages show it: lossy UTF-8 with control characters
/// escaped, so a hostile name cannot break the one-line error.
pub(super) fn shown_name(raw: &[u8]) -> String {
    // A hostile name may be megabytes long: keep its two ends.
    const KEEP: usize = 120;
    if raw.len() > 3 * KEEP {
        return format!(
            "{}...({} bytes)...{}",
            shown_name(&raw[..KEEP]),
            raw.len(),
            shown_name(&raw[raw.len() - KEEP..])
        );
    }
    String::from_utf8_lossy(raw)
        .chars()
        .flat_map(|c| {
            let escaped = c.is_control().then(|| c.escape_default());
            escaped
                .into_iter()
                .flatten()
                .chain((!c.is_control()).then_some(c))
        })
        .collect()
}

pub(super) fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

/// The owner, mode, time and xattrs of `entry`, PAX records included (the tar
/// crate already applies PAX `uid`, `gid`, `size` and `path`).
pub(super) fn meta(entry: &mut tar::Entry<'_, impl Read>) -> io::Result<Meta> {
    let h = entry.header();
    let uid = u32::try_from(h.uid()?).map_err(|_| io::Error::other("uid out of range"))?;
    let gid = u32::try_from(h.gid()?).map_err(|_| io::Error::other("gid out of range"))?;
    let mode = h.mode()? & 0o7777;
    let secs = i64::try_from(h.mtime()?).map_err(|_| io::Error::other("mtime out of range"))?;
    let mut mtime = TimeSpec::new(secs, 0);
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions()? {
        for ext in pax {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
            } else if key == "mtime" {
                if let Some(t) = ext.value().ok().and_then(parse_pax_time) {
                    mtime = t;
                }
            }
        }
    }
    Ok(Meta {
        uid,
        gid,
        mode,
        mtime,
        xattrs,
    })
}

/// A PAX time, `secs[.fraction]` (possibly negative), as a `TimeSpec`.
pub(super) fn parse_pax_time(s: &str) -> Option<TimeSpec> {
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = whole.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let mut nanos: i64 = digits.parse().ok()?;
    let mut secs = secs;
    if whole.starts_with('-') && nanos > 0 {
        // -1.25 is 1.25 s before the epoch: -2 s + 0.75 s. Below the
        // earliest time there is, the record is ignored as unreadable.
        secs = secs.checked_sub(1)?;
        nanos = 1_000_000_000 - nanos;
    }
    Some(TimeSpec::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_below_the_root_split_into_components() {
        assert_eq!(
            components(b"./usr/bin/ls").unwrap(),
            vec![&b"usr"[..], b"bin", b"ls"]
        );
        assert_eq!(
            components(b"usr//lib/./x/").unwrap(),
            vec![&b"usr"[..], b"lib", b"x"]
        );
        assert!(components(b"./").unwrap().is_empty());
        assert!(components(b".").unwrap().is_empty());
    }

    #[test]
    fn names_that_leave_the_root_are_refused() {
        assert_eq!(components(b"/etc/passwd"), Err("absolute path"));
        assert_eq!(components(b"../x"), Err("path leaves the root through .."));
        assert_eq!(
            components(b"./a/../../x"),
            Err("path leaves the root through ..")
        );
        assert_eq!(components(b""), Err("empty name"));
        assert!(components("d/".repeat(2048).as_bytes()).is_err());
        assert!(components("d/".repeat(2047).as_bytes()).is_ok());
        // `..` as part of a longer name is just a name.
        assert_eq!(components(b"a/..b").unwrap(), vec![&b"a"[..], b"..b"]);
    }

    #[test]
    fn shown_names_stay_on_one_line() {
        assert_eq!(shown_name(b"./usr/bin/ls"), "./usr/bin/ls");
        assert_eq!(shown_name(b"a\nb\x1b[2J"), "a\\nb\\u{1b}[2J");
        assert_eq!(shown_name(b"caf\xc3\xa9"), "caf\u{e9}");
        let long = shown_name("d/".repeat(100_000).as_bytes());
        assert!(
            long.len() < 300 && long.contains("...(200000 bytes)..."),
            "{long}"
        );
    }

    #[test]
    fn pax_times_keep_fractions_and_signs() {
        assert_eq!(
            parse_pax_time("1787000000"),
            Some(TimeSpec::new(1_787_000_000, 0))
        );
        assert_eq!(
            parse_pax_time("1787000000.5"),
            Some(TimeSpec::new(1_787_000_000, 500_000_000))
        );
        assert_eq!(
            parse_pax_time("-1.25"),
            Some(TimeSpec::new(-2, 750_000_000))
        );
        assert_eq!(parse_pax_time("12.x"), None);
        // Found while writing the fuzz target: one second before i64::MIN
        // overflowed (a panic with overflow checks, a far-future time without).
        assert_eq!(parse_pax_time("-9223372036854775808.5"), None);
        assert_eq!(
            parse_pax_time("-9223372036854775808"),
            Some(TimeSpec::new(i64::MIN, 0))
        );
    }

    #[test]
    fn entry_types_map_to_kinds() {
        assert_eq!(Kind::of(EntryType::new(b'0')), Some(Kind::File));
        assert_eq!(Kind::of(EntryType::new(b'\0')), Some(Kind::File));
        assert_eq!(Kind::of(EntryType::new(b'5')), Some(Kind::Dir));
        assert_eq!(Kind::of(EntryType::new(b'g')), Some(Kind::Skip));
        assert_eq!(Kind::of(EntryType::new(b'D')), None);
    }
}
