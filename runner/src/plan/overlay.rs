//! Overlayfs options: `lowerdir=` (top layer first), `upperdir=`, `workdir=`,
//! with `\`, `,` and `:` escaped in every path.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Overlayfs options for `layers` (top first) under `upper`/`work`.
///
/// overlayfs splits options at `,` and `lowerdir` at `:`, and takes `\` as the
/// escape character for both (Documentation/filesystems/overlayfs.rst), so
/// those three bytes are escaped in every path.
pub fn overlay_options(layers: &[PathBuf], upper: &Path, work: &Path) -> OsString {
    let mut out = lowerdir_option(layers);
    out.extend(b",upperdir=");
    out.extend(escape_overlay_path(upper.as_os_str()));
    out.extend(b",workdir=");
    out.extend(escape_overlay_path(work.as_os_str()));
    OsString::from_vec(out)
}

/// The `lowerdir=` option for `layers` (top first), escaped: the whole of a
/// read-only overlay's options, the start of a writable one's.
pub fn lowerdir_option(layers: &[PathBuf]) -> Vec<u8> {
    let mut out = b"lowerdir=".to_vec();
    for (i, layer) in layers.iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        out.extend(escape_overlay_path(layer.as_os_str()));
    }
    out
}

/// `path` with `\`, `,` and `:` backslash-escaped for overlayfs options.
pub fn escape_overlay_path(path: &OsStr) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len());
    for &b in path.as_bytes() {
        if matches!(b, b'\\' | b',' | b':') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_options_escape_backslash_comma_colon() {
        let opts = overlay_options(
            &["/a:b".into(), "/c,d".into()],
            Path::new("/u\\p"),
            Path::new("/w:,\\"),
        );
        assert_eq!(
            opts,
            r"lowerdir=/a\:b:/c\,d,upperdir=/u\\p,workdir=/w\:\,\\"
        );
    }

    #[test]
    fn escaping_keeps_non_utf8_bytes() {
        let raw = OsStr::from_bytes(b"/x\xff:y");
        assert_eq!(escape_overlay_path(raw), b"/x\xff\\:y".to_vec());
    }

    #[test]
    fn lowerdir_option_alone_lists_and_escapes_the_layers() {
        let opts = lowerdir_option(&["/top".into(), "/a:b".into(), "/rootfs".into()]);
        assert_eq!(opts, br"lowerdir=/top:/a\:b:/rootfs".to_vec());
    }
}
