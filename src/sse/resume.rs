//! Where a subscriber starts: `Last-Event-ID` / `?lastEventId=` → [`ResumeFrom`].
//!
//! The rules, decided once and shared with `?after=` / `?at=` through
//! [`parse_offset`]:
//! - an offset is plain ASCII decimal digits, at most 20, fitting a `u64`;
//!   leading zeros are allowed (`05` = 5); a sign, spaces inside, `0x`, `1e3`,
//!   `5.0` or non-ASCII digits are malformed. Surrounding spaces and tabs are
//!   trimmed (HTTP optional whitespace), so ` 5 ` = 5;
//! - the header wins over the query parameter; an empty header counts as absent;
//! - a resume id is honoured when the session's `created` event is at or
//!   before it, it is below the log's durable end, and the log still holds
//!   what follows it. Anything else (malformed, from the future, older than
//!   the session or than the log) gets a fresh `init`. Offsets are global, so
//!   an id that belongs to another session but lies inside this session's
//!   lifetime is valid: the events of this session after it are replayed.

use crate::log::Offset;

/// How a subscriber starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFrom {
    /// Send `init` with the current state, then live events.
    Init,
    /// Replay this session's events with a greater offset, then live events.
    After(Offset),
}

/// Parses an offset written by a client (see the module doc for the rules).
pub fn parse_offset(text: &str) -> Option<Offset> {
    let t = text.trim_matches(|c| c == ' ' || c == '\t');
    if t.is_empty() || t.len() > 20 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// What the client asked for: the header if present and non-empty, else the
/// query parameter. `None` = no resume id at all; `Some(None)` = malformed.
pub fn requested(header: Option<&str>, query: Option<&str>) -> Option<Option<Offset>> {
    let raw = match header.filter(|h| !h.trim().is_empty()) {
        Some(h) => h,
        None => query.filter(|q| !q.trim().is_empty())?,
    };
    Some(parse_offset(raw))
}

/// Decides where the subscriber of a session created at `created` starts,
/// given the log's first offset and durable end.
pub fn decide(
    requested: Option<Option<Offset>>,
    created: Offset,
    first_offset: Offset,
    durable_end: Offset,
) -> ResumeFrom {
    match requested {
        Some(Some(id))
            if id >= created && id < durable_end && id.saturating_add(1) >= first_offset =>
        {
            ResumeFrom::After(id)
        }
        _ => ResumeFrom::Init,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_strictly() {
        assert_eq!(parse_offset("5"), Some(5));
        assert_eq!(parse_offset("05"), Some(5));
        assert_eq!(parse_offset(" 5 "), Some(5));
        assert_eq!(parse_offset("\t5"), Some(5));
        assert_eq!(parse_offset("18446744073709551615"), Some(u64::MAX));
        for bad in [
            "",
            " ",
            "-1",
            "+5",
            "abc",
            "5.0",
            "0x5",
            "1e3",
            "5 5",
            "５",
            "18446744073709551616",
            "\u{0}5",
            "5\n",
        ] {
            assert_eq!(parse_offset(bad), None, "{bad:?}");
        }
        assert_eq!(parse_offset(&"9".repeat(10_000)), None);
    }

    #[test]
    fn header_wins_and_empty_is_absent() {
        assert_eq!(requested(None, None), None);
        assert_eq!(requested(Some(""), None), None);
        assert_eq!(requested(Some(""), Some("3")), Some(Some(3)));
        assert_eq!(requested(Some("7"), Some("3")), Some(Some(7)));
        assert_eq!(requested(Some("x"), Some("3")), Some(None));
        assert_eq!(requested(None, Some("abc")), Some(None));
    }

    #[test]
    fn decisions() {
        // Session created at 10, log holds 0..50.
        let d = |r| decide(r, 10, 0, 50);
        assert_eq!(d(None), ResumeFrom::Init);
        assert_eq!(d(Some(None)), ResumeFrom::Init);
        assert_eq!(d(Some(Some(9))), ResumeFrom::Init, "older than the session");
        assert_eq!(d(Some(Some(10))), ResumeFrom::After(10));
        assert_eq!(d(Some(Some(49))), ResumeFrom::After(49));
        assert_eq!(d(Some(Some(50))), ResumeFrom::Init, "from the future");
        assert_eq!(d(Some(Some(u64::MAX))), ResumeFrom::Init);
        // The log no longer holds offsets below 30.
        assert_eq!(decide(Some(Some(20)), 10, 30, 50), ResumeFrom::Init);
        assert_eq!(decide(Some(Some(29)), 10, 30, 50), ResumeFrom::After(29));
    }
}
