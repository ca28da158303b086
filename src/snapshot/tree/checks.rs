//! The checks on every path and symlink that enters a snapshot tree: one
//! harmless UTF-8 component per name, none of git's special spellings,
//! symlinks that stay inside the tree.

use crate::snapshot::error::{Error, Result};

/// The longest path, in bytes with its terminating NUL, that Linux opens
/// (`PATH_MAX`): a longer one could never be read through a mount. It also
/// bounds the depth of the tree (at most 2048 levels), which git's own tools
/// walk recursively (building, writing and freeing it here need no stack
/// per level).
pub const PATH_MAX: usize = 4096;

/// The longest file name Linux file systems take (`NAME_MAX`).
pub const NAME_MAX: usize = 255;

/// What a tar entry is, for the checks that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file, with its content.
    File,
    /// A symlink.
    Symlink,
    /// A hardlink to another file of the snapshot.
    Hardlink,
}

/// The names git's fsck treats specially, in any spelling it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Special {
    DotGit,
    Gitmodules,
    Gitattributes,
    Gitignore,
    Mailmap,
}

/// Which of git's special names `name` is a spelling of, the way git's fsck
/// and `verify_path` see names (fsck.c `is_hfs_dot*`, `is_ntfs_dot*`): code
/// points HFS+ ignores left out, ASCII case folded, and on NTFS each
/// backslash-separated part with an alternate data stream (`:...`) and
/// trailing dots and spaces cut, and the 8.3 short names (`git~1`,
/// `gitmod~4`, `gi7eba~1`). This matches a little more than git does (any
/// `~` suffix), never less.
pub(super) fn special_name(name: &str) -> Option<Special> {
    // The common case, without allocating: plain ASCII (so nothing HFS+
    // ignores), one NTFS part, and neither a leading dot nor a short name.
    if name.is_ascii() && !name.starts_with('.') && !name.contains(['~', '\\']) {
        return None;
    }
    let folded: String = name
        .chars()
        .filter(|c| !is_hfs_ignorable(*c))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let mut found = None;
    for part in folded.split('\\') {
        let part = part.split(':').next().unwrap_or("");
        let part = part.trim_end_matches(['.', ' ']);
        let this = match part {
            ".git" | "git~1" => Special::DotGit,
            ".gitmodules" => Special::Gitmodules,
            ".gitattributes" => Special::Gitattributes,
            ".gitignore" => Special::Gitignore,
            ".mailmap" => Special::Mailmap,
            p if p.starts_with("gitmod~") || p.starts_with("gi7eba~") => Special::Gitmodules,
            p if p.starts_with("gitatt~") || p.starts_with("gi7d29~") => Special::Gitattributes,
            p if p.starts_with("gitign~") || p.starts_with("gi250a~") => Special::Gitignore,
            p if p.starts_with("mailma~") || p.starts_with("maba30~") => Special::Mailmap,
            _ => continue,
        };
        // .git wins over the others: it is refused everywhere.
        if found.is_none() || this == Special::DotGit {
            found = Some(this);
        }
    }
    found
}

/// The code points HFS+ ignores in names (git's utf8.c `next_hfs_char`).
pub(super) fn is_hfs_ignorable(c: char) -> bool {
    matches!(c, '\u{200c}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{206a}'..='\u{206f}' | '\u{feff}')
}

/// git's fsck refuses `.gitattributes` lines this long or longer
/// (`ATTR_MAX_LINE_LENGTH`).
pub(super) const ATTR_MAX_LINE_LENGTH: usize = 2048;

/// Refuse what `git fsck --strict` would flag about the entry at `path`
/// (inside the snapshot) of kind `kind`, beyond what [`PathSplitter`]
/// refuses by path alone:
///
/// - `.gitmodules`, in any spelling, of any kind. A portage tree has no
///   submodules, and git's checks of its content (names, URLs, paths,
///   update commands, each in git's own config syntax) are easy to get
///   subtly wrong, so it is refused outright rather than validated.
/// - `.gitattributes` that is not a regular file (git checks its content,
///   and a directory or symlink there fails fsck), or whose lines reach
///   2048 bytes; a hardlinked one too, since its content was not read here.
/// - `.gitignore` and `.mailmap` as symlinks (git flags them; a portage tree
///   never needs them).
pub fn check_entry(raw: &[u8], path: &str, kind: EntryKind, data: Option<&[u8]>) -> Result<()> {
    let mut parts = path.split('/').peekable();
    while let Some(name) = parts.next() {
        let last = parts.peek().is_none();
        let kind = if last { kind } else { EntryKind::Dir };
        let problem = match (special_name(name), kind) {
            (Some(Special::Gitmodules), _) => format!(
                "{name:?} is a .gitmodules (a portage tree has no submodules, and git checks its content)"
            ),
            (Some(Special::Gitattributes), EntryKind::File) => {
                let too_long = data
                    .unwrap_or_default()
                    .split(|b| *b == b'\n')
                    .any(|line| {
                        let line = line.split(|b| *b == 0).next().unwrap_or_default();
                        line.len() >= ATTR_MAX_LINE_LENGTH
                    });
                if !too_long {
                    continue;
                }
                format!("{name:?} has lines of {ATTR_MAX_LINE_LENGTH} bytes or more (git refuses it)")
            }
            (Some(Special::Gitattributes), _) => {
                format!("{name:?} is a .gitattributes that is not a plain file (git checks its content)")
            }
            (Some(Special::Gitignore | Special::Mailmap), EntryKind::Symlink) => {
                format!("{name:?} is a symlink (git flags it)")
            }
            _ => continue,
        };
        return Err(Error::entry(raw, problem));
    }
    Ok(())
}

/// Check that a symlink at `link` (inside the snapshot) pointing at `target`
/// stays inside the snapshot: relative, and never climbing above the root when
/// resolved lexically from the link's directory.
pub fn check_symlink(raw: &[u8], link: &str, target: &[u8]) -> Result<()> {
    let target = std::str::from_utf8(target)
        .map_err(|_| Error::entry(raw, "symlink target is not UTF-8"))?;
    if target.is_empty() {
        return Err(Error::entry(raw, "symlink with an empty target"));
    }
    if target.len() >= PATH_MAX {
        return Err(Error::entry(
            raw,
            format!(
                "symlink target of {} bytes, longer than Linux can follow (PATH_MAX {PATH_MAX})",
                target.len()
            ),
        ));
    }
    if target.starts_with('/') {
        return Err(Error::entry(
            raw,
            format!("symlink to absolute path {target:?}"),
        ));
    }
    let mut depth = link.split('/').count() - 1;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." if depth == 0 => {
                return Err(Error::entry(
                    raw,
                    format!("symlink target {target:?} escapes the snapshot"),
                ))
            }
            ".." => depth -= 1,
            _ => depth += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_must_stay_inside() {
        assert!(check_symlink(b"x", "profiles/a/parent", b"../base").is_ok());
        assert!(check_symlink(b"x", "profiles/a/parent", b"../../metadata/x").is_ok());
        assert!(check_symlink(b"x", "profiles/a/parent", b"../../../x").is_err());
        assert!(check_symlink(b"x", "top", b"..").is_err());
        assert!(check_symlink(b"x", "a", b"/etc").is_err());
        assert!(check_symlink(b"x", "a", b"").is_err());
        assert!(check_symlink(b"x", "a/b", b"./c/../../d").is_ok());
    }

    #[test]
    fn git_spellings_are_recognised() {
        for (name, want) in [
            (".git", Some(Special::DotGit)),
            (".GIT", Some(Special::DotGit)),
            (".g\u{200c}it", Some(Special::DotGit)),
            ("\u{feff}.git", Some(Special::DotGit)),
            ("git~1", Some(Special::DotGit)),
            ("GIT~1. ", Some(Special::DotGit)),
            (".git::$INDEX_ALLOCATION", Some(Special::DotGit)),
            ("a\\.git", Some(Special::DotGit)),
            (".gitmodules", Some(Special::Gitmodules)),
            ("gi7eba~4", Some(Special::Gitmodules)),
            (".GitAttributes ", Some(Special::Gitattributes)),
            ("gitign~1", Some(Special::Gitignore)),
            (".mailmap.", Some(Special::Mailmap)),
            (".github", None),
            (".gitkeep", None),
            ("git~12", None),
            ("foo-1.ebuild", None),
        ] {
            assert_eq!(special_name(name), want, "{name:?}");
        }
        assert!(check_entry(b"x", "a/.gitmodules", EntryKind::File, Some(b"")).is_err());
        assert!(check_entry(b"x", ".gitattributes/b", EntryKind::File, Some(b"")).is_err());
        assert!(check_entry(b"x", "a/.gitattributes", EntryKind::File, Some(b"* text\n")).is_ok());
        assert!(check_entry(b"x", "a/.gitignore", EntryKind::Symlink, None).is_err());
        assert!(check_entry(b"x", "a/.gitignore", EntryKind::File, Some(b"")).is_ok());
    }
}
