//! The cluster's certificate authority: one self-signed ECDSA P-256 root per trust domain, kept in
//! a directory, which signs X.509-SVIDs directly.
//!
//! ```text
//! <dir>/ca.pem        root certificate: what other clusters put in their trust bundles
//! <dir>/ca-key.pem    PKCS#8 key, mode 0600, refused if group/other can read it
//!
//! root  O=causeway, CN=<td>, URI SAN spiffe://<td>, CA:true pathlen 0,
//!  │    keyUsage (critical) keyCertSign cRLSign digitalSignature, 10 years, no name constraints
//!  ├─ leaf  no subject, one URI SAN spiffe://<td>/<path>, CA:false,
//!  │        keyUsage (critical) digitalSignature, EKU serverAuth clientAuth
//!  │        (`issue`: a key made here; `sign_csr`: the key of a workload's CSR, nothing else of it)
//!  └─ server leaf (the admin API's HTTPS)  no subject, DNS/IP SANs only (no URI SAN, so it
//!           never passes for an SVID), CA:false, keyUsage digitalSignature, EKU serverAuth
//! ```
//!
//! The trust domain lives in the root's URI SAN, so a directory copied to the wrong cluster is
//! refused instead of silently minting identities for the wrong domain. No name constraints:
//! webpki refuses URI name constraints, and per-domain bundles already confine each root.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use time::OffsetDateTime;

use super::svid::{parse_certificate, uri_sans};
use super::{IdentityError, SignedSvid, SpiffeId, Svid, TrustDomain};

const CERT_FILE: &str = "ca.pem";
const KEY_FILE: &str = "ca-key.pem";
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);
/// Backdating for freshly issued certificates, so peers whose clocks run a little behind ours
/// do not see them as not yet valid.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Issues X.509-SVIDs for one trust domain.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    root: CertificateDer<'static>,
    root_not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// `dir/ca.pem` (public) and `dir/ca-key.pem` (private, created mode 0600, `dir` created if
    /// missing). Creates an ECDSA P-256 self-signed CA for `td` the first time; later calls load
    /// it. Refuses a stored CA of another trust domain, a key file readable by group or others,
    /// and files it cannot parse, naming the file.
    pub fn load_or_create(dir: &Path, td: &TrustDomain) -> Result<Self, IdentityError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        match (exists(&cert_path)?, exists(&key_path)?) {
            (true, true) => Self::load(dir, &cert_path, &key_path, td),
            (false, false) => Self::create(dir, &cert_path, &key_path, td),
            // Never regenerate over half a CA: the surviving file may be the only copy of a root
            // that other clusters trust.
            (true, false) => Err(IdentityError::IncompleteCa {
                present: cert_path,
                missing: key_path,
            }),
            (false, true) => Err(IdentityError::IncompleteCa {
                present: key_path,
                missing: cert_path,
            }),
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn root_der(&self) -> CertificateDer<'static> {
        self.root.clone()
    }

    /// The root as PEM: what other clusters load into their [`super::TrustBundles`].
    pub fn bundle_pem(&self) -> String {
        encode_pem(&self.root)
    }

    /// Issues an X.509-SVID for `id`, which must be in this CA's trust domain, valid from
    /// `not_before` to `not_after` (cut to whole seconds, and to the root's own expiry).
    pub fn issue(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Svid, IdentityError> {
        let (params, not_before, not_after) = self.svid_params(id, not_before, not_after)?;
        let generate = |source| IdentityError::Generate {
            what: format!("an SVID for {id}"),
            source,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;

        Ok(Svid {
            id: id.clone(),
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            not_before,
            not_after,
            // Within the window even for certificates issued for the past or the future.
            issued_at: SystemTime::now().clamp(not_before, not_after),
        })
    }

    /// Certifies the public key of the DER PKCS#10 request `csr_der` as the X.509-SVID `id`
    /// (in this CA's trust domain), valid from a minute ago (clock skew) until `ttl` from now,
    /// cut to the root's expiry: the same certificate [`Self::issue`] makes, for a key that
    /// stays with its holder.
    ///
    /// Only the request's public key is used, and only once the request's signature verifies
    /// with it. Its subject, SANs, extensions and attributes are ignored: `id` is the whole
    /// identity. Refused ([`IdentityError::InvalidCsr`]): a request that does not parse or
    /// verify, and keys other than ECDSA P-256/P-384, Ed25519 and RSA of 2048 to 8192 bits.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<SignedSvid, IdentityError> {
        let key = super::csr::requested_key(csr_der)?;
        let (not_before, not_after) = fresh_window(id, ttl)?;
        let (params, not_before, not_after) = self.svid_params(id, not_before, not_after)?;
        let cert =
            params
                .signed_by(&key, &self.issuer)
                .map_err(|source| IdentityError::Generate {
                    what: format!("an SVID for {id}"),
                    source,
                })?;
        Ok(SignedSvid {
            id: id.clone(),
            chain: vec![cert.der().clone()],
            not_before,
            not_after,
        })
    }

    /// What every X.509-SVID this CA signs carries (see the module doc), for `id` from
    /// `not_before` to `not_after`, and that window as encoded (whole seconds, `not_after` cut
    /// to the root's expiry).
    fn svid_params(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(CertificateParams, SystemTime, SystemTime), IdentityError> {
        if id.trust_domain() != &self.trust_domain {
            return Err(IdentityError::ForeignId {
                id: id.clone(),
                ca: self.trust_domain.clone(),
            });
        }
        let invalid = |reason| IdentityError::InvalidValidity {
            subject: id.to_string(),
            reason,
        };
        if not_before >= self.root_not_after {
            return Err(invalid(
                "the CA's root certificate expires before not_before",
            ));
        }
        // A leaf outliving its root would stop verifying before `not_after` says, and would
        // schedule its renewal too late.
        let not_after = not_after.min(self.root_not_after);
        let (not_before_x509, not_before) = cert_time(not_before)
            .ok_or_else(|| invalid("not_before is outside years 1970-9999"))?;
        let (not_after_x509, not_after) =
            cert_time(not_after).ok_or_else(|| invalid("not_after is outside years 1970-9999"))?;
        if not_after <= not_before {
            return Err(invalid("not_after is not after not_before"));
        }

        let mut params = CertificateParams::default();
        // X.509-SVIDs identify by URI SAN only; an empty subject leaves nothing for legacy
        // name matching to latch onto (rcgen then marks the SAN critical, as RFC 5280 requires).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(id.as_str()).map_err(
            |source| IdentityError::Generate {
                what: format!("an SVID for {id}"),
                source,
            },
        )?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial(&format!("an SVID for {id}"))?);
        params.not_before = not_before_x509;
        params.not_after = not_after_x509;
        Ok((params, not_before, not_after))
    }

    /// A TLS server certificate for `names` (DNS names and IP addresses, checked by clients the
    /// usual way), valid from a minute ago until `ttl` from now (cut to the root's expiry). It
    /// carries no URI SAN, so it can never pass for an X.509-SVID of this trust domain.
    pub fn issue_server_cert(
        &self,
        names: &[ServerName<'_>],
        ttl: Duration,
    ) -> Result<ServerCertificate, IdentityError> {
        let subject = || {
            let shown: Vec<_> = names.iter().map(ServerName::to_str).collect();
            format!("a server certificate for {}", shown.join(", "))
        };
        if names.is_empty() {
            return Err(IdentityError::InvalidValidity {
                subject: subject(),
                reason: "a server certificate needs at least one DNS name or IP address",
            });
        }
        let invalid = |reason| IdentityError::InvalidValidity {
            subject: subject(),
            reason,
        };
        let now = SystemTime::now();
        let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(now);
        let not_after = now
            .checked_add(ttl)
            .ok_or_else(|| invalid("ttl is too large"))?
            .min(self.root_not_after);
        let (not_before_x509, _) = cert_time(not_before)
            .ok_or_else(|| invalid("the system clock is outside years 1970-9999"))?;
        let (not_after_x509, not_after) =
            cert_time(not_after).ok_or_else(|| invalid("not_after is outside years 1970-9999"))?;
        if not_after <= not_before {
            return Err(invalid("the CA's root certificate has expired"));
        }

        let generate = |source| IdentityError::Generate {
            what: subject(),
            source,
        };
        let mut sans = Vec::with_capacity(names.len());
        for name in names {
            sans.push(match name {
                ServerName::IpAddress(ip) => SanType::IpAddress(std::net::IpAddr::from(*ip)),
                ServerName::DnsName(dns) => {
                    SanType::DnsName(Ia5String::try_from(dns.as_ref()).map_err(generate)?)
                }
                // `ServerName` is non-exhaustive; a kind we do not know cannot go in a SAN.
                other => {
                    return Err(IdentityError::InvalidValidity {
                        subject: format!("a server certificate for {}", other.to_str()),
                        reason: "only DNS names and IP addresses can be certified",
                    });
                }
            });
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial(&subject())?);
        params.not_before = not_before_x509;
        params.not_after = not_after_x509;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(ServerCertificate {
            chain: vec![cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            not_after,
        })
    }

    /// [`Self::issue`] from a minute ago (clock skew) until `ttl` from now.
    pub fn issue_for(&self, id: &SpiffeId, ttl: Duration) -> Result<Svid, IdentityError> {
        let (not_before, not_after) = fresh_window(id, ttl)?;
        self.issue(id, not_before, not_after)
    }

    fn create(
        dir: &Path,
        cert_path: &Path,
        key_path: &Path,
        td: &TrustDomain,
    ) -> Result<Self, IdentityError> {
        let generate = |source| IdentityError::Generate {
            what: format!("the CA for trust domain {td}"),
            source,
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "causeway");
        params
            .distinguished_name
            .push(DnType::CommonName, td.as_str());
        params.subject_alt_names = vec![SanType::URI(
            Ia5String::try_from(td.uri()).map_err(generate)?,
        )];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial(&format!("the CA for trust domain {td}"))?);
        let window = now
            .checked_sub(CLOCK_SKEW)
            .zip(now.checked_add(CA_LIFETIME))
            .and_then(|(nb, na)| Some((cert_time(nb)?, cert_time(na)?)));
        let Some(((not_before, _), (not_after, root_not_after))) = window else {
            return Err(IdentityError::InvalidValidity {
                subject: format!("the CA for trust domain {td}"),
                reason: "the system clock is outside years 1970-9999",
            });
        };
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key).map_err(generate)?;

        create_dir(dir)?;
        // Each file is written whole under a temporary name and renamed into place, key first:
        // a crash leaves either nothing, or a key without a certificate, which is refused
        // loudly rather than half-loaded. A directory belongs to one gateway, so there is no
        // concurrent creator to race.
        let key_tmp = write_temp(dir, KEY_FILE, key.serialize_pem().as_bytes(), 0o600)?;
        let cert_tmp = write_temp(dir, CERT_FILE, encode_pem(cert.der()).as_bytes(), 0o644)?;
        rename(&key_tmp, key_path)?;
        rename(&cert_tmp, cert_path)?;
        sync_dir(dir)?;
        tracing::info!(trust_domain = %td, dir = %dir.display(), "created certificate authority");

        Ok(Self {
            trust_domain: td.clone(),
            root: cert.der().clone(),
            root_not_after,
            issuer: Issuer::new(params, key),
        })
    }

    fn load(
        dir: &Path,
        cert_path: &Path,
        key_path: &Path,
        td: &TrustDomain,
    ) -> Result<Self, IdentityError> {
        let corrupt = |path: &Path, reason: String| IdentityError::CorruptFile {
            path: path.to_path_buf(),
            reason,
        };

        let cert_pem = read(cert_path)?;
        let mut certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt(cert_path, format!("bad PEM: {e}")))?;
        let root = match certs.pop() {
            Some(root) if certs.is_empty() => root,
            _ => {
                return Err(corrupt(
                    cert_path,
                    format!("expected one certificate, found {}", certs.len() + 1),
                ));
            }
        };
        let x509 = parse_certificate(&root).map_err(|e| corrupt(cert_path, e.to_string()))?;
        let stored = uri_sans(&x509)
            .map_err(|e| corrupt(cert_path, e))?
            .into_iter()
            .find_map(TrustDomain::from_uri)
            .ok_or_else(|| corrupt(cert_path, "no spiffe://<trust domain> URI SAN".into()))?;
        if stored != *td {
            return Err(IdentityError::CaTrustDomainMismatch {
                dir: dir.to_path_buf(),
                stored,
                configured: td.clone(),
            });
        }
        let root_not_after = UNIX_EPOCH
            + Duration::from_secs(
                u64::try_from(x509.validity().not_after.timestamp()).unwrap_or_default(),
            );

        check_private(key_path)?;
        let key_pem = read(key_path)?;
        let key_der = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| corrupt(key_path, format!("bad PEM: {e}")))?
            .ok_or_else(|| corrupt(key_path, "no private key".into()))?;
        let key = KeyPair::try_from(&key_der).map_err(|e| corrupt(key_path, e.to_string()))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(corrupt(
                key_path,
                format!(
                    "key does not match the certificate in {}",
                    cert_path.display()
                ),
            ));
        }

        let issuer =
            Issuer::from_ca_cert_der(&root, key).map_err(|e| corrupt(cert_path, e.to_string()))?;
        Ok(Self {
            trust_domain: stored,
            root,
            root_not_after,
            issuer,
        })
    }
}

/// A TLS server certificate from [`CertificateAuthority::issue_server_cert`] and its key.
pub struct ServerCertificate {
    /// Leaf only: clients verify it against the CA root they were given, so sending the root
    /// along would add bytes and no trust.
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
    not_after: SystemTime,
}

impl ServerCertificate {
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// A copy of the PKCS#8 private key, in the form rustls configs take.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// As encoded in the certificate (whole seconds).
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

impl std::fmt::Debug for ServerCertificate {
    // The key is a secret: never in logs or panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// From a minute ago (clock skew) until `ttl` from now: a freshly issued SVID's window.
fn fresh_window(id: &SpiffeId, ttl: Duration) -> Result<(SystemTime, SystemTime), IdentityError> {
    let now = SystemTime::now();
    let not_before = now.checked_sub(CLOCK_SKEW).unwrap_or(now);
    let not_after = now
        .checked_add(ttl)
        .ok_or_else(|| IdentityError::InvalidValidity {
            subject: id.to_string(),
            reason: "ttl is too large",
        })?;
    Ok((not_before, not_after))
}

/// `t` in whole seconds (what X.509 can encode), as rcgen and as std time, if X.509 can hold it.
fn cert_time(t: SystemTime) -> Option<(OffsetDateTime, SystemTime)> {
    let secs = t.duration_since(UNIX_EPOCH).ok()?.as_secs();
    let x509 = OffsetDateTime::from_unix_timestamp(i64::try_from(secs).ok()?).ok()?;
    if x509.year() > 9999 {
        return None;
    }
    Some((x509, UNIX_EPOCH + Duration::from_secs(secs)))
}

/// 126 random bits: RFC 5280 wants positive serials of at most 20 bytes, and CAs make them
/// unpredictable so nobody can precompute a certificate we will sign.
fn random_serial(what: &str) -> Result<SerialNumber, IdentityError> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| IdentityError::Random {
            what: what.to_string(),
        })?;
    // Top bit clear keeps it positive; the next bit set keeps DER from shortening it.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// A certificate as PEM. Re-encoded from DER rather than echoed from `ca.pem`, so text that
/// happens to sit in that file (say, a pasted key) can never leak into a published bundle.
pub(super) fn encode_pem(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.extend(line.iter().copied().map(char::from));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn exists(path: &Path) -> Result<bool, IdentityError> {
    path.try_exists().map_err(io_error(path))
}

fn read(path: &Path) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(io_error(path))
}

fn rename(from: &Path, to: &Path) -> Result<(), IdentityError> {
    fs::rename(from, to).map_err(io_error(to))
}

fn create_dir(dir: &Path) -> Result<(), IdentityError> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io_error(dir))
}

/// Writes `contents` to a fresh `.<name>.tmp` in `dir` with `mode`, flushed to disk.
fn write_temp(
    dir: &Path,
    name: &str,
    contents: &[u8],
    mode: u32,
) -> Result<PathBuf, IdentityError> {
    let path = dir.join(format!(".{name}.tmp"));
    // A leftover from a crash may carry looser permissions; start from nothing.
    if let Err(e) = fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(io_error(&path)(e));
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&path).map_err(io_error(&path))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(io_error(&path))?;
    Ok(path)
}

/// Makes the renames durable: without it a power cut could bring back an empty directory and
/// a new CA that no other cluster trusts.
fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    #[cfg(unix)]
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Refuses a key that group or others can read, as ssh does: such a key may already be copied.
fn check_private(path: &Path) -> Result<(), IdentityError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(io_error(path))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::InsecureKeyFile {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError;
    use x509_parser::extensions::ParsedExtension;

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).unwrap()
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn created_once_then_loaded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/ca");
        let created = CertificateAuthority::load_or_create(&dir, &td("east")).unwrap();
        let loaded = CertificateAuthority::load_or_create(&dir, &td("east")).unwrap();
        assert_eq!(created.root_der(), loaded.root_der());
        assert_eq!(loaded.trust_domain(), &td("east"));
        assert_eq!(created.bundle_pem(), loaded.bundle_pem());
        assert_eq!(created.bundle_pem(), read(&dir.join(CERT_FILE)).unwrap());
        // Only the two files remain: temporaries were renamed into place.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        #[cfg(unix)]
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);

        // The loaded key is the created one: what it signs chains to the created root.
        let svid = loaded
            .issue_for(&id("spiffe://east/gateway/a"), Duration::from_secs(60))
            .unwrap();
        let root = parse_certificate(&created.root).unwrap();
        let leaf = parse_certificate(&svid.chain()[0]).unwrap();
        leaf.verify_signature(Some(root.public_key())).unwrap();
    }

    #[test]
    fn bundle_pem_round_trips_to_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
        let pem = ca.bundle_pem();
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(certs, [ca.root_der()]);
        assert!(pem.lines().all(|line| line.len() <= 64));
    }

    #[test]
    fn ca_of_another_trust_domain_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
        let err = CertificateAuthority::load_or_create(tmp.path(), &td("west")).unwrap_err();
        assert!(
            matches!(&err, IdentityError::CaTrustDomainMismatch { stored, configured, .. }
                if stored == &td("east") && configured == &td("west")),
            "{err}"
        );
        let msg = err.to_string();
        assert!(msg.contains("east") && msg.contains("west"), "{msg}");
    }

    #[cfg(unix)]
    #[test]
    fn readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
        let key = tmp.path().join(KEY_FILE);
        for mode in [0o644, 0o640, 0o604] {
            fs::set_permissions(&key, fs::Permissions::from_mode(mode)).unwrap();
            let err = CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap_err();
            assert!(
                matches!(&err, IdentityError::InsecureKeyFile { path, .. } if path == &key),
                "{err}"
            );
            assert!(err.to_string().contains("ca-key.pem"), "{err}");
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o400)).unwrap();
        CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
    }

    #[test]
    fn corrupt_files_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
        CertificateAuthority::load_or_create(other.path(), &td("east")).unwrap();
        let cert = tmp.path().join(CERT_FILE);
        let key = tmp.path().join(KEY_FILE);
        let good_cert = fs::read(&cert).unwrap();
        let good_key = fs::read(&key).unwrap();
        let expect_corrupt = |file: &Path| {
            let err = CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap_err();
            assert!(
                matches!(&err, IdentityError::CorruptFile { path, .. } if path == file),
                "{err}"
            );
            assert!(
                err.to_string().contains(&*file.display().to_string()),
                "{err}"
            );
        };

        fs::write(&cert, "garbage").unwrap();
        expect_corrupt(&cert);
        fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        expect_corrupt(&cert);
        fs::write(&cert, [good_cert.clone(), good_cert.clone()].concat()).unwrap();
        expect_corrupt(&cert);
        fs::write(&cert, &good_cert).unwrap();

        fs::write(&key, "garbage").unwrap();
        expect_corrupt(&key);
        // A well-formed key of another CA must not pass for this one.
        fs::write(&key, fs::read(other.path().join(KEY_FILE)).unwrap()).unwrap();
        expect_corrupt(&key);
        fs::write(&key, &good_key).unwrap();
        CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
    }

    #[test]
    fn half_a_ca_is_refused_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
        let cert = tmp.path().join(CERT_FILE);
        let saved = fs::read(&cert).unwrap();
        fs::remove_file(&cert).unwrap();
        let err = CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap_err();
        assert!(
            matches!(&err, IdentityError::IncompleteCa { missing, .. } if missing == &cert),
            "{err}"
        );
        assert!(!cert.exists());
        fs::write(&cert, saved).unwrap();
        CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
    }

    #[test]
    fn svid_is_an_x509_svid() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
        let workload = id("spiffe://east/gateway/east-1");
        let svid = ca.issue_for(&workload, Duration::from_secs(3600)).unwrap();
        assert_eq!(svid.id(), &workload);
        assert_eq!(svid.chain().len(), 1);
        let leaf = parse_certificate(&svid.chain()[0]).unwrap();

        assert_eq!(uri_sans(&leaf).unwrap(), [workload.as_str()]);
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1, "no SANs besides the URI");
        let ku = leaf.key_usage().unwrap().unwrap();
        assert!(ku.critical);
        assert!(ku.value.digital_signature());
        assert_eq!(ku.value.flags, 1, "digitalSignature only");
        assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
        let bc = leaf.basic_constraints().unwrap().unwrap();
        assert!(!bc.value.ca);
        assert!(!leaf.is_ca());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let key_pair = KeyPair::try_from(&svid.key()).unwrap();
        assert_eq!(
            leaf.public_key().subject_public_key.data.as_ref(),
            key_pair.public_key_raw()
        );

        // Serials are random, not derived from anything a peer could predict or collide.
        let again = ca.issue_for(&workload, Duration::from_secs(3600)).unwrap();
        let serial = |svid: &Svid| {
            parse_certificate(&svid.chain()[0])
                .unwrap()
                .raw_serial()
                .to_vec()
        };
        assert_ne!(serial(&svid), serial(&again));
        assert_eq!(serial(&svid).len(), 16);
    }

    #[test]
    fn ca_certificate_is_a_spiffe_signing_certificate() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
        let root = parse_certificate(&ca.root).unwrap();
        assert!(root.is_ca());
        assert_eq!(
            root.basic_constraints()
                .unwrap()
                .unwrap()
                .value
                .path_len_constraint,
            Some(0)
        );
        let ku = root.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
        assert!(root.name_constraints().unwrap().is_none());
        assert!(
            !root
                .extensions()
                .iter()
                .any(|ext| matches!(ext.parsed_extension(), ParsedExtension::NameConstraints(_)))
        );
        assert_eq!(uri_sans(&root).unwrap(), ["spiffe://east"]);
        let years = root.validity().time_to_expiration().unwrap().whole_days() / 365;
        assert!((9..=10).contains(&years), "{years}");
    }

    #[test]
    fn issue_enforces_domain_and_window() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
        let foreign = id("spiffe://west/gateway/w");
        let err = ca.issue_for(&foreign, Duration::from_secs(60)).unwrap_err();
        assert!(matches!(err, IdentityError::ForeignId { .. }), "{err}");
        assert!(err.to_string().contains("west") && err.to_string().contains("east"));

        let ours = id("spiffe://east/gateway/e");
        let now = SystemTime::now();
        assert!(ca.issue(&ours, now, now).is_err());
        assert!(ca.issue(&ours, now, now - Duration::from_secs(1)).is_err());
        assert!(ca.issue_for(&ours, Duration::MAX).is_err());
        assert!(
            ca.issue(&ours, now, now + Duration::from_secs(1 << 40))
                .unwrap()
                .not_after()
                <= ca.root_not_after,
            "leaves never outlive the root"
        );
    }

    #[test]
    fn svid_times_and_debug() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
        let not_before = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let not_after = not_before + Duration::from_secs(7200);
        let svid = ca
            .issue(
                &id("spiffe://east/a"),
                not_before + Duration::from_millis(300),
                not_after,
            )
            .unwrap();
        assert_eq!(svid.not_before(), not_before, "cut to what X.509 encodes");
        assert_eq!(svid.not_after(), not_after);
        assert_eq!(svid.renew_at(), not_before + Duration::from_secs(3600));
        let leaf = parse_certificate(&svid.chain()[0]).unwrap();
        assert_eq!(leaf.validity().not_before.timestamp(), 2_000_000_000);
        assert_eq!(leaf.validity().not_after.timestamp(), 2_000_007_200);

        let before = SystemTime::now();
        let fresh = ca
            .issue_for(&id("spiffe://east/a"), Duration::from_secs(600))
            .unwrap();
        assert!(fresh.not_before() <= before - CLOCK_SKEW);
        assert!(fresh.not_after() > before + Duration::from_secs(598));

        let debug = format!("{svid:?}");
        let secret = svid.key();
        assert!(debug.contains("spiffe://east/a"), "{debug}");
        assert!(
            !debug.contains(&format!("{:?}", &secret.secret_der()[..8])),
            "{debug}"
        );
        assert!(
            !debug.contains(&format!("{:02x?}", &secret.secret_der()[..8])),
            "{debug}"
        );
        assert!(!debug.to_lowercase().contains("pkcs8"), "{debug}");
    }

    /// A TLS handshake in memory between a client trusting `root` and dialling `name`, and a
    /// server presenting `cert`.
    fn handshake(
        root: CertificateDer<'static>,
        cert: &ServerCertificate,
        name: &str,
    ) -> Result<(), rustls::Error> {
        use std::sync::Arc;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root)?;
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(cert.chain().to_vec(), cert.key())?;
        let io = |e: std::io::Error| rustls::Error::General(e.to_string());
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut client = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut server = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).map_err(io)?;
            }
            server.read_tls(&mut wire.as_slice()).map_err(io)?;
            server.process_new_packets()?;
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).map_err(io)?;
            }
            client.read_tls(&mut wire.as_slice()).map_err(io)?;
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn server_cert_is_accepted_for_its_names_only() {
        let tmp = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
        let names = [
            ServerName::try_from("127.0.0.1").unwrap(),
            ServerName::try_from("::1").unwrap(),
            ServerName::try_from("gw.example.com").unwrap(),
        ];
        let cert = ca
            .issue_server_cert(&names, Duration::from_secs(3600))
            .unwrap();
        for name in ["127.0.0.1", "::1", "gw.example.com"] {
            handshake(ca.root_der(), &cert, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        for name in ["127.0.0.2", "other.example.com"] {
            let err = handshake(ca.root_der(), &cert, name).unwrap_err();
            assert!(
                matches!(
                    err,
                    rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForNameContext { .. }
                    )
                ),
                "{name}: {err}"
            );
        }
        // Another cluster's CA does not vouch for it, nor does another CA of the same name.
        for domain in ["west", "east"] {
            let dir = other.path().join(domain);
            let stranger = CertificateAuthority::load_or_create(&dir, &td(domain)).unwrap();
            let err = handshake(stranger.root_der(), &cert, "127.0.0.1").unwrap_err();
            assert!(
                matches!(
                    err,
                    rustls::Error::InvalidCertificate(
                        CertificateError::UnknownIssuer | CertificateError::BadSignature
                    )
                ),
                "{domain}: {err}"
            );
        }

        let leaf = parse_certificate(&cert.chain()[0]).unwrap();
        assert!(uri_sans(&leaf).unwrap().is_empty(), "never an SVID");
        assert!(!leaf.is_ca());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert!(cert.not_after() > SystemTime::now() + Duration::from_secs(3500));
        assert!(!format!("{cert:?}").to_lowercase().contains("key"));
        assert!(ca.issue_server_cert(&[], Duration::from_secs(60)).is_err());
    }

    /// A CSR for a fresh P-256 key, asking for everything a CA must not grant on request.
    fn greedy_csr() -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "spiffe://east/gateway/east-1");
        params.subject_alt_names = vec![
            SanType::URI(Ia5String::try_from("spiffe://east/gateway/east-1").unwrap()),
            SanType::URI(Ia5String::try_from("spiffe://west/ns/prod/sa/admin").unwrap()),
            SanType::DnsName(Ia5String::try_from("east.example.com").unwrap()),
            SanType::IpAddress([10, 0, 0, 1].into()),
        ];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        let csr = params.serialize_request(&key).unwrap();
        (key, csr.der().to_vec())
    }

    #[test]
    fn signed_csr_is_an_x509_svid_for_the_given_id_that_chains_to_the_root() {
        use super::super::{TrustBundles, TrustStore, fuzzing};
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
        let workload = id("spiffe://east/ns/shop/sa/web");
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).unwrap();
        let before = SystemTime::now();
        let signed = ca
            .sign_csr(csr.der(), &workload, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(signed.id(), &workload);
        assert_eq!(signed.chain().len(), 1);
        assert!(signed.not_before() <= before - CLOCK_SKEW);
        assert!(signed.not_after() > before + Duration::from_secs(3598));
        assert!(signed.not_after() <= SystemTime::now() + Duration::from_secs(3600));

        let leaf = parse_certificate(&signed.chain()[0]).unwrap();
        assert_eq!(uri_sans(&leaf).unwrap(), [workload.as_str()]);
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1, "no SANs besides the URI");
        assert!(leaf.subject().as_raw().len() <= 2, "no subject");
        assert_eq!(
            leaf.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw(),
            "the requested key, not one made here"
        );
        assert!(!leaf.is_ca());
        let ku = leaf.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.flags == 1, "digitalSignature only");
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth && !eku.code_signing);
        assert!(leaf.extensions().iter().any(|e| matches!(
            e.parsed_extension(),
            ParsedExtension::AuthorityKeyIdentifier(_)
        )));

        // The gateways' own verifiers accept it as east's workload, for both directions.
        let mut bundles = TrustBundles::new();
        bundles.insert_pem(td("east"), &ca.bundle_pem()).unwrap();
        let trust = TrustStore::new(bundles);
        let now = rustls::pki_types::UnixTime::now();
        fuzzing::verify_client_chain(&trust, signed.chain(), now).unwrap();
        fuzzing::verify_server_chain(&trust, &td("east"), signed.chain(), now).unwrap();
        assert_eq!(peer_spiffe_id_of(&signed), workload);
        let pem: Vec<_> = rustls_pemfile::certs(&mut signed.chain_pem().as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(pem, signed.chain());

        // Another CA of the same name does not vouch for it.
        let other = tempfile::tempdir().unwrap();
        let impostor = CertificateAuthority::load_or_create(other.path(), &td("east")).unwrap();
        let mut bundles = TrustBundles::new();
        bundles
            .insert_pem(td("east"), &impostor.bundle_pem())
            .unwrap();
        fuzzing::verify_client_chain(&TrustStore::new(bundles), signed.chain(), now).unwrap_err();

        // A long ttl is cut to the root's expiry, as for issue().
        let long = ca
            .sign_csr(csr.der(), &workload, Duration::from_secs(1 << 40))
            .unwrap();
        assert!(long.not_after() <= ca.root_not_after);
    }

    fn peer_spiffe_id_of(signed: &SignedSvid) -> SpiffeId {
        super::super::peer_spiffe_id(signed.chain()).unwrap()
    }

    #[test]
    fn a_csr_gets_its_key_certified_and_nothing_else_it_asks_for() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
        let (key, csr) = greedy_csr();
        let workload = id("spiffe://east/ns/shop/sa/web");
        let signed = ca
            .sign_csr(&csr, &workload, Duration::from_secs(600))
            .unwrap();
        let leaf = parse_certificate(&signed.chain()[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1, "{:?}", san.value);
        assert_eq!(uri_sans(&leaf).unwrap(), [workload.as_str()]);
        assert!(
            leaf.subject().as_raw().len() <= 2,
            "the requested CN was copied"
        );
        assert!(!leaf.is_ca());
        assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
        let ku = leaf.key_usage().unwrap().unwrap().value;
        assert!(!ku.key_cert_sign() && !ku.crl_sign() && ku.digital_signature());
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(!eku.code_signing && eku.server_auth && eku.client_auth);
        assert_eq!(
            leaf.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
    }

    #[test]
    fn unusable_csrs_and_foreign_ids_are_refused_with_a_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_create(tmp.path(), &td("east")).unwrap();
        let workload = id("spiffe://east/ns/shop/sa/web");
        let ttl = Duration::from_secs(600);
        let err = ca.sign_csr(b"garbage", &workload, ttl).unwrap_err();
        assert!(matches!(err, IdentityError::InvalidCsr { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("certificate signing request refused: not a DER PKCS#10 request"),
            "{msg}"
        );

        let (_, mut csr) = greedy_csr();
        let last = csr.len() - 1;
        csr[last] ^= 0x55;
        let err = ca.sign_csr(&csr, &workload, ttl).unwrap_err();
        assert!(
            err.to_string().contains("signature does not verify"),
            "{err}"
        );

        let (_, csr) = greedy_csr();
        let err = ca
            .sign_csr(&csr, &id("spiffe://west/ns/shop/sa/web"), ttl)
            .unwrap_err();
        assert!(matches!(err, IdentityError::ForeignId { .. }), "{err}");
    }

    #[test]
    fn ca_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CertificateAuthority>();
        assert_send_sync::<Svid>();
    }
}
