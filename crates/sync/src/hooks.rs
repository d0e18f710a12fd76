//! Installers of the agents' hooks that trigger a sync when a session ends or a turn completes.
//!
//! - Codex CLI and Every Code: `notify` in `config.toml` (in `$CODEX_HOME` or `~/.codex`, and
//!   `$CODE_HOME` or `~/.code`). An existing notify command is kept and chained: ours becomes
//!   `tokenledger hooks notify --source S --chain <original argv...>`, which runs it too.
//! - Claude Code: a `SessionEnd` command hook in `settings.json` (in `$CLAUDE_CONFIG_DIR` or
//!   `~/.claude`); Gemini CLI: the same in `~/.gemini/settings.json` (or `$GEMINI_CLI_HOME`).
//! - OpenCode: a plugin file `tokenledger.js` in `~/.config/opencode/plugin/`.
//!
//! Installing twice adds nothing. Before the first change of a file, its bytes are copied to
//! `<file>.tokenledger.bak`. Uninstalling removes only our entries; when nothing else changed
//! since, the backup's bytes are put back exactly (and a file we created is removed).

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tokenledger_collect::Env;
use toml_edit::{Array, DocumentMut};

/// The agents whose hooks we manage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Agent {
    Codex,
    EveryCode,
    Claude,
    Gemini,
    OpenCode,
}

impl Agent {
    pub const ALL: [Agent; 5] = [
        Agent::Codex,
        Agent::EveryCode,
        Agent::Claude,
        Agent::Gemini,
        Agent::OpenCode,
    ];

    /// The `source` name of the agent.
    pub fn name(self) -> &'static str {
        match self {
            Agent::Codex => "codex",
            Agent::EveryCode => "every-code",
            Agent::Claude => "claude",
            Agent::Gemini => "gemini",
            Agent::OpenCode => "opencode",
        }
    }

    pub fn parse(s: &str) -> Option<Agent> {
        Agent::ALL.into_iter().find(|a| a.name() == s)
    }

    /// The agent's home directory (whose existence says the agent is installed).
    pub fn home(self, env: &Env) -> PathBuf {
        let first = |var: &str| env.dir_list(var).and_then(|d| d.into_iter().next());
        match self {
            Agent::Codex => first("CODEX_HOME").unwrap_or_else(|| env.home_join(".codex")),
            Agent::EveryCode => first("CODE_HOME").unwrap_or_else(|| env.home_join(".code")),
            Agent::Claude => first("CLAUDE_CONFIG_DIR").unwrap_or_else(|| env.home_join(".claude")),
            Agent::Gemini => match env.var("GEMINI_CLI_HOME") {
                Some(h) => env.expand(h).join(".gemini"),
                None => env.home_join(".gemini"),
            },
            Agent::OpenCode => match env.var("XDG_CONFIG_HOME") {
                Some(x) => env.expand(x).join("opencode"),
                None => env.home_join(".config/opencode"),
            },
        }
    }

    /// The file our hook lives in.
    pub fn config_path(self, env: &Env) -> PathBuf {
        let home = self.home(env);
        match self {
            Agent::Codex | Agent::EveryCode => home.join("config.toml"),
            Agent::Claude | Agent::Gemini => home.join("settings.json"),
            Agent::OpenCode => home.join("plugin").join(PLUGIN_FILE),
        }
    }
}

const PLUGIN_FILE: &str = "tokenledger.js";
/// Marks the files and entries that are ours.
const MARK: &str = "tokenledger-hook";

/// Errors of the installers.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} cannot be parsed ({message}); it was left untouched")]
    Parse { path: PathBuf, message: String },
    #[error("{path} exists and was not written by tokenledger; it was left untouched")]
    Foreign { path: PathBuf },
}

type Result<T, E = HookError> = std::result::Result<T, E>;

/// The state of one agent's hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookStatus {
    pub agent: Agent,
    pub path: PathBuf,
    /// The agent's home exists.
    pub agent_found: bool,
    pub installed: bool,
}

/// What an install or uninstall did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Installed {
        backup: Option<PathBuf>,
    },
    AlreadyInstalled,
    /// The backup's bytes were put back (or the file we created was removed).
    Restored,
    /// Our entries were removed; the file had other changes since, so the backup was kept.
    Removed {
        backup: Option<PathBuf>,
    },
    NotInstalled,
}

/// The backup of `path`.
pub fn backup_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tokenledger.bak");
    path.with_file_name(name)
}

fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(HookError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HookError + '_ {
    move |source| HookError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes through a temporary file and a rename, keeping the file's permissions.
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tokenledger.tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    if let Ok(meta) = std::fs::metadata(path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Whether a command line (argv or shell string) is one of ours.
fn is_our_command(words: &[&str]) -> bool {
    words
        .windows(2)
        .any(|w| w == ["hooks", "notify"] || w == ["hooks", "run"])
        && words.first().is_some_and(|exe| {
            Path::new(exe.trim_matches('\''))
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("tokenledger"))
        })
}

/// Quotes a word for a POSIX shell when needed.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:@,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The state of `agent`'s hook.
pub fn status(agent: Agent, env: &Env) -> Result<HookStatus> {
    let path = agent.config_path(env);
    let installed = match read(&path)? {
        None => false,
        Some(bytes) => match agent {
            Agent::Codex | Agent::EveryCode => {
                let doc = parse_toml(&path, &bytes)?;
                codex_notify(&doc).is_some_and(|argv| is_ours_argv(&argv))
            }
            Agent::Claude | Agent::Gemini => {
                let v = parse_json(&path, &bytes)?;
                count_ours_json(&v) > 0
            }
            Agent::OpenCode => String::from_utf8_lossy(&bytes).contains(MARK),
        },
    };
    Ok(HookStatus {
        agent,
        path,
        agent_found: agent.home(env).is_dir(),
        installed,
    })
}

/// Installs `agent`'s hook, calling `exe` (the tokenledger binary).
pub fn install(agent: Agent, env: &Env, exe: &Path) -> Result<Outcome> {
    let path = agent.config_path(env);
    let original = read(&path)?;
    let exe = exe.to_string_lossy().into_owned();
    let new_bytes: Option<Vec<u8>> = match agent {
        Agent::Codex | Agent::EveryCode => {
            let text = original.as_deref().unwrap_or_default();
            let mut doc = parse_toml(&path, text)?;
            codex_install(&mut doc, &exe, agent)
        }
        Agent::Claude | Agent::Gemini => {
            let mut v = match &original {
                Some(b) if !b.iter().all(u8::is_ascii_whitespace) => parse_json(&path, b)?,
                _ => json!({}),
            };
            json_install(&mut v, &exe, agent, &path)?
        }
        Agent::OpenCode => match &original {
            Some(b) if String::from_utf8_lossy(b).contains(MARK) => None,
            Some(_) => return Err(HookError::Foreign { path }),
            None => Some(opencode_plugin(&exe).into_bytes()),
        },
    };
    let Some(new_bytes) = new_bytes else {
        return Ok(Outcome::AlreadyInstalled);
    };
    let mut backup = None;
    if let Some(orig) = &original {
        let b = backup_path(&path);
        // A backup from an earlier install describes the file before any of our changes.
        if !b.exists() {
            write(&b, orig)?;
        }
        backup = Some(b);
    }
    write(&path, &new_bytes)?;
    Ok(Outcome::Installed { backup })
}

/// Removes `agent`'s hook, restoring the backup when the file holds nothing else new.
pub fn uninstall(agent: Agent, env: &Env) -> Result<Outcome> {
    let path = agent.config_path(env);
    let Some(current) = read(&path)? else {
        return Ok(Outcome::NotInstalled);
    };
    let bpath = backup_path(&path);
    let backup = read(&bpath)?;
    // `stripped`: the file without our entries (None: remove the file);
    // `same`: whether it equals the backup in meaning.
    let (stripped, same): (Option<Vec<u8>>, bool) = match agent {
        Agent::Codex | Agent::EveryCode => {
            let mut doc = parse_toml(&path, &current)?;
            if !codex_uninstall(&mut doc) {
                return Ok(Outcome::NotInstalled);
            }
            let same = match &backup {
                Some(b) => toml_same(&doc, &parse_toml(&bpath, b)?),
                None => doc.as_table().is_empty(),
            };
            (Some(doc.to_string().into_bytes()), same)
        }
        Agent::Claude | Agent::Gemini => {
            let mut v = parse_json(&path, &current)?;
            if count_ours_json(&v) == 0 {
                return Ok(Outcome::NotInstalled);
            }
            json_uninstall(&mut v);
            let same = match &backup {
                Some(b) => parse_json(&bpath, b).is_ok_and(|bv| bv == v),
                None => v.as_object().is_some_and(|o| o.is_empty()),
            };
            (Some(json_bytes(&v)), same)
        }
        Agent::OpenCode => {
            if !String::from_utf8_lossy(&current).contains(MARK) {
                return Ok(Outcome::NotInstalled);
            }
            (None, backup.is_none())
        }
    };
    if same {
        match &backup {
            Some(b) => write(&path, b)?,
            None => std::fs::remove_file(&path).map_err(io(&path))?,
        }
        if backup.is_some() {
            std::fs::remove_file(&bpath).map_err(io(&bpath))?;
        }
        return Ok(Outcome::Restored);
    }
    match stripped {
        Some(bytes) => write(&path, &bytes)?,
        None => std::fs::remove_file(&path).map_err(io(&path))?,
    }
    Ok(Outcome::Removed {
        backup: backup.map(|_| bpath),
    })
}

// ---- Codex / Every Code: `notify` in config.toml ----

fn parse_toml(path: &Path, bytes: &[u8]) -> Result<DocumentMut> {
    let text = std::str::from_utf8(bytes).map_err(|e| HookError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    text.parse::<DocumentMut>().map_err(|e| HookError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim().to_string(),
    })
}

/// The top-level `notify` argv, when it is an array of strings.
fn codex_notify(doc: &DocumentMut) -> Option<Vec<String>> {
    let arr = doc.get("notify")?.as_array()?;
    arr.iter().map(|v| v.as_str().map(str::to_string)).collect()
}

fn is_ours_argv(argv: &[String]) -> bool {
    let words: Vec<&str> = argv.iter().map(String::as_str).collect();
    is_our_command(&words)
}

/// The chained original argv inside our notify argv (empty when none).
fn chained(argv: &[String]) -> Vec<String> {
    match argv.iter().position(|a| a == "--chain") {
        Some(i) => argv[i + 1..].to_vec(),
        None => Vec::new(),
    }
}

fn codex_install(doc: &mut DocumentMut, exe: &str, agent: Agent) -> Option<Vec<u8>> {
    let existing = codex_notify(doc);
    if existing.as_deref().is_some_and(is_ours_argv) {
        return None;
    }
    let mut argv: Vec<String> = vec![
        exe.to_string(),
        "hooks".into(),
        "notify".into(),
        "--source".into(),
        agent.name().into(),
    ];
    if let Some(orig) = existing.filter(|a| !a.is_empty()) {
        argv.push("--chain".into());
        argv.extend(orig);
    }
    let arr: Array = argv.iter().map(String::as_str).collect();
    match doc.get_mut("notify").and_then(|i| i.as_value_mut()) {
        Some(v) => {
            // Keep the spacing and comments around the old value.
            let decor = v.decor().clone();
            *v = toml_edit::Value::Array(arr);
            *v.decor_mut() = decor;
        }
        None => {
            doc.insert("notify", toml_edit::value(arr));
        }
    }
    Some(doc.to_string().into_bytes())
}

/// Removes our notify (restoring a chained one). Returns whether ours was there.
fn codex_uninstall(doc: &mut DocumentMut) -> bool {
    let Some(argv) = codex_notify(doc).filter(|a| is_ours_argv(a)) else {
        return false;
    };
    let orig = chained(&argv);
    if orig.is_empty() {
        doc.remove("notify");
    } else if let Some(v) = doc.get_mut("notify").and_then(|i| i.as_value_mut()) {
        let decor = v.decor().clone();
        *v = toml_edit::Value::Array(orig.iter().map(String::as_str).collect());
        *v.decor_mut() = decor;
    }
    true
}

/// Whether two documents hold the same notify and otherwise read the same.
fn toml_same(a: &DocumentMut, b: &DocumentMut) -> bool {
    if codex_notify(a) != codex_notify(b) {
        return false;
    }
    let (mut a, mut b) = (a.clone(), b.clone());
    a.remove("notify");
    b.remove("notify");
    a.to_string() == b.to_string()
}

// ---- Claude Code / Gemini CLI: a SessionEnd command hook in settings.json ----

fn parse_json(path: &Path, bytes: &[u8]) -> Result<Value> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| HookError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if !v.is_object() {
        return Err(HookError::Parse {
            path: path.to_path_buf(),
            message: "not a JSON object".into(),
        });
    }
    Ok(v)
}

fn json_bytes(v: &Value) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).unwrap_or_default();
    out.push(b'\n');
    out
}

fn is_ours_hook(h: &Value) -> bool {
    h.get("name").and_then(Value::as_str) == Some(MARK)
        || h.get("command")
            .and_then(Value::as_str)
            .is_some_and(|c| c.contains("tokenledger") && c.contains(" hooks run "))
}

fn count_ours_json(v: &Value) -> usize {
    v.pointer("/hooks/SessionEnd")
        .and_then(Value::as_array)
        .map(|groups| {
            groups
                .iter()
                .filter_map(|g| g.get("hooks").and_then(Value::as_array))
                .flatten()
                .filter(|h| is_ours_hook(h))
                .count()
        })
        .unwrap_or(0)
}

fn json_install(v: &mut Value, exe: &str, agent: Agent, path: &Path) -> Result<Option<Vec<u8>>> {
    if count_ours_json(v) > 0 {
        return Ok(None);
    }
    let bad = |what: &str| HookError::Parse {
        path: path.to_path_buf(),
        message: format!("{what} is not what the agent documents"),
    };
    let root = v.as_object_mut().ok_or_else(|| bad("the file"))?;
    let hooks = root
        .entry("hooks")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .ok_or_else(|| bad("`hooks`"))?;
    let groups = hooks
        .entry("SessionEnd")
        .or_insert_with(|| json!([]))
        .as_array_mut()
        .ok_or_else(|| bad("`hooks.SessionEnd`"))?;
    let command = format!("{} hooks run --source {}", shell_quote(exe), agent.name());
    let mut hook = json!({ "type": "command", "command": command });
    if agent == Agent::Gemini {
        hook["name"] = json!(MARK);
    }
    groups.push(json!({ "hooks": [hook] }));
    Ok(Some(json_bytes(v)))
}

fn json_uninstall(v: &mut Value) {
    let Some(hooks) = v.get_mut("hooks").and_then(Value::as_object_mut) else {
        return;
    };
    if let Some(groups) = hooks.get_mut("SessionEnd").and_then(Value::as_array_mut) {
        for g in groups.iter_mut() {
            if let Some(list) = g.get_mut("hooks").and_then(Value::as_array_mut) {
                list.retain(|h| !is_ours_hook(h));
            }
        }
        // Drop the groups we emptied (a group that was empty before keeps nothing of ours).
        groups.retain(|g| {
            g.get("hooks")
                .and_then(Value::as_array)
                .is_none_or(|l| !l.is_empty())
        });
        if groups.is_empty() {
            hooks.remove("SessionEnd");
        }
    }
    if hooks.is_empty() {
        if let Some(o) = v.as_object_mut() {
            o.remove("hooks");
        }
    }
}

// ---- OpenCode: a plugin file ----

fn opencode_plugin(exe: &str) -> String {
    let exe_js = serde_json::to_string(exe).unwrap_or_else(|_| "\"tokenledger\"".into());
    format!(
        "// {MARK}: written by `tokenledger hooks install`; `tokenledger hooks uninstall` removes it.
// When a session goes idle, asks tokenledger for a (throttled, detached) sync.
export const TokenledgerSync = async () => ({{
  event: async ({{ event }}) => {{
    if (event?.type !== \"session.idle\") return;
    try {{
      const {{ spawn }} = await import(\"node:child_process\");
      const child = spawn({exe_js}, [\"hooks\", \"run\", \"--source\", \"opencode\"], {{
        detached: true,
        stdio: \"ignore\",
      }});
      child.on(\"error\", () => {{}});
      child.unref();
    }} catch {{}}
  }},
}});
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_our_commands_only() {
        assert!(is_our_command(&["/usr/bin/tokenledger", "hooks", "run"]));
        assert!(is_our_command(&["'/a b/tokenledger'", "hooks", "notify"]));
        assert!(!is_our_command(&["/usr/bin/notify-send", "hooks", "run"]));
        assert!(!is_our_command(&["tokenledger", "sync"]));
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("/usr/bin/tokenledger"), "/usr/bin/tokenledger");
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
