//! `/openapi.json` and `/docs`: the spec lists every operation and error
//! status; Swagger UI is served; CORS answers preflights.

use reqwest::Method;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_lists_every_operation_and_status() {
    let s = TestServer::start().await;
    let spec = s.http.get("/openapi.json").await.expect(200).json();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let ops: &[(&str, &str, &[&str])] = &[
        (
            "/sessions",
            "post",
            &["201", "400", "413", "415", "422", "503"],
        ),
        ("/sessions", "get", &["200", "400"]),
        ("/sessions/{id}", "get", &["200", "400", "404", "410"]),
        (
            "/sessions/{id}",
            "put",
            &[
                "200", "400", "404", "410", "412", "413", "415", "422", "503",
            ],
        ),
        (
            "/sessions/{id}",
            "patch",
            &[
                "200", "400", "404", "410", "412", "413", "415", "422", "503",
            ],
        ),
        (
            "/sessions/{id}",
            "delete",
            &["204", "400", "404", "410", "412", "503"],
        ),
        ("/sessions/{id}/events", "get", &["200", "400", "404"]),
        ("/events/{id}", "get", &["200", "400", "404", "410"]),
        ("/status", "get", &["200"]),
    ];
    for (path, method, statuses) in ops {
        let op = &spec["paths"][path][method];
        assert!(op.is_object(), "{method} {path} missing from the spec");
        assert!(op["summary"].is_string(), "{method} {path} has a summary");
        for st in *statuses {
            assert!(
                op["responses"][st].is_object(),
                "{method} {path} lacks {st}"
            );
        }
    }
    let sse = &spec["paths"]["/events/{id}"]["get"];
    assert!(sse["responses"]["200"]["content"]["text/event-stream"].is_object());
    let params: Vec<&str> = sse["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in ["id", "username", "lastEventId", "Last-Event-ID"] {
        assert!(params.contains(&p), "{p} in {params:?}");
    }
    let err = &spec["components"]["schemas"]["ErrorBody"];
    assert!(err["properties"]["error"].is_object() && err["properties"]["message"].is_object());

    let docs = s.http.get("/docs").await.expect(200);
    let html = String::from_utf8_lossy(&docs.body);
    assert!(html.contains("swagger"), "Swagger UI page");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_any_origin_by_default_and_restricts_when_told() {
    let s = TestServer::start().await;
    let r = s
        .http
        .send(
            Method::OPTIONS,
            "/sessions",
            None,
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "PATCH"),
                ("access-control-request-headers", "content-type,if-match"),
            ],
        )
        .await;
    assert!(r.status.is_success(), "{:?}", r.status);
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    let r = s
        .http
        .send(
            Method::GET,
            "/status",
            None,
            &[("origin", "https://app.example")],
        )
        .await;
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );

    let s =
        TestServer::start_with(new_dir(), |c| c.cors_origins = "https://ok.example".into()).await;
    let r = s
        .http
        .send(
            Method::GET,
            "/status",
            None,
            &[("origin", "https://ok.example")],
        )
        .await;
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("https://ok.example")
    );
    let r = s
        .http
        .send(
            Method::GET,
            "/status",
            None,
            &[("origin", "https://evil.example")],
        )
        .await;
    assert!(r.header("access-control-allow-origin").is_none());
}
