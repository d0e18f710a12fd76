//! Claude Code transcripts (to be written).
use crate::{Collector, Env, FileScan, FoundFile};
use tokenledger_core::Source;

pub struct ClaudeCollector;

impl Collector for ClaudeCollector {
    fn source(&self) -> Source {
        Source::Claude
    }
    fn discover(&self, _env: &Env) -> Vec<FoundFile> {
        Vec::new()
    }
    fn scan(&self, _file: &FoundFile, offset: u64, _state: &str) -> FileScan {
        FileScan {
            offset,
            ..Default::default()
        }
    }
}
