//! `POST /v1/apply` as a new Istio user meets it: Bookinfo's samples without a namespace,
//! kubectl's `-n` rules, and the checks across resources (subsets, one route table per host).

use super::*;

const REVIEWS_VS: &str =
    include_str!("../../../../examples/bookinfo/virtual-service-reviews-v3.yaml");
const ALL_DR: &str = include_str!("../../../../examples/bookinfo/destination-rule-all.yaml");

async fn apply_to(api: &Api, token: &str, query: &str, body: &str) -> Answer {
    api.call(
        Method::POST,
        &format!("/v1/apply{query}"),
        Some(token),
        Some((YAML, body.to_string())),
    )
    .await
}

#[tokio::test]
async fn bookinfo_samples_apply_into_default_or_the_requested_namespace() {
    let api = Api::start().await;
    let operator = api.token("operator").await;

    // Without the rules, the VS's subset is reported at its field, and it still applies.
    let lone = api.apply(&operator, YAML, REVIEWS_VS).await.ok();
    assert_eq!(lone["results"][0]["namespace"], "default", "{lone}");
    let warnings = lone["results"][0]["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w["field"] == "spec.http[0].route[0].destination.subset"
                && w["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("subset \"v3\" of reviews.default is defined by no")),
        "{lone}"
    );
    api.get("/v1/namespaces/default/virtualservices/reviews", &operator)
        .await
        .ok();

    // The rules and the VS in one request, in namespace bookinfo: no subset warning.
    let both = format!("{ALL_DR}\n---\n{REVIEWS_VS}");
    let applied = apply_to(&api, &operator, "?namespace=bookinfo", &both)
        .await
        .ok();
    for result in applied["results"].as_array().unwrap() {
        assert_eq!(result["namespace"], "bookinfo", "{applied}");
        assert!(
            !result["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["field"].as_str().unwrap().ends_with(".subset")),
            "{applied}"
        );
    }

    // -n refuses a document that names another namespace, as kubectl does.
    let elsewhere = REVIEWS_VS.replace("name: reviews\n", "name: reviews\n  namespace: prod\n");
    let refused = apply_to(&api, &operator, "?namespace=bookinfo", &elsewhere).await;
    let body = refused.problem(422, "invalid");
    assert_eq!(body["errors"][0]["field"], "metadata.namespace", "{body}");
    // A context's namespace only fills in.
    let kept = apply_to(&api, &operator, "?defaultNamespace=bookinfo", &elsewhere)
        .await
        .ok();
    assert_eq!(kept["results"][0]["namespace"], "prod", "{kept}");

    for query in [
        "?namespace=Bad_Name",
        "?namespace=a&defaultNamespace=b",
        "?namespace=",
    ] {
        apply_to(&api, &operator, query, REVIEWS_VS)
            .await
            .problem(400, "bad-request");
    }
}

#[tokio::test]
async fn a_second_route_table_for_a_host_is_refused_naming_the_first() {
    let api = Api::start().await;
    let operator = api.token("operator").await;
    api.apply(&operator, YAML, &format!("{ALL_DR}\n---\n{REVIEWS_VS}"))
        .await
        .ok();
    let second = REVIEWS_VS
        .replace("name: reviews\n", "name: reviews-canary\n")
        .replace("- reviews\n", "- reviews.default.svc.cluster.local\n");
    let refused = api.apply(&operator, YAML, &second).await;
    let body = refused.problem(409, "conflict");
    assert_eq!(body["errors"][0]["field"], "spec.hosts[0]", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("already routed by VirtualService.networking.istio.io default/reviews"),
        "{body}"
    );
    api.get(
        "/v1/namespaces/default/virtualservices/reviews-canary",
        &operator,
    )
    .await
    .problem(404, "not-found");
    // The owner may be re-applied; a PUT of the second is refused the same way.
    api.apply(&operator, YAML, REVIEWS_VS).await.ok();
    let put = api
        .call(
            Method::PUT,
            "/v1/namespaces/default/virtualservices/reviews-canary",
            Some(&operator),
            Some((YAML, second)),
        )
        .await;
    put.problem(409, "conflict");
}

#[tokio::test]
async fn linkerd_and_smi_kinds_are_served_by_plural() {
    let api = Api::start().await;
    let operator = api.token("operator").await;
    let docs = r#"
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: web.shop.svc.cluster.local, namespace: shop}
spec:
  routes:
  - name: GET /
    condition: {method: GET, pathRegex: /}
    isRetryable: true
  retryBudget: {retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s}
---
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {name: web, namespace: shop}
spec:
  service: web
  backends:
  - {service: web-v1, weight: 900m}
  - {service: web-v2, weight: 100m}
"#;
    api.apply(&operator, YAML, docs).await.ok();
    let profiles = api
        .get("/v1/namespaces/shop/serviceprofiles", &operator)
        .await
        .ok();
    assert_eq!(
        profiles["items"][0]["metadata"]["name"],
        "web.shop.svc.cluster.local"
    );
    let split = api
        .get("/v1/namespaces/shop/trafficsplits/web", &operator)
        .await
        .ok();
    assert_eq!(split["spec"]["backends"][0]["weight"], "900m");

    // Endpoints with labels read back as written, beside plain ones.
    let endpoints =
        json!(["10.0.0.1:9080", {"address": "10.0.0.2:9080", "labels": {"version": "v2"}}]);
    let service = json!({
        "apiVersion": "causeway.dev/v1alpha1", "kind": "Service",
        "metadata": {"name": "reviews", "cluster": "east"},
        "spec": {"ports": [{"port": 9080, "protocol": "http"}], "endpoints": endpoints},
    });
    let applied = api.apply(&operator, JSON, &service.to_string()).await.ok();
    // Subsets select on the labels: nothing to warn about.
    assert_eq!(applied["results"][0]["warnings"], json!([]), "{applied}");
    let got = api
        .get(
            "/v1/namespaces/default/services/reviews?cluster=east",
            &operator,
        )
        .await
        .ok();
    assert_eq!(got["spec"]["endpoints"], endpoints);
}

#[test]
fn the_namespace_parameters_state_the_grammar_the_server_enforces() {
    let doc = serde_json::to_value(openapi()).unwrap();
    let params = doc["paths"]["/v1/apply"]["post"]["parameters"]
        .as_array()
        .unwrap();
    for name in ["namespace", "defaultNamespace"] {
        let param = params.iter().find(|p| p["name"] == name).unwrap();
        let pattern = param["schema"]["pattern"].as_str().unwrap();
        assert_eq!(pattern, r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", "{name}");
    }
}
