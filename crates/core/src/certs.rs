//! Generating the self-signed certificates members identify with: ECDSA P-256, about ten years
//! of validity, the member name as common name and DNS subject alternative name.
//!
//! P-256 rather than Go microcluster's P-384: every mutual-TLS handshake signs twice and
//! verifies four signatures, and ring computes P-384 with generic big-number code where P-256
//! has assembly. A handshake cost about 20 M instructions with P-384; members make one per
//! member they first talk to (a joiner with every member, every member with a joiner), so in
//! a large cluster the joins were bound by it. Members with P-384 certificates (from earlier
//! versions, or supplied) are trusted as before.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};

use crate::tls::Identity;

/// Certificate generation failed.
#[derive(Debug, thiserror::Error)]
#[error("generating a certificate for {name:?}: {source}")]
pub struct CertError {
    name: String,
    #[source]
    source: rcgen::Error,
}

/// A new self-signed certificate for `name`, with `name` (and `extra_sans`) as DNS SANs.
pub fn generate(name: &str, extra_sans: &[String]) -> Result<Identity, CertError> {
    let err = |source| CertError { name: name.to_owned(), source };
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "microcluster");
    params.distinguished_name = dn;
    for san in std::iter::once(name).chain(extra_sans.iter().map(String::as_str)) {
        let entry = match san.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(san.try_into().map_err(err)?),
        };
        params.subject_alt_names.push(entry);
    }
    let now = std::time::SystemTime::now();
    params.not_before = (now - std::time::Duration::from_secs(60)).into();
    params.not_after = (now + std::time::Duration::from_secs(10 * 365 * 24 * 3600)).into();
    let cert = params.self_signed(&key).map_err(err)?;
    Ok(Identity { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls;

    #[test]
    fn a_generated_certificates_expiry_reads_back_ten_years_ahead() {
        let identity = generate("m1", &[]).expect("a certificate");
        let now = std::time::SystemTime::now();
        let days = tls::days_left_pem(&identity.cert_pem, now).expect("its expiry");
        assert!((3649..=3650).contains(&days), "{days} days left");
        let later = now + std::time::Duration::from_secs(3651 * 86_400);
        assert!(tls::days_left_pem(&identity.cert_pem, later).expect("its expiry") < 0);
    }

    #[test]
    fn generated_certificates_carry_the_name_and_work_for_tls() {
        let id = generate("mc1", &["127.0.0.1".into()]).unwrap();
        let der = tls::parse_cert(&id.cert_pem, "test").unwrap();
        assert!(tls::cert_has_dns_name(&der, "mc1").unwrap());
        assert!(!tls::cert_has_dns_name(&der, "mc2").unwrap());
        assert_eq!(id.fingerprint().unwrap().len(), 64);
        tls::server_config(&id).unwrap();
        tls::client_config(Some(&id), vec![id.fingerprint().unwrap()]).unwrap();
        assert_ne!(generate("mc1", &[]).unwrap().fingerprint().unwrap(), id.fingerprint().unwrap());
    }

    #[test]
    fn a_pair_that_does_not_belong_together_fails_its_check() {
        let (a, b) = (generate("mc1", &[]).unwrap(), generate("mc2", &[]).unwrap());
        a.check().unwrap();
        let swapped = Identity { cert_pem: a.cert_pem.clone(), key_pem: b.key_pem.clone() };
        assert!(matches!(swapped.check(), Err(tls::TlsError::KeyMismatch)), "{:?}", swapped.check());
        let not_a_key = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n";
        let garbage_key = Identity { cert_pem: a.cert_pem.clone(), key_pem: not_a_key.into() };
        assert!(matches!(garbage_key.check(), Err(tls::TlsError::Config(_))), "{:?}", garbage_key.check());
        let garbage_cert = Identity { cert_pem: "garbage".into(), key_pem: a.key_pem.clone() };
        assert!(matches!(garbage_cert.check(), Err(tls::TlsError::NoCertificate { .. })));
        let not_x509 = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n";
        let bad_cert = Identity { cert_pem: not_x509.into(), key_pem: a.key_pem };
        assert!(matches!(bad_cert.check(), Err(tls::TlsError::Invalid(_))), "{:?}", bad_cert.check());
    }

    /// Members talk to each other over short connections (heartbeats, trust updates): after
    /// the first, a connection resumes the TLS session instead of paying for two ECDSA
    /// signatures again.
    #[test]
    fn a_second_connection_resumes_the_session() {
        use std::io::{Read, Write};
        let server_id = generate("m1", &[]).unwrap();
        let client_id = generate("m2", &[]).unwrap();
        let server = tls::server_config(&server_id).unwrap();
        let client = tls::client_config(Some(&client_id), vec![server_id.fingerprint().unwrap()]).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let serving = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut tcp, _) = listener.accept().unwrap();
                let mut conn = rustls::ServerConnection::new(server.clone()).unwrap();
                let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).unwrap();
                stream.write_all(b"y").unwrap();
                stream.flush().unwrap();
            }
        });
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let mut tcp = std::net::TcpStream::connect(&address).unwrap();
            let mut conn = rustls::ClientConnection::new(client.clone(), tls::server_name(&address)).unwrap();
            let mut stream = rustls::Stream::new(&mut conn, &mut tcp);
            stream.write_all(b"x").unwrap();
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).unwrap();
            kinds.push(conn.handshake_kind());
        }
        serving.join().unwrap();
        assert_eq!(kinds, [Some(rustls::HandshakeKind::Full), Some(rustls::HandshakeKind::Resumed)]);
    }
}
