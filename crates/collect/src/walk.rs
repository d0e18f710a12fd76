//! Walking agent folders in parallel, taking each file's metadata while its folder is open
//! (looked up by name in the open folder: no second walk of the whole path per file).
//!
//! Each folder's finds go to one shared list of per-folder lists, joined once at the end: a
//! warm scan is mostly this walk, and copying every find up the tree level by level cost more
//! than the look-ups saved.

use crate::listing::DirCache;
use crate::FileMeta;
#[cfg(not(target_os = "linux"))]
use rayon::prelude::*;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokenledger_core::Source;

/// What to do with entries that are not directories.
pub(crate) struct Walk<'a> {
    /// Directory levels below the starting one that are entered.
    pub max_depth: usize,
    /// Whether a file name is wanted.
    pub accept: &'a (dyn Fn(&OsStr) -> bool + Sync),
    /// Whether a symlink is kept only when it leads to a regular file (else kept as it is, and
    /// reported unreadable if it leads nowhere). Symlinked directories are never entered, so a
    /// link cycle cannot trap the walk.
    pub links_to_files_only: bool,
    /// Listings of unchanged folders to reuse, where new ones are recorded, and which files
    /// need nothing (Linux).
    pub listings: &'a DirCache<'a>,
    /// Whose files these are (for `listings`' unchanged files).
    pub source: Source,
}

/// Where a walk puts what it finds: `make` turns a path and its metadata (when the entry is a
/// regular file) into `T`; each folder's list is added whole.
struct Sink<'m, T> {
    make: &'m (dyn Fn(PathBuf, Option<FileMeta>) -> T + Sync),
    found: Mutex<Vec<Vec<T>>>,
}

impl<T> Sink<'_, T> {
    fn add(&self, files: Vec<T>) {
        if !files.is_empty() {
            self.found
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(files);
        }
    }
}

impl Walk<'_> {
    /// Wanted files under `dir`, each with its metadata when the entry is a regular file.
    #[cfg(test)]
    pub fn run(&self, dir: &Path) -> Vec<(PathBuf, Option<FileMeta>)> {
        self.run_with(dir, &|path, meta| (path, meta))
    }

    /// Wanted files under `dir`, each made into a `T` by `make` (in no particular order).
    pub fn run_with<T: Send>(
        &self,
        dir: &Path,
        make: &(dyn Fn(PathBuf, Option<FileMeta>) -> T + Sync),
    ) -> Vec<T> {
        let sink = Sink {
            make,
            found: Mutex::new(Vec::new()),
        };
        #[cfg(target_os = "linux")]
        linux::run(self, dir, &sink);
        #[cfg(not(target_os = "linux"))]
        self.at(dir, 0, &sink);
        let lists = sink
            .found
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::with_capacity(lists.iter().map(Vec::len).sum());
        for list in lists {
            out.extend(list);
        }
        out
    }

    #[cfg(not(target_os = "linux"))]
    fn at<T: Send>(&self, dir: &Path, depth: usize, sink: &Sink<'_, T>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut files = Vec::new();
        let mut subdirs = Vec::new();
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if depth < self.max_depth {
                    subdirs.push(entry.path());
                }
                continue;
            }
            if !(self.accept)(&entry.file_name()) {
                continue;
            }
            let path = entry.path();
            if kind.is_file() {
                let meta = entry.metadata().ok().map(|m| FileMeta::of(&m));
                files.push((sink.make)(path, meta));
            } else if kind.is_symlink() && (!self.links_to_files_only || path.is_file()) {
                files.push((sink.make)(path, None));
            }
            // Anything else (a FIFO, a socket) is not a log: opening a FIFO would block.
        }
        sink.add(files);
        match subdirs.len() {
            0 => {}
            1 => self.at(&subdirs[0], depth + 1, sink),
            _ => subdirs.par_iter().for_each(|d| self.at(d, depth + 1, sink)),
        }
    }
}

/// The Linux walk: every name is looked up relative to an open folder, so the kernel resolves
/// a few names per call instead of the whole path. A folder unchanged since its stored listing
/// is neither read nor even opened (see [`crate::listing`]): its identity and times are asked by
/// name, and its files and subfolders are looked up through the nearest folder that is open.
/// One that must be listed is opened, read into one buffer, and becomes that open folder for
/// everything below it.
#[cfg(target_os = "linux")]
mod linux {
    use super::{FileMeta, Sink, Walk};
    use crate::listing::{DirStamp, Entries, EntriesBuf, Kind};
    use rayon::prelude::*;
    use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
    use rustix::fs::{fstat, openat, statat, AtFlags, FileType, Mode, OFlags, RawDir, Stat, CWD};
    use std::ffi::OsStr;
    use std::mem::MaybeUninit;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    use std::path::{Path, PathBuf};

    /// The starting folder is opened only as a place to look names up in (no read access
    /// needed, and cheaper to open); it is opened again to read it when it must be listed.
    const START_FLAGS: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);
    const LIST_FLAGS: OFlags = OFlags::RDONLY
        .union(OFlags::DIRECTORY)
        .union(OFlags::CLOEXEC);

    /// Where a folder is: `rel` from the open folder `base`, or `base` itself when `rel` is
    /// empty.
    #[derive(Clone, Copy)]
    struct At<'a> {
        base: BorrowedFd<'a>,
        rel: &'a [u8],
    }

    impl<'a> At<'a> {
        /// The open folder `fd` itself.
        fn folder(fd: BorrowedFd<'a>) -> At<'a> {
            At { base: fd, rel: &[] }
        }

        /// Where names in this folder are looked up from: the folder itself once `opened`.
        fn through<'b>(self, opened: &'b Option<OwnedFd>) -> At<'b>
        where
            'a: 'b,
        {
            opened.as_ref().map_or(self, |fd| At::folder(fd.as_fd()))
        }

        /// `rel/name` (or `name`) into `buf`, for looking `name` up from `base`.
        fn name<'b>(&self, buf: &'b mut Vec<u8>, name: &[u8]) -> &'b [u8] {
            buf.clear();
            if !self.rel.is_empty() {
                buf.extend_from_slice(self.rel);
                buf.push(b'/');
            }
            buf.extend_from_slice(name);
            buf
        }
    }

    pub(super) fn run<T: Send>(walk: &Walk, dir: &Path, sink: &Sink<'_, T>) {
        // The starting folder may itself be a link (`~/.claude` -> elsewhere): followed.
        if let Ok(fd) = openat(CWD, dir, START_FLAGS, Mode::empty()) {
            at(walk, At::folder(fd.as_fd()), dir, 0, sink);
        }
    }

    /// The folder `dir`, found at `here`.
    fn at<T: Send>(walk: &Walk, here: At<'_>, dir: &Path, depth: usize, sink: &Sink<'_, T>) {
        let (opened, subdirs) = list(walk, here, dir, depth, sink);
        let here = here.through(&opened);
        let sub = |d: &PathBuf| {
            let Some(name) = d.file_name() else {
                return;
            };
            let mut rel = Vec::new();
            here.name(&mut rel, name.as_bytes());
            let there = At {
                base: here.base,
                rel: &rel,
            };
            at(walk, there, d, depth + 1, sink);
        };
        match subdirs.len() {
            0 => {}
            1 => sub(&subdirs[0]),
            _ => subdirs.par_iter().for_each(sub),
        }
    }

    /// Adds the wanted files of one folder (with metadata) to `sink`; returns the folder
    /// opened to read it (if it was) and the subfolders to enter.
    fn list<T: Send>(
        walk: &Walk,
        here: At<'_>,
        dir: &Path,
        depth: usize,
        sink: &Sink<'_, T>,
    ) -> (Option<OwnedFd>, Vec<PathBuf>) {
        let path = dir.as_os_str().as_bytes();
        // Stamped before it is read: a change after this makes the next walk read it again.
        // Not through links (a link cycle cannot trap the walk): something that is no longer
        // a folder is passed over.
        let stat = if here.rel.is_empty() {
            fstat(here.base)
        } else {
            statat(here.base, here.rel, AtFlags::SYMLINK_NOFOLLOW)
        };
        let stamp = match stat {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                Some(stamp_of(&st))
            }
            Ok(_) => return (None, Vec::new()),
            Err(_) => None,
        };
        let stored = stamp.and_then(|s| walk.listings.entries(path, &s));
        let (opened, fresh) = match stored {
            Some(_) => (None, None),
            None => match read(here) {
                Some((fd, buf)) => (Some(fd), Some(buf)),
                None => return (None, Vec::new()),
            },
        };
        let look = here.through(&opened);
        let entries = stored.unwrap_or_else(|| fresh.as_ref().map_or(&[][..], |b| &b.bytes));
        let mut files = Vec::new();
        let mut subdirs = Vec::new();
        let mut scratch = Vec::new();
        let mut name_buf = Vec::new();
        let mut dropped = 0;
        for (kind, bytes) in Entries(entries) {
            let os = OsStr::from_bytes(bytes);
            match kind {
                Kind::Dir if depth < walk.max_depth => subdirs.push(child(dir, bytes)),
                Kind::Dir => {}
                Kind::File if (walk.accept)(os) => {
                    let name = look.name(&mut name_buf, bytes);
                    let meta = statat(look.base, name, AtFlags::SYMLINK_NOFOLLOW)
                        .ok()
                        .map(|st| meta_of(&st));
                    if let Some(m) = &meta {
                        if walk
                            .listings
                            .drops(walk.source, &mut scratch, path, bytes, m)
                        {
                            dropped += 1;
                            continue;
                        }
                    }
                    files.push((sink.make)(child(dir, bytes), meta));
                }
                Kind::Link if (walk.accept)(os) => {
                    let name = look.name(&mut name_buf, bytes);
                    let keep = !walk.links_to_files_only
                        || statat(look.base, name, AtFlags::empty())
                            .is_ok_and(|st| FileType::from_raw_mode(st.st_mode).is_file());
                    if keep {
                        files.push((sink.make)(child(dir, bytes), None));
                    }
                }
                Kind::File | Kind::Link => {}
            }
        }
        sink.add(files);
        walk.listings.count_dropped(dropped);
        if let Some(buf) = fresh {
            walk.listings.listed(path, stamp, buf);
        }
        (opened, subdirs)
    }

    /// The folder's entries that can matter (folders, files, links: never a FIFO or a socket,
    /// which opening would block on), with the folder opened to read them, or `None` when it
    /// cannot be read.
    fn read(here: At<'_>) -> Option<(OwnedFd, EntriesBuf)> {
        let (rel, flags) = if here.rel.is_empty() {
            (&b"."[..], LIST_FLAGS)
        } else {
            (here.rel, LIST_FLAGS | OFlags::NOFOLLOW)
        };
        let dir = openat(here.base, rel, flags, Mode::empty()).ok()?;
        let mut buf = [MaybeUninit::<u8>::uninit(); 16 * 1024];
        let mut entries = RawDir::new(&dir, &mut buf);
        let mut out = EntriesBuf::default();
        while let Some(Ok(entry)) = entries.next() {
            let name = entry.file_name();
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            let mut kind = entry.file_type();
            if kind == FileType::Unknown {
                // Some file systems leave the type out of the entry: ask.
                match statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => kind = FileType::from_raw_mode(st.st_mode),
                    Err(_) => continue,
                }
            }
            match kind {
                FileType::Directory => out.push(Kind::Dir, bytes),
                FileType::RegularFile => out.push(Kind::File, bytes),
                FileType::Symlink => out.push(Kind::Link, bytes),
                _ => {}
            }
        }
        Some((dir, out))
    }

    /// `dir.join(name)` for a folder entry's name (never a `/` in it), allocated once at its
    /// final size.
    fn child(dir: &Path, name: &[u8]) -> PathBuf {
        PathBuf::from(std::ffi::OsString::from_vec(crate::listing::join(
            dir.as_os_str().as_bytes(),
            name,
        )))
    }

    fn stamp_of(st: &Stat) -> DirStamp {
        DirStamp {
            dev: st.st_dev,
            inode: st.st_ino,
            mtime_ns: ns(st.st_mtime, st.st_mtime_nsec),
            ctime_ns: ns(st.st_ctime, st.st_ctime_nsec),
        }
    }

    /// Nanoseconds since the epoch (saturated: never wraps, whatever the field types).
    fn ns(secs: impl Into<i128>, nsec: impl Into<i128>) -> i64 {
        let ns = secs.into() * 1_000_000_000 + nsec.into();
        ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// The same figures as [`FileMeta::of`] gives for `std::fs::Metadata`.
    fn meta_of(st: &Stat) -> FileMeta {
        let ns = i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec);
        FileMeta {
            dev: st.st_dev,
            inode: st.st_ino,
            size: st.st_size as u64,
            mtime_ns: if ns < 0 { 0 } else { ns as i64 },
        }
    }
}

/// The entries of one folder, sorted by name (nothing when it cannot be read).
pub(crate) fn dir_sorted(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    v.sort_unstable_by(|a, b| a.as_os_str().cmp(b.as_os_str()));
    v
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::symlink;

    fn jsonl(name: &OsStr) -> bool {
        name.as_encoded_bytes().ends_with(b".jsonl")
    }

    /// What a walk found, by path relative to `root`: `Some(meta)` for regular files.
    fn walk(
        root: &Path,
        max_depth: usize,
        links_to_files_only: bool,
    ) -> BTreeMap<String, Option<FileMeta>> {
        let w = Walk {
            max_depth,
            accept: &jsonl,
            links_to_files_only,
            listings: &DirCache::none(),
            source: Source::Claude,
        };
        let found = w.run(root);
        let n = found.len();
        let map: BTreeMap<String, Option<FileMeta>> = found
            .into_iter()
            .map(|(p, m)| (p.strip_prefix(root).unwrap().display().to_string(), m))
            .collect();
        assert_eq!(map.len(), n, "a file was found twice");
        map
    }

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("p/s/deeper")).unwrap();
        std::fs::write(r.join("top.jsonl"), "1\n").unwrap();
        std::fs::write(r.join("notes.txt"), "x").unwrap();
        std::fs::write(r.join("p/a.jsonl"), "12\n").unwrap();
        std::fs::write(r.join("p/s/b.jsonl"), "123\n").unwrap();
        std::fs::write(r.join("p/s/deeper/c.jsonl"), "1234\n").unwrap();
        std::fs::create_dir(r.join("p/folder.jsonl")).unwrap();
        symlink(r.join("p/a.jsonl"), r.join("link.jsonl")).unwrap();
        symlink(r.join("nowhere"), r.join("dangling.jsonl")).unwrap();
        symlink(r.join("p"), r.join("dirlink")).unwrap();
        // A FIFO named like a log: opening it would block, so it is never listed.
        let made = std::process::Command::new("mkfifo")
            .arg(r.join("pipe.jsonl"))
            .status()
            .unwrap();
        assert!(made.success());
        t
    }

    #[test]
    fn finds_files_with_their_metadata_and_follows_no_folder_link() {
        let t = tree();
        let found = walk(t.path(), 6, false);
        let names: Vec<&str> = found.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "dangling.jsonl",
                "link.jsonl",
                "p/a.jsonl",
                "p/s/b.jsonl",
                "p/s/deeper/c.jsonl",
                "top.jsonl"
            ]
        );
        for (name, meta) in &found {
            let path = t.path().join(name);
            if path.is_symlink() {
                assert_eq!(*meta, None, "{name}: a link's metadata is read later");
            } else {
                assert_eq!(*meta, Some(FileMeta::read(&path).unwrap()), "{name}");
            }
        }
    }

    #[test]
    fn depth_and_dangling_links() {
        let t = tree();
        let shallow = walk(t.path(), 1, true);
        let names: Vec<&str> = shallow.keys().map(String::as_str).collect();
        assert_eq!(names, ["link.jsonl", "p/a.jsonl", "top.jsonl"]);
        let flat = walk(t.path(), 0, true);
        assert_eq!(flat.keys().collect::<Vec<_>>(), ["link.jsonl", "top.jsonl"]);
    }

    #[test]
    fn a_linked_start_is_followed_and_a_missing_one_is_empty() {
        let t = tree();
        let found = walk(&t.path().join("dirlink"), 6, true);
        assert_eq!(
            found.keys().collect::<Vec<_>>(),
            ["a.jsonl", "s/b.jsonl", "s/deeper/c.jsonl"]
        );
        assert!(walk(&t.path().join("missing"), 6, true).is_empty());
        // A start with a trailing slash gives the same paths, joined once.
        let slash = PathBuf::from(format!("{}/", t.path().join("p").display()));
        let w = Walk {
            max_depth: 0,
            accept: &jsonl,
            links_to_files_only: true,
            listings: &DirCache::none(),
            source: Source::Claude,
        };
        assert_eq!(w.run(&slash)[0].0, t.path().join("p/a.jsonl"));
    }

    /// Sets a folder's mtime far in the past: any later change to its entries then gives it a
    /// different stamp, however coarse the clock (the test need not wait for it to tick).
    #[cfg(target_os = "linux")]
    fn backdate(dir: &Path) {
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
        std::fs::File::open(dir)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(old))
            .unwrap();
    }

    /// A walk with `listings`, as paths relative to `root`.
    #[cfg(target_os = "linux")]
    fn walk_with(root: &Path, listings: &DirCache) -> Vec<String> {
        let w = Walk {
            max_depth: 6,
            accept: &jsonl,
            links_to_files_only: true,
            listings,
            source: Source::Claude,
        };
        let mut v: Vec<String> = w
            .run(root)
            .into_iter()
            .map(|(p, _)| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        v.sort();
        v
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn folders_unchanged_since_their_listing_are_not_read_and_changed_ones_are() {
        use crate::listing::DirListing;
        let t = tree();
        let r = t.path();
        for d in ["", "p", "p/s", "p/s/deeper", "p/folder.jsonl"] {
            backdate(&r.join(d));
        }
        // Everything counts as settled here (the margin is tested in `listing`).
        let first = DirCache::new(Vec::new(), i64::MAX);
        let all = walk_with(r, &first);
        assert_eq!(first.counts(), (5, 0, 0));
        let stored: Vec<DirListing> = first.into_changes().put;
        assert_eq!(stored.len(), 5);

        // Nothing changed: no folder is read, and the same files are found.
        let again = DirCache::new(stored.clone(), i64::MAX);
        assert_eq!(walk_with(r, &again), all);
        assert_eq!(again.counts(), (0, 5, 0));
        assert!(again.into_changes().is_empty());

        // The stored listing really is what the walk goes by while the stamp holds...
        let p = r.join("p");
        let p_bytes = p.as_os_str().as_encoded_bytes();
        let mut doctored = stored.clone();
        let i = doctored.iter().position(|l| l.path == p_bytes).unwrap();
        let mut without_a = crate::listing::EntriesBuf::default();
        for (kind, name) in crate::listing::Entries(&doctored[i].entries) {
            if name != b"a.jsonl" {
                without_a.push(kind, name);
            }
        }
        doctored[i].entries = without_a.bytes;
        assert!(!walk_with(r, &DirCache::new(doctored, i64::MAX)).contains(&"p/a.jsonl".into()));

        // ...and a new entry changes the stamp: the folder is read again, the file found.
        std::fs::write(p.join("new.jsonl"), "x\n").unwrap();
        let after = DirCache::new(stored.clone(), i64::MAX);
        let found = walk_with(r, &after);
        assert!(found.contains(&"p/new.jsonl".into()), "{found:?}");
        assert_eq!(found.len(), all.len() + 1);
        assert_eq!(after.counts(), (1, 4, 0));
        let changes = after.into_changes();
        assert_eq!(changes.put.len(), 1);
        assert_eq!(changes.put[0].path, p_bytes);
        assert!(changes.gone.is_empty());

        // A folder that goes is forgotten, with everything below it.
        std::fs::remove_file(r.join("p/s/deeper/c.jsonl")).unwrap();
        std::fs::remove_dir(r.join("p/s/deeper")).unwrap();
        let gone = DirCache::new(stored, i64::MAX);
        assert!(!walk_with(r, &gone).contains(&"p/s/deeper/c.jsonl".into()));
        let changes = gone.into_changes();
        let deeper = r.join("p/s/deeper");
        assert_eq!(
            changes.gone,
            vec![deeper.as_os_str().as_encoded_bytes().to_vec()]
        );
    }

    /// Files the ledger says need nothing are dropped by the walk (counted, never made into a
    /// find); others, and files without metadata (links), are kept.
    #[cfg(target_os = "linux")]
    #[test]
    fn files_said_unchanged_are_dropped() {
        let t = tree();
        let r = t.path();
        let b = r.join("p/s/b.jsonl");
        let b_meta = FileMeta::read(&b).unwrap();
        let asked = std::sync::Mutex::new(Vec::new());
        let unchanged = |source: Source, path: &[u8], stat: &FileMeta| {
            asked.lock().unwrap().push(path.to_vec());
            source == Source::Claude && path == b.as_os_str().as_encoded_bytes() && *stat == b_meta
        };
        let cache = DirCache::none().with_unchanged(&unchanged);
        let found = walk_with(r, &cache);
        assert!(!found.contains(&"p/s/b.jsonl".into()), "{found:?}");
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(cache.counts().2, 1);
        // Asked about each regular file once, by its full path; never about a link.
        let mut asked = asked.into_inner().unwrap();
        asked.sort();
        let expect: Vec<Vec<u8>> = [
            "p/a.jsonl",
            "p/s/b.jsonl",
            "p/s/deeper/c.jsonl",
            "top.jsonl",
        ]
        .iter()
        .map(|n| r.join(n).as_os_str().as_encoded_bytes().to_vec())
        .collect();
        assert_eq!(asked, expect);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn folders_that_changed_within_the_margin_are_read_but_not_remembered() {
        let t = tree();
        let cache = DirCache::settled_now(Vec::new(), crate::listing::SETTLE_NS);
        let found = walk_with(t.path(), &cache);
        assert_eq!(found.len(), 5, "{found:?}");
        assert_eq!(cache.counts(), (5, 0, 0));
        assert!(cache.into_changes().is_empty());
    }
}
