//! [`StageDigest`]: what names a stage everywhere (the store's directory,
//! a run's record, a layer's provenance, `stage add --sha256`), checked once
//! where it is made or read.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

/// The sha256 of a stage's tarball: 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StageDigest(String);

impl StageDigest {
    /// The digest written `hex` (64 lowercase hex digits), or `None`.
    pub fn parse(hex: &str) -> Option<StageDigest> {
        is_digest(hex).then(|| StageDigest(hex.to_owned()))
    }

    /// The digest of a sha256 `hash` (32 bytes).
    pub fn of_sha256(hash: &[u8; 32]) -> StageDigest {
        StageDigest(hash.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The digest as its 64 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Its first 12 digits, as listings show it.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl TryFrom<String> for StageDigest {
    type Error = String;

    fn try_from(s: String) -> Result<StageDigest, String> {
        if is_digest(&s) {
            Ok(StageDigest(s))
        } else {
            Err(format!(
                "not a stage digest (64 lowercase hex digits): {s:?}"
            ))
        }
    }
}

impl From<StageDigest> for String {
    fn from(d: StageDigest) -> String {
        d.0
    }
}

impl Deref for StageDigest {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for StageDigest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl AsRef<std::path::Path> for StageDigest {
    fn as_ref(&self) -> &std::path::Path {
        std::path::Path::new(&self.0)
    }
}

impl fmt::Display for StageDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for StageDigest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for StageDigest {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for StageDigest {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_64_lowercase_hex_digits_are_a_digest() {
        let hex = "0123456789abcdef".repeat(4);
        let d = StageDigest::parse(&hex).unwrap();
        assert_eq!(d.short(), "0123456789ab");
        assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{hex}\""));
        let back: StageDigest = serde_json::from_str(&format!("\"{hex}\"")).unwrap();
        assert_eq!(back, d);
        assert!(StageDigest::parse(&hex.to_uppercase()).is_none());
        assert!(StageDigest::parse(&hex[1..]).is_none());
        assert!(serde_json::from_str::<StageDigest>("\"../../etc\"").is_err());
    }
}
