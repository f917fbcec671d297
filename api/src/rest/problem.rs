//! Every error the REST API answers: an RFC 9457 `application/problem+json` body whose `type`
//! names one of a fixed set of slugs, so clients branch on the slug, never on the wording.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use federation::resource::FieldError;
use serde::Serialize;
use utoipa::ToSchema;

use super::wire::{ApplyResult, LeaderView};

/// The media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";
/// Where the problem types live; the slug follows.
const TYPE_BASE: &str = "https://causeway.dev/problems/";

/// What went wrong, as the `type` slug says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slug {
    /// 400: a parameter or the body's framing is wrong (the `field` names it).
    BadRequest,
    /// 401: no bearer token, or not one we know (unknown, expired, used, revoked).
    Unauthorized,
    /// 403: the token's role may not do this.
    Forbidden,
    /// 404: no such resource, kind, token or route.
    NotFound,
    /// 405: the route exists but not with this method.
    MethodNotAllowed,
    /// 409: a `resourceVersion` precondition failed, or the write clashes with the state.
    Conflict,
    /// 410: a watch asked for events older than the ones kept.
    Gone,
    /// 413: the body is over the limit.
    PayloadTooLarge,
    /// 415: the body's content type is not one we read.
    UnsupportedMediaType,
    /// 422: documents that do not validate; `errors` lists every problem.
    Invalid,
    /// 500: a bug or a broken invariant on our side.
    Internal,
    /// 503: no leader, lost quorum, no commit in time, or no store on this gateway.
    NoQuorum,
}

impl Slug {
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict => StatusCode::CONFLICT,
            Self::Gone => StatusCode::GONE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NoQuorum => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad-request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::Conflict => "conflict",
            Self::Gone => "gone",
            Self::PayloadTooLarge => "payload-too-large",
            Self::UnsupportedMediaType => "unsupported-media-type",
            Self::Invalid => "invalid",
            Self::Internal => "internal",
            Self::NoQuorum => "no-quorum",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::BadRequest => "Bad request",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::Conflict => "Conflict",
            Self::Gone => "Gone",
            Self::PayloadTooLarge => "Payload too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::Invalid => "Invalid",
            Self::Internal => "Internal error",
            Self::NoQuorum => "No quorum",
        }
    }
}

/// An error answer. Boxed: handlers return `Result<_, Problem>` everywhere, and the body is
/// large next to their success values.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Problem(Box<ProblemBody>);

impl std::ops::Deref for Problem {
    type Target = ProblemBody;
    fn deref(&self) -> &ProblemBody {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemBody {
        &mut self.0
    }
}

/// An `application/problem+json` body (RFC 9457) with Causeway's extension members.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemBody {
    /// `https://causeway.dev/problems/<slug>`; slugs: bad-request, unauthorized, forbidden,
    /// not-found, method-not-allowed, conflict, gone, payload-too-large,
    /// unsupported-media-type, invalid, internal, no-quorum.
    #[serde(rename = "type")]
    #[schema(example = "https://causeway.dev/problems/not-found")]
    pub problem_type: String,
    pub title: String,
    /// The HTTP status, repeated.
    pub status: u16,
    pub detail: String,
    /// The one parameter or field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// `invalid`: every validation error, with the document it is in.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<ProblemError>,
    /// `conflict` from an apply: every document's outcome (`action: conflict` for the ones at
    /// fault; nothing was written).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<ApplyResult>>,
    /// `no-quorum`: the leader this node knows of, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderView>,
    /// `gone`: the oldest index a watch can still start from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest: Option<u64>,
    #[serde(skip)]
    slug: Option<Slug>,
}

/// One validation error in a problem's `errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProblemError {
    /// 0-based position of the document in the request body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub document: Option<usize>,
    /// Dotted path from the document's root, e.g. `spec.http[0].route[1].weight`; empty for
    /// the document as a whole.
    pub field: String,
    pub message: String,
}

impl ProblemError {
    pub fn at(document: usize, error: FieldError) -> Self {
        Self {
            document: Some(document),
            field: error.field,
            message: error.message,
        }
    }
}

impl Problem {
    pub fn new(slug: Slug, detail: impl Into<String>) -> Self {
        Self(Box::new(ProblemBody {
            problem_type: format!("{TYPE_BASE}{}", slug.as_str()),
            title: slug.title().to_string(),
            status: slug.status().as_u16(),
            detail: detail.into(),
            field: None,
            errors: Vec::new(),
            results: None,
            leader: None,
            oldest: None,
            slug: Some(slug),
        }))
    }

    pub fn bad_request(field: &str, detail: impl Into<String>) -> Self {
        Self::new(Slug::BadRequest, detail).with_field(field)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(Slug::NotFound, detail)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(Slug::Internal, detail)
    }

    pub fn no_quorum(detail: impl Into<String>) -> Self {
        Self::new(Slug::NoQuorum, detail)
    }

    /// Documents that do not validate.
    pub fn invalid(errors: Vec<ProblemError>) -> Self {
        let detail = match errors.len() {
            1 => "1 error in the request".to_string(),
            n => format!("{n} errors in the request"),
        };
        let mut problem = Self::new(Slug::Invalid, detail);
        problem.errors = errors;
        problem
    }

    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_string());
        self
    }

    pub fn slug(&self) -> Option<Slug> {
        self.slug
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self
            .slug
            .map_or(StatusCode::INTERNAL_SERVER_ERROR, Slug::status);
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), detail = %self.detail, "admin API error");
        }
        let body = match serde_json::to_vec(&*self.0) {
            Ok(body) => body,
            // Only strings and integers inside: cannot fail, but never panic in a handler.
            Err(e) => {
                format!(r#"{{"status":500,"detail":"cannot encode a problem: {e}"}}"#).into_bytes()
            }
        };
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Bearer realm="causeway""#),
            );
        }
        response
    }
}
