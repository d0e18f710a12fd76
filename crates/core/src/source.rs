//! The agents tokenledger reads, by their wire name.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Where a bucket's tokens come from. The wire names are stable: they are stored and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Source {
    #[serde(rename = "codex")]
    Codex,
    #[serde(rename = "every-code")]
    EveryCode,
    #[serde(rename = "claude")]
    Claude,
    #[serde(rename = "gemini")]
    Gemini,
    #[serde(rename = "opencode")]
    OpenCode,
    #[serde(rename = "qwen")]
    Qwen,
}

impl Source {
    pub const ALL: [Source; 6] = [
        Source::Codex,
        Source::EveryCode,
        Source::Claude,
        Source::Gemini,
        Source::OpenCode,
        Source::Qwen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Codex => "codex",
            Source::EveryCode => "every-code",
            Source::Claude => "claude",
            Source::Gemini => "gemini",
            Source::OpenCode => "opencode",
            Source::Qwen => "qwen",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown source name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown source {0:?} (expected one of codex, every-code, claude, gemini, opencode, qwen)")]
pub struct UnknownSource(pub String);

impl FromStr for Source {
    type Err = UnknownSource;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Source::ALL
            .into_iter()
            .find(|src| src.as_str() == s)
            .ok_or_else(|| UnknownSource(s.to_string()))
    }
}
