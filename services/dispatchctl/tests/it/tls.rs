//! dispatchctl against a gateway that serves gRPC over TLS only, with the TLS stack's CA and
//! certificates (`deploy/local/stack.sh tls-up`): `--ca` (or the config file's `ca`) verifies
//! the gateway, `--cert`/`--client-key` (or `cert`/`key`) authenticate the client; with another
//! CA the handshake fails with exit code 5.

use dispatch_testkit::stack::{Gateway, gateway_settings};
use dispatch_testkit::{TestEnv, TlsStack};

use crate::harness::{KEY_ACME, ctl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatchctl_submits_to_a_tls_gateway() -> anyhow::Result<()> {
    let tls = TlsStack::from_env().ok_or_else(|| {
        anyhow::anyhow!("DISPATCH_TEST_TLS_DIR is unset: source deploy/local/env.sh")
    })?;
    anyhow::ensure!(
        tls.file("ca.pem").exists(),
        "no {}: run deploy/local/stack.sh tls-up",
        tls.file("ca.pem").display()
    );
    let env = TestEnv::new().await?;
    let mut s = gateway_settings(&env);
    s.grpc.tls_cert_path = Some(tls.file("server.pem"));
    s.grpc.tls_key_path = Some(tls.file("server.key"));
    s.grpc.tls_client_ca_path = Some(tls.file("ca.pem"));
    let app = Gateway::spawn(s).await?;
    let gateway = format!("https://localhost:{}", app.addr.port());

    let ca = tls.file("ca.pem").to_string_lossy().into_owned();
    let cert = tls.file("client.pem").to_string_lossy().into_owned();
    let key = tls.file("client.key").to_string_lossy().into_owned();
    let other = tls.file("other-ca.pem").to_string_lossy().into_owned();
    let submit = |extra: Vec<String>| {
        let gateway = gateway.clone();
        async move {
            let mut args: Vec<String> = vec![
                "--gateway".into(),
                gateway,
                "--api-key".into(),
                KEY_ACME.into(),
            ];
            args.extend(extra);
            args.extend(["submit", "--key", "k-tls", "--type", "noop"].map(String::from));
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            ctl(&refs).await
        }
    };

    // The gateway asks for client certificates (mTLS): --ca, --cert and --client-key.
    let ok = submit(vec![
        "--ca".into(),
        ca.clone(),
        "--cert".into(),
        cert.clone(),
        "--client-key".into(),
        key.clone(),
    ])
    .await?;
    assert_eq!(ok.code, 0, "{ok:?}");
    // The same from the config file.
    let cfg = std::env::temp_dir().join(format!("dispatchctl-tls-{}.toml", env.id));
    std::fs::write(
        &cfg,
        format!("ca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n"),
    )?;
    let from_file = submit(vec!["--config".into(), cfg.to_string_lossy().into_owned()]).await?;
    let _ = std::fs::remove_file(&cfg);
    assert_eq!(from_file.code, 0, "{from_file:?}");
    // Another CA: the gateway's certificate does not verify.
    let wrong_ca = submit(vec![
        "--ca".into(),
        other,
        "--cert".into(),
        cert.clone(),
        "--client-key".into(),
        key.clone(),
    ])
    .await?;
    assert_eq!(wrong_ca.code, 5, "{wrong_ca:?}");
    assert!(
        wrong_ca.stderr.contains("cannot connect"),
        "{}",
        wrong_ca.stderr
    );
    // No client certificate: refused.
    let anonymous = submit(vec!["--ca".into(), ca.clone()]).await?;
    assert_ne!(anonymous.code, 0, "{anonymous:?}");
    // --cert without --client-key: invalid input.
    let half = submit(vec!["--ca".into(), ca, "--cert".into(), cert]).await?;
    assert_eq!(half.code, 2, "{half:?}");

    app.stop().await?;
    env.cleanup().await;
    Ok(())
}
