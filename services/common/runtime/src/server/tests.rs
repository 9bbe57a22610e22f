//! The skeleton over a real loopback connection: timeouts, disconnects and shed requests counted
//! as what they are, the in-flight gauge back to 0, the HTTP/2 limits, health.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dispatch_proto::v1 as pb;
use dispatch_proto::v1::task_service_client::TaskServiceClient;
use dispatch_proto::v1::task_service_server::{SERVICE_NAME, TaskService, TaskServiceServer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use super::metrics::{in_flight, requests};
use super::*;

/// SubmitTask never answers (it says when it started); CancelTask answers NOT_FOUND at once.
struct Slow {
    started: Arc<Notify>,
}

#[tonic::async_trait]
impl TaskService for Slow {
    async fn submit_task(
        &self,
        _: Request<pb::SubmitTaskRequest>,
    ) -> Result<Response<pb::SubmitTaskResponse>, Status> {
        self.started.notify_one();
        std::future::pending().await
    }

    async fn submit_tasks(
        &self,
        _: Request<pb::SubmitTasksRequest>,
    ) -> Result<Response<pb::SubmitTasksResponse>, Status> {
        Ok(Response::new(pb::SubmitTasksResponse::default()))
    }

    async fn cancel_task(
        &self,
        _: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        Err(Status::not_found("no such task"))
    }

    async fn submit_workflow(
        &self,
        _: Request<pb::SubmitWorkflowRequest>,
    ) -> Result<Response<pb::SubmitWorkflowResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn cancel_workflow(
        &self,
        _: Request<pb::CancelWorkflowRequest>,
    ) -> Result<Response<pb::CancelWorkflowResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

struct Running {
    addr: std::net::SocketAddr,
    client: TaskServiceClient<Channel>,
    channel: Channel,
    started: Arc<Notify>,
    serving: Serving,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

static SHED: AtomicUsize = AtomicUsize::new(0);

fn count_shed() {
    SHED.fetch_add(1, Ordering::SeqCst);
}

/// A server labelled `label` (each test its own, the metrics being process-wide).
async fn start(label: &'static str, tweak: impl FnOnce(&mut GrpcSettings)) -> Running {
    let mut s = GrpcSettings::default();
    tweak(&mut s);
    let spec = Spec {
        label,
        services: &[Rpcs {
            service: SERVICE_NAME,
            methods: &["SubmitTask", "SubmitTasks", "CancelTask"],
        }],
    };
    let server = GrpcServer::bind(spec, &s, None)
        .await
        .expect("bind")
        .on_shed(count_shed);
    let addr = server.local_addr().expect("addr");
    let serving = server.serving();
    let started = Arc::new(Notify::new());
    let stop = CancellationToken::new();
    let svc = TaskServiceServer::new(Slow {
        started: Arc::clone(&started),
    });
    let task = tokio::spawn(server.serve(Routes::new(svc), stop.clone().cancelled_owned()));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    Running {
        addr,
        client: TaskServiceClient::new(channel.clone()),
        channel,
        started,
        serving,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("joined").expect("served");
    }
}

/// Waits (bounded) until `cond` holds.
async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn submit() -> pb::SubmitTaskRequest {
    pb::SubmitTaskRequest::default()
}

#[tokio::test]
async fn a_handler_slower_than_the_server_timeout_counts_deadline_exceeded() {
    let label = "test-timeout";
    let mut r = start(label, |s| s.request_timeout_ms = 200).await;
    let err = r.client.submit_task(submit()).await.expect_err("timed out");
    // The caller sees what tonic's own timeout answered.
    assert_eq!(err.code(), Code::Cancelled, "{err:?}");
    assert_eq!(err.message(), layer::TIMEOUT_MESSAGE);
    until("the timeout counted", || {
        requests(label, "SubmitTask", Code::DeadlineExceeded) == 1
    })
    .await;
    assert_eq!(in_flight(label), 0, "in flight after the timeout");
    assert_eq!(requests(label, "SubmitTask", Code::Cancelled), 0);
    // The caller's own, shorter deadline is the one that applies.
    let mut req = Request::new(submit());
    req.set_timeout(Duration::from_millis(50));
    let t = Instant::now();
    r.client.submit_task(req).await.expect_err("timed out");
    assert!(
        t.elapsed() < Duration::from_millis(190),
        "{:?}",
        t.elapsed()
    );
    until("the second timeout counted", || {
        requests(label, "SubmitTask", Code::DeadlineExceeded) == 2
    })
    .await;
    assert_eq!(in_flight(label), 0);
    r.stop().await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_call_counts_cancelled() {
    let label = "test-disconnect";
    let r = start(label, |s| s.request_timeout_ms = 60_000).await;
    // The call is abandoned while the handler runs: its stream is reset.
    let mut c = r.client.clone();
    let call = tokio::spawn(async move { c.submit_task(submit()).await });
    r.started.notified().await;
    assert_eq!(in_flight(label), 1);
    call.abort();
    until("the abandoned call counted", || {
        requests(label, "SubmitTask", Code::Cancelled) == 1
    })
    .await;
    assert_eq!(in_flight(label), 0, "in flight after the reset");
    // The whole connection goes away while the handler runs.
    let mut c = TaskServiceClient::new(r.channel.clone());
    let call = tokio::spawn(async move { c.submit_task(submit()).await });
    r.started.notified().await;
    assert_eq!(in_flight(label), 1);
    call.abort();
    drop(r.client);
    drop(r.channel);
    until("the disconnected call counted", || {
        requests(label, "SubmitTask", Code::Cancelled) == 2
    })
    .await;
    assert_eq!(in_flight(label), 0, "in flight after the disconnect");
    assert_eq!(requests(label, "SubmitTask", Code::DeadlineExceeded), 0);
    r.stop.cancel();
    r.task.await.expect("joined").expect("served");
}

#[tokio::test]
async fn requests_over_the_in_flight_bound_are_shed_unavailable_and_counted() {
    let label = "test-shed";
    let r = start(label, |s| s.max_concurrent_requests = 1).await;
    let mut hog = r.client.clone();
    let held = tokio::spawn(async move { hog.submit_task(submit()).await });
    r.started.notified().await;
    let before = SHED.load(Ordering::SeqCst);
    let err = r
        .client
        .clone()
        .cancel_task(pb::CancelTaskRequest::default())
        .await
        .expect_err("shed");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), layer::SHED_MESSAGE);
    assert_eq!(requests(label, "CancelTask", Code::Unavailable), 1);
    assert!(
        SHED.load(Ordering::SeqCst) > before,
        "the service's hook ran"
    );
    // Health is exempt from the bound.
    let mut health = tonic_health::pb::health_client::HealthClient::new(r.channel.clone());
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health answers under overload");
    held.abort();
    until("the slot is free", || in_flight(label) == 0).await;
    let err = r
        .client
        .clone()
        .cancel_task(pb::CancelTaskRequest::default())
        .await
        .expect_err("not found");
    assert_eq!(err.code(), Code::NotFound, "admitted again: {err:?}");
    assert_eq!(requests(label, "CancelTask", Code::NotFound), 1);
    r.stop().await;
}

#[tokio::test]
async fn a_header_list_over_the_limit_is_refused_cleanly() {
    let label = "test-headers";
    let mut r = start(label, |s| s.max_header_list_bytes = 4096).await;
    let mut req = Request::new(pb::CancelTaskRequest::default());
    let big = "x".repeat(8 * 1024);
    req.metadata_mut()
        .insert("x-big", big.parse().expect("ascii"));
    let err = r.client.cancel_task(req).await.expect_err("refused");
    // HTTP/2 refuses the stream with 431 (Request Header Fields Too Large), before any handler.
    assert!(err.message().contains("431"), "{err:?}");
    assert_eq!(requests(label, "CancelTask", Code::NotFound), 0);
    // The server is still up, and serves a request within the limit.
    assert!(!r.task.is_finished());
    let mut c = TaskServiceClient::new(
        Channel::from_shared(format!("http://{}", r.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect"),
    );
    let mut req = Request::new(pb::CancelTaskRequest::default());
    req.metadata_mut()
        .insert("x-small", "x".repeat(512).parse().expect("ascii"));
    let err = c.cancel_task(req).await.expect_err("not found");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    r.stop().await;
}

#[tokio::test]
async fn health_is_not_serving_until_set_and_again_at_shutdown() {
    use tonic_health::ServingStatus as S;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let r = start("test-health", |_| {}).await;
    let mut h = HealthClient::new(r.channel.clone());
    let status = |svc: &str| {
        let mut h = h.clone();
        let req = HealthCheckRequest {
            service: svc.to_owned(),
        };
        async move { h.check(req).await.expect("check").into_inner().status }
    };
    for svc in ["", SERVICE_NAME] {
        assert_eq!(status(svc).await, S::NotServing as i32, "{svc:?}");
    }
    r.serving.set(true).await;
    for svc in ["", SERVICE_NAME] {
        assert_eq!(status(svc).await, S::Serving as i32, "{svc:?}");
    }
    let mut watch = h
        .watch(HealthCheckRequest::default())
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        watch.message().await.expect("ok").expect("status").status,
        S::Serving as i32
    );
    r.stop.cancel();
    assert_eq!(
        watch.message().await.expect("ok").expect("status").status,
        S::NotServing as i32,
        "NOT_SERVING as soon as shutdown starts"
    );
    drop(watch);
    r.task.await.expect("joined").expect("served");
}

#[tokio::test]
async fn accepted_connections_have_nagle_off() {
    use futures::StreamExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut accepted = incoming(listener);
    let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let server_side = accepted
        .next()
        .await
        .expect("a connection")
        .expect("accepted");
    assert!(
        server_side.nodelay().expect("nodelay"),
        "TCP_NODELAY is set"
    );
}
