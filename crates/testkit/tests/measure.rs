//! The benchmarks' timing helper: it runs the command with its own streams, hands back the
//! command's exit code, and writes `wall_seconds max_rss_kib exit_code`.

use std::process::Command;

fn measure(args: &[&str]) -> (i32, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.txt");
    let status = Command::new(env!("CARGO_BIN_EXE_tokenledger-measure"))
        .arg("--out")
        .arg(&out)
        .arg("--")
        .args(args)
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let fields = text.split_whitespace().map(str::to_string).collect();
    (status.code().unwrap(), fields)
}

#[cfg(unix)]
#[test]
fn the_command_s_exit_code_time_and_memory_are_reported() {
    let (code, f) = measure(&["sh", "-c", "exit 3"]);
    assert_eq!(code, 3);
    assert_eq!(f.len(), 3, "{f:?}");
    assert_eq!(f[2], "3");
    let wall: f64 = f[0].parse().unwrap();
    assert!(wall > 0.0 && wall < 60.0, "{wall}");
    let rss: i64 = f[1].parse().unwrap();
    assert!(rss > 0, "{rss}");
    // Arguments that look like options belong to the command.
    let (code, f) = measure(&["sh", "-c", "test \"$1\" = --out", "sh", "--out"]);
    assert_eq!((code, f[2].as_str()), (0, "0"));
}
