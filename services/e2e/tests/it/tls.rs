//! gRPC over TLS and mTLS, with certificates the test makes (rcgen): a CA, a server
//! certificate for localhost/127.0.0.1, a client certificate signed by the CA, and a client
//! certificate from an unrelated CA.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_query_service_client::TaskQueryServiceClient;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use dispatch_runtime::settings::GrpcSettings;
use dispatch_testkit::TestEnv;
use dispatch_testkit::auth::{KEY_ACME, authed};
use dispatch_testkit::stack::{Gateway, Reader, StackSettings};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::support::spec;

/// A PEM certificate and its key.
#[derive(Clone)]
struct Pem {
    cert: String,
    key: String,
}

/// The test's PKI, written to a temp dir.
struct Pki {
    ca: String,
    server: Pem,
    client: Pem,
    rogue_client: Pem,
    dir: tempfile::TempDir,
}

fn new_ca(name: &str) -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(p, key)))
}

fn leaf(
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'static, KeyPair>,
) -> anyhow::Result<Pem> {
    let mut p = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.extended_key_usages = vec![usage];
    p.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

impl Pki {
    fn new() -> anyhow::Result<Self> {
        let (ca, issuer) = new_ca("dispatch e2e ca")?;
        let (_, rogue) = new_ca("unrelated ca")?;
        let pki = Self {
            server: leaf(
                &["localhost", "127.0.0.1"],
                ExtendedKeyUsagePurpose::ServerAuth,
                &issuer,
            )?,
            client: leaf(
                &["e2e-client"],
                ExtendedKeyUsagePurpose::ClientAuth,
                &issuer,
            )?,
            rogue_client: leaf(&["e2e-rogue"], ExtendedKeyUsagePurpose::ClientAuth, &rogue)?,
            ca,
            dir: tempfile::tempdir()?,
        };
        std::fs::write(pki.path("ca.pem"), &pki.ca)?;
        std::fs::write(pki.path("server.pem"), &pki.server.cert)?;
        std::fs::write(pki.path("server.key"), &pki.server.key)?;
        Ok(pki)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `grpc` with TLS on, and mTLS when `mutual`.
    fn apply(&self, grpc: &mut GrpcSettings, mutual: bool) {
        grpc.tls_cert_path = Some(self.path("server.pem"));
        grpc.tls_key_path = Some(self.path("server.key"));
        grpc.tls_client_ca_path = mutual.then(|| self.path("ca.pem"));
    }

    /// A TLS channel trusting the test CA, presenting `identity` if given. Errors (including a
    /// refused handshake) come back as the error string.
    async fn channel(&self, addr: SocketAddr, identity: Option<&Pem>) -> Result<Channel, String> {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .domain_name("localhost");
        if let Some(id) = identity {
            tls = tls.identity(Identity::from_pem(&id.cert, &id.key));
        }
        Channel::from_shared(format!("https://127.0.0.1:{}", addr.port()))
            .map_err(|e| e.to_string())?
            .tls_config(tls)
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))
    }
}

/// SubmitTask over `channel`; `Err` describes a connection or call failure.
async fn submit(channel: Result<Channel, String>) -> Result<pb::SubmitTaskResponse, String> {
    let mut c = TaskServiceClient::new(channel?);
    c.submit_task(authed(
        pb::SubmitTaskRequest {
            task: Some(spec("noop", b"")),
        },
        KEY_ACME,
    ))
    .await
    .map(tonic::Response::into_inner)
    .map_err(|s| format!("{s:?}"))
}

/// A plaintext channel to a TLS port; `Err` when the connection already fails.
async fn plaintext(addr: SocketAddr) -> Result<Channel, String> {
    dispatch_testkit::stack::channel(addr)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn gateway_serves_tls_and_refuses_plaintext() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pki = Pki::new()?;
    let mut s = StackSettings::for_env(&env).gateway;

    // A missing file fails start-up, naming the setting.
    let mut broken = s.clone();
    pki.apply(&mut broken.grpc, false);
    broken.grpc.tls_cert_path = Some(pki.path("missing.pem"));
    let err = dispatch_gateway::App::build(broken)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a missing certificate must fail start-up"))?;
    assert!(format!("{err:#}").contains("grpc.tls_cert_path"), "{err:#}");

    pki.apply(&mut s.grpc, false);
    let gateway = Gateway::start(s).await?;
    let ok = submit(pki.channel(gateway.addr, None).await).await;
    let accepted = ok.map_err(|e| anyhow::anyhow!("submit over TLS failed: {e}"))?;
    assert_eq!(accepted.accepted_via, pb::AcceptedVia::Kafka as i32);

    let refused = submit(plaintext(gateway.addr).await).await;
    assert!(
        refused.is_err(),
        "a plaintext client was served: {refused:?}"
    );
    // The failed handshake did not hurt the server.
    assert!(submit(pki.channel(gateway.addr, None).await).await.is_ok());
    gateway.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn gateway_mtls_requires_a_client_certificate_from_the_ca() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pki = Pki::new()?;
    let mut s = StackSettings::for_env(&env).gateway;
    pki.apply(&mut s.grpc, true);
    let gateway = Gateway::start(s).await?;

    let anonymous = submit(pki.channel(gateway.addr, None).await).await;
    assert!(
        anonymous.is_err(),
        "served without a client certificate: {anonymous:?}"
    );
    let rogue = submit(pki.channel(gateway.addr, Some(&pki.rogue_client)).await).await;
    assert!(
        rogue.is_err(),
        "served a certificate of another CA: {rogue:?}"
    );
    let refused = submit(plaintext(gateway.addr).await).await;
    assert!(
        refused.is_err(),
        "a plaintext client was served: {refused:?}"
    );

    let ok = submit(pki.channel(gateway.addr, Some(&pki.client)).await).await;
    let accepted = ok.map_err(|e| anyhow::anyhow!("submit over mTLS failed: {e}"))?;
    assert!(!accepted.task_id.is_empty());
    gateway.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn reader_mtls_requires_a_client_certificate_from_the_ca() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pki = Pki::new()?;
    let mut s = StackSettings::for_env(&env).reader;
    pki.apply(&mut s.grpc, true);
    let reader = Reader::start(s).await?;
    let unknown = dispatch_core::TaskId::new().to_string();
    let get = |channel: Result<Channel, String>| {
        let unknown = unknown.clone();
        async move {
            let mut c = TaskQueryServiceClient::new(channel?);
            c.get_task(authed(
                pb::GetTaskRequest {
                    task_id: unknown,
                    min_version: 0,
                },
                KEY_ACME,
            ))
            .await
            .map(|_| ())
            .map_err(|s| (s.code(), format!("{s:?}")))
            .map_err(|(code, s)| {
                if code == Code::NotFound {
                    "NOT_FOUND".to_owned()
                } else {
                    s
                }
            })
        }
    };
    // An answer from the service itself (NOT_FOUND for an unknown id) proves the channel works.
    let served = get(pki.channel(reader.addr, Some(&pki.client)).await).await;
    assert_eq!(served, Err("NOT_FOUND".to_owned()));
    for (what, r) in [
        (
            "no client certificate",
            get(pki.channel(reader.addr, None).await).await,
        ),
        (
            "another CA's certificate",
            get(pki.channel(reader.addr, Some(&pki.rogue_client)).await).await,
        ),
        ("plaintext", get(plaintext(reader.addr).await).await),
    ] {
        assert!(
            matches!(&r, Err(e) if e != "NOT_FOUND"),
            "the reader answered a client with {what}: {r:?}"
        );
    }
    reader.stop().await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let pki = Pki::new()?;
    let mut s = StackSettings::for_env(&env).gateway;
    pki.apply(&mut s.grpc, false);
    let gateway = Gateway::start(s).await?;
    let first = submit(pki.channel(gateway.addr, None).await).await;
    assert!(first.is_ok(), "{first:?}");

    // A renewal (another CA here, so the test can tell the two apart) overwrites the files in
    // place, as a renewed Kubernetes secret or cert-manager does.
    let renewed = Pki::new()?;
    std::fs::write(pki.path("server.key"), &renewed.server.key)?;
    std::fs::write(pki.path("server.pem"), &renewed.server.cert)?;
    dispatch_testkit::eventually(
        "the renewed certificate served",
        dispatch_runtime::tls::RELOAD_CHECK * 10,
        || async { submit(renewed.channel(gateway.addr, None).await).await.ok() },
    )
    .await?;
    let old = submit(pki.channel(gateway.addr, None).await).await;
    assert!(
        old.is_err(),
        "the replaced certificate is still served: {old:?}"
    );

    // A broken renewal (a key that does not match) keeps the previous certificate.
    let other = Pki::new()?;
    std::fs::write(pki.path("server.key"), &other.server.key)?;
    tokio::time::sleep(dispatch_runtime::tls::RELOAD_CHECK * 2).await;
    let kept = submit(renewed.channel(gateway.addr, None).await).await;
    assert!(
        kept.is_ok(),
        "a mismatched key replaced the certificate: {kept:?}"
    );
    assert!(gateway.is_running());
    gateway.stop().await?;
    env.cleanup().await;
    Ok(())
}
