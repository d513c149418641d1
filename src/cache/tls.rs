//! TLS to Redis (`rediss://`): rustls, verifying the server's certificate against the system's
//! roots or, for a private CA, only the bundle in `REDIS_TLS_CA_FILE`. There is no setting
//! that skips verification.

use std::path::Path;

use fred::prelude::{TlsConfig, TlsConnector};
use fred::rustls::pki_types::CertificateDer;
use fred::rustls::pki_types::pem::PemObject;
use fred::rustls::{ClientConfig, RootCertStore};

/// The TLS settings of a `rediss://` connection: the CA bundle at `ca_file`, else the system's
/// roots. An error names what is wrong with the bundle.
pub fn config(ca_file: Option<&Path>) -> Result<TlsConfig, String> {
    let Some(path) = ca_file else {
        return TlsConnector::default_rustls()
            .map(TlsConfig::from)
            .map_err(|e| format!("cannot load the system's CA certificates: {e}"));
    };
    let unreadable =
        |e: &dyn std::fmt::Display| format!("REDIS_TLS_CA_FILE {}: {e}", path.display());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
        roots
            .add(cert.map_err(|e| unreadable(&e))?)
            .map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"holds no PEM certificate"));
    }
    let client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfig::from(TlsConnector::from(client)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_bundle_that_cannot_be_used_is_an_error_that_names_it() {
        let missing = config(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
        let empty = std::env::temp_dir().join(format!("pss-empty-{:08x}.pem", fastrand::u32(..)));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let none = config(Some(&empty)).unwrap_err();
        std::fs::remove_file(&empty).unwrap();
        assert!(none.contains("no PEM certificate"), "{none}");
    }
}
