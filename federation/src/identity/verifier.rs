//! rustls configurations for gateway-to-gateway mTLS, with verifiers that speak SPIFFE.
//!
//! ```text
//! peer leaf ──► exactly one URI SAN ──► SpiffeId ──► its trust domain
//!                                                     │  (client side: must be the one dialled)
//!                                                     ▼
//!          TrustStore::current() (read per handshake): that domain's roots, and only those
//!                                                     │
//!                                                     ▼
//!                webpki chain check (time, signatures, CA flags, EKU client/server auth)
//! ```
//!
//! The ID is read before the chain is checked only to pick the roots; it is vouched for once
//! the chain verifies against them. DNS names and the TLS `ServerName` play no part.
//!
//! The configs take anything that converts into a [`TrustStore`]: a store shared with whoever
//! follows the mesh (new clusters are trusted from their next handshake on), or a fixed
//! `Arc<TrustBundles>`.

use std::slice;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::NoServerSessionStorage;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};

use super::{IdentityError, SpiffeId, Svid, TrustDomain, TrustStore, peer_spiffe_id};

/// The ALPN protocol gateways speak to each other.
pub const ALPN: &[u8] = b"causeway/1";

/// TLS 1.3 server config (as QUIC needs) presenting `svid` and requiring a client certificate
/// that is an X.509-SVID of a trust domain in `trust`, verified against that domain's roots as
/// they are at the time of each handshake.
pub fn server_config(
    svid: &Svid,
    trust: impl Into<TrustStore>,
) -> Result<ServerConfig, IdentityError> {
    server_config_with_alpn(svid, trust, &[ALPN])
}

/// [`server_config`] offering the ALPN protocols `alpn` instead of [`ALPN`] (e.g. `h2` for the
/// Raft transport's gRPC); the SPIFFE verification is the same.
pub fn server_config_with_alpn(
    svid: &Svid,
    trust: impl Into<TrustStore>,
    alpn: &[&[u8]],
) -> Result<ServerConfig, IdentityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(SpiffeClientVerifier(SpiffeVerifier::new(
        trust.into(),
        &provider,
    )));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|builder| {
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(svid.chain().to_vec(), svid.key())
        })
        .map_err(|source| IdentityError::TlsConfig {
            id: svid.id().clone(),
            source,
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // A resumed session skips certificate verification; every connection must instead be
    // judged against the bundles and the clock of its own handshake.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// TLS 1.3 client config presenting `svid` and accepting only a server whose X.509-SVID is in
/// `expected_peer`, verified against that domain's roots in `trust` as they are at the time of
/// each handshake.
pub fn client_config(
    svid: &Svid,
    trust: impl Into<TrustStore>,
    expected_peer: &TrustDomain,
) -> Result<ClientConfig, IdentityError> {
    client_config_with_alpn(svid, trust, expected_peer, &[ALPN])
}

/// [`client_config`] offering the ALPN protocols `alpn` instead of [`ALPN`] (e.g. `h2` for the
/// Raft transport's gRPC); the SPIFFE verification is the same.
pub fn client_config_with_alpn(
    svid: &Svid,
    trust: impl Into<TrustStore>,
    expected_peer: &TrustDomain,
    alpn: &[&[u8]],
) -> Result<ClientConfig, IdentityError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(SpiffeServerVerifier {
        inner: SpiffeVerifier::new(trust.into(), &provider),
        expected: expected_peer.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|builder| {
            builder
                .dangerous()
                .with_custom_certificate_verifier(verifier)
                .with_client_auth_cert(svid.chain().to_vec(), svid.key())
        })
        .map_err(|source| IdentityError::TlsConfig {
            id: svid.id().clone(),
            source,
        })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // As on the server: no resumption, so no connection is accepted on an old verification.
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// The checks both sides share.
#[derive(Debug)]
struct SpiffeVerifier {
    trust: TrustStore,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeVerifier {
    fn new(trust: TrustStore, provider: &CryptoProvider) -> Self {
        Self {
            trust,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
        expected: Option<&TrustDomain>,
    ) -> Result<SpiffeId, rustls::Error> {
        let id = peer_spiffe_id(slice::from_ref(end_entity)).map_err(refused)?;
        let td = id.trust_domain();
        if let Some(expected) = expected
            && td != expected
        {
            return Err(refused(IdentityError::UnexpectedTrustDomain {
                expected: expected.clone(),
                actual: id,
            }));
        }
        // Read once: the whole check runs against one version of the bundles.
        let bundles = self.trust.current();
        let roots = bundles
            .roots(td)
            .ok_or_else(|| refused(IdentityError::UnknownTrustDomain(td.clone())))?;
        // `TrustBundles::insert_pem` refuses roots webpki cannot parse; one that slipped in
        // through `insert` can anchor nothing, so skipping it only narrows trust.
        let anchors: Vec<_> = roots
            .iter()
            .filter_map(|root| webpki::anchor_from_trusted_cert(root).ok())
            .collect();
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(chain_error)?;
        cert.verify_for_usage(
            self.algorithms.all,
            &anchors,
            intermediates,
            now,
            usage,
            None,
            None,
        )
        .map_err(chain_error)?;
        Ok(id)
    }
}

#[derive(Debug)]
struct SpiffeClientVerifier(SpiffeVerifier);

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .verify(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::client_auth(),
                None,
            )
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    inner: SpiffeVerifier,
    expected: TrustDomain,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify(
                end_entity,
                intermediates,
                now,
                webpki::KeyUsage::server_auth(),
                Some(&self.expected),
            )
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.inner.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.inner.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.algorithms.supported_schemes()
    }
}

/// A SPIFFE-level refusal, carrying our message to the rustls error and logs.
/// A stable, low-cardinality name for why a handshake refused a peer's certificate, for
/// metric labels: `expired`, `not_yet_valid`, `unknown_issuer` (wrong CA or self-signed),
/// `bad_encoding`, `invalid_purpose` (key usage, EKU, a CA as a leaf), `unknown_trust_domain`,
/// `unexpected_trust_domain`, `uri_san_count`, `invalid_spiffe_id`, `malformed_certificate`,
/// `no_certificate`, or `handshake` for anything else.
pub fn refusal_reason(err: &rustls::Error) -> &'static str {
    match err {
        rustls::Error::NoCertificatesPresented => "no_certificate",
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::UnknownIssuer | CertificateError::BadSignature => "unknown_issuer",
            CertificateError::BadEncoding => "bad_encoding",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "invalid_purpose"
            }
            CertificateError::Other(OtherError(inner)) => match inner.downcast_ref::<Refusal>() {
                Some(Refusal(IdentityError::UnknownTrustDomain(_))) => "unknown_trust_domain",
                Some(Refusal(IdentityError::UnexpectedTrustDomain { .. })) => {
                    "unexpected_trust_domain"
                }
                Some(Refusal(IdentityError::PeerUriSanCount(_))) => "uri_san_count",
                Some(Refusal(
                    IdentityError::InvalidSpiffeId { .. }
                    | IdentityError::InvalidTrustDomain { .. },
                )) => "invalid_spiffe_id",
                Some(Refusal(IdentityError::MalformedPeerCertificate(_))) => {
                    "malformed_certificate"
                }
                Some(Refusal(IdentityError::NoPeerCertificate)) => "no_certificate",
                _ => match inner.downcast_ref::<webpki::Error>() {
                    Some(webpki::Error::CaUsedAsEndEntity) => "invalid_purpose",
                    _ => "handshake",
                },
            },
            _ => "handshake",
        },
        _ => "handshake",
    }
}

fn refused(err: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refusal(err)))))
}

/// rustls prints `CertificateError::Other` with `{:?}`; this keeps that the readable message
/// ("unknown trust domain north") rather than the enum's structure.
struct Refusal(IdentityError);

impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Refusal {
    // Transparent: the message above is already the inner error's.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// webpki's verdict in rustls's terms, so the peer gets the matching TLS alert.
fn chain_error(err: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let cert_error = match err {
        E::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        E::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(cert_error)
}

/// The checks a handshake runs on a peer's chain, without a handshake: for the fuzz targets
/// (`fuzz/`) and property tests, which feed them arbitrary and mutated certificates.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// What the server checks of a client's chain (leaf first).
    pub fn verify_client_chain(
        trust: &TrustStore,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        let provider = rustls::crypto::ring::default_provider();
        SpiffeClientVerifier(SpiffeVerifier::new(trust.clone(), &provider))
            .verify_client_cert(leaf, intermediates, now)
            .map(|_| ())
    }

    /// What a client that dialled `expected` checks of the server's chain (leaf first).
    pub fn verify_server_chain(
        trust: &TrustStore,
        expected: &TrustDomain,
        chain: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        let provider = rustls::crypto::ring::default_provider();
        let verifier = SpiffeServerVerifier {
            inner: SpiffeVerifier::new(trust.clone(), &provider),
            expected: expected.clone(),
        };
        let name = ServerName::from(std::net::IpAddr::from([192, 0, 2, 1]));
        verifier
            .verify_server_cert(leaf, intermediates, &name, &[], now)
            .map(|_| ())
    }
}

#[cfg(test)]
mod proptests;

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    use rustls::{ClientConnection, Connection, ServerConnection};

    use super::*;
    use crate::identity::{CertificateAuthority, TrustBundles};

    const HOUR: Duration = Duration::from_secs(3600);

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).unwrap()
    }

    fn ca(dir: &Path, name: &str) -> CertificateAuthority {
        CertificateAuthority::load_or_create(&dir.join(name), &td(name)).unwrap()
    }

    fn gateway(ca: &CertificateAuthority, name: &str) -> Svid {
        let id = SpiffeId::gateway(ca.trust_domain(), name).unwrap();
        ca.issue_for(&id, HOUR).unwrap()
    }

    /// East and west trust each other; north is unknown to them.
    struct Mesh {
        _dir: tempfile::TempDir,
        east: CertificateAuthority,
        west: CertificateAuthority,
        north: CertificateAuthority,
        bundles: Arc<TrustBundles>,
    }

    fn mesh() -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let (east, west, north) = (
            ca(dir.path(), "east"),
            ca(dir.path(), "west"),
            ca(dir.path(), "north"),
        );
        let mut bundles = TrustBundles::new();
        bundles.insert_pem(td("east"), &east.bundle_pem()).unwrap();
        bundles.insert_pem(td("west"), &west.bundle_pem()).unwrap();
        Mesh {
            _dir: dir,
            east,
            west,
            north,
            bundles: Arc::new(bundles),
        }
    }

    fn provider() -> CryptoProvider {
        rustls::crypto::ring::default_provider()
    }

    fn client_verifier(bundles: &Arc<TrustBundles>) -> SpiffeClientVerifier {
        SpiffeClientVerifier(SpiffeVerifier::new(bundles.clone().into(), &provider()))
    }

    fn server_verifier(bundles: &Arc<TrustBundles>, expected: &str) -> SpiffeServerVerifier {
        SpiffeServerVerifier {
            inner: SpiffeVerifier::new(bundles.clone().into(), &provider()),
            expected: td(expected),
        }
    }

    fn verify_client(
        verifier: &SpiffeClientVerifier,
        svid: &Svid,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let (leaf, rest) = svid.chain().split_first().unwrap();
        verifier.verify_client_cert(leaf, rest, UnixTime::now())
    }

    fn verify_server(
        verifier: &SpiffeServerVerifier,
        svid: &Svid,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (leaf, rest) = svid.chain().split_first().unwrap();
        // Any name at all: SPIFFE verification must not look at it.
        let name = ServerName::from(std::net::IpAddr::from([192, 0, 2, 1]));
        verifier.verify_server_cert(leaf, rest, &name, &[], UnixTime::now())
    }

    fn assert_refused_with(result: Result<impl std::fmt::Debug, rustls::Error>, message: &str) {
        let err = result.unwrap_err();
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
        assert!(err.to_string().contains(message), "{err}");
    }

    #[test]
    fn svids_of_known_domains_are_accepted() {
        let mesh = mesh();
        let verifier = client_verifier(&mesh.bundles);
        for (ca, name) in [(&mesh.east, "e1"), (&mesh.west, "w1")] {
            let svid = gateway(ca, name);
            verify_client(&verifier, &svid).unwrap();
            assert_eq!(&peer_spiffe_id(svid.chain()).unwrap(), svid.id());
        }
        let svid = gateway(&mesh.east, "e2");
        verify_server(&server_verifier(&mesh.bundles, "east"), &svid).unwrap();
    }

    #[test]
    fn unknown_trust_domain_is_refused() {
        let mesh = mesh();
        let svid = gateway(&mesh.north, "n1");
        assert_refused_with(
            verify_client(&client_verifier(&mesh.bundles), &svid),
            "unknown trust domain north",
        );
        assert_refused_with(
            verify_server(&server_verifier(&mesh.bundles, "north"), &svid),
            "unknown trust domain north",
        );
    }

    #[test]
    fn expired_svid_is_refused() {
        let mesh = mesh();
        let now = SystemTime::now();
        let id = SpiffeId::gateway(&td("east"), "old").unwrap();
        let svid = mesh.east.issue(&id, now - 2 * HOUR, now - HOUR).unwrap();
        let err = verify_client(&client_verifier(&mesh.bundles), &svid).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
            ),
            "{err:?}"
        );
        let err = verify_server(&server_verifier(&mesh.bundles, "east"), &svid).unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(CertificateError::ExpiredContext { .. })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn impostor_ca_for_a_known_domain_is_refused() {
        let mesh = mesh();
        let elsewhere = tempfile::tempdir().unwrap();
        // Same trust domain, same subject name, different key: only the roots can tell.
        let impostor = ca(elsewhere.path(), "east");
        let svid = gateway(&impostor, "e1");
        for err in [
            verify_client(&client_verifier(&mesh.bundles), &svid).unwrap_err(),
            verify_server(&server_verifier(&mesh.bundles, "east"), &svid).unwrap_err(),
        ] {
            assert!(
                matches!(
                    err,
                    rustls::Error::InvalidCertificate(
                        CertificateError::UnknownIssuer | CertificateError::BadSignature
                    )
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn roots_of_one_domain_do_not_vouch_for_another() {
        let mesh = mesh();
        let elsewhere = tempfile::tempdir().unwrap();
        let rogue = CertificateAuthority::load_or_create(elsewhere.path(), &td("west")).unwrap();
        // West's real root is trusted, but only as an east root. Pooling roots across domains
        // would accept the west SVID below; per-domain checking must not.
        let mut bundles = TrustBundles::new();
        bundles.insert(td("east"), vec![mesh.east.root_der(), mesh.west.root_der()]);
        bundles.insert(td("west"), vec![rogue.root_der()]);
        let bundles = Arc::new(bundles);
        let svid = gateway(&mesh.west, "w1");
        verify_client(&client_verifier(&bundles), &svid).unwrap_err();
        verify_client(&client_verifier(&mesh.bundles), &svid).unwrap();
    }

    #[test]
    fn client_refuses_server_of_another_domain() {
        let mesh = mesh();
        let svid = gateway(&mesh.west, "w1");
        let err = verify_server(&server_verifier(&mesh.bundles, "east"), &svid).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("expected trust domain east") && msg.contains("spiffe://west/gateway/w1"),
            "{msg}"
        );
    }

    #[test]
    fn peer_id_needs_exactly_one_spiffe_uri_san() {
        let mesh = mesh();
        assert!(matches!(
            peer_spiffe_id(&[]),
            Err(IdentityError::NoPeerCertificate)
        ));
        assert!(matches!(
            peer_spiffe_id(&[CertificateDer::from(vec![1, 2, 3])]),
            Err(IdentityError::MalformedPeerCertificate(_))
        ));

        let self_signed = |sans: Vec<rcgen::SanType>| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names = sans;
            params.self_signed(&key).unwrap().der().clone()
        };
        let uri = |s: &str| rcgen::SanType::URI(s.try_into().unwrap());
        let dns = rcgen::SanType::DnsName("east.example.com".try_into().unwrap());
        let two = self_signed(vec![uri("spiffe://east/a"), uri("spiffe://east/b")]);
        assert!(matches!(
            peer_spiffe_id(&[two]),
            Err(IdentityError::PeerUriSanCount(2))
        ));
        let none = self_signed(vec![dns]);
        assert!(matches!(
            peer_spiffe_id(&[none]),
            Err(IdentityError::PeerUriSanCount(0))
        ));
        let not_spiffe = self_signed(vec![uri("https://east/a")]);
        assert!(matches!(
            peer_spiffe_id(&[not_spiffe]),
            Err(IdentityError::InvalidSpiffeId { .. })
        ));

        // A CA's own certificate names its trust domain, not a workload.
        let verifier = client_verifier(&mesh.bundles);
        let root = mesh.east.root_der();
        let err = verifier
            .verify_client_cert(&root, &[], UnixTime::now())
            .unwrap_err();
        assert!(err.to_string().contains("spiffe://east"), "{err}");
    }

    /// Moves TLS records between the two ends until both finish or one fails.
    fn handshake(client: &mut Connection, server: &mut Connection) -> Result<(), rustls::Error> {
        fn io(e: std::io::Error) -> rustls::Error {
            rustls::Error::General(e.to_string())
        }
        fn pump(from: &mut Connection, to: &mut Connection) -> Result<(), rustls::Error> {
            let mut bytes = Vec::new();
            while from.wants_write() {
                from.write_tls(&mut bytes).map_err(io)?;
            }
            let mut rest = bytes.as_slice();
            while !rest.is_empty() {
                to.read_tls(&mut rest).map_err(io)?;
                to.process_new_packets()?;
            }
            Ok(())
        }
        for _ in 0..10 {
            pump(client, server)?;
            pump(server, client)?;
            if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    fn connect(
        server_svid: &Svid,
        client_svid: &Svid,
        bundles: &Arc<TrustBundles>,
        expected: &str,
    ) -> (Connection, Connection, Result<(), rustls::Error>) {
        run(
            server_config(server_svid, bundles.clone()).unwrap(),
            client_config(client_svid, bundles.clone(), &td(expected)).unwrap(),
        )
    }

    fn run(
        server_config: ServerConfig,
        client_config: ClientConfig,
    ) -> (Connection, Connection, Result<(), rustls::Error>) {
        let name = ServerName::try_from("ignored.invalid").unwrap();
        let client = ClientConnection::new(Arc::new(client_config), name).unwrap();
        let server = ServerConnection::new(Arc::new(server_config)).unwrap();
        let (mut client, mut server) = (Connection::from(client), Connection::from(server));
        let result = handshake(&mut client, &mut server);
        (client, server, result)
    }

    #[test]
    fn mutual_tls_authenticates_both_gateways() {
        let mesh = mesh();
        let east_gw = gateway(&mesh.east, "east-1");
        let west_gw = gateway(&mesh.west, "west-1");
        let (client, server, result) = connect(&east_gw, &west_gw, &mesh.bundles, "east");
        result.unwrap();
        assert_eq!(client.alpn_protocol(), Some(ALPN));
        assert_eq!(server.alpn_protocol(), Some(ALPN));
        assert_eq!(
            client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let client_seen_by_server = peer_spiffe_id(server.peer_certificates().unwrap()).unwrap();
        let server_seen_by_client = peer_spiffe_id(client.peer_certificates().unwrap()).unwrap();
        assert_eq!(&client_seen_by_server, west_gw.id());
        assert_eq!(&server_seen_by_client, east_gw.id());
    }

    #[test]
    fn alpn_variants_negotiate_the_given_protocol_with_the_same_verification() {
        let mesh = mesh();
        let east_gw = gateway(&mesh.east, "east-1");
        let west_gw = gateway(&mesh.west, "west-1");
        let h2: &[&[u8]] = &[b"h2"];
        let (client, server, result) = run(
            server_config_with_alpn(&east_gw, mesh.bundles.clone(), h2).unwrap(),
            client_config_with_alpn(&west_gw, mesh.bundles.clone(), &td("east"), h2).unwrap(),
        );
        result.unwrap();
        assert_eq!(client.alpn_protocol(), Some(&b"h2"[..]));
        assert_eq!(server.alpn_protocol(), Some(&b"h2"[..]));
        let client_seen_by_server = peer_spiffe_id(server.peer_certificates().unwrap()).unwrap();
        assert_eq!(&client_seen_by_server, west_gw.id());

        // Still SPIFFE-verified: a west server where east was dialled is refused.
        let (_, _, result) = run(
            server_config_with_alpn(&west_gw, mesh.bundles.clone(), h2).unwrap(),
            client_config_with_alpn(&east_gw, mesh.bundles.clone(), &td("east"), h2).unwrap(),
        );
        assert_refused_with(result, "expected trust domain east");
    }

    #[test]
    fn handshake_fails_for_untrusted_or_unexpected_peers() {
        let mesh = mesh();
        let east_gw = gateway(&mesh.east, "east-1");
        let elsewhere = tempfile::tempdir().unwrap();
        let impostor = gateway(&ca(elsewhere.path(), "west"), "west-1");
        let (_, server, result) = connect(&east_gw, &impostor, &mesh.bundles, "east");
        let err = result.unwrap_err();
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature
                )
            ),
            "{err:?}"
        );
        assert!(server.is_handshaking());

        // A genuine west gateway answering where east was dialled is refused by the client.
        let west_gw = gateway(&mesh.west, "west-1");
        let (client, _, result) = connect(&west_gw, &east_gw, &mesh.bundles, "east");
        assert_refused_with(result, "expected trust domain east");
        assert!(client.is_handshaking());

        // A client that presents no certificate at all is refused: client auth is mandatory.
        let anonymous = ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(server_verifier(&mesh.bundles, "east")))
            .with_no_client_auth();
        let (_, _, result) = run(
            server_config(&east_gw, mesh.bundles.clone()).unwrap(),
            anonymous,
        );
        assert!(
            matches!(result, Err(rustls::Error::NoCertificatesPresented)),
            "{result:?}"
        );
    }

    #[test]
    fn configs_built_before_a_domain_is_trusted_accept_it_after_replace() {
        let mesh = mesh();
        let east_gw = gateway(&mesh.east, "east-1");
        let north_gw = gateway(&mesh.north, "north-1");
        let trust = TrustStore::new((*mesh.bundles).clone());
        let client = client_verifier_on(&trust);
        let server = SpiffeServerVerifier {
            inner: SpiffeVerifier::new(trust.clone(), &provider()),
            expected: td("north"),
        };
        let configs = || {
            (
                server_config(&east_gw, trust.clone()).unwrap(),
                client_config(&north_gw, trust.clone(), &td("east")).unwrap(),
            )
        };
        let (server_tls, client_tls) = configs();
        assert_refused_with(
            verify_client(&client, &north_gw),
            "unknown trust domain north",
        );
        assert_refused_with(
            verify_server(&server, &north_gw),
            "unknown trust domain north",
        );

        // North joins the mesh: its CA is trusted from the next handshake on, by verifiers
        // and configs that already existed.
        let mut bundles = (*trust.current()).clone();
        bundles
            .insert_pem(td("north"), &mesh.north.bundle_pem())
            .unwrap();
        assert!(trust.replace(bundles));
        verify_client(&client, &north_gw).unwrap();
        verify_server(&server, &north_gw).unwrap();
        let (_, server_conn, result) = run(server_tls, client_tls);
        result.unwrap();
        assert_eq!(
            &peer_spiffe_id(server_conn.peer_certificates().unwrap()).unwrap(),
            north_gw.id()
        );

        // And it leaves again: new handshakes are refused.
        assert!(trust.replace((*mesh.bundles).clone()));
        assert_refused_with(
            verify_client(&client, &north_gw),
            "unknown trust domain north",
        );
        let (server_tls, client_tls) = configs();
        let (_, _, result) = run(server_tls, client_tls);
        assert!(result.is_err());
    }

    fn client_verifier_on(trust: &TrustStore) -> SpiffeClientVerifier {
        SpiffeClientVerifier(SpiffeVerifier::new(trust.clone(), &provider()))
    }
}
