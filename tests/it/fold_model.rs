//! Property test of the fold (issue 5): random sequences of create, replace,
//! merge-patch and delete go through the server and into a plain in-test
//! model (a map of documents, RFC 7396 via `json_patch::merge`); the server's
//! state agrees with the model after every write, after every restart (the
//! state then comes from folding the log), and `?at=` of every offset
//! reproduces the model's document at that offset.
//!
//! `FOLD_CASES` sets the number of cases (default 12).

use proptest::prelude::*;
use reqwest::Method;
use serde_json::{Map, Value};

use crate::common::{new_dir, TestServer};

#[derive(Debug, Clone)]
enum Op {
    Create(Value),
    Replace(usize, Value),
    Patch(usize, Value),
    Delete(usize),
    Restart,
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..100).prop_map(Value::from),
        "[a-z\u{e9}\n\"]{0,6}".prop_map(Value::String),
    ]
}

fn object_of(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    prop::collection::btree_map(prop::sample::select(vec!["a", "b", "c", "d"]), v, 0..4).prop_map(
        |m| {
            Value::Object(
                m.into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<Map<_, _>>(),
            )
        },
    )
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            object_of(inner)
        ]
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => value().prop_map(Op::Create),
        2 => (any::<usize>(), value()).prop_map(|(i, v)| Op::Replace(i, v)),
        // Merge patches are mostly objects (with nulls that delete), sometimes not.
        5 => (any::<usize>(), prop_oneof![4 => object_of(value()), 1 => value()]).prop_map(|(i, v)| Op::Patch(i, v)),
        1 => any::<usize>().prop_map(Op::Delete),
        1 => Just(Op::Restart),
    ]
}

/// A session in the model: its documents by offset (`None` once deleted).
struct Model {
    id: String,
    versions: Vec<(u64, Option<Value>)>,
}

impl Model {
    fn now(&self) -> &Option<Value> {
        &self.versions.last().unwrap().1
    }
}

async fn agree(server: &TestServer, models: &[Model]) -> Result<(), TestCaseError> {
    for m in models {
        let r = server.http.get(&format!("/sessions/{}", m.id)).await;
        match m.now() {
            Some(doc) => {
                prop_assert_eq!(r.status.as_u16(), 200);
                let v = r.json();
                prop_assert_eq!(&v["data"], doc, "state of {}", m.id);
                prop_assert_eq!(v["offset"].as_u64(), Some(m.versions.last().unwrap().0));
            }
            None => prop_assert_eq!(r.status.as_u16(), 410),
        }
    }
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = new_dir();
    let mut server = TestServer::start_with(dir.clone(), |_| {}).await;
    let mut models: Vec<Model> = Vec::new();
    for op in ops {
        let n = models.len();
        let pick = |i: usize| (n > 0).then(|| i % n);
        let (is_patch, op) = match op {
            Op::Patch(i, doc) => (true, Op::Replace(i, doc)),
            other => (false, other),
        };
        match op {
            Op::Create(doc) => {
                let (id, offset) = server.http.create(&doc).await;
                models.push(Model {
                    id,
                    versions: vec![(offset, Some(doc))],
                });
            }
            Op::Replace(i, doc) if pick(i).is_some() => {
                let m = &mut models[pick(i).unwrap()];
                let method = if is_patch { Method::PATCH } else { Method::PUT };
                let r = server
                    .http
                    .json(method, &format!("/sessions/{}", m.id), &doc)
                    .await;
                match m.now().clone() {
                    None => prop_assert_eq!(r.expect(410).error_code(), "session_deleted"),
                    Some(mut now) => {
                        let offset = r.expect(200).json()["offset"].as_u64().unwrap();
                        if is_patch {
                            json_patch::merge(&mut now, &doc);
                        } else {
                            now = doc;
                        }
                        m.versions.push((offset, Some(now)));
                    }
                }
            }
            Op::Delete(i) if pick(i).is_some() => {
                let m = &mut models[pick(i).unwrap()];
                let r = server
                    .http
                    .send(Method::DELETE, &format!("/sessions/{}", m.id), None, &[])
                    .await;
                match m.now() {
                    None => {
                        r.expect(410);
                    }
                    Some(_) => {
                        let r = r.expect(204);
                        let offset = r.header("etag").unwrap().trim_matches('"').parse().unwrap();
                        m.versions.push((offset, None));
                    }
                }
            }
            Op::Restart => {
                let dir = server.stop().await;
                server = TestServer::start_with(dir, |_| {}).await;
                agree(&server, &models).await?;
            }
            _ => {}
        }
        agree(&server, &models).await?;
    }
    let dir = server.stop().await;
    let server = TestServer::start_with(dir, |_| {}).await;
    agree(&server, &models).await?;
    // Time travel: every version of every session, as of its offset.
    for m in &models {
        for (offset, doc) in &m.versions {
            let r = server
                .http
                .get(&format!("/sessions/{}?at={offset}", m.id))
                .await;
            match doc {
                Some(doc) => {
                    prop_assert_eq!(&r.expect(200).json()["data"], doc, "{} at {}", m.id, offset)
                }
                None => prop_assert_eq!(r.status.as_u16(), 410),
            }
        }
    }
    server.stop().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("FOLD_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(12),
        max_shrink_iters: 64,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn server_state_matches_a_model_across_restarts(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(ops))?;
    }
}
