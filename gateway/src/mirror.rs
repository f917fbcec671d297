//! Mirroring (Istio `mirror`, `mirrorPercentage`, `mirrors`): a copy of the request goes to
//! another destination, fire and forget. The copy's response is discarded, it never delays
//! the primary (it runs in its own task, after the primary was buffered), and copies beyond
//! [`MAX_MIRRORS_IN_FLIGHT`] are dropped and counted instead of piling up behind a slow
//! shadow.

use std::sync::Arc;

use federation::traffic::Mirror;

use crate::catalog::Snapshot;
use crate::early::Replayable;
use crate::forward::{self, Call, Flags, Pending};
use crate::metrics::{PolicyLabels, Reporter};
use crate::outbound::Outbound;
use crate::policy::Random;
use crate::preamble::Caller;

/// Mirrored requests in flight at once, per gateway.
pub(crate) const MAX_MIRRORS_IN_FLIGHT: usize = 256;

pub(crate) fn send(
    outbound: &Arc<Outbound>,
    snapshot: &Arc<Snapshot>,
    mirrors: &[Mirror],
    request: &Replayable,
    caller: &Caller,
    rng: &mut impl Random,
) {
    for mirror in mirrors {
        if !forward::roll(mirror.percent, rng) {
            continue;
        }
        let labels = |reason| PolicyLabels {
            reporter: Reporter::Source,
            service: mirror.service.to_string(),
            destination_subset: mirror.subset.clone().unwrap_or_default(),
            reason,
        };
        let Ok(permit) = outbound.mirrors.clone().try_acquire_owned() else {
            outbound
                .metrics
                .mirrored
                .get_or_create(&labels("dropped"))
                .inc();
            continue;
        };
        outbound
            .metrics
            .mirrored
            .get_or_create(&labels("sent"))
            .inc();
        let call = Call::mirror(mirror, caller.clone());
        let copy = request.shadow();
        let (outbound, snapshot) = (outbound.clone(), snapshot.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let copy = Pending::Replayable(copy);
            let sent = async {
                let ended =
                    forward::forward(&outbound, &snapshot, &call, copy, Flags::default()).await;
                // Reading the body to its end returns the connection to the pool.
                let _ = http_body_util::BodyExt::collect(ended.response.into_body()).await;
                ended.cluster
            };
            match tokio::time::timeout(forward::MIRROR_TIMEOUT, sent).await {
                Ok(cluster) => {
                    tracing::debug!(service = %call.service, %cluster, "mirrored a request")
                }
                Err(_) => {
                    tracing::debug!(service = %call.service, "a mirrored request took too long; abandoned")
                }
            }
        });
    }
}
