//! Rate-limited, aggregated logging of events anyone on the network can cause (refused
//! handshakes, garbage on a port, accept errors), so that hostile input cannot fill the disk
//! through the logs.
//!
//! ```text
//!  event ─▶ RateLog::event(now) ─▶ Log          first of an interval: log it in full, at once
//!                                  Quiet        counted; `first_quiet` says when to flush
//!  interval over (timer, or the next event) ─▶ Summary: "N … in the last 10s, last <detail>"
//! ```
//!
//! A plain state machine with an injected clock (no tokio here): the async caller logs what
//! it is told to and, when [`Decision::Quiet`] says `first_quiet`, arranges one call to
//! [`RateLog::flush`] at the `flush_at` instant so a burst that stops is still summarized.
//! At most two lines per interval reach the log, however many events arrive.

use std::fmt;
use std::time::{Duration, Instant};

/// What the caller should do with one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Log this event in full now. `summary` (if any) covers the quiet events of the interval
    /// that has just ended; log it first.
    Log { summary: Option<Summary> },
    /// Counted, not logged. When `first_quiet`, nothing else is scheduled yet: call
    /// [`RateLog::flush`] at `flush_at` (the end of the interval).
    Quiet {
        first_quiet: bool,
        flush_at: Instant,
    },
}

/// Events that were counted instead of logged during one interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Events not logged one by one.
    pub count: u64,
    /// How long the interval was.
    pub interval: Duration,
    /// The last quiet event's detail (e.g. "from 192.0.2.7: bad certificate").
    pub last: String,
}

impl fmt::Display for Summary {
    /// "1234 in the last 10s, last from 192.0.2.7: …": the caller puts what happened in front.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} in the last {}s, last {}",
            self.count,
            self.interval.as_secs_f64(),
            self.last
        )
    }
}

/// One kind of event's limiter: at most one event logged in full per `interval`.
#[derive(Debug)]
pub struct RateLog {
    interval: Duration,
    window: Option<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    quiet: u64,
    last: String,
}

impl RateLog {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            window: None,
        }
    }

    /// Records one event at `now`. `detail` is called only for events that are counted quietly
    /// (the first of an interval is logged by the caller, who has its details at hand).
    pub fn event(&mut self, now: Instant, detail: impl FnOnce() -> String) -> Decision {
        let summary = self.flush(now);
        match &mut self.window {
            Some(window) => {
                window.quiet += 1;
                window.last = detail();
                Decision::Quiet {
                    first_quiet: window.quiet == 1,
                    flush_at: window.started + self.interval,
                }
            }
            None => {
                self.window = Some(Window {
                    started: now,
                    quiet: 0,
                    last: String::new(),
                });
                Decision::Log { summary }
            }
        }
    }

    /// Closes the interval if it has ended by `now`, returning what it counted quietly (none if
    /// nothing was). The next event after this is logged at once.
    pub fn flush(&mut self, now: Instant) -> Option<Summary> {
        let window = self.window.as_ref()?;
        if now.saturating_duration_since(window.started) < self.interval {
            return None;
        }
        let window = self.window.take()?;
        (window.quiet > 0).then_some(Summary {
            count: window.quiet,
            interval: self.interval,
            last: window.last,
        })
    }
}

/// How long a [`Throttled`] log stays quiet after logging an event in full.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A [`RateLog`] shared by the tasks that report one kind of event anyone on the network can
/// cause; a summary of a burst that ends is logged at the end of its interval by a timer task
/// started for it. Needs a tokio runtime (feature `throttled`).
#[cfg(feature = "throttled")]
pub struct Throttled {
    log: std::sync::Mutex<RateLog>,
    summarize: Box<dyn Fn(&Summary) + Send + Sync>,
}

#[cfg(feature = "throttled")]
impl Throttled {
    /// `summarize` logs a burst's summary (its `Display` reads "N ... in the last 10s, last
    /// ...").
    pub fn new(summarize: impl Fn(&Summary) + Send + Sync + 'static) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            log: std::sync::Mutex::new(RateLog::new(LOG_INTERVAL)),
            summarize: Box::new(summarize),
        })
    }

    /// Records one event; true when the caller should log it in full now. `detail` describes
    /// it for the summary, e.g. "from 192.0.2.7: bad certificate".
    pub fn event(self: &std::sync::Arc<Self>, detail: impl FnOnce() -> String) -> bool {
        use tokio::time::Instant;
        let now = Instant::now().into_std();
        let decision = self.lock().event(now, detail);
        match decision {
            Decision::Log { summary } => {
                if let Some(summary) = summary {
                    (self.summarize)(&summary);
                }
                true
            }
            Decision::Quiet {
                first_quiet: true,
                flush_at,
            } => {
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(Instant::from_std(flush_at)).await;
                    let summary = this.lock().flush(Instant::now().into_std());
                    if let Some(summary) = summary {
                        (this.summarize)(&summary);
                    }
                });
                false
            }
            Decision::Quiet { .. } => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RateLog> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: Duration = Duration::from_secs(10);

    fn quiet(d: &Decision) -> bool {
        matches!(d, Decision::Quiet { .. })
    }

    #[test]
    fn first_event_logs_later_ones_are_counted_and_summarized_at_the_next_event() {
        let t0 = Instant::now();
        let mut log = RateLog::new(TEN);
        assert_eq!(
            log.event(t0, || "a".into()),
            Decision::Log { summary: None }
        );
        for i in 1..=1234u64 {
            let d = log.event(t0 + Duration::from_millis(i), || {
                format!("from 192.0.2.{i}")
            });
            assert_eq!(
                d,
                Decision::Quiet {
                    first_quiet: i == 1,
                    flush_at: t0 + TEN
                }
            );
        }
        // Still inside the interval: nothing to flush.
        assert_eq!(log.flush(t0 + Duration::from_secs(9)), None);
        let next = log.event(t0 + Duration::from_secs(11), || "z".into());
        let Decision::Log {
            summary: Some(summary),
        } = next
        else {
            panic!("{next:?}")
        };
        assert_eq!(summary.count, 1234);
        assert_eq!(summary.last, "from 192.0.2.1234");
        assert_eq!(
            format!("handshakes refused: {summary}"),
            "handshakes refused: 1234 in the last 10s, last from 192.0.2.1234"
        );
        // A new interval began with that event.
        assert!(quiet(&log.event(t0 + Duration::from_secs(12), String::new)));
    }

    #[test]
    fn flush_at_the_end_of_the_interval_summarizes_once_and_reopens() {
        let t0 = Instant::now();
        let mut log = RateLog::new(TEN);
        assert!(!quiet(&log.event(t0, String::new)));
        assert!(quiet(
            &log.event(t0 + Duration::from_secs(1), || "x".into())
        ));
        let summary = log.flush(t0 + TEN).expect("a summary");
        assert_eq!((summary.count, summary.last.as_str()), (1, "x"));
        assert_eq!(log.flush(t0 + TEN), None, "summarized twice");
        // After the flush the next event is logged at once, without a summary.
        assert_eq!(
            log.event(t0 + TEN + Duration::from_secs(1), String::new),
            Decision::Log { summary: None }
        );
    }

    #[test]
    fn a_lone_event_per_interval_is_always_logged_and_needs_no_summary() {
        let t0 = Instant::now();
        let mut log = RateLog::new(TEN);
        for i in 0..5 {
            let d = log.event(t0 + TEN * i * 2, || unreachable!("never quiet"));
            assert_eq!(d, Decision::Log { summary: None });
        }
    }

    #[test]
    fn lines_per_interval_stay_bounded_however_many_events() {
        let t0 = Instant::now();
        let mut log = RateLog::new(TEN);
        let mut lines = 0;
        // 100 000 events over 60 s.
        for i in 0..100_000u64 {
            if let Decision::Log { summary } =
                log.event(t0 + Duration::from_micros(i * 600), String::new)
            {
                lines += 1 + usize::from(summary.is_some());
            }
        }
        assert!(lines <= 12, "{lines} lines");
    }
}
