//! Generating the self-signed certificates members identify with: ECDSA P-384, about ten years
//! of validity, the member name as common name and DNS subject alternative name.

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P384_SHA384, SanType};

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
    let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).map_err(err)?;
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
}
