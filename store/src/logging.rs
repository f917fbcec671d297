//! raft-rs logs through `slog`; everything else in Causeway logs through `tracing`. This drain
//! forwards each slog record as one `tracing` event with target `raft`, so one subscriber (and one
//! `RUST_LOG`-style filter) sees both.
//!
//! ```text
//!  raft-rs ── slog::Logger ── TracingDrain ── tracing event (target "raft")
//!                                   message: "<msg> key=value key=value"
//! ```
//!
//! Levels carry over, except that raft-rs's INFO is its internal chatter (every vote, every
//! role change and configuration switch, "newRaft", dropped proposals while leaderless): it
//! goes to DEBUG. What an operator needs is logged at INFO by us: "raft leader elected" and
//! "raft leader lost" (the composition root, from the node's status) and "membership changed"
//! (the node, when it applies a change).
//!
//! slog keys are dynamic while tracing fields are fixed at compile time, so the record's key-values
//! are folded into the message text rather than becoming tracing fields.

use std::fmt::{self, Write as _};

use slog::{Drain, KV, Level, OwnedKVList, Record};

/// The root logger handed to one `RawNode`; every record carries the node id.
pub(crate) fn raft_logger(node_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("raft_id" => node_id))
}

/// A slog drain that re-emits records as `tracing` events.
pub(crate) struct TracingDrain;

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        // Formatting is the expensive part and raft-rs is chatty at debug level: only pay for
        // records some subscriber wants.
        macro_rules! forward {
            ($level:expr) => {
                if tracing::enabled!(target: "raft", $level) {
                    let text = format_record(record, values);
                    tracing::event!(target: "raft", $level, "{text}");
                }
            };
        }
        match record.level() {
            Level::Critical | Level::Error => forward!(tracing::Level::ERROR),
            Level::Warning => forward!(tracing::Level::WARN),
            Level::Info | Level::Debug => forward!(tracing::Level::DEBUG),
            Level::Trace => forward!(tracing::Level::TRACE),
        }
        Ok(())
    }
}

/// `<msg> k=v k=v`: the record's own key-values first, then the logger's (e.g. `raft_id`).
fn format_record(record: &Record<'_>, values: &OwnedKVList) -> String {
    let mut text = KvText(record.msg().to_string());
    // Serializing into a String cannot fail; a value whose Display fails is simply cut short.
    let _ = record.kv().serialize(record, &mut text);
    let _ = values.serialize(record, &mut text);
    text.0
}

struct KvText(String);

impl slog::Serializer for KvText {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        write!(self.0, " {key}={val}")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record as SpanRecord};
    use tracing::{Event, Level, Metadata, Subscriber};

    use super::*;

    /// Just enough of a subscriber to see what the drain emits.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<(Level, String, String)>>>);

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &SpanRecord<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            struct Message(String);
            impl Visit for Message {
                fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
                    if field.name() == "message" {
                        self.0 = format!("{value:?}");
                    }
                }
            }
            let mut message = Message(String::new());
            event.record(&mut message);
            let meta = event.metadata();
            self.0
                .lock()
                .unwrap()
                .push((*meta.level(), meta.target().to_string(), message.0));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn slog_records_become_tracing_events_with_level_message_and_key_values() {
        let capture = Capture::default();
        tracing::subscriber::with_default(capture.clone(), || {
            let logger = raft_logger(7);
            slog::info!(logger, "became leader at term {term}", term = 3; "lead" => 7);
            slog::info!(logger, "switched to configuration"; "config" => "voters: {1, 2}");
            slog::warn!(logger, "dropping message"; "to" => 2);
            slog::error!(logger, "broken");
        });
        let events = capture.0.lock().unwrap().clone();
        assert_eq!(
            events,
            vec![
                // raft-rs's INFO is internal chatter: DEBUG to us.
                (
                    Level::DEBUG,
                    "raft".to_string(),
                    "became leader at term 3 lead=7 term=3 raft_id=7".to_string()
                ),
                (
                    Level::DEBUG,
                    "raft".to_string(),
                    "switched to configuration config=voters: {1, 2} raft_id=7".to_string()
                ),
                (
                    Level::WARN,
                    "raft".to_string(),
                    "dropping message to=2 raft_id=7".to_string()
                ),
                (
                    Level::ERROR,
                    "raft".to_string(),
                    "broken raft_id=7".to_string()
                ),
            ]
        );
    }
}
