//! Bearer-token authentication (a middleware) and role checks (an extractor per handler).
//!
//! ```text
//!  request ─► authenticate: Authorization: Bearer cw_<id>_<secret>
//!               │ MeshState::authenticate(token, now) ── none ──► 401 unauthorized
//!               ▼ Principal in the request's extensions
//!  handler(Caller<Operator>, ..) ── role too low ──► 403 forbidden
//! ```
//!
//! Authentication happens once, before routing to a handler's body, so a request without a
//! valid token learns nothing else (not even whether a kind or resource exists). Which role a
//! route needs is in the handler's signature, next to its `#[utoipa::path]`.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use federation::mesh::{Role, token};

use super::problem::{Problem, Slug};
use crate::AdminState;

/// Who made a request, as its token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's public id.
    pub id: String,
    pub description: String,
    pub role: Role,
    /// SHA-256 of the presented secret: a join proves it holds the token with it.
    pub secret_sha256: String,
}

impl Principal {
    /// How commands and the audit log name the caller: `<token id> (<description>)`.
    pub fn actor(&self) -> String {
        if self.description.is_empty() {
            self.id.clone()
        } else {
            format!("{} ({})", self.id, self.description)
        }
    }

    /// Who may read metrics on a gateway without the store: there are no tokens to check.
    fn anonymous() -> Self {
        Self {
            id: "anonymous".to_string(),
            description: String::new(),
            role: Role::Viewer,
            secret_sha256: String::new(),
        }
    }
}

/// Whether a token of role `have` may use a route that needs `need`. Viewer < operator < admin;
/// a join token is good for joining only, and nothing else is good for joining.
pub fn allows(have: Role, need: Role) -> bool {
    match (have, need) {
        (Role::Join, need) => need == Role::Join,
        (_, Role::Join) => false,
        (have, need) => have >= need,
    }
}

/// Middleware: authenticates the bearer token and puts the [`Principal`] in the request's
/// extensions. Without the store (a gateway configured statically) there are no tokens: only
/// `/metrics` stays reachable, unauthenticated as it was before the store, and everything
/// else answers 503.
pub async fn authenticate(
    State(state): State<AdminState>,
    mut request: Request,
    next: Next,
) -> Response {
    if state.node.is_none() {
        if request.uri().path() == "/metrics" {
            request.extensions_mut().insert(Principal::anonymous());
            return next.run(request).await;
        }
        return Problem::no_quorum(
            "this gateway runs without the replicated store, so it serves no mesh resources",
        )
        .into_response();
    }
    let principal = match bearer(&request) {
        Err(problem) => return problem.into_response(),
        Ok(token) => {
            let now = token::now_rfc3339();
            // A token created a moment ago through another gateway may not have reached this
            // one's copy of the state yet: before refusing, catch up to what is committed and
            // look again. Revocations take effect the same way: what is committed counts.
            let record = state
                .read_caught_up(|s| {
                    s.authenticate(token, &now)
                        .map(|r| (r.id.clone(), r.description.clone(), r.role))
                })
                .await;
            let Some((id, description, role)) = record else {
                return Problem::new(
                    Slug::Unauthorized,
                    "the bearer token is unknown, revoked, expired or already used",
                )
                .into_response();
            };
            // `authenticate` accepted it, so it parses.
            let secret_sha256 = token::parse(token)
                .map(|(_, secret)| token::hash(secret))
                .unwrap_or_default();
            Principal {
                id,
                description,
                role,
                secret_sha256,
            }
        }
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

fn bearer(request: &Request) -> Result<&str, Problem> {
    let unauthorized = |detail: &str| Problem::new(Slug::Unauthorized, detail);
    // Two credentials leave it to chance which one a proxy in front of us and we would honour.
    if request
        .headers()
        .get_all(AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(Problem::bad_request(
            "Authorization",
            "send one Authorization header, not several",
        ));
    }
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthorized("send a token as `Authorization: Bearer <token>`"))?;
    let value = header
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not ASCII"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| unauthorized("the Authorization header is not `Bearer <token>`"))?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized("the Authorization scheme must be Bearer"));
    }
    Ok(token.trim())
}

/// The role a route needs, as a type, so handlers say it in their signature.
pub trait Need: Send + Sync + 'static {
    const ROLE: Role;
}

pub struct Viewer;
pub struct Operator;
pub struct Admin;
pub struct Joining;

impl Need for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl Need for Operator {
    const ROLE: Role = Role::Operator;
}
impl Need for Admin {
    const ROLE: Role = Role::Admin;
}
impl Need for Joining {
    const ROLE: Role = Role::Join;
}

/// The authenticated caller, known to hold at least role `R` (403 otherwise).
pub struct Caller<R: Need> {
    pub principal: Principal,
    role: PhantomData<R>,
}

impl<R: Need> FromRequestParts<AdminState> for Caller<R> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &AdminState) -> Result<Self, Problem> {
        let principal = parts
            .extensions
            .get::<Principal>()
            .cloned()
            // The middleware runs on every route with a `Caller`: a bug if missing.
            .ok_or_else(|| Problem::internal("the request was not authenticated"))?;
        if !allows(principal.role, R::ROLE) {
            return Err(Problem::new(
                Slug::Forbidden,
                format!(
                    "token {} has role {}; this needs {}",
                    principal.id,
                    role_name(principal.role),
                    match R::ROLE {
                        Role::Join => "a join token".to_string(),
                        need => format!("role {} or higher", role_name(need)),
                    }
                ),
            ));
        }
        Ok(Self {
            principal,
            role: PhantomData,
        })
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
        Role::Join => "join",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_except_join() {
        use Role::*;
        assert!(allows(Admin, Viewer) && allows(Admin, Operator) && allows(Admin, Admin));
        assert!(allows(Operator, Viewer) && !allows(Operator, Admin));
        assert!(!allows(Viewer, Operator));
        for role in [Viewer, Operator, Admin] {
            assert!(!allows(Join, role), "a join token is good for joining only");
            assert!(!allows(role, Join), "only a join token joins");
        }
        assert!(allows(Join, Join));
    }
}
