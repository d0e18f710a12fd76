//! `tokenledger login --code`: a one-time login link registers a machine, once.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tokenledger"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

fn run(home: &Path, args: &[&str]) -> Output {
    bin()
        .args(args)
        .env("HOME", home)
        .env("TOKENLEDGER_HOME", home.join("tl"))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_healthy(url: &str) {
    for _ in 0..400 {
        if let Ok(r) = reqwest::blocking::get(format!("{url}/healthz")) {
            if r.status().is_success() {
                return;
            }
        }
        std::thread::park_timeout(std::time::Duration::from_millis(25));
    }
    panic!("server at {url} did not become healthy");
}

#[test]
fn a_login_link_registers_a_machine_once() {
    let server_home = tempfile::tempdir().unwrap();
    let client_home = tempfile::tempdir().unwrap();
    let other_home = tempfile::tempdir().unwrap();
    let out = run(server_home.path(), &["admin", "create-user", "alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = Server(
        bin()
            .args([
                "serve",
                "--bind",
                &format!("127.0.0.1:{port}"),
                "--no-local-sync",
            ])
            .env("HOME", server_home.path())
            .env("TOKENLEDGER_HOME", server_home.path().join("tl"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_healthy(&url);
    let out = run(
        server_home.path(),
        &["admin", "login-link", "alice", "--base-url", &url],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(link.starts_with(&format!("{url}/login/")), "{link}");

    let out = run(
        client_home.path(),
        &[
            "login", "--server", &url, "--code", &link, "--name", "laptop",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = std::fs::read_to_string(client_home.path().join("tl/config.toml")).unwrap();
    assert!(config.contains("tld_"), "device token stored");

    // The same link does not work twice.
    let out = run(
        other_home.path(),
        &[
            "login", "--server", &url, "--code", &link, "--name", "thief",
        ],
    );
    assert!(!out.status.success());
    assert!(!other_home.path().join("tl/config.toml").exists());
}
