//! Per-RPC metrics (`dispatch_grpc_*`), recorded by a drop guard so every admitted request is
//! counted exactly once, whatever ends it: the handler's answer, the server's request timeout,
//! the client going away (its handler future dropped), or the in-flight bound shedding it.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use tonic::Code;

use crate::metrics::{LATENCY_BUCKETS, register};

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "dispatch_grpc_requests_total",
                "Finished gRPC requests by status code.",
            ),
            &["service", "method", "code"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});
static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "dispatch_grpc_request_duration_seconds",
                "gRPC server latency.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["service", "method"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});
static IN_FLIGHT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "dispatch_grpc_in_flight_requests",
                "gRPC requests being served.",
            ),
            &["service"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
    )
});

/// The canonical name of a status code (`OK`, `INVALID_ARGUMENT`, ...).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The codes whose series exist before the first request (dashboards and alerts see them).
const PRECREATED_CODES: [&str; 6] = [
    "OK",
    "INVALID_ARGUMENT",
    "UNAVAILABLE",
    "INTERNAL",
    "DEADLINE_EXCEEDED",
    "CANCELLED",
];

/// Pre-creates the OK and common error series of `methods` so dashboards and alerts see them
/// before the first request.
pub fn init_rpc_metrics(service: &str, methods: &[&str]) {
    IN_FLIGHT.with_label_values(&[service]).set(0);
    for m in methods {
        let _ = DURATION.with_label_values(&[service, m]);
        for code in PRECREATED_CODES {
            let _ = REQUESTS.with_label_values(&[service, m, code]);
        }
    }
}

/// One admitted RPC: counted in flight from [`RpcGuard::start`] until it is finished or dropped.
/// Dropped unfinished, the request was abandoned: by the server's deadline if `deadline` has
/// passed (DEADLINE_EXCEEDED), else by the client (CANCELLED: a disconnect or a reset stream
/// drops the handler future).
#[derive(Debug)]
pub struct RpcGuard {
    service: &'static str,
    method: &'static str,
    start: Instant,
    deadline: Option<Instant>,
    done: bool,
}

impl RpcGuard {
    /// A request of `service`/`method` starts now; `deadline`: when the server gives up on it.
    pub fn start(service: &'static str, method: &'static str, deadline: Option<Instant>) -> Self {
        IN_FLIGHT.with_label_values(&[service]).inc();
        Self {
            service,
            method,
            start: Instant::now(),
            deadline,
            done: false,
        }
    }

    /// The request ended with `code`.
    pub fn finish(mut self, code: Code) {
        self.record(code);
    }

    fn record(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        IN_FLIGHT.with_label_values(&[self.service]).dec();
        DURATION
            .with_label_values(&[self.service, self.method])
            .observe(self.start.elapsed().as_secs_f64());
        REQUESTS
            .with_label_values(&[self.service, self.method, code_name(code)])
            .inc();
    }
}

impl Drop for RpcGuard {
    fn drop(&mut self) {
        let code = match self.deadline {
            Some(d) if Instant::now() >= d => Code::DeadlineExceeded,
            _ => Code::Cancelled,
        };
        self.record(code);
    }
}

/// Current values, for tests: `dispatch_grpc_in_flight_requests{service}` and
/// `dispatch_grpc_requests_total{service, method, code}`.
pub fn in_flight(service: &str) -> i64 {
    IN_FLIGHT.with_label_values(&[service]).get()
}

/// `dispatch_grpc_requests_total{service, method, code}` (tests).
pub fn requests(service: &str, method: &str, code: Code) -> u64 {
    REQUESTS
        .with_label_values(&[service, method, code_name(code)])
        .get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_guard_is_cancelled_or_past_its_deadline() {
        let svc = "test-guard";
        let past = Instant::now();
        RpcGuard::start(svc, "Finished", None).finish(Code::NotFound);
        assert_eq!(requests(svc, "Finished", Code::NotFound), 1);
        drop(RpcGuard::start(svc, "Dropped", None));
        assert_eq!(requests(svc, "Dropped", Code::Cancelled), 1);
        drop(RpcGuard::start(svc, "Late", Some(past)));
        assert_eq!(requests(svc, "Late", Code::DeadlineExceeded), 1);
        let future = Instant::now() + std::time::Duration::from_secs(60);
        drop(RpcGuard::start(svc, "Early", Some(future)));
        assert_eq!(requests(svc, "Early", Code::Cancelled), 1);
        assert_eq!(in_flight(svc), 0);
    }
}
