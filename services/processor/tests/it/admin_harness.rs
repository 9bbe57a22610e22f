//! A processor with its AdminService client; the keys are [`dispatch_testkit::auth`]'s (the admin
//! key, and tenant `acme`'s, which AdminService refuses).

use dispatch_processor::{App, AppBuilder, Control};
use dispatch_proto::v1::admin_service_client::AdminServiceClient;
use dispatch_testkit::TestEnv;
use dispatch_testkit::stack::Processor;
use tonic::transport::Channel;

pub use dispatch_testkit::auth::{KEY_ACME, admin, with_key};

use crate::harness::settings;

/// A running processor and an AdminService client.
pub struct Admin {
    pub client: AdminServiceClient<Channel>,
    pub control: Control,
    app: Processor,
}

impl Admin {
    /// Starts a processor on `env` with `with` applied to its builder, once it owns partitions.
    pub async fn start(
        env: &TestEnv,
        with: impl FnOnce(AppBuilder) -> AppBuilder,
    ) -> anyhow::Result<Self> {
        let app = Processor::start(with(App::builder(settings(env)))).await?;
        Ok(Self {
            client: app.client().await?,
            control: app.control.clone(),
            app,
        })
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.app.stop().await
    }
}
