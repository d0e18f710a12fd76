//! How fast SQLite takes entry rows here (a yardstick for the scan's writer).
use rusqlite::{params, Connection};
fn main() {
    for (name, idx, sorted) in [
        ("plain", false, false),
        ("grp index", true, false),
        ("grp index, sorted", true, true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("x.db")).unwrap();
        conn.execute_batch("PRAGMA page_size=16384; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-16384;").unwrap();
        conn.execute_batch("CREATE TABLE entries (id INTEGER PRIMARY KEY, source TEXT NOT NULL, model TEXT NOT NULL, ts INTEGER NOT NULL, hour_start INTEGER NOT NULL, dim INTEGER NOT NULL, input INTEGER NOT NULL, cached INTEGER NOT NULL, cache_creation INTEGER NOT NULL, output INTEGER NOT NULL, reasoning INTEGER NOT NULL, total INTEGER NOT NULL, grp INTEGER, replay INTEGER NOT NULL DEFAULT 0);").unwrap();
        if idx {
            conn.execute_batch("CREATE INDEX entries_grp ON entries (grp) WHERE grp IS NOT NULL;")
                .unwrap();
        }
        let mut keys: Vec<i64> = (0..112_000u64)
            .map(|i| xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()) as i64)
            .collect();
        if sorted {
            keys.sort();
        }
        let t = std::time::Instant::now();
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut st = tx.prepare("INSERT OR IGNORE INTO entries VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14)").unwrap();
            for (i, k) in keys.iter().enumerate() {
                st.execute(params![
                    k,
                    "claude",
                    "claude-sonnet-4-5-20250929",
                    1_700_000_000 + i as i64,
                    1_700_000_000i64,
                    5,
                    1000,
                    500,
                    20,
                    300,
                    0,
                    1820,
                    k.wrapping_mul(3),
                    0
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
        eprintln!("{name}: {:?}", t.elapsed());
    }
}
