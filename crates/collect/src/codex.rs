//! Codex CLI rollouts (to be written).
use crate::{Collector, Env, FileScan, FoundFile};
use tokenledger_core::Source;

pub struct CodexCollector;

impl Collector for CodexCollector {
    fn source(&self) -> Source {
        Source::Codex
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
