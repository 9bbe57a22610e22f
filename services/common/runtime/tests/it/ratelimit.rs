//! The shared rate limiter against the real Redis of the local stack (`DISPATCH_TEST_REDIS`,
//! deploy/local/env.sh): the GCRA script's arithmetic (and its leases) under a clock the test
//! drives, two limiters (two replicas) sharing one tenant quota, leases sparing Redis calls (and
//! one refill for many concurrent requests), and the local fallback (limit / replicas) while
//! Redis is unreachable, with recovery once it answers again. Every test uses its own key prefix.
//!
//! Over 400 lines because its tests share the Redis setup and GCRA helpers at the top; the
//! fallback test with its TCP `Proxy` and metric reader (about 190 lines) would move to a file of
//! its own first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dispatch_runtime::breaker::BreakerSettings;
use dispatch_runtime::ratelimit::{Backend, LimiterConfig, Rate, SCRIPT, SharedLimiter};
use dispatch_runtime::settings::RedisSettings;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

fn redis_url() -> String {
    std::env::var("DISPATCH_TEST_REDIS")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into())
}

fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("t-rl-{test}-{}-{nanos}:", std::process::id())
}

fn redis_settings(url: String, prefix: &str) -> RedisSettings {
    RedisSettings {
        url,
        key_prefix: prefix.to_owned(),
        connect_timeout_ms: 500,
        command_timeout_ms: 500,
        ..RedisSettings::default()
    }
}

fn config(service: &'static str, tenant: Rate, replicas: u32, budget: Duration) -> LimiterConfig {
    LimiterConfig {
        service,
        name: "submit",
        tenant: Some(tenant),
        global: None,
        replicas,
        shared: true,
        redis_timeout: budget,
        lease: Duration::from_millis(100),
        breaker: BreakerSettings::from_ms(1, 50, 200),
    }
}

async fn conn() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis of the local stack (deploy/local/stack.sh up)")
}

/// A test's keys under a prefix of its own: `(prefix, tenant key, global key)`.
fn keys(test: &str) -> (String, String, String) {
    let p = unique_prefix(test);
    let (tenant, global) = (format!("{p}tenant"), format!("{p}global"));
    (p, tenant, global)
}

/// The stored value of `key` (a bucket's TAT in µs), `None` when it has none.
async fn stored(c: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query_async(c)
        .await
        .expect("get")
}

/// Deletes a test's `keys`.
async fn del(c: &mut redis::aio::MultiplexedConnection, keys: &[&String]) {
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(c)
        .await
        .expect("del");
}

/// One script call with the test's clock asking for exactly `n` cells: `(code, index, wait_us)`.
async fn gcra(
    c: &mut redis::aio::MultiplexedConnection,
    keys: &[&str],
    n: u32,
    now_us: u64,
    rates: &[(f64, u32)],
) -> (i64, i64, i64) {
    let (code, index, wait, granted) = lease(c, keys, n, n, now_us, rates).await;
    assert_eq!(granted, if code == 1 { i64::from(n) } else { 0 });
    (code, index, wait)
}

/// One script call with the test's clock leasing up to `want` cells, at least `n`:
/// `(code, index, wait_us, granted)`.
async fn lease(
    c: &mut redis::aio::MultiplexedConnection,
    keys: &[&str],
    n: u32,
    want: u32,
    now_us: u64,
    rates: &[(f64, u32)],
) -> (i64, i64, i64, i64) {
    let script = redis::Script::new(SCRIPT);
    let mut inv = script.prepare_invoke();
    for k in keys {
        inv.key(*k);
    }
    inv.arg(n).arg(want).arg(now_us);
    for (interval, burst) in rates {
        inv.arg(*interval).arg(*burst);
    }
    inv.invoke_async(c).await.expect("script")
}

#[tokio::test]
async fn the_script_is_a_gcra_all_or_nothing_across_keys() {
    let mut c = conn().await;
    let (p, tenant, global) = keys("math");
    let t0: u64 = 1_000_000_000_000;
    // 10/s (one cell every 100 ms), burst 3.
    let rate = [(100_000.0, 3)];

    assert_eq!(
        gcra(&mut c, &[&tenant], 3, t0, &rate).await,
        (1, 0, 0),
        "a full burst at once"
    );
    assert_eq!(
        gcra(&mut c, &[&tenant], 1, t0, &rate).await,
        (0, 1, 100_000),
        "empty: the next cell is due in one interval"
    );
    assert_eq!(
        gcra(&mut c, &[&tenant], 2, t0 + 50_000, &rate).await,
        (0, 1, 150_000),
        "two cells need two intervals from t0, less the 50 ms that passed"
    );
    assert_eq!(
        gcra(&mut c, &[&tenant], 1, t0 + 100_000, &rate).await,
        (1, 0, 0)
    );
    assert_eq!(
        gcra(&mut c, &[&tenant], 4, t0 + 10_000_000, &rate).await,
        (-1, 1, 0),
        "never fits"
    );

    // Tenant 10/s burst 3, global 10/s burst 4: the global bucket has room for one more after
    // the tenant's three, so a second tenant's two are refused by it, and spend nothing anywhere.
    let (other, global_rate) = (format!("{p}other"), (100_000.0, 4));
    let t1 = t0 + 60_000_000;
    assert_eq!(
        gcra(&mut c, &[&tenant, &global], 3, t1, &[rate[0], global_rate]).await,
        (1, 0, 0)
    );
    assert_eq!(
        gcra(&mut c, &[&other, &global], 2, t1, &[rate[0], global_rate]).await,
        (0, 2, 100_000),
        "the global bucket (key 2) has room for one cell only"
    );
    assert_eq!(
        stored(&mut c, &other).await,
        None,
        "a refused request spends nothing"
    );
    assert_eq!(
        gcra(&mut c, &[&other, &global], 1, t1, &[rate[0], global_rate]).await,
        (1, 0, 0)
    );

    // A fractional interval (3/s) admits exactly the burst at once.
    let k3 = format!("{p}third");
    let r3 = [(1e6 / 3.0, 3)];
    assert_eq!(gcra(&mut c, &[&k3], 3, t0, &r3).await, (1, 0, 0));
    assert_eq!(gcra(&mut c, &[&k3], 1, t0, &r3).await.0, 0);

    del(&mut c, &[&tenant, &global, &other, &k3]).await;
}

#[tokio::test]
async fn the_script_leases_up_to_the_free_cells_and_debits_them_all() {
    let mut c = conn().await;
    let (_, tenant, global) = keys("lease");
    let t0: u64 = 2_000_000_000_000;
    // 10/s (one cell every 100 ms), burst 8.
    let rate = [(100_000.0, 8)];

    assert_eq!(
        lease(&mut c, &[&tenant], 1, 5, t0, &rate).await,
        (1, 0, 0, 5),
        "a full bucket grants the whole lease asked for"
    );
    assert_eq!(
        lease(&mut c, &[&tenant], 1, 5, t0, &rate).await,
        (1, 0, 0, 3),
        "the lease was debited: three cells left, all granted"
    );
    assert_eq!(
        lease(&mut c, &[&tenant], 1, 5, t0, &rate).await,
        (0, 1, 100_000, 0),
        "nothing left: refused with the wait for n cells"
    );
    assert_eq!(
        lease(&mut c, &[&tenant], 2, 5, t0 + 250_000, &rate).await,
        (1, 0, 0, 2),
        "250 ms later two cells are free: granted, fewer than wanted"
    );
    assert_eq!(
        lease(&mut c, &[&tenant], 3, 5, t0 + 250_000, &rate).await,
        (0, 1, 250_000, 0),
        "n larger than the free cells: refused, nothing granted"
    );
    assert_eq!(
        lease(&mut c, &[&tenant], 9, 9, t0 + 10_000_000, &rate).await,
        (-1, 1, 0, 0),
        "n above the burst never fits"
    );
    assert_eq!(
        stored(&mut c, &tenant).await,
        Some((t0 + 1_000_000).to_string()),
        "10 cells debited from t0: the TAT is 10 intervals later"
    );

    // Tenant (burst 8, full again later) and global (burst 4) leased together: the grant is the
    // smaller of the free cells, debited from both.
    let t1 = t0 + 60_000_000;
    let both: [&str; 2] = [&tenant, &global];
    let rates = [rate[0], (100_000.0, 4)];
    assert_eq!(lease(&mut c, &both, 1, 6, t1, &rates).await, (1, 0, 0, 4));
    assert_eq!(
        lease(&mut c, &both, 1, 6, t1, &rates).await,
        (0, 2, 100_000, 0),
        "the global bucket is empty"
    );
    assert_eq!(
        lease(&mut c, &[&tenant], 1, 8, t1, &rate).await,
        (1, 0, 0, 4),
        "the tenant bucket lost the same four cells"
    );

    del(&mut c, &[&tenant, &global]).await;
}

/// Hammers `limiter` for `tenant` until `until`, counting admissions.
async fn hammer(limiter: Arc<SharedLimiter>, tenant: &'static str, until: Instant) -> u64 {
    let mut admitted = 0;
    while Instant::now() < until {
        if limiter.check(tenant, 1).await.is_ok() {
            admitted += 1;
        }
    }
    admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_admit_more_than_one_quota() {
    let prefix = unique_prefix("share");
    let rate = Rate::new(50, 10).expect("rate");
    let settings = redis_settings(redis_url(), &prefix);
    let budget = Duration::from_millis(500);
    let a = Arc::new(SharedLimiter::new(
        config("rl-test-share", rate, 2, budget),
        Some(&settings),
    ));
    let b = Arc::new(SharedLimiter::new(
        config("rl-test-share", rate, 2, budget),
        Some(&settings),
    ));
    // Both connected before the window starts (the first calls only start the connection).
    for l in [&a, &b] {
        let l = Arc::clone(l);
        dispatch_await(Duration::from_secs(5), "limiter connected", || {
            let l = Arc::clone(&l);
            async move { l.check("warm-up", 1).await == Ok(Backend::Redis) }
        })
        .await;
    }

    let fallbacks =
        || a.stats().fallback.load(Ordering::Relaxed) + b.stats().fallback.load(Ordering::Relaxed);
    let before = fallbacks();
    let start = Instant::now();
    let window = Duration::from_millis(1_500);
    let (x, y) = tokio::join!(
        tokio::spawn(hammer(Arc::clone(&a), "acme", start + window)),
        tokio::spawn(hammer(Arc::clone(&b), "acme", start + window)),
    );
    let elapsed = start.elapsed().as_secs_f64();
    let (x, y) = (x.expect("a"), y.expect("b"));
    let admitted = x + y;
    let bound = f64::from(rate.burst) + f64::from(rate.per_second) * elapsed;
    assert_eq!(
        fallbacks(),
        before,
        "every decision in the window was made in redis"
    );
    assert!(
        (admitted as f64) <= bound + 1.0,
        "two replicas admitted {admitted} ({x} + {y}) in {elapsed:.2}s; one quota allows {bound:.0}"
    );
    assert!(
        (admitted as f64) >= bound * 0.8,
        "the quota is used, not starved: {admitted} of {bound:.0}"
    );
    assert!(x > 0 && y > 0, "both replicas admitted some ({x}, {y})");
}

/// A limiter on the local stack's Redis, connected (its first decisions already shared).
async fn connected(
    service: &'static str,
    test: &str,
    rate: Rate,
    lease: Duration,
) -> SharedLimiter {
    let settings = redis_settings(redis_url(), &unique_prefix(test));
    let mut cfg = config(service, rate, 1, Duration::from_millis(500));
    cfg.lease = lease;
    let l = SharedLimiter::new(cfg, Some(&settings));
    l.connect().await;
    dispatch_await(Duration::from_secs(5), "limiter connected", || async {
        l.check("warm-up", 1).await == Ok(Backend::Redis)
    })
    .await;
    l
}

#[tokio::test]
async fn a_lease_spares_redis_calls_for_admits_under_the_rate() {
    const SVC: &str = "rl-test-calls";
    // 2000/s: a 100 ms lease is at most 200 cells.
    let rate = Rate::new(2_000, 2_000).expect("rate");
    let l = connected(SVC, "calls", rate, Duration::from_millis(100)).await;
    let calls = || l.stats().redis_calls.load(Ordering::Relaxed);
    let (before, metric_before) = (
        calls(),
        metric("dispatch_rate_limit_redis_calls_total", &[("service", SVC)]),
    );
    const N: u64 = 400;
    // About 1000 admits a second, half the rate.
    let mut pace = tokio::time::interval(Duration::from_millis(1));
    for i in 0..N {
        pace.tick().await;
        assert_eq!(l.check("acme", 1).await, Ok(Backend::Redis), "admit {i}");
    }
    let made = calls() - before;
    assert!(
        (1..=N / 10).contains(&made),
        "{N} admits made {made} redis calls"
    );
    assert_eq!(
        metric("dispatch_rate_limit_redis_calls_total", &[("service", SVC)]) - metric_before,
        made as f64,
        "every call is counted in the metric"
    );
    assert!(l.stats().leased.load(Ordering::Relaxed) >= N - made);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_an_empty_lease_share_one_refill() {
    // 10000/s: a 100 ms lease covers 1000 cells, more than the requests below.
    let rate = Rate::new(10_000, 10_000).expect("rate");
    let l = Arc::new(connected("rl-test-flight", "flight", rate, Duration::from_millis(100)).await);
    let before = l.stats().redis_calls.load(Ordering::Relaxed);
    const REQUESTS: usize = 200;
    let start = Arc::new(tokio::sync::Barrier::new(REQUESTS));
    let mut set = JoinSet::new();
    for _ in 0..REQUESTS {
        let (l, start) = (Arc::clone(&l), Arc::clone(&start));
        set.spawn(async move {
            start.wait().await;
            l.check("acme", 1).await
        });
    }
    let mut admitted = 0;
    while let Some(r) = set.join_next().await {
        if r.expect("task") == Ok(Backend::Redis) {
            admitted += 1;
        }
    }
    assert_eq!(
        l.stats().redis_calls.load(Ordering::Relaxed) - before,
        1,
        "{REQUESTS} concurrent requests on an empty lease: one refill"
    );
    assert_eq!(admitted, REQUESTS, "all admitted from that one lease");
}

/// Polls `cond` every 10 ms until it holds, or fails after `timeout`.
async fn dispatch_await<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP forwarder to the real Redis on `addr`; dropping it closes the listener and every
/// forwarded connection (Redis "goes away" for whoever connects through it).
struct Proxy {
    _tasks: JoinSet<()>,
}

impl Proxy {
    async fn start(addr: SocketAddr, upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind the proxy port");
        let mut tasks = JoinSet::new();
        let conns = Arc::new(parking_lot::Mutex::new(JoinSet::new()));
        let held = Arc::clone(&conns);
        tasks.spawn(async move {
            loop {
                let Ok((mut down, _)) = listener.accept().await else {
                    return;
                };
                held.lock().spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
        // The connections' set lives as long as the accept task's: aborting it drops them.
        tasks.spawn(async move {
            let _conns = conns;
            std::future::pending::<()>().await;
        });
        Self { _tasks: tasks }
    }
}

fn upstream() -> SocketAddr {
    let url = redis_url();
    let hostport = url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1:6379")
        .to_owned();
    std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .expect("redis address")
        .next()
        .expect("an address")
}

async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

fn metric(name: &str, labels: &[(&str, &str)]) -> f64 {
    dispatch_runtime::metrics::registry()
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })
        .map(|m| {
            if m.get_gauge().is_some() {
                m.get_gauge().value()
            } else {
                m.get_counter().value()
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn falls_back_to_the_replica_share_while_redis_is_away_and_recovers() {
    const SVC: &str = "rl-test-fallback";
    let prefix = unique_prefix("fallback");
    let addr = closed_port().await;
    let via_proxy = redis_settings(format!("redis://{addr}"), &prefix);
    let direct = redis_settings(redis_url(), &prefix);
    // 1/s burst 40 cluster-wide; with 4 replicas each falls back to 1/s (at least one) burst 10.
    let rate = Rate::new(1, 40).expect("rate");
    let cfg = config(SVC, rate, 4, Duration::from_millis(500));
    let limiter = SharedLimiter::new(cfg.clone(), Some(&via_proxy));

    // Redis unreachable (nothing listens): local buckets of a quarter of the quota.
    let admitted = count_admitted(&limiter, "acme", 40).await;
    assert_eq!(
        admitted, 10,
        "the local share of the burst: 40 / 4 replicas"
    );
    assert_eq!(limiter.last_backend(), Some(Backend::Local));
    assert!(limiter.stats().fallback.load(Ordering::Relaxed) >= 40);
    assert!(metric("dispatch_rate_limit_fallback_total", &[("service", SVC)]) >= 40.0);
    assert_eq!(
        metric(
            "dispatch_rate_limit_backend",
            &[("service", SVC), ("backend", "local")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            "dispatch_rate_limit_backend",
            &[("service", SVC), ("backend", "redis")]
        ),
        0.0
    );
    let refused = limiter
        .check("acme", 1)
        .await
        .expect_err("local share spent");
    assert_eq!(refused.scope, "tenant");
    assert!(!refused.too_large);
    assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_secs(1));

    // Redis comes back on that address: decisions return to the shared bucket.
    let proxy = Proxy::start(addr, upstream()).await;
    dispatch_await(
        Duration::from_secs(10),
        "decisions back in redis",
        || async {
            let _ = limiter.check("probe", 1).await;
            limiter.last_backend() == Some(Backend::Redis)
        },
    )
    .await;
    assert_eq!(
        metric(
            "dispatch_rate_limit_backend",
            &[("service", SVC), ("backend", "redis")]
        ),
        1.0
    );
    // The quota is the cluster's again: another replica (straight to Redis) spends the whole
    // burst, and this one, through the proxy, finds nothing left.
    let other = SharedLimiter::new(cfg.clone(), Some(&direct));
    dispatch_await(
        Duration::from_secs(5),
        "the other replica connected",
        || async { other.check("warm-up", 1).await == Ok(Backend::Redis) },
    )
    .await;
    let by_other = count_admitted(&other, "globex", 60).await;
    assert!(
        (40..=41).contains(&by_other),
        "the cluster burst: {by_other}"
    );
    let refused = limiter
        .check("globex", 1)
        .await
        .expect_err("shared bucket spent");
    assert_eq!(refused.scope, "tenant");
    assert_eq!(limiter.last_backend(), Some(Backend::Redis));

    // Redis goes away again (listener and connections closed): back to the local share.
    drop(proxy);
    dispatch_await(Duration::from_secs(10), "decisions local again", || async {
        let _ = limiter.check("probe", 1).await;
        limiter.last_backend() == Some(Backend::Local)
    })
    .await;
    let admitted = count_admitted(&limiter, "initech", 40).await;
    assert_eq!(admitted, 10, "the local share again");
}

async fn count_admitted(l: &SharedLimiter, tenant: &str, tries: u32) -> u32 {
    let mut n = 0;
    for _ in 0..tries {
        if l.check(tenant, 1).await.is_ok() {
            n += 1;
        }
    }
    n
}

#[tokio::test]
async fn a_batch_spends_n_cells_shared_and_a_batch_above_the_burst_never_fits() {
    let prefix = unique_prefix("batch");
    let settings = redis_settings(redis_url(), &prefix);
    let rate = Rate::new(1, 10).expect("rate");
    let l = SharedLimiter::new(
        config("rl-test-batch", rate, 1, Duration::from_millis(500)),
        Some(&settings),
    );
    dispatch_await(Duration::from_secs(5), "connected", || async {
        l.check("warm-up", 1).await == Ok(Backend::Redis)
    })
    .await;
    assert_eq!(l.check("acme", 7).await, Ok(Backend::Redis));
    let refused = l.check("acme", 4).await.expect_err("3 left");
    assert!(!refused.too_large);
    assert!(
        refused.retry_after > Duration::from_millis(500),
        "{:?}",
        refused.retry_after
    );
    assert_eq!(l.check("acme", 3).await, Ok(Backend::Redis));
    let huge = l.check("acme", 11).await.expect_err("above the burst");
    assert!(huge.too_large);
    let mut c = conn().await;
    let key = l.tenant_key("acme").expect("shared");
    assert!(key.starts_with(&prefix), "{key}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .expect("pttl");
    assert!(
        (1..=11_000).contains(&ttl),
        "expires once the bucket is full again: {ttl} ms"
    );
}
