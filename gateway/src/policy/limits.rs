//! Connection-pool limits: Istio's `connectionPool` as Envoy's circuit breakers, one set per
//! destination (service, subset), shared by every request to it.
//!
//! | Istio                            | Envoy threshold        | here                                   |
//! |----------------------------------|------------------------|----------------------------------------|
//! | `http2MaxRequests`               | `max_requests`         | requests in flight                     |
//! | `tcp.maxConnections`             | `max_connections`      | requests in flight that have a slot    |
//! | `http1MaxPendingRequests`        | `max_pending_requests` | requests in flight beyond that         |
//! | `maxRetries`                     | `max_retries`          | retries in flight                      |
//!
//! Causeway's HTTP/1 path uses one upstream connection (or tunnel stream) per request in
//! flight, so a request beyond `maxConnections` is one that would wait for a connection in
//! Envoy: it is *pending*. A request is refused (`Overflow`) when
//! `in_flight ≥ maxConnections + http1MaxPendingRequests` (`Pending`), else when
//! `in_flight ≥ http2MaxRequests` (`Requests`); Envoy checks the pending limit first when no
//! connection is ready (`ConnPoolImplBase::newStreamImpl`). The data path answers both 503 at
//! once, with Envoy's `UO` flag and `x-envoy-overloaded`.
//!
//! `maxRetries` is Envoy's *concurrent* retries: a retry takes a permit from
//! [`Limits::try_retry`] when it is decided and keeps it until that attempt ends
//! (`RetryStateImpl::shouldRetry`, `resetRetry`). Its overflow is not a 503: the retry is
//! skipped and the failure that asked for it is returned (Envoy's `upstream_rq_retry_overflow`,
//! flag `UO`). A retry attempt also takes a request permit, as each Envoy attempt is a request.
//!
//! An absent field is unlimited: Istio sets every threshold to 2^32 − 1 unless told otherwise.
//! Permits are counted with atomics and given back on drop, so a request that is cancelled
//! mid-way cannot leak one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use federation::traffic::ConnectionPool;

/// The counters of one destination.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    requests: AtomicU32,
    retries: AtomicU32,
}

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Overflow {
    /// `http2MaxRequests` requests already in flight.
    #[error("too many requests in flight (http2MaxRequests)")]
    Requests,
    /// Every connection busy and `http1MaxPendingRequests` already waiting.
    #[error("too many requests waiting for a connection (http1MaxPendingRequests)")]
    Pending,
    /// `maxRetries` retries already in flight.
    #[error("too many retries in flight (maxRetries)")]
    Retries,
}

impl Overflow {
    /// Envoy's circuit-breaker name, for metric labels and logs.
    pub fn as_reason(&self) -> &'static str {
        match self {
            Overflow::Requests => "max_requests",
            Overflow::Pending => "max_pending_requests",
            Overflow::Retries => "max_retries",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Retry,
}

/// One request (or retry) counted against the limits until dropped.
#[derive(Debug)]
#[must_use = "the permit is given back when dropped"]
pub(crate) struct Permit {
    limits: Arc<Limits>,
    kind: Kind,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let counter = match self.kind {
            Kind::Request => &self.limits.requests,
            Kind::Retry => &self.limits.retries,
        };
        // Never below zero: each permit added one.
        counter.fetch_sub(1, Ordering::AcqRel);
    }
}

fn limit(v: Option<u32>) -> u64 {
    v.map_or(u64::MAX, u64::from)
}

impl Limits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes a request permit, or says which limit refuses it.
    pub fn try_request(self: &Arc<Self>, pool: &ConnectionPool) -> Result<Permit, Overflow> {
        let max_requests = limit(pool.max_requests);
        let max_queued =
            limit(pool.max_connections).saturating_add(limit(pool.max_pending_requests));
        let mut refused = Overflow::Requests;
        self.requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                let n64 = u64::from(n);
                if n64 >= max_queued {
                    refused = Overflow::Pending;
                    None
                } else if n64 >= max_requests {
                    refused = Overflow::Requests;
                    None
                } else {
                    refused = Overflow::Requests;
                    n.checked_add(1)
                }
            })
            .map(|_| Permit {
                limits: Arc::clone(self),
                kind: Kind::Request,
            })
            .map_err(|_| refused)
    }

    /// Takes a retry permit (`maxRetries` concurrent retries), or `Overflow::Retries`.
    pub fn try_retry(self: &Arc<Self>, pool: &ConnectionPool) -> Result<Permit, Overflow> {
        let max_retries = limit(pool.max_retries);
        self.retries
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                if u64::from(n) >= max_retries {
                    None
                } else {
                    n.checked_add(1)
                }
            })
            .map(|_| Permit {
                limits: Arc::clone(self),
                kind: Kind::Retry,
            })
            .map_err(|_| Overflow::Retries)
    }

    /// Requests in flight (retry attempts included).
    pub fn in_flight(&self) -> u32 {
        self.requests.load(Ordering::Acquire)
    }

    /// Retries in flight.
    pub fn retries_in_flight(&self) -> u32 {
        self.retries.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(
        conns: Option<u32>,
        pending: Option<u32>,
        requests: Option<u32>,
        retries: Option<u32>,
    ) -> ConnectionPool {
        ConnectionPool {
            max_connections: conns,
            max_pending_requests: pending,
            max_requests: requests,
            max_retries: retries,
            ..ConnectionPool::default()
        }
    }

    #[test]
    fn requests_beyond_connections_are_pending_and_overflow_past_the_queue() {
        let limits = Arc::new(Limits::new());
        let p = pool(Some(2), Some(1), None, None);
        let a = limits.try_request(&p).unwrap();
        let _b = limits.try_request(&p).unwrap();
        // The third waits for a connection: pending, allowed.
        let _c = limits.try_request(&p).unwrap();
        assert_eq!(limits.in_flight(), 3);
        let err = limits.try_request(&p).unwrap_err();
        assert_eq!(err, Overflow::Pending);
        assert_eq!(err.as_reason(), "max_pending_requests");
        assert_eq!(limits.in_flight(), 3);
        drop(a);
        assert_eq!(limits.in_flight(), 2);
        let _d = limits.try_request(&p).unwrap();
    }

    #[test]
    fn max_requests_caps_requests_in_flight() {
        let limits = Arc::new(Limits::new());
        let p = pool(None, None, Some(2), None);
        let permits: Vec<_> = (0..2).map(|_| limits.try_request(&p).unwrap()).collect();
        let err = limits.try_request(&p).unwrap_err();
        assert_eq!(err, Overflow::Requests);
        assert_eq!(err.as_reason(), "max_requests");
        drop(permits);
        assert_eq!(limits.in_flight(), 0);
        assert!(limits.try_request(&p).is_ok());
        // Zero pending with one connection: one request at a time.
        let single = pool(Some(1), Some(0), None, None);
        let _one = limits.try_request(&single).unwrap();
        assert_eq!(limits.try_request(&single).unwrap_err(), Overflow::Pending);
    }

    #[test]
    fn pending_is_checked_before_requests() {
        let limits = Arc::new(Limits::new());
        let p = pool(Some(1), Some(0), Some(1), None);
        let _a = limits.try_request(&p).unwrap();
        assert_eq!(limits.try_request(&p).unwrap_err(), Overflow::Pending);
        let p = pool(Some(5), Some(0), Some(1), None);
        assert_eq!(limits.try_request(&p).unwrap_err(), Overflow::Requests);
    }

    #[test]
    fn retries_are_limited_concurrently_and_apart_from_requests() {
        let limits = Arc::new(Limits::new());
        let p = pool(Some(1), Some(0), None, Some(1));
        let retry = limits.try_retry(&p).unwrap();
        let err = limits.try_retry(&p).unwrap_err();
        assert_eq!(err, Overflow::Retries);
        assert_eq!(err.as_reason(), "max_retries");
        assert_eq!(limits.retries_in_flight(), 1);
        assert_eq!(limits.in_flight(), 0);
        let _req = limits.try_request(&p).unwrap();
        drop(retry);
        assert_eq!(limits.retries_in_flight(), 0);
        assert!(limits.try_retry(&p).is_ok());
        // maxRetries 0: no retry ever.
        let none = pool(None, None, None, Some(0));
        assert!(limits.try_retry(&none).is_err());
    }

    #[test]
    fn unlimited_by_default() {
        let limits = Arc::new(Limits::new());
        let p = ConnectionPool::default();
        let permits: Vec<_> = (0..10_000)
            .map(|_| limits.try_request(&p).unwrap())
            .collect();
        let retries: Vec<_> = (0..10_000).map(|_| limits.try_retry(&p).unwrap()).collect();
        assert_eq!(limits.in_flight(), 10_000);
        drop((permits, retries));
        assert_eq!((limits.in_flight(), limits.retries_in_flight()), (0, 0));
    }

    #[test]
    fn concurrent_takers_never_exceed_the_limit() {
        let limits = Arc::new(Limits::new());
        let p = pool(None, None, Some(8), None);
        let peak = Arc::new(AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let limits = Arc::clone(&limits);
                let peak = Arc::clone(&peak);
                let p = p.clone();
                s.spawn(move || {
                    for _ in 0..2000 {
                        if let Ok(permit) = limits.try_request(&p) {
                            peak.fetch_max(limits.in_flight(), Ordering::AcqRel);
                            drop(permit);
                        }
                    }
                });
            }
        });
        assert!(peak.load(Ordering::Acquire) <= 8);
        assert_eq!(limits.in_flight(), 0);
    }
}
