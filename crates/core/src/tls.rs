//! TLS by pinning, not by a CA chain: every certificate here is self-signed, a member trusts a
//! peer whose certificate fingerprint is in its trust store, and a client trusts a member that
//! presents the cluster certificate whose fingerprint it knows.
//!
//! The verifiers below still check that the peer owns the certificate's key (the handshake
//! signature, with rustls' own helpers); they only replace "is it signed by a CA" with "is it
//! the certificate we expect". Client certificates are accepted at the handshake and judged per
//! request against the current trust store, so joiners (not yet trusted) can reach the
//! endpoints open to them and a removed member is refused on its very next request.

use std::sync::Arc;

use crate::der;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

mod endorsement;
mod live;

pub use endorsement::{Endorsement, endorse, follow as follow_endorsements, verify as verify_endorsement};
pub use live::{
    LiveClient, LiveIdentity, Pins, Presented, Sessions, live_client_config, live_server_config,
    recording_client_config,
};

/// A certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The PEM text holds no certificate.
    #[error("no PEM certificate found in {what}")]
    NoCertificate {
        /// Where we looked.
        what: String,
    },
    /// The PEM text holds no private key.
    #[error("no PEM private key found in {what}")]
    NoKey {
        /// Where we looked.
        what: String,
    },
    /// rustls refused the configuration (e.g. the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The certificate could not be parsed as X.509.
    #[error("invalid certificate: {0}")]
    Invalid(String),
    /// The private key is not the certificate's.
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
}

/// The crypto provider used everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Lower-case hex SHA-256 of a certificate's DER encoding (microcluster's fingerprint).
pub fn fingerprint(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// Lower-case hex encoding.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The first certificate in PEM text.
pub fn parse_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>, TlsError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|_| TlsError::NoCertificate { what: what.to_owned() })
}

/// The fingerprint of the first certificate in PEM text.
pub fn fingerprint_pem(pem: &str) -> Result<String, TlsError> {
    Ok(fingerprint(&parse_cert(pem, "certificate")?))
}

/// The fingerprints of every certificate in PEM text (at least one, at most
/// [`MAX_CERTIFICATES`]), in order.
pub fn fingerprints_pem(pem: &str) -> Result<Vec<String>, TlsError> {
    let mut fingerprints = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|_| TlsError::NoCertificate { what: "certificate".into() })?;
        if fingerprints.len() == MAX_CERTIFICATES {
            return Err(TlsError::Invalid(format!("more than {MAX_CERTIFICATES} certificates in one entry")));
        }
        fingerprints.push(fingerprint(&cert));
    }
    if fingerprints.is_empty() {
        return Err(TlsError::NoCertificate { what: "certificate".into() });
    }
    Ok(fingerprints)
}

/// How many certificates a member's entry may hold: its own, and its next one during a
/// rotation.
pub const MAX_CERTIFICATES: usize = 2;

/// When the certificate in PEM text stops being valid (its `notAfter`).
pub fn not_after_pem(pem: &str) -> Result<std::time::SystemTime, TlsError> {
    not_after(&parse_cert(pem, "certificate")?)
}

/// Whole days from `now` until the certificate in PEM text expires (negative once expired).
pub fn days_left_pem(pem: &str, now: std::time::SystemTime) -> Result<i64, TlsError> {
    let end = not_after_pem(pem)?;
    Ok(match end.duration_since(now) {
        Ok(ahead) => (ahead.as_secs() / 86_400) as i64,
        Err(behind) => -((behind.duration().as_secs().div_ceil(86_400)) as i64),
    })
}

/// When a certificate stops being valid, read from its DER: `Certificate` is a SEQUENCE whose
/// first element, `TBSCertificate`, holds an optional `[0]` version, the serial number, the
/// signature algorithm, the issuer, then `Validity` (`notBefore`, `notAfter`). Read by hand
/// rather than with an X.509 crate: this one field is all the daemon needs, and the reader
/// only walks lengths it has checked against the bytes it holds.
pub fn not_after(cert: &CertificateDer<'_>) -> Result<std::time::SystemTime, TlsError> {
    let bad = |why: &str| TlsError::Invalid(format!("cannot read the certificate's expiry: {why}"));
    let (certificate, _) = der::element(cert.as_ref(), der::SEQUENCE).ok_or_else(|| bad("not a DER sequence"))?;
    let (tbs, _) = der::element(certificate, der::SEQUENCE).ok_or_else(|| bad("no TBSCertificate"))?;
    let mut rest = tbs;
    if rest.first() == Some(&der::VERSION) {
        rest = der::skip(rest).ok_or_else(|| bad("a broken version"))?;
    }
    for what in ["serial number", "signature algorithm", "issuer"] {
        rest = der::skip(rest).ok_or_else(|| bad(&format!("a broken {what}")))?;
    }
    let (validity, _) = der::element(rest, der::SEQUENCE).ok_or_else(|| bad("no validity"))?;
    let after_before = der::skip(validity).ok_or_else(|| bad("a broken notBefore"))?;
    let (seconds, _) = der::time(after_before).ok_or_else(|| bad("a broken notAfter"))?;
    let seconds = u64::try_from(seconds).map_err(|_| bad("a notAfter before 1970"))?;
    Ok(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

/// The first private key in PEM text.
pub fn parse_key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|_| TlsError::NoKey { what: what.to_owned() })
}

/// Whether the certificate names `name` among its DNS subject alternative names.
pub fn cert_has_dns_name(cert: &CertificateDer<'_>, name: &str) -> Result<bool, TlsError> {
    let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| TlsError::Invalid(e.to_string()))?;
    let Ok(server_name) = ServerName::try_from(name) else {
        return Ok(false);
    };
    Ok(ee.verify_is_valid_for_subject_name(&server_name).is_ok())
}

/// A certificate and its key, as PEM.
#[derive(Clone)]
pub struct Identity {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM.
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

impl Identity {
    /// The certificate's fingerprint.
    pub fn fingerprint(&self) -> Result<String, TlsError> {
        fingerprint_pem(&self.cert_pem)
    }

    /// Fails unless the certificate parses as X.509, the key loads, and the key is the
    /// certificate's: a pair that would only fail later, at a handshake, fails here, where the
    /// caller can still say which file is at fault.
    pub fn check(&self) -> Result<(), TlsError> {
        let cert = parse_cert(&self.cert_pem, "certificate")?;
        webpki::EndEntityCert::try_from(&cert).map_err(|e| TlsError::Invalid(e.to_string()))?;
        let key = provider().key_provider.load_private_key(parse_key(&self.key_pem, "key")?)?;
        match rustls::sign::CertifiedKey::new(vec![cert], key).keys_match() {
            // ring knows every key it loads; "unknown" would only mean it cannot tell.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
            Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch),
            Err(other) => Err(TlsError::Invalid(other.to_string())),
        }
    }

    fn parts(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        Ok((vec![parse_cert(&self.cert_pem, "certificate")?], parse_key(&self.key_pem, "key")?))
    }
}

/// Accepts a server whose certificate has one of the pinned fingerprints.
#[derive(Debug)]
struct PinnedServer {
    pins: Arc<Pins>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity);
        if self.pins.contains(&seen) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!("server certificate {seen} is not the expected cluster certificate")))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Accepts any client certificate whose key signed the handshake, or none; whether the
/// certificate is trusted is decided per request from the trust store.
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Client configuration: presents `identity` (if any) and accepts only a server whose
/// certificate has one of `server_fingerprints`.
pub fn client_config(
    identity: Option<&Identity>,
    server_fingerprints: Vec<String>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer { pins: Pins::new(server_fingerprints), provider: provider.clone() });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match identity {
        Some(identity) => {
            let (chain, key) = identity.parts()?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Server configuration: presents `identity` and asks clients for (but does not require) a
/// certificate.
pub fn server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let (chain, key) = identity.parts()?;
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(AnyClientCert { provider }))
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The server name to send for an `ip:port` or `host:port` address (SNI is not used for trust).
pub fn server_name(address: &str) -> ServerName<'static> {
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).unwrap_or_else(|_| ServerName::try_from("microcluster").expect("valid name"))
}
