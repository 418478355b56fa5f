//! TLS with rustls (ring provider): listeners that terminate (certificates
//! chosen by SNI, reloaded when their files change, optional client
//! certificates), pools that connect to their backends over TLS, and the
//! ClientHello reader passthrough listeners route with.

pub use weir_wire::client_hello;

use crate::config::{ListenerTls, PoolTls, Roots, TlsVersion};
use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a terminated handshake tells the phases.
#[derive(Debug, Clone, Default)]
pub struct Handshake {
    /// SNI the client sent.
    pub sni: Option<String>,
    /// ALPN protocol agreed on.
    pub alpn: Option<String>,
    /// Identity of the verified client certificate.
    pub client_identity: Option<String>,
}

/// One certificate file pair, loaded.
struct Loaded {
    key: Arc<CertifiedKey>,
    /// DNS names the certificate serves (lower case; `*.` wildcards kept).
    names: Vec<String>,
    /// The certificate file.
    path: PathBuf,
    /// When the leaf certificate expires, Unix seconds.
    not_after: Option<i64>,
}

/// A certificate a listener serves, as the metrics show it.
#[derive(Debug, Clone)]
pub struct CertificateInfo {
    /// The certificate file.
    pub path: String,
    /// The first DNS name it serves (empty when it names none).
    pub name: String,
    /// When the leaf certificate expires, Unix seconds.
    pub not_after: Option<i64>,
}

/// The certificates a listener serves, in config order (the first is the
/// default for clients whose SNI matches none or who send none).
struct CertStore(Vec<Loaded>);

impl CertStore {
    fn find(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let sni = sni.map(str::to_ascii_lowercase);
        let matching =
            sni.as_deref().and_then(|sni| self.0.iter().find(|c| c.names.iter().any(|n| name_matches(n, sni))));
        matching.or(self.0.first()).map(|c| c.key.clone())
    }
}

/// Whether a certificate name (`a.example.com` or `*.example.com`) covers a
/// host name; a wildcard stands for exactly one label, as in RFC 6125.
fn name_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == suffix),
        None => pattern == host,
    }
}

#[derive(Debug)]
struct Resolver(Arc<ArcSwap<CertStore>>);

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.iter().map(|c| &c.names)).finish()
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().find(hello.server_name())
    }
}

/// A file's identity for change detection: modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// A terminating listener's TLS: the rustls config and the certificates it
/// serves, which [`ServerTls::refresh`] reloads when their files change.
pub struct ServerTls {
    /// The config handshakes use.
    pub config: Arc<rustls::ServerConfig>,
    /// Time a client has to finish its handshake.
    pub handshake_timeout: Duration,
    store: Arc<ArcSwap<CertStore>>,
    files: Vec<CertFiles>,
    stamps: Mutex<Vec<(Stamp, Stamp)>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("certificates", &*self.store.load()).finish_non_exhaustive()
    }
}

/// One certificate's files; an optional pair (an ACME certificate not
/// issued yet) is skipped until it loads.
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    optional: bool,
}

/// A config problem, with the key it is about.
#[derive(Debug)]
pub struct TlsError {
    /// Index of the certificate pair at fault (`certificates[i]`), if any.
    pub certificate: Option<(usize, &'static str)>,
    /// What is wrong.
    pub message: String,
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: no private key read: {e}", path.display()))
}

/// DNS names of a certificate: its DNS subject alternative names, else its
/// subject common name.
/// When a certificate expires, Unix seconds.
pub fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn cert_names(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der.as_ref()) else { return Vec::new() };
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase));
    }
    names
}

/// The identity phases see for a verified client certificate: its subject
/// common name, else its first subject alternative name (DNS, URI, email).
pub fn client_identity(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    if let Some(cn) = cert.subject().iter_common_name().find_map(|cn| cn.as_str().ok()) {
        return Some(cn.to_string());
    }
    let san = cert.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => Some(s.to_string()),
        _ => None,
    })
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<Loaded, (&'static str, String)> {
    let chain = read_chain(cert).map_err(|e| ("cert", e))?;
    let key_der = read_key(key).map_err(|e| ("key", e))?;
    let names = cert_names(&chain[0]);
    let not_after = not_after(&chain[0]);
    let certified =
        CertifiedKey::from_der(chain, key_der, provider).map_err(|e| ("key", format!("{}: {e}", key.display())))?;
    Ok(Loaded { key: Arc::new(certified), names, path: cert.to_path_buf(), not_after })
}

fn load_store(files: &[CertFiles]) -> Result<CertStore, TlsError> {
    let provider = provider();
    let mut loaded = Vec::with_capacity(files.len());
    for (i, f) in files.iter().enumerate() {
        match load_pair(&f.cert, &f.key, &provider) {
            Ok(pair) => loaded.push(pair),
            Err(_) if f.optional => {}
            Err((which, message)) => return Err(TlsError { certificate: Some((i, which)), message }),
        }
    }
    Ok(CertStore(loaded))
}

fn roots_from(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_chain(path)? {
        roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

impl ServerTls {
    /// Load a listener's certificates and build its rustls config; relative
    /// paths are taken from `base`. `http` offers `h2` and `http/1.1` by
    /// default. `acme` is the files of the listener's ACME certificate,
    /// served once they exist.
    pub fn load(
        spec: &ListenerTls,
        base: &Path,
        http: bool,
        acme: Option<(PathBuf, PathBuf)>,
    ) -> Result<Self, TlsError> {
        let mut files: Vec<CertFiles> = spec
            .certificates
            .iter()
            .map(|c| CertFiles { cert: base.join(c.cert.get_ref()), key: base.join(c.key.get_ref()), optional: false })
            .collect();
        files.extend(acme.map(|(cert, key)| CertFiles { cert, key, optional: true }));
        let stamps = files.iter().map(|f| (stamp(&f.cert), stamp(&f.key))).collect();
        let store = Arc::new(ArcSwap::from_pointee(load_store(&files)?));
        let versions: &[&rustls::SupportedProtocolVersion] = match spec.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| TlsError { certificate: None, message: e.to_string() })?;
        let builder = match &spec.client_ca {
            Some(ca) => {
                let path = base.join(ca.get_ref());
                let roots = roots_from(&path).map_err(|message| TlsError { certificate: None, message })?;
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
                let verifier = if spec.client_cert_required { verifier } else { verifier.allow_unauthenticated() };
                let verifier = verifier.build().map_err(|e| TlsError { certificate: None, message: e.to_string() })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::new(Resolver(store.clone())));
        config.alpn_protocols = match &spec.alpn {
            Some(list) => list.iter().map(|p| p.as_bytes().to_vec()).collect(),
            None if http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            None => Vec::new(),
        };
        Ok(Self {
            config: Arc::new(config),
            handshake_timeout: spec.handshake_timeout.0,
            store,
            files,
            stamps: Mutex::new(stamps),
        })
    }

    /// The certificates served now.
    pub fn certificates(&self) -> Vec<CertificateInfo> {
        let store = self.store.load();
        store
            .0
            .iter()
            .map(|c| CertificateInfo {
                path: c.path.display().to_string(),
                name: c.names.first().cloned().unwrap_or_default(),
                not_after: c.not_after,
            })
            .collect()
    }

    /// Reload the certificates if any of their files changed. New
    /// handshakes use the new ones; open connections keep theirs. A file
    /// that does not load leaves the old certificates in place.
    pub fn refresh(&self) -> Result<bool, String> {
        let now: Vec<(Stamp, Stamp)> = self.files.iter().map(|f| (stamp(&f.cert), stamp(&f.key))).collect();
        let mut stamps = self.stamps.lock();
        if *stamps == now {
            return Ok(false);
        }
        match load_store(&self.files) {
            Ok(store) => {
                self.store.store(Arc::new(store));
                *stamps = now;
                Ok(true)
            }
            Err(e) => {
                // Keep the old stamps so the next round retries (a cert and
                // key written one after the other are half-new for a moment).
                let which = e.certificate.map(|(i, k)| format!("certificates[{i}].{k}: ")).unwrap_or_default();
                Err(format!("{which}{}", e.message))
            }
        }
    }

    /// Check the certificate files every `interval` for as long as the
    /// listener holds this config.
    pub fn watch(self: &Arc<Self>, listener: Arc<str>, interval: Duration) {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                tokio::time::sleep(interval).await;
                let Some(tls) = weak.upgrade() else { return };
                match tokio::task::spawn_blocking(move || tls.refresh()).await {
                    Ok(Ok(true)) => {
                        failing = false;
                        tracing::info!(%listener, "certificates reloaded");
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        if !failing {
                            tracing::warn!(%listener, "certificates not reloaded, the old ones stay: {e}");
                        }
                        failing = true;
                    }
                    Err(_) => return,
                }
            }
        });
    }

    /// Run the server side of a handshake, bounded by the handshake timeout.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> std::io::Result<(tokio_rustls::server::TlsStream<TcpStream>, Handshake)> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config.clone());
        let tls = tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        let conn = tls.get_ref().1;
        let handshake = Handshake {
            sni: conn.server_name().map(str::to_string),
            alpn: conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()),
            client_identity: conn.peer_certificates().and_then(|c| c.first()).and_then(client_identity),
        };
        Ok((tls, handshake))
    }
}

/// The client config of pools without TLS (their URIs are `http`, so it is
/// never used for a handshake).
pub fn plain_pool_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

/// A pool's TLS to its backends.
#[derive(Clone)]
pub struct BackendTls {
    /// The client config (roots, optional client certificate, ALPN).
    pub config: Arc<rustls::ClientConfig>,
    /// SNI to send instead of each backend's host.
    pub sni: Option<ServerName<'static>>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls").field("sni", &self.sni).finish_non_exhaustive()
    }
}

/// Accepts any server certificate (`verify = false`, asked for explicitly);
/// signatures are still checked, so the peer must hold the key of the
/// certificate it shows.
#[derive(Debug)]
pub struct AnyCertificate(Arc<CryptoProvider>);

impl AnyCertificate {
    /// With the ring provider's signature algorithms.
    pub fn new() -> Self {
        Self(provider())
    }
}

impl Default for AnyCertificate {
    fn default() -> Self {
        Self::new()
    }
}

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The operating system's trust store; an error when it holds no usable
/// certificate.
fn system_roots() -> Result<rustls::RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found.errors.first().map_or("none found".to_string(), |e| e.to_string());
        return Err(format!("no usable certificate in the system trust store ({why})"));
    }
    Ok(roots)
}

/// A connection to a backend: plain TCP, or TLS over it. (Its I/O traits
/// forward vectored writes too, which the HTTP/1.1 codec's `writev` of a
/// head and a body needs.)
pub enum BackendStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, client side.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl BackendStream {
    /// Connect to `address` (`host:port`) with `TCP_NODELAY`, and run the
    /// TLS handshake when the pool has `tls`.
    pub async fn connect(address: &str, tls: Option<&BackendTls>) -> std::io::Result<BackendStream> {
        let stream = TcpStream::connect(address).await?;
        let _ = stream.set_nodelay(true);
        Ok(match tls {
            None => BackendStream::Plain(stream),
            Some(tls) => BackendStream::Tls(Box::new(tls.connect(address, stream).await?)),
        })
    }
}

impl tokio::io::AsyncRead for BackendStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for BackendStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Tls(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Plain(s) => s.is_write_vectored(),
            BackendStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            BackendStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Which key of `[pools.NAME.tls]` a [`BackendTls::load`] error is about.
pub type KeyedError = (&'static str, String);

impl BackendTls {
    /// Build a pool's client config; `alpn` is what to offer (HTTP pools:
    /// `h2` or `http/1.1`, TCP pools: nothing).
    pub fn load(spec: &PoolTls, base: &Path, alpn: &[&[u8]]) -> Result<Self, KeyedError> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("tls", e.to_string()))?;
        let builder = if !spec.verify {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyCertificate::new()))
        } else {
            let roots = match &spec.ca {
                Some(ca) => roots_from(&base.join(ca.get_ref())).map_err(|e| ("ca", e))?,
                None if spec.roots == Roots::System => system_roots().map_err(|e| ("roots", e))?,
                None => rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
            };
            builder.with_root_certificates(roots)
        };
        let mut config = match (&spec.cert, &spec.key) {
            (Some(cert), Some(key)) => {
                let chain = read_chain(&base.join(cert.get_ref())).map_err(|e| ("cert", e))?;
                let key = read_key(&base.join(key.get_ref())).map_err(|e| ("key", e))?;
                builder.with_client_auth_cert(chain, key).map_err(|e| ("key", e.to_string()))?
            }
            _ => builder.with_no_client_auth(),
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let sni = spec.sni.as_ref().and_then(|s| ServerName::try_from(s.clone()).ok());
        Ok(Self { config: Arc::new(config), sni })
    }

    /// The name to send and verify for a backend at `address` (`host:port`).
    pub fn server_name(&self, address: &str) -> std::io::Result<ServerName<'static>> {
        if let Some(sni) = &self.sni {
            return Ok(sni.clone());
        }
        let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}")))
    }

    /// Run the client side of a handshake over a connected stream.
    pub async fn connect(
        &self,
        address: &str,
        stream: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = self.server_name(address)?;
        tokio_rustls::TlsConnector::from(self.config.clone()).connect(name, stream).await
    }
}

#[cfg(test)]
mod tests {
    use super::name_matches;

    #[test]
    fn wildcards_cover_exactly_one_label() {
        assert!(name_matches("a.example.com", "a.example.com"));
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
    }
}
