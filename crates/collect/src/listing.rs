//! Folder listings remembered between scans.
//!
//! A warm scan stats every log file (an append changes a file, not its folder), but it need
//! not read every folder: a folder whose identity and times are what they were when it was
//! last listed has the same entries, since adding, removing or renaming an entry updates the
//! folder's mtime and ctime. Reading a folder (open, `getdents`, close) cost about as much as
//! looking up all of its files on ext4, where every listing hashes and sorts its entries.
//!
//! A listing is remembered only once its folder has settled: when both its times are older
//! than a margin before the walk began. A change made later then gives the folder a newer
//! time, even with a coarse clock or a file system that keeps whole seconds; a folder that
//! changed within the margin is listed again by the next walk.

use crate::{FileMeta, KeyBuild};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokenledger_core::Source;

/// How long a folder must have stayed unchanged before its listing is remembered.
pub const SETTLE_NS: i64 = 5_000_000_000;

/// What kind of entry a listing holds (other kinds, such as FIFOs, are left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir = 1,
    File = 2,
    Link = 3,
}

/// A folder's identity and times, as `fstat` gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirStamp {
    pub dev: u64,
    pub inode: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

/// One folder's listing, as the ledger stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirListing {
    /// The folder's path as the walk reached it.
    pub path: Vec<u8>,
    pub stamp: DirStamp,
    /// The entries, encoded by [`Entries`].
    pub entries: Vec<u8>,
}

/// What a walk learnt that the store should remember or forget.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ListingChanges {
    /// Listings made by this walk of settled folders (new, or changed since stored).
    pub put: Vec<DirListing>,
    /// Folders that a changed parent no longer holds: their listings, and those of every
    /// folder below them, are to be forgotten.
    pub gone: Vec<Vec<u8>>,
}

impl ListingChanges {
    pub fn is_empty(&self) -> bool {
        self.put.is_empty() && self.gone.is_empty()
    }
}

/// Stored listings as loaded, back to back in one buffer (a warm scan loads thousands: one
/// allocation instead of two each).
#[derive(Default)]
pub struct StoredListings {
    bytes: Vec<u8>,
    items: Vec<Stored>,
}

/// Where one stored listing's path and entries are in [`StoredListings::bytes`].
struct Stored {
    start: u32,
    path_len: u32,
    entries_len: u32,
    stamp: DirStamp,
}

impl StoredListings {
    /// Adds a listing (dropped, so that its folder is read again, past 4 GiB in all).
    pub fn push(&mut self, path: &[u8], stamp: DirStamp, entries: &[u8]) {
        let (Ok(start), Ok(path_len), Ok(entries_len)) = (
            u32::try_from(self.bytes.len()),
            u32::try_from(path.len()),
            u32::try_from(entries.len()),
        ) else {
            return;
        };
        if start
            .checked_add(path_len)
            .and_then(|n| n.checked_add(entries_len))
            .is_none()
        {
            return;
        }
        self.bytes.extend_from_slice(path);
        self.bytes.extend_from_slice(entries);
        self.items.push(Stored {
            start,
            path_len,
            entries_len,
            stamp,
        });
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    fn path(&self, s: &Stored) -> &[u8] {
        let start = s.start as usize;
        &self.bytes[start..start + s.path_len as usize]
    }

    fn entries(&self, s: &Stored) -> &[u8] {
        let start = s.start as usize + s.path_len as usize;
        &self.bytes[start..start + s.entries_len as usize]
    }
}

impl From<Vec<DirListing>> for StoredListings {
    fn from(listings: Vec<DirListing>) -> StoredListings {
        let mut stored = StoredListings::default();
        for l in &listings {
            stored.push(&l.path, l.stamp, &l.entries);
        }
        stored
    }
}

/// Tells a walk that a file needs nothing (the ledger's cursor for it matches its metadata):
/// the walk then keeps no record of it. Given the file's source and path.
pub type Unchanged<'a> = dyn Fn(Source, &[u8], &FileMeta) -> bool + Sync + 'a;

/// The listings a walk may reuse, what it learns on the way, and which files it can drop.
pub struct DirCache<'a> {
    stored: StoredListings,
    /// Index into `stored` by a hash of the path (the path is compared on a hit).
    by_path: HashMap<u64, u32, KeyBuild>,
    /// Folders whose times are both before this (ns since the epoch) have settled.
    settled_before_ns: i64,
    changes: Mutex<ListingChanges>,
    unchanged: Option<&'a Unchanged<'a>>,
    counts: Counts,
}

/// What the walking threads count, on cache lines of their own: sharing one with the fields
/// every file's check reads, the counters' increments made each thread wait for the line the
/// other had just taken (about half of the walk's own time in a run with nothing new).
#[derive(Default)]
#[repr(align(128))]
struct Counts {
    /// Folders read, and folders whose stored listing was used.
    read: AtomicU64,
    reused: AtomicU64,
    /// Files dropped as unchanged.
    dropped: AtomicU64,
}

impl<'a> DirCache<'a> {
    /// No listings, and nothing recorded (no folder has settled): every folder is read.
    pub fn none() -> DirCache<'static> {
        DirCache::new(StoredListings::default(), i64::MIN)
    }

    /// Stored listings; folders last changed before `settled_before_ns` are remembered.
    pub fn new(stored: impl Into<StoredListings>, settled_before_ns: i64) -> DirCache<'a> {
        let stored = stored.into();
        let mut by_path = HashMap::with_capacity_and_hasher(stored.len(), KeyBuild::default());
        for (i, s) in stored.items.iter().enumerate() {
            // A damaged listing is not used: its folder is read again.
            if Entries::valid(stored.entries(s)) {
                by_path.insert(path_hash(stored.path(s)), i as u32);
            }
        }
        DirCache {
            stored,
            by_path,
            settled_before_ns,
            changes: Mutex::default(),
            unchanged: None,
            counts: Counts::default(),
        }
    }

    /// Stored listings; folders last changed more than `margin_ns` ago are remembered
    /// ([`SETTLE_NS`] outside tests).
    pub fn settled_now(listings: impl Into<StoredListings>, margin_ns: i64) -> DirCache<'a> {
        DirCache::new(listings, now_ns().saturating_sub(margin_ns))
    }

    /// What the walks learnt, for the store.
    pub fn into_changes(self) -> ListingChanges {
        self.changes
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The stored listing of `path`: its stamp and entries.
    fn stored(&self, path: &[u8]) -> Option<(&DirStamp, &[u8])> {
        let i = *self.by_path.get(&path_hash(path))?;
        let s = &self.stored.items[i as usize];
        (self.stored.path(s) == path).then(|| (&s.stamp, self.stored.entries(s)))
    }

    /// The remembered entries of the folder at `path`, if it has not changed since.
    pub(crate) fn entries(&self, path: &[u8], stamp: &DirStamp) -> Option<&[u8]> {
        let hit = self
            .stored(path)
            .filter(|(s, _)| *s == stamp)
            .map(|(_, entries)| entries);
        if hit.is_some() {
            self.counts.reused.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// Lets walks drop files that `unchanged` says need nothing.
    pub fn with_unchanged(mut self, unchanged: &'a Unchanged<'a>) -> DirCache<'a> {
        self.unchanged = Some(unchanged);
        self
    }

    /// Whether the walk may drop this file (`path`: `dir/name`, built in `scratch`). Not
    /// counted here: see [`DirCache::count_dropped`].
    pub(crate) fn drops(
        &self,
        source: Source,
        scratch: &mut Vec<u8>,
        dir: &[u8],
        name: &[u8],
        stat: &FileMeta,
    ) -> bool {
        let Some(unchanged) = self.unchanged else {
            return false;
        };
        scratch.clear();
        push_join(scratch, dir, name);
        unchanged(source, scratch, stat)
    }

    /// `n` files of one folder were dropped (counted once a folder, not once a file).
    pub(crate) fn count_dropped(&self, n: u64) {
        if n > 0 {
            self.counts.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// How many folders the walks read, how many they did not need to, and how many files
    /// they dropped as unchanged.
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.counts.read.load(Ordering::Relaxed),
            self.counts.reused.load(Ordering::Relaxed),
            self.counts.dropped.load(Ordering::Relaxed),
        )
    }

    /// A folder was read: its listing is remembered when it has settled (and its stamp is
    /// known, and every name could be encoded); subfolders that its stored listing had and
    /// this one lacks are forgotten.
    pub(crate) fn listed(&self, path: &[u8], stamp: Option<DirStamp>, buf: EntriesBuf) {
        self.counts.read.fetch_add(1, Ordering::Relaxed);
        let Some(stamp) = stamp.filter(|_| !buf.overflow) else {
            return;
        };
        let entries = buf.bytes;
        let settled =
            stamp.mtime_ns < self.settled_before_ns && stamp.ctime_ns < self.settled_before_ns;
        let mut gone = Vec::new();
        if let Some((_, old)) = self.stored(path) {
            for (kind, name) in Entries(old) {
                if kind == Kind::Dir && !Entries(&entries).any(|(k, n)| k == kind && n == name) {
                    gone.push(join(path, name));
                }
            }
        }
        if !settled && gone.is_empty() {
            return;
        }
        let mut changes = self
            .changes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        changes.gone.append(&mut gone);
        if settled {
            changes.put.push(DirListing {
                path: path.to_vec(),
                stamp,
                entries,
            });
        }
    }
}

/// `dir/name` as bytes.
pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    push_join(&mut p, dir, name);
    p
}

/// Appends `dir/name` to `out`.
fn push_join(out: &mut Vec<u8>, dir: &[u8], name: &[u8]) {
    out.extend_from_slice(dir);
    if !dir.ends_with(b"/") {
        out.push(b'/');
    }
    out.extend_from_slice(name);
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn path_hash(path: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(path)
}

/// Encodes a listing: per entry its kind, the length of its name, the name.
#[derive(Default)]
pub(crate) struct EntriesBuf {
    pub bytes: Vec<u8>,
    /// A name too long to encode was seen: the listing cannot be remembered.
    pub overflow: bool,
}

impl EntriesBuf {
    pub fn push(&mut self, kind: Kind, name: &[u8]) {
        match u8::try_from(name.len()) {
            Ok(len) if len > 0 => {
                self.bytes.push(kind as u8);
                self.bytes.push(len);
                self.bytes.extend_from_slice(name);
            }
            _ => self.overflow = true,
        }
    }
}

/// The entries of an encoded listing; stops at the first malformed one (stored listings that
/// do not decode whole are dropped when loaded: see [`Entries::valid`]).
pub(crate) struct Entries<'a>(pub &'a [u8]);

impl Entries<'_> {
    /// Whether every entry decodes: a listing that does not is not used.
    pub fn valid(bytes: &[u8]) -> bool {
        let mut rest = bytes;
        while !rest.is_empty() {
            match rest {
                [k, len, tail @ ..] if (1..=3).contains(k) && *len > 0 => {
                    let Some(tail) = tail.get(usize::from(*len)..) else {
                        return false;
                    };
                    rest = tail;
                }
                _ => return false,
            }
        }
        true
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = (Kind, &'a [u8]);

    fn next(&mut self) -> Option<(Kind, &'a [u8])> {
        let [k, len, tail @ ..] = self.0 else {
            return None;
        };
        let kind = match k {
            1 => Kind::Dir,
            2 => Kind::File,
            3 => Kind::Link,
            _ => return None,
        };
        let len = usize::from(*len);
        let name = tail.get(..len)?;
        self.0 = &tail[len..];
        Some((kind, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stamp(t: i64) -> DirStamp {
        DirStamp {
            dev: 1,
            inode: 2,
            mtime_ns: t,
            ctime_ns: t,
        }
    }

    fn buf(entries: &[(Kind, &[u8])]) -> EntriesBuf {
        let mut b = EntriesBuf::default();
        for (k, n) in entries {
            b.push(*k, n);
        }
        b
    }

    fn encode(entries: &[(Kind, &[u8])]) -> Vec<u8> {
        let b = buf(entries);
        assert!(!b.overflow);
        b.bytes
    }

    proptest! {
        #[test]
        fn entries_round_trip(names in proptest::collection::vec(
            (1u8..=3, proptest::collection::vec(any::<u8>(), 1..=255)), 0..20)) {
            let mut b = EntriesBuf::default();
            for (k, n) in &names {
                let kind = match k { 1 => Kind::Dir, 2 => Kind::File, _ => Kind::Link };
                b.push(kind, n);
            }
            prop_assert!(Entries::valid(&b.bytes));
            let back: Vec<(u8, Vec<u8>)> =
                Entries(&b.bytes).map(|(k, n)| (k as u8, n.to_vec())).collect();
            prop_assert_eq!(back, names);
        }

        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let valid = Entries::valid(&bytes);
            let mut consumed = 0;
            for (_, n) in Entries(&bytes) {
                consumed += 2 + n.len();
            }
            // A valid listing decodes whole; an invalid one stops early.
            prop_assert_eq!(valid, consumed == bytes.len());
        }
    }

    #[test]
    fn a_long_name_cannot_be_encoded() {
        let mut b = EntriesBuf::default();
        b.push(Kind::File, &[b'a'; 256]);
        assert!(b.overflow);
        let mut b = EntriesBuf::default();
        b.push(Kind::File, b"");
        assert!(b.overflow);
    }

    #[test]
    fn a_stored_listing_is_used_only_while_its_folder_is_unchanged() {
        let l = DirListing {
            path: b"/a/b".to_vec(),
            stamp: stamp(10),
            entries: encode(&[(Kind::File, b"x.jsonl")]),
        };
        let cache = DirCache::new(vec![l.clone()], 100);
        assert_eq!(
            cache.entries(b"/a/b", &stamp(10)),
            Some(l.entries.as_slice())
        );
        assert_eq!(cache.entries(b"/a/b", &stamp(11)), None);
        let moved = DirStamp {
            inode: 3,
            ..stamp(10)
        };
        assert_eq!(cache.entries(b"/a/b", &moved), None);
        assert_eq!(cache.entries(b"/a/c", &stamp(10)), None);
        assert_eq!(cache.counts(), (0, 1, 0));
        assert_eq!(DirCache::none().entries(b"/a/b", &stamp(10)), None);
    }

    #[test]
    fn a_damaged_stored_listing_is_not_used() {
        let mut entries = encode(&[(Kind::File, b"x.jsonl")]);
        entries.pop();
        let cache = DirCache::new(
            vec![DirListing {
                path: b"/a".to_vec(),
                stamp: stamp(10),
                entries,
            }],
            100,
        );
        assert_eq!(cache.entries(b"/a", &stamp(10)), None);
    }

    #[test]
    fn only_settled_folders_are_remembered_and_lost_subfolders_are_forgotten() {
        let old = DirListing {
            path: b"/r".to_vec(),
            stamp: stamp(10),
            entries: encode(&[
                (Kind::Dir, b"keep"),
                (Kind::Dir, b"drop"),
                (Kind::File, b"f"),
            ]),
        };
        let cache = DirCache::new(vec![old], 100);
        // Changed at 99: settled (before 100). `drop` went, `f` became a folder.
        let now = [(Kind::Dir, &b"keep"[..]), (Kind::Dir, b"f")];
        cache.listed(b"/r", Some(stamp(99)), buf(&now));
        // Changed at 100: not settled, not remembered.
        cache.listed(b"/new", Some(stamp(100)), buf(&[(Kind::File, b"g")]));
        // No stamp, or a name that cannot be encoded: not remembered.
        cache.listed(b"/nostamp", None, buf(&[(Kind::File, b"g")]));
        let mut long = buf(&[(Kind::File, b"g")]);
        long.push(Kind::File, &[b'x'; 300]);
        cache.listed(b"/long", Some(stamp(1)), long);
        assert_eq!(cache.counts(), (4, 0, 0));
        let changes = cache.into_changes();
        assert_eq!(changes.gone, vec![b"/r/drop".to_vec()]);
        assert_eq!(changes.put.len(), 1);
        assert_eq!(changes.put[0].path, b"/r");
        assert_eq!(changes.put[0].entries, encode(&now));

        // A folder that has not settled still reports the subfolders it lost.
        let cache = DirCache::new(
            vec![DirListing {
                path: b"/r/".to_vec(),
                stamp: stamp(10),
                entries: encode(&[(Kind::Dir, b"d")]),
            }],
            5,
        );
        cache.listed(b"/r/", Some(stamp(50)), EntriesBuf::default());
        let changes = cache.into_changes();
        assert!(changes.put.is_empty());
        assert_eq!(changes.gone, vec![b"/r/d".to_vec()]);

        // A cache that is off records nothing.
        let off = DirCache::none();
        off.listed(b"/r", Some(stamp(1)), EntriesBuf::default());
        assert_eq!(off.entries(b"/r", &stamp(1)), None);
        assert!(off.into_changes().is_empty());
    }
}
