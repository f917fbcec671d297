//! `GET /v1/watch`: every change to resources after an index, as server-sent events.
//!
//! ```text
//!  list (metadata.resourceVersion = N) ─► watch?from=N ─► id: 12 / event: ADDED / data: {..}
//!                                                        id: 13 / event: DELETED / data: {..}
//!  from older than the retained events ─► 410 gone (list again)
//! ```
//! The stream wakes on every compiled snapshot (published after each applied entry) and reads
//! the state's retained events; it never holds the lock while it waits. A client that falls
//! further behind than the retention mid-stream gets an `error` event with a `gone` problem,
//! and the stream ends.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use federation::mesh::{MeshSnapshot, WatchEvent};
use federation::resource::Kind;
use tokio::sync::watch;

use super::auth::{Caller, Viewer};
use super::input::Params;
use super::problem::{Problem, ProblemBody, Slug};
use super::resources::kind_of;
use super::wire::WatchEventDoc;
use crate::AdminState;
use crate::mesh::SharedMesh;

/// Comment lines sent on an idle stream, so proxies and clients see it is alive.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Streams changes after index `from` (default: now) as `text/event-stream`: each event has
/// `id: <index>`, `event: ADDED|MODIFIED|DELETED` and `data: <WatchEvent JSON>`. Reconnecting
/// with `Last-Event-ID` resumes after that index. Keep-alive comments every 15 s.
#[utoipa::path(
    get,
    path = "/v1/watch",
    tag = "resources",
    params(
        ("from" = Option<u64>, Query, description = "Send changes with a higher index (a list's `metadata.resourceVersion`); default: only changes from now on"),
        ("kind" = Option<String>, Query, min_length = 1, description = "Only this kind (its plural)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "Instead of `from`, when reconnecting"),
    ),
    responses(
        (status = 200, description = "Server-sent events; `data` is a WatchEvent. An `error` event whose data is a `gone` Problem ends the stream when the client fell behind the retained events.",
            body = WatchEventDoc, content_type = "text/event-stream"),
        (status = 400, description = "A bad query parameter or Last-Event-ID", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown kind", body = ProblemBody, content_type = "application/problem+json"),
        (status = 410, description = "`from` is older than the retained events: list again, then watch from the list's version. `oldest` is the oldest index kept.", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn watch(
    _: Caller<Viewer>,
    State(state): State<AdminState>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, Problem> {
    params.only(&["from", "kind"])?;
    let kind = params.text("kind")?.map(kind_of).transpose()?;
    let last_event = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|n| *n <= super::input::MAX_NUMBER)
                .ok_or_else(|| {
                    Problem::bad_request("Last-Event-ID", "Last-Event-ID must be an index")
                })
        })
        .transpose()?;
    let from = match params.number("from")?.or(last_event) {
        Some(from) => from,
        None => state.mesh.read(|s| s.applied()),
    };
    // Subscribe before the first read: a write between the two then still wakes the stream.
    let wake = state.mesh.subscribe();
    state
        .mesh
        .read(|s| s.events_since(from).map(drop))
        .map_err(|oldest| gone(from, oldest))?;
    let cursor = Cursor {
        mesh: state.mesh.clone(),
        wake,
        after: from,
        kind,
        pending: VecDeque::new(),
        ended: false,
        stopping: state.stopping.clone(),
    };
    Ok(Sse::new(futures::stream::unfold(cursor, Cursor::next))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

pub fn gone(from: u64, oldest: u64) -> Problem {
    let mut problem = Problem::new(
        Slug::Gone,
        format!(
            "events after {from} are no longer kept (the oldest is {oldest}): list again and watch from the list's resourceVersion"
        ),
    )
    .with_field("from");
    problem.oldest = Some(oldest);
    problem
}

struct Cursor {
    mesh: SharedMesh,
    wake: watch::Receiver<Arc<MeshSnapshot>>,
    /// Every event up to this index was sent (or filtered out).
    after: u64,
    kind: Option<Kind>,
    pending: VecDeque<Event>,
    ended: bool,
    stopping: watch::Receiver<bool>,
}

impl Cursor {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.ended {
                return None;
            }
            // Mark the current snapshot seen before reading: anything applied after the read
            // changes the snapshot again and wakes us.
            self.wake.borrow_and_update();
            let read = self.mesh.read(|s| {
                s.events_since(self.after)
                    .map(|events| events.into_iter().cloned().collect::<Vec<_>>())
            });
            match read {
                Ok(events) if events.is_empty() => {
                    tokio::select! {
                        changed = self.wake.changed() => if changed.is_err() {
                            // The state machine is gone: the gateway is shutting down.
                            return None;
                        },
                        // A sender already gone (no `serve`) never stops us: the branch is skipped.
                        Ok(_) = self.stopping.wait_for(|&s| s) => return None,
                    }
                }
                Ok(events) => {
                    if let Some(last) = events.last() {
                        self.after = last.index;
                    }
                    let kind = self.kind;
                    self.pending.extend(
                        events
                            .iter()
                            .filter(|e| kind.is_none_or(|k| kind_of_event(e) == Some(k)))
                            .filter_map(sse_event),
                    );
                }
                Err(oldest) => {
                    let problem = gone(self.after, oldest);
                    if let Ok(event) = Event::default().event("error").json_data(&problem) {
                        self.pending.push_back(event);
                    }
                    self.ended = true;
                }
            }
        }
    }
}

fn kind_of_event(event: &WatchEvent) -> Option<Kind> {
    Kind::from_api(event.resource.api_version(), event.resource.kind())
}

fn sse_event(event: &WatchEvent) -> Option<Event> {
    Event::default()
        .id(event.index.to_string())
        .event(event.kind.as_str())
        .json_data(event)
        .inspect_err(|e| tracing::warn!(error = %e, "cannot encode a watch event"))
        .ok()
}
