//! Snapshot names and refs: the date a snapshot is tagged with, the commit and
//! tag messages, and reading the tags back for `snapshot list`.
//!
//! The name is the seed's: the first field of `metadata/timestamp.x` (a unix
//! time) minus 86400 seconds, formatted `YYYY-MM-DD` in UTC. The mirrors stamp a
//! snapshot a little after midnight of the day after the tree was frozen, so the
//! subtraction gives the day the tree describes.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};
use git2::{Oid, Repository};

use super::error::{Error, Result};

/// Seconds in a day.
const DAY: i64 = 86_400;

/// The branch every snapshot commit lands on.
pub const MAIN_REF: &str = "refs/heads/main";

/// The fixed identity of snapshot commits and tags: with it and the snapshot's
/// own timestamp, the same tarball gives the same commit id everywhere.
pub const IDENTITY: (&str, &str) = ("portroot", "portroot@localhost");

/// A calendar date in UTC, the name of a snapshot tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotDate {
    /// Year, e.g. 2026.
    pub year: i32,
    /// Month, 1..=12.
    pub month: u32,
    /// Day of the month, 1..=31 (valid for the month).
    pub day: u32,
}

impl SnapshotDate {
    /// The tag date of a snapshot stamped `timestamp` (unix seconds): one day
    /// earlier, in UTC.
    pub fn from_timestamp(timestamp: i64) -> SnapshotDate {
        let date = chrono::DateTime::from_timestamp(timestamp - DAY, 0)
            .unwrap_or_default()
            .date_naive();
        SnapshotDate::from_naive(date)
    }

    fn from_naive(date: NaiveDate) -> SnapshotDate {
        SnapshotDate {
            year: date.year(),
            month: date.month(),
            day: date.day(),
        }
    }

    /// The timestamp a snapshot of this date carries when only `--date` names it:
    /// midnight UTC of the following day, so that [`Self::from_timestamp`] gives
    /// this date back.
    pub fn to_timestamp(self) -> i64 {
        NaiveDate::from_ymd_opt(self.year, self.month, self.day)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map_or(0, |t| t.and_utc().timestamp())
            + DAY
    }
}

impl fmt::Display for SnapshotDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

impl FromStr for SnapshotDate {
    type Err = Error;

    fn from_str(s: &str) -> Result<SnapshotDate> {
        let bad = || Error::BadDate(s.to_owned());
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        // chrono rejects 2026-02-30 and friends; the shape check above keeps
        // it from accepting `2026-8-1` or a sign.
        if !s
            .bytes()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
        {
            return Err(bad());
        }
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map(SnapshotDate::from_naive)
            .map_err(|_| bad())
    }
}

/// Parse the first field of `metadata/timestamp.x` (`1787273100 Fri Aug 21 ...`).
pub fn parse_timestamp_x(content: &[u8]) -> Result<i64> {
    let text = String::from_utf8_lossy(content);
    let first_line = text.lines().next().unwrap_or("").trim();
    first_line
        .split_whitespace()
        .next()
        .and_then(|f| f.parse::<i64>().ok())
        .filter(|t| *t > 0)
        .ok_or_else(|| Error::BadTimestamp {
            content: first_line.chars().take(80).collect(),
        })
}

/// The earliest snapshot timestamp accepted, 2000-01-01 00:00 UTC: portage
/// snapshots start years later, so anything earlier is a forged or broken
/// stamp (and would sort before every real snapshot).
pub const EARLIEST_TIMESTAMP: i64 = 946_684_800;

/// The latest timestamp accepted even with `--allow-future`: the last second
/// the commit times git tools write here can hold (2106-02-07), so that the
/// tag date and the commit time always agree.
pub const LATEST_TIMESTAMP: i64 = u32::MAX as i64;

/// The clock, as unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Refuse a snapshot timestamp outside the sane window: before 2000-01-01,
/// or more than a day past `now` (unless `allow_future`), or past what a
/// commit time holds. A stamp in the future would make every real snapshot
/// after it "older" and refused.
pub fn check_timestamp(timestamp: i64, now: i64, allow_future: bool) -> Result<()> {
    let when = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0).map_or_else(
            || "not a date".to_owned(),
            |d| d.format("%Y-%m-%d %H:%M UTC").to_string(),
        )
    };
    let bad = |problem: &str| Error::BadTime {
        timestamp,
        when: when(timestamp),
        problem: problem.to_owned(),
    };
    if timestamp < EARLIEST_TIMESTAMP {
        return Err(bad("before 2000-01-01: not a portage snapshot"));
    }
    if timestamp > LATEST_TIMESTAMP {
        return Err(bad("past 2106-02-07, beyond what a git commit time holds"));
    }
    if !allow_future && timestamp > now.saturating_add(DAY) {
        return Err(Error::Future {
            timestamp,
            when: when(timestamp),
            now: when(now),
        });
    }
    Ok(())
}

/// The upstream commit id in `metadata/timestamp.commit` (`<sha1> <unix> <iso>`),
/// when it has one.
pub fn parse_timestamp_commit(content: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(content).ok()?;
    let id = text.split_whitespace().next()?;
    (id.len() >= 40 && id.bytes().all(|c| c.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// The facts a snapshot commit records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitFacts {
    /// The tag date.
    pub date: SnapshotDate,
    /// The upstream commit of the tree, from `metadata/timestamp.commit`.
    pub upstream: Option<String>,
    /// Files (and symlinks) in the tree.
    pub files: u64,
    /// Bytes of file content in the tree.
    pub bytes: u64,
}

impl CommitFacts {
    /// The commit message: a subject the seed would write, then trailers that
    /// let `snapshot list` answer without walking trees.
    pub fn message(&self) -> String {
        let mut m = format!("Update portage tree to {}\n\n", self.date);
        if let Some(up) = &self.upstream {
            m.push_str(&format!("Upstream-Commit: {up}\n"));
        }
        m.push_str(&format!("Files: {}\nBytes: {}\n", self.files, self.bytes));
        m
    }
}

/// The annotated tag's message.
pub fn tag_message(date: SnapshotDate) -> String {
    format!("Tagging {date}\n")
}

/// The value of trailer `key` in a commit message.
pub fn trailer<'m>(message: &'m str, key: &str) -> Option<&'m str> {
    message.lines().rev().find_map(|l| {
        l.strip_prefix(key)
            .and_then(|r| r.strip_prefix(':'))
            .map(str::trim)
    })
}

/// One snapshot tag as `snapshot list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTag {
    /// The tag name (`YYYY-MM-DD` for imported snapshots).
    pub name: String,
    /// The tagged commit.
    pub commit: Oid,
    /// The commit's tree.
    pub tree: Oid,
    /// The commit time: the snapshot's own timestamp.
    pub time: i64,
    /// The `Files:` trailer, if the commit has one.
    pub files: Option<u64>,
    /// The `Bytes:` trailer, if the commit has one.
    pub bytes: Option<u64>,
}

/// Every tag in `repo` that points (perhaps through a tag object) at a commit,
/// oldest first (by commit time, then name).
pub fn list_tags(repo: &Repository) -> Result<Vec<SnapshotTag>> {
    let names = repo.tag_names(None).map_err(Error::git("listing tags"))?;
    let mut tags = Vec::new();
    for name in names.iter().filter_map(|n| n.ok().flatten()) {
        let what = || format!("reading tag {name}");
        let obj = repo
            .revparse_single(&format!("refs/tags/{name}"))
            .map_err(Error::git(what()))?;
        let Ok(commit) = obj.peel_to_commit() else {
            continue;
        };
        let message = commit.message().unwrap_or("");
        tags.push(SnapshotTag {
            name: name.to_owned(),
            commit: commit.id(),
            tree: commit.tree_id(),
            time: commit.time().seconds(),
            files: trailer(message, "Files").and_then(|v| v.parse().ok()),
            bytes: trailer(message, "Bytes").and_then(|v| v.parse().ok()),
        });
    }
    tags.sort_by(|a, b| (a.time, &a.name).cmp(&(b.time, &b.name)));
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_is_the_day_before_the_stamp() {
        // Fri Aug 21 00:45:00 2026 UTC (DESIGN.md quotes 1787359500 with that date,
        // but that number is Sat Aug 22).
        assert_eq!(
            SnapshotDate::from_timestamp(1_787_273_100).to_string(),
            "2026-08-20"
        );
        assert_eq!(
            SnapshotDate::from_timestamp(86_400).to_string(),
            "1970-01-01"
        );
        assert_eq!(
            SnapshotDate::from_timestamp(951_868_800).to_string(),
            "2000-02-29"
        );
    }

    #[test]
    fn dates_round_trip_through_timestamps() {
        for ts in (0..40_000).map(|d| d * DAY + 12_345) {
            let date = SnapshotDate::from_timestamp(ts);
            assert_eq!(SnapshotDate::from_timestamp(date.to_timestamp()), date);
            assert_eq!(date.to_string().parse::<SnapshotDate>().unwrap(), date);
        }
    }

    #[test]
    fn impossible_dates_are_refused() {
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "2026-00-10",
            "26-08-20",
            "2026-8-20",
            "abcd-ef-gh",
            "2026-08-2x",
        ] {
            assert!(bad.parse::<SnapshotDate>().is_err(), "{bad}");
        }
        assert!("2024-02-29".parse::<SnapshotDate>().is_ok());
    }

    #[test]
    fn timestamp_files_parse() {
        assert_eq!(
            parse_timestamp_x(b"1787273100 Fri Aug 21 00:45:00 2026 UTC\n").unwrap(),
            1_787_273_100
        );
        assert!(parse_timestamp_x(b"Fri Aug 21\n").is_err());
        assert!(parse_timestamp_x(b"").is_err());
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            parse_timestamp_commit(
                format!("{sha} 1787273100 2026-08-21T00:45:00+00:00\n").as_bytes()
            )
            .as_deref(),
            Some(sha)
        );
        assert_eq!(parse_timestamp_commit(b"nonsense"), None);
    }

    #[test]
    fn timestamps_must_be_in_the_window() {
        let now = 1_796_000_000;
        assert!(check_timestamp(1_787_273_100, now, false).is_ok());
        assert!(check_timestamp(now + DAY, now, false).is_ok());
        assert!(check_timestamp(now + DAY + 1, now, false).is_err());
        assert!(check_timestamp(now + 30 * DAY, now, true).is_ok());
        assert!(check_timestamp(EARLIEST_TIMESTAMP - 1, now, true).is_err());
        assert!(check_timestamp(i64::MAX, now, true).is_err());
        assert!(check_timestamp(LATEST_TIMESTAMP, i64::MAX, false).is_ok());
    }

    #[test]
    fn message_trailers_read_back() {
        let facts = CommitFacts {
            date: "2026-08-20".parse().unwrap(),
            upstream: Some("ab".repeat(20)),
            files: 130_836,
            bytes: 512,
        };
        let m = facts.message();
        assert!(m.starts_with("Update portage tree to 2026-08-20\n\n"));
        assert_eq!(trailer(&m, "Files"), Some("130836"));
        assert_eq!(trailer(&m, "Bytes"), Some("512"));
        assert_eq!(
            trailer(&m, "Upstream-Commit"),
            Some("abab".repeat(10).as_str())
        );
    }
}
