//! A small TCP fault proxy for reliability tests: forwards `listen` to `upstream`, adding latency
//! to every chunk in both directions and resetting a fraction of connections mid-stream. Runs for a
//! bounded time and stops by itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Flags.
#[derive(Debug, clap::Args, Clone)]
pub struct ProxyArgs {
    /// Listen address (loopback).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Upstream address (loopback).
    #[arg(long)]
    pub upstream: SocketAddr,
    /// Latency added to every forwarded chunk, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Probability that a connection is reset after each forwarded chunk.
    #[arg(long, default_value_t = 0.0)]
    pub reset_probability: f64,
    /// Inject faults only during the first this-many seconds, then forward cleanly (recovery).
    /// 0 means for the whole run.
    #[arg(long, default_value_t = 0)]
    pub fault_s: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub duration_s: u64,
}

/// Counters the proxy reports at the end.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections reset on purpose.
    pub resets: AtomicU64,
}

/// Runs the proxy until `duration_s` passes.
///
/// # Errors
/// A non-loopback address, or the listen address cannot be bound.
pub async fn run(a: ProxyArgs) -> anyhow::Result<Arc<Stats>> {
    anyhow::ensure!(
        a.listen.ip().is_loopback() && a.upstream.ip().is_loopback(),
        "the fault proxy only forwards between loopback addresses"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.reset_probability),
        "--reset-probability must be in 0..=1"
    );
    let listener = TcpListener::bind(a.listen).await?;
    let stats = Arc::new(Stats::default());
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(a.duration_s);
    let faults_until = (a.fault_s > 0).then(|| started + Duration::from_secs(a.fault_s));
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = tokio::time::sleep_until(deadline) => break,
        };
        let Ok((client, _)) = accepted else { continue };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        let (a, stats) = (a.clone(), stats.clone());
        tokio::spawn(async move {
            if let Ok(server) = TcpStream::connect(a.upstream).await {
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let f = Faults {
                    latency_ms: a.latency_ms,
                    reset_probability: a.reset_probability,
                    until: faults_until,
                };
                let up = pipe(cr, sw, f, stats.clone());
                let down = pipe(sr, cw, f, stats);
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            }
        });
    }
    eprintln!(
        "fault proxy done: {} connections, {} resets",
        stats.connections.load(Ordering::Relaxed),
        stats.resets.load(Ordering::Relaxed)
    );
    Ok(stats)
}

/// What to inject, and until when.
#[derive(Debug, Clone, Copy)]
struct Faults {
    latency_ms: u64,
    reset_probability: f64,
    until: Option<tokio::time::Instant>,
}

impl Faults {
    fn active(&self) -> bool {
        self.until.is_none_or(|u| tokio::time::Instant::now() < u)
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    f: Faults,
    stats: Arc<Stats>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.shutdown().await;
        }
        let active = f.active();
        if active && f.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
        }
        to.write_all(&buf[..n]).await?;
        if active && f.reset_probability > 0.0 && rand::rng().random_bool(f.reset_probability) {
            stats.resets.fetch_add(1, Ordering::Relaxed);
            // Dropping both halves closes the connection abruptly from each side's view.
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected reset",
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn forwards_with_latency_and_refuses_non_loopback() -> anyhow::Result<()> {
        let upstream = TcpListener::bind("127.0.0.1:0").await?;
        let up_addr = upstream.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 5];
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&b).await;
                    }
                });
            }
        });
        let probe = TcpListener::bind("127.0.0.1:0").await?;
        let listen = probe.local_addr()?;
        drop(probe);
        let args = ProxyArgs {
            listen,
            upstream: up_addr,
            latency_ms: 50,
            reset_probability: 0.0,
            fault_s: 0,
            duration_s: 5,
        };
        tokio::spawn(run(args));
        let mut c = loop {
            if let Ok(c) = TcpStream::connect(listen).await {
                break c;
            }
            tokio::task::yield_now().await;
        };
        let t = std::time::Instant::now();
        c.write_all(b"hello").await?;
        let mut b = [0u8; 5];
        c.read_exact(&mut b).await?;
        assert_eq!(&b, b"hello");
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "latency added both ways: {:?}",
            t.elapsed()
        );

        let bad = ProxyArgs {
            listen: "0.0.0.0:0".parse()?,
            upstream: up_addr,
            latency_ms: 0,
            reset_probability: 0.0,
            fault_s: 0,
            duration_s: 1,
        };
        assert!(run(bad).await.is_err());
        Ok(())
    }
}
