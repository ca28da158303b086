//! `InodeTable`: inode numbers for the entries the kernel has seen.
//!
//! Numbers are keyed by (parent inode, name), never by object id: two paths with
//! the same blob are different files (the exec bit and symlink-ness live in the
//! tree entry, not the blob), and every directory has exactly one `..`. The kernel's
//! lookups are counted and an entry is dropped when `forget` brings the count to
//! zero; numbers are never reused, so a stale number can only miss, never alias.

use std::collections::HashMap;
use std::sync::Arc;

use git2::Oid;

use crate::store::EntryKind;

/// An inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory, always present.
    pub const ROOT: Ino = Ino(1);
}

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

/// One known inode.
#[derive(Debug, Clone)]
pub struct Node {
    /// What it stands for.
    pub data: NodeData,
    /// The parent directory (the root is its own parent).
    pub parent: Ino,
    /// Its name in the parent (empty for the root), shared with the name index.
    name: Arc<[u8]>,
    /// Lookups the kernel holds; the node goes when `forget` brings it to 0.
    lookups: u64,
    /// The blob size once read (files and symlinks).
    pub size: Option<u64>,
}

/// The inode table of one mount.
#[derive(Debug)]
pub struct InodeTable {
    nodes: HashMap<Ino, Node>,
    /// Per directory, name → inode. Nested so a lookup borrows the name
    /// instead of allocating a key.
    by_name: HashMap<Ino, HashMap<Arc<[u8]>, Ino>>,
    next: u64,
}

impl InodeTable {
    /// A table holding only the root.
    pub fn new(root: NodeData) -> InodeTable {
        let mut nodes = HashMap::new();
        nodes.insert(
            Ino::ROOT,
            Node {
                data: root,
                parent: Ino::ROOT,
                name: Arc::from(&b""[..]),
                lookups: 1,
                size: None,
            },
        );
        InodeTable {
            nodes,
            by_name: HashMap::new(),
            next: 2,
        }
    }

    /// The node for `ino`.
    pub fn get(&self, ino: Ino) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The number of live inodes (the root included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether only the root is left (never truly empty).
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// The inode of `name` in `parent` standing for `data`, created if needed.
    /// `count` adds one kernel lookup (a `lookup` reply); `readdir` passes false
    /// so listing a directory does not pin its entries. If the name now stands
    /// for different data (a moved tag), it gets a new number.
    pub fn child(&mut self, parent: Ino, name: &[u8], data: NodeData, count: bool) -> Ino {
        if let Some(&ino) = self.by_name.get(&parent).and_then(|d| d.get(name)) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                if node.data == data {
                    node.lookups += u64::from(count);
                    return ino;
                }
            }
        }
        let ino = Ino(self.next);
        self.next += 1;
        let name: Arc<[u8]> = Arc::from(name);
        self.by_name
            .entry(parent)
            .or_default()
            .insert(name.clone(), ino);
        self.nodes.insert(
            ino,
            Node {
                data,
                parent,
                name,
                lookups: u64::from(count),
                size: None,
            },
        );
        ino
    }

    /// The kernel dropped `n` lookups of `ino`; at zero the node goes.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if ino == Ino::ROOT {
            return;
        }
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups > 0 {
            return;
        }
        if let Some(node) = self.nodes.remove(&ino) {
            if let Some(dir) = self.by_name.get_mut(&node.parent) {
                // The name may already point at a newer inode (a moved tag).
                if dir.get(&node.name) == Some(&ino) {
                    dir.remove(&node.name);
                }
                if dir.is_empty() {
                    self.by_name.remove(&node.parent);
                }
            }
        }
    }

    /// Remember a file's size once read.
    pub fn set_size(&mut self, ino: Ino, size: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.size = Some(size);
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
    fn same_blob_under_two_names_gets_two_inodes() {
        let mut t = InodeTable::new(data(0, EntryKind::Tree));
        let a = t.child(Ino::ROOT, b"a", data(1, EntryKind::File), true);
        let b = t.child(Ino::ROOT, b"b", data(1, EntryKind::File), true);
        assert_ne!(a, b);
        assert_eq!(t.child(Ino::ROOT, b"a", data(1, EntryKind::File), true), a);
        assert_eq!(t.get(a).map(|n| n.parent), Some(Ino::ROOT));
    }

    #[test]
    fn forget_drops_at_zero_and_numbers_are_never_reused() {
        let mut t = InodeTable::new(data(0, EntryKind::Tree));
        let a = t.child(Ino::ROOT, b"a", data(1, EntryKind::File), true);
        t.child(Ino::ROOT, b"a", data(1, EntryKind::File), true);
        t.forget(a, 1);
        assert!(t.get(a).is_some(), "one lookup still held");
        t.forget(a, 1);
        assert!(t.get(a).is_none());
        let again = t.child(Ino::ROOT, b"a", data(1, EntryKind::File), true);
        assert!(again.0 > a.0, "a forgotten number is not reused");
        t.forget(Ino::ROOT, 100);
        assert!(t.get(Ino::ROOT).is_some(), "the root is never forgotten");
        t.forget(Ino(9999), 1);
    }

    #[test]
    fn readdir_entries_are_not_counted() {
        let mut t = InodeTable::new(data(0, EntryKind::Tree));
        let a = t.child(Ino::ROOT, b"a", data(1, EntryKind::File), false);
        assert_eq!(t.child(Ino::ROOT, b"a", data(1, EntryKind::File), true), a);
        t.forget(a, 1);
        assert!(t.get(a).is_none());
    }

    #[test]
    fn a_moved_name_gets_a_new_inode_and_the_old_forget_keeps_it() {
        let mut t = InodeTable::new(data(0, EntryKind::Tree));
        let old = t.child(Ino::ROOT, b"tag", data(1, EntryKind::Tree), true);
        let new = t.child(Ino::ROOT, b"tag", data(2, EntryKind::Tree), true);
        assert_ne!(old, new);
        t.forget(old, 1);
        assert_eq!(
            t.child(Ino::ROOT, b"tag", data(2, EntryKind::Tree), true),
            new
        );
    }
}
