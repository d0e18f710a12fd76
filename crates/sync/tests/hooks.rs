//! Hook installers on temporary homes with existing configs: install, re-install (nothing
//! added), status, uninstall restoring the original bytes.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use tokenledger_collect::Env;
use tokenledger_sync::hooks::{self, backup_path, Agent, Outcome};

const EXE: &str = "/opt/tokenledger/bin/tokenledger";

fn env(home: &Path) -> Env {
    Env {
        home: home.to_path_buf(),
        vars: HashMap::new(),
    }
}

const CODEX_CONFIG: &str = r#"# my codex config
model = "gpt-5-codex"   # the default
notify = ["notify-send", "--app-name", "Codex"]  # desktop pings

[profiles.fast]
model = "gpt-5-mini"
"#;

const CLAUDE_SETTINGS: &str = r#"{
  "model": "opus",
  "permissions": { "allow": ["Bash(ls:*)"] },
  "hooks": {
    "SessionEnd": [
      { "hooks": [ { "type": "command", "command": "~/bin/log-session.sh" } ] }
    ],
    "Stop": [ { "hooks": [ { "type": "command", "command": "say done" } ] } ]
  }
}
"#;

const GEMINI_SETTINGS: &str = "{\"theme\": \"GitHub\", \"general\": {\"vimMode\": true}}\n";

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn installed(agent: Agent, e: &Env) -> bool {
    hooks::status(agent, e).unwrap().installed
}

#[test]
fn codex_notify_is_chained_and_restored_exactly() {
    let home = tempfile::tempdir().unwrap();
    let e = env(home.path());
    let path = home.path().join(".codex/config.toml");
    write(&path, CODEX_CONFIG);
    assert!(!installed(Agent::Codex, &e));
    assert!(hooks::status(Agent::Codex, &e).unwrap().agent_found);

    let out = hooks::install(Agent::Codex, &e, Path::new(EXE)).unwrap();
    assert_eq!(
        out,
        Outcome::Installed {
            backup: Some(backup_path(&path))
        }
    );
    assert_eq!(
        fs::read_to_string(backup_path(&path)).unwrap(),
        CODEX_CONFIG
    );
    let text = fs::read_to_string(&path).unwrap();
    let doc: toml_edit::DocumentMut = text.parse().unwrap();
    let argv: Vec<&str> = doc["notify"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        argv,
        [
            EXE,
            "hooks",
            "notify",
            "--source",
            "codex",
            "--chain",
            "notify-send",
            "--app-name",
            "Codex"
        ]
    );
    // Everything else is kept byte for byte.
    assert!(text.starts_with("# my codex config\nmodel = \"gpt-5-codex\"   # the default\n"));
    assert!(text.contains("  # desktop pings\n"));
    assert!(text.ends_with("[profiles.fast]\nmodel = \"gpt-5-mini\"\n"));
    assert!(installed(Agent::Codex, &e));

    // Re-install: nothing changes, the chain is not wrapped twice.
    assert_eq!(
        hooks::install(Agent::Codex, &e, Path::new(EXE)).unwrap(),
        Outcome::AlreadyInstalled
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), text);

    assert_eq!(
        hooks::uninstall(Agent::Codex, &e).unwrap(),
        Outcome::Restored
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), CODEX_CONFIG);
    assert!(!backup_path(&path).exists());
    assert!(!installed(Agent::Codex, &e));
    assert_eq!(
        hooks::uninstall(Agent::Codex, &e).unwrap(),
        Outcome::NotInstalled
    );
}

#[test]
fn codex_without_notify_and_user_edits_after_install() {
    let home = tempfile::tempdir().unwrap();
    let mut e = env(home.path());
    let code_home = home.path().join("code-home");
    e.vars
        .insert("CODE_HOME".into(), code_home.to_string_lossy().into());
    let path = code_home.join("config.toml");
    write(&path, "model = \"o3\"\n");
    hooks::install(Agent::EveryCode, &e, Path::new(EXE)).unwrap();
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        format!("model = \"o3\"\nnotify = [\"{EXE}\", \"hooks\", \"notify\", \"--source\", \"every-code\"]\n")
    );
    // The user edits the file after installing: uninstall keeps the edit and the backup.
    fs::write(&path, format!("{text}approval_policy = \"never\"\n")).unwrap();
    let out = hooks::uninstall(Agent::EveryCode, &e).unwrap();
    assert_eq!(
        out,
        Outcome::Removed {
            backup: Some(backup_path(&path))
        }
    );
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "model = \"o3\"\napproval_policy = \"never\"\n"
    );
}

#[test]
fn claude_session_end_hook_keeps_other_hooks_and_restores_bytes() {
    let home = tempfile::tempdir().unwrap();
    let e = env(home.path());
    let path = home.path().join(".claude/settings.json");
    write(&path, CLAUDE_SETTINGS);

    hooks::install(Agent::Claude, &e, Path::new("/a dir/tokenledger")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let groups = v["hooks"]["SessionEnd"].as_array().unwrap();
    assert_eq!(groups.len(), 2);
    assert_eq!(groups[0]["hooks"][0]["command"], "~/bin/log-session.sh");
    assert_eq!(
        groups[1]["hooks"][0],
        serde_json::json!({"type": "command", "command": "'/a dir/tokenledger' hooks run --source claude"})
    );
    assert_eq!(v["hooks"]["Stop"][0]["hooks"][0]["command"], "say done");
    assert_eq!(v["model"], "opus");
    let after_first = fs::read(&path).unwrap();

    assert_eq!(
        hooks::install(Agent::Claude, &e, Path::new("/a dir/tokenledger")).unwrap(),
        Outcome::AlreadyInstalled
    );
    assert_eq!(fs::read(&path).unwrap(), after_first);
    assert!(installed(Agent::Claude, &e));

    assert_eq!(
        hooks::uninstall(Agent::Claude, &e).unwrap(),
        Outcome::Restored
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), CLAUDE_SETTINGS);
    assert!(!installed(Agent::Claude, &e));
}

#[test]
fn gemini_hook_and_a_settings_file_we_created() {
    let home = tempfile::tempdir().unwrap();
    let e = env(home.path());
    let path = home.path().join(".gemini/settings.json");
    write(&path, GEMINI_SETTINGS);
    hooks::install(Agent::Gemini, &e, Path::new(EXE)).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        v["hooks"]["SessionEnd"][0]["hooks"][0],
        serde_json::json!({
            "name": "tokenledger-hook", "type": "command",
            "command": format!("{EXE} hooks run --source gemini")
        })
    );
    assert_eq!(v["general"]["vimMode"], true);
    hooks::uninstall(Agent::Gemini, &e).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), GEMINI_SETTINGS);

    // No settings file at all: install creates one, uninstall removes it again.
    let home2 = tempfile::tempdir().unwrap();
    let e2 = env(home2.path());
    let p2 = home2.path().join(".claude/settings.json");
    assert!(!hooks::status(Agent::Claude, &e2).unwrap().agent_found);
    assert_eq!(
        hooks::install(Agent::Claude, &e2, Path::new(EXE)).unwrap(),
        Outcome::Installed { backup: None }
    );
    assert!(p2.exists());
    assert_eq!(
        hooks::uninstall(Agent::Claude, &e2).unwrap(),
        Outcome::Restored
    );
    assert!(!p2.exists());
}

#[test]
fn opencode_plugin_file() {
    let home = tempfile::tempdir().unwrap();
    let mut e = env(home.path());
    let xdg: PathBuf = home.path().join("xdg");
    e.vars
        .insert("XDG_CONFIG_HOME".into(), xdg.to_string_lossy().into());
    let path = xdg.join("opencode/plugin/tokenledger.js");
    hooks::install(Agent::OpenCode, &e, Path::new(EXE)).unwrap();
    let js = fs::read_to_string(&path).unwrap();
    assert!(js.contains(&format!(
        "spawn(\"{EXE}\", [\"hooks\", \"run\", \"--source\", \"opencode\"]"
    )));
    assert!(js.contains("session.idle"));
    assert_eq!(
        hooks::install(Agent::OpenCode, &e, Path::new(EXE)).unwrap(),
        Outcome::AlreadyInstalled
    );
    assert!(installed(Agent::OpenCode, &e));
    assert_eq!(
        hooks::uninstall(Agent::OpenCode, &e).unwrap(),
        Outcome::Restored
    );
    assert!(!path.exists());

    // A plugin of the same name that is not ours is left alone.
    write(&path, "export const Mine = async () => ({});\n");
    assert!(matches!(
        hooks::install(Agent::OpenCode, &e, Path::new(EXE)),
        Err(hooks::HookError::Foreign { .. })
    ));
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "export const Mine = async () => ({});\n"
    );
}

#[test]
fn broken_configs_are_left_untouched() {
    let home = tempfile::tempdir().unwrap();
    let e = env(home.path());
    let codex = home.path().join(".codex/config.toml");
    write(&codex, "notify = [\n");
    assert!(matches!(
        hooks::install(Agent::Codex, &e, Path::new(EXE)),
        Err(hooks::HookError::Parse { .. })
    ));
    assert_eq!(fs::read_to_string(&codex).unwrap(), "notify = [\n");
    let claude = home.path().join(".claude/settings.json");
    write(&claude, "{\"hooks\": [1, 2]}");
    assert!(hooks::install(Agent::Claude, &e, Path::new(EXE)).is_err());
    assert_eq!(fs::read_to_string(&claude).unwrap(), "{\"hooks\": [1, 2]}");
    assert!(!backup_path(&claude).exists());
}
