//! `HttpHealthChecker` against real HTTP servers: the demo service as a local process, a
//! TLS server with a private certificate, and servers that answer wrongly or not at all.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Artifacts, app, pool, version};
use deploy_backends::HttpHealthChecker;
use deploy_core::{
    HealthChecker, HealthStatus, InfraManager, Instance, InstanceId, InstanceState, conformance,
};
use deploy_lab::demo::DemoConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn instance_at(address: String) -> Instance {
    Instance {
        id: InstanceId::new("probe-target").unwrap(),
        app: app(),
        pool: pool("stable"),
        version: version("1.0"),
        state: InstanceState::Running,
        address: Some(address),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_checks_pass_the_health_checker_suite_against_the_demo_service() {
    let artifacts = Artifacts::new(&[("1.0", 0.0)]);
    let infra = artifacts.infra();
    let created = infra
        .provision(&app(), &pool("stable"), &version("1.0"), 2)
        .await
        .unwrap();
    infra.stop_instance(&app(), &created[1].id).await.unwrap();
    let stopped = infra
        .describe_instances(&app(), &[created[1].id.clone()])
        .await
        .unwrap()
        .remove(0);
    let checker = HttpHealthChecker::builder().expect_body("ok").build().unwrap();
    conformance::health_checker(&checker, &created[0], &stopped).await;

    // The stopped instance's record claims it runs: the refused connection tells.
    let claims_running = Instance {
        state: InstanceState::Running,
        ..stopped
    };
    let status = checker.check(&claims_running).await.unwrap();
    assert!(
        matches!(&status, HealthStatus::Unhealthy { reason } if reason.contains("refused") || reason.contains("connect")),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_status_wrong_body_and_silence_are_told_apart() {
    let artifacts = Artifacts::new(&[("1.0", 0.0)]);
    DemoConfig {
        unhealthy: true,
        ..DemoConfig::new("sick")
    }
    .write_artifact(&artifacts.root().join("shop/sick"))
    .unwrap();
    let infra = artifacts.infra();
    let sick = infra
        .provision(&app(), &pool("stable"), &version("sick"), 1)
        .await
        .unwrap()
        .remove(0);
    let checker = HttpHealthChecker::builder().build().unwrap();
    assert_eq!(
        checker.check(&sick).await.unwrap(),
        HealthStatus::unhealthy("HTTP 503 (expected 200)")
    );
    let healthy = infra
        .provision(&app(), &pool("stable"), &version("1.0"), 1)
        .await
        .unwrap()
        .remove(0);
    let picky = HttpHealthChecker::builder().expect_body("2.0").build().unwrap();
    let status = picky.check(&healthy).await.unwrap();
    assert!(
        matches!(&status, HealthStatus::Unhealthy { reason } if reason.contains("does not contain")),
        "{status}"
    );

    // A server that accepts and never answers: unknown, after one request's timeout (the
    // caller polls; a check does not retry).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let impatient = HttpHealthChecker::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let started = Instant::now();
    let status = impatient.check(&instance_at(address)).await.unwrap();
    assert!(
        matches!(&status, HealthStatus::Unknown { reason } if reason.contains("no answer within 500ms")),
        "{status}"
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(1),
        "one request, not two: {elapsed:?}"
    );

    // Misconfiguration is refused when built; an instance without address is an error.
    assert!(HttpHealthChecker::builder().path("health").build().is_err());
    assert!(HttpHealthChecker::builder().expect_status(42).build().is_err());
    assert!(
        HttpHealthChecker::builder()
            .timeout(Duration::ZERO)
            .build()
            .is_err()
    );
    assert!(
        HttpHealthChecker::builder()
            .root_certificate("not a certificate")
            .build()
            .is_err()
    );
    let nowhere = Instance {
        address: None,
        ..instance_at(String::new())
    };
    assert!(checker.check(&nowhere).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_checks_trust_an_added_root_and_refuse_an_unknown_certificate() {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![certified.cert.der().clone()],
        tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut request = [0u8; 1024];
                let _ = tls.read(&mut request).await;
                let _ = tls
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nok (tls)")
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let target = instance_at(address);
    let trusting = HttpHealthChecker::builder()
        .https()
        .root_certificate(cert_pem.into_bytes())
        .expect_body("tls")
        .build()
        .unwrap();
    assert_eq!(trusting.check(&target).await.unwrap(), HealthStatus::Healthy);
    let strict = HttpHealthChecker::builder().https().build().unwrap();
    let status = strict.check(&target).await.unwrap();
    assert!(
        !status.is_healthy(),
        "an unknown certificate is not trusted: {status}"
    );
}
