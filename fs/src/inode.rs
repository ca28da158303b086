//! `InodeTable`: inode numbers and the compact state of the inodes the kernel holds.
//!
//! Numbers are keyed by (parent inode, name), never by object id alone: two paths
//! with the same blob are different files (the exec bit and symlink-ness live in
//! the tree entry, not the blob), and every directory has exactly one `..`.
//!
//! A number is *derived*, not allocated: it is a hash of (parent inode, name,
//! object id), so the same path gets the same number for the life of the mount
//! even after the kernel forgot it and looks it up again, and `readdir` can
//! answer `d_ino` without storing anything. The object id is part of the key so
//! that a tag moved to another commit in the all-tags view gets a new number.
//! Numbers stay below 2^56 so a stacked overlayfs keeps its high bits for
//! `xino`. A hash collision between two live inodes (about one in 10^5 for a
//! million held inodes) is resolved by probing the next number; a slot whose
//! record has the same parent, object and kind stands for identical content,
//! so sharing it is harmless.
//!
//! Only inodes the kernel holds have a record: `lookup` and `readdirplus` add
//! one kernel reference, `forget` drops them, and at zero the record goes. A
//! record is 48 bytes (parent, size, object id, lookup count, time index, kind)
//! in one open-addressing table keyed by the number itself, with no per-name
//! allocation: at most `(8 + 48 + 1) * 8/7 * 2 = 131` bytes per held inode right
//! after the table doubled, 65-75 bytes typically.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use git2::Oid;

use crate::store::{EntryKind, TreeEntry};

/// An inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory, always present.
    pub const ROOT: Ino = Ino(1);
}

/// Derived numbers are masked to this many bits.
const INO_BITS: u32 = 56;
const INO_MASK: u64 = (1 << INO_BITS) - 1;

/// What an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeKind {
    /// An entry of a git tree (for a root, `Tree`).
    Entry(EntryKind),
    /// The root of the all-tags view: its children are the tags.
    TagsRoot,
    /// `latest` in the all-tags view: a symlink to the newest tag.
    Latest,
}

impl NodeKind {
    /// Whether it shows as a directory.
    pub fn is_dir(self) -> bool {
        match self {
            NodeKind::Entry(k) => k.is_dir(),
            NodeKind::TagsRoot => true,
            NodeKind::Latest => false,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            NodeKind::Entry(EntryKind::Tree) => 0,
            NodeKind::Entry(EntryKind::File) => 1,
            NodeKind::Entry(EntryKind::Exec) => 2,
            NodeKind::Entry(EntryKind::Symlink) => 3,
            NodeKind::Entry(EntryKind::Submodule) => 4,
            NodeKind::TagsRoot => 5,
            NodeKind::Latest => 6,
        }
    }

    fn from_u8(v: u8) -> NodeKind {
        match v {
            0 => NodeKind::Entry(EntryKind::Tree),
            1 => NodeKind::Entry(EntryKind::File),
            2 => NodeKind::Entry(EntryKind::Exec),
            3 => NodeKind::Entry(EntryKind::Symlink),
            4 => NodeKind::Entry(EntryKind::Submodule),
            5 => NodeKind::TagsRoot,
            _ => NodeKind::Latest,
        }
    }
}

/// What a node stands for; equal data under the same key means the same inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeData {
    /// The object (zero for `TagsRoot` and `Latest`).
    pub oid: Oid,
    /// What it is.
    pub kind: NodeKind,
    /// The commit time shown as atime, mtime and ctime.
    pub time: i64,
}

/// The node of tree entry `e` in a tree of commit `time`.
pub fn child_data(e: &TreeEntry, time: i64) -> NodeData {
    NodeData {
        oid: e.oid,
        kind: NodeKind::Entry(e.kind),
        time,
    }
}

/// One known inode, as the table hands it out (a copy of its record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    /// What it stands for.
    pub data: NodeData,
    /// The parent directory (the root is its own parent).
    pub parent: Ino,
    /// Lookups the kernel holds.
    pub lookups: u32,
    /// The blob size once read (files and symlinks).
    pub size: Option<u64>,
}

/// `size` of a record whose size is not known yet.
const NO_SIZE: u64 = u64::MAX;

/// The stored state of one held inode: 48 bytes.
#[derive(Debug, Clone, Copy)]
struct Rec {
    parent: u64,
    size: u64,
    oid: [u8; 20],
    /// Saturates: a record at `u32::MAX` is never dropped (a harmless leak
    /// after four billion lookups without a forget).
    lookups: u32,
    /// Index into `InodeTable::times`.
    time: u32,
    kind: u8,
}

impl Rec {
    fn same(&self, parent: Ino, data: &NodeData, time: u32) -> bool {
        self.parent == parent.0
            && self.oid[..] == *data.oid.as_bytes()
            && self.kind == data.kind.to_u8()
            && self.time == time
    }
}

/// Hashes a key that already is a well-mixed number (a derived inode) by
/// passing it through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed; this is the fallback for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        // Spread the low bits (hashbrown uses the top 7 bits as a tag and the
        // low bits as the bucket) with one multiply; root and probed numbers
        // are small or sequential, derived ones are already random.
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// The inode table of one mount.
#[derive(Debug)]
pub struct InodeTable {
    nodes: HashMap<u64, Rec, BuildHasherDefault<PassThrough>>,
    /// Commit times, shared by index (one per tag at most).
    times: Vec<i64>,
}

/// The derived number of (parent, name, oid), before collision probing.
fn derive(parent: Ino, name: &[u8], oid: &Oid) -> u64 {
    // `DefaultHasher::new()` has fixed keys: the same number for the same path
    // for the life of the process (and in every run of this build).
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.0.hash(&mut h);
    name.hash(&mut h);
    oid.as_bytes().hash(&mut h);
    valid(h.finish())
}

/// The 20 bytes of a SHA-1 object id (the only kind this libgit2 build opens).
fn oid_bytes(oid: &Oid) -> [u8; 20] {
    oid.as_bytes()
        .try_into()
        .expect("invariant: SHA-1 object ids are 20 bytes")
}

/// Masked to `INO_BITS`, never 0 (invalid) nor 1 (the root).
fn valid(n: u64) -> u64 {
    match n & INO_MASK {
        0 | 1 => 2,
        n => n,
    }
}

impl InodeTable {
    /// A table holding only the root.
    pub fn new(root: NodeData) -> InodeTable {
        let mut t = InodeTable {
            nodes: HashMap::default(),
            times: Vec::new(),
        };
        let time = t.time_index(root.time);
        t.nodes.insert(
            Ino::ROOT.0,
            Rec {
                parent: Ino::ROOT.0,
                size: NO_SIZE,
                oid: oid_bytes(&root.oid),
                lookups: 1,
                time,
                kind: root.kind.to_u8(),
            },
        );
        t
    }

    fn time_index(&mut self, time: i64) -> u32 {
        // Few distinct times (one per tag), newest usually last.
        if let Some(i) = self.times.iter().rposition(|&t| t == time) {
            return i as u32;
        }
        self.times.push(time);
        (self.times.len() - 1) as u32
    }

    fn find_time(&self, time: i64) -> Option<u32> {
        self.times
            .iter()
            .rposition(|&t| t == time)
            .map(|i| i as u32)
    }

    /// The node for `ino`.
    pub fn get(&self, ino: Ino) -> Option<Node> {
        let r = self.nodes.get(&ino.0)?;
        Some(Node {
            data: NodeData {
                oid: Oid::from_bytes(&r.oid).expect("invariant: 20-byte object id"),
                kind: NodeKind::from_u8(r.kind),
                time: self.times[r.time as usize],
            },
            parent: Ino(r.parent),
            lookups: r.lookups,
            size: (r.size != NO_SIZE).then_some(r.size),
        })
    }

    /// The number of live inodes (the root included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether only the root is left (never truly empty).
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// Bytes the table has allocated (an estimate from its capacity).
    pub fn allocated_bytes(&self) -> usize {
        // hashbrown: a power-of-two bucket count of (key, value) plus one
        // control byte per bucket; capacity() is 7/8 of the buckets.
        let buckets = (self.nodes.capacity() * 8).div_ceil(7).next_power_of_two();
        buckets * (std::mem::size_of::<(u64, Rec)>() + 1)
    }

    /// The number `name` in `parent` standing for `data` has or would get now,
    /// without adding a record (`readdir`'s `d_ino`).
    pub fn peek(&self, parent: Ino, name: &[u8], data: &NodeData) -> Ino {
        let time = self.find_time(data.time);
        let mut n = derive(parent, name, &data.oid);
        loop {
            match self.nodes.get(&n) {
                Some(r) if time.is_none_or(|t| !r.same(parent, data, t)) => n = valid(n + 1),
                _ => return Ino(n),
            }
        }
    }

    /// The inode of `name` in `parent` standing for `data`, with one more kernel
    /// lookup (a `lookup` or `readdirplus` reply). If the name now stands for
    /// different data (a moved tag), it gets a different number.
    pub fn child(&mut self, parent: Ino, name: &[u8], data: &NodeData) -> Ino {
        let time = self.time_index(data.time);
        let mut n = derive(parent, name, &data.oid);
        loop {
            match self.nodes.get_mut(&n) {
                Some(r) if r.same(parent, data, time) => {
                    r.lookups = r.lookups.saturating_add(1);
                    return Ino(n);
                }
                Some(_) => n = valid(n + 1),
                None => break,
            }
        }
        self.nodes.insert(
            n,
            Rec {
                parent: parent.0,
                size: NO_SIZE,
                oid: oid_bytes(&data.oid),
                lookups: 1,
                time,
                kind: data.kind.to_u8(),
            },
        );
        Ino(n)
    }

    /// The kernel dropped `n` lookups of `ino`; at zero the record goes.
    /// Returns true when the table shrank (a good moment to give freed
    /// memory back to the system).
    pub fn forget(&mut self, ino: Ino, n: u64) -> bool {
        if ino == Ino::ROOT {
            return false;
        }
        let Some(r) = self.nodes.get_mut(&ino.0) else {
            return false;
        };
        if r.lookups == u32::MAX {
            return false;
        }
        r.lookups = r
            .lookups
            .saturating_sub(u32::try_from(n).unwrap_or(u32::MAX));
        if r.lookups > 0 {
            return false;
        }
        self.nodes.remove(&ino.0);
        // Shrink once the kernel has let most of it go: one shrink per
        // halving at most, so a mass forget costs O(n) in all.
        let cap = self.nodes.capacity();
        if cap > 4096 && self.nodes.len() < cap / 8 {
            self.nodes.shrink_to(self.nodes.len() * 2);
            return true;
        }
        false
    }

    /// Remember a file's size once read.
    pub fn set_size(&mut self, ino: Ino, size: u64) {
        if let Some(r) = self.nodes.get_mut(&ino.0) {
            r.size = size.min(NO_SIZE - 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: u8, kind: EntryKind) -> NodeData {
        NodeData {
            oid: Oid::from_bytes(&[n; 20]).expect("20 bytes"),
            kind: NodeKind::Entry(kind),
            time: 0,
        }
    }

    #[test]
    fn a_record_is_48_bytes() {
        assert_eq!(std::mem::size_of::<Rec>(), 48);
    }

    #[test]
    fn same_blob_under_two_names_gets_two_inodes() {
        let mut t = InodeTable::new(data(0, EntryKind::Tree));
        let a = t.child(Ino::ROOT, b"a", &data(1, EntryKind::File));
        let b = t.child(Ino::ROOT, b"b", &data(1, EntryKind::File));
        assert_ne!(a, b);
        assert_eq!(t.child(Ino::ROOT, b"a", &data(1, EntryKind::File)), a);
        assert_eq!(t.get(a).map(|n| n.parent), Some(Ino::ROOT));
        assert_eq!(t.get(a).map(|n| n.lookups), Some(2));
    }

    #[test]
    fn forget_drops_at_zero_and_the_number_comes_back_the_same() {
        let mut t = InodeTable::new(data(0, EntryKind::Tree));
        let a = t.child(Ino::ROOT, b"a", &data(1, EntryKind::File));
        t.set_size(a, 42);
        t.child(Ino::ROOT, b"a", &data(1, EntryKind::File));
        t.forget(a, 1);
        assert_eq!(t.get(a).and_then(|n| n.size), Some(42), "one lookup held");
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        assert_eq!(t.len(), 1);
        let again = t.child(Ino::ROOT, b"a", &data(1, EntryKind::File));
        assert_eq!(again, a, "the number is derived from the path");
        assert_eq!(t.get(again).and_then(|n| n.size), None, "a fresh record");
        t.forget(Ino::ROOT, 100);
        assert!(t.get(Ino::ROOT).is_some(), "the root is never forgotten");
        t.forget(Ino(9999), 1);
    }

    #[test]
    fn peek_matches_lookup_and_adds_nothing() {
        let mut t = InodeTable::new(data(0, EntryKind::Tree));
        let d = data(1, EntryKind::File);
        let p = t.peek(Ino::ROOT, b"a", &d);
        assert_eq!(t.len(), 1, "peek stores nothing");
        assert_eq!(t.child(Ino::ROOT, b"a", &d), p);
        assert_eq!(t.peek(Ino::ROOT, b"a", &d), p);
        assert!(p.0 > 1 && p.0 < 1 << INO_BITS);
    }

    #[test]
    fn a_collision_probes_to_the_next_free_number() {
        let mut t = InodeTable::new(data(0, EntryKind::Tree));
        let a = data(1, EntryKind::File);
        let b = data(2, EntryKind::File);
        let na = t.child(Ino::ROOT, b"a", &a);
        // Plant a different record where b would go, as a collision would.
        let nb = derive(Ino::ROOT, b"b", &b.oid);
        let planted = t.nodes[&na.0];
        t.nodes.insert(nb, planted);
        t.nodes.get_mut(&nb).expect("planted").parent = 77;
        let got = t.child(Ino::ROOT, b"b", &b);
        assert_eq!(got.0, valid(nb + 1));
        assert_eq!(t.peek(Ino::ROOT, b"b", &b), got);
        assert_eq!(t.get(got).map(|n| n.data), Some(b));
        assert_eq!(
            t.child(Ino::ROOT, b"b", &b),
            got,
            "found again past the collision"
        );
    }

    #[test]
    fn a_moved_name_gets_a_new_inode_and_the_old_forget_keeps_it() {
        let mut t = InodeTable::new(data(0, EntryKind::Tree));
        let old = t.child(Ino::ROOT, b"tag", &data(1, EntryKind::Tree));
        let new = t.child(Ino::ROOT, b"tag", &data(2, EntryKind::Tree));
        assert_ne!(old, new);
        t.forget(old, 1);
        assert_eq!(t.child(Ino::ROOT, b"tag", &data(2, EntryKind::Tree)), new);
        assert!(t.get(new).is_some());
    }

    #[test]
    fn times_are_kept_per_record() {
        let mut t = InodeTable::new(data(0, EntryKind::Tree));
        let mut d = data(1, EntryKind::Tree);
        d.time = 1787270400;
        let one = t.child(Ino::ROOT, b"one", &d);
        d.time = -5;
        let two = t.child(Ino::ROOT, b"two", &d);
        assert_eq!(t.get(one).map(|n| n.data.time), Some(1787270400));
        assert_eq!(t.get(two).map(|n| n.data.time), Some(-5));
        assert_eq!(t.get(Ino::ROOT).map(|n| n.data.time), Some(0));
    }

    #[test]
    fn the_table_shrinks_when_the_kernel_lets_go() {
        let mut t = InodeTable::new(data(0, EntryKind::Tree));
        let d = data(1, EntryKind::File);
        let inos: Vec<Ino> = (0..20_000u32)
            .map(|i| t.child(Ino::ROOT, &i.to_le_bytes(), &d))
            .collect();
        assert_eq!(t.len(), 20_001);
        let full = t.allocated_bytes();
        assert!(full / t.len() <= 131, "{} bytes per inode", full / t.len());
        for ino in &inos {
            t.forget(*ino, 1);
        }
        assert_eq!(t.len(), 1);
        assert!(t.allocated_bytes() < full / 8, "{}", t.allocated_bytes());
    }
}
