//! What requests carry besides the token: query parameters, path segments and bodies, each
//! turned into a problem that names what was wrong (axum's own rejections are plain text).

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::problem::{Problem, Slug};

/// The largest body we read: a few thousand resources of YAML.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// The largest number a query parameter takes: the schema's `int64` says so (Raft indexes,
/// the only large ones, never get near it).
pub const MAX_NUMBER: u64 = i64::MAX as u64;

/// The query string's parameters, in order. Handlers declare which they take
/// ([`Params::only`]), so a misspelt parameter is a 400 naming it rather than silently ignored.
pub struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(&parts.uri)
            .map_err(|e| Problem::bad_request("query", format!("unreadable query string: {e}")))?;
        Ok(Self(pairs))
    }
}

impl Params {
    /// 400 for a parameter not in `known`, or one given twice.
    pub fn only(&self, known: &[&str]) -> Result<(), Problem> {
        for (i, (name, _)) in self.0.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                let expected = if known.is_empty() {
                    "this route takes no query parameters".to_string()
                } else {
                    format!("this route takes {}", known.join(", "))
                };
                return Err(Problem::bad_request(
                    name,
                    format!("unknown query parameter {name:?}: {expected}"),
                ));
            }
            if self.0[..i].iter().any(|(other, _)| other == name) {
                return Err(Problem::bad_request(
                    name,
                    format!("query parameter {name:?} is given more than once"),
                ));
            }
        }
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name=true|false`, the schema's `boolean`, and nothing else; absent means false.
    pub fn flag(&self, name: &str) -> Result<bool, Problem> {
        match self.get(name) {
            None => Ok(false),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(other) => Err(Problem::bad_request(
                name,
                format!("{name} must be true or false, not {other:?}"),
            )),
        }
    }

    /// `name=<n>`, 0 to [`MAX_NUMBER`]: what the OpenAPI document's `int64` with `minimum: 0`
    /// allows, so the server refuses exactly what the schema refuses.
    pub fn number(&self, name: &str) -> Result<Option<u64>, Problem> {
        self.get(name)
            .map(|v| {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| *n <= MAX_NUMBER)
                    .ok_or_else(|| {
                        Problem::bad_request(
                            name,
                            format!("{name} must be an integer from 0 to {MAX_NUMBER}, not {v:?}"),
                        )
                    })
            })
            .transpose()
    }

    /// A non-empty string parameter, if given.
    pub fn text(&self, name: &str) -> Result<Option<&str>, Problem> {
        match self.get(name) {
            Some("") => Err(Problem::bad_request(
                name,
                format!("{name} must not be empty"),
            )),
            other => Ok(other),
        }
    }
}

/// Path segments, with a problem (not axum's text) when they do not decode.
pub struct Segments<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Segments<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| Self(t))
            .map_err(|e| Problem::bad_request("path", format!("unreadable path: {e}")))
    }
}

/// What a body's content type says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
    /// `text/plain` or no content type.
    Detect,
}

/// Content types the document-taking routes accept.
pub const DOCUMENT_TYPES: &[&str] = &[
    "application/yaml",
    "application/x-yaml",
    "text/yaml",
    "application/json",
    "text/plain",
];

/// A request body of at most [`MAX_BODY`] bytes, with the format its content type names.
pub struct Body {
    pub bytes: Bytes,
    pub format: Format,
}

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = Problem;

    async fn from_request(request: Request, _: &S) -> Result<Self, Problem> {
        let format = format_of(request.headers().get(CONTENT_TYPE))?;
        let too_large = || {
            Problem::new(
                Slug::PayloadTooLarge,
                format!("the body is over the limit of {MAX_BODY} bytes"),
            )
        };
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_large());
        }
        let bytes = axum::body::to_bytes(request.into_body(), MAX_BODY)
            .await
            .map_err(|e| {
                let over = std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
                if over {
                    too_large()
                } else {
                    Problem::bad_request("body", format!("cannot read the body: {e}"))
                }
            })?;
        Ok(Self { bytes, format })
    }
}

fn format_of(content_type: Option<&axum::http::HeaderValue>) -> Result<Format, Problem> {
    let Some(value) = content_type else {
        return Ok(Format::Detect);
    };
    let unsupported = |shown: &str| {
        Problem::new(
            Slug::UnsupportedMediaType,
            format!(
                "content type {shown:?} is not one of {}",
                DOCUMENT_TYPES.join(", ")
            ),
        )
        .with_field("Content-Type")
    };
    let text = value.to_str().map_err(|_| unsupported("(not ASCII)"))?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/yaml" | "application/x-yaml" | "text/yaml" => Ok(Format::Yaml),
        "application/json" => Ok(Format::Json),
        "text/plain" | "" => Ok(Format::Detect),
        _ => Err(unsupported(text)),
    }
}

/// Bodies parsed at once; more wait for a turn. Parsing (and validating) up to [`MAX_BODY`] of
/// YAML takes real CPU, so it runs on tokio's blocking pool rather than on the control-plane
/// runtime's threads, which also serve Raft and the other gateways; the bound keeps a flood of
/// large bodies from taking every core and every blocking thread.
const PARSERS: usize = 2;

static PARSING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PARSERS);

/// Runs `parse` (body parsing and validation) off the control-plane runtime's threads, at most
/// [`PARSERS`] at once.
pub async fn off_thread<T: Send + 'static>(
    parse: impl FnOnce() -> Result<T, Problem> + Send + 'static,
) -> Result<T, Problem> {
    let turn = PARSING
        .acquire()
        .await
        .map_err(|_| Problem::internal("the parser pool is closed"))?;
    // The permit goes with the work: a client that hangs up does not free a turn while its
    // body is still being parsed.
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        parse()
    })
    .await
    .map_err(|e| Problem::internal(format!("parsing the body failed: {e}")))?
}

/// The documents of a body, each parsed to JSON or with the error that stopped it: JSON (an
/// object, or an array of objects) when the text starts like JSON, YAML (`---`-separated
/// documents) otherwise. The content type only gates what we accept; the text decides.
pub fn documents(
    body: &Body,
) -> Result<Vec<Result<serde_json::Value, federation::resource::FieldError>>, Problem> {
    let text = std::str::from_utf8(&body.bytes)
        .map_err(|e| Problem::bad_request("body", format!("the body is not UTF-8: {e}")))?;
    Ok(federation::resource::parse_documents(text))
}
