//! PKCS#10 certificate signing requests: reading the one thing a CA takes from them (the
//! public key, once the request proves possession of its private half), and making one for a
//! workload whose key must never leave its machine.
//!
//! ```text
//!  workload (causeway svid issue)            gateway (POST /v1/svids)
//!  WorkloadKeyRequest::generate ── CSR ──►  requested_key: parse, key kind, self-signature
//!   key.pem stays here                        │ only the SubjectPublicKeyInfo survives
//!                                             ▼
//!                                           CertificateAuthority::sign_csr(key, id it chose)
//! ```
//!
//! Everything else a request asks for (subject, SANs, extensions, attributes) is ignored: the
//! CA decides the identity, so a request naming `spiffe://<td>/gateway/x` still gets only the
//! ID its signer chose.

use std::fmt;

use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::IdentityError;

/// The smallest RSA modulus we certify (NIST SP 800-57: 112-bit security).
const RSA_MIN_BITS: usize = 2048;
/// The largest: what ring verifies, and a bound on what one request costs us.
const RSA_MAX_BITS: usize = 8192;

/// What the keys we certify are, for error messages.
const ACCEPTED: &str = "ECDSA P-256 or P-384, Ed25519, or RSA of 2048 to 8192 bits";

/// The public key of the DER PKCS#10 request `der`, once its self-signature verifies with that
/// key and the key is one of [`ACCEPTED`]. Nothing else of the request is read.
pub(super) fn requested_key(der: &[u8]) -> Result<rcgen::SubjectPublicKeyInfo, IdentityError> {
    let refused = |reason: String| IdentityError::InvalidCsr { reason };
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|e| refused(format!("not a DER PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(refused(format!("{} bytes follow the request", rest.len())));
    }
    let spki = &csr.certification_request_info.subject_pki;
    check_key(spki).map_err(refused)?;
    csr.verify_signature().map_err(|e| {
        refused(match e {
            X509Error::SignatureUnsupportedAlgorithm => format!(
                "signature algorithm {} is not supported",
                csr.signature_algorithm.algorithm
            ),
            _ => "its signature does not verify with the public key it carries".to_string(),
        })
    })?;
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw)
        .map_err(|e| refused(format!("its public key cannot be certified: {e}")))
}

/// `Ok` for the keys of [`ACCEPTED`], else why not.
fn check_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), String> {
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(()),
            Some(c) => Err(format!("an ECDSA key on curve {c}; we certify {ACCEPTED}")),
            None => Err(format!(
                "an ECDSA key without a named curve; we certify {ACCEPTED}"
            )),
        };
    }
    if *algorithm == OID_SIG_ED25519 {
        return Ok(());
    }
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err("an RSA public key that does not parse".to_string());
        };
        let bits = bit_length(rsa.modulus);
        return if (RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
            Ok(())
        } else {
            Err(format!("an RSA key of {bits} bits; we certify {ACCEPTED}"))
        };
    }
    Err(format!(
        "a key of algorithm {algorithm}; we certify {ACCEPTED}"
    ))
}

/// The bit length of a big-endian unsigned integer (DER may pad it with a zero byte).
fn bit_length(be: &[u8]) -> usize {
    let significant = be
        .iter()
        .position(|&b| b != 0)
        .map_or(&[][..], |i| &be[i..]);
    match significant.first() {
        Some(first) => significant.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// A fresh ECDSA P-256 key and a certificate signing request for it, made where the key will
/// live: only the request travels. The request names nothing (no subject, no SANs): the CA
/// that signs it decides the identity.
pub struct WorkloadKeyRequest {
    key_pem: String,
    csr_pem: String,
}

impl WorkloadKeyRequest {
    pub fn generate() -> Result<Self, IdentityError> {
        let generate = |source| IdentityError::Generate {
            what: "a workload key and its signing request".to_string(),
            source,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let mut params = CertificateParams::default();
        // The default subject is rcgen's placeholder name; a request should not invent one.
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(generate)?;
        Ok(Self {
            key_pem: key.serialize_pem(),
            csr_pem: csr.pem().map_err(generate)?,
        })
    }

    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`). A secret: write it only to
    /// a file of mode 0600.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The request, PEM (`-----BEGIN CERTIFICATE REQUEST-----`).
    pub fn csr_pem(&self) -> &str {
        &self.csr_pem
    }
}

impl fmt::Debug for WorkloadKeyRequest {
    // The key is a secret: never in logs or panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadKeyRequest")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateSigningRequestDer;
    use rustls::pki_types::pem::PemObject;

    use super::*;

    fn der_of(pem: &str) -> Vec<u8> {
        CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    fn request_for(alg: &'static rcgen::SignatureAlgorithm) -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate_for(alg).unwrap();
        let csr = CertificateParams::default()
            .serialize_request(&key)
            .unwrap();
        (key, csr.der().to_vec())
    }

    fn refusal(der: &[u8]) -> String {
        match requested_key(der) {
            Err(e @ IdentityError::InvalidCsr { .. }) => e.to_string(),
            other => panic!("not refused as a CSR: {other:?}"),
        }
    }

    #[test]
    fn accepted_key_kinds_yield_the_requested_key() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let (key, der) = request_for(alg);
            let spki = requested_key(&der).unwrap();
            assert_eq!(
                rcgen::PublicKeyData::der_bytes(&spki),
                key.public_key_raw(),
                "{alg:?}"
            );
        }
    }

    #[test]
    fn workload_requests_carry_a_p256_key_and_no_name() {
        let request = WorkloadKeyRequest::generate().unwrap();
        assert!(request.key_pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(
            request
                .csr_pem()
                .starts_with("-----BEGIN CERTIFICATE REQUEST-----")
        );
        let der = der_of(request.csr_pem());
        let spki = requested_key(&der).unwrap();
        let key = KeyPair::from_pem(request.key_pem()).unwrap();
        assert_eq!(rcgen::PublicKeyData::der_bytes(&spki), key.public_key_raw());
        assert_eq!(
            rcgen::PublicKeyData::algorithm(&spki),
            &rcgen::PKCS_ECDSA_P256_SHA256
        );
        let (_, csr) = X509CertificationRequest::from_der(&der).unwrap();
        assert!(csr.certification_request_info.subject.as_raw().len() <= 2);
        assert!(csr.requested_extensions().is_none());
        let debug = format!("{request:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }

    #[test]
    fn garbage_and_forged_requests_are_refused_with_a_reason() {
        for garbage in [&b""[..], b"not a csr", &[0x30, 0x03, 0x02, 0x01, 0x01]] {
            let msg = refusal(garbage);
            assert!(msg.contains("not a DER PKCS#10 request"), "{msg}");
        }
        let (_, der) = request_for(&rcgen::PKCS_ECDSA_P256_SHA256);
        let msg = refusal(&[der.clone(), vec![0]].concat());
        assert!(msg.contains("1 bytes follow"), "{msg}");

        // A request signed by another key than the one it carries proves nothing.
        let (_, mut forged) = request_for(&rcgen::PKCS_ED25519);
        let last = forged.len() - 1;
        forged[last] ^= 0x01;
        let msg = refusal(&forged);
        assert!(msg.contains("signature does not verify"), "{msg}");
    }

    /// DER of one element: `tag`, its length, `content`.
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        match content.len() {
            n @ 0..=0x7f => out.push(n as u8),
            n @ 0x80..=0xff => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    /// A SubjectPublicKeyInfo of `algorithm` (DER of the AlgorithmIdentifier's contents) and
    /// `key` (the BIT STRING's bytes).
    fn spki(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
        let bits = [&[0u8][..], key].concat();
        tlv(0x30, &[tlv(0x30, algorithm), tlv(0x03, &bits)].concat())
    }

    fn rsa_spki(modulus: &[u8]) -> Vec<u8> {
        let rsa_encryption = [
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ][..],
            &[0x05, 0x00],
        ]
        .concat();
        let key = tlv(0x30, &[tlv(0x02, modulus), tlv(0x02, &[1, 0, 1])].concat());
        spki(&rsa_encryption, &key)
    }

    fn check(spki_der: &[u8]) -> Result<(), String> {
        let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| e.to_string())?;
        check_key(&spki)
    }

    #[test]
    fn only_accepted_key_kinds_pass() {
        let modulus = |bits: usize| [&[0x00, 0x80][..], &vec![0u8; bits / 8 - 1]].concat();
        check(&rsa_spki(&modulus(2048))).unwrap();
        check(&rsa_spki(&modulus(4096))).unwrap();
        for (bits, der) in [
            (1024, rsa_spki(&modulus(1024))),
            (2047, rsa_spki(&[&[0x7f][..], &[0u8; 255]].concat())),
            (16384, rsa_spki(&modulus(16384))),
        ] {
            let msg = check(&der).unwrap_err();
            assert!(msg.contains(&format!("RSA key of {bits} bits")), "{msg}");
            assert!(msg.contains(ACCEPTED), "{msg}");
        }

        let ec_public_key = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
        let p521 = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];
        let point = [&[0x04][..], &[7u8; 132]].concat();
        let msg = check(&spki(&[&ec_public_key[..], &p521].concat(), &point)).unwrap_err();
        assert!(msg.contains("ECDSA key on curve 1.3.132.0.35"), "{msg}");
        let msg = check(&spki(&ec_public_key, &point)).unwrap_err();
        assert!(msg.contains("without a named curve"), "{msg}");

        let dsa = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x01];
        let msg = check(&spki(&dsa, &tlv(0x02, &[5; 128]))).unwrap_err();
        assert!(msg.contains("algorithm 1.2.840.10040.4.1"), "{msg}");
    }

    #[test]
    fn rsa_keys_are_measured_exactly() {
        assert_eq!(bit_length(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(bit_length(&[0x01, 0xff]), 9);
        assert_eq!(bit_length(&[0x00]), 0);
        assert_eq!(bit_length(&[]), 0);
        let mut modulus = vec![0x00, 0x80];
        modulus.extend([0u8; 255]);
        assert_eq!(bit_length(&modulus), 2048);
        assert_eq!(bit_length(&modulus[2..]), 0);
        assert_eq!(bit_length(&[&[0x7f][..], &[0u8; 255]].concat()), 2047);
    }
}
