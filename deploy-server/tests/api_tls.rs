//! `serve_tls` (feature `tls`): the router over rustls, checked by a client that trusts only
//! the test CA. The certificate and key below are throwaway test material (a CA and a
//! `localhost` leaf it signed, valid for 100 years), made with openssl for this test only.

#![cfg(feature = "tls")]

use std::sync::Arc;
use std::time::Duration;

use deploy_core::MemoryStore;
use deploy_server::{ServerBuilder, TlsConfig};

const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIBjjCCATWgAwIBAgIUeFKGFIyp4cWJ4BxJgftemy7rzWIwCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRZGVwbG95a2l0IHRlc3QgQ0EwIBcNMjYxMTMwMTQ1MTQ4WhgP\nMjEyNjExMDYxNDUxNDhaMBwxGjAYBgNVBAMMEWRlcGxveWtpdCB0ZXN0IENBMFkw\nEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEV0DglGt0v0qWRBzLbWoNNPrC7Bl9UY1j\nxgzJIZHVu9nu7CTnDShlUGM9ILn8C3/uCkoGP9h9X55QEEXSD5gzSqNTMFEwHQYD\nVR0OBBYEFKNc4bvRw/Ra/N9R4XyNnPU3z3GrMB8GA1UdIwQYMBaAFKNc4bvRw/Ra\n/N9R4XyNnPU3z3GrMA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIg\nRURnTC12DK/MYgc2/QWuVy98a0ZaxQJWhuJmWAMAiJgCIFAC5K9UThgYcLdls3eX\nVJqvqs57UyB//rRVFx/tGcom\n-----END CERTIFICATE-----\n";
const CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----\nMIIBwTCCAWegAwIBAgIUb08P4EDDWS/RI4fTqWPP/E3h+rMwCgYIKoZIzj0EAwIw\nHDEaMBgGA1UEAwwRZGVwbG95a2l0IHRlc3QgQ0EwIBcNMjYxMTMwMTQ1MTQ4WhgP\nMjEyNjExMDYxNDUxNDhaMBQxEjAQBgNVBAMMCWxvY2FsaG9zdDBZMBMGByqGSM49\nAgEGCCqGSM49AwEHA0IABPZxeFx3vJxb/qmxo23zNW2F6K+XgdTTAeAh1CrZwGc0\nlmJOm+vquG4eelm8Br0kPdXmmEenJvtKZfeEP4H6a1KjgYwwgYkwGgYDVR0RBBMw\nEYIJbG9jYWxob3N0hwR/AAABMAkGA1UdEwQCMAAwCwYDVR0PBAQDAgeAMBMGA1Ud\nJQQMMAoGCCsGAQUFBwMBMB0GA1UdDgQWBBRMFmFJ4x1/vvkQbTiygP0P3T1IOTAf\nBgNVHSMEGDAWgBSjXOG70cP0WvzfUeF8jZz1N89xqzAKBggqhkjOPQQDAgNIADBF\nAiA18cGMgUtgnzogDAmshwEKpWzSoQ2UOnkoZMCH1WmwggIhAIo5AUY684Sqi49K\nX3UvWrjS31NyUKuVOxjbJoduzHTc\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgUUSsNX5aPjIysbtc\nvTBDG4L49uFikmHL+D4iVu3lIX2hRANCAAT2cXhcd7ycW/6psaNt8zVtheivl4HU\n0wHgIdQq2cBnNJZiTpvr6rhuHnpZvAa9JD3V5phHpyb7SmX3hD+B+mtS\n-----END PRIVATE KEY-----\n";
const ADMIN: &str = "dk_test-bootstrap-admin-secret-0123456789";

#[tokio::test]
async fn the_router_serves_over_tls() {
    let router = ServerBuilder::new(Arc::new(MemoryStore::new()))
        .bootstrap_token("root", ADMIN)
        .build()
        .unwrap();
    let tls = TlsConfig::from_pem(CERTIFICATE.as_bytes(), KEY.as_bytes()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(deploy_server::serve_tls(listener, router, tls, async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(CA.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let base = format!("https://localhost:{port}");
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    let tokens = client
        .get(format!("{base}/api/tokens"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(tokens.status(), reqwest::StatusCode::OK);
    // Plain HTTP on the TLS port gets no answer.
    let plain = client
        .get(format!("http://localhost:{port}/healthz"))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    // A client that does not trust the CA does not get through.
    let stranger = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(stranger.get(format!("{base}/healthz")).send().await.is_err());

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("shut down in time")
        .unwrap()
        .unwrap();
}

#[test]
fn bad_pem_is_refused_with_what_is_wrong() {
    let error = TlsConfig::from_pem(b"not a pem", KEY.as_bytes()).unwrap_err();
    assert!(error.to_string().contains("certificate chain"), "{error}");
    let error = TlsConfig::from_pem(CERTIFICATE.as_bytes(), b"").unwrap_err();
    assert!(error.to_string().contains("private key"), "{error}");
    let error = TlsConfig::from_pem_files(
        std::path::Path::new("/nonexistent/cert.pem"),
        std::path::Path::new("k"),
    )
    .unwrap_err();
    assert!(error.to_string().contains("/nonexistent/cert.pem"), "{error}");
}
