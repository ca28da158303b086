//! What a child process said, for the one-line errors that name it.

/// The last non-empty line of a child's stderr (its error, by convention),
/// trimmed; empty if it said nothing.
pub fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn last_line_skips_blank_tail_lines() {
        assert_eq!(super::last_line(b"warn\nerror: x \n\n  \n"), "error: x");
        assert_eq!(super::last_line(b""), "");
    }
}
