//! Reads the SNI and ALPN of a TLS ClientHello without terminating TLS, for
//! passthrough listeners. The parser takes whatever bytes have arrived and
//! says whether it needs more; it never panics and never reads past what it
//! was given (a fuzz target in `fuzz/` holds it to that).

/// The most bytes buffered before giving up on a ClientHello: one full TLS
/// record of handshake data and its header. Real ClientHellos, even with
/// post-quantum key shares, are a few KiB.
pub const MAX_HELLO: usize = 5 + (1 << 14);

/// What the ClientHello said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// `server_name` (host_name entry), lower-cased.
    pub sni: Option<String>,
    /// Offered ALPN protocols, in the client's order.
    pub alpn: Vec<String>,
}

/// The outcome of parsing the bytes read so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A whole ClientHello.
    Hello(ClientHello),
    /// Too few bytes yet: read more and parse again.
    Incomplete,
    /// Not a TLS ClientHello (or one weir will not buffer), with the reason.
    Invalid(&'static str),
}

/// Parse the first bytes of a connection.
pub fn parse(buf: &[u8]) -> Parsed {
    match handshake_message(buf) {
        Ok(msg) => match client_hello(msg) {
            Ok(hello) => Parsed::Hello(hello),
            Err(Error::Incomplete) => Parsed::Invalid("ClientHello shorter than its length says"),
            Err(Error::Invalid(why)) => Parsed::Invalid(why),
        },
        Err(Error::Incomplete) if buf.len() >= MAX_HELLO => Parsed::Invalid("ClientHello too large"),
        Err(Error::Incomplete) => Parsed::Incomplete,
        Err(Error::Invalid(why)) => Parsed::Invalid(why),
    }
}

enum Error {
    Incomplete,
    Invalid(&'static str),
}

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;

/// The first handshake message, reassembled from as many handshake records
/// as it spans (a ClientHello may be fragmented over records).
fn handshake_message(buf: &[u8]) -> Result<Vec<u8>, Error> {
    let mut msg = Vec::new();
    let mut rest = buf;
    loop {
        if rest.is_empty() {
            return Err(Error::Incomplete);
        }
        if rest[0] != CONTENT_HANDSHAKE {
            return Err(Error::Invalid("not a TLS handshake record"));
        }
        if rest.len() < 5 {
            return Err(Error::Incomplete);
        }
        if rest[1] != 3 {
            return Err(Error::Invalid("not a TLS record version"));
        }
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if len == 0 || len > 1 << 14 {
            return Err(Error::Invalid("bad TLS record length"));
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            return Err(Error::Incomplete);
        };
        msg.extend_from_slice(fragment);
        rest = &rest[5 + len..];
        if msg[0] != HANDSHAKE_CLIENT_HELLO {
            return Err(Error::Invalid("first handshake message is not a ClientHello"));
        }
        if msg.len() >= 4 {
            let body = u32::from_be_bytes([0, msg[1], msg[2], msg[3]]) as usize;
            if body + 4 > MAX_HELLO {
                return Err(Error::Invalid("ClientHello too large"));
            }
            if msg.len() >= body + 4 {
                msg.truncate(body + 4);
                msg.drain(..4);
                return Ok(msg);
            }
        }
    }
}

/// A cursor over a byte slice whose reads fail instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Incomplete);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a length prefix of 1 or 2 bytes.
    fn vec8(&mut self) -> Result<Reader<'a>, Error> {
        let n = self.u8()? as usize;
        Ok(Reader(self.take(n)?))
    }

    fn vec16(&mut self) -> Result<Reader<'a>, Error> {
        let n = self.u16()? as usize;
        Ok(Reader(self.take(n)?))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn client_hello(body: Vec<u8>) -> Result<ClientHello, Error> {
    let mut r = Reader(&body);
    let version = r.u16()?;
    if version >> 8 != 3 {
        return Err(Error::Invalid("not a TLS ClientHello version"));
    }
    r.take(32)?; // random
    r.vec8()?; // legacy session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let mut hello = ClientHello::default();
    if r.is_empty() {
        return Ok(hello); // no extensions at all
    }
    let mut exts = r.vec16()?;
    while !exts.is_empty() {
        let kind = exts.u16()?;
        let mut data = exts.vec16()?;
        match kind {
            EXT_SERVER_NAME => {
                let mut names = data.vec16()?;
                while !names.is_empty() {
                    let name_type = names.u8()?;
                    let name = names.vec16()?;
                    if name_type == 0 && hello.sni.is_none() {
                        let name = std::str::from_utf8(name.0).map_err(|_| Error::Invalid("SNI is not UTF-8"))?;
                        let name = name.strip_suffix('.').unwrap_or(name);
                        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                            return Err(Error::Invalid("SNI is not a host name"));
                        }
                        hello.sni = Some(name.to_ascii_lowercase());
                    }
                }
            }
            EXT_ALPN => {
                let mut list = data.vec16()?;
                while !list.is_empty() {
                    let proto = list.vec8()?;
                    hello.alpn.push(String::from_utf8_lossy(proto.0).into_owned());
                }
            }
            _ => {}
        }
    }
    Ok(hello)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, for a name and ALPN list.
    fn rustls_hello(sni: &str, alpn: &[&str]) -> Vec<u8> {
        use rustls::pki_types::ServerName;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_sni_and_alpn_from_a_real_client_hello() {
        let bytes = rustls_hello("Api.Example.com", &["h2", "http/1.1"]);
        assert_eq!(
            parse(&bytes),
            Parsed::Hello(ClientHello {
                sni: Some("api.example.com".into()),
                alpn: vec!["h2".into(), "http/1.1".into()]
            })
        );
    }

    #[test]
    fn every_prefix_is_incomplete_never_wrong() {
        let bytes = rustls_hello("a.example", &["h2"]);
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn a_hello_fragmented_over_records_is_reassembled() {
        let bytes = rustls_hello("frag.example", &[]);
        let body = &bytes[5..];
        let (a, b) = body.split_at(40);
        let mut split = Vec::new();
        for part in [a, b] {
            split.extend_from_slice(&[22, 3, 1]);
            split.extend_from_slice(&(part.len() as u16).to_be_bytes());
            split.extend_from_slice(part);
        }
        match parse(&split) {
            Parsed::Hello(h) => assert_eq!(h.sni.as_deref(), Some("frag.example")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_ip_address_name_sends_no_sni() {
        let bytes = rustls_hello("127.0.0.1", &[]);
        assert_eq!(parse(&bytes), Parsed::Hello(ClientHello::default()));
    }

    #[test]
    fn an_sni_of_only_dots_is_refused() {
        // Found by `cargo fuzz`: "." used to become an empty SNI.
        let mut bytes = rustls_hello("z", &[]);
        // The server_name entry: type host_name (0), length 1, "z".
        let at = bytes.windows(4).position(|w| w == [0, 0, 1, b'z']).unwrap();
        bytes[at + 3] = b'.';
        assert!(matches!(parse(&bytes), Parsed::Invalid(_)));
    }

    #[test]
    fn garbage_and_plain_http_are_invalid() {
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n\r\n"), Parsed::Invalid(_)));
        assert!(matches!(parse(&[22, 3, 1, 0, 0]), Parsed::Invalid(_)));
        assert!(matches!(parse(&[22, 3, 1, 0, 4, 2, 0, 0, 0]), Parsed::Invalid(_)));
        // A handshake record claiming a ClientHello larger than weir buffers.
        assert!(matches!(parse(&[22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]), Parsed::Invalid(_)));
    }

    #[test]
    fn corrupted_hellos_never_panic() {
        let bytes = rustls_hello("x.example", &["h2"]);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut b = bytes.clone();
            let at = (seed as usize) % b.len();
            b[at] = (seed >> 32) as u8;
            let cut = ((seed >> 16) as usize) % (b.len() + 1);
            let _ = parse(&b[..cut]);
        }
    }
}
