//! Entry points for the fuzz targets in `fuzz/` (and the `cargo test` that
//! replays their seeds and crash reproducers): each takes arbitrary bytes,
//! runs the crate's own parser on them, and asserts what must hold whatever
//! the input. A panic here is a bug found.
//!
//! The targets call these and nothing else, so the fuzzed code is exactly the
//! code the server, recovery and `sessionlog` run: no copy of a parser lives here.

use std::sync::Arc;

use serde_json::Value;
use ulid::Ulid;

use crate::event::{Event, EventBody, RecordKind};
use crate::fold::Sessions;
use crate::log::record::{self, RecordHeader};
use crate::log::recovery::scan_segment;
use crate::log::segment::SEGMENT_HEADER_LEN;
use crate::sse::resume::{self, ResumeFrom};

/// Segment recovery on arbitrary bytes: [`scan_segment`] and both verdicts.
///
/// The base offset is taken from the header's field (bytes 16..24) when there
/// is one, so mutated real segments get past the header check. Checks that
/// the scan never panics, that its records are contiguous and decode where it
/// says they are, and the recovery invariant: cutting the bytes where a torn
/// tail's verdict says gives a clean segment holding the same complete commits.
pub fn segment_scan(data: &[u8]) {
    let base = data
        .get(16..24)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    let scan = scan_segment(data, base);
    assert!(scan.committed <= scan.records.len());
    assert!(scan.committed_end <= scan.file_len);
    for (i, r) in scan.records.iter().enumerate() {
        assert_eq!(r.offset, base + i as u64);
        let (h, _) = record::decode(&data[r.position as usize..]).expect("scanned records decode");
        assert_eq!(h.frame_len(), r.frame_len as usize);
    }
    let path = std::path::Path::new("fuzz.seg");
    let _ = scan.verdict_as_sealed(path);
    match scan.verdict_as_newest(path) {
        Ok(None) => assert!(scan.is_clean()),
        Ok(Some(torn)) => {
            let kept: Vec<u8> = if torn.header_rewritten {
                crate::log::segment::encode_header(base).to_vec()
            } else {
                assert!(torn.position >= SEGMENT_HEADER_LEN as u64);
                data[..torn.position as usize].to_vec()
            };
            let again = scan_segment(&kept, base);
            assert!(again.is_clean(), "a truncated torn tail must scan clean");
            let expect = if torn.header_rewritten {
                0
            } else {
                scan.committed
            };
            assert_eq!(again.records.len(), expect);
            assert_eq!(again.committed_next(), torn.first_dropped);
        }
        Err(c) => assert!(c.intact_after > 0),
    }
}

/// Record decoding on arbitrary bytes: [`record::decode`], then the event body
/// ([`EventBody::decode`], [`Event::from_record`]). A frame that decodes must
/// re-encode to the same bytes; a body that decodes must survive a round trip.
pub fn record_decode(data: &[u8]) {
    let Ok((h, body)) = record::decode(data) else {
        // The body alone must be just as safe to decode.
        let _ = EventBody::decode(data);
        return;
    };
    let mut again = Vec::new();
    record::encode_into(
        &mut again,
        &RecordHeader {
            body_len: h.body_len,
            ..h
        },
        body,
    );
    assert_eq!(&again[..], &data[..h.frame_len()], "frame round trip");
    if let Ok(b) = EventBody::decode(body) {
        assert_eq!(EventBody::decode(&b.encode()).expect("re-decodes"), b);
    }
    if let Ok(e) = Event::from_record(h.offset, h.key, h.kind, body) {
        let j = e.to_json();
        assert_eq!(j["offset"], h.offset);
        assert_eq!(j["kind"], h.kind.as_str());
    }
}

/// `Last-Event-ID` / `?lastEventId=` / `?after=` / `?at=` parsing on arbitrary
/// text: [`resume::parse_offset`], [`resume::requested`], [`resume::decide`].
///
/// The input is split at the first newline into the header and the query
/// value. An accepted offset must be exactly the trimmed digits it came from,
/// and a resume decision must stay inside the log.
pub fn resume_id(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (header, query) = match text.split_once('\n') {
        Some((h, q)) => (Some(h), Some(q)),
        None => (Some(&*text), None),
    };
    for s in [header, query].into_iter().flatten() {
        if let Some(n) = resume::parse_offset(s) {
            let digits = s.trim_matches(|c| c == ' ' || c == '\t');
            assert!(digits.bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(
                digits.trim_start_matches('0').parse::<u64>().unwrap_or(0),
                n
            );
        }
    }
    let req = resume::requested(header, query);
    // A log holding offsets 10..1000, a session created at 100.
    match resume::decide(req, 100, 10, 1000) {
        ResumeFrom::Init => {}
        ResumeFrom::After(n) => {
            assert!((100..1000).contains(&n));
            assert_eq!(req, Some(Some(n)));
        }
    }
}

/// JSON Merge Patch (RFC 7396) on arbitrary documents, through the fold's
/// own [`Sessions::apply`]: the input is split at the first NUL byte into a
/// document and a patch, both JSON. Applying a merge patch is idempotent, and
/// the result always serializes and parses back to itself.
pub fn merge_patch(data: &[u8]) {
    let (doc, patch) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"{}"[..]),
    };
    let (Ok(doc), Ok(patch)) = (
        serde_json::from_slice::<Value>(doc),
        serde_json::from_slice::<Value>(patch),
    ) else {
        return;
    };
    let id = Ulid(1);
    let event = |offset, kind, json| Event {
        offset,
        session: id,
        kind,
        json: Some(json),
        username: String::new(),
        at_ms: 0,
    };
    let mut sessions = Sessions::new();
    sessions
        .apply(&event(0, RecordKind::Created, doc))
        .expect("a create applies");
    sessions
        .apply(&event(1, RecordKind::Patched, patch.clone()))
        .expect("a patch applies to a live session");
    let once: Arc<Value> = sessions.get(&id).expect("created").data.clone();
    sessions
        .apply(&event(2, RecordKind::Patched, patch))
        .expect("a patch applies to a live session");
    let twice = &sessions.get(&id).expect("created").data;
    assert_eq!(once, *twice, "a merge patch is idempotent");
    let text = serde_json::to_string(&*once).expect("serializes");
    // Deep documents may exceed the parser's recursion limit; those are refused, not broken.
    if let Ok(back) = serde_json::from_str::<Value>(&text) {
        assert_eq!(back, *once);
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Every file under `fuzz/seeds/<target>` and `fuzz/artifacts/<target>`.
    fn inputs(target: &str) -> Vec<PathBuf> {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut files = Vec::new();
        for dir in [
            fuzz.join("seeds").join(target),
            fuzz.join("artifacts").join(target),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries {
                let path = e.expect("listing a seed directory").path();
                if path.is_file() {
                    files.push(path);
                }
            }
        }
        files.sort();
        files
    }

    fn replay(target: &str, f: fn(&[u8])) {
        let files = inputs(target);
        assert!(
            !files.is_empty(),
            "no seeds for {target} under fuzz/seeds/{target}"
        );
        for path in files {
            let bytes = std::fs::read(&path).expect("reading a seed");
            let name = path.display().to_string();
            let caught = std::panic::catch_unwind(|| f(&bytes));
            assert!(caught.is_ok(), "fuzz input {name} fails {target}");
        }
    }

    #[test]
    fn segment_scan_seeds_and_reproducers() {
        replay("segment_scan", super::segment_scan);
    }

    #[test]
    fn record_decode_seeds_and_reproducers() {
        replay("record_decode", super::record_decode);
    }

    #[test]
    fn resume_id_seeds_and_reproducers() {
        replay("resume_id", super::resume_id);
    }

    #[test]
    fn merge_patch_seeds_and_reproducers() {
        replay("merge_patch", super::merge_patch);
    }

    /// The seeds are what their names say, so the fuzzer starts from real
    /// segments and frames, not from bytes the decoder rejects at once.
    #[test]
    fn seeds_are_what_they_claim() {
        use crate::log::recovery::scan_segment;
        let seed = |t: &str, n: &str| {
            std::fs::read(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("fuzz/seeds")
                    .join(t)
                    .join(n),
            )
            .expect("seed exists")
        };
        let clean = scan_segment(&seed("segment_scan", "clean-multi-record-commit"), 0);
        assert!(clean.is_clean());
        assert_eq!(clean.records.len(), 6);
        let torn = scan_segment(&seed("segment_scan", "torn-last-record"), 0);
        assert_eq!(torn.committed, 3, "the three-record commit is torn");
        let later = scan_segment(&seed("segment_scan", "later-commit-after-damage"), 0);
        assert!(later.verdict_as_newest(Path::new("x")).is_err());
        assert!(scan_segment(&seed("segment_scan", "base-7-one-record"), 7).is_clean());
        for n in ["created", "patched-mid-commit", "deleted"] {
            let bytes = seed("record_decode", n);
            let (h, body) = crate::log::record::decode(&bytes).expect("a valid frame");
            crate::event::Event::from_record(h.offset, h.key, h.kind, body).expect("a valid body");
        }
    }
}
