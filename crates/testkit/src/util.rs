//! Small helpers of the generator: seeded randomness, ids, timestamps and filler text.

use rand::rngs::StdRng;
use rand::{Rng, RngCore};

/// Formats unix milliseconds as `2025-10-06T12:34:56.789Z` (UTC).
pub fn fmt_ts(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// `YYYY-MM-DD` of a unix-seconds instant (UTC).
pub fn fmt_day(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    format!("{y:04}-{m:02}-{d:02}")
}

/// The date and time parts used in Codex rollout paths: (`YYYY`, `MM`, `DD`, `YYYY-MM-DDThh-mm-ss`).
pub fn rollout_stamp(ms: i64) -> (String, String, String, String) {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    (
        format!("{y:04}"),
        format!("{m:02}"),
        format!("{d:02}"),
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}-{:02}-{:02}",
            sod / 3600,
            (sod / 60) % 60,
            sod % 60
        ),
    )
}

/// Days since 1970-01-01 of a civil date.
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A random UUID-shaped id (version nibble 7, like recent Codex thread ids).
pub fn uuid(rng: &mut StdRng) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | ((b >> 48) & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}

/// A random id with a prefix and `n` base62 characters (`msg_01…`, `req_…`, `toolu_…`).
pub fn id(rng: &mut StdRng, prefix: &str, n: usize) -> String {
    const ABC: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut s = String::with_capacity(prefix.len() + n);
    s.push_str(prefix);
    for _ in 0..n {
        s.push(ABC[rng.random_range(0..ABC.len())] as char);
    }
    s
}

/// A pool of JSON-safe filler text (no quotes, no backslashes), sliced for big tool outputs.
pub struct Filler {
    text: String,
}

impl Filler {
    pub fn new(rng: &mut StdRng) -> Filler {
        const WORDS: &[&str] = &[
            "fn",
            "let",
            "mut",
            "impl",
            "struct",
            "self",
            "match",
            "Some",
            "None",
            "Ok",
            "Err",
            "return",
            "use",
            "crate::",
            "pub",
            "async",
            "await",
            "error:",
            "warning:",
            "-->",
            "src/main.rs:42:7",
            "|",
            "^^^^",
            "test",
            "passed;",
            "failed;",
            "running",
            "tests",
            "cargo",
            "build",
            "Compiling",
            "Finished",
            "ms",
            "0x7ff",
            "index.ts",
            "import",
            "from",
            "const",
            "=>",
            "{",
            "}",
            "(",
            ")",
            "[",
            "]",
            ";",
            "::",
            "<T>",
            "Vec<u8>",
            "String",
            "hello",
            "world",
            "data",
            "value",
            "config",
            "user",
            "README.md",
            "TODO",
            "FIXME",
            "diff",
            "--git",
            "a/src/lib.rs",
            "b/src/lib.rs",
            "@@",
            "-1,7",
            "+1,9",
            "/tmp/x",
        ];
        let mut text = String::with_capacity(1 << 17);
        while text.len() < (1 << 17) {
            text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
            text.push_str(if rng.random_ratio(1, 12) { "\\t" } else { " " });
            if rng.random_ratio(1, 10) {
                // A JSON-escaped newline inside the string.
                text.push_str("\\n");
            }
        }
        Filler { text }
    }

    /// About `len` bytes of filler (never splitting an escape sequence).
    pub fn take(&self, rng: &mut StdRng, len: usize) -> &str {
        let len = len.min(self.text.len() - 8);
        let mut start = rng.random_range(0..self.text.len() - len);
        while !self.text.is_char_boundary(start)
            || self.text.as_bytes()[start] == b'n'
            || self.text.as_bytes()[start] == b't'
        {
            start += 1;
        }
        let mut end = (start + len).min(self.text.len());
        while end > start && self.text.as_bytes()[end - 1] == b'\\' {
            end -= 1;
        }
        &self.text[start..end]
    }
}

/// Compresses `data` into one zstd frame (as Codex's idle-thread worker does).
pub fn zstd_compress(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap_or_default()
}
