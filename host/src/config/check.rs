//! The checks of a parsed config that need no plugin: references between
//! sections, addresses, durations, keys that belong together. Each error
//! names the file, line, column and key.

use super::ConfigError;
use super::{HashKey, Listener, Loaded, PluginTable, PoolTable, Protocol, NATIVE_ROUND_ROBIN};
use std::net::SocketAddr;
use toml::Spanned;

impl Loaded {
    fn check_listener_tls(&self, name: &str, l: &Listener) -> Result<(), ConfigError> {
        let src = &self.source;
        let key = format!("listeners.{name}.tls");
        let Some(tls) = &l.tls else {
            if matches!(l.protocol, Protocol::Tls | Protocol::Https) {
                return Err(src.error(&l.bind, format!("{key}: required with protocol = \"{}\"", l.protocol.name())));
            }
            return Ok(());
        };
        let t = tls.get_ref();
        let fail = |msg: String| Err(src.error(tls, format!("{key}: {msg}")));
        match l.protocol {
            Protocol::Tcp | Protocol::Http => {
                fail(format!("needs protocol = \"tls\" or \"https\" (the listener says \"{}\")", l.protocol.name()))
            }
            Protocol::Https if t.passthrough => fail("passthrough needs protocol = \"tls\"".into()),
            _ if t.passthrough && !t.certificates.is_empty() => {
                fail("passthrough forwards the client's TLS untouched: remove `certificates`".into())
            }
            _ if t.passthrough && (t.client_ca.is_some() || t.alpn.is_some()) => {
                fail("passthrough does not terminate TLS: `client_ca` and `alpn` do not apply".into())
            }
            _ if t.passthrough && !t.acme.is_empty() => {
                fail("passthrough does not terminate TLS: remove `acme`".into())
            }
            _ if !t.passthrough && t.certificates.is_empty() && t.acme.is_empty() => fail(
                "`certificates` is empty: give at least one { cert, key }, `acme` host names, or passthrough = true"
                    .into(),
            ),
            _ if !t.acme.is_empty() && self.config.acme.is_none() => {
                fail("`acme` needs an [acme] table (directory, contact, storage)".into())
            }
            _ if t.handshake_timeout.0.is_zero() || t.watch_interval.0.is_zero() => {
                fail("`handshake_timeout` and `watch_interval` must be above zero".into())
            }
            _ => Ok(()),
        }
    }

    /// Every check of a parsed config, section by section.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        for (name, l) in &self.config.listeners {
            self.check_listener(name, l)?;
        }
        for (name, p) in &self.config.pools {
            self.check_pool(name, p)?;
        }
        self.check_admin()?;
        if let Some(cap) = self.config.runtime.max_connections.as_ref().filter(|c| *c.get_ref() == 0) {
            return Err(self.source.error(cap, "runtime.max_connections: must be at least 1"));
        }
        let r = &self.config.runtime;
        for (key, zero) in [
            ("shed_loop_lag", r.shed_loop_lag.as_ref().map(|d| (d.span().start, d.get_ref().0.is_zero()))),
            ("shed_plugin_time", r.shed_plugin_time.as_ref().map(|d| (d.span().start, d.get_ref().0.is_zero()))),
            ("shed_memory", r.shed_memory.as_ref().map(|m| (m.span().start, m.get_ref().0 == 0))),
        ] {
            if let Some((at, true)) = zero {
                let message = format!("runtime.{key}: must be more than 0 (leave it out to not shed)");
                return Err(self.source.error_at(at, message));
            }
        }
        for (name, p) in &self.config.plugins {
            self.check_plugin(name, p)?;
        }
        Ok(())
    }

    fn check_listener(&self, name: &str, l: &Listener) -> Result<(), ConfigError> {
        let src = &self.source;
        l.bind.get_ref().parse::<SocketAddr>().map_err(|_| {
            src.error(&l.bind, format!("listeners.{name}.bind: `{}` is not an ip:port address", l.bind.get_ref()))
        })?;
        if !self.config.pools.contains_key(l.pool.get_ref()) {
            return Err(src.error(&l.pool, format!("listeners.{name}.pool: no pool named `{}`", l.pool.get_ref())));
        }
        for a in &l.access {
            self.check_plugin_ref(&format!("listeners.{name}.access"), a)?;
        }
        if let Some(r) = &l.router {
            self.check_plugin_ref(&format!("listeners.{name}.router"), r)?;
        }
        self.check_listener_tls(name, l)?;
        self.check_proxy_protocol(name, l)?;
        self.check_udp_keys(name, l)?;
        self.check_connection_caps(name, l)
    }

    fn check_pool(&self, name: &str, p: &PoolTable) -> Result<(), ConfigError> {
        let src = &self.source;
        let key = format!("pools.{name}.balancer");
        match p.balancer.get_ref().as_str() {
            NATIVE_ROUND_ROBIN => {}
            other if other.starts_with("native:") => {
                return Err(self.source.error(
                    &p.balancer,
                    format!("{key}: no native balancer `{other}` (the host's own is `native:round-robin`)"),
                ))
            }
            _ => self.check_plugin_ref(&key, &p.balancer)?,
        }
        if let Some(h) = &p.health {
            self.check_plugin_ref(&format!("pools.{name}.health.plugin"), &h.plugin)?;
            for (value, key) in [(h.interval, "interval"), (h.timeout, "timeout")] {
                if value.0.is_zero() {
                    return Err(src.error(&h.plugin, format!("pools.{name}.health.{key}: must be above zero")));
                }
            }
        }
        if let Some(d) = &p.discovery {
            self.check_plugin_ref(&format!("pools.{name}.discovery.plugin"), &d.plugin)?;
            for (value, key) in [(d.interval, "interval"), (d.timeout, "timeout")] {
                if value.0.is_zero() {
                    return Err(src.error(&d.plugin, format!("pools.{name}.discovery.{key}: must be above zero")));
                }
            }
        }
        if let Some(t) = &p.tls {
            let tk = t.get_ref();
            if tk.cert.is_some() != tk.key.is_some() {
                return Err(src.error(t, format!("pools.{name}.tls: `cert` and `key` go together")));
            }
            if let Some(sni) = &tk.sni {
                if rustls::pki_types::ServerName::try_from(sni.as_str()).is_err() {
                    return Err(src.error(t, format!("pools.{name}.tls.sni: `{sni}` is not a DNS name or IP address")));
                }
            }
        }
        if p.max_tries == 0 {
            return Err(src.error(&p.backends, format!("pools.{name}.max_tries: must be at least 1")));
        }
        if let Some(k) = &p.hash_key {
            if HashKey::parse(k.get_ref()).is_none() {
                return Err(src.error(
                    k,
                    format!(
                        "pools.{name}.hash_key: `{}` is not one of client-ip, path, sni, header:NAME, cookie:NAME",
                        k.get_ref()
                    ),
                ));
            }
        }
        for b in p.backends.get_ref() {
            let t = b.get_ref().table();
            if t.address.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
                return Err(src.error(b, format!("pools.{name}.backends: `{}` is not a host:port address", t.address)));
            }
        }
        Ok(())
    }

    /// `admin.token`, read from its reference when it is one; never empty.
    pub(super) fn resolve_admin_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(token) = self.config.admin.as_ref().and_then(|a| a.token.as_ref()) else { return Ok(None) };
        let value = token
            .get_ref()
            .resolve(self.base_dir())
            .map_err(|e| self.source.error(token, format!("admin.token: {e}")))?;
        if value.is_empty() {
            return Err(self.source.error(token, "admin.token: empty"));
        }
        Ok(Some(value))
    }

    fn check_admin(&self) -> Result<(), ConfigError> {
        let (src, Some(a)) = (&self.source, &self.config.admin) else { return Ok(()) };
        let addr: SocketAddr =
            a.bind.get_ref().parse().map_err(|_| {
                src.error(&a.bind, format!("admin.bind: `{}` is not an ip:port address", a.bind.get_ref()))
            })?;
        if !addr.ip().is_loopback() && a.token.is_none() {
            return Err(src
                .error(&a.bind, format!("admin.token: required when the admin API listens beyond loopback ({addr})")));
        }
        Ok(())
    }

    fn check_plugin(&self, name: &str, p: &PluginTable) -> Result<(), ConfigError> {
        let src = &self.source;
        if p.source.get_ref().is_empty() {
            return Err(src.error(&p.source, format!("plugins.{name}.source: empty")));
        }
        if p.timeout.0.is_zero() {
            return Err(src.error(&p.source, format!("plugins.{name}.timeout: must be above zero")));
        }
        for url in &p.grants.http {
            let scheme = url::Url::parse(url.get_ref()).map(|u| u.scheme().to_string());
            if scheme.as_deref() != Ok("http") {
                let why = format!("`{}` is not an http:// URL (http-request speaks plain HTTP)", url.get_ref());
                return Err(src.error(url, format!("plugins.{name}.grants.http: {why}")));
            }
        }
        if let Some(dns) = &p.grants.dns {
            if dns.get_ref().parse::<SocketAddr>().is_err() {
                return Err(
                    src.error(dns, format!("plugins.{name}.grants.dns: `{}` is not an ip:port address", dns.get_ref()))
                );
            }
        }
        Ok(())
    }

    fn check_proxy_protocol(&self, name: &str, l: &Listener) -> Result<(), ConfigError> {
        let src = &self.source;
        for n in &l.proxy_protocol_from {
            if crate::proxy_protocol::parse_network(n.get_ref()).is_none() {
                return Err(src.error(
                    n,
                    format!("listeners.{name}.proxy_protocol_from: `{}` is not an ip or ip/prefix", n.get_ref()),
                ));
            }
        }
        match (*l.proxy_protocol.get_ref(), l.proxy_protocol_from.first()) {
            (true, None) => {
                return Err(src.error(
                    &l.proxy_protocol,
                    format!(
                        "listeners.{name}.proxy_protocol_from: required with proxy_protocol = true \
                         (the peers trusted to send a PROXY header, e.g. [\"10.0.0.0/8\"])"
                    ),
                ))
            }
            (false, Some(first)) => {
                return Err(src.error(
                    first,
                    format!("listeners.{name}.proxy_protocol_from: has no effect without proxy_protocol = true"),
                ))
            }
            _ => {}
        }
        // An HTTP listener's backend connections are pooled and shared by
        // its clients: there is no one client to name in a header.
        if l.protocol == Protocol::Http {
            if let Some(v) = self.config.pools.get(l.pool.get_ref()).and_then(|p| p.send_proxy.as_ref()) {
                return Err(src.error(
                    v,
                    format!(
                        "pools.{}.send_proxy: the pool of HTTP listener `{name}`; HTTP backend connections \
                         are pooled and shared between clients, so send_proxy works on pools of TCP listeners only",
                        l.pool.get_ref()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The `udp_*` keys belong to UDP listeners only, and a session needs a
    /// non-zero idle timeout and room for at least one session.
    fn check_udp_keys(&self, name: &str, l: &Listener) -> Result<(), ConfigError> {
        let src = &self.source;
        let counts = [
            ("udp_max_requests", &l.udp_max_requests),
            ("udp_max_responses", &l.udp_max_responses),
            ("udp_max_sessions", &l.udp_max_sessions),
        ];
        if l.protocol != Protocol::Udp {
            let set = counts.iter().find_map(|(key, v)| v.as_ref().map(|v| (*key, v.span().start)));
            let set = set.or_else(|| l.udp_idle_timeout.as_ref().map(|v| ("udp_idle_timeout", v.span().start)));
            if let Some((key, at)) = set {
                return Err(src.error_at(at, format!("listeners.{name}.{key}: needs protocol = \"udp\"")));
            }
            return Ok(());
        }
        if let Some(r) = &l.router {
            return Err(src.error(
                r,
                format!("listeners.{name}.router: not on protocol = \"udp\" (sessions go to the listener's pool)"),
            ));
        }
        if let Some(t) = l.udp_idle_timeout.as_ref().filter(|t| t.get_ref().0.is_zero()) {
            return Err(src.error(t, format!("listeners.{name}.udp_idle_timeout: must be above zero")));
        }
        if let Some(m) = l.udp_max_sessions.as_ref().filter(|m| *m.get_ref() == 0) {
            return Err(src.error(m, format!("listeners.{name}.udp_max_sessions: must be at least 1")));
        }
        Ok(())
    }

    /// Connection caps are at least 1, on the protocols they apply to
    /// (UDP has `udp_max_sessions`; streams are HTTP/2's).
    fn check_connection_caps(&self, name: &str, l: &Listener) -> Result<(), ConfigError> {
        let src = &self.source;
        let caps =
            [("max_connections", &l.max_connections), ("max_connections_per_client", &l.max_connections_per_client)];
        for (key, cap) in caps {
            let Some(cap) = cap else { continue };
            if l.protocol == Protocol::Udp {
                return Err(src.error(
                    cap,
                    format!("listeners.{name}.{key}: not on protocol = \"udp\" (udp_max_sessions caps sessions)"),
                ));
            }
            if *cap.get_ref() == 0 {
                return Err(src.error(cap, format!("listeners.{name}.{key}: must be at least 1")));
            }
        }
        let streams = &l.max_concurrent_streams;
        if streams.span() != (0..0) && !l.protocol.is_http() {
            let why = "needs protocol = \"http\" or \"https\"";
            return Err(src.error(streams, format!("listeners.{name}.max_concurrent_streams: {why}")));
        }
        if *streams.get_ref() == 0 {
            return Err(src.error(streams, format!("listeners.{name}.max_concurrent_streams: must be at least 1")));
        }
        Ok(())
    }

    fn check_plugin_ref(&self, key: &str, r: &Spanned<String>) -> Result<(), ConfigError> {
        let name = r.get_ref();
        if name.starts_with("builtin:") || self.config.plugins.contains_key(name) {
            Ok(())
        } else {
            Err(self.source.error(
                r,
                format!("{key}: no plugin instance named `{name}` (define [plugins.{name}] or use builtin:<name>)"),
            ))
        }
    }
}
