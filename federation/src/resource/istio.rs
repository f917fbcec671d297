//! Schemas of the Istio kinds we accept: `networking.istio.io` VirtualService and
//! DestinationRule, `security.istio.io` AuthorizationPolicy and PeerAuthentication.
//!
//! Field names and value ranges follow Istio's API reference (istio.io/latest/docs/reference/
//! config), so YAML written for Istio applies unchanged. The data plane enforces none of it
//! yet: every feature is marked not enforced where it starts (`spec.http[0].retries`,
//! `spec.trafficPolicy.outlierDetection`, `spec.rules`), while names that only say *what* the
//! resource is about (`hosts`, `host`, a route's `name`) are not.

use super::schema::{
    Field, Key, Shape, at_most_one, exactly_one, field, list, map, non_empty_list, obj, obj_with,
    required,
};

pub(crate) const STR: Shape = Shape::Str;
pub(crate) const STRINGS: Shape = list(&STR);
pub(crate) const NON_NEGATIVE: Shape = Shape::Int {
    min: 0,
    max: i32::MAX as i64,
};
pub(crate) const PORT: Shape = Shape::Int { min: 1, max: 65535 };
pub(crate) const PERCENT_INT: Shape = Shape::Int { min: 0, max: 100 };
pub(crate) const WEIGHT: Shape = Shape::Int { min: 0, max: 100 };
pub(crate) const DURATION: Shape = Shape::Duration;
pub(crate) const BOOL: Shape = Shape::Bool;

pub(crate) const HOST: Shape = Shape::Text {
    what: "a host name",
    check: non_empty,
};

pub(crate) fn non_empty(s: &str) -> Result<(), String> {
    if s.is_empty() {
        Err("must not be empty".into())
    } else {
        Ok(())
    }
}

/// A duration as Istio's `ValidateDuration` takes it: at least 1ms, whole milliseconds.
pub(crate) const MILLIS: Shape = Shape::Text {
    what: "a duration such as \"5s\" or \"100ms\"",
    check: check_millis,
};

pub(crate) fn check_millis(s: &str) -> Result<(), String> {
    let d = super::schema::parse_duration(s)?;
    if d < std::time::Duration::from_millis(1) {
        Err(format!(
            "{s:?} is shorter than 1ms, the least Istio accepts"
        ))
    } else if d.subsec_nanos() % 1_000_000 != 0 {
        Err(format!(
            "{s:?} is finer than a millisecond; Istio takes whole milliseconds"
        ))
    } else {
        Ok(())
    }
}

/// A subset name: Istio requires a DNS label, since it ends up in Envoy cluster names.
pub(crate) const SUBSET_NAME: Shape = Shape::Text {
    what: "a subset name (a DNS label)",
    check: super::names::check_label,
};

pub(crate) const LABEL_VALUE: Shape = Shape::Text {
    what: "a label value (a string)",
    check: super::names::check_label_value,
};

/// `app: api` style maps: Kubernetes label keys and values.
pub(crate) const LABELS: Shape = Shape::Map {
    key: Key::Label,
    value: &LABEL_VALUE,
};

pub(crate) const STRING_MAP: Shape = map(&STR);

pub(crate) const SELECTOR: Shape = obj(&[field("matchLabels", LABELS)]);

/// Istio's `StringMatch`. Empty (`{}`) is allowed: for headers it means "present".
pub(crate) const STRING_MATCH: Shape = obj_with(
    &[
        field("exact", STR),
        field("prefix", STR),
        field("regex", STR),
    ],
    &[at_most_one(&["exact", "prefix", "regex"])],
);

/// `{value: <0-100>}`, Istio's `Percent`.
const PERCENT: Shape = obj(&[field(
    "value",
    Shape::Num {
        min: 0.0,
        max: 100.0,
    },
)]);

// ---- VirtualService -------------------------------------------------------------------------

const PORT_SELECTOR: Shape = obj(&[field("number", PORT)]);

const DESTINATION: Shape = obj(&[
    required("host", HOST),
    field("subset", SUBSET_NAME),
    field("port", PORT_SELECTOR),
]);

const HEADER_OPERATIONS: Shape = obj(&[
    field("set", STRING_MAP),
    field("add", STRING_MAP),
    field("remove", STRINGS),
]);

const HEADERS: Shape = obj(&[
    field("request", HEADER_OPERATIONS),
    field("response", HEADER_OPERATIONS),
]);

const STRING_MATCHES: Shape = map(&STRING_MATCH);

const HTTP_MATCH: Shape = obj(&[
    field("name", STR),
    field("uri", STRING_MATCH),
    field("scheme", STRING_MATCH),
    field("method", STRING_MATCH),
    field("authority", STRING_MATCH),
    field("headers", STRING_MATCHES),
    field("withoutHeaders", STRING_MATCHES),
    field("port", PORT),
    field("sourceLabels", LABELS),
    field("gateways", STRINGS),
    field("queryParams", STRING_MATCHES),
    field("ignoreUriCase", BOOL),
    field("sourceNamespace", STR),
    field("statPrefix", STR).not_enforced(),
]);

const HTTP_ROUTE_DESTINATION: Shape = obj(&[
    required("destination", DESTINATION),
    field("weight", WEIGHT),
    field("headers", HEADERS),
]);

const REDIRECT: Shape = obj_with(
    &[
        field("uri", STR),
        field("authority", STR),
        field("port", PORT),
        field(
            "derivePort",
            Shape::Enum(&["FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"]),
        )
        .not_enforced(),
        field("scheme", Shape::Enum(&["http", "https"])),
        field("prefixRewrite", STR).not_enforced(),
        field("redirectCode", Shape::Int { min: 300, max: 399 }),
    ],
    &[
        at_most_one(&["port", "derivePort"]),
        at_most_one(&["uri", "prefixRewrite"]),
    ],
);

const HTTP_STATUS: Shape = Shape::Int { min: 200, max: 599 };

const DIRECT_RESPONSE: Shape = obj(&[
    required("status", HTTP_STATUS),
    field(
        "body",
        obj_with(
            &[field("string", STR), field("bytes", STR)],
            &[at_most_one(&["string", "bytes"])],
        ),
    ),
]);

const DELEGATE: Shape = obj(&[required("name", STR), field("namespace", STR)]);

const REWRITE: Shape = obj_with(
    &[
        field("uri", STR),
        field("authority", STR),
        field(
            "uriRegexRewrite",
            obj(&[required("match", STR), required("rewrite", STR)]),
        )
        .not_enforced(),
    ],
    &[at_most_one(&["uri", "uriRegexRewrite"])],
);

const RETRIES: Shape = obj(&[
    field("attempts", NON_NEGATIVE),
    field("perTryTimeout", MILLIS),
    field("retryOn", STR),
    field("retryRemoteLocalities", BOOL),
    field("retryIgnorePreviousHosts", BOOL).not_enforced(),
    field("backoff", MILLIS),
]);

const FAULT_DELAY: Shape = obj_with(
    &[
        field("fixedDelay", MILLIS),
        // Istio refuses it ("not supported yet"); known here so the error says so.
        field("exponentialDelay", MILLIS),
        field("percentage", PERCENT),
        field("percent", PERCENT_INT),
    ],
    &[
        exactly_one(&["fixedDelay", "exponentialDelay"]),
        at_most_one(&["percentage", "percent"]),
    ],
);

/// Envoy's gRPC status names, as Istio's `SupportedGRPCStatus` lists them.
const GRPC_STATUS: Shape = Shape::Enum(&[
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
]);

const FAULT_ABORT: Shape = obj_with(
    &[
        field("httpStatus", HTTP_STATUS),
        field("grpcStatus", GRPC_STATUS).not_enforced(),
        field("http2Error", STR).not_enforced(),
        field("percentage", PERCENT),
    ],
    &[exactly_one(&["httpStatus", "grpcStatus", "http2Error"])],
);

const FAULT: Shape = obj(&[field("delay", FAULT_DELAY), field("abort", FAULT_ABORT)]);

const MIRROR_POLICY: Shape = obj(&[
    required("destination", DESTINATION),
    field("percentage", PERCENT),
]);

const CORS_POLICY: Shape = obj(&[
    field("allowOrigins", list(&STRING_MATCH)),
    field("allowOrigin", STRINGS),
    field("allowMethods", STRINGS),
    field("allowHeaders", STRINGS),
    field("exposeHeaders", STRINGS),
    field("maxAge", DURATION),
    field("allowCredentials", BOOL),
    field(
        "unmatchedPreflights",
        Shape::Enum(&["UNSPECIFIED", "FORWARD", "IGNORE"]),
    ),
]);

const HTTP_ROUTE: Shape = obj_with(
    &[
        field("name", STR),
        field("match", list(&HTTP_MATCH)),
        field("route", list(&HTTP_ROUTE_DESTINATION)),
        field("redirect", REDIRECT),
        field("directResponse", DIRECT_RESPONSE),
        field("delegate", DELEGATE).not_enforced(),
        field("rewrite", REWRITE),
        field("timeout", MILLIS),
        field("retries", RETRIES),
        field("fault", FAULT),
        field("mirror", DESTINATION),
        field("mirrors", list(&MIRROR_POLICY)),
        field("mirrorPercentage", PERCENT),
        field("mirrorPercent", PERCENT_INT),
        field("corsPolicy", CORS_POLICY).not_enforced(),
        field("headers", HEADERS),
    ],
    // Which actions combine (route, redirect, directResponse, delegate) is Istio's
    // `validateHTTPRouteConflict`, in `traffic::http_route`: a group cannot say "route unless empty".
    &[
        at_most_one(&["mirror", "mirrors"]),
        at_most_one(&["mirrorPercentage", "mirrorPercent"]),
    ],
);

const L4_MATCH: Shape = obj(&[
    field("destinationSubnets", STRINGS),
    field("sourceSubnet", STR),
    field("port", PORT),
    field("sourceLabels", LABELS),
    field("gateways", STRINGS),
    field("sourceNamespace", STR),
]);

const TLS_MATCH: Shape = obj(&[
    required("sniHosts", non_empty_list(&HOST)),
    field("destinationSubnets", STRINGS),
    field("port", PORT),
    field("sourceLabels", LABELS),
    field("gateways", STRINGS),
    field("sourceNamespace", STR),
]);

const ROUTE_DESTINATION: Shape = obj(&[
    required("destination", DESTINATION),
    field("weight", WEIGHT),
]);

const TCP_ROUTE: Shape = obj(&[
    field("match", list(&L4_MATCH)).not_enforced(),
    required("route", non_empty_list(&ROUTE_DESTINATION)).not_enforced(),
]);

const TLS_ROUTE: Shape = obj(&[
    required("match", non_empty_list(&TLS_MATCH)).not_enforced(),
    field("route", list(&ROUTE_DESTINATION)).not_enforced(),
]);

pub(crate) const VIRTUAL_SERVICE: Shape = obj(&[
    // Required although Istio takes a VirtualService without hosts as a delegate: Causeway
    // has no delegation, so such a document would route nothing (`traffic` says why).
    field("hosts", list(&HOST)),
    // Causeway's gateways are Istio's "mesh": a VirtualService bound only to other gateways
    // is compiled to nothing, as an Istio sidecar ignores it.
    field("gateways", STRINGS),
    field("http", list(&HTTP_ROUTE)),
    field("tls", list(&TLS_ROUTE)),
    field("tcp", list(&TCP_ROUTE)),
    field("exportTo", STRINGS).not_enforced(),
]);

// ---- DestinationRule ------------------------------------------------------------------------

const CLIENT_TLS: Shape = obj(&[
    field(
        "mode",
        Shape::Enum(&["DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"]),
    ),
    field("clientCertificate", STR),
    field("privateKey", STR),
    field("caCertificates", STR),
    field("credentialName", STR),
    field("subjectAltNames", STRINGS),
    field("sni", STR),
    field("insecureSkipVerify", BOOL),
    field("caCrl", STR),
]);

const HTTP_COOKIE: Shape = obj(&[
    required("name", STR),
    field("path", STR).not_enforced(),
    field("ttl", DURATION).not_enforced(),
    field(
        "attributes",
        list(&obj(&[required("name", STR), field("value", STR)])),
    )
    .not_enforced(),
]);

const CONSISTENT_HASH: Shape = obj_with(
    &[
        field("httpHeaderName", STR),
        field("httpCookie", HTTP_COOKIE),
        field("useSourceIp", BOOL),
        field("httpQueryParameterName", STR),
        field("ringHash", obj(&[field("minimumRingSize", NON_NEGATIVE)])),
        field("maglev", obj(&[field("tableSize", NON_NEGATIVE)])),
        field("minimumRingSize", NON_NEGATIVE),
    ],
    &[
        at_most_one(&[
            "httpHeaderName",
            "httpCookie",
            "useSourceIp",
            "httpQueryParameterName",
        ]),
        at_most_one(&["ringHash", "maglev", "minimumRingSize"]),
    ],
);

const LOCALITY_LB: Shape = obj(&[
    field("enabled", BOOL),
    field(
        "distribute",
        list(&obj(&[field("from", STR), field("to", map(&PERCENT_INT))])),
    ),
    field(
        "failover",
        list(&obj(&[field("from", STR), field("to", STR)])),
    ),
    field("failoverPriority", STRINGS),
]);

const LOAD_BALANCER: Shape = obj_with(
    &[
        field(
            "simple",
            Shape::Enum(&[
                "UNSPECIFIED",
                "LEAST_CONN",
                "RANDOM",
                "PASSTHROUGH",
                "ROUND_ROBIN",
                "LEAST_REQUEST",
            ]),
        ),
        field("consistentHash", CONSISTENT_HASH),
        field("localityLbSetting", LOCALITY_LB),
        field("warmupDurationSecs", DURATION).not_enforced(),
        field(
            "warmup",
            obj(&[
                required("duration", DURATION),
                field(
                    "minimumPercent",
                    Shape::Num {
                        min: 0.0,
                        max: 100.0,
                    },
                ),
                field(
                    "aggression",
                    Shape::Num {
                        min: 1.0,
                        max: f64::MAX,
                    },
                ),
            ]),
        )
        .not_enforced(),
    ],
    &[at_most_one(&["simple", "consistentHash"])],
);

const CONNECTION_POOL: Shape = obj(&[
    field(
        "tcp",
        obj(&[
            field("maxConnections", NON_NEGATIVE),
            field("connectTimeout", DURATION),
            field(
                "tcpKeepalive",
                obj(&[
                    field("probes", NON_NEGATIVE),
                    field("time", DURATION),
                    field("interval", DURATION),
                ]),
            )
            .not_enforced(),
            field("maxConnectionDuration", DURATION).not_enforced(),
            field("idleTimeout", DURATION).not_enforced(),
        ]),
    ),
    field(
        "http",
        obj(&[
            field("http1MaxPendingRequests", NON_NEGATIVE),
            field("http2MaxRequests", NON_NEGATIVE),
            field("maxRequestsPerConnection", NON_NEGATIVE),
            field("maxRetries", NON_NEGATIVE),
            field("idleTimeout", DURATION),
            field(
                "h2UpgradePolicy",
                Shape::Enum(&["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"]),
            )
            .not_enforced(),
            field("useClientProtocol", BOOL).not_enforced(),
            field("maxConcurrentStreams", NON_NEGATIVE).not_enforced(),
            field(
                "http2KeepAlive",
                obj(&[field("interval", DURATION), field("timeout", DURATION)]),
            )
            .not_enforced(),
        ]),
    ),
]);

const OUTLIER_DETECTION: Shape = obj(&[
    field("consecutiveErrors", NON_NEGATIVE),
    field("consecutive5xxErrors", NON_NEGATIVE),
    field("consecutiveGatewayErrors", NON_NEGATIVE),
    field("consecutiveLocalOriginFailures", NON_NEGATIVE).not_enforced(),
    field("splitExternalLocalOriginErrors", BOOL).not_enforced(),
    field("interval", DURATION),
    field("baseEjectionTime", DURATION),
    field("maxEjectionPercent", PERCENT_INT),
    field("minHealthPercent", PERCENT_INT),
    field(
        "outlierDetectionHttpErrorCodes",
        list(&Shape::Int { min: 100, max: 599 }),
    )
    .not_enforced(),
]);

/// The per-feature fields shared by a traffic policy and its per-port overrides.
macro_rules! traffic_policy_fields {
    ($($extra:expr),* $(,)?) => {
        &[
            field("loadBalancer", LOAD_BALANCER),
            field("connectionPool", CONNECTION_POOL),
            field("outlierDetection", OUTLIER_DETECTION),
            // Traffic between clusters is always Causeway's mutual TLS: `ISTIO_MUTUAL` is
            // what it does; another mode is reported by `traffic::destination_rule`.
            field("tls", CLIENT_TLS),
            $($extra),*
        ]
    };
}

const PORT_TRAFFIC_POLICY: Shape = obj(traffic_policy_fields![required("port", PORT_SELECTOR)]);

const TRAFFIC_POLICY_FIELDS: &[Field] = traffic_policy_fields![
    field("portLevelSettings", list(&PORT_TRAFFIC_POLICY)).not_enforced(),
    field(
        "retryBudget",
        obj(&[
            field(
                "percent",
                obj(&[field(
                    "value",
                    Shape::Num {
                        min: 0.0,
                        max: 100.0
                    }
                )])
            ),
            field("minRetryConcurrency", NON_NEGATIVE),
            field("budgetInterval", DURATION),
        ])
    )
    .not_enforced(),
    field(
        "tunnel",
        obj(&[
            field("protocol", Shape::Enum(&["CONNECT", "POST"])),
            required("targetHost", HOST),
            required("targetPort", PORT),
        ])
    )
    .not_enforced(),
    field(
        "proxyProtocol",
        obj(&[field("version", Shape::Enum(&["V1", "V2"]))])
    )
    .not_enforced(),
];

const TRAFFIC_POLICY: Shape = obj(TRAFFIC_POLICY_FIELDS);

const SUBSET: Shape = obj(&[
    required("name", SUBSET_NAME),
    field("labels", LABELS),
    field("trafficPolicy", TRAFFIC_POLICY),
]);

pub(crate) const DESTINATION_RULE: Shape = obj(&[
    required("host", HOST),
    field("trafficPolicy", TRAFFIC_POLICY),
    field("subsets", list(&SUBSET)),
    field("exportTo", STRINGS).not_enforced(),
    field("workloadSelector", SELECTOR).not_enforced(),
]);

// ---- AuthorizationPolicy --------------------------------------------------------------------

/// Istio writes AuthorizationPolicy ports as strings (`ports: ["5432"]`).
const PORT_STRING: Shape = Shape::Text {
    what: "a port number as a string, such as \"8080\"",
    check: check_port_string,
};

fn check_port_string(s: &str) -> Result<(), String> {
    match s.parse::<u16>() {
        Ok(port) if port > 0 && s == port.to_string() => Ok(()),
        _ => Err(format!("{s:?} is not a port number 1-65535")),
    }
}

const PORT_STRINGS: Shape = list(&PORT_STRING);

const SOURCE: Shape = obj(&[
    field("principals", STRINGS),
    field("notPrincipals", STRINGS),
    field("requestPrincipals", STRINGS),
    field("notRequestPrincipals", STRINGS),
    field("namespaces", STRINGS),
    field("notNamespaces", STRINGS),
    field("serviceAccounts", STRINGS),
    field("notServiceAccounts", STRINGS),
    field("ipBlocks", STRINGS),
    field("notIpBlocks", STRINGS),
    field("remoteIpBlocks", STRINGS),
    field("notRemoteIpBlocks", STRINGS),
]);

const OPERATION: Shape = obj(&[
    field("hosts", STRINGS),
    field("notHosts", STRINGS),
    field("ports", PORT_STRINGS),
    field("notPorts", PORT_STRINGS),
    field("methods", STRINGS),
    field("notMethods", STRINGS),
    field("paths", STRINGS),
    field("notPaths", STRINGS),
]);

const CONDITION: Shape = obj(&[
    required("key", STR),
    field("values", STRINGS),
    field("notValues", STRINGS),
]);

const RULE: Shape = obj(&[
    field("from", list(&obj(&[field("source", SOURCE)]))),
    field("to", list(&obj(&[field("operation", OPERATION)]))),
    field("when", list(&CONDITION)),
]);

const TARGET_REF: Shape = obj(&[
    field("group", STR),
    required("kind", STR),
    required("name", STR),
    field("namespace", STR),
]);

pub(crate) const AUTHORIZATION_POLICY: Shape = obj_with(
    &[
        field("selector", SELECTOR),
        // Refused by `security::authorization_policy` with a pointer to `selector`.
        field("targetRef", TARGET_REF),
        field("targetRefs", list(&TARGET_REF)),
        field("action", Shape::Enum(&["ALLOW", "DENY", "AUDIT", "CUSTOM"])),
        field("provider", obj(&[field("name", STR)])),
        field("rules", list(&RULE)),
    ],
    &[at_most_one(&["selector", "targetRef", "targetRefs"])],
);

// ---- PeerAuthentication ---------------------------------------------------------------------

const MTLS: Shape = obj(&[field(
    "mode",
    Shape::Enum(&["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]),
)]);

pub(crate) const PEER_AUTHENTICATION: Shape = obj(&[
    field("selector", SELECTOR),
    field("mtls", MTLS),
    field(
        "portLevelMtls",
        Shape::Map {
            key: Key::Port,
            value: &MTLS,
        },
    ),
]);
