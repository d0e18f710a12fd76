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

/// Logs read one after another inside `with_folder_reuse` are opened by name in their folder
/// from the second one on: each still reads its own bytes, whatever the order of folders, a
/// name that is a folder or missing is reported unreadable, and a folder replaced after the
/// reuse ended is looked up afresh.
#[test]
fn logs_opened_by_name_in_a_reused_folder_read_their_own_bytes() {
    use tokenledger_collect::lines::with_folder_reuse;
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(a.join("sub.jsonl")).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let files: Vec<std::path::PathBuf> = ["a/1.jsonl", "a/2.jsonl", "a/3.jsonl", "b/1.jsonl"]
        .iter()
        .map(|p| dir.path().join(p))
        .collect();
    for f in &files {
        std::fs::write(f, format!("{}\n", f.display())).unwrap();
    }
    let read_one = |path: &std::path::Path| {
        let mut lines = Vec::new();
        let mut skipped = Vec::new();
        for_each_line(path, 0, &mut skipped, |l| {
            lines.push(String::from_utf8(l.to_vec()).unwrap())
        });
        (lines, skipped.iter().map(|s| s.reason).collect::<Vec<_>>())
    };
    let order = [0, 1, 2, 3, 0, 2, 1];
    let got: Vec<_> = with_folder_reuse(|| order.iter().map(|&i| read_one(&files[i])).collect());
    for (&i, (lines, skipped)) in order.iter().zip(&got) {
        assert_eq!(lines, &vec![files[i].display().to_string()], "file {i}");
        assert!(skipped.is_empty(), "file {i}: {skipped:?}");
    }
    let (odd, missing) = with_folder_reuse(|| {
        read_one(&files[0]);
        (
            read_one(&a.join("sub.jsonl")),
            read_one(&a.join("gone.jsonl")),
        )
    });
    assert_eq!(odd, (vec![], vec![SkipReason::Unreadable]));
    assert_eq!(missing, (vec![], vec![SkipReason::Unreadable]));
    // The folder `a` is replaced by another one with other contents.
    std::fs::rename(&a, dir.path().join("old")).unwrap();
    std::fs::create_dir_all(&a).unwrap();
    std::fs::write(&files[0], "new\n").unwrap();
    std::fs::write(&files[1], "new too\n").unwrap();
    let got = with_folder_reuse(|| (read_one(&files[0]), read_one(&files[1])));
    assert_eq!(got.0 .0, vec!["new".to_string()]);
    assert_eq!(got.1 .0, vec!["new too".to_string()]);
}
