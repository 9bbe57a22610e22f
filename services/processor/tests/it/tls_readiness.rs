//! A run-time TLS failure of MySQL or Kafka turns the processor's readiness down (`/readyz`
//! component `<dependency>_tls` Down, 503, gRPC health NOT_SERVING: what the kubelet asks) for
//! `health.tls_hold_ms` and until the dependency works again, then it is ready again by itself.
//! The failures are recorded as the app's probe, writer and Kafka contexts record them (no TLS
//! stack here: `readiness::tests` shows the contexts' reports arriving, the runtime's
//! tests/it/tls_failures.rs real failures of the real clients classified as such).

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use dispatch_processor::App;
use dispatch_runtime::Shutdown;
use dispatch_runtime::tls_failures::Dependency;
use dispatch_testkit::{TestEnv, eventually};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use dispatch_testkit::stack::{
    TlsFailureCase, readyz_component, tls_errors_counted, tls_failure_is_held_then_clears,
};

use crate::harness::settings;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse` (`status`: 1 SERVING, 2 NOT_SERVING).
#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// A protobuf codec for the two messages above (the processor's tests have no tonic-health).
struct Proto<E, D>(PhantomData<(E, D)>);

impl<E, D> Codec for Proto<E, D>
where
    E: prost::Message + Send + 'static,
    D: prost::Message + Default + Send + 'static,
{
    type Encode = E;
    type Decode = D;
    type Encoder = Proto<E, ()>;
    type Decoder = Proto<(), D>;

    fn encoder(&mut self) -> Self::Encoder {
        Proto(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        Proto(PhantomData)
    }
}

impl<E: prost::Message> Encoder for Proto<E, ()> {
    type Item = E;
    type Error = tonic::Status;

    fn encode(&mut self, item: E, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        item.encode(buf)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl<D: prost::Message + Default> Decoder for Proto<(), D> {
    type Item = D;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<D>, tonic::Status> {
        D::decode(buf)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// Whether gRPC health says SERVING (`None`: no answer).
async fn serving(channel: &tonic::transport::Channel) -> Option<bool> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.ok()?;
    let r: tonic::Response<HealthCheckResponse> = grpc
        .unary(
            tonic::Request::new(HealthCheckRequest::default()),
            tonic::codegen::http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check"),
            Proto::<HealthCheckRequest, HealthCheckResponse>(PhantomData),
        )
        .await
        .ok()?;
    Some(r.into_inner().status == 1)
}

/// `dispatch_tls_errors_total{dependency, service="processor"}` as `/metrics` shows it.
async fn counted(admin: SocketAddr, dep: Dependency) -> Option<f64> {
    tls_errors_counted(admin, "processor", dep).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_failure_turns_readiness_down_for_the_hold_then_it_recovers() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let hold = Duration::from_millis(1_500);
    let mut s = settings(&env);
    s.health.probe_interval_ms = 100;
    s.health.tls_hold_ms = u64::try_from(hold.as_millis())?;
    let app = App::build(s).await?;
    let tls = app.tls_failures();
    let (addr, admin) = (app.local_addr()?, app.admin_addr()?);
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect_lazy();
    eventually("SERVING and ready", Duration::from_secs(30), || async {
        (serving(&channel).await? && readyz_component(admin, "mysql").await?.0 == 200).then_some(())
    })
    .await?;
    // No failure yet: no component, and the series exist at zero.
    assert_eq!(
        readyz_component(admin, "mysql_tls").await,
        Some((200, "absent".into()))
    );
    assert_eq!(counted(admin, Dependency::Mysql).await, Some(0.0));
    assert_eq!(counted(admin, Dependency::Kafka).await, Some(0.0));

    for (dep, reason) in [
        (
            Dependency::Mysql,
            "error communicating with database: invalid peer certificate: Expired",
        ),
        (
            Dependency::Kafka,
            "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed",
        ),
    ] {
        // Down although MySQL answers the probe and Kafka its metadata requests throughout.
        let case = TlsFailureCase {
            dep,
            reason,
            failing: (503, "down"),
            serving: false,
        };
        tls_failure_is_held_then_clears("processor", &tls, admin, hold, || serving(&channel), case)
            .await?;
    }

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(30), handle).await???;
    env.cleanup().await;
    Ok(())
}
