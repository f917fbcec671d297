//! Fault injection decisions: Istio's `HTTPFaultInjection` as Envoy's fault filter applies it
//! (`source/extensions/filters/http/fault/fault_filter.cc`).
//!
//! A configured delay and a configured abort are each drawn on their own, delay first, as
//! Envoy's `isDelayEnabled` and `isAbortEnabled` draw separately: a request may be delayed,
//! aborted, both (delayed, then aborted) or neither. A percentage is of requests, 0–100 as a
//! float (Istio's `percentage.value`); Envoy turns it into parts per million, here it is
//! compared with one uniform draw, so 0 never fires and 100 always does. Header-targeted
//! faults are the route match's business, not this one's.

use std::time::Duration;

use federation::traffic::Fault;

use super::Random;

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct FaultDecision {
    /// Wait this long before forwarding (or aborting).
    pub delay: Option<Duration>,
    /// Answer with this status instead of forwarding.
    pub abort: Option<u16>,
}

/// Draws the fault for one request: one draw for a configured delay, then one for a configured
/// abort; none for an absent one.
pub(crate) fn decide(fault: &Fault, rng: &mut impl Random) -> FaultDecision {
    let delay = fault
        .delay
        .as_ref()
        .and_then(|d| hit(d.percent, rng).then_some(d.delay));
    let abort = fault
        .abort
        .as_ref()
        .and_then(|a| hit(a.percent, rng).then_some(a.status));
    FaultDecision { delay, abort }
}

/// True for `percent`% of draws; NaN never.
fn hit(percent: f64, rng: &mut impl Random) -> bool {
    rng.unit() * 100.0 < percent
}

#[cfg(test)]
mod tests {
    use federation::traffic::{FaultAbort, FaultDelay};

    use super::super::testing::{Scripted, Seeded};
    use super::*;

    fn fault(delay_percent: Option<f64>, abort_percent: Option<f64>) -> Fault {
        Fault {
            delay: delay_percent.map(|percent| FaultDelay {
                delay: Duration::from_secs(2),
                percent,
            }),
            abort: abort_percent.map(|percent| FaultAbort {
                status: 503,
                percent,
            }),
        }
    }

    #[test]
    fn delay_and_abort_are_drawn_independently_delay_first() {
        let f = fault(Some(50.0), Some(10.0));
        let mut rng = Scripted::new(&[0.49, 0.09, 0.5, 0.1, 0.2, 0.05, 0.9, 0.5]);
        let two = Some(Duration::from_secs(2));
        let both = FaultDecision {
            delay: two,
            abort: Some(503),
        };
        let neither = FaultDecision {
            delay: None,
            abort: None,
        };
        for want in [&both, &neither, &both, &neither] {
            assert_eq!(&decide(&f, &mut rng), want);
        }
        assert_eq!(rng.remaining(), 0);
    }

    #[test]
    fn absent_faults_draw_nothing() {
        let mut rng = Scripted::new(&[0.0]);
        assert_eq!(
            decide(&fault(None, None), &mut rng),
            FaultDecision::default()
        );
        assert_eq!(
            decide(&fault(None, Some(100.0)), &mut rng),
            FaultDecision {
                delay: None,
                abort: Some(503)
            }
        );
        assert_eq!(rng.remaining(), 0);
    }

    #[test]
    fn zero_never_and_hundred_always() {
        let mut rng = Scripted::new(&[0.0, 0.0, 0.999_999, 0.999_999, 0.0]);
        assert_eq!(
            decide(&fault(Some(0.0), Some(0.0)), &mut rng),
            FaultDecision::default()
        );
        let always = decide(&fault(Some(100.0), Some(100.0)), &mut rng);
        assert!(always.delay.is_some() && always.abort.is_some());
        assert_eq!(
            decide(&fault(Some(f64::NAN), None), &mut rng),
            FaultDecision::default()
        );
    }

    #[test]
    fn percentages_hold_over_many_requests() {
        let f = fault(Some(30.0), Some(5.0));
        let mut rng = Seeded::new(9);
        let (mut delayed, mut aborted, mut both) = (0, 0, 0);
        let n = 20_000;
        for _ in 0..n {
            let d = decide(&f, &mut rng);
            delayed += usize::from(d.delay.is_some());
            aborted += usize::from(d.abort.is_some());
            both += usize::from(d.delay.is_some() && d.abort.is_some());
        }
        let share = |k: usize| k as f64 / n as f64;
        assert!((share(delayed) - 0.30).abs() < 0.015, "{delayed}");
        assert!((share(aborted) - 0.05).abs() < 0.006, "{aborted}");
        // Independent: both ≈ 30% × 5%.
        assert!((share(both) - 0.015).abs() < 0.004, "{both}");
    }
}
