//! What the API tests share: a server over a memory store with a bootstrap admin token,
//! tokens of each role, and a request helper over `tower::ServiceExt::oneshot`.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use deploy_core::{DynStore, MemoryStore, RecordStoreExt};
use deploy_server::{AppState, Role, Scope, ServerBuilder, TokenStore};
use serde_json::Value;
use tower::ServiceExt;

/// The bootstrap admin token of every test server.
pub const ADMIN: &str = "dk_test-bootstrap-admin-secret-0123456789";

/// A server under test.
pub struct Api {
    pub store: Arc<MemoryStore>,
    pub state: AppState,
    pub router: Router,
}

/// An answer: status, headers, JSON body (`Value::Null` when empty, a string when not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or_default()
    }

    /// The field an error answer blames.
    pub fn field(&self) -> &str {
        self.body["field"].as_str().unwrap_or_default()
    }
}

impl Api {
    /// A server over a fresh memory store; `configure` adds sections.
    pub fn new(configure: impl FnOnce(ServerBuilder, Arc<MemoryStore>) -> ServerBuilder) -> Self {
        let store = Arc::new(MemoryStore::new());
        let builder = ServerBuilder::new(store.clone() as Arc<DynStore>).bootstrap_token("root", ADMIN);
        let state = configure(builder, store.clone())
            .build_state()
            .expect("valid settings");
        let router = deploy_server::router(state.clone());
        Self { store, state, router }
    }

    /// A stored token of `role` (all scope), created as the bootstrap admin.
    pub async fn token(&self, name: &str, role: Role) -> String {
        self.scoped_token(name, role, Scope::all()).await
    }

    /// A stored token of `role` with `scope`.
    pub async fn scoped_token(&self, name: &str, role: Role, scope: Scope) -> String {
        self.tokens()
            .create("root", name, role, scope)
            .await
            .expect("token created")
            .secret
    }

    pub fn tokens(&self) -> &TokenStore {
        self.state.tokens()
    }

    /// Sends a request; `token` as bearer, `body` as JSON.
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        self.call_with(method, path, token, body, &[]).await
    }

    /// [`Api::call`] with extra headers.
    pub async fn call_with(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = match body {
            Some(body) => request
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&body).expect("json"))),
            None => request.body(Body::empty()),
        }
        .expect("request");
        let response = self.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
            .await
            .expect("body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Answer {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// The audit entries stored, oldest first.
    pub async fn audit(&self) -> Vec<deploy_server::AuditEntry> {
        self.store
            .list_json::<deploy_server::AuditEntry>(deploy_server::AUDIT_PREFIX)
            .await
            .expect("audit log")
            .into_iter()
            .map(|(_, entry, _)| entry)
            .collect()
    }
}

/// Asserts a status, printing the answer when it is another.
#[track_caller]
pub fn expect(answer: &Answer, status: StatusCode) {
    assert_eq!(answer.status, status, "answer: {answer:?}");
}
