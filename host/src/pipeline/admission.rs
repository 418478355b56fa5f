//! The access phase: `check-connection` once per connection (TCP, TLS,
//! HTTP) or UDP session, and `check-request` per HTTP request.

use super::settle;
use crate::plugin::bindings::types;
use crate::plugin::state::RequestHead;
use crate::plugin::{PluginInstance, Verdict};
use std::net::SocketAddr;
use std::sync::Arc;

/// What the access filters' `check-connection` settled for a connection
/// (TCP, TLS, HTTP) or UDP session, asked in order until one refuses.
#[derive(Default)]
pub struct Admission {
    /// Filters that answered `allow-connection`: on HTTP, not asked about
    /// the connection's requests.
    pub cleared: Vec<Arc<PluginInstance>>,
    /// Why the connection is refused, if it is.
    pub refused: Option<Refusal>,
}

/// A refused connection or request.
#[derive(Debug, Clone)]
pub enum Refusal {
    /// A filter denied it (status and headers are for HTTP).
    Denied { reason: String, status: Option<u16>, headers: Vec<(String, String)> },
    /// A filter's call failed and the filter fails closed.
    Failed(String),
}

impl Refusal {
    /// A filter's answer, when it refuses.
    fn of(verdict: Verdict) -> Option<Self> {
        match verdict {
            Verdict::Allow | Verdict::AllowConnection => None,
            Verdict::Deny { reason, status, headers } => Some(Self::Denied { reason, status, headers }),
        }
    }
}

impl Admission {
    /// Run the access phase of a connection. A failed call applies the
    /// filter's fallback (failing open allows).
    pub fn check(listener: &str, access: &[Arc<PluginInstance>], conn: &types::Connection, peer: SocketAddr) -> Self {
        let mut settled = Self::default();
        for filter in access {
            match settle(filter, filter.check_connection(conn)) {
                Ok(Some(Verdict::Allow) | None) => {}
                Ok(Some(Verdict::AllowConnection)) => settled.cleared.push(filter.clone()),
                Ok(Some(Verdict::Deny { reason, status, headers })) => {
                    tracing::debug!(%listener, %peer, plugin = filter.name(), "denied: {reason}");
                    settled.refused = Some(Refusal::Denied { reason, status, headers });
                    break;
                }
                Err(e) => {
                    tracing::debug!(%listener, %peer, "access plugin failed: {e}");
                    settled.refused = Some(Refusal::Failed(e.to_string()));
                    break;
                }
            }
        }
        settled
    }

    /// Whether the connection may go on.
    pub fn admitted(&self) -> bool {
        self.refused.is_none()
    }

    /// Whether `filter` cleared the connection for all its requests.
    pub fn cleared(&self, filter: &Arc<PluginInstance>) -> bool {
        self.cleared.iter().any(|c| Arc::ptr_eq(c, filter))
    }
}

/// The access phase of an HTTP request: `check-request` of every filter
/// the connection's admission did not clear, in order, until one refuses.
pub fn check_request(
    access: &[Arc<PluginInstance>],
    admission: &Admission,
    conn: &types::Connection,
    head: &Arc<RequestHead>,
) -> Result<(), Refusal> {
    for filter in access.iter().filter(|f| !admission.cleared(f)) {
        match settle(filter, filter.check_request(conn, head.clone())) {
            Ok(Some(verdict)) => Refusal::of(verdict).map_or(Ok(()), Err)?,
            Ok(None) => {}
            Err(e) => return Err(Refusal::Failed(e.to_string())),
        }
    }
    Ok(())
}
