//! Security at the boundary with real gateways: the caller's own identity (a workload's SVID on
//! the workload listener, or its registered address where the cluster trusts its network)
//! crosses the boundary, and the destination gateway enforces the AuthorizationPolicy and
//! PeerAuthentication of `examples/istio/` on it.
//!
//! east founds the mesh (and trusts its node network), west and edge join. `api.production`
//! (labels `app: api`, HTTP) and `database.production` (labels `app: database`, TCP 5432) run
//! in west; callers in east have different identities.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use federation::identity::{CertificateAuthority, SpiffeId, Svid, TrustBundles, TrustDomain};
use serde_json::json;
use support::rest::{Api, founder};
use support::{Gateway, Net, Spec, backend, eventually};

const UP: Duration = Duration::from_secs(30);

fn example(name: &str) -> String {
    let path = format!("{}/examples/istio/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn token(admin: &Api, role: &str) -> String {
    let reply = admin.post_json(
        "/v1/tokens",
        &json!({"role": role, "description": "security test"}),
    );
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json["token"].as_str().expect("token").to_string()
}

fn apply(admin: &Api, yaml: &str) {
    let reply = admin.apply_yaml(yaml, false);
    assert_eq!(reply.status, 200, "{}", reply.text);
}

fn yaml(docs: serde_json::Value) -> String {
    docs.as_array()
        .unwrap()
        .iter()
        .map(|d| serde_yaml_ng::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A workload of east: its SVID, issued by east's CA, and what it trusts (east's root).
struct Workload {
    svid: Svid,
    trust: Arc<TrustBundles>,
    td: TrustDomain,
}

impl Workload {
    fn of(net: &Net, cluster: &str, ns: &str, sa: &str) -> Workload {
        let td = TrustDomain::parse(&format!("{cluster}.mesh")).unwrap();
        let ca = CertificateAuthority::load_or_create(&net.data_dir(cluster).join("ca"), &td)
            .expect("the cluster's CA");
        let id = SpiffeId::parse(&format!("spiffe://{td}/ns/{ns}/sa/{sa}")).unwrap();
        let svid = ca.issue_for(&id, Duration::from_secs(3600)).unwrap();
        let mut trust = TrustBundles::new();
        trust.insert(td.clone(), vec![ca.root_der()]);
        Workload {
            svid,
            trust: Arc::new(trust),
            td,
        }
    }

    /// A TLS connection to `gw`'s workload listener with this workload's SVID, verifying the
    /// gateway as an SVID of the same trust domain.
    fn connect(
        &self,
        gw: &Gateway,
    ) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
        let config = federation::identity::client_config_with_alpn(
            &self.svid,
            self.trust.clone(),
            &self.td,
            &[b"http/1.1"],
        )
        .map_err(std::io::Error::other)?;
        let name =
            rustls::pki_types::ServerName::try_from("gateway").map_err(std::io::Error::other)?;
        let conn =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
        let s = TcpStream::connect_timeout(&gw.workload, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(rustls::StreamOwned::new(conn, s))
    }

    fn http(&self, gw: &Gateway, method: &str, path: &str) -> (u16, String) {
        let s = self.connect(gw).expect("workload TLS connection");
        let (status, _, body) =
            support::exchange(s, method, "api.production", path, &[], b"").expect("exchange");
        (status, body)
    }

    /// `CONNECT database.production:5432` on the workload listener, then one echo round trip:
    /// the bytes echoed, or what went wrong.
    fn tcp_echo(&self, gw: &Gateway) -> Result<String, String> {
        let mut s = self.connect(gw).map_err(|e| e.to_string())?;
        s.write_all(
            b"CONNECT database.production:5432 HTTP/1.1\r\nhost: database.production:5432\r\n\r\n",
        )
        .map_err(|e| e.to_string())?;
        let head = read_head(&mut s)?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(head);
        }
        s.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

fn read_head(s: &mut impl Read) -> Result<String, String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            Ok(_) => return Err(format!("closed after {:?}", String::from_utf8_lossy(&head))),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// A plaintext client of east's outbound listener, calling from address `from`.
fn plain(east: &Gateway, from: &str, method: &str, path: &str) -> (u16, String) {
    let (status, _, body) = support::exchange(
        connect_from(from, east.outbound),
        method,
        "api.production",
        path,
        &[],
        b"",
    )
    .expect("exchange");
    (status, body)
}

/// A TCP connection to `to` from address `from` (std cannot bind before it connects).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(from.parse().unwrap(), 0))
            .unwrap();
        socket.connect(to).await.unwrap().into_std().unwrap()
    });
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

fn header<'a>(body: &'a str, name: &str) -> Option<&'a str> {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

#[test]
fn the_callers_identity_crosses_the_boundary_and_istio_security_policy_holds_on_it() {
    let net = Net::new(131);
    let east = Spec::new("east", 1)
        .toml("[security]\ntrust_source_address = true\n")
        .start(&net);
    let admin_token = support::admin_token(&net.data_dir("east"));
    let admin = Api::of(&east, Some(&admin_token));
    eventually("the mesh to be founded", UP, || {
        (admin.raw("GET", "/v1/status", None).status == 200).then_some(())
    });
    let west = Spec::new("west", 2)
        .join(&east, &token(&admin, "join"))
        .start(&net);
    let _edge = Spec::new("edge", 3)
        .join(&east, &token(&admin, "join"))
        .start(&net);

    let api = backend::http_echo(&net.ip(2), "api");
    let database = backend::tcp_echo(&net.ip(2));
    // The frontend workload of east, registered at its address with its service account.
    let frontend_ip = net.ip(20);
    apply(
        &admin,
        &yaml(json!([
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "Service",
             "metadata": {"name": "api", "namespace": "production", "cluster": "west"},
             "spec": {"ports": [{"port": 80, "protocol": "http"}],
                      "endpoints": [{"address": api.to_string(), "labels": {"app": "api"}}]}},
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "ServiceExport",
             "metadata": {"name": "api", "namespace": "production", "cluster": "west"}, "spec": {}},
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "Service",
             "metadata": {"name": "database", "namespace": "production", "cluster": "west"},
             "spec": {"ports": [{"port": 5432, "protocol": "tcp"}],
                      "endpoints": [{"address": database.to_string(), "labels": {"app": "database"}}]}},
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "ServiceExport",
             "metadata": {"name": "database", "namespace": "production", "cluster": "west"}, "spec": {}},
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "Service",
             "metadata": {"name": "frontend", "namespace": "production", "cluster": "east"},
             "spec": {"ports": [{"port": 80, "protocol": "http"}],
                      "endpoints": [{"address": format!("{frontend_ip}:8080"), "serviceAccount": "frontend"}]}},
        ])),
    );
    let frontend = Workload::of(&net, "east", "production", "frontend");
    let prometheus = Workload::of(&net, "east", "monitoring", "prometheus");
    let api_caller = Workload::of(&net, "east", "production", "api");

    // No policy yet: everyone gets through, and the endpoint learns who called.
    let (status, body) = eventually("api.production through the tunnel", UP, || {
        let (status, body) = frontend.http(&east, "GET", "/api/v1/items");
        (status == 200).then_some((status, body))
    });
    assert_eq!(status, 200);
    assert_eq!(
        header(&body, "x-causeway-source-principal"),
        Some("spiffe://east.mesh/ns/production/sa/frontend"),
        "{body}"
    );
    assert_eq!(header(&body, "x-causeway-source-authn"), Some("mtls"));
    assert_eq!(
        header(&body, "x-causeway-source-gateway"),
        Some("spiffe://east.mesh/gateway/east-1")
    );
    // A plaintext client from an address nobody registered: anonymous, the gateway beside it.
    let (status, body) = plain(&east, &net.ip(21), "GET", "/api/v1/items");
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&body, "x-causeway-source-principal"), None, "{body}");
    assert_eq!(header(&body, "x-causeway-source-authn"), Some("none"));
    assert_eq!(
        header(&body, "x-causeway-source-gateway"),
        Some("spiffe://east.mesh/gateway/east-1")
    );
    // From the frontend's registered address: attributed to its service account.
    let (status, body) = plain(&east, &frontend_ip, "GET", "/api/v1/items");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        header(&body, "x-causeway-source-principal"),
        Some("spiffe://east.mesh/ns/production/sa/frontend"),
        "{body}"
    );
    assert_eq!(
        header(&body, "x-causeway-source-authn"),
        Some("source-address")
    );
    assert_eq!(frontend.tcp_echo(&east).as_deref(), Ok("ping"));

    // The examples' AuthorizationPolicies: deny by default, allow what they name.
    apply(&admin, &example("authorization-policies.yaml"));
    eventually("the deny-all policy to hold at west", UP, || {
        (plain(&east, &net.ip(21), "GET", "/api/v1/items").0 == 403).then_some(())
    });
    let (status, body) = plain(&east, &net.ip(21), "GET", "/api/v1/items");
    assert_eq!((status, body.as_str()), (403, "RBAC: access denied"));
    assert_eq!(frontend.http(&east, "GET", "/api/v1/items").0, 200);
    assert_eq!(frontend.http(&east, "POST", "/api/v1/items").0, 200);
    // The attributed frontend is the frontend.
    assert_eq!(plain(&east, &frontend_ip, "GET", "/api/v1/items").0, 200);
    for (method, path) in [
        ("DELETE", "/api/v1/items"),
        ("GET", "/admin"),
        ("GET", "/api/v1/../../admin"),
    ] {
        let (status, body) = frontend.http(&east, method, path);
        assert_eq!(
            (status, body.as_str()),
            (403, "RBAC: access denied"),
            "{method} {path}"
        );
    }
    // The monitoring namespace may scrape, and only that.
    assert_eq!(prometheus.http(&east, "GET", "/metrics").0, 200);
    assert_eq!(prometheus.http(&east, "POST", "/metrics").0, 403);
    assert_eq!(prometheus.http(&east, "GET", "/api/v1/items").0, 403);
    // TCP: the database admits the api's service account on 5432 and nobody else; a denied
    // stream is refused at its verdict.
    assert_eq!(api_caller.tcp_echo(&east).as_deref(), Ok("ping"));
    let refused = frontend.tcp_echo(&east);
    assert!(refused.is_err(), "{refused:?}");

    let metrics = west.metrics();
    for line in [
        r#"causeway_authorization_decisions_total{service="api.production",policy="production/allow-frontend-to-api",action="allow",decision="allowed"}"#,
        r#"causeway_authorization_decisions_total{service="api.production",policy="-",action="none",decision="denied"}"#,
        r#"causeway_authorization_decisions_total{service="database.production",policy="production/allow-api-to-database",action="allow",decision="allowed"}"#,
    ] {
        assert!(metrics.contains(line), "no {line} in\n{metrics}");
    }

    // STRICT mTLS (namespace and mesh-wide): a caller without a workload identity is refused
    // with the reason; the workloads with SVIDs, and the one attributed by address, pass.
    apply(&admin, &example("strict-mtls-peerauthentication.yaml"));
    let (status, body) = eventually("STRICT to hold at west", UP, || {
        let (status, body) = plain(&east, &net.ip(21), "GET", "/api/v1/items");
        body.contains("PeerAuthentication")
            .then_some((status, body))
    });
    assert_eq!(status, 403);
    assert!(
        body.contains("PeerAuthentication production/default requires mutual TLS (STRICT)"),
        "{body}"
    );
    assert_eq!(frontend.http(&east, "GET", "/api/v1/items").0, 200);
    assert_eq!(plain(&east, &frontend_ip, "GET", "/api/v1/items").0, 200);

    // The caller's identity also reaches routing at the source: a VirtualService route that
    // matches `sourceNamespace` takes the monitoring namespace's calls only.
    apply(
        &admin,
        &yaml(json!([
            {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
             "metadata": {"name": "api", "namespace": "production"},
             "spec": {"hosts": ["api"], "http": [
                 {"match": [{"sourceNamespace": "monitoring"}],
                  "directResponse": {"status": 200, "body": {"string": "for monitoring"}}},
                 {"route": [{"destination": {"host": "api"}}]}]}},
        ])),
    );
    let (_, body) = eventually("the sourceNamespace route", UP, || {
        let answer = prometheus.http(&east, "GET", "/anything");
        (answer.1 == "for monitoring").then_some(answer)
    });
    assert_eq!(body, "for monitoring");
    let (status, body) = frontend.http(&east, "GET", "/api/v1/items");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("api\n"), "{body}");
    let metrics = west.metrics();
    assert!(
        metrics.contains(
            r#"causeway_stream_refusals_total{peer_cluster="east",reason="unauthenticated"}"#
        ),
        "{metrics}"
    );
}

#[test]
fn the_workload_listener_admits_only_this_clusters_workloads() {
    let net = Net::new(132);
    let (east, admin) = founder(&net, "east", 1);
    let west = Spec::new("west", 2)
        .join(&east, &token(&admin, "join"))
        .start(&net);
    let api = backend::http_echo(&net.ip(2), "api");
    apply(
        &admin,
        &yaml(json!([
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "Service",
             "metadata": {"name": "api", "namespace": "production", "cluster": "west"},
             "spec": {"ports": [{"port": 80, "protocol": "http"}], "endpoints": [api.to_string()]}},
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "ServiceExport",
             "metadata": {"name": "api", "namespace": "production", "cluster": "west"}, "spec": {}},
        ])),
    );
    let ours = Workload::of(&net, "east", "production", "web");
    eventually(
        "api.production through east's workload listener",
        UP,
        || (ours.http(&east, "GET", "/").0 == 200).then_some(()),
    );
    // A workload of west calling east's workload listener: a trusted SVID, the wrong cluster.
    let theirs = Workload::of(&net, "west", "production", "web");
    let foreign = Workload {
        trust: {
            let mut both = (*theirs.trust).clone();
            let east_td = TrustDomain::parse("east.mesh").unwrap();
            both.insert(
                east_td.clone(),
                ours.trust.roots(&east_td).unwrap().to_vec(),
            );
            Arc::new(both)
        },
        td: ours.td.clone(),
        svid: theirs.svid,
    };
    // A gateway's own identity is no workload's.
    let td = TrustDomain::parse("east.mesh").unwrap();
    let ca = CertificateAuthority::load_or_create(&net.data_dir("east").join("ca"), &td).unwrap();
    let gateway_id = SpiffeId::parse("spiffe://east.mesh/gateway/east-9").unwrap();
    let impostor = Workload {
        svid: ca
            .issue_for(&gateway_id, Duration::from_secs(3600))
            .unwrap(),
        trust: ours.trust.clone(),
        td: ours.td.clone(),
    };
    for (who, workload) in [("west's workload", &foreign), ("a gateway", &impostor)] {
        let outcome = workload
            .connect(&east)
            .and_then(|s| support::exchange(s, "GET", "api.production", "/", &[], b""));
        assert!(outcome.is_err(), "{who} was served: {outcome:?}");
    }
    // No client certificate at all: the handshake fails.
    let plain = support::try_https(
        east.workload,
        &support::ca_of(&net.data_dir("east")),
        "GET",
        "api.production",
        "/",
        &[],
        b"",
    );
    assert!(plain.is_err(), "{plain:?}");
    let logs = east.logs();
    assert!(
        logs.contains("not a workload identity of this cluster"),
        "{logs}"
    );
    drop(west);
}

/// A server verifier that takes any certificate: these clients test the server's refusals.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `GET /` on the workload listener presenting `chain` and `key`: the status, or why not.
fn present(
    gw: &Gateway,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<u16, String> {
    present_maybe(gw, Some((chain, key)))
}

/// [`present`], or with no client certificate at all.
fn present_maybe(
    gw: &Gateway,
    cert: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> Result<u16, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let config = match cert {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| e.to_string())?,
        None => builder.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::try_from("gateway").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let s = TcpStream::connect_timeout(&gw.workload, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    support::exchange(
        rustls::StreamOwned::new(conn, s),
        "GET",
        "api.production",
        "/",
        &[],
        b"",
    )
    .map(|r| r.0)
    .map_err(|e| e.to_string())
}

/// A leaf for `uri` (none: no URI SAN) signed by `issuer`, shaped like an X.509-SVID, then
/// changed by `edit`.
fn craft(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
    uris: &[&str],
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> (
    Vec<rustls::pki_types::CertificateDer<'static>>,
    rustls::pki_types::PrivateKeyDer<'static>,
) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = uris
        .iter()
        .map(|u| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(*u).unwrap()))
        .collect();
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    edit(&mut params);
    let cert = params.signed_by(&key, issuer).unwrap();
    (
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// A CA of its own for `td` (not the cluster's).
fn rogue_ca(td: &str) -> rcgen::Issuer<'static, rcgen::KeyPair> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(format!("spiffe://{td}")).unwrap(),
    )];
    rcgen::Issuer::new(params, key)
}

/// The refusal matrix: each certificate below is refused by the workload listener, for the
/// reason it is built to fail on, and counted under that reason.
#[test]
fn malformed_and_misplaced_svids_are_refused_by_the_workload_listener_with_their_reason() {
    let net = Net::new(134);
    let (east, admin) = founder(&net, "east", 1);
    let west = Spec::new("west", 2)
        .join(&east, &token(&admin, "join"))
        .start(&net);
    let api = backend::http_echo(&net.ip(1), "api");
    apply(
        &admin,
        &yaml(json!([
            {"apiVersion": "causeway.dev/v1alpha1", "kind": "Service",
             "metadata": {"name": "api", "namespace": "production", "cluster": "east"},
             "spec": {"ports": [{"port": 80, "protocol": "http"}], "endpoints": [api.to_string()]}},
        ])),
    );
    let ca_dir = net.data_dir("east").join("ca");
    let key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(ca_dir.join("ca-key.pem")).unwrap())
            .unwrap();
    let east_ca = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap(),
        key,
    )
    .unwrap();
    let west_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(net.data_dir("west").join("ca").join("ca-key.pem")).unwrap(),
    )
    .unwrap();
    let west_ca = rcgen::Issuer::from_ca_cert_pem(
        &std::fs::read_to_string(net.data_dir("west").join("ca").join("ca.pem")).unwrap(),
        west_key,
    )
    .unwrap();
    const WEB: &str = "spiffe://east.mesh/ns/production/sa/web";

    // Control: the same recipe, unchanged, is a good workload SVID.
    let (chain, key) = craft(&east_ca, &[WEB], |_| {});
    let status = eventually("the control SVID served", UP, || {
        present(&east, chain.clone(), key.clone_key())
            .ok()
            .filter(|s| *s == 200)
    });
    assert_eq!(status, 200);

    let same = |_: &mut rcgen::CertificateParams| {};
    let mut cases: Vec<(&str, &str, _)> = vec![
        (
            "unknown trust domain",
            "unknown_trust_domain",
            craft(
                &rogue_ca("rogue.mesh"),
                &["spiffe://rogue.mesh/ns/production/sa/web"],
                same,
            ),
        ),
        (
            "expired",
            "expired",
            craft(&east_ca, &[WEB], |p| {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }),
        ),
        (
            "not yet valid",
            "not_yet_valid",
            craft(&east_ca, &[WEB], |p| {
                p.not_before = rcgen::date_time_ymd(2090, 1, 1);
                p.not_after = rcgen::date_time_ymd(2091, 1, 1);
            }),
        ),
        (
            "right domain, wrong CA",
            "unknown_issuer",
            craft(&rogue_ca("east.mesh"), &[WEB], same),
        ),
        (
            "a leaf that is a CA",
            "invalid_purpose",
            craft(&east_ca, &[WEB], |p| {
                p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            }),
        ),
        (
            "two URI SANs",
            "uri_san_count",
            craft(
                &east_ca,
                &[WEB, "spiffe://east.mesh/ns/production/sa/db"],
                same,
            ),
        ),
        (
            "no URI SAN",
            "uri_san_count",
            craft(&east_ca, &[], |p| {
                p.subject_alt_names = vec![rcgen::SanType::DnsName(
                    "web.production".try_into().unwrap(),
                )];
            }),
        ),
        (
            "a URI with a query",
            "invalid_spiffe_id",
            craft(
                &east_ca,
                &["spiffe://east.mesh/ns/production/sa/web?admin=1"],
                same,
            ),
        ),
        (
            "a URI with a fragment",
            "invalid_spiffe_id",
            craft(
                &east_ca,
                &["spiffe://east.mesh/ns/production/sa/web#x"],
                same,
            ),
        ),
        (
            "server auth only",
            "invalid_purpose",
            craft(&east_ca, &[WEB], |p| {
                p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            }),
        ),
        (
            "code signing only",
            "invalid_purpose",
            craft(&east_ca, &[WEB], |p| {
                p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::CodeSigning];
            }),
        ),
        (
            "another domain's principal signed by this CA",
            "unknown_issuer",
            craft(&east_ca, &["spiffe://west.mesh/ns/production/sa/web"], same),
        ),
        (
            "not a SPIFFE URI",
            "invalid_spiffe_id",
            craft(&east_ca, &["https://east.mesh/ns/production/sa/web"], same),
        ),
        (
            "a dot segment",
            "invalid_spiffe_id",
            craft(&east_ca, &["spiffe://east.mesh/ns/../sa/web"], same),
        ),
        (
            "an uppercase trust domain",
            "invalid_spiffe_id",
            craft(&east_ca, &["spiffe://EAST.mesh/ns/production/sa/web"], same),
        ),
        (
            "a trailing slash",
            "invalid_spiffe_id",
            craft(
                &east_ca,
                &["spiffe://east.mesh/ns/production/sa/web/"],
                same,
            ),
        ),
        (
            "a port in the trust domain",
            "invalid_spiffe_id",
            craft(
                &east_ca,
                &["spiffe://east.mesh:443/ns/production/sa/web"],
                same,
            ),
        ),
        (
            "user info",
            "invalid_spiffe_id",
            craft(
                &east_ca,
                &["spiffe://admin@east.mesh/ns/production/sa/web"],
                same,
            ),
        ),
        (
            "a percent-encoded path",
            "invalid_spiffe_id",
            craft(
                &east_ca,
                &["spiffe://east.mesh/ns/production/sa/w%65b"],
                same,
            ),
        ),
        ("self-signed", "unknown_issuer", {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::default();
            p.subject_alt_names = vec![rcgen::SanType::URI(WEB.try_into().unwrap())];
            let cert = p.self_signed(&key).unwrap();
            (
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
        }),
        (
            "the trust domain itself",
            "invalid_spiffe_id",
            craft(&east_ca, &["spiffe://east.mesh"], same),
        ),
        (
            "a gateway's identity",
            "not_a_workload",
            craft(&east_ca, &["spiffe://east.mesh/gateway/east-9"], same),
        ),
        (
            "a path that is no workload's",
            "not_a_workload",
            craft(&east_ca, &["spiffe://east.mesh/workload/web"], same),
        ),
        (
            "a workload of another cluster",
            "foreign_trust_domain",
            craft(&west_ca, &["spiffe://west.mesh/ns/production/sa/web"], same),
        ),
    ];
    assert!(cases.len() >= 20);
    let count = |reason: &str| {
        east.metric("causeway_workload_refusals_total", &[("reason", reason)])
            .unwrap_or(0.0)
    };
    for (what, reason, (chain, key)) in cases.drain(..) {
        let before = count(reason);
        let outcome = present(&east, chain, key);
        assert!(!matches!(outcome, Ok(200)), "{what}: served ({outcome:?})");
        eventually(
            &format!("{what} counted as {reason}"),
            Duration::from_secs(5),
            || (count(reason) == before + 1.0).then_some(()),
        );
    }
    // No certificate at all.
    let none = present_maybe(&east, None);
    assert!(
        !matches!(none, Ok(200)),
        "served without a certificate: {none:?}"
    );
    eventually("no certificate counted", Duration::from_secs(5), || {
        (count("no_certificate") >= 1.0).then_some(())
    });
    drop(west);
}
