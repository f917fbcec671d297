//! Retry decisions: Envoy's `retry_on` conditions as Istio passes them, and Envoy's fully
//! jittered exponential backoff.
//!
//! Which failure each condition retries follows Envoy's router
//! (`source/common/router/retry_state_impl.cc`, `wouldRetryFromHeaders` and
//! `wouldRetryFromReset`):
//!
//! | failure           | 5xx | gateway-error | reset | connect-failure | refused-stream | retriable-4xx | retriable-status-codes |
//! |-------------------|-----|---------------|-------|-----------------|----------------|---------------|------------------------|
//! | status 5xx        | yes | 502, 503, 504 |       |                 |                |               | if listed              |
//! | status 409        |     |               |       |                 |                | yes           | if listed              |
//! | other status      |     |               |       |                 |                |               | if listed              |
//! | connect failure   | yes | yes           | yes   | yes             |                |               |                        |
//! | reset             | yes | yes           | yes   |                 |                |               |                        |
//! | refused stream    | yes | yes           | yes   |                 | yes            |               |                        |
//! | per-try timeout   | yes | yes           | yes   |                 |                |               |                        |
//!
//! Envoy counts every upstream reset as a 5xx and as a gateway error ("since it will result in
//! one"), and handles a per-try timeout as a local reset of the attempt, so `5xx`,
//! `gateway-error` and `reset` all retry it. A local overflow (the pool limits of
//! [`super::limits`]) is never a [`Failure`] here: Envoy never retries one.
//!
//! Not here, by design: the attempt count (`attempts` retries after the first try, checked by
//! [`may_retry`]), concurrent retries (`limits::Limits::try_retry`, Envoy's `max_retries`
//! circuit breaker) and the retry budget (`budget::Budget`, Linkerd's).

use std::time::Duration;

use federation::traffic::RetryPolicy;

use super::{Random, unit_clamped};

/// How an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// `ConnectFailure` keeps Envoy's name for the condition that retries it.
#[allow(clippy::enum_variant_names)]
pub(crate) enum Failure {
    /// The upstream answered with this status.
    Status(u16),
    /// No connection (or tunnel stream) could be opened to the upstream.
    ConnectFailure,
    /// The upstream reset the stream or the connection before a response.
    Reset,
    /// The peer refused the stream before acting on it (a gateway's refusal verdict, h2
    /// `REFUSED_STREAM`): safe to retry whatever the method.
    Refused,
    /// The attempt outlived the route's `perTryTimeout`.
    PerTryTimeout,
}

/// Whether `failure` is one the policy's `retry_on` retries (see the module table).
pub(crate) fn is_retriable(policy: &RetryPolicy, failure: &Failure) -> bool {
    let on = &policy.retry_on;
    // Envoy: any reset counts as a 5xx and as a gateway error, and `reset` covers every reset.
    let any_reset = on.server_error || on.gateway_error || on.reset;
    match *failure {
        Failure::Status(code) => {
            (on.server_error && (500..=599).contains(&code))
                || (on.gateway_error && matches!(code, 502..=504))
                || (on.retriable_4xx && code == 409)
                || (on.retriable_status_codes && policy.retriable_status_codes.contains(&code))
        }
        Failure::ConnectFailure => any_reset || on.connect_failure,
        Failure::Refused => any_reset || on.refused_stream,
        Failure::Reset | Failure::PerTryTimeout => any_reset,
    }
}

/// Whether another attempt may follow `retries_done` retries that failed with `failure`:
/// retriable, and fewer than `attempts` retries made so far. Budget and concurrency limits
/// are the caller's next checks.
pub(crate) fn may_retry(policy: &RetryPolicy, failure: &Failure, retries_done: u32) -> bool {
    retries_done < policy.attempts && is_retriable(policy, failure)
}

/// How long to wait before retry number `retry` (1 for the first retry).
///
/// Envoy's `JitteredExponentialBackOffStrategy`: the ceiling starts at the base interval and
/// doubles with each retry until doubling would pass half the maximum, after which it is the
/// maximum; the wait is uniform in `[0, ceiling)` ("full jitter"), so retries of requests that
/// failed together spread out instead of arriving together again. With Envoy's defaults
/// (25 ms base, 10 × base maximum) the ceilings are 25, 50, 100, 200, 250, 250… ms.
/// A zero base means Envoy's 25 ms; a maximum below the base means 10 × base, Envoy's default
/// (Envoy refuses such a configuration; ours comes from Istio, which exposes neither).
pub(crate) fn backoff(policy: &RetryPolicy, retry: u32, rng: &mut impl Random) -> Duration {
    let ceiling = backoff_ceiling(policy, retry);
    Duration::try_from_secs_f64(ceiling.as_secs_f64() * unit_clamped(rng)).unwrap_or_default()
}

/// The exclusive upper bound of [`backoff`] for retry number `retry`.
pub(crate) fn backoff_ceiling(policy: &RetryPolicy, retry: u32) -> Duration {
    let base = if policy.backoff_base.is_zero() {
        RetryPolicy::DEFAULT_BACKOFF_BASE
    } else {
        policy.backoff_base
    };
    let max = if policy.backoff_max < base {
        base.saturating_mul(10)
    } else {
        policy.backoff_max
    };
    let mut ceiling = base;
    for _ in 1..retry.max(1) {
        if ceiling >= max {
            break;
        }
        ceiling = if ceiling < max / 2 {
            ceiling.saturating_mul(2)
        } else {
            max
        };
    }
    ceiling
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Scripted, Seeded};
    use super::*;
    use federation::traffic::RetryOn;

    fn policy(retry_on: &str) -> RetryPolicy {
        let (retry_on, retriable_status_codes) =
            federation::mesh::parse_retry_on(retry_on).unwrap();
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on,
            retriable_status_codes,
            retry_remote_localities: false,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
        }
    }

    const ALL: [Failure; 10] = [
        Failure::Status(500),
        Failure::Status(502),
        Failure::Status(503),
        Failure::Status(504),
        Failure::Status(409),
        Failure::Status(404),
        Failure::ConnectFailure,
        Failure::Reset,
        Failure::Refused,
        Failure::PerTryTimeout,
    ];

    fn retried(retry_on: &str) -> Vec<Failure> {
        let p = policy(retry_on);
        ALL.into_iter().filter(|f| is_retriable(&p, f)).collect()
    }

    #[test]
    fn each_condition_retries_what_envoy_retries() {
        use Failure::*;
        assert_eq!(
            retried("5xx"),
            [
                Status(500),
                Status(502),
                Status(503),
                Status(504),
                ConnectFailure,
                Reset,
                Refused,
                PerTryTimeout
            ]
        );
        assert_eq!(
            retried("gateway-error"),
            [
                Status(502),
                Status(503),
                Status(504),
                ConnectFailure,
                Reset,
                Refused,
                PerTryTimeout
            ]
        );
        assert_eq!(
            retried("reset"),
            [ConnectFailure, Reset, Refused, PerTryTimeout]
        );
        assert_eq!(retried("connect-failure"), [ConnectFailure]);
        assert_eq!(retried("refused-stream"), [Refused]);
        assert_eq!(retried("retriable-4xx"), [Status(409)]);
        // The condition without codes retries nothing; codes alone imply the condition.
        assert_eq!(retried("retriable-status-codes"), []);
        assert_eq!(retried("404"), [Status(404)]);
        assert_eq!(
            retried("503,connect-failure"),
            [Status(503), ConnectFailure]
        );
        assert_eq!(retried(""), []);
    }

    #[test]
    fn retries_stop_after_attempts() {
        let p = policy("5xx");
        assert!(may_retry(&p, &Failure::Status(503), 0));
        assert!(may_retry(&p, &Failure::Status(503), 1));
        assert!(!may_retry(&p, &Failure::Status(503), 2));
        assert!(!may_retry(&p, &Failure::Status(404), 0));
    }

    #[test]
    fn retry_on_parses_as_istio_does() {
        let (on, codes) =
            federation::mesh::parse_retry_on(" 503 , 5xx,,gateway-error,503,429").unwrap();
        assert!(on.server_error && on.gateway_error && on.retriable_status_codes);
        assert!(!on.reset && !on.connect_failure);
        assert_eq!(codes, [503, 429]);
        // Istio's default policy parses, its gRPC words ignored.
        let (on, codes) = federation::mesh::parse_retry_on(
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        )
        .unwrap();
        assert!(on.connect_failure && on.refused_stream && on.retriable_status_codes);
        assert!(!on.server_error);
        assert!(codes.is_empty());
        let all = federation::mesh::parse_retry_on(
            "5xx,gateway-error,reset,connect-failure,refused-stream,retriable-4xx,retriable-status-codes,deadline-exceeded,internal,resource-exhausted",
        )
        .unwrap()
        .0;
        assert_eq!(
            all,
            RetryOn {
                server_error: true,
                gateway_error: true,
                reset: true,
                connect_failure: true,
                refused_stream: true,
                retriable_4xx: true,
                retriable_status_codes: true,
            }
        );
    }

    #[test]
    fn unknown_conditions_are_refused_by_name() {
        let err = federation::mesh::parse_retry_on("5xx,retry-everything").unwrap_err();
        assert!(err.contains("\"retry-everything\""), "{err}");
        let err = federation::mesh::parse_retry_on("999").unwrap_err();
        assert!(err.contains("\"999\""), "{err}");
        assert!(federation::mesh::parse_retry_on("70000").is_err());
        assert!(federation::mesh::parse_retry_on("5XX").is_err());
    }

    #[test]
    fn backoff_ceilings_follow_envoy() {
        let p = policy("5xx");
        let ms = |r| backoff_ceiling(&p, r).as_millis();
        assert_eq!(
            (1..=7).map(ms).collect::<Vec<_>>(),
            [25, 50, 100, 200, 250, 250, 250]
        );
        assert_eq!(ms(0), 25);
        assert_eq!(ms(u32::MAX), 250);
        // Defaults stand in for an unusable base or maximum.
        let mut odd = p.clone();
        odd.backoff_base = Duration::ZERO;
        odd.backoff_max = Duration::ZERO;
        assert_eq!(backoff_ceiling(&odd, 1), Duration::from_millis(25));
        assert_eq!(backoff_ceiling(&odd, 10), Duration::from_millis(250));
    }

    #[test]
    fn backoff_is_fully_jittered_below_the_ceiling() {
        let p = policy("5xx");
        let mut rng = Scripted::new(&[0.0, 0.5, 0.999_999]);
        assert_eq!(backoff(&p, 1, &mut rng), Duration::ZERO);
        assert_eq!(backoff(&p, 2, &mut rng), Duration::from_millis(25));
        let top = backoff(&p, 3, &mut rng);
        assert!(top < Duration::from_millis(100) && top > Duration::from_millis(99));
        let mut rng = Seeded::new(1);
        let mut sum = Duration::ZERO;
        for _ in 0..2000 {
            let d = backoff(&p, 5, &mut rng);
            assert!(d < Duration::from_millis(250));
            sum += d;
        }
        // Uniform: the mean is near half the ceiling.
        let mean = sum.as_secs_f64() / 2000.0;
        assert!((0.115..0.135).contains(&mean), "{mean}");
    }
}
