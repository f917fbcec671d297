//! Locality-aware choice between clusters (Istio `localityLbSetting`), over the localities
//! of the Cluster resources (`region` or `region/zone`).
//!
//! As Istio programs Envoy: clusters in the caller's own locality come first (priority 0),
//! then the same region (1), then the regions `failover` names for the caller's region (2),
//! then the rest (3). Traffic stays at the best priority that has a healthy cluster, so it
//! moves on only when outlier detection ejects (or a tunnel loses) the closer ones. Istio
//! turns this on only where outlier detection is configured, and so does the caller.
//! `distribute` instead splits traffic between localities by weight.
//! `failoverPriority` (ordering by workload labels) has no meaning for whole clusters and is
//! not applied.

use federation::traffic::LocalityLb;

use super::Random;

fn region(locality: &str) -> &str {
    locality.split('/').next().unwrap_or(locality)
}

/// The priority of a cluster at `target` for a caller at `own`; lower is preferred.
pub(crate) fn priority(own: Option<&str>, target: Option<&str>, cfg: Option<&LocalityLb>) -> u8 {
    let (Some(own), Some(target)) = (own, target) else {
        return 0;
    };
    if own == target {
        return 0;
    }
    if region(own) == region(target) {
        return 1;
    }
    let failover = cfg.is_some_and(|c| {
        c.failover
            .iter()
            .any(|(from, to)| from == region(own) && to == region(target))
    });
    if failover { 2 } else { 3 }
}

/// Whether `pattern` (`region`, `region/zone`, `region/*`, `*`) names `locality`.
fn names(pattern: &str, locality: &str) -> bool {
    let pattern = pattern.trim_end_matches("/*");
    pattern == "*" || locality == pattern || locality.starts_with(&format!("{pattern}/"))
}

/// With `distribute`, the locality pattern to send this request to, drawn by the weights of
/// the first rule whose `from` names the caller's locality; none without such a rule.
pub(crate) fn distribute<'c>(
    cfg: &'c LocalityLb,
    own: &str,
    rng: &mut impl Random,
) -> Option<&'c str> {
    let (_, to) = cfg.distribute.iter().find(|(from, _)| names(from, own))?;
    let total: u32 = to.iter().map(|(_, w)| *w).sum();
    let mut roll = rng.below(total);
    for (locality, weight) in to {
        if roll < *weight {
            return Some(locality);
        }
        roll -= weight;
    }
    None
}

/// Whether a cluster at `locality` is in the pattern `distribute` drew.
pub(crate) fn in_pattern(pattern: &str, locality: Option<&str>) -> bool {
    locality.is_some_and(|l| names(pattern, l))
}

#[cfg(test)]
mod tests {
    use super::super::testing::Seeded;
    use super::*;

    #[test]
    fn closer_localities_come_first_and_failover_names_the_next_region() {
        let cfg = LocalityLb {
            failover: vec![("us-east".into(), "eu-west".into())],
            enabled: true,
            ..LocalityLb::default()
        };
        let p = |target| priority(Some("us-east/a"), target, Some(&cfg));
        assert_eq!(p(Some("us-east/a")), 0);
        assert_eq!(p(Some("us-east/b")), 1);
        assert_eq!(p(Some("eu-west/a")), 2);
        assert_eq!(p(Some("ap-south")), 3);
        // Unknown localities never rank a cluster down.
        assert_eq!(priority(None, Some("eu-west"), Some(&cfg)), 0);
        assert_eq!(p(None), 0);
    }

    #[test]
    fn distribute_draws_localities_by_weight() {
        let cfg = LocalityLb {
            distribute: vec![(
                "us-east/*".into(),
                vec![("us-east/*".into(), 80), ("eu-west/*".into(), 20)],
            )],
            enabled: true,
            ..LocalityLb::default()
        };
        let mut rng = Seeded::new(7);
        let mut east = 0;
        for _ in 0..10_000 {
            match distribute(&cfg, "us-east/a", &mut rng) {
                Some("us-east/*") => east += 1,
                Some("eu-west/*") => {}
                other => panic!("{other:?}"),
            }
        }
        assert!((7_700..=8_300).contains(&east), "{east}");
        assert!(distribute(&cfg, "eu-west/a", &mut rng).is_none());
        assert!(in_pattern("eu-west/*", Some("eu-west/b")));
        assert!(!in_pattern("eu-west/*", Some("eu-westish")));
    }
}
