use tokenledger_collect::{all_collectors, Env};
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let mut l = tokenledger_ledger::Ledger::open_in(std::path::Path::new(&dir)).unwrap();
    let t = std::time::Instant::now();
    let r = l
        .scan(
            &all_collectors(),
            &Env::from_process(),
            &tokenledger_ledger::NoProgress,
        )
        .unwrap();
    eprintln!(
        "scan {:?} files {} bytes {} entries {}",
        t.elapsed(),
        r.files_read,
        r.bytes_read,
        r.entries_written
    );
}
