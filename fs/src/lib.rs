//! portroot-fs: a read-only FUSE filesystem that serves git trees straight from
//! the object database.
//!
//! A tag of the snapshot repository (or any ref of any repository, such as a
//! versioned overlay) becomes a directory tree without a clone or a checkout. The
//! runner binds it into every build chroot; people browse history through the
//! all-tags view. It never depends on the runner crate or on clap.
#![warn(missing_docs)]
