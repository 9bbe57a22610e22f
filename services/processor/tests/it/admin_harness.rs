//! A processor with its AdminService, and requests with or without the admin key.

use std::net::SocketAddr;
use std::time::Duration;

use dispatch_processor::{App, AppBuilder, Control};
use dispatch_proto::v1::admin_service_client::AdminServiceClient;
use dispatch_runtime::Shutdown;
use dispatch_runtime::server::auth::{ApiKeyEntry, hash_key};
use dispatch_testkit::{TestEnv, eventually};
use tonic::transport::Channel;

use crate::harness::settings;

/// The admin key.
pub const ADMIN_KEY: &str = "admin-key-0123456789";
/// Tenant `acme`'s key (refused by AdminService).
pub const TENANT_KEY: &str = "acme-key-0123456789";

/// A running processor and an AdminService client.
pub struct Admin {
    pub client: AdminServiceClient<Channel>,
    pub control: Control,
    shutdown: Shutdown,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Admin {
    pub async fn start(
        env: &TestEnv,
        with: impl FnOnce(AppBuilder) -> AppBuilder,
    ) -> anyhow::Result<Self> {
        let mut s = settings(env);
        s.auth.admin_key_sha256 = Some(hash_key(ADMIN_KEY));
        s.auth.api_keys = vec![ApiKeyEntry {
            tenant: "acme".into(),
            key_sha256: hash_key(TENANT_KEY),
        }];
        let app = with(App::builder(s)).build().await?;
        let addr: SocketAddr = app.local_addr()?;
        let control = app.control();
        let shutdown = Shutdown::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        let c = control.clone();
        eventually("partition assignment", Duration::from_secs(30), || {
            let c = c.clone();
            async move { (c.assigned_partitions() > 0).then_some(()) }
        })
        .await?;
        let client = AdminServiceClient::connect(format!("http://{addr}")).await?;
        Ok(Self {
            client,
            control,
            shutdown,
            handle,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        self.handle.await?
    }
}

pub fn req<T>(msg: T, key: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(k) = key {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {k}").parse().expect("ascii"),
        );
    }
    r
}

pub fn admin<T>(msg: T) -> tonic::Request<T> {
    req(msg, Some(ADMIN_KEY))
}
