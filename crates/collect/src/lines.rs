//! Reading complete lines of a log from an offset, tolerant of torn last lines, invalid UTF-8
//! and huge lines, without holding the whole file in memory.

use crate::{SkipReason, Skipped};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// Lines longer than this are skipped (they are read through, not kept whole).
pub const MAX_LINE: usize = 64 * 1024 * 1024;

/// Calls `f(line_bytes)` for each complete line of `path` from `offset` (the trailing `\n` and
/// `\r` removed; empty lines are not passed). Returns the offset past the last complete line and
/// the bytes read. A torn last line (no newline) is reported as skipped and not consumed.
/// `.zst` files are decompressed as a stream and read whole (`offset` must be 0).
pub fn for_each_line(
    path: &Path,
    offset: u64,
    skipped: &mut Vec<Skipped>,
    mut f: impl FnMut(&[u8]),
) -> (u64, u64) {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(_) => {
            skipped.push(Skipped {
                path: path.to_path_buf(),
                line: 0,
                reason: SkipReason::Unreadable,
            });
            return (offset, 0);
        }
    };
    if file.metadata().map(|m| m.is_dir()).unwrap_or(true) {
        skipped.push(Skipped {
            path: path.to_path_buf(),
            line: 0,
            reason: SkipReason::Unreadable,
        });
        return (offset, 0);
    }
    let is_zst = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".zst"));
    if is_zst {
        let decoder = match zstd::stream::read::Decoder::new(file) {
            Ok(d) => d,
            Err(_) => {
                skipped.push(Skipped {
                    path: path.to_path_buf(),
                    line: 0,
                    reason: SkipReason::Unreadable,
                });
                return (0, 0);
            }
        };
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let (_, read, ok) = read_lines(
            BufReader::with_capacity(256 * 1024, decoder),
            path,
            0,
            skipped,
            &mut f,
        );
        if !ok {
            skipped.push(Skipped {
                path: path.to_path_buf(),
                line: 0,
                reason: SkipReason::Unreadable,
            });
        }
        return (size, read);
    }
    let mut file = file;
    if offset > 0 && file.seek(SeekFrom::Start(offset)).is_err() {
        return (offset, 0);
    }
    let (consumed, read, _) = read_lines(
        BufReader::with_capacity(256 * 1024, file),
        path,
        offset,
        skipped,
        &mut f,
    );
    (offset + consumed, read)
}

/// Returns (bytes consumed through the last newline, bytes read, whether the stream ended cleanly).
fn read_lines<R: Read>(
    mut r: BufReader<R>,
    path: &Path,
    _offset: u64,
    skipped: &mut Vec<Skipped>,
    f: &mut impl FnMut(&[u8]),
) -> (u64, u64, bool) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut consumed: u64 = 0;
    let mut read: u64 = 0;
    let mut line_no: u64 = 0;
    loop {
        buf.clear();
        let mut too_long = false;
        // Read one line, but stop keeping bytes past MAX_LINE.
        let mut complete = false;
        let mut line_len: u64 = 0;
        loop {
            let chunk = match r.fill_buf() {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return (consumed, read, false),
            };
            if chunk.is_empty() {
                break;
            }
            match memchr::memchr(b'\n', chunk) {
                Some(i) => {
                    if !too_long {
                        if buf.len() + i > MAX_LINE {
                            too_long = true;
                            buf.clear();
                        } else {
                            buf.extend_from_slice(&chunk[..i]);
                        }
                    }
                    line_len += i as u64 + 1;
                    r.consume(i + 1);
                    complete = true;
                    break;
                }
                None => {
                    let n = chunk.len();
                    if !too_long {
                        if buf.len() + n > MAX_LINE {
                            too_long = true;
                            buf.clear();
                        } else {
                            buf.extend_from_slice(chunk);
                        }
                    }
                    line_len += n as u64;
                    r.consume(n);
                }
            }
        }
        read += line_len;
        if line_len == 0 {
            return (consumed, read, true);
        }
        line_no += 1;
        if !complete {
            // Torn last line: not consumed, read again next time.
            if !buf.iter().all(u8::is_ascii_whitespace) {
                skipped.push(Skipped {
                    path: path.to_path_buf(),
                    line: line_no,
                    reason: SkipReason::TornLastLine,
                });
            }
            return (consumed, read, true);
        }
        consumed += line_len;
        if too_long {
            skipped.push(Skipped {
                path: path.to_path_buf(),
                line: line_no,
                reason: SkipReason::TooLong,
            });
            continue;
        }
        let mut line: &[u8] = &buf;
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        f(line);
    }
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
    let (offset, bytes_read) = for_each_line(path, offset, &mut skipped, |line| {
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
        offset,
        state: String::new(),
        skipped,
        bytes_read,
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
