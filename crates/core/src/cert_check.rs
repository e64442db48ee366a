//! Checks of a certificate and key that an operator supplies as files, made before anything in
//! the cluster changes.
//!
//! A pair that is wrong in some way (the key of another certificate, an expired certificate, one
//! that may not serve TLS, one that does not name its member) would otherwise only fail later:
//! at a handshake, on another member, with a message about neither file. Here each problem is
//! refused up front, with the path the operator wrote and what is expected instead, so the
//! client (`microctl`) and the daemon give the same answer.
//!
//! Only what the client build already links is used (rustls, webpki, ring): the extensions
//! webpki does not judge (keyUsage, basicConstraints on a trust anchor) are read with a small
//! bounded DER reader below that never indexes past its input nor allocates by a length it read.

use crate::der;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::{self, PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor, UnixTime};

use crate::tls::{self, Identity};

/// What a supplied certificate will be used as.
///
/// The same certificate can be fine as one and unusable as the other: the cluster certificate
/// is only ever a TLS server's, while a member's certificate is also its TLS client certificate
/// and must carry the member's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose<'a> {
    /// The cluster certificate: presented by every member's HTTPS listener (TLS server auth).
    Cluster,
    /// A member's own certificate (server.crt): presented as a TLS client certificate to other
    /// members, and as a server certificate before the member is initialised. Must name the
    /// member.
    Member(&'a str),
}

/// A file's path (as the operator wrote it, for messages) and its contents.
///
/// The path is only ever echoed back, never opened: the caller reads the file (locally, or on
/// the client before sending it), so that what is checked is exactly what will be used.
#[derive(Clone, Copy)]
pub struct Supplied<'a> {
    /// The path as the operator wrote it.
    pub path: &'a str,
    /// The file's contents (PEM).
    pub pem: &'a str,
}

/// Only the path: the contents may be a private key, which must not reach a log.
impl std::fmt::Debug for Supplied<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supplied").field("path", &self.path).finish_non_exhaustive()
    }
}

/// A supplied file cannot be used.
///
/// It names the file rather than the certificate's subject: the operator fixes files, and of a
/// certificate, a key and a CA, only the path says which one is at fault.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("{file}: {problem}")]
pub struct FileProblem {
    /// The file's path as the operator wrote it.
    pub file: String,
    /// What is wrong with it and what is expected instead.
    pub problem: String,
}

fn problem(file: &Supplied<'_>, problem: impl Into<String>) -> FileProblem {
    FileProblem { file: file.path.to_owned(), problem: problem.into() }
}

/// The key types rustls' ring provider can sign with, for messages.
const SUPPORTED_KEYS: &str = "ECDSA P-256 or P-384, Ed25519, or RSA of 2048 bits or more";
/// What a key file should look like, for messages.
const KEY_FORMAT: &str = "an unencrypted PEM private key (PKCS#8 \"PRIVATE KEY\", SEC1 \"EC PRIVATE KEY\" or PKCS#1 \
                          \"RSA PRIVATE KEY\")";
/// What a certificate file should look like, for messages.
const CERT_FORMAT: &str = "a PEM certificate (-----BEGIN CERTIFICATE-----)";

/// Checks a pair (and, if given, that the certificate chains to the CA) and returns it as an
/// Identity.
///
/// Everything a member would trip over later is checked here, in the order an operator would
/// fix it: the files hold what they should, the key is the certificate's, the certificate is
/// valid now, may be used for TLS as `purpose` needs, names its member, and (with `ca`) was
/// issued by that CA. The Identity holds the files' text as supplied.
pub fn check_pair(
    purpose: Purpose<'_>,
    cert: Supplied<'_>,
    key: Supplied<'_>,
    ca: Option<Supplied<'_>>,
    now: SystemTime,
) -> Result<Identity, FileProblem> {
    // 1. The certificate file.
    let leaf = certificates(&cert, Role::Certificate)?.swap_remove(0);
    let ee = webpki::EndEntityCert::try_from(&leaf)
        .map_err(|e| problem(&cert, format!("is not a readable X.509 certificate ({e}): expected {CERT_FORMAT}")))?;
    let fields = fields(&cert, &leaf, "")?;

    // 2. The key file.
    let key_der = private_key(&key)?;
    let signing_key = tls::provider().key_provider.load_private_key(key_der).map_err(|e| {
        problem(&key, format!("holds a private key of a kind that cannot be used ({e}): expected {SUPPORTED_KEYS}"))
    })?;

    // 3. The key is the certificate's.
    match rustls::sign::CertifiedKey::new(vec![leaf.clone()], signing_key).keys_match() {
        // ring knows every key it loads; "unknown" would only mean it cannot tell.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(problem(
                &key,
                format!("is not the private key of the certificate in {}: expected that certificate's key", cert.path),
            ));
        }
        Err(other) => return Err(problem(&cert, format!("cannot be compared with its key: {other}"))),
    }

    // 4. Valid now.
    if let Some(why) = validity_problem(&fields, now) {
        return Err(problem(&cert, why));
    }

    // 5. Usage.
    if let Some(why) = usage_problem(&fields, purpose) {
        return Err(problem(&cert, why));
    }

    // 6. Names.
    if let Purpose::Member(name) = purpose {
        let named = tls::cert_has_dns_name(&leaf, name).unwrap_or(false);
        if !named {
            return Err(problem(
                &cert,
                format!(
                    "does not name the member {name:?}: expected {name:?} among its DNS subject alternative names \
                     ({})",
                    names_it_has(&fields)
                ),
            ));
        }
    }

    // 7. The CA.
    if let Some(ca) = ca {
        let ca_ders = ca_certificates(&ca, now)?;
        let anchors = trust_anchors(&ca_ders).map_err(|e| problem(&ca, format!("cannot be used as a CA ({e})")))?;
        verify_chain(&ee, &anchors, purpose, now)
            .map_err(|e| problem(&cert, format!("is not issued by the CA in {}: {}", ca.path, chain_reason(&e))))?;
    }

    Ok(Identity { cert_pem: cert.pem.to_owned(), key_pem: key.pem.to_owned() })
}

/// Checks that a file holds a usable CA certificate (one or more PEM certificates; each a CA:
/// basicConstraints cA=true, and keyCertSign if keyUsage is present).
///
/// Each certificate in the file becomes a trust anchor, so each must be able to issue
/// certificates and be valid now: an anchor that cannot is a mistake in the file (often a
/// member's certificate given in place of its issuer's), not something to skip silently.
pub fn check_ca(ca: Supplied<'_>, now: SystemTime) -> Result<(), FileProblem> {
    ca_certificates(&ca, now).map(|_| ())
}

/// Whether `cert_pem`'s first certificate chains to one of the CA certificates in `ca_pem`, for
/// `purpose`'s usage (used at runtime to verify members' certificates besides pinning). Never
/// panics; false on anything unreadable.
///
/// It judges as [`check_pair`] and [`check_ca`] do (the CA file must pass `check_ca`, the
/// certificate must be valid now and its usage fit `purpose`), so a certificate accepted when
/// supplied keeps being accepted until it or its CA expires. The name in
/// [`Purpose::Member`] is not checked here: which member presents a certificate is the
/// caller's to judge.
pub fn chains_to(cert_pem: &str, ca_pem: &str, purpose: Purpose<'_>, now: SystemTime) -> bool {
    let cert = Supplied { path: "certificate", pem: cert_pem };
    let ca = Supplied { path: "CA", pem: ca_pem };
    let Ok(mut leaves) = certificates(&cert, Role::Certificate) else {
        return false;
    };
    let leaf = leaves.swap_remove(0);
    let Ok(ee) = webpki::EndEntityCert::try_from(&leaf) else {
        return false;
    };
    let Ok(fields) = fields(&cert, &leaf, "") else {
        return false;
    };
    if validity_problem(&fields, now).is_some() || usage_problem(&fields, purpose).is_some() {
        return false;
    }
    let Ok(ca_ders) = ca_certificates(&ca, now) else {
        return false;
    };
    let Ok(anchors) = trust_anchors(&ca_ders) else {
        return false;
    };
    verify_chain(&ee, &anchors, purpose, now).is_ok()
}

/// Which certificates a file is expected to hold, for messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Certificate,
    Ca,
}

/// The certificates in a file (at least one), refusing a file that holds anything secret: a
/// certificate file is copied and shown freely, a private key in it would travel along.
fn certificates(file: &Supplied<'_>, role: Role) -> Result<Vec<CertificateDer<'static>>, FileProblem> {
    let (expected, swapped) = match role {
        Role::Certificate => (CERT_FORMAT, "; are the certificate and key files swapped?"),
        Role::Ca => ("the PEM certificate of the CA (-----BEGIN CERTIFICATE-----)", ""),
    };
    let sections = sections(file)?;
    let certs: Vec<_> = sections
        .iter()
        .filter(|(kind, _)| *kind == SectionKind::Certificate)
        .map(|(_, der)| CertificateDer::from(der.clone()))
        .collect();
    let has_key = sections.iter().any(|(kind, _)| is_key(*kind)) || labels(file.pem).any(|l| l.contains("PRIVATE KEY"));
    if certs.is_empty() {
        return Err(problem(
            file,
            if file.pem.trim().is_empty() {
                format!("is empty: expected {expected}")
            } else if has_key {
                format!("holds a private key, not a certificate: expected {expected}{swapped}")
            } else if let Some(label) = labels(file.pem).next() {
                format!("holds a PEM {}, not a certificate: expected {expected}", shown_label(label))
            } else {
                format!("holds no PEM data: expected {expected}")
            },
        ));
    }
    if has_key {
        return Err(problem(
            file,
            "also holds a private key: a certificate file is copied and shown freely, so expected the certificate \
             alone (keep the key in its own file)",
        ));
    }
    Ok(certs)
}

/// The first private key in the key file.
fn private_key(file: &Supplied<'_>) -> Result<PrivateKeyDer<'static>, FileProblem> {
    if labels(file.pem).any(|l| l == "ENCRYPTED PRIVATE KEY") || file.pem.contains("Proc-Type: 4,ENCRYPTED") {
        return Err(problem(
            file,
            format!(
                "holds an encrypted private key, which a daemon cannot unlock: expected {KEY_FORMAT} (decrypt it, \
                 e.g. with `openssl pkey`)"
            ),
        ));
    }
    let sections = sections(file)?;
    if let Some(key) = sections.iter().find_map(|(kind, der)| PrivateKeyDer::from_pem(*kind, der.clone())) {
        return Ok(key);
    }
    Err(problem(
        file,
        if file.pem.trim().is_empty() {
            format!("is empty: expected {KEY_FORMAT}")
        } else if labels(file.pem).any(|l| l == "OPENSSH PRIVATE KEY") {
            format!("holds an OpenSSH private key: expected {KEY_FORMAT}")
        } else if sections.iter().any(|(kind, _)| *kind == SectionKind::Certificate) {
            format!(
                "holds a certificate, not a private key: expected {KEY_FORMAT}; are the certificate and key files \
                 swapped?"
            )
        } else if let Some(label) = labels(file.pem).next() {
            format!("holds a PEM {}, not a private key: expected {KEY_FORMAT}", shown_label(label))
        } else {
            format!("holds no PEM data: expected {KEY_FORMAT}")
        },
    ))
}

fn is_key(kind: SectionKind) -> bool {
    matches!(kind, SectionKind::PrivateKey | SectionKind::EcPrivateKey | SectionKind::RsaPrivateKey)
}

/// Every PEM section rustls knows, in order; sections with other labels are left out (see
/// [`labels`]).
fn sections(file: &Supplied<'_>) -> Result<Vec<(SectionKind, Vec<u8>)>, FileProblem> {
    <(SectionKind, Vec<u8>)>::pem_slice_iter(file.pem.as_bytes()).collect::<Result<Vec<_>, _>>().map_err(|e| {
        // Not the error's own text: it may quote a line of the file, which may be a key's.
        let what = match e {
            pem::Error::MissingSectionEnd { .. } => "a section has no -----END line",
            pem::Error::IllegalSectionStart { .. } => "a -----BEGIN line is malformed",
            pem::Error::Base64Decode(_) => "a section's base64 is damaged",
            pem::Error::SectionTooLarge => "a section is too large",
            _ => "it cannot be read",
        };
        problem(file, format!("is not valid PEM ({what})"))
    })
}

/// The labels of the text's `-----BEGIN <label>-----` lines, whether rustls knows them or not.
fn labels(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|line| line.trim().strip_prefix("-----BEGIN ")?.strip_suffix("-----"))
}

/// A label from the file, quoted, if it is short plain text (it is echoed to a terminal).
fn shown_label(label: &str) -> String {
    if label.len() <= 40 && label.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        format!("{label:?}")
    } else {
        "section of an unknown kind".to_owned()
    }
}

/// The certificates of a CA file, each checked as a CA valid now.
fn ca_certificates(ca: &Supplied<'_>, now: SystemTime) -> Result<Vec<CertificateDer<'static>>, FileProblem> {
    let certs = certificates(ca, Role::Ca)?;
    let total = certs.len();
    for (at, der) in certs.iter().enumerate() {
        let which = if total == 1 { String::new() } else { format!("certificate {} of {total} ", at + 1) };
        webpki::anchor_from_trusted_cert(der).map_err(|e| {
            problem(
                ca,
                format!("{which}is not a readable X.509 certificate ({e}): expected the PEM certificate of the CA"),
            )
        })?;
        let fields = fields(ca, der, &which)?;
        if !fields.ca {
            return Err(problem(
                ca,
                format!(
                    "{which}is not a CA certificate (its basicConstraints does not say cA=true): expected the \
                     issuing authority's own certificate, not one it issued"
                ),
            ));
        }
        if fields.key_usage.is_some_and(|bits| !bit(bits, KEY_CERT_SIGN)) {
            return Err(problem(
                ca,
                format!(
                    "{which}may not sign certificates: its key usage ({}) lacks keyCertSign, which a CA needs",
                    key_usage_names(fields.key_usage)
                ),
            ));
        }
        if let Some(why) = validity_problem(&fields, now) {
            return Err(problem(ca, format!("{which}{why}")));
        }
    }
    Ok(certs)
}

fn trust_anchors<'a>(ders: &'a [CertificateDer<'a>]) -> Result<Vec<TrustAnchor<'a>>, webpki::Error> {
    ders.iter().map(webpki::anchor_from_trusted_cert).collect()
}

/// webpki's chain check, with the CA file's certificates as trust anchors and no
/// intermediates: a member presents only its own certificate, so a chain that needed more
/// would not verify at a handshake either.
fn verify_chain(
    ee: &webpki::EndEntityCert<'_>,
    anchors: &[TrustAnchor<'_>],
    purpose: Purpose<'_>,
    now: SystemTime,
) -> Result<(), webpki::Error> {
    // Before 1970 nothing is valid (and no certificate made by a member or an operator is).
    let time =
        now.duration_since(UNIX_EPOCH).map(UnixTime::since_unix_epoch).map_err(|_| webpki::Error::CertNotValidYet {
            time: UnixTime::since_unix_epoch(std::time::Duration::ZERO),
            not_before: UnixTime::since_unix_epoch(std::time::Duration::ZERO),
        })?;
    ee.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, anchors, &[], time, Eku(purpose), None, None).map(|_| ())
}

fn chain_reason(e: &webpki::Error) -> String {
    match e {
        webpki::Error::UnknownIssuer => "no certificate in that file issued it (unknown issuer)".to_owned(),
        webpki::Error::InvalidSignatureForPublicKey => {
            "its signature does not verify with the CA's key (invalid signature)".to_owned()
        }
        other => format!("webpki says {other}"),
    }
}

/// webpki's extended-key-usage judgement, as [`usage_problem`] makes it: `KeyUsage::server_auth()`
/// and `client_auth()` would refuse anyExtendedKeyUsage and judge a member's certificate on only
/// one of the two ways it is used.
struct Eku<'a>(Purpose<'a>);

impl webpki::ExtendedKeyUsageValidator for Eku<'_> {
    fn validate(&self, iter: webpki::KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        let (mut empty, mut server, mut client, mut any) = (true, false, false, false);
        for id in iter {
            let id = id?;
            empty = false;
            server |= id == webpki::KeyPurposeId::new(oid::SERVER_AUTH);
            client |= id == webpki::KeyPurposeId::new(oid::CLIENT_AUTH);
            any |= id == webpki::KeyPurposeId::new(oid::ANY_EKU);
        }
        let needs_client = matches!(self.0, Purpose::Member(_));
        if empty || any || (server && (client || !needs_client)) {
            return Ok(());
        }
        let required = if server { webpki::KeyUsage::client_auth() } else { webpki::KeyUsage::server_auth() };
        Err(webpki::Error::RequiredEkuNotFoundContext(webpki::RequiredEkuNotFoundContext {
            required,
            present: Vec::new(),
        }))
    }
}

/// What this module reads of a certificate itself.
struct Fields<'a> {
    /// Seconds since 1970 (negative before).
    not_before: i64,
    not_after: i64,
    /// keyUsage: the BIT STRING's content (its unused-bits byte, then the bits).
    key_usage: Option<&'a [u8]>,
    /// extendedKeyUsage: the SEQUENCE's content (OIDs).
    eku: Option<&'a [u8]>,
    /// basicConstraints' cA.
    ca: bool,
    /// subjectAltName: the SEQUENCE's content (GeneralNames), for messages.
    san: Option<&'a [u8]>,
}

fn fields<'a>(file: &Supplied<'_>, der: &'a CertificateDer<'_>, which: &str) -> Result<Fields<'a>, FileProblem> {
    read_fields(der.as_ref()).ok_or_else(|| {
        problem(file, format!("{which}is not a readable X.509 certificate (malformed validity or extensions)"))
    })
}

/// `Certificate` is a SEQUENCE whose first element, `TBSCertificate`, holds an optional `[0]`
/// version, the serial number, the signature algorithm, the issuer, the validity, the subject,
/// the public key, optional `[1]` and `[2]` unique identifiers and the optional `[3]` extensions.
fn read_fields(cert: &[u8]) -> Option<Fields<'_>> {
    let (certificate, _) = der::element(cert, der::SEQUENCE)?;
    let (tbs, _) = der::element(certificate, der::SEQUENCE)?;
    let mut rest = tbs;
    if rest.first() == Some(&der::VERSION) {
        rest = der::skip(rest)?;
    }
    for _serial_algorithm_issuer in 0..3 {
        rest = der::skip(rest)?;
    }
    let (validity, after_validity) = der::element(rest, der::SEQUENCE)?;
    let (not_before, validity) = der::time(validity)?;
    let (not_after, _) = der::time(validity)?;
    rest = after_validity;
    for _subject_key in 0..2 {
        rest = der::skip(rest)?;
    }
    let mut fields = Fields { not_before, not_after, key_usage: None, eku: None, ca: false, san: None };
    let (mut seen_key_usage, mut seen_basic_constraints) = (false, false);
    while let Some((tag, content, next)) = der::any(rest) {
        rest = next;
        if tag != der::EXTENSIONS {
            continue;
        }
        let (extensions, _) = der::element(content, der::SEQUENCE)?;
        for (tag, extension) in der::elements(extensions)? {
            if tag != der::SEQUENCE {
                return None;
            }
            let (id, rest) = der::element(extension, der::OID)?;
            let rest = match der::element(rest, der::BOOLEAN) {
                Some((_critical, rest)) => rest,
                None => rest,
            };
            let (value, _) = der::element(rest, der::OCTET_STRING)?;
            let once = |seen: &mut bool| (!std::mem::replace(seen, true)).then_some(());
            match id {
                oid::KEY_USAGE => {
                    once(&mut seen_key_usage)?;
                    let (bits, tail) = der::element(value, der::BIT_STRING)?;
                    (tail.is_empty() && !bits.is_empty()).then_some(())?;
                    fields.key_usage = Some(bits);
                }
                oid::EXTENDED_KEY_USAGE => {
                    fields.eku.is_none().then_some(())?;
                    let (ids, tail) = der::element(value, der::SEQUENCE)?;
                    let all_oids = der::elements(ids)?.all(|(tag, _)| tag == der::OID);
                    (tail.is_empty() && all_oids).then_some(())?;
                    fields.eku = Some(ids);
                }
                oid::BASIC_CONSTRAINTS => {
                    once(&mut seen_basic_constraints)?;
                    let (constraints, tail) = der::element(value, der::SEQUENCE)?;
                    tail.is_empty().then_some(())?;
                    fields.ca =
                        der::element(constraints, der::BOOLEAN).is_some_and(|(ca, _)| ca.iter().any(|b| *b != 0));
                }
                oid::SUBJECT_ALT_NAME => {
                    fields.san.is_none().then_some(())?;
                    let (names, _) = der::element(value, der::SEQUENCE)?;
                    der::elements(names).is_some().then_some(())?;
                    fields.san = Some(names);
                }
                _ => {}
            }
        }
    }
    rest.is_empty().then_some(fields)
}

fn validity_problem(fields: &Fields<'_>, now: SystemTime) -> Option<String> {
    let now = seconds(now);
    if now < fields.not_before {
        Some(format!(
            "is not valid yet: valid from {} (notBefore), it is now {}: expected a certificate valid now (is this \
             machine's clock right?)",
            date(fields.not_before),
            date(now)
        ))
    } else if now >= fields.not_after {
        Some(format!(
            "expired on {} (notAfter), it is now {}: expected a certificate valid now",
            date(fields.not_after),
            date(now)
        ))
    } else {
        None
    }
}

/// keyUsage bits (RFC 5280 4.2.1.3), numbered from the most significant bit of the first byte.
const DIGITAL_SIGNATURE: usize = 0;
const KEY_CERT_SIGN: usize = 5;
const KEY_USAGE_NAMES: [&str; 9] = [
    "digitalSignature",
    "nonRepudiation",
    "keyEncipherment",
    "dataEncipherment",
    "keyAgreement",
    "keyCertSign",
    "cRLSign",
    "encipherOnly",
    "decipherOnly",
];

fn bit(bits: &[u8], n: usize) -> bool {
    bits.get(1 + n / 8).is_some_and(|byte| byte & (0x80 >> (n % 8)) != 0)
}

fn key_usage_names(bits: Option<&[u8]>) -> String {
    let bits = bits.unwrap_or_default();
    let names: Vec<&str> =
        KEY_USAGE_NAMES.iter().enumerate().filter(|(n, _)| bit(bits, *n)).map(|(_, name)| *name).collect();
    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
}

/// Whether the certificate may be used for TLS as `purpose` needs, or why not.
fn usage_problem(fields: &Fields<'_>, purpose: Purpose<'_>) -> Option<String> {
    let what = match purpose {
        Purpose::Cluster => "a cluster certificate",
        Purpose::Member(_) => "a member certificate",
    };
    if fields.ca {
        return Some(format!(
            "is a CA certificate (its basicConstraints says cA=true): expected an end-entity certificate as {what} \
             (`openssl req -x509` marks certificates as CAs unless asked for basicConstraints=CA:FALSE)"
        ));
    }
    if fields.key_usage.is_some_and(|bits| !bit(bits, DIGITAL_SIGNATURE)) {
        return Some(format!(
            "may not sign TLS handshakes: its key usage ({}) lacks digitalSignature, which {what} needs",
            key_usage_names(fields.key_usage)
        ));
    }
    let ids = fields.eku?;
    let has = |wanted: &[u8]| der::elements(ids).into_iter().flatten().any(|(_, id)| id == wanted);
    if has(oid::ANY_EKU) {
        return None;
    }
    let (server, client) = (has(oid::SERVER_AUTH), has(oid::CLIENT_AUTH));
    let present = eku_names(ids);
    match purpose {
        Purpose::Cluster if !server => Some(format!(
            "may not serve TLS: its extended key usage ({present}) lacks serverAuth, which a cluster certificate \
             needs (every member's HTTPS listener presents it)"
        )),
        Purpose::Member(_) if !(server && client) => Some(format!(
            "its extended key usage ({present}) does not allow both serverAuth and clientAuth, which a member \
             certificate needs (a member presents it to other members as a client, and as a server before it is \
             initialised)"
        )),
        _ => None,
    }
}

fn eku_names(ids: &[u8]) -> String {
    let names: Vec<String> = der::elements(ids)
        .into_iter()
        .flatten()
        .map(|(_, id)| match id {
            oid::SERVER_AUTH => "serverAuth".to_owned(),
            oid::CLIENT_AUTH => "clientAuth".to_owned(),
            oid::ANY_EKU => "anyExtendedKeyUsage".to_owned(),
            other => der::dotted(other),
        })
        .collect();
    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
}

/// The DNS names (subject alternative names) of the first certificate in PEM text, at most 16;
/// none if it cannot be read. A new cluster certificate carries the old one's, so that clients
/// checking a name (Prometheus's `server_name`) go on working.
pub fn dns_names(cert_pem: &str) -> Vec<String> {
    const MOST: usize = 16;
    let Ok(der) = crate::tls::parse_cert(cert_pem, "certificate") else { return Vec::new() };
    let Some(fields) = read_fields(der.as_ref()) else { return Vec::new() };
    fields
        .san
        .and_then(der::elements)
        .into_iter()
        .flatten()
        .filter(|(tag, name)| *tag == der::DNS_NAME && !name.is_empty() && name.iter().all(|b| b.is_ascii_graphic()))
        .map(|(_, name)| String::from_utf8_lossy(name).into_owned())
        .take(MOST)
        .collect()
}

/// The names a certificate carries, for a message about a missing one.
fn names_it_has(fields: &Fields<'_>) -> String {
    const SHOWN: usize = 8;
    let mut names = Vec::new();
    let mut more = 0usize;
    for (tag, name) in fields.san.and_then(der::elements).into_iter().flatten() {
        let shown = match (tag, name.len()) {
            (der::DNS_NAME, _) if name.iter().all(|b| b.is_ascii_graphic()) => {
                String::from_utf8_lossy(name).into_owned()
            }
            (der::IP_ADDRESS, 4) => {
                let mut octets = [0u8; 4];
                octets.copy_from_slice(name);
                std::net::Ipv4Addr::from(octets).to_string()
            }
            (der::IP_ADDRESS, 16) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(name);
                std::net::Ipv6Addr::from(octets).to_string()
            }
            _ => continue,
        };
        if names.len() < SHOWN {
            names.push(shown);
        } else {
            more += 1;
        }
    }
    match (names.is_empty(), more) {
        (true, _) => "it has none".to_owned(),
        (false, 0) => format!("it has {}", names.join(", ")),
        (false, more) => format!("it has {} and {more} more", names.join(", ")),
    }
}

/// Seconds since 1970, negative before, saturating.
fn seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC`.
fn date(seconds: i64) -> String {
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Days to the proleptic Gregorian calendar (Howard Hinnant's civil_from_days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let mut out = String::new();
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    );
    out
}

/// Object identifiers (their DER content bytes).
mod oid {
    /// 2.5.29.15
    pub(super) const KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
    /// 2.5.29.17
    pub(super) const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    /// 2.5.29.19
    pub(super) const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
    /// 2.5.29.37
    pub(super) const EXTENDED_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
    /// 2.5.29.37.0
    pub(super) const ANY_EKU: &[u8] = &[0x55, 0x1d, 0x25, 0x00];
    /// 1.3.6.1.5.5.7.3.1
    pub(super) const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
    /// 1.3.6.1.5.5.7.3.2
    pub(super) const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose as Eku, IsCa, KeyPair,
        KeyUsagePurpose as Ku, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, SignatureAlgorithm,
    };

    use super::*;

    const CERT: &str = "in/member.crt";
    const KEY: &str = "in/member.key";
    const CA: &str = "in/ca.crt";
    const DAY: Duration = Duration::from_secs(86_400);

    /// A certificate made by rcgen, with its key.
    struct Made {
        cert: Certificate,
        key: KeyPair,
    }

    impl Made {
        fn cert_pem(&self) -> String {
            self.cert.pem()
        }
        fn key_pem(&self) -> String {
            self.key.serialize_pem()
        }
    }

    /// A certificate for `names`, valid from a minute ago for a year, shaped by `shape`, signed by
    /// `issuer` (or itself).
    fn make(
        alg: &'static SignatureAlgorithm,
        names: &[&str],
        shape: impl FnOnce(&mut CertificateParams),
        issuer: Option<&Made>,
    ) -> Made {
        let key = KeyPair::generate_for(alg).expect("a key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).expect("names");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("test"));
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + 365 * DAY).into();
        shape(&mut params);
        let cert = match issuer {
            Some(issuer) => params.signed_by(&key, &issuer.cert, &issuer.key).expect("a certificate"),
            None => params.self_signed(&key).expect("a certificate"),
        };
        Made { cert, key }
    }

    fn member(names: &[&str], shape: impl FnOnce(&mut CertificateParams)) -> Made {
        make(&PKCS_ECDSA_P384_SHA384, names, shape, None)
    }

    fn ca(name: &str) -> Made {
        make(
            &PKCS_ECDSA_P384_SHA384,
            &[],
            |p| {
                p.distinguished_name.push(DnType::CommonName, name);
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![Ku::KeyCertSign, Ku::CrlSign, Ku::DigitalSignature];
            },
            None,
        )
    }

    struct Case {
        what: &'static str,
        purpose: Purpose<'static>,
        cert: String,
        key: String,
        ca: Option<String>,
        /// `None`: accepted; else the file at fault and a phrase of the problem.
        refused: Option<(&'static str, &'static str)>,
    }

    fn case(what: &'static str, purpose: Purpose<'static>, made: &Made) -> Case {
        Case { what, purpose, cert: made.cert_pem(), key: made.key_pem(), ca: None, refused: None }
    }

    impl Case {
        fn refused(self, file: &'static str, phrase: &'static str) -> Self {
            Case { refused: Some((file, phrase)), ..self }
        }
        fn with_ca(self, ca: &Made) -> Self {
            Case { ca: Some(ca.cert_pem()), ..self }
        }
        fn cert(self, cert: impl Into<String>) -> Self {
            Case { cert: cert.into(), ..self }
        }
        fn key(self, key: impl Into<String>) -> Self {
            Case { key: key.into(), ..self }
        }
    }

    const M1: Purpose<'static> = Purpose::Member("m1");
    const NOT_PEM: &str = "this is not PEM\n";
    const NOT_X509: &str = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n";
    const NOT_A_KEY: &str = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n";
    const ENCRYPTED: &str =
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nbm90IGEga2V5\n-----END ENCRYPTED PRIVATE KEY-----\n";
    const OPENSSH: &str = "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----\n";

    #[test]
    fn supplied_pairs_are_accepted_or_refused_naming_the_file_and_the_problem() {
        let now = SystemTime::now();
        let good = member(&["m1"], |_| {});
        let p256 = make(&PKCS_ECDSA_P256_SHA256, &["m1"], |_| {}, None);
        let ed25519 = make(&PKCS_ED25519, &["m1"], |_| {}, None);
        let other = member(&["m1"], |_| {});
        let expired = member(&["m1"], |p| {
            p.not_before = (now - 30 * DAY).into();
            p.not_after = (now - DAY).into();
        });
        let early = member(&["m1"], |p| p.not_before = (now + DAY).into());
        let eku = |ekus: Vec<Eku>| member(&["m1"], |p| p.extended_key_usages = ekus);
        let client_only = eku(vec![Eku::ClientAuth]);
        let server_only = eku(vec![Eku::ServerAuth]);
        let both = eku(vec![Eku::ServerAuth, Eku::ClientAuth]);
        let any = eku(vec![Eku::Any]);
        let code_signing = eku(vec![Eku::CodeSigning]);
        let encipher_only = member(&["m1"], |p| p.key_usages = vec![Ku::KeyEncipherment]);
        let signing = member(&["m1"], |p| p.key_usages = vec![Ku::DigitalSignature, Ku::KeyEncipherment]);
        let authority = ca("Test CA");
        let another_authority = ca("Another CA");
        let issued = make(&PKCS_ECDSA_P384_SHA384, &["m1"], |_| {}, Some(&authority));
        let issued_client_only =
            make(&PKCS_ECDSA_P384_SHA384, &["m1"], |p| p.extended_key_usages = vec![Eku::ClientAuth], Some(&authority));
        let no_cert_sign = make(
            &PKCS_ECDSA_P384_SHA384,
            &[],
            |p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.key_usages = vec![Ku::DigitalSignature];
            },
            None,
        );
        let expired_authority = make(
            &PKCS_ECDSA_P384_SHA384,
            &[],
            |p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                p.not_before = (now - 30 * DAY).into();
                p.not_after = (now - DAY).into();
            },
            None,
        );
        let m2 = member(&["m2", "other.example"], |_| {});
        let unnamed = member(&[], |_| {});

        let cases = [
            // Types and pairs.
            case("a P-384 member pair", M1, &good),
            case("the same pair as the cluster's", Purpose::Cluster, &good),
            case("a P-256 pair", M1, &p256),
            case("an Ed25519 pair", M1, &ed25519),
            case("another certificate's key", M1, &good)
                .key(other.key_pem())
                .refused(KEY, "is not the private key of the certificate in in/member.crt"),
            case("the key in the cert file", M1, &good)
                .cert(good.key_pem())
                .refused(CERT, "holds a private key, not a certificate"),
            case("the cert in the key file", M1, &good)
                .key(good.cert_pem())
                .refused(KEY, "holds a certificate, not a private key"),
            case("both swapped", M1, &good).cert(good.key_pem()).key(good.cert_pem()).refused(CERT, "files swapped"),
            case("garbage as the cert", M1, &good).cert(NOT_PEM).refused(CERT, "holds no PEM data"),
            case("an empty cert file", M1, &good).cert("").refused(CERT, "is empty"),
            case("a certificate that is not X.509", M1, &good)
                .cert(NOT_X509)
                .refused(CERT, "is not a readable X.509 certificate"),
            case("broken base64", M1, &good)
                .cert("-----BEGIN CERTIFICATE-----\n@@@@\n-----END CERTIFICATE-----\n")
                .refused(CERT, "base64"),
            case("no END line", M1, &good)
                .cert("-----BEGIN CERTIFICATE-----\nbm90\n")
                .refused(CERT, "no -----END line"),
            case("a public key as the cert", M1, &good)
                .cert(good.key.public_key_pem())
                .refused(CERT, "holds a PEM \"PUBLIC KEY\", not a certificate"),
            case("the cert file holds the key too", M1, &good)
                .cert(good.cert_pem() + &good.key_pem())
                .refused(CERT, "also holds a private key"),
            case("garbage as the key", M1, &good).key(NOT_PEM).refused(KEY, "holds no PEM data"),
            case("a key ring cannot load", M1, &good)
                .key(NOT_A_KEY)
                .refused(KEY, "ECDSA P-256 or P-384, Ed25519, or RSA of 2048 bits or more"),
            case("an encrypted key", M1, &good).key(ENCRYPTED).refused(KEY, "encrypted private key"),
            case("an OpenSSH key", M1, &good).key(OPENSSH).refused(KEY, "OpenSSH private key"),
            case("a key file holding the cert too", M1, &good).key(good.cert_pem() + &good.key_pem()),
            // Validity.
            case("expired", M1, &expired).refused(CERT, "expired on"),
            case("not yet valid", M1, &early).refused(CERT, "is not valid yet"),
            // Usage.
            case("clientAuth only, as the cluster's", Purpose::Cluster, &client_only).refused(CERT, "lacks serverAuth"),
            case("clientAuth only, as a member's", M1, &client_only).refused(CERT, "both serverAuth and clientAuth"),
            case("serverAuth only, as the cluster's", Purpose::Cluster, &server_only),
            case("serverAuth only, as a member's", M1, &server_only).refused(CERT, "both serverAuth and clientAuth"),
            case("both usages, as a member's", M1, &both),
            case("both usages, as the cluster's", Purpose::Cluster, &both),
            case("any usage, as a member's", M1, &any),
            case("code signing, as the cluster's", Purpose::Cluster, &code_signing)
                .refused(CERT, "(1.3.6.1.5.5.7.3.3) lacks serverAuth"),
            case("keyUsage without digitalSignature", M1, &encipher_only).refused(CERT, "lacks digitalSignature"),
            case("keyUsage with digitalSignature", Purpose::Cluster, &signing),
            case("a CA as a member's", M1, &authority).refused(CERT, "is a CA certificate"),
            case("a CA as the cluster's", Purpose::Cluster, &authority)
                .refused(CERT, "expected an end-entity certificate"),
            // Names.
            case("another member's name", M1, &m2).refused(CERT, "does not name the member \"m1\""),
            case("no names, as a member's", M1, &unnamed).refused(CERT, "it has none"),
            case("no names, as the cluster's", Purpose::Cluster, &unnamed),
            // CA.
            case("issued by the CA", M1, &issued).with_ca(&authority),
            case("issued by the CA, as the cluster's", Purpose::Cluster, &issued).with_ca(&authority),
            case("issued by the CA, without it", M1, &issued),
            case("issued by another CA", M1, &issued)
                .with_ca(&another_authority)
                .refused(CERT, "is not issued by the CA in in/ca.crt: no certificate in that file issued it"),
            case("self-signed, with a CA", M1, &good)
                .with_ca(&authority)
                .refused(CERT, "is not issued by the CA in in/ca.crt"),
            case("issued, clientAuth only, as the cluster's", Purpose::Cluster, &issued_client_only)
                .with_ca(&authority)
                .refused(CERT, "lacks serverAuth"),
            case("a non-CA as the CA", M1, &issued).with_ca(&good).refused(CA, "is not a CA certificate"),
            case("a CA that may not sign certificates", M1, &issued)
                .with_ca(&no_cert_sign)
                .refused(CA, "lacks keyCertSign"),
            case("an expired CA", M1, &issued).with_ca(&expired_authority).refused(CA, "expired on"),
            Case { ca: Some(NOT_PEM.into()), ..case("garbage as the CA", M1, &issued) }
                .refused(CA, "holds no PEM data"),
            Case { ca: Some(authority.key_pem()), ..case("the CA's key as the CA", M1, &issued) }
                .refused(CA, "holds a private key, not a certificate"),
            Case {
                ca: Some(authority.cert_pem() + &authority.key_pem()),
                ..case("the CA file holding its key", M1, &issued)
            }
            .refused(CA, "also holds a private key"),
            Case {
                ca: Some(another_authority.cert_pem() + &authority.cert_pem()),
                ..case("a CA file of two CAs", M1, &issued)
            },
            Case {
                ca: Some(authority.cert_pem() + &good.cert_pem()),
                ..case("a CA file with a non-CA second", M1, &issued)
            }
            .refused(CA, "certificate 2 of 2 is not a CA certificate"),
        ];

        for case in cases {
            let got = check_pair(
                case.purpose,
                Supplied { path: CERT, pem: &case.cert },
                Supplied { path: KEY, pem: &case.key },
                case.ca.as_deref().map(|pem| Supplied { path: CA, pem }),
                now,
            );
            match (case.refused, got) {
                (None, Ok(identity)) => {
                    assert_eq!((identity.cert_pem, identity.key_pem), (case.cert, case.key), "{}", case.what);
                }
                (None, Err(e)) => panic!("{}: refused: {e}", case.what),
                (Some(_), Ok(_)) => panic!("{}: accepted", case.what),
                (Some((file, phrase)), Err(e)) => {
                    assert_eq!(e.file, file, "{}: {e}", case.what);
                    assert!(e.problem.contains(phrase), "{}: {e:?} should say {phrase:?}", case.what);
                    assert!(e.to_string().starts_with(&format!("{file}: ")), "{}: {e}", case.what);
                }
            }
        }
    }

    #[test]
    fn a_members_generated_certificate_passes_as_its_own() {
        let identity = crate::certs::generate("m1", &["127.0.0.1".into()]).unwrap();
        let cert = Supplied { path: CERT, pem: &identity.cert_pem };
        let key = Supplied { path: KEY, pem: &identity.key_pem };
        check_pair(M1, cert, key, None, SystemTime::now()).unwrap();
        let refused = check_pair(Purpose::Member("m2"), cert, key, None, SystemTime::now()).unwrap_err();
        assert!(refused.problem.contains("it has m1, 127.0.0.1"), "{refused}");
    }

    #[test]
    fn a_ca_file_is_checked_on_its_own() {
        let now = SystemTime::now();
        let authority = ca("Test CA");
        check_ca(Supplied { path: CA, pem: &authority.cert_pem() }, now).unwrap();
        let leaf = member(&["m1"], |_| {});
        let refused = check_ca(Supplied { path: CA, pem: &leaf.cert_pem() }, now).unwrap_err();
        assert_eq!(refused.file, CA);
        assert!(refused.problem.contains("is not a CA certificate"), "{refused}");
        let later = now + 20 * 365 * DAY;
        let refused = check_ca(Supplied { path: CA, pem: &authority.cert_pem() }, later).unwrap_err();
        assert!(refused.problem.contains("expired on"), "{refused}");
    }

    #[test]
    fn chains_to_says_whether_a_certificate_was_issued_by_the_ca() {
        let now = SystemTime::now();
        let authority = ca("Test CA");
        let another = ca("Another CA");
        let issued = make(&PKCS_ECDSA_P384_SHA384, &["m1"], |_| {}, Some(&authority));
        let client_only =
            make(&PKCS_ECDSA_P384_SHA384, &["m1"], |p| p.extended_key_usages = vec![Eku::ClientAuth], Some(&authority));
        let any = make(&PKCS_ECDSA_P384_SHA384, &["m1"], |p| p.extended_key_usages = vec![Eku::Any], Some(&authority));
        let self_signed = member(&["m1"], |_| {});
        let (ca_pem, issued_pem) = (authority.cert_pem(), issued.cert_pem());
        let cases: [(&str, &str, &str, Purpose<'_>, bool); 13] = [
            ("issued, as a member's", &issued_pem, &ca_pem, M1, true),
            ("issued, as the cluster's", &issued_pem, &ca_pem, Purpose::Cluster, true),
            ("the name is not judged here", &issued_pem, &ca_pem, Purpose::Member("m2"), true),
            ("anyExtendedKeyUsage", &any.cert_pem(), &ca_pem, M1, true),
            ("another CA", &issued_pem, &another.cert_pem(), M1, false),
            ("among two CAs", &issued_pem, &(another.cert_pem() + &ca_pem), M1, true),
            ("clientAuth only, as a member's", &client_only.cert_pem(), &ca_pem, M1, false),
            ("clientAuth only, as the cluster's", &client_only.cert_pem(), &ca_pem, Purpose::Cluster, false),
            ("a self-signed certificate as its own CA", &self_signed.cert_pem(), &self_signed.cert_pem(), M1, false),
            ("the CA as its own leaf", &ca_pem, &ca_pem, Purpose::Cluster, false),
            ("garbage as the certificate", NOT_PEM, &ca_pem, M1, false),
            ("garbage as the CA", &issued_pem, NOT_X509, M1, false),
            ("the key as the certificate", &issued.key_pem(), &ca_pem, M1, false),
        ];
        for (what, cert, ca, purpose, want) in cases {
            assert_eq!(chains_to(cert, ca, purpose, now), want, "{what}");
        }
        assert!(!chains_to(&issued_pem, &ca_pem, M1, now + 2 * 365 * DAY), "expired");
        assert!(!chains_to(&issued_pem, &ca_pem, M1, UNIX_EPOCH - DAY), "before 1970");
    }

    /// The reader never panics and never reads past its input, whatever the bytes.
    #[test]
    fn damaged_certificates_are_refused_without_panicking() {
        let made = member(&["m1"], |p| {
            p.extended_key_usages = vec![Eku::ServerAuth, Eku::ClientAuth];
            p.key_usages = vec![Ku::DigitalSignature];
        });
        let der = made.cert.der().to_vec();
        let fields = read_fields(&der).unwrap();
        assert!(fields.key_usage.is_some() && fields.eku.is_some() && fields.san.is_some() && !fields.ca);
        for end in 0..der.len() {
            assert!(read_fields(&der[..end]).is_none(), "truncated at {end}");
        }
        for at in 0..der.len() {
            for value in [0x00, 0x7f, 0x80, 0x84, 0xff] {
                let mut damaged = der.clone();
                damaged[at] = value;
                if let Some(fields) = read_fields(&damaged) {
                    let _ = (
                        usage_problem(&fields, M1),
                        names_it_has(&fields),
                        validity_problem(&fields, SystemTime::now()),
                    );
                }
            }
        }
    }

    #[test]
    fn times_and_dates_read_as_the_calendar_says() {
        let at = |tag: u8, text: &str| {
            let mut bytes = vec![tag, text.len() as u8];
            bytes.extend_from_slice(text.as_bytes());
            der::time(&bytes).map(|(t, _)| t)
        };
        assert_eq!(at(0x17, "700101000000Z"), Some(0));
        assert_eq!(at(0x17, "491231235959Z"), Some(2_524_607_999));
        assert_eq!(at(0x17, "500101000000Z"), Some(-631_152_000));
        assert_eq!(at(0x18, "20240229120000Z"), Some(1_709_208_000));
        assert_eq!(at(0x18, "99991231235959Z"), Some(253_402_300_799));
        assert_eq!(at(0x17, "701301000000Z"), None, "month 13");
        assert_eq!(at(0x17, "7001010000Z"), None, "too short");
        assert_eq!(at(0x17, "7é010100000Z"), None, "not digits (12 bytes, a character across index 2)");
        assert_eq!(at(0x17, "+70101000000Z"), None, "a sign");
        assert_eq!(at(0x04, "700101000000Z"), None, "not a time");
        assert_eq!(date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(date(1_709_208_000), "2024-02-29 12:00:00 UTC");
        assert_eq!(date(-631_152_000), "1950-01-01 00:00:00 UTC");
        assert_eq!(date(253_402_300_799), "9999-12-31 23:59:59 UTC");
        let _ = (date(i64::MIN), date(i64::MAX));
        assert_eq!(der::dotted(oid::SERVER_AUTH), "1.3.6.1.5.5.7.3.1");
        assert_eq!(der::dotted(oid::ANY_EKU), "2.5.29.37.0");
        assert_eq!(der::dotted(&[0x88, 0x37, 0x03]), "2.999.3");
        assert_eq!(der::dotted(&[0xff; 12]), "an unreadable identifier");
    }

    #[test]
    fn lengths_beyond_the_bytes_are_refused() {
        assert_eq!(der::any(&[0x30, 0x05, 1, 2]), None);
        assert_eq!(der::any(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(der::any(&[0x30, 0x88, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(der::any(&[0x30, 0x80]), None, "indefinite length");
        assert_eq!(der::any(&[0x1f, 0x01, 0x00]), None, "a multi-byte tag");
        assert_eq!(der::any(&[0x30]), None);
        assert!(der::elements(&[0x30, 0x00, 0x30]).is_none());
        assert_eq!(der::any(&[0x30, 0x82, 0x00, 0x01, 7]), Some((0x30, &[7u8][..], &[][..])));
    }

    #[test]
    fn the_debug_form_of_a_supplied_file_leaves_its_contents_out() {
        let shown = format!("{:?}", Supplied { path: KEY, pem: "-----BEGIN PRIVATE KEY-----secret" });
        assert!(shown.contains(KEY) && !shown.contains("secret"), "{shown}");
    }
}
