//! BFE-style condition expressions: primitives such as
//! `req_host_in("a.com|b.com")` combined with `&&`, `||`, `!` and parentheses.

use std::net::IpAddr;

/// What a condition can ask about a request.
pub trait Facts {
    /// Host without port, lowercase.
    fn host(&self) -> Option<String>;
    /// Path without the query.
    fn path(&self) -> String;
    /// Method.
    fn method(&self) -> String;
    /// First value of a header.
    fn header(&self, name: &str) -> Option<String>;
    /// A cookie's value.
    fn cookie(&self, name: &str) -> Option<String>;
    /// A query parameter's value.
    fn query(&self, name: &str) -> Option<String>;
    /// The client address.
    fn client_ip(&self) -> IpAddr;
    /// SNI of a TLS connection.
    fn sni(&self) -> Option<String>;
    /// Identity of a verified client certificate.
    fn client_identity(&self) -> Option<String>;
    /// ALPN protocols: the one settled on a terminating listener, the ones
    /// the client offered on passthrough.
    fn alpn(&self) -> Vec<String>;
}

/// A set of alternatives from a `"a|b|c"` argument.
#[derive(Debug, Clone, PartialEq)]
pub struct Alternatives {
    values: Vec<String>,
    fold_case: bool,
}

impl Alternatives {
    fn new(list: &str, fold_case: bool) -> Self {
        let values = list.split('|').map(|v| if fold_case { v.to_ascii_lowercase() } else { v.to_string() }).collect();
        Self { values, fold_case }
    }

    fn fold(&self, v: &str) -> String {
        if self.fold_case {
            v.to_ascii_lowercase()
        } else {
            v.to_string()
        }
    }

    fn contains(&self, v: &str) -> bool {
        let v = self.fold(v);
        self.values.contains(&v)
    }

    fn prefix_of(&self, v: &str) -> bool {
        let v = self.fold(v);
        self.values.iter().any(|x| v.starts_with(x.as_str()))
    }
}

/// A parsed condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// `a && b`.
    And(Box<Cond>, Box<Cond>),
    /// `a || b`.
    Or(Box<Cond>, Box<Cond>),
    /// `!a`.
    Not(Box<Cond>),
    /// `req_host_in("h1|h2")` (case-insensitive).
    HostIn(Alternatives),
    /// `req_path_in("/a|/b", fold_case)`.
    PathIn(Alternatives),
    /// `req_path_prefix_in("/a|/b", fold_case)`.
    PathPrefixIn(Alternatives),
    /// `req_method_in("GET|POST")`.
    MethodIn(Alternatives),
    /// `req_header_value_in("Name", "v1|v2", fold_case)`.
    HeaderValueIn(String, Alternatives),
    /// `req_cookie_value_in("name", "v1|v2", fold_case)`.
    CookieValueIn(String, Alternatives),
    /// `req_query_value_in("key", "v1|v2", fold_case)`.
    QueryValueIn(String, Alternatives),
    /// `req_cip_range("start", "end")`, inclusive, or `req_cip_range("10.0.0.0/8")`.
    CipRange(IpAddr, IpAddr),
    /// `ses_tls_sni_in("a.example|b.example")` (case-insensitive).
    SniIn(Alternatives),
    /// `ses_tls_client_identity_in("alice|bob", fold_case)`: the verified
    /// client certificate's identity.
    ClientIdentityIn(Alternatives),
    /// `ses_tls_client_auth()`: a verified client certificate was presented.
    ClientAuth,
    /// `ses_tls_alpn_in("h2|http/1.1")`: the settled ALPN protocol, or on
    /// passthrough any protocol the client offered, is one of these.
    AlpnIn(Alternatives),
    /// `true` / `false`.
    Const(bool),
}

impl Cond {
    /// Evaluate against a request.
    pub fn eval(&self, f: &dyn Facts) -> bool {
        match self {
            Cond::And(a, b) => a.eval(f) && b.eval(f),
            Cond::Or(a, b) => a.eval(f) || b.eval(f),
            Cond::Not(a) => !a.eval(f),
            Cond::HostIn(alt) => f.host().is_some_and(|h| alt.contains(&h)),
            Cond::PathIn(alt) => alt.contains(&f.path()),
            Cond::PathPrefixIn(alt) => alt.prefix_of(&f.path()),
            Cond::MethodIn(alt) => alt.contains(&f.method()),
            Cond::HeaderValueIn(name, alt) => f.header(name).is_some_and(|v| alt.contains(&v)),
            Cond::CookieValueIn(name, alt) => f.cookie(name).is_some_and(|v| alt.contains(&v)),
            Cond::QueryValueIn(name, alt) => f.query(name).is_some_and(|v| alt.contains(&v)),
            Cond::CipRange(lo, hi) => {
                let ip = match f.client_ip() {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
                    v4 => v4,
                };
                match (lo, hi, ip) {
                    (IpAddr::V4(l), IpAddr::V4(h), IpAddr::V4(x)) => *l <= x && x <= *h,
                    (IpAddr::V6(l), IpAddr::V6(h), IpAddr::V6(x)) => *l <= x && x <= *h,
                    _ => false,
                }
            }
            Cond::SniIn(alt) => f.sni().is_some_and(|h| alt.contains(&h)),
            Cond::ClientIdentityIn(alt) => f.client_identity().is_some_and(|v| alt.contains(&v)),
            Cond::ClientAuth => f.client_identity().is_some(),
            Cond::AlpnIn(alt) => f.alpn().iter().any(|p| alt.contains(p)),
            Cond::Const(b) => *b,
        }
    }
}

/// A parse error with its 1-based column.
#[derive(Debug, PartialEq)]
pub struct ParseError {
    /// Column where the problem is.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    And,
    Or,
    Not,
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |column: usize, message: String| ParseError { column, message };
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            '(' => {
                out.push((col, Tok::LParen));
                i += 1;
            }
            ')' => {
                out.push((col, Tok::RParen));
                i += 1;
            }
            ',' => {
                out.push((col, Tok::Comma));
                i += 1;
            }
            '!' => {
                out.push((col, Tok::Not));
                i += 1;
            }
            '&' | '|' => {
                if chars.get(i + 1) != Some(&c) {
                    return Err(err(col, format!("expected `{c}{c}`")));
                }
                out.push((col, if c == '&' { Tok::And } else { Tok::Or }));
                i += 2;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(err(col, "unterminated string".into())),
                        Some('"') => break,
                        Some('\\') if i + 1 < chars.len() => {
                            s.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                i += 1;
                out.push((col, Tok::Str(s)));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push((col, Tok::Ident(chars[start..i].iter().collect())));
            }
            other => return Err(err(col, format!("unexpected `{other}`"))),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    end: usize,
}

/// An argument: a string or a bare `true`/`false`.
enum Arg {
    Str(String),
    Bool(bool),
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn column(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end, |(c, _)| *c)
    }

    fn fail<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError { column: self.column(), message: message.into() })
    }

    fn expect(&mut self, want: Tok, what: &str) -> Result<(), ParseError> {
        if self.peek() == Some(&want) {
            self.pos += 1;
            Ok(())
        } else {
            self.fail(format!("expected {what}"))
        }
    }

    fn or(&mut self) -> Result<Cond, ParseError> {
        let mut left = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            left = Cond::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Cond, ParseError> {
        let mut left = self.unary()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            left = Cond::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Cond, ParseError> {
        match self.peek() {
            Some(Tok::Not) => {
                self.pos += 1;
                Ok(Cond::Not(Box::new(self.unary()?)))
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let inner = self.or()?;
                self.expect(Tok::RParen, "`)`")?;
                Ok(inner)
            }
            Some(Tok::Ident(_)) => self.call(),
            _ => self.fail("expected a condition"),
        }
    }

    fn args(&mut self) -> Result<Vec<Arg>, ParseError> {
        self.expect(Tok::LParen, "`(`")?;
        let mut args = Vec::new();
        if self.peek() == Some(&Tok::RParen) {
            self.pos += 1;
            return Ok(args);
        }
        loop {
            match self.peek().cloned() {
                Some(Tok::Str(s)) => args.push(Arg::Str(s)),
                Some(Tok::Ident(w)) if w == "true" || w == "false" => args.push(Arg::Bool(w == "true")),
                _ => return self.fail("expected a \"string\" or true/false argument"),
            }
            self.pos += 1;
            match self.peek() {
                Some(Tok::Comma) => self.pos += 1,
                Some(Tok::RParen) => {
                    self.pos += 1;
                    return Ok(args);
                }
                _ => return self.fail("expected `,` or `)`"),
            }
        }
    }

    fn call(&mut self) -> Result<Cond, ParseError> {
        let column = self.column();
        let Some(Tok::Ident(name)) = self.peek().cloned() else { return self.fail("expected a condition") };
        self.pos += 1;
        if name == "true" || name == "false" {
            return Ok(Cond::Const(name == "true"));
        }
        let args = self.args()?;
        let bad = |message: String| Err(ParseError { column, message });
        let s = |i: usize| match args.get(i) {
            Some(Arg::Str(s)) => Some(s.clone()),
            _ => None,
        };
        let fold = |i: usize| matches!(args.get(i), Some(Arg::Bool(true)));
        let arity = |n: usize, m: usize| args.len() >= n && args.len() <= m;
        let cond = match name.as_str() {
            "req_host_in" if arity(1, 1) => s(0).map(|v| Cond::HostIn(Alternatives::new(&v, true))),
            "req_path_in" if arity(1, 2) => s(0).map(|v| Cond::PathIn(Alternatives::new(&v, fold(1)))),
            "req_path_prefix_in" if arity(1, 2) => s(0).map(|v| Cond::PathPrefixIn(Alternatives::new(&v, fold(1)))),
            "req_method_in" if arity(1, 1) => s(0).map(|v| Cond::MethodIn(Alternatives::new(&v, true))),
            "req_header_value_in" if arity(2, 3) => {
                s(0).zip(s(1)).map(|(h, v)| Cond::HeaderValueIn(h, Alternatives::new(&v, fold(2))))
            }
            "req_cookie_value_in" if arity(2, 3) => {
                s(0).zip(s(1)).map(|(c, v)| Cond::CookieValueIn(c, Alternatives::new(&v, fold(2))))
            }
            "req_query_value_in" if arity(2, 3) => {
                s(0).zip(s(1)).map(|(q, v)| Cond::QueryValueIn(q, Alternatives::new(&v, fold(2))))
            }
            "req_cip_range" if arity(1, 2) => match (s(0), s(1)) {
                (Some(net), None) => match net.parse::<ipnet::IpNet>() {
                    Ok(n) => Some(Cond::CipRange(n.network(), n.broadcast())),
                    Err(_) => return bad(format!("`{net}` is not a CIDR network")),
                },
                (Some(lo), Some(hi)) => match (lo.parse::<IpAddr>(), hi.parse::<IpAddr>()) {
                    (Ok(l), Ok(h)) if l.is_ipv4() == h.is_ipv4() => Some(Cond::CipRange(l, h)),
                    _ => return bad(format!("`{lo}`, `{hi}` are not two addresses of one family")),
                },
                _ => None,
            },
            "ses_tls_sni_in" if arity(1, 1) => s(0).map(|v| Cond::SniIn(Alternatives::new(&v, true))),
            "ses_tls_client_identity_in" if arity(1, 2) => {
                s(0).map(|v| Cond::ClientIdentityIn(Alternatives::new(&v, fold(1))))
            }
            "ses_tls_client_auth" if arity(0, 0) => Some(Cond::ClientAuth),
            "ses_tls_alpn_in" if arity(1, 1) => s(0).map(|v| Cond::AlpnIn(Alternatives::new(&v, false))),
            "req_host_in"
            | "ses_tls_alpn_in"
            | "ses_tls_sni_in"
            | "ses_tls_client_identity_in"
            | "ses_tls_client_auth"
            | "req_path_in"
            | "req_path_prefix_in"
            | "req_method_in"
            | "req_header_value_in"
            | "req_cookie_value_in"
            | "req_query_value_in"
            | "req_cip_range" => {
                return bad(format!("wrong number of arguments to {name}"));
            }
            _ => return bad(format!("unknown condition `{name}`")),
        };
        match cond {
            Some(c) => Ok(c),
            None => bad(format!("wrong argument types for {name}")),
        }
    }
}

/// Operators (`&&`, `||`, `!`) and parentheses one condition may hold.
/// The parser, evaluation and drop all recurse along the expression's
/// tree, which is at most this deep, so a hostile or runaway config cannot
/// exhaust the (Wasm) stack; real rules hold a handful.
pub const MAX_OPERATORS: usize = 512;

/// Parse a condition expression.
pub fn parse(src: &str) -> Result<Cond, ParseError> {
    let toks = lex(src)?;
    // A `(` right after a name opens its arguments, not a group.
    let mut grouping = toks.iter().enumerate().filter(|(i, (_, t))| match t {
        Tok::And | Tok::Or | Tok::Not => true,
        Tok::LParen => !matches!(i.checked_sub(1).map(|p| &toks[p].1), Some(Tok::Ident(_))),
        _ => false,
    });
    if let Some((_, (column, _))) = grouping.nth(MAX_OPERATORS) {
        let message = format!("more than {MAX_OPERATORS} operators and parentheses");
        return Err(ParseError { column: *column, message });
    }
    let mut p = Parser { toks, pos: 0, end: src.chars().count() + 1 };
    let cond = p.or()?;
    if p.pos < p.toks.len() {
        return p.fail("unexpected text after the condition");
    }
    Ok(cond)
}
