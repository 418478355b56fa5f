//! Header handling of the proxy: hop-by-hop fields (RFC 9110 §7.6.1),
//! `X-Forwarded-*`, `Via`, request ids, and route header edits.

use super::body::{full, ProxyBody};
use super::HttpSettings;
use crate::plugin::HeaderEdit;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use std::net::SocketAddr;

/// The request id header weir adds (and keeps when the client sent one).
pub const X_REQUEST_ID: &str = "x-request-id";

/// Names built once: removing or inserting by `&str` parses the name each time.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];
/// [`X_REQUEST_ID`] as a header name.
pub const REQUEST_ID: HeaderName = HeaderName::from_static(X_REQUEST_ID);
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether a request asks for a protocol upgrade (WebSocket).
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")))
}

/// Remove hop-by-hop fields, including those the `Connection` field names.
/// `TE: trailers` survives (HTTP/2 and gRPC need it).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // The usual head has none but `Connection: keep-alive` (or `close`), or
    // none at all: see which are there in one pass, and remove only those (a
    // removal hashes and probes even when nothing is there).
    let mut present = 0u8; // bit i: HOP_BY_HOP[i]
    for key in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == key) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    let has = |name: &HeaderName| HOP_BY_HOP.iter().position(|h| h == name).is_some_and(|i| present & (1 << i) != 0);
    // What `Connection` names beyond those (and its `close`): parsed as
    // header names only then, since a name that is not a standard one is
    // allocated.
    let fixed =
        |t: &str| t.eq_ignore_ascii_case("close") || HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h.as_str()));
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !fixed(t))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let te_trailers = has(&header::TE)
        && headers
            .get(header::TE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")));
    for name in named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

fn apply_edits(headers: &mut HeaderMap, edits: &[HeaderEdit]) {
    for (name, value) in edits {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else { continue };
        match value.as_deref().map(HeaderValue::from_str) {
            // Cookies cannot be folded into one field: add, never replace.
            Some(Ok(v)) if name == header::SET_COOKIE => {
                headers.append(name, v);
            }
            Some(Ok(v)) => {
                headers.insert(name, v);
            }
            Some(Err(_)) => {}
            None => {
                headers.remove(name);
            }
        }
    }
}

/// Turn a client's request head into the one sent upstream. Returns whether
/// it is a protocol upgrade (whose `Connection`/`Upgrade` are kept).
pub fn prepare_request(
    parts: &mut http::request::Parts,
    peer: SocketAddr,
    settings: &HttpSettings,
    id: &HeaderValue,
    edits: &[HeaderEdit],
) -> bool {
    let upgrade = is_upgrade(&parts.headers);
    let upgrade_to = parts.headers.get(header::UPGRADE).cloned();
    let h = &mut parts.headers;
    strip_hop_by_hop(h);
    if let Some(proto) = upgrade_to.filter(|_| upgrade) {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, proto);
    }
    // HTTP/2 clients carry the host in :authority.
    if !h.contains_key(header::HOST) {
        if let Some(v) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            h.insert(header::HOST, v);
        }
    }
    if settings.x_forwarded {
        let ip = peer.ip().to_string();
        let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prior) => format!("{prior}, {ip}"),
            None => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert(X_FORWARDED_FOR, v);
        }
        let proto = if settings.https { "https" } else { "http" };
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        if let Some(host) = h.get(header::HOST).cloned() {
            h.insert(X_FORWARDED_HOST, host);
        }
    }
    if settings.forwarded {
        let node = match peer.ip() {
            std::net::IpAddr::V6(v6) => format!("\"[{v6}]\""),
            v4 => v4.to_string(),
        };
        let proto = if settings.https { "https" } else { "http" };
        let mut value = format!("for={node};proto={proto}");
        if let Some(host) = h.get(header::HOST).and_then(|v| v.to_str().ok()) {
            value += &format!(";host=\"{host}\"");
        }
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.append(header::FORWARDED, v);
        }
    }
    if settings.via {
        h.append(header::VIA, HeaderValue::from_static("1.1 weir"));
    }
    h.insert(REQUEST_ID, id.clone());
    apply_edits(h, edits);
    upgrade
}

/// Turn a backend's response head into the one sent to the client.
pub fn prepare_response(parts: &mut http::response::Parts, edits: &[HeaderEdit], id: &HeaderValue) {
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.insert(REQUEST_ID, id.clone());
    apply_edits(&mut parts.headers, edits);
}

/// Append `(name, value)` pairs, skipping invalid ones.
pub fn add_all(h: &mut HeaderMap, pairs: &[(String, String)]) {
    for (name, value) in pairs {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            h.append(n, v);
        }
    }
}

/// A response a router answered itself.
pub fn direct_response(
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    id: &HeaderValue,
) -> Response<ProxyBody> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    add_all(resp.headers_mut(), &headers);
    resp.headers_mut().insert(REQUEST_ID, id.clone());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_fields_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        h.insert("upgrade", HeaderValue::from_static("h2c"));
        strip_hop_by_hop(&mut h);
        assert!(!h.contains_key("connection") && !h.contains_key("x-secret") && !h.contains_key("keep-alive"));
        assert!(!h.contains_key("upgrade"));
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-kept"], "yes");
        // `Connection` naming a fixed one, in any case, and `close`.
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Keep-Alive, close, X-Other"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("content-length", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(HeaderName::as_str).collect::<Vec<_>>(), ["content-length"]);
        // A head with none keeps everything, `TE` included.
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        let mut only_te = h.clone();
        only_te.remove("x-kept");
        strip_hop_by_hop(&mut only_te);
        assert!(only_te.is_empty(), "TE without trailers goes");
        h.remove("te");
        strip_hop_by_hop(&mut h);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn upgrade_requests_keep_their_upgrade() {
        let req = http::Request::builder()
            .uri("/chat")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("host", "example.com")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap();
        let (mut parts, _) = req.into_parts();
        let settings = HttpSettings {
            header_timeout: std::time::Duration::from_secs(1),
            max_header_size: 8192,
            x_forwarded: true,
            forwarded: true,
            via: true,
            https: false,
            max_concurrent_streams: 200,
            idle_timeout: std::time::Duration::from_secs(300),
        };
        let id = HeaderValue::from_static("abc");
        assert!(prepare_request(&mut parts, "127.0.0.1:5".parse().unwrap(), &settings, &id, &[]));
        let h = &parts.headers;
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "example.com");
        assert_eq!(h["via"], "1.1 weir");
        assert_eq!(h["forwarded"], "for=127.0.0.1;proto=http;host=\"example.com\"");
        assert_eq!(h["x-request-id"], "abc");
    }
}
