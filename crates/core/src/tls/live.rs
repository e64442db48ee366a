//! Certificates that change under running listeners and clients (a rotation): the TLS
//! configurations are built once, and what they present, accept and resume is read at each
//! handshake from the holders below. Connections already made keep what they were made with.

use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, ResolvesClientCert};
use rustls::pki_types::ServerName;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{NamedGroup, SignatureScheme};

use super::{AnyClientCert, Identity, PinnedServer, TlsError, parse_cert, parse_key, provider};

/// A certificate and key that can be replaced while in use: the next handshake presents the
/// new one (as a server, or as a client certificate).
pub struct LiveIdentity {
    current: RwLock<(Identity, String, Arc<CertifiedKey>)>,
}

impl std::fmt::Debug for LiveIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveIdentity").field("fingerprint", &self.fingerprint()).finish_non_exhaustive()
    }
}

impl LiveIdentity {
    /// Starts with `identity` (checked: the key must be the certificate's).
    pub fn new(identity: &Identity) -> Result<Arc<LiveIdentity>, TlsError> {
        Ok(Arc::new(LiveIdentity { current: RwLock::new(load(identity)?) }))
    }

    /// Presents `identity` from the next handshake on.
    pub fn replace(&self, identity: &Identity) -> Result<(), TlsError> {
        let loaded = load(identity)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = loaded;
        Ok(())
    }

    /// The certificate and key presented now.
    pub fn identity(&self) -> Identity {
        self.current.read().unwrap_or_else(PoisonError::into_inner).0.clone()
    }

    /// The fingerprint of the certificate presented now.
    pub fn fingerprint(&self) -> String {
        self.current.read().unwrap_or_else(PoisonError::into_inner).1.clone()
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).2.clone()
    }
}

fn load(identity: &Identity) -> Result<(Identity, String, Arc<CertifiedKey>), TlsError> {
    identity.check()?;
    let cert = parse_cert(&identity.cert_pem, "certificate")?;
    let fingerprint = super::fingerprint(&cert);
    let key = provider().key_provider.load_private_key(parse_key(&identity.key_pem, "key")?)?;
    Ok((identity.clone(), fingerprint, Arc::new(CertifiedKey::new(vec![cert], key))))
}

impl ResolvesServerCert for LiveIdentity {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for LiveIdentity {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The server certificate fingerprints a client accepts; two while a cluster certificate is
/// being replaced, so that members presenting either are reached.
#[derive(Debug, Default)]
pub struct Pins(RwLock<Vec<String>>);

impl Pins {
    /// Accepting these fingerprints.
    pub fn new(fingerprints: Vec<String>) -> Arc<Pins> {
        Arc::new(Pins(RwLock::new(fingerprints)))
    }

    /// Accepts these from the next handshake on (and no other).
    pub fn set(&self, fingerprints: Vec<String>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = fingerprints;
    }

    /// The fingerprints accepted now.
    pub fn get(&self) -> Vec<String> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether `fingerprint` is accepted.
    pub fn contains(&self, fingerprint: &str) -> bool {
        self.0.read().unwrap_or_else(PoisonError::into_inner).iter().any(|f| f.eq_ignore_ascii_case(fingerprint))
    }
}

/// A client's resumable sessions, which can be forgotten at once: a session resumed after the
/// client's certificate changed would still prove the old certificate to the server.
#[derive(Debug)]
pub struct Sessions {
    cache: RwLock<Arc<ClientSessionMemoryCache>>,
    /// Until when no new session is kept: a connection made with the old certificate may hand
    /// over its session only after [`Sessions::forget`] ran (a server sends its tickets after
    /// the handshake, and the client reads them with its first answer).
    quiet_until: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How long after [`Sessions::forget`] no session is kept.
const QUIET: std::time::Duration = std::time::Duration::from_secs(10);

/// Sessions remembered per client configuration (rustls' default).
const SESSIONS: usize = 256;

impl Sessions {
    fn new() -> Arc<Sessions> {
        Arc::new(Sessions {
            cache: RwLock::new(Arc::new(ClientSessionMemoryCache::new(SESSIONS))),
            quiet_until: std::sync::Mutex::new(None),
        })
    }

    /// Forgets every session, and keeps none for a while: connections make full handshakes
    /// (presenting the current certificate) until then.
    pub fn forget(&self) {
        *self.quiet_until.lock().unwrap_or_else(PoisonError::into_inner) = Some(std::time::Instant::now() + QUIET);
        *self.cache.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ClientSessionMemoryCache::new(SESSIONS));
    }

    fn cache(&self) -> Arc<ClientSessionMemoryCache> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Whether a new session may be kept now.
    fn keeps(&self) -> bool {
        let mut quiet = self.quiet_until.lock().unwrap_or_else(PoisonError::into_inner);
        match *quiet {
            Some(until) if std::time::Instant::now() < until => false,
            Some(_) => {
                *quiet = None;
                true
            }
            None => true,
        }
    }
}

impl ClientSessionStore for Sessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.cache().set_kx_hint(server_name, group);
    }

    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.cache().kx_hint(server_name)
    }

    fn set_tls12_session(&self, server_name: ServerName<'static>, value: rustls::client::Tls12ClientSessionValue) {
        if self.keeps() {
            self.cache().set_tls12_session(server_name, value);
        }
    }

    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.cache().tls12_session(server_name)
    }

    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.cache().remove_tls12_session(server_name);
    }

    fn insert_tls13_ticket(&self, server_name: ServerName<'static>, value: rustls::client::Tls13ClientSessionValue) {
        if self.keeps() {
            self.cache().insert_tls13_ticket(server_name, value);
        }
    }

    fn take_tls13_ticket(&self, server_name: &ServerName<'static>) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.cache().take_tls13_ticket(server_name)
    }
}

/// A client configuration built once whose certificate, accepted servers and sessions follow
/// the holders it was built from.
#[derive(Debug, Clone)]
pub struct LiveClient {
    /// The configuration to connect with.
    pub config: Arc<rustls::ClientConfig>,
    /// The servers it accepts.
    pub pins: Arc<Pins>,
    /// Its resumable sessions.
    pub sessions: Arc<Sessions>,
}

/// A client that presents `identity` (if any) and accepts the servers `pins` names.
pub fn live_client_config(identity: Option<Arc<LiveIdentity>>, pins: Arc<Pins>) -> Result<LiveClient, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer { pins: pins.clone(), provider: provider.clone() });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(identity) => builder.with_client_cert_resolver(identity),
        None => builder.with_no_client_auth(),
    };
    let sessions = Sessions::new();
    config.resumption = rustls::client::Resumption::store(sessions.clone());
    Ok(LiveClient { config: Arc::new(config), pins, sessions })
}

/// A server that presents `identity` as it is at each handshake and asks clients for (but does
/// not require) a certificate.
pub fn live_server_config(identity: Arc<LiveIdentity>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(AnyClientCert { provider }))
        .with_cert_resolver(identity);
    Ok(Arc::new(config))
}

/// The server certificate a [`recording_client_config`] client was shown, as a fingerprint.
#[derive(Debug, Default)]
pub struct Presented(std::sync::Mutex<Option<String>>);

impl Presented {
    /// The fingerprint of the certificate the last handshake was shown.
    pub fn fingerprint(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Accepts any server certificate whose key signs the handshake, and records it: for a member
/// that missed a rotation, which must learn what the others present before it can judge it.
#[derive(Debug)]
struct Recording {
    presented: Arc<Presented>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.presented.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(super::fingerprint(end_entity));
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A client that presents `identity`, accepts whatever server certificate it is shown and
/// records it (see [`Presented`]); it never resumes a session, so every connection shows one.
/// Nothing it receives may be trusted before the recorded certificate has been judged.
pub fn recording_client_config(
    identity: Arc<LiveIdentity>,
) -> Result<(Arc<rustls::ClientConfig>, Arc<Presented>), TlsError> {
    let provider = provider();
    let presented = Arc::new(Presented::default());
    let verifier = Arc::new(Recording { presented: presented.clone(), provider: provider.clone() });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(identity);
    config.resumption = rustls::client::Resumption::disabled();
    Ok((Arc::new(config), presented))
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use super::*;
    use crate::certs;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Handshakes over an in-memory pipe and returns what each side saw of the other.
    async fn handshake(client: &LiveClient, server: Arc<rustls::ServerConfig>) -> Result<(String, String), String> {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let serve = tokio::spawn(async move {
            let mut stream = acceptor.accept(far).await.map_err(|e| e.to_string())?;
            let seen =
                stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| super::super::fingerprint(c));
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
            stream.write_all(&byte).await.map_err(|e| e.to_string())?;
            stream.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(seen.unwrap_or_default())
        });
        let connector = tokio_rustls::TlsConnector::from(client.config.clone());
        let mut stream = connector.connect(super::super::server_name("m1:1"), near).await.map_err(|e| e.to_string())?;
        let presented =
            stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| super::super::fingerprint(c));
        stream.write_all(b"x").await.map_err(|e| e.to_string())?;
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.map_err(|e| e.to_string())?;
        let client_seen = serve.await.map_err(|e| e.to_string())??;
        Ok((presented.unwrap_or_default(), client_seen))
    }

    #[tokio::test]
    async fn a_connection_made_before_a_replacement_goes_on() {
        let (cluster_a, cluster_b) = (certs::generate("a", &[]).unwrap(), certs::generate("b", &[]).unwrap());
        let (member_a, member_b) = (certs::generate("m1", &[]).unwrap(), certs::generate("m1", &[]).unwrap());
        let cluster = LiveIdentity::new(&cluster_a).unwrap();
        let member = LiveIdentity::new(&member_a).unwrap();
        let client =
            live_client_config(Some(member.clone()), Pins::new(vec![cluster_a.fingerprint().unwrap()])).unwrap();
        let (near, far) = tokio::io::duplex(64 * 1024);
        let acceptor = tokio_rustls::TlsAcceptor::from(live_server_config(cluster.clone()).unwrap());
        let echo = tokio::spawn(async move {
            let mut stream = acceptor.accept(far).await.unwrap();
            let mut byte = [0u8; 1];
            while stream.read_exact(&mut byte).await.is_ok() {
                stream.write_all(&byte).await.unwrap();
                stream.flush().await.unwrap();
            }
        });
        let connector = tokio_rustls::TlsConnector::from(client.config.clone());
        let mut stream = connector.connect(super::super::server_name("m1:1"), near).await.unwrap();
        // Everything replaced, the old cluster certificate no longer accepted, sessions gone.
        cluster.replace(&cluster_b).unwrap();
        member.replace(&member_b).unwrap();
        client.pins.set(vec![cluster_b.fingerprint().unwrap()]);
        client.sessions.forget();
        for b in [1u8, 2, 3] {
            stream.write_all(&[b]).await.unwrap();
            let mut back = [0u8; 1];
            stream.read_exact(&mut back).await.unwrap();
            assert_eq!(back, [b], "the open connection still carries data");
        }
        drop(stream);
        echo.await.unwrap();
    }

    #[tokio::test]
    async fn replaced_identities_and_pins_apply_to_the_next_handshake() {
        let (cluster_a, cluster_b) = (certs::generate("a", &[]).unwrap(), certs::generate("b", &[]).unwrap());
        let (member_a, member_b) = (certs::generate("m1", &[]).unwrap(), certs::generate("m1", &[]).unwrap());
        let cluster = LiveIdentity::new(&cluster_a).unwrap();
        let member = LiveIdentity::new(&member_a).unwrap();
        let server = live_server_config(cluster.clone()).unwrap();
        let client =
            live_client_config(Some(member.clone()), Pins::new(vec![cluster_a.fingerprint().unwrap()])).unwrap();
        let (fa, fb) = (cluster_a.fingerprint().unwrap(), cluster_b.fingerprint().unwrap());
        let (ma, mb) = (member_a.fingerprint().unwrap(), member_b.fingerprint().unwrap());

        assert_eq!(handshake(&client, server.clone()).await.unwrap(), (fa.clone(), ma.clone()));
        // The server switches before the client accepts the new certificate: refused.
        cluster.replace(&cluster_b).unwrap();
        client.sessions.forget();
        let refused = handshake(&client, server.clone()).await.unwrap_err();
        assert!(refused.contains("not the expected cluster certificate"), "{refused}");
        // Both accepted during the switch, then only the new one.
        client.pins.set(vec![fa.clone(), fb.clone()]);
        assert_eq!(handshake(&client, server.clone()).await.unwrap(), (fb.clone(), ma.clone()));
        client.pins.set(vec![fb.clone()]);
        // A new client certificate is presented once the old sessions are forgotten.
        member.replace(&member_b).unwrap();
        client.sessions.forget();
        assert_eq!(handshake(&client, server.clone()).await.unwrap(), (fb.clone(), mb.clone()));
        assert_eq!(member.fingerprint(), mb);
        assert_eq!(cluster.identity().cert_pem, cluster_b.cert_pem);
        // A pair that does not belong together is refused and changes nothing.
        let swapped = Identity { cert_pem: cluster_a.cert_pem.clone(), key_pem: cluster_b.key_pem.clone() };
        assert!(cluster.replace(&swapped).is_err());
        assert_eq!(cluster.fingerprint(), fb);
    }
}
