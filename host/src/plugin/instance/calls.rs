//! One method per phase call, and the conversions between WIT values and
//! the host's own.

use super::slots::Bound;
use super::slots::Slot;
use super::{CallError, CallErrorKind, PluginInstance};
use crate::plugin::bindings::{access, balancer, health, router, types};
use crate::plugin::state::{HttpPick, MemberView, PickCall, RequestCall, RequestHead};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Resource;

/// An access decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Let the connection and all its requests through: on HTTP, the
    /// filter is not asked about the connection's requests.
    AllowConnection,
    /// Refuse it.
    Deny {
        /// Why, for the log.
        reason: String,
        /// HTTP status for L7 (403 when none).
        status: Option<u16>,
        /// Extra response headers for L7.
        headers: Vec<(String, String)>,
    },
}

/// A backend found by a discovery plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// `host:port`.
    pub address: String,
    /// Relative weight.
    pub weight: u32,
    /// Priority group.
    pub priority: u32,
    /// Labels.
    pub tags: Vec<String>,
}

/// A header edit from a route decision: `None` removes the header.
pub type HeaderEdit = (String, Option<String>);

/// Where a router sends a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteDecision {
    /// Forward to a pool.
    Forward {
        /// Pool name.
        pool: String,
        /// Key for the pool's balancer.
        hash_key: Option<String>,
        /// Edits to the request headers.
        request_headers: Vec<HeaderEdit>,
        /// Edits to the response headers.
        response_headers: Vec<HeaderEdit>,
    },
    /// Answer directly.
    Respond {
        /// Status code.
        status: u16,
        /// Header fields.
        headers: Vec<(String, String)>,
        /// Body.
        body: Vec<u8>,
    },
    /// No rule matched: the listener's default pool.
    NoMatch,
}

impl PluginInstance {
    /// Ask a balancer for a slot of `members` among `eligible`.
    pub fn pick<M: MemberView + 'static>(
        &self,
        members: &Arc<M>,
        eligible: Arc<Vec<u32>>,
        conn: &types::Connection,
        hash_key: Option<&str>,
        mut http: Option<&mut HttpPick>,
    ) -> Result<u32, CallError> {
        use balancer::exports::weir::plugin::balance::{Choice, PickContext};
        let ctx = PickContext {
            pool: members.pool_id(),
            eligible_count: eligible.len() as u32,
            sequence: members.next_sequence(),
            client_hash: client_hash(&conn.client.ip),
            eligible_mask: eligible_mask(&eligible),
        };
        let check = eligible.clone();
        let choice = self.with_slot(|slot| {
            let Bound::Balancer(b) = &slot.bound else { unreachable!("balancer slot") };
            let b = b.weir_plugin_balance();
            let (pool, version) = (members.pool_id(), members.version());
            if slot.seen_pools.get(&pool) != Some(&version) {
                match b.call_set_backends(&mut slot.store, pool, members.backends())? {
                    Ok(()) => {
                        slot.seen_pools.insert(pool, version);
                    }
                    Err(e) => return Ok(Err(e)),
                }
            }
            slot.store.data_mut().pick = Some(PickCall {
                pool,
                members: members.clone(),
                eligible,
                conn: conn.clone(),
                // Lent to the call and taken back: the cookies are not copied.
                http: http.as_deref_mut().map(|h| {
                    h.response_headers.clear();
                    std::mem::take(h)
                }),
            });
            let result = b.call_pick(&mut slot.store, Resource::new_borrow(0), ctx, hash_key);
            // Dropped where it is: moving the call out would copy it.
            let call = &mut slot.store.data_mut().pick;
            if let (Some(out), Some(back)) = (http, call.as_mut().and_then(|c| c.http.take())) {
                *out = back;
            }
            *call = None;
            result
        })?;
        let slot = match choice {
            Choice::Slot(s) if check.binary_search(&s).is_ok() => Some(s),
            Choice::EligibleIndex(i) => check.get(i as usize).copied(),
            Choice::Slot(_) => None,
        };
        slot.ok_or_else(|| {
            self.stats.bad_answers.fetch_add(1, Ordering::Relaxed);
            self.fail(CallErrorKind::BadAnswer, format!("answered {choice:?}, which is not an eligible backend"))
        })
    }

    /// Ask an access filter about a new connection.
    pub fn check_connection(&self, conn: &types::Connection) -> Result<Verdict, CallError> {
        self.with_slot(|slot| {
            let Bound::Access(a) = &slot.bound else { unreachable!("access slot") };
            Ok(a.weir_plugin_access().call_check_connection(&mut slot.store, conn)?.map(verdict))
        })
    }

    /// Ask an access filter about an HTTP request head.
    pub fn check_request(&self, conn: &types::Connection, head: Arc<RequestHead>) -> Result<Verdict, CallError> {
        self.with_slot(|slot| {
            let Bound::Access(a) = &slot.bound else { unreachable!("access slot") };
            slot.store.data_mut().request = Some(RequestCall { head, conn: conn.clone() });
            let r = a.weir_plugin_access().call_check_request(&mut slot.store, conn, Resource::new_borrow(0));
            slot.store.data_mut().request = None;
            Ok(r?.map(verdict))
        })
    }
}

impl PluginInstance {
    /// Run a background call with I/O allowed until `timeout` from now.
    /// The Wasm deadline is a little later than the I/O one, so that an
    /// I/O timeout reaches the plugin as an error it can report rather
    /// than as an interruption.
    fn background<R>(
        &self,
        target: Option<String>,
        proxy: Option<crate::proxy_protocol::Version>,
        timeout: Duration,
        f: impl FnOnce(&mut Slot) -> wasmtime::Result<Result<R, types::Error>>,
    ) -> Result<R, CallError> {
        let deadline = std::time::Instant::now() + timeout;
        self.with_slot_for(Some(timeout + timeout / 4 + Duration::from_millis(20)), |slot| {
            slot.store.data_mut().io = Some(crate::plugin::grants::CallScope { target, proxy, deadline });
            let r = f(slot);
            slot.store.data_mut().io = None;
            r
        })
    }

    /// Ask a health checker about a backend: `Ok(Ok(()))` healthy,
    /// `Ok(Err(reason))` unhealthy. With `proxy` (the pool sends PROXY to
    /// its backends), the checker's connections to the backend start with a
    /// `LOCAL` header. Blocks on I/O: call from a blocking thread.
    pub fn check(
        &self,
        target: &types::Backend,
        proxy: Option<crate::proxy_protocol::Version>,
        timeout: Duration,
    ) -> Result<Result<(), String>, CallError> {
        use health::exports::weir::plugin::healthcheck::Health;
        let health = self.background(Some(target.address.clone()), proxy, timeout, |slot| {
            let Bound::Health(h) = &slot.bound else { unreachable!("health slot") };
            h.weir_plugin_healthcheck().call_check(&mut slot.store, target)
        })?;
        Ok(match health {
            Health::Healthy => Ok(()),
            Health::Unhealthy(reason) => Err(reason),
        })
    }

    /// Ask a discovery plugin for its backends. Blocks on I/O: call from a
    /// blocking thread.
    pub fn discover(&self, timeout: Duration) -> Result<Vec<Discovered>, CallError> {
        let list = self.background(None, None, timeout, |slot| {
            let Bound::Discovery(d) = &slot.bound else { unreachable!("discovery slot") };
            d.weir_plugin_discovery().call_discover(&mut slot.store)
        })?;
        Ok(list
            .into_iter()
            .map(|d| Discovered { address: d.address, weight: d.weight, priority: d.priority, tags: d.tags })
            .collect())
    }

    /// Ask a router where a connection goes (L4: SNI in `conn`, the
    /// offered ALPN protocols in `alpn`).
    pub fn route_connection(&self, conn: &types::Connection, alpn: &[String]) -> Result<RouteDecision, CallError> {
        self.with_slot(|slot| {
            let Bound::Router(r) = &slot.bound else { unreachable!("router slot") };
            Ok(r.weir_plugin_route().call_route_connection(&mut slot.store, conn, alpn)?.map(decision))
        })
    }

    /// Ask a router where an HTTP request goes.
    pub fn route_request(&self, conn: &types::Connection, head: Arc<RequestHead>) -> Result<RouteDecision, CallError> {
        self.with_slot(|slot| {
            let Bound::Router(r) = &slot.bound else { unreachable!("router slot") };
            let host = crate::plugin::state::request_host(&head);
            let path = head.uri.path();
            let d = {
                // The head is lent to the call; the connection is copied
                // only if the router asks for it (`request.connection`).
                let call = RequestCall { head: head.clone(), conn: conn.clone() };
                slot.store.data_mut().request = Some(call);
                r.weir_plugin_route().call_route_request(&mut slot.store, Resource::new_borrow(0), host, path)
            };
            slot.store.data_mut().request = None;
            Ok(d?.map(decision))
        })
    }
}

/// `pick-context.eligible-mask`: bit `s` for each eligible slot `s` below 64
/// (`eligible` is in slot order).
pub fn eligible_mask(eligible: &[u32]) -> u64 {
    eligible.iter().take_while(|&&s| s < 64).fold(0, |mask, &s| mask | 1 << s)
}

/// `pick-context.client-hash`: FNV-1a over the address bytes with a 64-bit
/// finaliser. weir-sdk's `hash64` is the same function, so a plugin can hash
/// an address itself and agree with the host.
pub fn client_hash(ip: &types::IpAddress) -> u64 {
    let mut bytes = [0u8; 16];
    let used = match *ip {
        types::IpAddress::Ipv4((a, b, c, d)) => {
            bytes[..4].copy_from_slice(&[a, b, c, d]);
            4
        }
        types::IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            for (i, seg) in [a, b, c, d, e, f, g, h].iter().enumerate() {
                bytes[2 * i..2 * i + 2].copy_from_slice(&seg.to_be_bytes());
            }
            16
        }
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &bytes[..used] {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn decision(d: router::exports::weir::plugin::route::Decision) -> RouteDecision {
    use router::exports::weir::plugin::route::Decision as D;
    let edits =
        |v: Vec<router::exports::weir::plugin::route::HeaderEdit>| v.into_iter().map(|e| (e.name, e.value)).collect();
    match d {
        D::Forward(f) => RouteDecision::Forward {
            pool: f.pool,
            hash_key: f.hash_key,
            request_headers: edits(f.request_headers),
            response_headers: edits(f.response_headers),
        },
        D::Respond(r) => RouteDecision::Respond { status: r.status, headers: r.headers, body: r.body },
        D::NoMatch => RouteDecision::NoMatch,
    }
}

fn verdict(v: access::exports::weir::plugin::access::Verdict) -> Verdict {
    use access::exports::weir::plugin::access::Verdict as V;
    match v {
        V::Allow => Verdict::Allow,
        V::AllowConnection => Verdict::AllowConnection,
        V::Deny(d) => Verdict::Deny { reason: d.reason, status: d.status, headers: d.headers },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_eligible_mask_holds_the_slots_below_64() {
        assert_eq!(super::eligible_mask(&[]), 0);
        assert_eq!(super::eligible_mask(&[0, 2, 63]), 1 | 4 | 1 << 63);
        assert_eq!(super::eligible_mask(&[1, 63, 64, 100]), 2 | 1 << 63, "slots from 64 on are not in it");
    }
}
