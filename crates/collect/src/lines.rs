//! Reading complete lines of a log from an offset, tolerant of torn last lines, invalid UTF-8
//! and huge lines, without holding the whole file in memory.

use crate::{SkipReason, Skipped};
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Lines longer than this are skipped (they are read through, not kept whole).
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// How many bytes at the start of a file identify it: a rewrite in place changes them.
pub const HEAD_LEN: u64 = 4096;

/// Bytes read from the file per `read` call (and the size of each reader thread's buffer).
const CHUNK: usize = 256 * 1024;

/// The hash of a file's head bytes (see [`HEAD_LEN`]).
pub fn head_hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

/// What [`for_each_line`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinesRead {
    /// Offset just past the last complete line.
    pub offset: u64,
    /// Bytes read from the file (or decompressed).
    pub read: u64,
    /// When a plain file was read from its start: the length and [`head_hash`] of its first
    /// bytes (at most [`HEAD_LEN`], never past the last complete line).
    pub head: Option<(u64, u64)>,
}

/// Runs `f` with this thread opening logs by name in their folder when consecutive logs share
/// one (see [`open_log`]); the folder is let go when `f` returns, so a folder moved or replaced
/// later is never looked into through an old handle.
pub fn with_folder_reuse<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            FOLDER.with(|d| *d.borrow_mut() = None);
        }
    }
    FOLDER.with(|d| *d.borrow_mut() = Some(Folder::default()));
    let _reset = Reset;
    f()
}

/// The folder of the last log this thread opened, and (from the second log in a row there)
/// the folder itself, open as a place to look names up in.
#[derive(Default)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Folder {
    path: std::path::PathBuf,
    #[cfg(target_os = "linux")]
    fd: Option<rustix::fd::OwnedFd>,
}

/// Opens a log for reading. Inside [`with_folder_reuse`], the second and later of consecutive
/// logs in one folder are opened by name in the open folder: the kernel then resolves one name
/// instead of every folder of the path again (a first scan opens tens of thousands of logs, and
/// resolving their paths took ~7% of its time).
pub fn open_log(path: &Path) -> std::io::Result<File> {
    #[cfg(target_os = "linux")]
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        use rustix::fs::{openat, Mode, OFlags};
        let opened = FOLDER.with(|d| {
            let mut d = d.borrow_mut();
            let folder = d.as_mut()?;
            if folder.path != dir {
                folder.path.clear();
                folder.path.push(dir);
                folder.fd = None;
                return None;
            }
            if folder.fd.is_none() {
                let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
                folder.fd = Some(openat(rustix::fs::CWD, dir, flags, Mode::empty()).ok()?);
            }
            let fd = folder.fd.as_ref()?;
            let flags = OFlags::RDONLY | OFlags::CLOEXEC;
            Some(openat(fd, name, flags, Mode::empty()).map(File::from))
        });
        // Whatever went wrong, the path itself decides below (and gives the error).
        if let Some(Ok(file)) = opened {
            return Ok(file);
        }
    }
    File::open(path)
}

thread_local! {
    /// See [`with_folder_reuse`].
    static FOLDER: std::cell::RefCell<Option<Folder>> = const { std::cell::RefCell::new(None) };
    /// Each reader thread keeps its line buffer (and zstd context) between files: allocating
    /// them per file costs more than reading a small file.
    static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    static DCTX: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Calls `f(line_bytes)` for each complete line of `path` from `offset` (the trailing `\n` and
/// `\r` removed; blank lines are not passed). A torn last line (no newline) is reported as
/// skipped and not consumed. `.zst` files are decompressed as a stream and read whole (`offset`
/// must be 0; the returned offset is then the compressed size).
pub fn for_each_line(
    path: &Path,
    offset: u64,
    skipped: &mut Vec<Skipped>,
    mut f: impl FnMut(&[u8]),
) -> LinesRead {
    let not_read = LinesRead {
        offset,
        ..LinesRead::default()
    };
    let Ok(mut file) = open_log(path) else {
        skipped.push(Skipped::file(path, SkipReason::Unreadable));
        return not_read;
    };
    if is_zst(path) {
        let size = match file.metadata() {
            Ok(m) if !m.is_dir() => m.len(),
            _ => {
                skipped.push(Skipped::file(path, SkipReason::Unreadable));
                return not_read;
            }
        };
        let mut ctx = DCTX
            .with(|c| c.borrow_mut().take())
            .unwrap_or_else(zstd::zstd_safe::DCtx::create);
        // A stream that failed half way leaves the context mid-frame.
        let _ = ctx.reset(zstd::zstd_safe::ResetDirective::SessionOnly);
        let decoder = zstd::stream::read::Decoder::with_context(
            BufReader::with_capacity(32 * 1024, file),
            &mut ctx,
        );
        let (_, read, ok, _) = read_lines(decoder, path, false, skipped, &mut f);
        DCTX.with(|c| *c.borrow_mut() = Some(ctx));
        if !ok {
            skipped.push(Skipped::file(path, SkipReason::Unreadable));
        }
        return LinesRead {
            offset: size,
            read,
            head: None,
        };
    }
    if offset > 0 && file.seek(SeekFrom::Start(offset)).is_err() {
        return not_read;
    }
    // A directory opens but cannot be read (EISDIR): no `stat` per file needed to tell.
    let (consumed, read, ok, head) = read_lines(file, path, offset == 0, skipped, &mut f);
    if !ok && read == 0 {
        skipped.push(Skipped::file(path, SkipReason::Unreadable));
    }
    LinesRead {
        offset: offset + consumed,
        read,
        head,
    }
}

/// Reads `r` to its end in chunks, passing each complete line to `f` straight from the buffer.
/// Returns (bytes consumed through the last newline, bytes read, whether the stream ended
/// cleanly, the head of what was consumed when `want_head`).
fn read_lines<R: Read>(
    r: R,
    path: &Path,
    want_head: bool,
    skipped: &mut Vec<Skipped>,
    f: &mut impl FnMut(&[u8]),
) -> (u64, u64, bool, Option<(u64, u64)>) {
    let mut buf = BUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
    if buf.len() < CHUNK {
        buf.resize(CHUNK, 0);
    }
    let res = read_into(r, &mut buf, path, skipped, f, want_head);
    if buf.len() > 4 * CHUNK {
        // A huge line grew the buffer: give the memory back.
        buf.truncate(CHUNK);
        buf.shrink_to_fit();
    }
    BUF.with(|b| *b.borrow_mut() = buf);
    res
}

/// The loop of [`read_lines`], on the thread's buffer.
fn read_into<R: Read>(
    mut r: R,
    buf: &mut Vec<u8>,
    path: &Path,
    skipped: &mut Vec<Skipped>,
    f: &mut impl FnMut(&[u8]),
    want_head: bool,
) -> (u64, u64, bool, Option<(u64, u64)>) {
    // The head is hashed in place: until the buffer is first compacted, it starts with the
    // first bytes read.
    let mut compacted = false;
    let mut full_head: Option<u64> = None;
    let mut consumed: u64 = 0;
    let mut read: u64 = 0;
    let mut line_no: u64 = 0;
    // buf[start..end] holds bytes not yet consumed; no newline in buf[start..scan_from].
    let (mut start, mut end, mut scan_from) = (0usize, 0usize, 0usize);
    // Inside a line longer than MAX_LINE: its bytes so far were dropped (`dropped` of them).
    let mut too_long = false;
    let mut dropped: u64 = 0;
    loop {
        if end == buf.len() {
            if start > 0 {
                compacted = true;
                buf.copy_within(start..end, 0);
                end -= start;
                scan_from -= start;
                start = 0;
            } else if !too_long && buf.len() <= MAX_LINE {
                let grown = (buf.len() * 2).min(MAX_LINE + 1);
                buf.resize(grown, 0);
            } else {
                // The line is longer than MAX_LINE: drop what is buffered and read through.
                compacted = true;
                too_long = true;
                dropped += end as u64;
                end = 0;
                scan_from = 0;
            }
        }
        let n = match r.read(&mut buf[end..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return (consumed, read, false, None),
        };
        read += n as u64;
        end += n;
        if want_head && full_head.is_none() && !compacted && read >= HEAD_LEN {
            full_head = Some(head_hash(&buf[..HEAD_LEN as usize]));
        }
        while let Some(i) = memchr::memchr(b'\n', &buf[scan_from..end]) {
            let nl = scan_from + i;
            line_no += 1;
            consumed += dropped + (nl + 1 - start) as u64;
            if too_long {
                skipped.push(Skipped {
                    path: path.to_path_buf(),
                    line: line_no,
                    reason: SkipReason::TooLong,
                });
                too_long = false;
                dropped = 0;
            } else {
                let mut line = &buf[start..nl];
                if let Some(stripped) = line.strip_suffix(b"\r") {
                    line = stripped;
                }
                if !line.iter().all(u8::is_ascii_whitespace) {
                    f(line);
                }
            }
            start = nl + 1;
            scan_from = start;
        }
        scan_from = end;
    }
    // A torn last line is left for the next scan (a too-long one is not reported twice).
    if !too_long && !buf[start..end].iter().all(u8::is_ascii_whitespace) {
        skipped.push(Skipped {
            path: path.to_path_buf(),
            line: line_no + 1,
            reason: SkipReason::TornLastLine,
        });
    }
    let head = if !want_head || consumed == 0 {
        None
    } else if consumed >= HEAD_LEN {
        full_head.map(|h| (HEAD_LEN, h))
    } else if !compacted {
        Some((consumed, head_hash(&buf[..consumed as usize])))
    } else {
        None
    };
    (consumed, read, true, head)
}

/// Scans a file of self-contained usage lines (no state between lines) from `offset`: `parse`
/// turns one line into an event, nothing, or a skip reason. Events sharing a dedupe key keep only
/// the largest `total_tokens` within the scan (the ledger applies the same rule across scans).
pub fn scan_stateless(
    path: &Path,
    offset: u64,
    mut parse: impl FnMut(&[u8]) -> Result<Option<crate::UsageEvent>, SkipReason>,
) -> crate::FileScan {
    let mut events: Vec<crate::UsageEvent> = Vec::new();
    let mut by_key: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    let mut skipped = Vec::new();
    let mut bad: Vec<(u64, SkipReason)> = Vec::new();
    let mut line_no: u64 = 0;
    let read = for_each_line(path, offset, &mut skipped, |line| {
        line_no += 1;
        match parse(line) {
            Ok(Some(ev)) => match by_key.get(&ev.dedupe_key) {
                Some(&i) => {
                    if ev.tokens.total_tokens > events[i].tokens.total_tokens {
                        events[i] = ev;
                    }
                }
                None => {
                    by_key.insert(ev.dedupe_key, events.len());
                    events.push(ev);
                }
            },
            Ok(None) => {}
            Err(reason) => bad.push((line_no, reason)),
        }
    });
    skipped.extend(bad.into_iter().map(|(line, reason)| Skipped {
        path: path.to_path_buf(),
        line,
        reason,
    }));
    skipped.sort_by_key(|s| s.line);
    crate::FileScan {
        events,
        offset: read.offset,
        state: String::new(),
        skipped,
        bytes_read: read.read,
        head: read.head,
    }
}

/// Why bytes that failed to parse as JSON were skipped: invalid UTF-8 or invalid JSON.
pub fn unparsable(bytes: &[u8]) -> SkipReason {
    if std::str::from_utf8(bytes).is_err() {
        SkipReason::InvalidUtf8
    } else {
        SkipReason::InvalidJson
    }
}

/// Why a serde error happened on UTF-8 text: fields of the wrong type, or invalid JSON.
pub fn json_error(e: &serde_json::Error) -> SkipReason {
    if e.is_data() {
        SkipReason::BadFields
    } else {
        SkipReason::InvalidJson
    }
}

/// Parses one JSON document (a line or a whole file), borrowing from it, with the skip reason
/// of each way it can fail.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, SkipReason> {
    let text = std::str::from_utf8(bytes).map_err(|_| SkipReason::InvalidUtf8)?;
    serde_json::from_str(text).map_err(|e| json_error(&e))
}

/// A cheap check for lines a prefilter would otherwise drop silently: a JSON object line must
/// start with `{` and end with `}` and be UTF-8. Returns why the line is malformed, if it is.
/// (Lines that pass may still be invalid JSON; those that look like usage are parsed in full.)
pub fn malformed(line: &[u8]) -> Option<SkipReason> {
    let t = line.trim_ascii();
    if t.first() != Some(&b'{') || t.last() != Some(&b'}') {
        return Some(unparsable(t));
    }
    if !t.is_ascii() && std::str::from_utf8(t).is_err() {
        return Some(SkipReason::InvalidUtf8);
    }
    None
}
/// Whether `path` names a zstd-compressed log (`*.zst`): read whole, through a decoder.
pub(crate) fn is_zst(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".zst"))
}
