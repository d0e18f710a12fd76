//! Failpoints for crash tests, driven by `TOKENLEDGER_FAILPOINT`.
//!
//! The variable holds comma-separated `name[:nth]:action` items. `name` is one of `scan` (after
//! each file a scan read), `emit` (after the outbox was filled), `before_upload`,
//! `after_upload` (the server answered 200, nothing acknowledged yet) and `after_ack`; `nth`
//! (default 1) is which hit of that point in this process fires; `action` is `abort` (the
//! process dies at once, as in a crash), `exit` (exit code 86) or `pause` (prints
//! `tokenledger: failpoint NAME paused` on stderr and waits to be killed). Unset, every
//! failpoint costs one relaxed atomic load.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The environment variable read once per process.
pub const ENV: &str = "TOKENLEDGER_FAILPOINT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Abort,
    Exit,
    Pause,
}

struct Points {
    armed: HashMap<String, (u64, Action)>,
    hits: Mutex<HashMap<String, u64>>,
}

static POINTS: OnceLock<Points> = OnceLock::new();
static ANY: AtomicU64 = AtomicU64::new(u64::MAX);

fn parse(spec: &str) -> HashMap<String, (u64, Action)> {
    let mut armed = HashMap::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let parts: Vec<&str> = item.split(':').collect();
        let (name, nth, action) = match parts.as_slice() {
            [name, action] => (*name, 1, *action),
            [name, nth, action] => (*name, nth.parse().unwrap_or(1), *action),
            _ => continue,
        };
        let action = match action {
            "abort" => Action::Abort,
            "exit" => Action::Exit,
            "pause" => Action::Pause,
            _ => continue,
        };
        armed.insert(name.to_string(), (nth.max(1), action));
    }
    armed
}

fn points() -> &'static Points {
    POINTS.get_or_init(|| {
        let armed = std::env::var(ENV).map(|s| parse(&s)).unwrap_or_default();
        ANY.store(armed.len() as u64, Ordering::Relaxed);
        Points {
            armed,
            hits: Mutex::new(HashMap::new()),
        }
    })
}

/// Passes the failpoint `name`; fires when armed for this hit.
pub fn hit(name: &str) {
    if ANY.load(Ordering::Relaxed) == 0 {
        return;
    }
    let p = points();
    let Some(&(nth, action)) = p.armed.get(name) else {
        return;
    };
    let n = {
        let mut hits = p.hits.lock().unwrap_or_else(|e| e.into_inner());
        let n = hits.entry(name.to_string()).or_insert(0);
        *n += 1;
        *n
    };
    if n != nth {
        return;
    }
    match action {
        Action::Abort => std::process::abort(),
        Action::Exit => std::process::exit(86),
        Action::Pause => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "tokenledger: failpoint {name} paused");
            let _ = err.flush();
            drop(err);
            loop {
                std::thread::park();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_items() {
        let m = parse("after_upload:abort, scan:3:pause,bad,emit:x:exit,z:1:nope");
        assert_eq!(m.get("after_upload"), Some(&(1, Action::Abort)));
        assert_eq!(m.get("scan"), Some(&(3, Action::Pause)));
        assert_eq!(m.get("emit"), Some(&(1, Action::Exit)));
        assert_eq!(m.len(), 3);
    }
}
