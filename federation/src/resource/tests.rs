//! Parsing and validation end to end: real Istio YAML, native kinds, and refusals.

use serde_json::{Value, json};

use super::*;

const EXAMPLES: &[(&str, &str)] = &[
    (
        "authorization-policies.yaml",
        include_str!("../../../examples/istio/authorization-policies.yaml"),
    ),
    (
        "canary-split-virtualservice.yaml",
        include_str!("../../../examples/istio/canary-split-virtualservice.yaml"),
    ),
    (
        "cascading-timeouts.yaml",
        include_str!("../../../examples/istio/cascading-timeouts.yaml"),
    ),
    (
        "circuit-breaker-destinationrule.yaml",
        include_str!("../../../examples/istio/circuit-breaker-destinationrule.yaml"),
    ),
    (
        "fault-injection-virtualservice.yaml",
        include_str!("../../../examples/istio/fault-injection-virtualservice.yaml"),
    ),
    (
        "header-routing-virtualservice.yaml",
        include_str!("../../../examples/istio/header-routing-virtualservice.yaml"),
    ),
    (
        "mirror-virtualservice.yaml",
        include_str!("../../../examples/istio/mirror-virtualservice.yaml"),
    ),
    (
        "retries-virtualservice.yaml",
        include_str!("../../../examples/istio/retries-virtualservice.yaml"),
    ),
    (
        "strict-mtls-peerauthentication.yaml",
        include_str!("../../../examples/istio/strict-mtls-peerauthentication.yaml"),
    ),
    (
        "subsets-destinationrule.yaml",
        include_str!("../../../examples/istio/subsets-destinationrule.yaml"),
    ),
];

fn one(text: &str) -> Value {
    let mut docs = parse_documents(text);
    assert_eq!(docs.len(), 1, "{docs:?}");
    docs.remove(0).unwrap_or_else(|e| panic!("{e}"))
}

fn checked(text: &str) -> Checked {
    validate(one(text)).unwrap_or_else(|errors| panic!("{errors:#?}"))
}

fn errors(text: &str) -> Vec<FieldError> {
    match validate(one(text)) {
        Ok(checked) => panic!("accepted: {checked:#?}"),
        Err(errors) => errors,
    }
}

/// The one error a document has, at `field`; returns its message.
fn refused_at(text: &str, field: &str) -> String {
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].field, field, "{errors:#?}");
    errors[0].message.clone()
}

fn warned(checked: &Checked) -> Vec<&str> {
    checked.warnings.iter().map(|w| w.field.as_str()).collect()
}

#[test]
fn every_istio_example_validates_and_reads_back_as_written() {
    let mut total = 0;
    for (file, text) in EXAMPLES {
        let docs = parse_documents(text);
        assert!(!docs.is_empty(), "{file}: no documents");
        for (i, doc) in docs.into_iter().enumerate() {
            let doc = doc.unwrap_or_else(|e| panic!("{file}[{i}]: {e}"));
            let checked =
                validate(doc.clone()).unwrap_or_else(|errors| panic!("{file}[{i}]: {errors:#?}"));
            // Traffic and security policy are enforced as written: no warnings.
            assert!(
                checked.warnings.is_empty(),
                "{file}[{i}]: {:?}",
                checked.warnings
            );
            assert_eq!(checked.resource.spec, doc["spec"], "{file}[{i}]");
            // The whole document reads back unchanged: none of them carries server fields.
            assert_eq!(
                serde_json::to_value(&checked.resource).unwrap(),
                doc,
                "{file}[{i}]"
            );
            assert_eq!(checked.key.name, doc["metadata"]["name"], "{file}[{i}]");
            assert_eq!(
                checked.key.namespace, doc["metadata"]["namespace"],
                "{file}[{i}]"
            );
            assert!(checked.key.cluster.is_empty());
            total += 1;
        }
    }
    assert_eq!(total, 16);
}

#[test]
fn istio_warnings_name_the_feature_not_every_leaf() {
    // The traffic examples take effect as written: no warning.
    for (file, text) in EXAMPLES {
        if file.contains("authorization") || file.contains("peerauthentication") {
            continue;
        }
        for doc in parse_documents(text) {
            let checked = validate(doc.unwrap()).unwrap();
            assert_eq!(warned(&checked), Vec::<&str>::new(), "{file}");
        }
    }
    // What is still not enforced is named where it starts, not at every leaf.
    let cors = checked(&vs(
        "  - route: [{destination: {host: api}}]\n    corsPolicy: {allowOrigins: [{exact: x}], maxAge: 1s}\n    fault: {abort: {grpcStatus: UNAVAILABLE}}\n",
    ));
    assert_eq!(
        warned(&cors),
        [
            "spec.http[0].corsPolicy",
            "spec.http[0].fault.abort.grpcStatus"
        ]
    );
    assert!(cors.warnings.iter().all(|w| w.message == NOT_ENFORCED));
    // A TLS mode other than Istio's own mutual TLS is not applied, and said so.
    let tls = checked(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api, namespace: prod}\nspec:\n  host: api\n  trafficPolicy: {tls: {mode: SIMPLE}}\n",
    );
    assert_eq!(warned(&tls), ["spec.trafficPolicy.tls.mode"]);

    // An empty Istio AuthorizationPolicy means "deny all" to Istio, and is enforced so.
    let deny_all = EXAMPLES[0].1;
    let checked = validate(parse_documents(deny_all).remove(0).unwrap()).unwrap();
    assert_eq!(warned(&checked), Vec::<&str>::new());
}

const VS_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: api\n  namespace: prod\nspec:\n  hosts: [api]\n";

fn vs(http: &str) -> String {
    format!("{VS_HEAD}  http:\n{http}")
}

#[test]
fn invalid_documents_are_refused_at_the_exact_field() {
    let message = refused_at(
        &vs("  - route:\n    - destination:\n        host: api\n        hots: x\n"),
        "spec.http[0].route[0].destination.hots",
    );
    assert!(
        message.starts_with("unknown field `hots`; expected one of `host`, `subset`, `port`"),
        "{message}"
    );

    let message = refused_at(
        &vs("  - route:\n    - destination: {host: api}\n      weight: \"90\"\n"),
        "spec.http[0].route[0].weight",
    );
    assert!(message.contains("expected an integer"), "{message}");

    let message = refused_at(
        &vs("  - route:\n    - destination: {host: api}\n      weight: 150\n"),
        "spec.http[0].route[0].weight",
    );
    assert_eq!(message, "must be between 0 and 100, found 150");

    // 10.0 is a float: the compiler reads weights as integers.
    refused_at(
        &vs("  - route:\n    - destination: {host: api}\n      weight: 10.0\n"),
        "spec.http[0].route[0].weight",
    );

    let message = refused_at(
        &vs("  - route:\n    - destination: {host: api}\n    timeout: 5 seconds\n"),
        "spec.http[0].timeout",
    );
    assert!(message.contains("not a duration"), "{message}");

    refused_at(
        &vs(
            "  - route:\n    - destination: {host: api}\n    fault:\n      abort:\n        httpStatus: 700\n",
        ),
        "spec.http[0].fault.abort.httpStatus",
    );
    refused_at(
        &vs("  - route:\n    - destination: {host: api}\n    retries: {attempts: -1}\n"),
        "spec.http[0].retries.attempts",
    );
    refused_at(
        &vs("  - route:\n    - destination: {host: api}\n    mirrorPercentage: {value: 101}\n"),
        "spec.http[0].mirrorPercentage.value",
    );
    refused_at(
        &vs("  - route:\n    - destination: {host: api, port: {number: 70000}}\n"),
        "spec.http[0].route[0].destination.port.number",
    );
    refused_at(
        &vs("  - route:\n    - destination: {subset: v1}\n"),
        "spec.http[0].route[0].destination.host",
    );
    refused_at(
        &vs(
            "  - match:\n    - uri: {exact: /a, prefix: /b}\n    route:\n    - destination: {host: api}\n",
        ),
        "spec.http[0].match[0].uri",
    );
    refused_at(&vs("  - timeout: 5s\n"), "spec.http[0]");

    let message = refused_at(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  namespace: prod\nspec: {hosts: [a], tcp: [{route: [{destination: {host: a}}]}]}\n",
        "metadata.name",
    );
    assert_eq!(message, "required field is missing");

    let message = refused_at(
        "apiVersion: causeway.dev/v1alpha1\nkind: Service\nmetadata: {name: echo, namespace: demo}\nspec:\n  ports: [{port: 80, protocol: http}]\n",
        "metadata.cluster",
    );
    assert!(message.contains("required"), "{message}");

    let message = refused_at(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: prod}\nspec: {}\n",
        "kind",
    );
    assert!(message.contains("unknown kind \"Gateway\""), "{message}");
    assert!(
        message.contains("VirtualService, DestinationRule (networking.istio.io/v1"),
        "{message}"
    );

    let message = refused_at(
        "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: api, namespace: prod}\nspec: {}\n",
        "apiVersion",
    );
    assert!(
        message.contains(
            "networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3"
        ),
        "{message}"
    );

    let message = refused_at(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: prod}\nspec:\n  rules:\n  - to:\n    - operation: {ports: [5432]}\n",
        "spec.rules[0].to[0].operation.ports[0]",
    );
    assert!(message.contains("as a string"), "{message}");
}

#[test]
fn every_error_is_reported_at_once() {
    let errors = errors(&vs(
        "  - route:\n    - destination: {host: api}\n      weight: 150\n    timeout: soon\n    colour: blue\n",
    ));
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.http[0].route[0].weight",
            "spec.http[0].timeout",
            "spec.http[0].colour"
        ],
        "{errors:#?}"
    );

    // Envelope and spec errors together.
    let errors = errors_of(json!({
        "apiVersion": "causeway.dev/v1alpha1",
        "kind": "Route",
        "metadata": {"name": "Bad_Name", "namespace": "demo", "colour": "x"},
        "spec": {"hosts": ["echo"], "http": [{"destinations": [{"service": "echo", "weight": 101}]}]},
        "extra": 1,
    }));
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "extra",
            "metadata.colour",
            "metadata.name",
            "spec.http[0].destinations[0].weight"
        ],
        "{errors:#?}"
    );
}

fn errors_of(doc: Value) -> Vec<FieldError> {
    validate(doc).expect_err("accepted")
}

#[test]
fn json_arrays_are_several_documents() {
    let body = r#"[
        {"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
         "metadata": {"name": "default", "namespace": "prod"}, "spec": {"mtls": {"mode": "STRICT"}}},
        {"apiVersion": "causeway.dev/v1alpha1", "kind": "ServiceExport",
         "metadata": {"name": "echo", "namespace": "demo", "cluster": "east"}, "spec": {}}
    ]"#;
    let docs: Vec<Checked> = parse_documents(body)
        .into_iter()
        .map(|d| validate(d.unwrap()).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0].key.kind, Kind::IstioPeerAuthentication);
    assert_eq!(warned(&docs[0]), Vec::<&str>::new());
    assert_eq!(
        docs[1].key,
        ResourceKey {
            kind: Kind::ServiceExport,
            namespace: "demo".into(),
            cluster: "east".into(),
            name: "echo".into()
        }
    );
    assert!(docs[1].warnings.is_empty());
}

#[test]
fn garbage_yaml_is_refused_with_a_position() {
    let docs = parse_documents("apiVersion: v1\nkind: [VirtualService\nmetadata: {\n");
    assert_eq!(docs.len(), 1);
    let error = docs[0].as_ref().unwrap_err();
    assert!(error.message.contains("line 3 column"), "{error}");
    // Not an object at all.
    let errors = errors_of(json!("just text"));
    assert_eq!(errors[0].field, "");
}

fn trust_bundle() -> String {
    rcgen::generate_simple_self_signed(vec!["root".into()])
        .unwrap()
        .cert
        .pem()
}

#[test]
fn enforced_native_kinds_carry_no_warnings() {
    let cluster = json!({
        "apiVersion": "causeway.dev/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": "east"},
        "spec": {
            "trustDomain": "east.mesh",
            "trustBundle": trust_bundle(),
            "gateways": [{"name": "gw-1", "tunnelAddress": "10.0.0.1:4433", "adminAddress": "[fd00::1]:9090"}],
            "locality": {"region": "eu", "zone": "eu-1a"}
        }
    });
    let checked = validate(cluster.clone()).unwrap();
    assert!(checked.warnings.is_empty(), "{:?}", checked.warnings);
    assert_eq!(checked.key.namespace, "");
    assert_eq!(checked.resource.spec, cluster["spec"]);

    let mut bad = cluster.clone();
    bad["spec"]["trustBundle"] = json!("not pem");
    bad["spec"]["gateways"][0]["tunnelAddress"] = json!("gw.example:4433");
    bad["metadata"]["namespace"] = json!("default");
    let fields: Vec<String> = errors_of(bad).into_iter().map(|e| e.field).collect();
    assert_eq!(
        fields,
        [
            "metadata.namespace",
            "spec.trustBundle",
            "spec.gateways[0].tunnelAddress"
        ]
    );

    let service = checked_json(json!({
        "apiVersion": "causeway.dev/v1alpha1",
        "kind": "Service",
        "metadata": {"name": "echo", "namespace": "demo", "cluster": "east", "labels": {"app": "echo"}},
        "spec": {"ports": [{"port": 8080, "protocol": "http", "name": "web"}], "endpoints": ["127.0.0.1:9000"]}
    }));
    assert!(service.warnings.is_empty());
    assert_eq!(service.resource.metadata.labels["app"], "echo");

    let fields: Vec<String> = errors_of(json!({
        "apiVersion": "causeway.dev/v1alpha1",
        "kind": "Service",
        "metadata": {"name": "echo", "namespace": "demo", "cluster": "east"},
        "spec": {"ports": [], "endpoints": ["127.0.0.1"]}
    }))
    .into_iter()
    .map(|e| e.field)
    .collect();
    assert_eq!(fields, ["spec.ports", "spec.endpoints[0]"]);
}

fn checked_json(doc: Value) -> Checked {
    validate(doc).unwrap_or_else(|errors| panic!("{errors:#?}"))
}

#[test]
fn native_policy_kinds_warn_per_feature() {
    let route = checked(
        "apiVersion: causeway.dev/v1alpha1\nkind: Route\nmetadata: {name: echo, namespace: demo}\nspec:\n  hosts: [echo.demo]\n  http:\n  - match: [{uri: {prefix: /v2}}]\n    destinations: [{service: echo, subset: v2, weight: 100}]\n    retries: {attempts: 2, perTryTimeout: 1s}\n",
    );
    // Routes take effect: nothing to warn about.
    assert_eq!(warned(&route), Vec::<&str>::new());
    let limit = checked(
        "apiVersion: causeway.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: echo, namespace: demo}\nspec:\n  targetRef: {service: echo}\n  requestsPerSecond: 100\n",
    );
    // Rate limits and peer authentication take effect too.
    assert_eq!(warned(&limit), Vec::<&str>::new());
    refused_at(
        "apiVersion: causeway.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {name: echo, namespace: demo}\nspec:\n  targetRef: {service: echo}\n  requestsPerSecond: 0\n",
        "spec.requestsPerSecond",
    );
    let peer = checked(
        "apiVersion: causeway.dev/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: demo}\nspec: {mtls: {mode: STRICT}}\n",
    );
    assert_eq!(warned(&peer), Vec::<&str>::new());
    // Native names are DNS labels; Istio names may have dots.
    refused_at(
        "apiVersion: causeway.dev/v1alpha1\nkind: PeerAuthentication\nmetadata: {name: a.b, namespace: demo}\nspec: {mtls: {mode: STRICT}}\n",
        "metadata.name",
    );
    checked(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a.b, namespace: demo}\nspec:\n  selector: {matchLabels: {app: db}}\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
    );
    // Port-level modes are a workload's: Istio refuses them without a selector.
    refused_at(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: demo}\nspec:\n  portLevelMtls:\n    8080: {mode: DISABLE}\n",
        "spec.portLevelMtls",
    );
}

#[test]
fn server_fields_are_dropped() {
    let checked = checked(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: prod\n  resourceVersion: \"42\"\n  uid: 0b7c\n  generation: 3\n  creationTimestamp: \"2024-01-01T00:00:00Z\"\n  managedFields: []\nspec: {mtls: {mode: STRICT}}\nstatus: {conditions: []}\n",
    );
    assert_eq!(warned(&checked), ["metadata.creationTimestamp", "status"]);
    let meta = &checked.resource.metadata;
    assert_eq!(meta.resource_version.as_deref(), Some("42"));
    assert_eq!(meta.creation_timestamp, None);
    assert_eq!(checked.resource.status, None);
    refused_at(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: d, namespace: p, resourceVersion: 42}\nspec: {}\n",
        "metadata.resourceVersion",
    );
    refused_at(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: d, namespace: p, labels: {version: 2}}\nspec: {}\n",
        "metadata.labels.version",
    );
    refused_at(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: d, namespace: p}\n",
        "spec",
    );
}

#[test]
fn keys_follow_scope() {
    let mut resource = checked(&vs("  - route: [{destination: {host: api}}]\n")).resource;
    assert_eq!(key_of(&resource).unwrap().namespace, "prod");
    resource.metadata.cluster = Some("east".into());
    assert_eq!(key_of(&resource).unwrap_err().field, "metadata.cluster");
    resource.metadata.cluster = None;
    resource.metadata.namespace = None;
    assert_eq!(key_of(&resource).unwrap_err().field, "metadata.namespace");
    resource.api_version = "networking.istio.io/v9".into();
    assert_eq!(key_of(&resource).unwrap_err().field, "apiVersion");
}

#[test]
fn istio_reference_fields_are_known() {
    let vs = checked(
        r#"
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews.full, namespace: prod}
spec:
  hosts: [reviews.prod.svc.cluster.local]
  gateways: [mesh]
  exportTo: ["."]
  http:
  - name: v2
    match:
    - name: m
      uri: {prefix: /wpcatalog}
      scheme: {exact: https}
      method: {exact: GET}
      authority: {regex: "^rev.*"}
      headers: {end-user: {exact: jason}, x-present: {}}
      withoutHeaders: {x-debug: {exact: "1"}}
      port: 8080
      sourceLabels: {app: frontend}
      gateways: [mesh]
      queryParams: {v: {exact: "2"}}
      ignoreUriCase: true
      sourceNamespace: web
      statPrefix: reviews
    rewrite: {uri: /newcatalog, authority: new}
    route:
    - destination: {host: reviews, subset: v2, port: {number: 9080}}
      weight: 100
      headers: {request: {set: {x: "1"}, add: {y: "2"}, remove: [z]}}
    timeout: 0.5s
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx", retryRemoteLocalities: false}
    fault:
      delay: {percent: 10, fixedDelay: 100ms}
      abort: {percentage: {value: 0.1}, grpcStatus: UNAVAILABLE}
    mirrors:
    - destination: {host: shadow}
      percentage: {value: 50}
    mirrorPercent: 20
    corsPolicy:
      allowOrigins: [{exact: "https://example.com"}]
      allowMethods: [POST, GET]
      allowCredentials: false
      allowHeaders: [X-Foo-Bar]
      exposeHeaders: [X-Expose]
      maxAge: 24h
      unmatchedPreflights: IGNORE
    headers: {response: {remove: [foo]}}
  - redirect: {uri: /v1/bookRatings, authority: newratings.default.svc.cluster.local, redirectCode: 308, derivePort: FROM_REQUEST_PORT}
  - directResponse: {status: 503, body: {string: "unavailable"}}
  - delegate: {name: productpage, namespace: nsA}
  tcp:
  - match: [{port: 27017, destinationSubnets: [10.0.0.0/8], sourceLabels: {app: x}}]
    route: [{destination: {host: mongo, port: {number: 5555}}, weight: 100}]
  tls:
  - match: [{port: 443, sniHosts: [login.bookinfo.com]}]
    route: [{destination: {host: login.prod.svc.cluster.local}}]
"#,
    );
    assert!(
        warned(&vs).contains(&"spec.http[0].corsPolicy"),
        "{:?}",
        vs.warnings
    );

    checked(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bookinfo-ratings, namespace: prod}
spec:
  host: ratings.prod.svc.cluster.local
  exportTo: ["*"]
  workloadSelector: {matchLabels: {app: ratings}}
  trafficPolicy:
    loadBalancer:
      consistentHash:
        httpCookie: {name: user, ttl: 0s}
        ringHash: {minimumRingSize: 1024}
      localityLbSetting:
        enabled: true
        distribute: [{from: us-west/zone1/*, to: {"us-west/zone1/*": 80, "us-west/zone2/*": 20}}]
      warmup: {duration: 60s, minimumPercent: 10, aggression: 1.5}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {time: 7200s, interval: 75s, probes: 9}, maxConnectionDuration: 1h, idleTimeout: 1h}
      http: {http1MaxPendingRequests: 1, http2MaxRequests: 10, maxRequestsPerConnection: 1, maxRetries: 3, idleTimeout: 30s, h2UpgradePolicy: UPGRADE, useClientProtocol: true, maxConcurrentStreams: 100}
    outlierDetection: {consecutiveErrors: 7, consecutiveLocalOriginFailures: 2, splitExternalLocalOriginErrors: true, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 100}
    tls: {mode: MUTUAL, clientCertificate: /etc/certs/c.pem, privateKey: /etc/certs/k.pem, caCertificates: /etc/certs/ca.pem, sni: x, subjectAltNames: [a], insecureSkipVerify: false, credentialName: cred, caCrl: /etc/crl.pem}
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {simple: LEAST_REQUEST}
    tunnel: {protocol: CONNECT, targetHost: example.com, targetPort: 443}
    proxyProtocol: {version: V2}
  subsets:
  - name: testversion
    labels: {version: v3}
    trafficPolicy:
      loadBalancer: {simple: ROUND_ROBIN}
"#,
    );

    checked(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: prod}
spec:
  selector: {matchLabels: {app: reviews}}
  action: AUDIT
  rules:
  - from:
    - source: {requestPrincipals: ["*"], notNamespaces: [dev], ipBlocks: [10.0.0.0/8], remoteIpBlocks: [1.2.3.4], notPrincipals: [x], serviceAccounts: [ns/sa]}
    to:
    - operation: {hosts: [a.com], notPorts: ["8080"], notMethods: [DELETE], notPaths: [/admin], notHosts: [b.com]}
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]
      notValues: [x]
"#,
    );
    refused_at(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: p}\nspec: {action: CUSTOM}\n",
        "spec.action",
    );
    // Waypoint attachment is known, and refused with a pointer to `selector`.
    refused_at(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: p}\nspec:\n  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n",
        "spec.targetRefs",
    );
    refused_at(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: p}\nspec: {action: CUSTOM, provider: {name: opa}, rules: [{}]}\n",
        "spec.action",
    );
    refused_at(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a, namespace: p}\nspec: {action: DENY, provider: {name: opa}, rules: [{}]}\n",
        "spec.provider",
    );
    refused_at(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: a, namespace: p}\nspec:\n  selector: {matchLabels: {app: db}}\n  portLevelMtls:\n    http: {mode: DISABLE}\n",
        "spec.portLevelMtls.http",
    );
}
const BOOKINFO: &[(&str, &str)] = &[
    (
        "destination-rule-all-mtls.yaml",
        include_str!("../../../examples/bookinfo/destination-rule-all-mtls.yaml"),
    ),
    (
        "destination-rule-all.yaml",
        include_str!("../../../examples/bookinfo/destination-rule-all.yaml"),
    ),
    (
        "destination-rule-reviews.yaml",
        include_str!("../../../examples/bookinfo/destination-rule-reviews.yaml"),
    ),
    (
        "fault-injection-details-v1.yaml",
        include_str!("../../../examples/bookinfo/fault-injection-details-v1.yaml"),
    ),
    (
        "virtual-service-all-v1.yaml",
        include_str!("../../../examples/bookinfo/virtual-service-all-v1.yaml"),
    ),
    (
        "virtual-service-details-v2.yaml",
        include_str!("../../../examples/bookinfo/virtual-service-details-v2.yaml"),
    ),
    (
        "virtual-service-ratings-db.yaml",
        include_str!("../../../examples/bookinfo/virtual-service-ratings-db.yaml"),
    ),
    (
        "virtual-service-ratings-mysql-vm.yaml",
        include_str!("../../../examples/bookinfo/virtual-service-ratings-mysql-vm.yaml"),
    ),
    (
        "virtual-service-ratings-mysql.yaml",
        include_str!("../../../examples/bookinfo/virtual-service-ratings-mysql.yaml"),
    ),
    (
        "virtual-service-ratings-test-abort.yaml",
        include_str!("../../../examples/bookinfo/virtual-service-ratings-test-abort.yaml"),
    ),
    (
        "virtual-service-ratings-test-delay.yaml",
        include_str!("../../../examples/bookinfo/virtual-service-ratings-test-delay.yaml"),
    ),
    (
        "virtual-service-reviews-50-v3.yaml",
        include_str!("../../../examples/bookinfo/virtual-service-reviews-50-v3.yaml"),
    ),
    (
        "virtual-service-reviews-80-20.yaml",
        include_str!("../../../examples/bookinfo/virtual-service-reviews-80-20.yaml"),
    ),
    (
        "virtual-service-reviews-90-10.yaml",
        include_str!("../../../examples/bookinfo/virtual-service-reviews-90-10.yaml"),
    ),
    (
        "virtual-service-reviews-jason-v2-v3.yaml",
        include_str!("../../../examples/bookinfo/virtual-service-reviews-jason-v2-v3.yaml"),
    ),
    (
        "virtual-service-reviews-test-v2.yaml",
        include_str!("../../../examples/bookinfo/virtual-service-reviews-test-v2.yaml"),
    ),
    (
        "virtual-service-reviews-v2-v3.yaml",
        include_str!("../../../examples/bookinfo/virtual-service-reviews-v2-v3.yaml"),
    ),
    (
        "virtual-service-reviews-v3.yaml",
        include_str!("../../../examples/bookinfo/virtual-service-reviews-v3.yaml"),
    ),
];

/// The Bookinfo networking samples, as istio/istio publishes them: no namespace, short hosts.
#[test]
fn every_bookinfo_sample_validates_into_the_default_namespace() {
    let mut total = 0;
    for (file, text) in BOOKINFO {
        for (i, doc) in parse_documents(text).into_iter().enumerate() {
            let doc = doc.unwrap_or_else(|e| panic!("{file}[{i}]: {e}"));
            assert!(doc["metadata"].get("namespace").is_none(), "{file}[{i}]");
            let checked = validate(doc).unwrap_or_else(|e| panic!("{file}[{i}]: {e:#?}"));
            assert_eq!(checked.key.namespace, DEFAULT_NAMESPACE, "{file}[{i}]");
            // Published as they are, they take effect: nothing is reported as not enforced.
            assert_eq!(warned(&checked), Vec::<&str>::new(), "{file}[{i}]");
            assert_eq!(
                checked.resource.metadata.namespace.as_deref(),
                Some(DEFAULT_NAMESPACE)
            );
            total += 1;
        }
    }
    assert_eq!(total, 31);
}

#[test]
fn namespaces_default_as_kubectl_does() {
    let bare = json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": "reviews"},
        "spec": {"host": "reviews"},
    });
    let shop = Namespacing {
        namespace: "shop",
        enforce: false,
    };
    let dash_n = Namespacing {
        namespace: "shop",
        enforce: true,
    };
    assert_eq!(validate(bare.clone()).unwrap().key.namespace, "default");
    assert_eq!(
        validate_in(bare.clone(), shop).unwrap().key.namespace,
        "shop"
    );
    assert_eq!(
        validate_in(bare.clone(), dash_n).unwrap().key.namespace,
        "shop"
    );

    let mut prod = bare.clone();
    prod["metadata"]["namespace"] = json!("prod");
    // A context's namespace only fills in; -n refuses a document naming another.
    assert_eq!(
        validate_in(prod.clone(), shop).unwrap().key.namespace,
        "prod"
    );
    let errors = validate_in(prod, dash_n).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].field, "metadata.namespace");
    assert!(
        errors[0].message.starts_with(
            "the document's namespace \"prod\" does not match the request's namespace \"shop\""
        ),
        "{}",
        errors[0].message
    );

    // A mesh-wide kind takes no namespace, whatever the request says.
    let cluster = json!({
        "apiVersion": "causeway.dev/v1alpha1",
        "kind": "Cluster",
        "metadata": {"name": "east"},
        "spec": {"trustDomain": "east.mesh", "trustBundle": trust_bundle()},
    });
    let checked = validate_in(cluster, dash_n).unwrap();
    assert_eq!(checked.key.namespace, "");
    assert_eq!(checked.resource.metadata.namespace, None);
}

#[test]
fn service_endpoints_may_carry_labels() {
    let service = |endpoints: Value| {
        json!({
            "apiVersion": "causeway.dev/v1alpha1",
            "kind": "Service",
            "metadata": {"name": "reviews", "namespace": "default", "cluster": "east"},
            "spec": {"ports": [{"port": 9080, "protocol": "http"}], "endpoints": endpoints},
        })
    };
    let doc = service(
        json!(["10.0.0.1:9080", {"address": "10.0.0.2:9080", "labels": {"version": "v2"}}]),
    );
    let checked = validate(doc.clone()).unwrap();
    assert_eq!(serde_json::to_value(&checked.resource).unwrap(), doc);
    let errors = errors_of(service(json!([
        8080,
        {"address": "10.0.0.2"},
        {"labels": {"version": "v2"}},
        {"address": "10.0.0.3:80", "labels": {"bad key!": "x"}},
    ])));
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.endpoints[0]",
            "spec.endpoints[1].address",
            "spec.endpoints[2].address",
            "spec.endpoints[3].labels[\"bad key!\"]",
        ]
    );
    let message = &errors_of(service(json!([8080])))[0].message;
    assert!(
        message.starts_with("expected an address such as \"10.0.0.1:4433\" or an object"),
        "{message}"
    );
}

#[test]
fn linkerd_and_smi_kinds_are_served() {
    assert_eq!(
        Kind::lookup("serviceprofiles"),
        Some(Kind::LinkerdServiceProfile)
    );
    assert_eq!(Kind::lookup("sp"), Some(Kind::LinkerdServiceProfile));
    assert_eq!(Kind::lookup("trafficsplits"), Some(Kind::SmiTrafficSplit));
    assert_eq!(
        Kind::from_api("split.smi-spec.io/v1alpha2", "TrafficSplit"),
        Some(Kind::SmiTrafficSplit)
    );
    let message = refused_at(
        "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web, namespace: shop}\nspec: {}\n",
        "metadata.name",
    );
    assert!(message.contains("is not a service FQDN"), "{message}");
    let split = checked(
        "apiVersion: split.smi-spec.io/v1alpha1\nkind: TrafficSplit\nmetadata: {name: web}\nspec:\n  service: web\n  backends:\n  - {service: web-v1, weight: 500m}\n  - {service: web-v2, weight: 500m}\n",
    );
    assert_eq!(split.key.namespace, "default");
    assert_eq!(warned(&split), Vec::<&str>::new());
}
