//! Graceful shutdown as a type: one [`Trigger`], many [`Watch`]es.
//!
//! Every task that must finish before the process stops (an accepted connection, a proxied
//! stream) holds a `Watch`. Draining tells them all to wind down, then waits until every `Watch`
//! has been dropped. The caller bounds that wait with its deadline and then forces the rest.

use tokio::sync::watch;

pub fn channel() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Watch { rx })
}

pub struct Trigger {
    tx: watch::Sender<bool>,
}

impl Trigger {
    /// Signals every watcher, then resolves once all of them are gone.
    pub async fn drain(self) {
        let _ = self.tx.send(true);
        self.tx.closed().await;
    }
}

#[derive(Clone, Debug)]
pub struct Watch {
    rx: watch::Receiver<bool>,
}

impl Watch {
    /// Resolves when draining starts (at once if it already has).
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        // An error means the trigger was dropped without draining: treat it as a drain too.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_every_watcher() {
        let (trigger, watch) = channel();
        let held = watch.clone();
        let task = tokio::spawn(async move {
            held.signaled().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(held);
        });
        drop(watch);
        let started = tokio::time::Instant::now();
        trigger.drain().await;
        assert!(started.elapsed() >= Duration::from_secs(3));
        task.await.unwrap();
    }

    #[tokio::test]
    async fn late_watchers_see_the_signal() {
        let (trigger, watch) = channel();
        let late = watch.clone();
        let drained = tokio::spawn(trigger.drain());
        late.signaled().await;
        assert!(late.is_draining());
        drop((watch, late));
        drained.await.unwrap();
    }
}
