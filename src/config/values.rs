//! The configuration's value types and the checks every value goes through,
//! for the file (as serde field parsers) and for the flags that set the same
//! values (as clap value parsers): one rule each, whichever way it comes.

use std::fmt::Write as _;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer};

pub use portroot_fs::IoUring;
use portroot_runner::cgroup::{self, Cpus};
pub use portroot_runner::conf::{Feature, MirrorUrl, TreeLayout};
use portroot_runner::plan::TmpfsMount;
pub use portroot_runner::sandbox::Network;

/// A value named by one of a fixed set of words, defined once in the crate
/// that uses it ([`TreeLayout`], [`Network`], [`IoUring`]): the flags parse
/// it with [`choice`], the config file with its `FromStr`, and `config show`
/// prints its [`name`](Choice::name).
pub trait Choice: Copy + Send + Sync + 'static + std::str::FromStr<Err = String> {
    /// Every value, in the order `--help` lists them.
    fn all() -> &'static [Self];
    /// Its word.
    fn name(self) -> &'static str;
    /// What it means, for `--help`.
    fn about(self) -> &'static str;
}

macro_rules! choice {
    ($t:ty) => {
        impl Choice for $t {
            fn all() -> &'static [Self] {
                &<$t>::ALL
            }
            fn name(self) -> &'static str {
                <$t>::name(self)
            }
            fn about(self) -> &'static str {
                <$t>::about(self)
            }
        }
    };
}
choice!(TreeLayout);
choice!(Network);
choice!(IoUring);

/// The clap value parser of a [`Choice`]: its words, each with its help.
pub fn choice<T: Choice>() -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(
        T::all()
            .iter()
            .map(|c| PossibleValue::new(c.name()).help(c.about())),
    )
    .try_map(|word| word.parse::<T>())
}

/// A [`Choice`] in the config file.
pub(crate) fn named<'de, D: Deserializer<'de>, T: Choice>(d: D) -> Result<Option<T>, D::Error> {
    let word = String::deserialize(d)?;
    word.parse().map(Some).map_err(serde::de::Error::custom)
}

/// Parse `1048576`, `512K`, `256M`, `1G` (also `MiB`, `GiB`, binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let shift = match unit.trim() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("bad size unit in {s:?} (use K, M or G)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("size {s:?} too large"))
}

/// A cache budget, for `--cache-size` and `mount.cache_size`: a size of
/// more than 0 (an empty cache would fail the first read instead).
pub fn parse_cache_size(s: &str) -> Result<u64, String> {
    check_cache_size(parse_size(s)?)
}

/// Refuse an empty cache budget.
pub fn check_cache_size(bytes: u64) -> Result<u64, String> {
    if bytes == 0 {
        return Err("cache_size must be more than 0".to_owned());
    }
    Ok(bytes)
}

/// 1-based (line, column in characters) of byte offset `at` in `text`.
pub(crate) fn line_column(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `mirrors`: at least one, each a URL `snapshot sync` reads (http, https,
/// file://) or an absolute path, so that a mirror it would refuse is refused
/// here already.
pub(crate) fn mirrors<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let list = Vec::<String>::deserialize(d)?;
    if list.is_empty() {
        return Err(serde::de::Error::custom(
            "mirrors is empty: name at least one mirror, or leave the key out for the default",
        ));
    }
    for u in &list {
        if !Path::new(u).is_absolute() {
            MirrorUrl::try_from(u.clone()).map_err(serde::de::Error::custom)?;
        }
        crate::snapshot::sync::Mirror::parse(u)
            .map_err(|e| serde::de::Error::custom(format!("mirrors: {e}")))?;
    }
    Ok(Some(list))
}

/// Check a make.conf line given whole: no line break or other control
/// character (a tab aside), which would start a second line unseen.
pub fn check_make_conf_line(line: &str) -> Result<(), String> {
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!(
            "make.conf line {line:?} holds a line break or another control character: give each line on its own"
        ));
    }
    Ok(())
}

pub(crate) fn make_conf_lines<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    let lines = Vec::<String>::deserialize(d)?;
    for l in &lines {
        check_make_conf_line(l)
            .map_err(|e| serde::de::Error::custom(format!("make_conf_lines: {e}")))?;
    }
    Ok(Some(lines))
}

pub(crate) fn absolute_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let p = PathBuf::deserialize(d)?;
    if !p.is_absolute() {
        return Err(serde::de::Error::custom(format!(
            "path {:?} is not absolute",
            p.display().to_string()
        )));
    }
    Ok(Some(p))
}

/// `run.binhost`: a name under the store or an absolute directory, as
/// `--binhost` takes it.
pub(crate) fn binhost<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    crate::store::parse_binhost(&s)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("binhost {s:?}: {e}")))
}

pub(crate) fn repo_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let name = String::deserialize(d)?;
    if !crate::store::is_valid_name(&name) {
        return Err(serde::de::Error::custom(format!(
            "invalid repository name {name:?}: letters, digits and ._+- only"
        )));
    }
    Ok(Some(name))
}

/// `PATH[=SIZE]` of `--tmpfs` and `run.tmpfs`: an absolute path inside the
/// chroot, not `/` and without `..`, and an optional size (`8G`, bytes).
pub fn parse_tmpfs(spec: &str) -> Result<TmpfsMount, String> {
    let (path, size) = match spec.split_once('=') {
        Some((p, s)) => (p, Some(parse_size(s)?)),
        None => (spec, None),
    };
    let target = PathBuf::from(path);
    let plain = target.components().all(|c| {
        matches!(
            c,
            std::path::Component::RootDir | std::path::Component::Normal(_)
        )
    });
    if !target.is_absolute() || target.parent().is_none() || !plain {
        return Err(format!(
            "tmpfs path {path:?} must be absolute inside the chroot, not / and without .."
        ));
    }
    if size == Some(0) {
        return Err(format!("tmpfs size in {spec:?} must be more than 0"));
    }
    Ok(TmpfsMount { target, size })
}

/// `PATH[=BYTES]`, as [`parse_tmpfs`] reads it back.
pub(crate) fn tmpfs_spec(t: &TmpfsMount) -> String {
    match t.size {
        Some(bytes) => format!("{}={bytes}", t.target.display()),
        None => t.target.display().to_string(),
    }
}

pub(crate) fn tmpfs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<TmpfsMount>>, D::Error> {
    let specs = Vec::<String>::deserialize(d)?;
    specs
        .iter()
        .map(|s| parse_tmpfs(s).map_err(serde::de::Error::custom))
        .collect::<Result<_, _>>()
        .map(Some)
}

/// An integer in `min..=max`, with messages in the config's terms.
pub(crate) struct Bounded {
    what: &'static str,
    min: u64,
    max: u64,
}

impl serde::de::Visitor<'_> for Bounded {
    type Value = u64;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "an integer from {} to {}", self.min, self.max)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
        match u64::try_from(v) {
            Ok(v) => self.visit_u64(v),
            Err(_) => Err(self.out_of_range(v)),
        }
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
        if (self.min..=self.max).contains(&v) {
            Ok(v)
        } else {
            Err(self.out_of_range(v))
        }
    }
}

impl Bounded {
    fn out_of_range<E: serde::de::Error>(&self, v: impl std::fmt::Display) -> E {
        E::custom(format!(
            "{} must be {} to {}, not {v}",
            self.what, self.min, self.max
        ))
    }
}

pub(crate) fn jobs<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NonZeroUsize>, D::Error> {
    let n = d.deserialize_i64(Bounded {
        what: "jobs",
        min: 1,
        max: 4096,
    })?;
    Ok(usize::try_from(n).ok().and_then(NonZeroUsize::new))
}

pub(crate) fn threads<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    let n = d.deserialize_i64(Bounded {
        what: "threads",
        min: 1,
        max: 64,
    })?;
    Ok(u16::try_from(n).ok())
}

pub(crate) fn cache_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let bytes = size(d)?.unwrap_or_default();
    check_cache_size(bytes)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

pub(crate) fn memory<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let bytes = size(d)?.unwrap_or_default();
    cgroup::check_memory(bytes)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

pub(crate) fn pids<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_i64(Bounded {
        what: "pids",
        min: 1,
        max: cgroup::MAX_PIDS,
    })
    .map(Some)
}

/// A CPU count: an integer, a float or a string such as "1.5".
pub(crate) fn cpus<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Cpus>, D::Error> {
    struct CpusVisitor;
    impl serde::de::Visitor<'_> for CpusVisitor {
        type Value = Cpus;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a CPU count such as 2 or 0.5")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Cpus, E> {
            Cpus::parse(&v.to_string()).map_err(E::custom)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Cpus, E> {
            Cpus::parse(&v.to_string()).map_err(E::custom)
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Cpus, E> {
            Cpus::parse(&v.to_string()).map_err(E::custom)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Cpus, E> {
            Cpus::parse(v).map_err(E::custom)
        }
    }
    d.deserialize_any(CpusVisitor).map(Some)
}

/// A size as bytes (an integer) or text with a K, M or G suffix.
pub(crate) fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct SizeVisitor;
    impl serde::de::Visitor<'_> for SizeVisitor {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a size: bytes, or a string such as \"256M\" or \"1G\"")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom(format!("size {v} is negative")))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            parse_size(v).map_err(E::custom)
        }
    }
    d.deserialize_any(SizeVisitor).map(Some)
}
