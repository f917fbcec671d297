//! Graceful shutdown as a type: one [`Trigger`], many [`Watch`]es.
//!
//! Every task that must finish before the process stops (an accepted connection, a proxied
//! stream) holds a `Watch`. Draining tells them all to wind down, then waits until every `Watch`
//! has been dropped. The caller bounds that wait with its deadline and then forces the rest.
//! A task that only needs to *know* about draining (and must not delay it) holds a [`Signal`].

use tokio::sync::{mpsc, watch};

pub fn channel() -> (Trigger, Watch) {
    let (signal_tx, signal_rx) = watch::channel(false);
    // Nothing is ever sent: the channel closes when the last `Watch` (sender) is dropped.
    let (held_tx, held_rx) = mpsc::channel::<std::convert::Infallible>(1);
    (
        Trigger {
            signal: signal_tx,
            held: held_rx,
        },
        Watch {
            signal: Signal { rx: signal_rx },
            _held: held_tx,
        },
    )
}

pub struct Trigger {
    signal: watch::Sender<bool>,
    held: mpsc::Receiver<std::convert::Infallible>,
}

impl Trigger {
    /// Tells every watcher to wind down, without waiting.
    pub fn signal(&self) {
        let _ = self.signal.send(true);
    }

    /// Signals every watcher, then resolves once all of them are gone.
    pub async fn drain(mut self) {
        self.signal();
        // `None` once every `Watch` is dropped.
        while self.held.recv().await.is_some() {}
    }
}

/// Keeps draining from completing while held.
#[derive(Clone, Debug)]
pub struct Watch {
    signal: Signal,
    _held: mpsc::Sender<std::convert::Infallible>,
}

impl Watch {
    /// Resolves when draining starts (at once if it already has).
    pub async fn signaled(&self) {
        self.signal.signaled().await;
    }

    pub fn is_draining(&self) -> bool {
        self.signal.is_draining()
    }

    /// A view of the drain signal that does not delay draining.
    pub fn signal(&self) -> Signal {
        self.signal.clone()
    }
}

#[derive(Clone, Debug)]
pub struct Signal {
    rx: watch::Receiver<bool>,
}

impl Signal {
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
    async fn signals_do_not_hold_the_drain() {
        let (trigger, watch) = channel();
        let signal = watch.signal();
        let late = watch.clone();
        drop(watch);
        let drained = tokio::spawn(trigger.drain());
        late.signaled().await;
        assert!(late.is_draining());
        drop(late);
        drained.await.unwrap();
        // The signal outlived the drain and still reads as draining.
        assert!(signal.is_draining());
        signal.signaled().await;
    }
}
