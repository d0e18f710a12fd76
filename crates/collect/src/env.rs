//! The environment collectors discover files from: the home directory and variables, injected so
//! that tests never depend on the real machine.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The home directory and environment variables collectors read.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub home: PathBuf,
    pub vars: HashMap<String, String>,
}

impl Env {
    /// The real process environment.
    pub fn from_process() -> Env {
        Env {
            home: std::env::var_os("HOME")
                .map(PathBuf::from)
                .or_else(dirs_home)
                .unwrap_or_else(|| PathBuf::from("/")),
            vars: std::env::vars().collect(),
        }
    }

    /// A non-empty variable.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }

    /// A comma-separated list of directories from a variable (empty entries dropped, `~` expanded).
    pub fn dir_list(&self, name: &str) -> Option<Vec<PathBuf>> {
        let v = self.var(name)?;
        let dirs: Vec<PathBuf> = v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| self.expand(s))
            .collect();
        (!dirs.is_empty()).then_some(dirs)
    }

    /// Expands a leading `~/`.
    pub fn expand(&self, p: &str) -> PathBuf {
        if p == "~" {
            self.home.clone()
        } else if let Some(rest) = p.strip_prefix("~/") {
            self.home.join(rest)
        } else {
            PathBuf::from(p)
        }
    }

    pub fn home_join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.home.join(rel)
    }
}

fn dirs_home() -> Option<PathBuf> {
    None
}
