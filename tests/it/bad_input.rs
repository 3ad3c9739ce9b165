//! Hostile and odd requests (issue 5; cases 3, 8, 30): a table of requests,
//! each sent as raw bytes over TCP (so nothing normalizes paths, headers or
//! bodies on the way), each with the documented answer: a 4xx
//! `{"error","message"}` with the listed status, never a 5xx, or — for a
//! resume id the server cannot honour — a fresh `init` (DESIGN: a malformed,
//! future or too old `Last-Event-ID` gets `init`). Afterwards the log's next
//! offset is unchanged and the sessions are as they were.

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{TestServer, DEADLINE};

/// What a row must get.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// This status with the `{"error","message"}` body.
    Error(u16),
    /// A 200 event stream that starts with a fresh `init`.
    Init,
}

struct Row {
    what: String,
    request: Vec<u8>,
    want: Want,
}

/// A raw HTTP/1.1 request with `Connection: close`; `Content-Length` is added
/// for a body unless the row sets its own.
fn request(method: &str, target: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    let own_length = headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"));
    if let Some(b) = body {
        if !own_length {
            out.push_str(&format!("Content-Length: {}\r\n", b.len()));
        }
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    bytes
}

const JSON: (&str, &str) = ("Content-Type", "application/json");

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(b, b"\r\n") {
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// Sends the request (writing concurrently with reading, so an early answer
/// to an oversized body is still read) and reads the answer: to the end for
/// ordinary responses, up to the first `init` block for an event stream.
async fn send(addr: std::net::SocketAddr, req: Vec<u8>) -> Answer {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let writing = tokio::spawn(async move {
        // The server may answer and close before the whole body is sent.
        let _ = wr.write_all(&req).await;
        wr
    });
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(h) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h]).to_lowercase();
            if head.contains("text/event-stream")
                && find(&buf[h..], b"event: init")
                    .is_some_and(|i| find(&buf[h + i..], b"\n\n").is_some())
            {
                break;
            }
        }
        match tokio::time::timeout_at(deadline, rd.read(&mut chunk)).await {
            Err(_) => panic!(
                "no complete answer within {DEADLINE:?}; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if !buf.is_empty() => {
                eprintln!("read error after {} bytes: {e}", buf.len());
                break;
            }
            Ok(Err(e)) => panic!("no answer: {e}"),
        }
    }
    writing.abort();
    let h = find(&buf, b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..h]).to_string();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line: {head}"));
    let mut body = buf[h + 4..].to_vec();
    if head.to_lowercase().contains("transfer-encoding: chunked") && !head.contains("event-stream")
    {
        body = dechunk(&body);
    }
    Answer { status, head, body }
}

fn rows(s: &str, deleted: &str, unknown: &str, created_at: u64) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut add = |what: &str, request: Vec<u8>, want: Want| {
        rows.push(Row {
            what: what.to_string(),
            request,
            want,
        })
    };
    use Want::{Error as E, Init};
    let sp = format!("/sessions/{s}");
    let ev = format!("/events/{s}");
    let big = 1usize << 20;

    // Bodies that are not JSON, or not acceptable JSON.
    let bodies: [(&str, Vec<u8>); 10] = [
        ("truncated object", b"{\"a\":".to_vec()),
        ("trailing comma", b"{\"a\":1,}".to_vec()),
        ("single quotes", b"{'a':1}".to_vec()),
        ("bare word", b"nul".to_vec()),
        ("two documents", b"{} {}".to_vec()),
        ("invalid UTF-8", b"\"\xff\xfe\"".to_vec()),
        ("100 000 nested arrays", "[".repeat(100_000).into_bytes()),
        (
            "300 nested objects",
            format!("{}1{}", "{\"a\":".repeat(300), "}".repeat(300)).into_bytes(),
        ),
        ("number out of range", b"1e400".to_vec()),
        ("lone surrogate", b"\"\\ud800\"".to_vec()),
    ];
    for (what, b) in &bodies {
        add(
            &format!("POST {what}"),
            request("POST", "/sessions", &[JSON], Some(b)),
            E(422),
        );
    }
    for (what, b) in bodies.iter().take(4) {
        add(
            &format!("PUT {what}"),
            request("PUT", &sp, &[JSON], Some(b)),
            E(422),
        );
        add(
            &format!("PATCH {what}"),
            request("PATCH", &sp, &[JSON], Some(b)),
            E(422),
        );
    }
    add(
        "PATCH 100 000 nested arrays",
        request("PATCH", &sp, &[JSON], Some(&bodies[6].1)),
        E(422),
    );
    add(
        "PUT empty body",
        request("PUT", &sp, &[JSON], Some(b"")),
        E(422),
    );
    add(
        "PATCH empty body",
        request("PATCH", &sp, &[JSON], Some(b"")),
        E(422),
    );
    add(
        "POST without content type, not JSON",
        request("POST", "/sessions", &[], Some(b"{\"a\":")),
        E(422),
    );
    // Sizes.
    let over = vec![b' '; big + 1];
    add(
        "POST MAX_BODY_BYTES+1",
        request("POST", "/sessions", &[JSON], Some(&over)),
        E(413),
    );
    add(
        "PUT MAX_BODY_BYTES+1",
        request("PUT", &sp, &[JSON], Some(&over)),
        E(413),
    );
    let escaped = format!("\"{}\"", "\\u0041".repeat(1_000_000)).into_bytes();
    add(
        "PATCH a string of 1 M escapes",
        request("PATCH", &sp, &[JSON], Some(&escaped)),
        E(413),
    );
    add(
        "POST declaring 10 GB",
        request(
            "POST",
            "/sessions",
            &[JSON, ("Content-Length", "10000000000")],
            Some(b"{}"),
        ),
        E(413),
    );
    // Content types.
    for ct in [
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
    ] {
        add(
            &format!("POST as {ct}"),
            request("POST", "/sessions", &[("Content-Type", ct)], Some(b"{}")),
            E(415),
        );
    }
    add(
        "PUT as text/plain",
        request("PUT", &sp, &[("Content-Type", "text/plain")], Some(b"{}")),
        E(415),
    );
    add(
        "PATCH as text/html",
        request("PATCH", &sp, &[("Content-Type", "text/html")], Some(b"{}")),
        E(415),
    );

    // Session ids.
    let lower = s.to_lowercase();
    let long_id = "A".repeat(8 * 1024);
    let ids: [(&str, String, u16); 11] = [
        ("not a ULID", "not-a-ulid".into(), 400),
        ("lowercase ULID", lower.clone(), 400),
        ("27 characters", format!("{s}0"), 400),
        ("25 characters", s[..25].to_string(), 400),
        ("overflowing ULID", "8ZZZZZZZZZZZZZZZZZZZZZZZZZ".into(), 400),
        ("ULID with U", format!("{}U", &s[..25]), 400),
        ("ULID with O alias", format!("{}O", &s[..25]), 400),
        ("8 KB id", long_id, 400),
        ("encoded traversal", "..%2F..%2Fetc%2Fpasswd".into(), 400),
        ("NUL", "%00".into(), 400),
        ("unknown ULID", unknown.to_string(), 404),
    ];
    for (what, id, status) in &ids {
        add(
            &format!("GET session, {what}"),
            request("GET", &format!("/sessions/{id}"), &[], None),
            E(*status),
        );
    }
    for (what, id, status) in ids
        .iter()
        .filter(|(w, _, _)| ["lowercase ULID", "unknown ULID", "NUL"].contains(w))
    {
        add(
            &format!("PUT session, {what}"),
            request("PUT", &format!("/sessions/{id}"), &[JSON], Some(b"{}")),
            E(*status),
        );
        add(
            &format!("DELETE session, {what}"),
            request("DELETE", &format!("/sessions/{id}"), &[], None),
            E(*status),
        );
        add(
            &format!("stream, {what}"),
            request("GET", &format!("/events/{id}"), &[], None),
            E(*status),
        );
        add(
            &format!("history, {what}"),
            request("GET", &format!("/sessions/{id}/events"), &[], None),
            E(*status),
        );
    }
    add(
        "raw path traversal",
        request("GET", &format!("/sessions/../../{s}"), &[], None),
        E(404),
    );
    add(
        "GET deleted",
        request("GET", &format!("/sessions/{deleted}"), &[], None),
        E(410),
    );
    add(
        "PATCH deleted",
        request(
            "PATCH",
            &format!("/sessions/{deleted}"),
            &[JSON],
            Some(b"{}"),
        ),
        E(410),
    );
    add(
        "DELETE deleted",
        request("DELETE", &format!("/sessions/{deleted}"), &[], None),
        E(410),
    );
    add(
        "stream of deleted",
        request("GET", &format!("/events/{deleted}"), &[], None),
        E(410),
    );

    // Usernames.
    let ten_kb = "u".repeat(10 * 1024);
    let names: [(&str, &str); 7] = [
        ("CR LF", "a%0D%0Aevent:%20x"),
        ("NUL", "a%00b"),
        ("ESC", "%1B%5B31m"),
        ("tab", "a%09b"),
        ("DEL", "a%7F"),
        ("10 KB", &ten_kb),
        ("invalid UTF-8", "a%FF"),
    ];
    for (what, n) in names {
        add(
            &format!("POST username {what}"),
            request(
                "POST",
                &format!("/sessions?username={n}"),
                &[JSON],
                Some(b"{}"),
            ),
            E(400),
        );
        add(
            &format!("stream username {what}"),
            request("GET", &format!("{ev}?username={n}"), &[], None),
            E(400),
        );
    }
    add(
        "PATCH username LF",
        request("PATCH", &format!("{sp}?username=%0A"), &[JSON], Some(b"{}")),
        E(400),
    );
    add(
        "DELETE username CR",
        request("DELETE", &format!("{sp}?username=%0D"), &[], None),
        E(400),
    );

    // Offsets and limits in queries.
    for (what, v) in [
        ("negative", "-1"),
        ("non-decimal", "abc"),
        ("hex", "0x10"),
        ("fraction", "1.5"),
        ("empty", ""),
        ("huge", "99999999999999999999999"),
        ("u64::MAX, beyond the end", "18446744073709551615"),
        ("repeated", "1&at=x"),
    ] {
        add(
            &format!("at {what}"),
            request("GET", &format!("{sp}?at={v}"), &[], None),
            E(400),
        );
        if what.starts_with("u64::MAX") {
            // A cursor past the end is a valid, empty history page.
            continue;
        }
        let v = v.replace("at=", "after=");
        add(
            &format!("history after {what}"),
            request("GET", &format!("{sp}/events?after={v}"), &[], None),
            E(400),
        );
    }
    add(
        "at before the session",
        request(
            "GET",
            &format!("{sp}?at={}", created_at.saturating_sub(1)),
            &[],
            None,
        ),
        E(404),
    );
    for (what, v) in [
        ("zero", "0"),
        ("negative", "-1"),
        ("over 1000", "1001"),
        ("non-decimal", "ten"),
        ("huge", "99999999999999999999"),
        ("empty", ""),
        ("repeated", "5&limit=x"),
    ] {
        add(
            &format!("list limit {what}"),
            request("GET", &format!("/sessions?limit={v}"), &[], None),
            E(400),
        );
        add(
            &format!("history limit {what}"),
            request("GET", &format!("{sp}/events?limit={v}"), &[], None),
            E(400),
        );
    }
    add(
        "list after garbage",
        request("GET", "/sessions?after=zzz", &[], None),
        E(400),
    );
    add(
        "list after lowercase",
        request("GET", &format!("/sessions?after={lower}"), &[], None),
        E(400),
    );

    // Resume ids: never an error, a fresh init.
    for v in [
        "-1",
        "abc",
        "99999999999999999999999",
        "1e3",
        " ",
        "18446744073709551615",
        "5 5",
    ] {
        add(
            &format!("Last-Event-ID {v:?}"),
            request("GET", &ev, &[("Last-Event-ID", v)], None),
            Init,
        );
    }
    add(
        "two bad Last-Event-IDs",
        request(
            "GET",
            &ev,
            &[("Last-Event-ID", "x"), ("Last-Event-ID", "y")],
            None,
        ),
        Init,
    );
    add(
        "lastEventId negative",
        request("GET", &format!("{ev}?lastEventId=-1"), &[], None),
        Init,
    );
    add(
        "lastEventId empty",
        request("GET", &format!("{ev}?lastEventId="), &[], None),
        Init,
    );
    add(
        "Last-Event-ID before the session",
        request(
            "GET",
            &ev,
            &[("Last-Event-ID", &created_at.saturating_sub(1).to_string())],
            None,
        ),
        Init,
    );
    add(
        "Last-Event-ID on an unknown session",
        request(
            "GET",
            &format!("/events/{unknown}"),
            &[("Last-Event-ID", "1")],
            None,
        ),
        E(404),
    );

    // If-Match.
    for v in [
        "garbage", "W/\"1\"", "\"-1\"", "\"\"", "\"1", "1", "\"abc\"",
    ] {
        add(
            &format!("PUT If-Match {v}"),
            request("PUT", &sp, &[JSON, ("If-Match", v)], Some(b"{}")),
            E(400),
        );
    }
    add(
        "PATCH If-Match future",
        request(
            "PATCH",
            &sp,
            &[JSON, ("If-Match", "\"99999\"")],
            Some(b"{}"),
        ),
        E(412),
    );
    add(
        "DELETE If-Match stale",
        request(
            "DELETE",
            &sp,
            &[("If-Match", &format!("\"{created_at}\""))],
            None,
        ),
        E(412),
    );
    add(
        "DELETE If-Match garbage",
        request("DELETE", &sp, &[("If-Match", "nope")], None),
        E(400),
    );

    // Methods and routes.
    for (m, p) in [
        ("PUT", "/sessions".to_string()),
        ("DELETE", "/sessions".to_string()),
        ("PATCH", "/sessions".to_string()),
        ("POST", sp.clone()),
        ("POST", "/status".to_string()),
        ("DELETE", "/status".to_string()),
        ("POST", ev.clone()),
        ("PUT", format!("{sp}/events")),
    ] {
        let body: Option<&[u8]> = if m == "GET" || m == "DELETE" {
            None
        } else {
            Some(b"{}")
        };
        add(&format!("{m} {p}"), request(m, &p, &[JSON], body), E(405));
    }
    add("unknown route", request("GET", "/nope", &[], None), E(404));
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_table_gets_4xx_and_changes_nothing() {
    let server = TestServer::start().await;
    let http = &server.http;
    // S is not the first session, so an offset before its creation exists.
    http.create(&json!({"first": true})).await;
    let (s, created_at) = http.create(&json!({"doc": 1})).await;
    // Move S on, so its creation offset is a stale ETag.
    http.patch(&s, &json!({"more": true})).await;
    let (deleted, _) = http.create(&json!({})).await;
    http.send(
        reqwest::Method::DELETE,
        &format!("/sessions/{deleted}"),
        None,
        &[],
    )
    .await
    .expect(204);
    let unknown = ulid::Ulid::generate().to_string();
    let before_state = http.state(&s).await;
    let before = http.status().await["log"]["nextOffset"].as_u64().unwrap();

    let rows = rows(&s, &deleted, &unknown, created_at);
    let mut failures = Vec::new();
    for row in &rows {
        let a = send(server.addr, row.request.clone()).await;
        let body = String::from_utf8_lossy(&a.body[..a.body.len().min(400)]).to_string();
        let problem = match row.want {
            Want::Error(status) => {
                let parsed: Option<Value> = serde_json::from_slice(&a.body).ok();
                let shape_ok = parsed.as_ref().is_some_and(|v| {
                    v.as_object().is_some_and(|o| o.len() == 2)
                        && v["error"].as_str().is_some_and(|e| !e.is_empty())
                        && v["message"].as_str().is_some_and(|m| !m.is_empty())
                });
                let json_type = a
                    .head
                    .to_lowercase()
                    .contains("content-type: application/json");
                let allow_ok = status != 405 || a.head.to_lowercase().contains("\r\nallow: ");
                if a.status != status || !shape_ok || !json_type || !allow_ok {
                    Some(format!(
                        "want {status} JSON error, got {}: {body}",
                        a.status
                    ))
                } else {
                    None
                }
            }
            Want::Init => {
                let text = String::from_utf8_lossy(&a.body);
                if a.status != 200 || !text.contains("event: init") {
                    Some(format!("want 200 with init, got {}: {body}", a.status))
                } else {
                    None
                }
            }
        };
        if a.status >= 500 {
            failures.push(format!("{}: 5xx {}: {body}", row.what, a.status));
        } else if let Some(p) = problem {
            failures.push(format!("{}: {p}", row.what));
        }
    }
    let after = http.status().await["log"]["nextOffset"].as_u64().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    assert_eq!(after, before, "a rejected request changed the log");
    // The streams the table opened are gone, and S is as it was.
    http.wait_clients(&s, 0).await;
    assert_eq!(http.state(&s).await, before_state);
    http.get(&format!("/sessions/{deleted}")).await.expect(410);
    eprintln!(
        "bad input table: {} requests, all answered as documented",
        rows.len()
    );
    assert!(rows.len() >= 60);
}
