//! Walking agent folders in parallel, taking each file's metadata from its directory entry
//! (`fstatat` on the open directory: no second walk of the whole path per file).

use crate::FileMeta;
use rayon::prelude::*;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

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
}

impl Walk<'_> {
    /// Wanted files under `dir`, each with its metadata when the entry is a regular file.
    pub fn run(&self, dir: &Path) -> Vec<(PathBuf, Option<FileMeta>)> {
        self.at(dir, 0)
    }

    fn at(&self, dir: &Path, depth: usize) -> Vec<(PathBuf, Option<FileMeta>)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
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
                files.push((path, meta));
            } else if kind.is_symlink() && (!self.links_to_files_only || path.is_file()) {
                files.push((path, None));
            }
            // Anything else (a FIFO, a socket) is not a log: opening a FIFO would block.
        }
        match subdirs.len() {
            0 => {}
            1 => files.extend(self.at(&subdirs[0], depth + 1)),
            _ => files.par_extend(subdirs.par_iter().flat_map_iter(|d| self.at(d, depth + 1))),
        }
        files
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
