//! Times the collectors alone (discover + scan every file, one thread), without the ledger:
//! `HOME=<corpus> cargo run --release -p tokenledger-collect --example parseonly`.
use tokenledger_collect::{all_collectors, Env};
fn main() {
    let env = Env::from_process();
    for c in all_collectors() {
        let t = std::time::Instant::now();
        let files = c.discover(&env);
        let td = t.elapsed();
        let (mut bytes, mut events) = (0u64, 0usize);
        for f in &files {
            let s = c.scan(f, 0, "");
            bytes += s.bytes_read;
            events += s.events.len();
        }
        eprintln!(
            "{:<10} {} files, discover {:?}, scan {:?}, {} MB, {} events",
            c.source().as_str(),
            files.len(),
            td,
            t.elapsed() - td,
            bytes / 1_000_000,
            events
        );
    }
}
