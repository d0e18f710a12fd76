//! A fast path for Claude usage lines: a validating scan that reads the few fields the parser
//! needs and steps over the rest (the message content, most of the bytes) without building it.
//!
//! It answers only when it is sure that serde would read the line the same way; anything
//! unusual (escapes in the fields it reads, duplicate keys, control characters, a lone
//! surrogate, unexpected types, deep nesting) returns `None` and the line goes to serde, which
//! also decides how an invalid line is reported.

use super::{Line, Message, Usage};
use std::borrow::Cow;

/// The fields of `text` that [`Line`] holds, or `None` to let serde decide.
pub(super) fn line(text: &str) -> Option<Line<'_>> {
    let b = text.as_bytes();
    // Raw control characters are invalid inside strings; whitespace between tokens may use
    // some of them, but Claude Code never does: such lines go to serde.
    if b.chunks(64)
        .any(|c| c.iter().fold(false, |a, &x| a | (x < 0x20)))
    {
        return None;
    }
    let mut s = Scan {
        t: text,
        i: 0,
        depth: 0,
    };
    let mut out = Line::default();
    let mut seen = 0u16;
    s.ws();
    s.members(|s, key| {
        let bit = match key {
            b"type" => 0,
            b"sessionId" => 1,
            b"cwd" => 2,
            b"timestamp" => 3,
            b"uuid" => 4,
            b"requestId" => 5,
            b"isSidechain" => 6,
            b"isApiErrorMessage" => 7,
            b"message" => 8,
            _ => return s.value(),
        };
        first_time(&mut seen, bit)?;
        match bit {
            0 => out.kind = s.opt_str()?,
            1 => out.session_id = s.opt_str()?,
            2 => out.cwd = s.opt_str()?,
            3 => out.timestamp = s.opt_str()?,
            4 => out.uuid = s.opt_str()?,
            5 => out.request_id = s.opt_str()?,
            6 => out.is_sidechain = s.opt_bool()?,
            7 => out.is_api_error = s.opt_bool()?,
            _ => out.message = s.opt_message()?,
        }
        Some(())
    })?;
    s.ws();
    (s.i == b.len()).then_some(out)
}

/// Marks field `bit` as read; `None` (serde decides) when it was already: serde rejects
/// duplicate fields.
fn first_time(seen: &mut u16, bit: u16) -> Option<()> {
    let was = *seen & (1 << bit) != 0;
    *seen |= 1 << bit;
    (!was).then_some(())
}

/// Nesting deeper than this goes to serde (which has its own limit).
const MAX_DEPTH: usize = 64;

struct Scan<'a> {
    t: &'a str,
    i: usize,
    depth: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.t.as_bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek() == Some(c)).then(|| self.i += 1)
    }

    fn lit(&mut self, word: &[u8]) -> Option<()> {
        let b = self.t.as_bytes();
        (b.get(self.i..self.i + word.len())? == word).then(|| self.i += word.len())
    }

    /// A string: its content's span and whether it holds escapes.
    fn string(&mut self) -> Option<(usize, usize, bool)> {
        self.eat(b'"')?;
        let b = self.t.as_bytes();
        let start = self.i;
        let mut escaped = false;
        loop {
            let j = self.i + memchr::memchr2(b'"', b'\\', &b[self.i..])?;
            if b[j] == b'"' {
                self.i = j + 1;
                return Some((start, j, escaped));
            }
            escaped = true;
            match *b.get(j + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i = j + 2,
                b'u' => {
                    let hex = std::str::from_utf8(b.get(j + 2..j + 6)?).ok()?;
                    let code = u16::from_str_radix(hex, 16).ok()?;
                    if hex.starts_with(['+', '-']) || (0xD800..0xE000).contains(&code) {
                        // Surrogates (paired or not) are serde's to judge.
                        return None;
                    }
                    self.i = j + 6;
                }
                _ => return None,
            }
        }
    }

    fn digits(&mut self) -> usize {
        let n = self.t.as_bytes()[self.i..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        self.i += n;
        n
    }

    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.eat(b'.').is_some() && self.digits() == 0 {
            return None;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    /// Steps over any value.
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' => self.object(true, |s, _| s.value()),
            b'[' => {
                self.enter()?;
                self.ws();
                if self.eat(b']').is_none() {
                    loop {
                        self.value()?;
                        self.ws();
                        if self.eat(b',').is_some() {
                            self.ws();
                            continue;
                        }
                        self.eat(b']')?;
                        break;
                    }
                }
                self.depth -= 1;
                Some(())
            }
            b't' => self.lit(b"true"),
            b'f' => self.lit(b"false"),
            b'n' => self.lit(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn enter(&mut self) -> Option<()> {
        self.i += 1;
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    /// The members of an object whose fields are read: `f` gets each key and consumes its
    /// value. An escaped key might spell a field's name: such objects are serde's to read.
    fn members(&mut self, f: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.object(false, f)
    }

    /// An object: `f` gets each key (raw; escaped ones only when `escaped_keys`) and consumes
    /// its value.
    fn object(
        &mut self,
        escaped_keys: bool,
        mut f: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        if self.peek()? != b'{' {
            return None;
        }
        self.enter()?;
        self.ws();
        if self.eat(b'}').is_none() {
            loop {
                let (start, end, escaped) = self.string()?;
                if escaped && !escaped_keys {
                    return None;
                }
                self.ws();
                self.eat(b':')?;
                self.ws();
                f(self, &self.t.as_bytes()[start..end])?;
                self.ws();
                if self.eat(b',').is_some() {
                    self.ws();
                    continue;
                }
                self.eat(b'}')?;
                break;
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// `null` or a string without escapes (borrowed); `None` (serde decides) otherwise.
    fn opt_str(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.peek()? == b'n' {
            self.lit(b"null")?;
            return Some(None);
        }
        let (start, end, escaped) = self.string()?;
        (!escaped).then(|| Some(Cow::Borrowed(&self.t[start..end])))
    }

    fn opt_bool(&mut self) -> Option<Option<bool>> {
        match self.peek()? {
            b't' => self.lit(b"true").map(|_| Some(true)),
            b'f' => self.lit(b"false").map(|_| Some(false)),
            b'n' => self.lit(b"null").map(|_| None),
            _ => None,
        }
    }

    fn opt_message(&mut self) -> Option<Option<Message<'a>>> {
        if self.peek()? == b'n' {
            self.lit(b"null")?;
            return Some(None);
        }
        let mut m = Message::default();
        let mut seen = 0u16;
        self.members(|s, key| {
            let bit = match key {
                b"id" => 0,
                b"model" => 1,
                b"usage" => 2,
                _ => return s.value(),
            };
            first_time(&mut seen, bit)?;
            match bit {
                0 => m.id = s.opt_str()?,
                1 => m.model = s.opt_str()?,
                _ => {
                    // Small: serde reads it, from its own span.
                    let start = s.i;
                    s.value()?;
                    m.usage = serde_json::from_str::<Option<Usage>>(&s.t[start..s.i]).ok()?;
                }
            }
            Some(())
        })?;
        Some(Some(m))
    }
}
