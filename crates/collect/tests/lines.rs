//! The line reader against a naive split of the same bytes: lines that straddle read chunks,
//! long lines that grow the buffer, CRLF, blank lines, torn last lines, offsets, and the head.

use proptest::prelude::*;
use tokenledger_collect::lines::{for_each_line, head_hash, HEAD_LEN};
use tokenledger_collect::SkipReason;

/// What a reader must pass on: complete non-blank lines from `offset`, without `\r\n`.
fn naive(data: &[u8], offset: usize) -> (Vec<Vec<u8>>, u64, bool) {
    let rest = &data[offset..];
    let end = rest.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let lines = rest[..end]
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).to_vec())
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    let torn = !rest[end..].iter().all(u8::is_ascii_whitespace);
    (lines, (offset + end) as u64, torn)
}

fn read(
    data: &[u8],
    offset: u64,
) -> (
    Vec<Vec<u8>>,
    tokenledger_collect::lines::LinesRead,
    Vec<SkipReason>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    std::fs::write(&path, data).unwrap();
    let mut lines = Vec::new();
    let mut skipped = Vec::new();
    let r = for_each_line(&path, offset, &mut skipped, |l| lines.push(l.to_vec()));
    (lines, r, skipped.iter().map(|s| s.reason).collect())
}

fn content() -> impl Strategy<Value = Vec<u8>> {
    // Lines of very different lengths (some longer than the 256 KiB read chunk), with CRLF,
    // blank lines and maybe no final newline.
    let line = prop_oneof![
        4 => proptest::collection::vec(b'a'..=b'z', 0..200),
        1 => (1usize..700_000).prop_map(|n| vec![b'x'; n]),
        1 => Just(b"  ".to_vec()),
    ];
    (
        proptest::collection::vec((line, any::<bool>()), 0..40),
        any::<bool>(),
    )
        .prop_map(|(lines, newline_at_end)| {
            let mut out = Vec::new();
            for (l, crlf) in lines {
                out.extend_from_slice(&l);
                out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
            }
            if !newline_at_end {
                out.extend_from_slice(b"torn");
            }
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn same_lines_as_a_naive_split(data in content(), cut in 0.0f64..1.0) {
        // Resume from a line boundary, as the ledger does.
        let starts: Vec<usize> = std::iter::once(0)
            .chain(data.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1))
            .collect();
        let offset = starts[((starts.len() - 1) as f64 * cut) as usize];
        let (want, want_end, torn) = naive(&data, offset);
        let (got, r, skipped) = read(&data, offset as u64);
        prop_assert_eq!(got, want);
        prop_assert_eq!(r.offset, want_end);
        prop_assert_eq!(r.read, (data.len() - offset) as u64);
        prop_assert_eq!(skipped.contains(&SkipReason::TornLastLine), torn);
        if offset == 0 && want_end > 0 {
            let len = want_end.min(HEAD_LEN);
            let want = Some((len, head_hash(&data[..len as usize])));
            // A short head behind a long torn line may be left to the caller to hash.
            if want_end >= HEAD_LEN || data.len() <= 256 * 1024 {
                prop_assert_eq!(r.head, want);
            } else {
                prop_assert!(r.head.is_none() || r.head == want);
            }
        } else if offset > 0 {
            prop_assert_eq!(r.head, None);
        }
    }
}

#[test]
fn a_line_longer_than_the_limit_is_skipped_and_the_next_one_read() {
    let mut data = vec![b'{'; tokenledger_collect::lines::MAX_LINE + 10];
    data.extend_from_slice(b"\n{\"ok\":1}\n");
    let (lines, r, skipped) = read(&data, 0);
    assert_eq!(lines, vec![b"{\"ok\":1}".to_vec()]);
    assert_eq!(skipped, vec![SkipReason::TooLong]);
    assert_eq!(r.offset, data.len() as u64);
}

#[test]
fn a_line_of_exactly_the_limit_is_read() {
    let mut data = vec![b'x'; tokenledger_collect::lines::MAX_LINE];
    data.push(b'\n');
    let (lines, _, skipped) = read(&data, 0);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].len(), tokenledger_collect::lines::MAX_LINE);
    assert!(skipped.is_empty());
}

#[test]
fn a_directory_or_a_missing_file_is_reported_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("x.jsonl");
    std::fs::create_dir(&sub).unwrap();
    for path in [sub, dir.path().join("missing.jsonl")] {
        let mut skipped = Vec::new();
        let r = for_each_line(&path, 0, &mut skipped, |_| panic!("no lines"));
        assert_eq!((r.offset, r.read), (0, 0));
        assert_eq!(
            skipped.iter().map(|s| s.reason).collect::<Vec<_>>(),
            vec![SkipReason::Unreadable]
        );
    }
}
