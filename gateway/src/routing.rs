//! Route choice at the source gateway: which of a service's HTTP routes a request takes, and
//! the request edits the route asks for (headers, rewrite, redirect).
//!
//! Sans-IO: it reads a [`RequestView`] and the compiled [`HttpRoute`]s and decides; nothing
//! here parses policy or allocates to decide. Semantics are Istio's: routes are tried in
//! order and the first whose any `match` holds wins; within a match every condition must
//! hold; regexes match the whole value (Envoy `safe_regex`); `uri` matches the path without
//! the query string; `withoutHeaders` holds when the header is absent or does not match.

use federation::traffic::{
    HeaderOps, HttpRoute, Redirect, RequestMatch, Rewrite, RouteIndex, StringMatch,
};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

/// What route matching reads of a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The Host the client named, with its port if it gave one.
    pub authority: &'a str,
    pub headers: &'a HeaderMap,
    /// The service port addressed (the Host's port, or the service's HTTP port).
    pub port: Option<u16>,
    /// The namespace of the caller's workload identity, when it has one.
    pub source_namespace: Option<&'a str>,
}

impl<'a> RequestView<'a> {
    pub fn of<B>(req: &'a http::Request<B>, authority: &'a str, port: Option<u16>) -> Self {
        RequestView {
            method: req.method().as_str(),
            path: req.uri().path(),
            query: req.uri().query(),
            authority,
            headers: req.headers(),
            port,
            source_namespace: None,
        }
    }

    /// The view of a caller whose workload identity is in namespace `namespace`.
    pub fn from_namespace(mut self, namespace: Option<&'a str>) -> Self {
        self.source_namespace = namespace;
        self
    }

    fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// The first route that `req` matches, and the match that held (none for a route without
/// matches). Only the routes `index` offers for the request are tried (see
/// [`RouteIndex`]), in order, so the answer is the one a scan of every route would give.
pub fn select<'r>(
    routes: &'r [HttpRoute],
    index: &RouteIndex,
    req: &RequestView<'_>,
) -> Option<(&'r HttpRoute, Option<&'r RequestMatch>)> {
    let mut chosen = None;
    index.for_each_candidate(
        |name| req.header(name),
        |i| {
            let Some(route) = routes.get(i as usize) else {
                return false;
            };
            if route.matches.is_empty() {
                chosen = Some((route, None));
                return true;
            }
            if let Some(m) = route.matches.iter().find(|m| matches(m, req)) {
                chosen = Some((route, Some(m)));
                return true;
            }
            false
        },
    );
    chosen
}

fn matches(m: &RequestMatch, req: &RequestView<'_>) -> bool {
    if m.never {
        return false;
    }
    if let Some(ns) = &m.source_namespace
        && req.source_namespace != Some(ns.as_str())
    {
        return false;
    }
    let uri_ok = m.uri.as_ref().is_none_or(|u| {
        if m.ignore_uri_case {
            u.matches_ignoring_case(req.path)
        } else {
            u.matches(req.path)
        }
    });
    uri_ok
        && m.method.as_ref().is_none_or(|s| s.matches(req.method))
        && m.authority.as_ref().is_none_or(|s| s.matches(req.authority))
        // Requests reach the outbound listener as plain HTTP.
        && m.scheme.as_ref().is_none_or(|s| s.matches("http"))
        && m.port.is_none_or(|p| req.port == Some(p))
        && m
            .headers
            .iter()
            .all(|(name, s)| req.header(name).is_some_and(|v| s.matches(v)))
        && m
            .without_headers
            .iter()
            .all(|(name, s)| !req.header(name).is_some_and(|v| s.matches(v)))
        && m
            .query_params
            .iter()
            .all(|(name, s)| req.query_param(name).is_some_and(|v| s.matches(v)))
}

/// Applies `set`, `add` and `remove`, in Istio's order (remove last, so a header set and
/// removed in one rule is gone). Names and values that are not valid HTTP were refused at
/// apply time; any that slip through are skipped rather than sent broken.
pub(crate) fn apply_header_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    let pair = |(k, v): &(String, String)| {
        Some((
            HeaderName::from_bytes(k.as_bytes()).ok()?,
            HeaderValue::from_str(v).ok()?,
        ))
    };
    for (name, value) in ops.set.iter().filter_map(pair) {
        headers.insert(name, value);
    }
    for (name, value) in ops.add.iter().filter_map(pair) {
        headers.append(name, value);
    }
    for name in &ops.remove {
        headers.remove(name.as_str());
    }
}

/// The request URI after `rewrite.uri`: a prefix match has its prefix replaced, any other
/// match the whole path (as Envoy's `prefix_rewrite` / path rewrite do); the query stays.
pub(crate) fn rewrite_uri(uri: &Uri, matched: Option<&RequestMatch>, rewrite: &Rewrite) -> Uri {
    let Some(replacement) = &rewrite.uri else {
        return uri.clone();
    };
    let path = uri.path();
    let new_path = match matched.and_then(|m| m.uri.as_ref()) {
        Some(StringMatch::Prefix(prefix)) if path.len() >= prefix.len() => {
            format!("{replacement}{}", &path[prefix.len()..])
        }
        _ => replacement.clone(),
    };
    let path_and_query = match uri.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    Uri::builder()
        .path_and_query(path_and_query)
        .build()
        .unwrap_or_else(|_| uri.clone())
}

/// The `Location` of a redirect for a request to `authority` + `path_and_query`.
pub(crate) fn redirect_location(
    redirect: &Redirect,
    authority: &str,
    path_and_query: &str,
) -> String {
    let scheme = redirect.scheme.as_deref().unwrap_or("http");
    let host = redirect.authority.as_deref().unwrap_or_else(|| {
        // Keep the caller's host, without its port if the redirect names one.
        match redirect.port {
            Some(_) => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
            None => authority,
        }
    });
    let port = redirect.port.map(|p| format!(":{p}")).unwrap_or_default();
    let path = redirect.uri.as_deref().unwrap_or(path_and_query);
    format!("{scheme}://{host}{port}{path}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn route(name: &str, matches: Vec<RequestMatch>) -> HttpRoute {
        HttpRoute {
            timeout: Some(Duration::from_secs(1)),
            ..HttpRoute::forward(name, matches, vec![])
        }
    }

    fn header(name: &str, m: StringMatch) -> RequestMatch {
        RequestMatch {
            headers: vec![(name.into(), m)],
            ..RequestMatch::default()
        }
    }

    fn pick<'r>(routes: &'r [HttpRoute], req: &http::Request<()>) -> Option<&'r str> {
        let authority = "api.prod";
        let index = RouteIndex::build(routes);
        select(routes, &index, &RequestView::of(req, authority, Some(80)))
            .map(|(r, _)| r.name.as_str())
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn first_matching_route_wins_in_order() {
        let routes = vec![
            route(
                "enterprise",
                vec![header(
                    "x-tenant-tier",
                    StringMatch::Exact("enterprise".into()),
                )],
            ),
            route(
                "beta",
                vec![
                    header("x-beta", StringMatch::Exact("true".into())),
                    RequestMatch {
                        uri: Some(StringMatch::Prefix("/beta".into())),
                        ..RequestMatch::default()
                    },
                ],
            ),
            route("default", vec![]),
        ];
        assert_eq!(
            pick(
                &routes,
                &req(
                    "GET",
                    "/",
                    &[("x-tenant-tier", "enterprise"), ("x-beta", "true")]
                )
            ),
            Some("enterprise")
        );
        assert_eq!(
            pick(&routes, &req("GET", "/", &[("x-beta", "true")])),
            Some("beta")
        );
        // Any one match of a route is enough.
        assert_eq!(pick(&routes, &req("GET", "/beta/x", &[])), Some("beta"));
        assert_eq!(
            pick(&routes, &req("GET", "/", &[("x-tenant-tier", "free")])),
            Some("default")
        );
        // No catch-all: nothing matches.
        assert_eq!(pick(&routes[..2], &req("GET", "/", &[])), None);
    }

    #[test]
    fn source_namespace_holds_only_for_a_caller_of_that_namespace() {
        let m = RequestMatch {
            source_namespace: Some("monitoring".into()),
            ..RequestMatch::default()
        };
        let req = http::Request::builder().uri("/").body(()).unwrap();
        let view = |ns| RequestView::of(&req, "api.prod", None).from_namespace(ns);
        assert!(matches(&m, &view(Some("monitoring"))));
        assert!(!matches(&m, &view(Some("production"))));
        // A caller without a workload identity has no namespace.
        assert!(!matches(&m, &view(None)));
        assert!(matches(&RequestMatch::default(), &view(None)));
    }

    #[test]
    fn every_condition_of_a_match_must_hold() {
        let m = RequestMatch {
            uri: Some(StringMatch::regex("/api/v[0-9]+").unwrap()),
            method: Some(StringMatch::Exact("GET".into())),
            query_params: vec![("debug".into(), StringMatch::Exact("1".into()))],
            without_headers: vec![("x-canary".into(), StringMatch::Present)],
            port: Some(80),
            ..RequestMatch::default()
        };
        let routes = vec![route("r", vec![m])];
        assert_eq!(
            pick(&routes, &req("GET", "/api/v2?x=1&debug=1", &[])),
            Some("r")
        );
        assert_eq!(pick(&routes, &req("POST", "/api/v2?debug=1", &[])), None);
        assert_eq!(pick(&routes, &req("GET", "/api/v2?debug=0", &[])), None);
        // The query string is not part of the path the uri regex sees.
        assert_eq!(pick(&routes, &req("GET", "/api/v2/x?debug=1", &[])), None);
        assert_eq!(
            pick(
                &routes,
                &req("GET", "/api/v2?debug=1", &[("x-canary", "1")])
            ),
            None
        );
    }

    #[test]
    fn header_ops_set_add_then_remove() {
        let mut h = HeaderMap::new();
        h.insert("x-old", HeaderValue::from_static("1"));
        h.insert("x-a", HeaderValue::from_static("0"));
        let ops = HeaderOps {
            set: vec![("x-a".into(), "1".into())],
            add: vec![("x-a".into(), "2".into()), ("x-new".into(), "y".into())],
            remove: vec!["x-old".into()],
        };
        apply_header_ops(&mut h, &ops);
        let a: Vec<_> = h
            .get_all("x-a")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(h["x-new"], "y");
        assert!(!h.contains_key("x-old"));
    }

    #[test]
    fn rewrites_replace_the_matched_prefix_or_the_whole_path() {
        let uri: Uri = "/v1/users?id=7".parse().unwrap();
        let prefix = RequestMatch {
            uri: Some(StringMatch::Prefix("/v1".into())),
            ..RequestMatch::default()
        };
        let rewrite = Rewrite {
            uri: Some("/v2".into()),
            authority: None,
        };
        assert_eq!(rewrite_uri(&uri, Some(&prefix), &rewrite), "/v2/users?id=7");
        assert_eq!(rewrite_uri(&uri, None, &rewrite), "/v2?id=7");
        let redirect = Redirect {
            uri: Some("/new".into()),
            authority: Some("web.prod".into()),
            scheme: None,
            port: None,
            status: 301,
        };
        assert_eq!(
            redirect_location(&redirect, "api.prod:80", "/old"),
            "http://web.prod/new"
        );
    }
}
