//! A throwaway PKI for the TLS tests: a CA, server and client certificates
//! written as PEM files into a scratch directory (removed on drop), and
//! rustls configs for test clients and backends that trust it.

use anyhow::Result;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate and key, as files and as DER.
pub struct Issued {
    /// PEM certificate file.
    pub cert: PathBuf,
    /// PEM key file.
    pub key: PathBuf,
    /// The certificate.
    pub der: CertificateDer<'static>,
    key_pem: String,
}

impl Issued {
    /// The chain and key, for a rustls config.
    pub fn pair(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (vec![self.der.clone()], PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("PEM key"))
    }
}

/// A CA and the directory its files go to.
pub struct Pki {
    /// Where the PEM files are.
    pub dir: PathBuf,
    /// The CA certificate file.
    pub ca_file: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    serial: AtomicU64,
}

impl Pki {
    /// A new CA named `name`, its files in a fresh scratch directory.
    pub fn new(name: &str) -> Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "weir-pki-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem())?;
        Ok(Self { dir, ca_file, ca, serial: AtomicU64::new(0) })
    }

    fn issue(&self, file: &str, mut params: CertificateParams) -> Result<Issued> {
        let key = KeyPair::generate()?;
        params.serial_number = Some(self.serial.fetch_add(1, Ordering::SeqCst).wrapping_add(2).into());
        let cert = params.signed_by(&key, &self.ca)?;
        let (cert_path, key_path) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok(Issued { cert: cert_path, key: key_path, der: cert.der().clone(), key_pem: key.serialize_pem() })
    }

    /// A server certificate for `names`, with `cn` as its common name.
    pub fn server(&self, file: &str, names: &[&str]) -> Result<Issued> {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("server"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file, params)
    }

    /// A server certificate for `names` that expires at the start of `year`.
    pub fn server_until(&self, file: &str, names: &[&str], year: i32) -> Result<Issued> {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("server"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_after = date_time_ymd(year, 1, 1);
        self.issue(file, params)
    }

    /// A client certificate with common name `cn`; `expired` makes one
    /// whose validity ended in 2001.
    pub fn client(&self, file: &str, cn: &str, expired: bool) -> Result<Issued> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        self.issue(file, params)
    }

    /// Roots holding this CA.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("CA certificate");
        roots
    }

    /// A client config trusting this CA, offering `alpn`, with an optional
    /// client certificate.
    pub fn client_config(&self, alpn: &[&str], identity: Option<&Issued>) -> Arc<rustls::ClientConfig> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(self.roots());
        let mut config = match identity {
            Some(id) => {
                let (chain, key) = id.pair();
                builder.with_client_auth_cert(chain, key).expect("client certificate")
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(config)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client config that accepts any server certificate, to look at which
/// one a server presents (for a name it may not cover, or no SNI at all).
pub fn any_certificate() -> Arc<rustls::ClientConfig> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(weir::tls::AnyCertificate::new()))
        .with_no_client_auth();
    Arc::new(config)
}

/// The ring crypto provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config serving one certificate, with ALPN `h2` and `http/1.1`.
pub fn server_config(cert: &Issued) -> Arc<rustls::ServerConfig> {
    let (chain, key) = cert.pair();
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A server config serving one certificate and requiring client
/// certificates from `pki`'s CA.
pub fn server_config_requiring_clients(cert: &Issued, pki: &Pki) -> Arc<rustls::ServerConfig> {
    let (chain, key) = cert.pair();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(pki.roots()), provider())
        .build()
        .expect("client verifier");
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .expect("server certificate");
    Arc::new(config)
}

/// Connect over TLS to `addr` with server name `name`.
pub async fn connect(
    addr: std::net::SocketAddr,
    name: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(name.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio::time::timeout(crate::STEP, tokio_rustls::TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))?
}
