//! `tokenledger hooks ...` through the real binary on a temporary home.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tokenledger");

fn run(home: &Path, data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("TOKENLEDGER_HOME", data)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

const CODEX: &str = "model = \"gpt-5\"\nnotify = [\"python3\", \"/home/u/notify.py\"]\n";
const CLAUDE: &str = "{\n    \"model\": \"sonnet\"\n}\n";

#[test]
fn install_reinstall_status_uninstall_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(home.join(".codex")).unwrap();
    std::fs::create_dir_all(home.join(".claude")).unwrap();
    std::fs::write(home.join(".codex/config.toml"), CODEX).unwrap();
    std::fs::write(home.join(".claude/settings.json"), CLAUDE).unwrap();

    let out = run(&home, &data, &["hooks", "install"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("codex       installed"), "{s}");
    assert!(s.contains("claude      installed"), "{s}");
    assert!(s.contains("gemini      skipped (agent not found)"), "{s}");
    let codex_after = std::fs::read_to_string(home.join(".codex/config.toml")).unwrap();
    assert!(
        codex_after.contains(&format!(
            "notify = [\"{BIN}\", \"hooks\", \"notify\", \"--source\", \"codex\", \"--chain\", \"python3\", \"/home/u/notify.py\"]"
        )),
        "{codex_after}"
    );

    let out = run(&home, &data, &["hooks", "install"]);
    let s = text(&out.stdout);
    assert!(s.contains("codex       already installed"), "{s}");
    assert!(s.contains("claude      already installed"), "{s}");
    assert_eq!(
        std::fs::read_to_string(home.join(".codex/config.toml")).unwrap(),
        codex_after
    );

    let out = run(&home, &data, &["hooks", "status"]);
    let s = text(&out.stdout);
    assert!(s.contains("codex       installed"), "{s}");
    assert!(s.contains("claude      installed"), "{s}");
    assert!(s.contains("opencode    agent not found"), "{s}");
    let out = run(&home, &data, &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["hooks"][0]["agent"], "codex");
    assert_eq!(v["hooks"][0]["installed"], true);

    let out = run(&home, &data, &["hooks", "uninstall"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(home.join(".codex/config.toml")).unwrap(),
        CODEX
    );
    assert_eq!(
        std::fs::read_to_string(home.join(".claude/settings.json")).unwrap(),
        CLAUDE
    );
    let out = run(&home, &data, &["hooks", "install", "--agent", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unknown agent \"nope\""));
}

#[test]
fn hook_commands_never_fail_and_throttle() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&home).unwrap();

    // Not logged in: nothing to do, still exit 0 and silent.
    let out = run(&home, &data, &["hooks", "run", "--source", "claude"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    assert!(!data.join("hook-sync.stamp").exists());

    // Logged in (to a server that is not there): the first run starts a sync, the second is
    // throttled. Neither fails.
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("config.toml"),
        "server = \"http://127.0.0.1:9\"\ndevice_id = \"1\"\ndevice_token = \"tld_x\"\n",
    )
    .unwrap();
    let out = run(&home, &data, &["hooks", "run", "--source", "claude"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let stamp = std::fs::read_to_string(data.join("hook-sync.stamp")).unwrap();
    let out = run(&home, &data, &["hooks", "run"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(data.join("hook-sync.stamp")).unwrap(),
        stamp,
        "throttled: no second sync"
    );

    // Codex's notify with a chained command and the payload Codex appends: exit 0 even when
    // the chained program does not exist.
    let out = run(
        &home,
        &data,
        &[
            "hooks",
            "notify",
            "--source",
            "codex",
            "--chain",
            "/nonexistent/notifier",
            "{\"type\":\"agent-turn-complete\"}",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("chained notify command failed to start"));
}
