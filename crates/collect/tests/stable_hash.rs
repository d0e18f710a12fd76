//! `stable_hash` names everything the ledger stores by hash (cursor keys, usage keys): it must
//! never change. It is checked here against the streaming form it was first written as.

use proptest::prelude::*;
use tokenledger_collect::stable_hash;

/// The first form: each part's length, then the part, streamed into one xxh3 state.
fn streamed(parts: &[&[u8]]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.digest()
}

proptest! {
    #[test]
    fn equals_the_streamed_form(parts in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..700), 0..5)) {
        let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(stable_hash(&parts), streamed(&parts));
    }
}

#[test]
fn equals_the_streamed_form_around_the_short_limit() {
    let long = vec![b'x'; 600];
    for n in [0, 1, 480, 487, 488, 489, 495, 496, 497, 504, 505, 600] {
        let parts: [&[u8]; 2] = [b"claude", &long[..n]];
        assert_eq!(stable_hash(&parts), streamed(&parts), "path of {n} bytes");
    }
    assert_eq!(stable_hash(&[]), streamed(&[]));
}
