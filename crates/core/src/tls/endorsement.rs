//! A cluster certificate vouching for its successor: when the cluster certificate is replaced,
//! the old key signs the new certificate, so a member that was away (and still pins the old
//! one) can accept the new one from any member without trusting whoever answers first.

use rustls::SignatureScheme;
use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::{Identity, TlsError, fingerprint, parse_cert, parse_key, provider};

/// What is signed: a fixed context, so that the signature cannot be taken for anything else
/// the key signs (TLS handshakes sign their own contexts), then the new certificate's DER.
const CONTEXT: &[u8] = b"microcluster: the cluster certificate that follows replaces the signer\0";

/// The schemes a cluster key may sign with, in order of preference.
const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
];

/// One replacement of the cluster certificate: the new certificate, signed by the old key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endorsement {
    /// Fingerprint of the certificate it replaces (the signer's).
    pub previous: String,
    /// PEM of the new certificate.
    pub certificate: String,
    /// The signature scheme, as TLS numbers it.
    pub scheme: u16,
    /// Hex of the signature over the context and the new certificate's DER.
    pub signature: String,
}

fn statement(new: &CertificateDer<'_>) -> Vec<u8> {
    let mut message = CONTEXT.to_vec();
    message.extend_from_slice(new.as_ref());
    message
}

/// `old` (the current cluster certificate and key) vouches for `new_cert_pem`.
pub fn endorse(old: &Identity, new_cert_pem: &str) -> Result<Endorsement, TlsError> {
    let new = parse_cert(new_cert_pem, "new cluster certificate")?;
    let key = provider().key_provider.load_private_key(parse_key(&old.key_pem, "cluster key")?)?;
    let signer = key
        .choose_scheme(SCHEMES)
        .ok_or_else(|| TlsError::Invalid("the cluster key cannot sign with any scheme this build knows".into()))?;
    let signature = signer.sign(&statement(&new))?;
    Ok(Endorsement {
        previous: old.fingerprint()?,
        certificate: new_cert_pem.to_owned(),
        scheme: u16::from(signer.scheme()),
        signature: super::hex(&signature),
    })
}

/// Whether `signer_cert_pem` signed `endorsement` (and is the certificate it names).
pub fn verify(signer_cert_pem: &str, endorsement: &Endorsement) -> bool {
    let (Ok(signer), Ok(new)) = (parse_cert(signer_cert_pem, "signer"), parse_cert(&endorsement.certificate, "new"))
    else {
        return false;
    };
    if !fingerprint(&signer).eq_ignore_ascii_case(&endorsement.previous) {
        return false;
    }
    let Some(signature) = unhex(&endorsement.signature) else { return false };
    let Ok(signer) = webpki::EndEntityCert::try_from(&signer) else { return false };
    let scheme = SignatureScheme::from(endorsement.scheme);
    let message = statement(&new);
    provider()
        .signature_verification_algorithms
        .mapping
        .iter()
        .filter(|(s, _)| *s == scheme)
        .flat_map(|(_, algorithms)| algorithms.iter())
        .any(|algorithm| signer.verify_signature(*algorithm, &message, &signature).is_ok())
}

/// Whether `chain` leads from `start` (the PEM of a certificate this member holds) to the
/// certificate with fingerprint `target`: every link from the one `start` signed to the one
/// that names `target` must be signed by the certificate before it. `start` itself leads to
/// itself.
pub fn follow(start: &str, chain: &[Endorsement], target: &str) -> bool {
    let Ok(start_fingerprint) = super::fingerprint_pem(start) else { return false };
    if start_fingerprint.eq_ignore_ascii_case(target) {
        return true;
    }
    let Some(first) = chain.iter().position(|e| e.previous.eq_ignore_ascii_case(&start_fingerprint)) else {
        return false;
    };
    let mut signer = start.to_owned();
    for link in &chain[first..] {
        if !verify(&signer, link) {
            return false;
        }
        if super::fingerprint_pem(&link.certificate).is_ok_and(|f| f.eq_ignore_ascii_case(target)) {
            return true;
        }
        signer = link.certificate.clone();
    }
    false
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || text.len() > 4096 {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use super::*;
    use crate::certs;

    #[test]
    fn an_old_key_vouches_for_its_successor_and_nothing_else() {
        let (a, b, c) = (
            certs::generate("a", &[]).unwrap(),
            certs::generate("b", &[]).unwrap(),
            certs::generate("c", &[]).unwrap(),
        );
        let ab = endorse(&a, &b.cert_pem).unwrap();
        assert!(verify(&a.cert_pem, &ab));
        assert!(!verify(&c.cert_pem, &ab), "another signer");
        let mut forged = ab.clone();
        forged.certificate = c.cert_pem.clone();
        assert!(!verify(&a.cert_pem, &forged), "another certificate under the same signature");
        let mut flipped = ab.clone();
        flipped.signature.replace_range(10..12, if &ab.signature[10..12] == "00" { "01" } else { "00" });
        assert!(!verify(&a.cert_pem, &flipped), "a changed signature");
        let mut garbage = ab.clone();
        garbage.signature = "zz".into();
        assert!(!verify(&a.cert_pem, &garbage));

        let bc = endorse(&b, &c.cert_pem).unwrap();
        let chain = vec![ab.clone(), bc.clone()];
        let (fb, fc) = (b.fingerprint().unwrap(), c.fingerprint().unwrap());
        assert!(follow(&a.cert_pem, &chain, &fc));
        assert!(follow(&a.cert_pem, &chain, &fb), "part of the way");
        assert!(follow(&b.cert_pem, &chain, &fc));
        assert!(follow(&c.cert_pem, &chain, &fc), "already there");
        assert!(!follow(&c.cert_pem, &chain, &fb), "never backwards");
        let d = certs::generate("d", &[]).unwrap();
        assert!(!follow(&d.cert_pem, &chain, &fc), "from a certificate never in the chain");
        assert!(!follow(&a.cert_pem, &chain, &d.fingerprint().unwrap()), "to one it never reaches");
        assert!(!follow(&a.cert_pem, &[ab, forged], &fc), "a broken link");
    }
}
