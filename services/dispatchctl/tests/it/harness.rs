//! The real services in-process on one [`TestEnv`], the CLI binary run against them, and
//! snapshot files.

use std::path::PathBuf;
use std::time::Duration;

use dispatch_core::{TaskId, TaskState};
pub use dispatch_testkit::auth::{KEY_ACME, KEY_ADMIN};
use dispatch_testkit::stack::{
    Gateway, Processor, Reader, gateway_settings, processor_settings, reader_settings,
};
use dispatch_testkit::{TestEnv, eventually};

/// The task type of [`Echo`], registered on every processor the harness starts.
pub const ECHO_TYPE: &str = "echo";

/// Succeeds with the task's payload as its result (so a task has both).
struct Echo;

#[async_trait::async_trait]
impl dispatch_processor::Handler for Echo {
    async fn handle(
        &self,
        _: dispatch_processor::HandlerContext,
        task: &dispatch_core::Envelope,
    ) -> Result<dispatch_processor::Outcome, dispatch_processor::HandlerError> {
        Ok(dispatch_processor::Outcome {
            result: Some(task.payload.clone()),
        })
    }
}

/// Which services to start.
#[derive(Clone, Copy)]
pub struct Services {
    pub gateway: bool,
    pub reader: bool,
    pub processor: bool,
}

impl Services {
    /// Gateway, reader and processor.
    pub const ALL: Self = Self {
        gateway: true,
        reader: true,
        processor: true,
    };
}

/// Running services ([`dispatch_testkit::stack`]'s) and their endpoints (`http://...`, empty
/// when not started).
pub struct Stack {
    pub env: TestEnv,
    pub gateway: String,
    pub reader: String,
    pub admin: String,
    running: (Option<Gateway>, Option<Processor>, Option<Reader>),
}

impl Stack {
    /// Starts the asked services on a fresh environment, each once it is ready; the processor
    /// with [`Echo`] registered.
    pub async fn start(which: Services) -> anyhow::Result<Self> {
        let env = TestEnv::new().await?;
        let url = |addr: std::net::SocketAddr| format!("http://{addr}");
        let gateway = match which.gateway {
            true => Some(Gateway::start(gateway_settings(&env)).await?),
            false => None,
        };
        let reader = match which.reader {
            true => Some(Reader::start(reader_settings(&env)).await?),
            false => None,
        };
        let processor = match which.processor {
            true => {
                let mut s = processor_settings(&env);
                s.consumer.group = format!("ctl-{}", env.id);
                s.shutdown.drain_timeout_ms = 2_000;
                let builder = dispatch_processor::App::builder(s).handler(ECHO_TYPE, Echo);
                Some(Processor::start(builder).await?)
            }
            false => None,
        };
        Ok(Self {
            gateway: gateway.as_ref().map(|g| url(g.addr)).unwrap_or_default(),
            reader: reader.as_ref().map(|r| url(r.addr)).unwrap_or_default(),
            admin: processor.as_ref().map(|p| url(p.addr)).unwrap_or_default(),
            running: (gateway, processor, reader),
            env,
        })
    }

    /// Runs `dispatchctl` with this stack's endpoints, the tenant key and the admin key.
    pub async fn ctl(&self, args: &[&str]) -> anyhow::Result<Out> {
        let mut full = vec![
            "--gateway",
            &self.gateway,
            "--reader",
            &self.reader,
            "--admin",
            &self.admin,
            "--api-key",
            KEY_ACME,
            "--admin-key",
            KEY_ADMIN,
        ];
        full.extend_from_slice(args);
        ctl(&full).await
    }

    /// [`Stack::ctl`] with `input` on standard input.
    pub async fn ctl_stdin(&self, args: &[&str], input: &str) -> anyhow::Result<Out> {
        let mut full = vec![
            "--gateway",
            &self.gateway,
            "--reader",
            &self.reader,
            "--api-key",
            KEY_ACME,
        ];
        full.extend_from_slice(args);
        run(&full, Some(input)).await
    }

    /// `-o json submit --key <key> --type <task_type> --payload <payload>`.
    pub async fn submit(&self, key: &str, task_type: &str, payload: &str) -> anyhow::Result<Out> {
        self.ctl(&[
            "-o",
            "json",
            "submit",
            "--key",
            key,
            "--type",
            task_type,
            "--payload",
            payload,
        ])
        .await
    }

    /// Waits up to 30 s until the task `id` is stored in `state`.
    pub async fn await_state(&self, id: &str, state: TaskState) -> anyhow::Result<()> {
        let task_id = TaskId::parse(id).map_err(|_| anyhow::anyhow!("bad id {id}"))?;
        let pool = &self.env.pool;
        eventually(
            &format!("task {state}"),
            Duration::from_secs(30),
            || async move {
                let s = dispatch_store::tasks::states(pool, &[task_id]).await.ok()?;
                s.iter()
                    .any(|(id, v)| *id == task_id && v.state == state)
                    .then_some(())
            },
        )
        .await
    }

    /// Stops the services (gateway first) and drops the database.
    pub async fn stop(self) -> anyhow::Result<()> {
        let (gateway, processor, reader) = self.running;
        if let Some(g) = gateway {
            g.stop().await?;
        }
        if let Some(p) = processor {
            p.stop().await?;
        }
        if let Some(r) = reader {
            r.stop().await?;
        }
        self.env.cleanup().await;
        Ok(())
    }
}

/// What a CLI run printed and returned.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Stdout as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.stdout)
            .map_err(|e| anyhow::anyhow!("stdout is not JSON ({e}): {self:?}"))
    }

    /// The `task_id` of stdout as JSON (what `-o json submit` prints).
    pub fn task_id(&self) -> anyhow::Result<String> {
        self.json()?["task_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no task id: {self:?}"))
    }
}

/// Runs the binary with `args` only: no `DISPATCH_*` variables from the outer environment and a
/// config directory of its own, so a developer's setup cannot leak in.
pub async fn ctl(args: &[&str]) -> anyhow::Result<Out> {
    run(args, None).await
}

/// [`ctl`], with `input` on standard input when given.
async fn run(args: &[&str], input: Option<&str>) -> anyhow::Result<Out> {
    use tokio::io::AsyncWriteExt as _;
    let home = std::env::temp_dir().join("dispatchctl-test-home");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dispatchctl"));
    cmd.args(args)
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", &home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("DISPATCH") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.unwrap_or_default().as_bytes())
            .await?;
    }
    let o = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output()).await??;
    Ok(Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    })
}

/// Replaces what differs between runs with placeholders of the same width (so tables stay
/// aligned): `prefix` (the topic prefix), UUIDs and RFC 3339 millisecond timestamps.
pub fn normalize(s: &str, prefix: &str) -> String {
    let s = s.replace(prefix, &format!("{:_<1$}", "<prefix>", prefix.len()));
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if is_uuid(&b[i..]) {
            out.push_str("<uuid>______________________________");
            i += 36;
        } else if is_time(&b[i..]) {
            out.push_str("<time>__________________");
            i += 24;
        } else {
            let ch = s[i..].chars().next().unwrap_or(' ');
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn shape(b: &[u8], pattern: &[u8]) -> bool {
    b.len() >= pattern.len()
        && pattern.iter().zip(b).all(|(p, c)| match p {
            b'x' => c.is_ascii_hexdigit(),
            b'9' => c.is_ascii_digit(),
            lit => lit == c,
        })
}

fn is_uuid(b: &[u8]) -> bool {
    shape(b, b"xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
}

fn is_time(b: &[u8]) -> bool {
    shape(b, b"9999-99-99T99:99:99.999Z")
}

/// Compares `actual` with `tests/snapshots/<name>`; `UPDATE_SNAPSHOTS=1` (re)writes the file.
pub fn assert_snapshot(name: &str, actual: &str) {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "snapshots", name]
        .iter()
        .collect();
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        if let Err(e) = std::fs::write(&path, actual) {
            panic!("cannot write {}: {e}", path.display());
        }
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "no snapshot {} ({e}); run with UPDATE_SNAPSHOTS=1 and review it",
            path.display()
        )
    });
    assert_eq!(
        actual,
        expected,
        "output differs from {} (UPDATE_SNAPSHOTS=1 rewrites it)",
        path.display()
    );
}
