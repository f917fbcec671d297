//! Locality-aware choice between clusters (Istio `localityLbSetting`), over the localities
//! of the Cluster resources (`region` or `region/zone`).
//!
//! As Istio programs Envoy: clusters in the caller's own locality come first (priority 0),
//! then the same region (1), then the regions `failover` names for the caller's region (2),
//! then the rest (3). Traffic stays at the best priority that has a healthy cluster, so it
//! moves on only when outlier detection ejects (or a tunnel loses) the closer ones. Istio
//! turns this on only where outlier detection is configured, and so does the caller.
//! `distribute` instead splits traffic between localities by weight.
//!
//! `failoverPriority` orders clusters by the labels they share with the caller's cluster, as
//! Istio orders endpoints by the labels they share with the client proxy: a cluster matching
//! every label ranks 0, one whose first difference is at the j-th of n labels ranks n - j, and
//! `label=value` compares the cluster with that value instead of the caller. A gateway chooses
//! between whole clusters, so the labels it knows are a cluster's: the topology labels of its
//! locality (`topology.kubernetes.io/region`, `topology.kubernetes.io/zone`,
//! `topology.istio.io/subzone`), `topology.istio.io/cluster` (its name) and
//! `topology.istio.io/network` (its name too: each cluster is its own network, reached through
//! its gateways). Any other label is absent on both sides and so matches, as in Istio. With
//! `failover` also set, the locality priority orders clusters within each failoverPriority
//! rank (Istio: `priority * 5 + locality priority`).

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

/// A cluster as `failoverPriority` sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Place<'a> {
    pub cluster: &'a str,
    /// `region`, `region/zone` or `region/zone/subzone`; none when the Cluster has none.
    pub locality: Option<&'a str>,
}

impl<'a> Place<'a> {
    /// The value of `label` on this cluster; empty when it has none.
    fn label(&self, label: &str) -> &'a str {
        let mut parts = self.locality.unwrap_or_default().splitn(3, '/');
        let (region, zone, subzone) = (parts.next(), parts.next(), parts.next());
        match label {
            "topology.kubernetes.io/region" => region,
            "topology.kubernetes.io/zone" => zone,
            "topology.istio.io/subzone" => subzone,
            "topology.istio.io/cluster" | "topology.istio.io/network" => Some(self.cluster),
            _ => None,
        }
        .unwrap_or_default()
    }
}

/// The `failoverPriority` rank of `target` for a caller in `own` (see the module docs).
fn label_priority(labels: &[String], own: &Place<'_>, target: &Place<'_>) -> u16 {
    for (j, label) in labels.iter().enumerate() {
        let (key, wanted) = match label.split_once('=') {
            Some((key, value)) => (key, value),
            None => (label.as_str(), own.label(label)),
        };
        if target.label(key) != wanted {
            return u16::try_from(labels.len() - j).unwrap_or(u16::MAX);
        }
    }
    0
}

/// The rank of a cluster at `target` for a caller at `own`; lower is preferred. With
/// `failoverPriority`, its rank first (and the locality priority within it when `failover` is
/// also set, as Istio combines them); otherwise the locality priority.
pub(crate) fn rank(own: &Place<'_>, target: &Place<'_>, cfg: Option<&LocalityLb>) -> u16 {
    let by_locality = || u16::from(priority(own.locality, target.locality, cfg));
    match cfg {
        Some(c) if !c.failover_priority.is_empty() => {
            let by_labels = label_priority(&c.failover_priority, own, target);
            if c.failover.is_empty() {
                by_labels
            } else {
                by_labels.saturating_mul(5).saturating_add(by_locality())
            }
        }
        _ => by_locality(),
    }
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
    fn failover_priority_ranks_clusters_by_the_labels_they_share_with_the_caller() {
        let labels = |l: &[&str]| LocalityLb {
            failover_priority: l.iter().map(|s| s.to_string()).collect(),
            enabled: true,
            ..LocalityLb::default()
        };
        let place = |cluster, locality| Place {
            cluster,
            locality: Some(locality),
        };
        let own = place("east", "us-east/a");
        let cfg = labels(&[
            "topology.kubernetes.io/region",
            "topology.kubernetes.io/zone",
        ]);
        let r = |cluster, locality| rank(&own, &place(cluster, locality), Some(&cfg));
        assert_eq!(r("east-2", "us-east/a"), 0);
        assert_eq!(r("east-3", "us-east/b"), 1);
        assert_eq!(r("eu", "eu-west/a"), 2);

        // A value pins the label; the cluster's name and network are labels too.
        let cfg = labels(&[
            "topology.kubernetes.io/region=eu-west",
            "topology.istio.io/cluster",
        ]);
        let r = |cluster, locality| rank(&own, &place(cluster, locality), Some(&cfg));
        assert_eq!(r("east", "eu-west/a"), 0);
        assert_eq!(r("eu", "eu-west/a"), 1);
        assert_eq!(r("east", "us-east/a"), 2);

        // A label no cluster carries is absent on both sides, which matches (as in Istio).
        let cfg = labels(&["app.example.com/tier", "topology.istio.io/network"]);
        assert_eq!(rank(&own, &place("east", "x"), Some(&cfg)), 0);
        assert_eq!(rank(&own, &place("west", "us-east/a"), Some(&cfg)), 1);

        // With failover too, the locality priority orders clusters within each rank.
        let mut cfg = labels(&["topology.istio.io/network"]);
        cfg.failover = vec![("us-east".into(), "eu-west".into())];
        let r = |cluster, locality| rank(&own, &place(cluster, locality), Some(&cfg));
        assert_eq!(r("east", "us-east/a"), 0);
        assert_eq!(r("eu", "eu-west/a"), 5 + 2);
        assert_eq!(r("ap", "ap-south"), 5 + 3);
        assert!(r("eu", "eu-west/a") < r("ap", "ap-south"));

        // Without failoverPriority, the locality priority alone.
        let plain = LocalityLb {
            enabled: true,
            ..LocalityLb::default()
        };
        assert_eq!(rank(&own, &place("w", "us-east/b"), Some(&plain)), 1);
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
