//! Every connection over TLS, against the TLS stack (`deploy/local/stack.sh tls-up`): Kafka over
//! SASL_SSL (SCRAM-SHA-512), MariaDB with TLS required (`verify_identity`), Redis over
//! `rediss://`, the gateway and reader serving gRPC over TLS. And bad TLS settings stop start-up
//! with one line naming the setting: a CA that does not verify the server, a wrong SASL
//! password, an expired certificate, a missing file.

use std::net::SocketAddr;
use std::time::Duration;

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use dispatch_testkit::auth::{KEY_ACME, authed};
use dispatch_testkit::stack::{Stack, StackSettings};
use dispatch_testkit::{TestEnv, TlsStack};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::support::{SETTLE, spec};

fn tls_stack() -> anyhow::Result<TlsStack> {
    let tls = TlsStack::from_env().ok_or_else(|| {
        anyhow::anyhow!("DISPATCH_TEST_TLS_DIR is unset: source deploy/local/env.sh")
    })?;
    anyhow::ensure!(
        tls.file("ca.pem").exists(),
        "{} has no ca.pem: run deploy/local/stack.sh tls-up",
        tls.dir.display()
    );
    Ok(tls)
}

/// A TLS channel to `addr` trusting the stack's CA.
async fn tls_channel(tls: &TlsStack, addr: SocketAddr) -> anyhow::Result<Channel> {
    let ca = std::fs::read(tls.file("ca.pem"))?;
    Ok(
        Channel::from_shared(format!("https://localhost:{}", addr.port()))?
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await?,
    )
}

/// `GET path` on the admin port in plain HTTP/1.1; the status code.
async fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let head = String::from_utf8_lossy(&buf);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line: {head}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_with_every_connection_over_tls() -> anyhow::Result<()> {
    let tls = tls_stack()?;
    let env = TestEnv::on_tls_stack(&tls).await?;
    let mut s = StackSettings::for_env(&env);
    for grpc in [&mut s.gateway.grpc, &mut s.reader.grpc] {
        grpc.tls_cert_path = Some(tls.file("server.pem"));
        grpc.tls_key_path = Some(tls.file("server.key"));
    }
    // The settings under test really are the TLS ones.
    assert_eq!(s.gateway.kafka.security_protocol, "sasl_ssl");
    assert_eq!(
        s.processor.database.ssl_mode.as_deref(),
        Some("verify_identity")
    );
    assert!(s.reader.redis.url.starts_with("rediss://"));
    let stack = Stack::start_on(env, s).await?;

    // Readiness on the admin port stays plain HTTP while gRPC is TLS-only (kubelet probes).
    assert_eq!(http_status(stack.gateway.admin, "/readyz").await?, 200);
    assert_eq!(http_status(stack.reader.admin, "/readyz").await?, 200);

    let mut tasks = TaskServiceClient::new(tls_channel(&tls, stack.gateway.addr).await?);
    let accepted = tasks
        .submit_task(authed(
            pb::SubmitTaskRequest {
                task: Some(spec("noop", b"over tls")),
            },
            KEY_ACME,
        ))
        .await?
        .into_inner();
    let queries = TaskQueryServiceClient::new(tls_channel(&tls, stack.reader.addr).await?);
    let task = dispatch_testkit::eventually("task SUCCEEDED over TLS", SETTLE, || {
        let mut q = queries.clone();
        let id = accepted.task_id.clone();
        async move {
            q.get_task(authed(
                pb::GetTaskRequest {
                    task_id: id,
                    min_version: accepted.version,
                },
                KEY_ACME,
            ))
            .await
            .ok()?
            .into_inner()
            .task
            .filter(|t| t.state == pb::TaskState::Succeeded as i32)
        }
    })
    .await?;
    assert_eq!(task.task_id, accepted.task_id);
    stack.stop().await
}

/// The first line of a start-up failure.
async fn start_up_error(s: dispatch_gateway::Settings) -> String {
    match dispatch_gateway::App::build(s).await {
        Ok(_) => "started".into(),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_settings_stop_start_up_naming_the_setting() -> anyhow::Result<()> {
    let tls = tls_stack()?;
    let env = TestEnv::on_tls_stack(&tls).await?;
    let base = StackSettings::for_env(&env).gateway;
    let other_ca = tls.file("other-ca.pem");
    let expired = expired_certificate()?;

    let mut cases: Vec<(&str, dispatch_gateway::Settings, &[&str])> = Vec::new();
    let mut s = base.clone();
    s.kafka.ssl_ca_file = Some(other_ca.clone());
    cases.push((
        "kafka: a CA that did not sign the broker's certificate",
        s,
        &["kafka.ssl_ca_file", "does not verify"],
    ));
    let mut s = base.clone();
    s.kafka.sasl_password = Some("wrong-password".to_owned().into());
    cases.push((
        "kafka: a wrong SASL password",
        s,
        &["kafka.sasl_password", "refused"],
    ));
    let mut s = base.clone();
    s.kafka.ssl_ca_file = Some(tls.file("missing-ca.pem"));
    cases.push((
        "kafka: a missing CA file",
        s,
        &["kafka.ssl_ca_file", "missing-ca.pem", "No such file"],
    ));
    let mut s = base.clone();
    s.database.ssl_ca = Some(other_ca.clone());
    cases.push((
        "mysql: a CA that did not sign the server's certificate",
        s,
        &["database.ssl_ca", "does not verify"],
    ));
    let mut s = base.clone();
    s.redis.tls_ca_file = Some(other_ca.clone());
    cases.push((
        "redis: a CA that did not sign the server's certificate",
        s,
        &["redis.tls_ca_file", "does not verify"],
    ));
    let mut s = base.clone();
    s.grpc.tls_cert_path = Some(expired.path().join("expired.pem"));
    s.grpc.tls_key_path = Some(expired.path().join("expired.key"));
    cases.push((
        "grpc: an expired server certificate",
        s,
        &["grpc.tls_cert_path", "expired"],
    ));
    let mut s = base.clone();
    s.kafka.ssl_cert_file = Some(expired.path().join("expired.pem"));
    s.kafka.ssl_key_file = Some(expired.path().join("expired.key"));
    cases.push((
        "kafka: an expired client certificate",
        s,
        &["kafka.ssl_cert_file", "expired"],
    ));

    for (what, settings, want) in cases {
        let err = tokio::time::timeout(Duration::from_secs(30), start_up_error(settings))
            .await
            .map_err(|_| anyhow::anyhow!("{what}: start-up neither failed nor finished"))?;
        assert!(!err.contains('\n'), "{what}: not one line: {err}");
        for w in want {
            assert!(err.contains(w), "{what}: {w:?} missing from: {err}");
        }
    }
    // The same settings with the right CA and password start.
    let ok = start_up_error(base).await;
    assert_eq!(ok, "started");
    env.cleanup().await;
    Ok(())
}

/// A certificate (and key) that expired yesterday, in a temp dir.
fn expired_certificate() -> anyhow::Result<tempfile::TempDir> {
    let key = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
    let now = std::time::SystemTime::now();
    p.not_before = (now - Duration::from_secs(30 * 86_400)).into();
    p.not_after = (now - Duration::from_secs(86_400)).into();
    let cert = p.self_signed(&key)?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("expired.pem"), cert.pem())?;
    std::fs::write(dir.path().join("expired.key"), key.serialize_pem())?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_ssl_with_a_client_certificate() -> anyhow::Result<()> {
    let tls = tls_stack()?;
    let env = TestEnv::on_tls_stack(&tls).await?;
    let mut s = StackSettings::for_env(&env).gateway;
    // The SSL listener (client certificates verified when presented) instead of SASL_SSL.
    s.kafka.brokers = tls.kafka_ssl.clone();
    s.kafka.security_protocol = "ssl".into();
    s.kafka.sasl_mechanism = String::new();
    s.kafka.sasl_username = None;
    s.kafka.sasl_password = None;
    s.kafka.ssl_cert_file = Some(tls.file("client.pem"));
    s.kafka.ssl_key_file = Some(tls.file("client.key"));
    let gateway = dispatch_testkit::stack::Gateway::start(s).await?;
    let mut c = TaskServiceClient::new(dispatch_testkit::stack::channel(gateway.addr).await?);
    let accepted = c
        .submit_task(authed(
            pb::SubmitTaskRequest {
                task: Some(spec("noop", b"ssl")),
            },
            KEY_ACME,
        ))
        .await?
        .into_inner();
    assert_eq!(accepted.accepted_via, pb::AcceptedVia::Kafka as i32);
    gateway.stop().await?;
    env.cleanup().await;
    Ok(())
}
