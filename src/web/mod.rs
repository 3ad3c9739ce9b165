//! The browser side: the built-in web page, or a user's own static files
//! (`STATIC_DIR`), served beside the API without shadowing it.
//!
//! [`with_site`] wraps the API endpoint. A `GET`/`HEAD` whose first path
//! segment is not one of the API's ([`API_PREFIXES`]) goes to the [`Site`];
//! everything else goes to the API untouched. Deciding by prefix rather than
//! by "try the API, fall back on 404" keeps an API 404 (unknown session) an
//! API 404, and means a user's `STATIC_DIR/sessions/index.html` can never
//! hide `GET /sessions`.
//!
//! The built-in page is three files compiled into the binary
//! (`include_str!`): no CDN and no build step. It talks to the API with
//! `fetch` and follows a session with the browser's own `EventSource`,
//! relying on its automatic reconnect and `Last-Event-ID`. Its responses carry
//! a Content-Security-Policy that allows only same-origin scripts, styles and
//! connections, which also proves it loads nothing from elsewhere.
//!
//! `STATIC_DIR` replaces the built-in page, as the original Express app served
//! its client with `express.static`. The invariant: no request reads a file
//! outside that directory. A path with a `..` segment (plain or
//! percent-encoded), a backslash or a NUL is refused with 403 before the file
//! system is touched; the remaining path is canonicalized and must still lie
//! inside the canonical directory, so a symlink pointing out is refused too.
//! Dot-files (`.env`, `.git/`) answer 404, like `express.static`'s default.
//! Serving itself (content types, ranges, `ETag`, `If-None-Match`) is poem's
//! `StaticFilesEndpoint`.

use std::path::{Path, PathBuf};

use poem::endpoint::StaticFilesEndpoint;
use poem::http::{header, HeaderValue, Method, StatusCode};
use poem::web::Json;
use poem::{Body, Endpoint, IntoResponse, Request, Response};

/// First path segments that belong to the API, the spec and the Swagger UI.
/// The site never answers a path under one of them.
pub const API_PREFIXES: &[&str] = &["sessions", "events", "status", "docs", "openapi.json"];

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const APP_CSS: &str = include_str!("app.css");

/// Only same-origin resources; no inline script or style. The page needs
/// nothing else, and a violation would show as a console error in the
/// browser tests.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// `STATIC_DIR` cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("STATIC_DIR={dir} cannot be used: {source}; set STATIC_DIR to an existing directory or unset it to serve the built-in page")]
    Unreadable {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("STATIC_DIR={0} is not a directory; set STATIC_DIR to a directory or unset it to serve the built-in page")]
    NotADirectory(String),
}

/// What answers the non-API `GET`s.
pub enum Site {
    /// The page compiled into the binary.
    Builtin,
    /// A user's directory.
    Dir {
        /// Canonical (absolute, symlinks resolved): every file served lies under it.
        root: PathBuf,
        files: StaticFilesEndpoint,
    },
}

impl Site {
    /// The built-in page, or `dir` when given.
    ///
    /// # Errors
    /// [`SiteError`] when `dir` does not exist, cannot be read or is not a
    /// directory: checked at startup rather than on the first request.
    pub fn new(dir: Option<&Path>) -> Result<Site, SiteError> {
        let Some(dir) = dir else {
            return Ok(Site::Builtin);
        };
        let shown = dir.display().to_string();
        let root = dir.canonicalize().map_err(|source| SiteError::Unreadable {
            dir: shown.clone(),
            source,
        })?;
        if !root.is_dir() {
            return Err(SiteError::NotADirectory(shown));
        }
        std::fs::read_dir(&root).map_err(|source| SiteError::Unreadable { dir: shown, source })?;
        let files = StaticFilesEndpoint::new(&root)
            .index_file("index.html")
            .no_cache_index();
        Ok(Site::Dir { root, files })
    }

    async fn get(&self, req: Request) -> Response {
        match self {
            Site::Builtin => builtin(req.uri().path()),
            Site::Dir { root, files } => {
                if let Some(refused) = refusal(root, req.uri().path()) {
                    return refused;
                }
                match files.call(req).await {
                    Ok(resp) => resp,
                    Err(e) => {
                        let status = e.status();
                        let (code, message) = match status {
                            StatusCode::NOT_FOUND => ("not_found", "no such file".to_string()),
                            StatusCode::RANGE_NOT_SATISFIABLE => (
                                "range_not_satisfiable",
                                "the requested range is outside the file".to_string(),
                            ),
                            s if s.is_server_error() => {
                                tracing::warn!(error = %e, "a static file could not be served");
                                (
                                    "static_file_unreadable",
                                    "the file could not be read".into(),
                                )
                            }
                            s => ("bad_request", format!("the file cannot be served ({s})")),
                        };
                        error(status, code, message)
                    }
                }
            }
        }
    }
}

/// Routes the API's paths to `api` and the other `GET`/`HEAD`s to `site`.
pub fn with_site<E: Endpoint>(api: E, site: Site) -> WithSite<E> {
    WithSite { api, site }
}

/// The endpoint built by [`with_site`].
pub struct WithSite<E> {
    api: E,
    site: Site,
}

impl<E: Endpoint> Endpoint for WithSite<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let method = req.method().clone();
        if (method != Method::GET && method != Method::HEAD) || is_api_path(req.uri().path()) {
            return Ok(self.api.call(req).await?.into_response());
        }
        if method == Method::HEAD {
            req.set_method(Method::GET);
            let mut resp = self.site.get(req).await;
            resp.set_body(Body::empty());
            return Ok(resp);
        }
        Ok(self.site.get(req).await)
    }
}

/// Whether the first segment of `path` is one of [`API_PREFIXES`].
pub fn is_api_path(path: &str) -> bool {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    API_PREFIXES.contains(&first)
}

fn builtin(path: &str) -> Response {
    let (body, content_type) = match path {
        "/" | "/index.html" => (INDEX_HTML, "text/html; charset=utf-8"),
        "/app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        "/app.css" => (APP_CSS, "text/css; charset=utf-8"),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such page: the web page is at / and the API under /sessions, /events and /status (see /docs)"
                    .into(),
            )
        }
    };
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .body(body);
    if content_type.starts_with("text/html") {
        resp.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    resp
}

/// The refusal for a request path that could reach outside `root`, or a
/// dot-file (see the module doc); `None` lets the request through.
fn refusal(root: &Path, raw: &str) -> Option<Response> {
    let forbidden = || {
        error(
            StatusCode::FORBIDDEN,
            "path_outside_static_dir",
            "the path leads outside the static directory".into(),
        )
    };
    let not_found = || error(StatusCode::NOT_FOUND, "not_found", "no such file".into());
    let decoded = match percent_encoding::percent_decode_str(raw).decode_utf8() {
        Ok(d) => d,
        Err(_) => {
            return Some(error(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                "the path is not valid UTF-8 once percent-decoded".into(),
            ))
        }
    };
    if decoded.contains('\\') || decoded.contains('\0') {
        return Some(forbidden());
    }
    let mut path = root.to_path_buf();
    for segment in decoded.split('/').filter(|s| !s.is_empty() && *s != ".") {
        if segment == ".." {
            return Some(forbidden());
        }
        if segment.starts_with('.') {
            return Some(not_found());
        }
        path.push(segment);
    }
    // Every segment is now a plain name, so only a symlink can lead out.
    match path.canonicalize() {
        Ok(real) if real.starts_with(root) => None,
        Ok(_) => Some(forbidden()),
        // Missing (or unreadable): poem answers 404 without reading anything.
        Err(_) => None,
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    Json(serde_json::json!({"error": code, "message": message}))
        .with_status(status)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeApi;

    impl Endpoint for FakeApi {
        type Output = Response;

        async fn call(&self, req: Request) -> poem::Result<Response> {
            Ok(Response::builder().header("x-api", "yes").body(format!(
                "api {} {}",
                req.method(),
                req.uri().path()
            )))
        }
    }

    async fn get(ep: &impl Endpoint<Output = Response>, method: Method, uri: &str) -> Response {
        let req = Request::builder().method(method).uri_str(uri).finish();
        ep.call(req).await.unwrap_or_else(|e| e.into_response())
    }

    async fn text(resp: Response) -> String {
        resp.into_body().into_string().await.unwrap()
    }

    async fn error_code(resp: Response) -> String {
        let v: serde_json::Value = serde_json::from_str(&text(resp).await).unwrap();
        assert!(v["message"].is_string(), "{v}");
        v["error"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn builtin_page_is_html_with_a_strict_policy() {
        let ep = with_site(FakeApi, Site::new(None).unwrap());
        let resp = get(&ep, Method::GET, "/").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert!(resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("connect-src 'self'"));
        let html = text(resp).await;
        assert!(html.contains("<script src=\"/app.js\""), "{html}");
        assert!(!html.contains("http://") && !html.contains("https://"));

        let js = get(&ep, Method::GET, "/app.js").await;
        assert_eq!(
            js.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert!(text(js).await.contains("new EventSource("));
        let css = get(&ep, Method::GET, "/app.css").await;
        assert_eq!(
            css.headers()[header::CONTENT_TYPE],
            "text/css; charset=utf-8"
        );

        let head = get(&ep, Method::HEAD, "/").await;
        assert_eq!(head.status(), StatusCode::OK);
        assert!(text(head).await.is_empty());

        let missing = get(&ep, Method::GET, "/nope.js").await;
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(error_code(missing).await, "not_found");
    }

    #[tokio::test]
    async fn the_api_is_never_shadowed() {
        for site in [None, Some(tempfile::tempdir().unwrap())] {
            if let Some(d) = &site {
                for sub in ["sessions", "docs", "status"] {
                    std::fs::create_dir(d.path().join(sub)).unwrap();
                    std::fs::write(d.path().join(sub).join("index.html"), "user").unwrap();
                }
                std::fs::write(d.path().join("openapi.json"), "user").unwrap();
            }
            let ep = with_site(FakeApi, Site::new(site.as_ref().map(|d| d.path())).unwrap());
            for path in [
                "/sessions",
                "/sessions/",
                "/sessions/01KBJ3C4E1GM0W8ZJ7Q9Y2V6XH",
                "/events/01KBJ3C4E1GM0W8ZJ7Q9Y2V6XH?username=a",
                "/status",
                "/docs",
                "/docs/",
                "/openapi.json",
            ] {
                let resp = get(&ep, Method::GET, path).await;
                assert_eq!(resp.headers().get("x-api").unwrap(), "yes", "{path}");
            }
            for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
                let resp = get(&ep, method.clone(), "/").await;
                assert_eq!(resp.headers().get("x-api").unwrap(), "yes", "{method} /");
            }
            let page = get(&ep, Method::GET, "/sessions.html").await;
            assert!(page.headers().get("x-api").is_none());
        }
    }

    #[tokio::test]
    async fn static_dir_serves_its_files_instead_of_the_page() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("index.html"), "<h1>mine</h1>").unwrap();
        std::fs::create_dir(d.path().join("css")).unwrap();
        std::fs::write(d.path().join("css/a b.css"), "body{}").unwrap();
        let ep = with_site(FakeApi, Site::new(Some(d.path())).unwrap());

        let index = get(&ep, Method::GET, "/").await;
        assert_eq!(index.status(), StatusCode::OK);
        assert!(index.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert_eq!(text(index).await, "<h1>mine</h1>");
        let css = get(&ep, Method::GET, "/css/a%20b.css").await;
        assert_eq!(css.status(), StatusCode::OK);
        assert!(css.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css"));
        assert_eq!(text(css).await, "body{}");
        // The built-in page is replaced, not merged.
        let builtin = get(&ep, Method::GET, "/app.js").await;
        assert_eq!(builtin.status(), StatusCode::NOT_FOUND);
        assert_eq!(error_code(builtin).await, "not_found");
    }

    #[tokio::test]
    async fn static_dir_refuses_paths_outside_it() {
        let outer = tempfile::tempdir().unwrap();
        std::fs::write(outer.path().join("secret.txt"), "secret").unwrap();
        let root = outer.path().join("site");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("index.html"), "ok").unwrap();
        std::fs::write(root.join(".env"), "TOKEN=x").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret.txt"), root.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(outer.path(), root.join("up")).unwrap();
        let ep = with_site(FakeApi, Site::new(Some(&root)).unwrap());

        for path in [
            "/../secret.txt",
            "/a/../../secret.txt",
            "/%2e%2e/secret.txt",
            "/%2E%2E/secret.txt",
            "/.%2e/secret.txt",
            "/%2e%2e%2fsecret.txt",
            "/..%2fsecret.txt",
            "/..%5csecret.txt",
            "/%5c..%5csecret.txt",
            "/index.html%00.txt",
            "/link.txt",
            "/up/secret.txt",
        ] {
            let resp = get(&ep, Method::GET, path).await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
            let body = text(resp).await;
            assert!(
                !body.contains("secret") && !body.contains('/'),
                "{path}: {body}"
            );
        }
        for path in ["/.env", "/%2eenv", "/nope.txt", "/%252e%252e/secret.txt"] {
            let resp = get(&ep, Method::GET, path).await;
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
            assert_eq!(error_code(resp).await, "not_found");
        }
        let bad = get(&ep, Method::GET, "/%ff").await;
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert_eq!(error_code(bad).await, "invalid_path");
        // `.` segments are harmless and the index is still served.
        let ok = get(&ep, Method::GET, "/./index.html").await;
        assert_eq!(text(ok).await, "ok");
    }

    #[test]
    fn a_bad_static_dir_is_refused_at_startup_with_its_name() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("missing");
        let err = Site::new(Some(&missing)).err().unwrap().to_string();
        assert!(
            err.starts_with(&format!("STATIC_DIR={}", missing.display())),
            "{err}"
        );
        let file = d.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = Site::new(Some(&file)).err().unwrap().to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }

    #[test]
    fn api_prefixes() {
        assert!(is_api_path("/sessions"));
        assert!(is_api_path("/docs/index.css"));
        assert!(!is_api_path("/"));
        assert!(!is_api_path("/sessions.html"));
        assert!(!is_api_path("/statusx"));
    }
}
