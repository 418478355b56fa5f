//! Certificates from an ACME CA (RFC 8555) with instant-acme: an account
//! kept in the storage directory, one order per listener's `tls.acme` name
//! list, HTTP-01 challenges answered by every HTTP listener from
//! [`Challenges`], and renewal before expiry. Certificates are written as PEM
//! files that the listener's certificate watcher loads like any other.

use crate::config::Acme;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// The URL path prefix of HTTP-01 challenges.
pub const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Pending HTTP-01 answers, token → key authorization, shared by every HTTP
/// listener. Empty almost always, so the per-request check is one load.
#[derive(Default)]
pub struct Challenges {
    count: AtomicUsize,
    answers: Mutex<HashMap<String, String>>,
}

impl Challenges {
    /// The answer for a request path, if it is a pending challenge.
    pub fn answer(&self, path: &str) -> Option<String> {
        if self.count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let token = path.strip_prefix(CHALLENGE_PREFIX)?;
        self.answers.lock().get(token).cloned()
    }

    fn insert(&self, token: String, answer: String) {
        let mut answers = self.answers.lock();
        answers.insert(token, answer);
        self.count.store(answers.len(), Ordering::Relaxed);
    }

    fn remove(&self, token: &str) {
        let mut answers = self.answers.lock();
        answers.remove(token);
        self.count.store(answers.len(), Ordering::Relaxed);
    }
}

/// Where the certificate for a name list is kept: `<storage>/<first
/// name>.pem` and `.key`.
pub fn certificate_files(storage: &Path, names: &[String]) -> (PathBuf, PathBuf) {
    let stem: String = names
        .first()
        .map(String::as_str)
        .unwrap_or("certificate")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .collect();
    (storage.join(format!("{stem}.pem")), storage.join(format!("{stem}.key")))
}

/// The ACME settings a server runs with, paths resolved.
#[derive(Clone)]
pub struct Settings {
    /// Directory URL.
    pub directory: String,
    /// Account contacts.
    pub contact: Vec<String>,
    /// Storage directory.
    pub storage: PathBuf,
    /// Extra root for the directory's HTTPS.
    pub ca: Option<PathBuf>,
    /// Renew this long before expiry.
    pub renew_before: Duration,
    /// Check interval.
    pub check_interval: Duration,
}

impl Settings {
    /// From the `[acme]` table, relative paths taken from `base`.
    pub fn from_config(acme: &Acme, base: &Path) -> Self {
        Self {
            directory: acme.directory.get_ref().clone(),
            contact: acme.contact.clone(),
            storage: base.join(&acme.storage),
            ca: acme.ca.as_ref().map(|c| base.join(c.get_ref())),
            renew_before: acme.renew_before.0,
            check_interval: acme.check_interval.0,
        }
    }
}

/// When a PEM certificate file's first certificate expires, if readable.
fn expiry(cert: &Path) -> Option<SystemTime> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(cert).ok()?;
    let secs = crate::tls::not_after(&der)?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

/// Whether the certificate at `cert` is missing or due for renewal.
fn due(cert: &Path, renew_before: Duration) -> bool {
    match expiry(cert) {
        Some(until) => until.duration_since(SystemTime::now()).map_or(true, |left| left <= renew_before),
        None => true,
    }
}

/// Write a file so that readers see the old or the new text, never half.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

async fn account(settings: &Settings) -> anyhow::Result<Account> {
    let builder = || match &settings.ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let stored = settings.storage.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&stored) {
        let credentials: AccountCredentials = serde_json::from_str(&text)?;
        return Ok(builder()?.from_credentials(credentials).await?);
    }
    let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
    let (account, credentials) = builder()?.create(&new, settings.directory.clone(), None).await?;
    std::fs::create_dir_all(&settings.storage)?;
    write_atomically(&stored, &serde_json::to_string_pretty(&credentials)?)?;
    Ok(account)
}

/// Get a certificate for `names` and write it to its files.
async fn order(settings: &Settings, names: &[String], challenges: &Challenges) -> anyhow::Result<()> {
    let account = account(settings).await?;
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut tokens = Vec::new();
    let mut authorizations = order.authorizations();
    let answered = async {
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => anyhow::bail!("authorization is {other:?}"),
            }
            let mut challenge =
                authz.challenge(ChallengeType::Http01).ok_or_else(|| anyhow::anyhow!("the CA offers no http-01"))?;
            let token = challenge.token.clone();
            challenges.insert(token.clone(), challenge.key_authorization().as_str().to_string());
            tokens.push(token);
            challenge.set_ready().await?;
        }
        Ok(())
    }
    .await;
    let result = async {
        answered?;
        let retries = RetryPolicy::default().timeout(Duration::from_secs(60));
        let status = order.poll_ready(&retries).await?;
        if status != OrderStatus::Ready {
            anyhow::bail!("order is {status:?}, not ready");
        }
        let key = order.finalize().await?;
        let chain = order.poll_certificate(&retries).await?;
        let (cert_file, key_file) = certificate_files(&settings.storage, names);
        std::fs::create_dir_all(&settings.storage)?;
        write_atomically(&key_file, &key)?;
        write_atomically(&cert_file, &chain)?;
        Ok(())
    }
    .await;
    for token in &tokens {
        challenges.remove(token);
    }
    result
}

/// Keep a certificate for `names` current: order one now if it is missing
/// or due, then check every `check_interval` (a failed order is retried
/// after a minute, then at the interval).
pub fn spawn(settings: Settings, names: Vec<String>, challenges: Arc<Challenges>, stop: CancellationToken) {
    tokio::spawn(async move {
        let (cert_file, _) = certificate_files(&settings.storage, &names);
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = settings.check_interval;
            if !due(&cert_file, settings.renew_before) {
                continue;
            }
            let ordered = tokio::select! {
                _ = stop.cancelled() => return,
                r = order(&settings, &names, &challenges) => r,
            };
            match ordered {
                Ok(()) => tracing::info!(names = ?names, file = %cert_file.display(), "ACME certificate obtained"),
                Err(e) => {
                    tracing::warn!(names = ?names, "ACME order failed: {e:#}");
                    wait = wait.min(Duration::from_secs(60));
                }
            }
        }
    });
}
