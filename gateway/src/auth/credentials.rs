//! Credentials: finds the bearer token in a WebSocket handshake request.
//!
//! Looks, in this order, at the `Authorization: Bearer` header, the
//! `Sec-WebSocket-Protocol` bearer form, the configured query parameter and
//! the configured cookie (only when one is configured: cookie transport is
//! opt-in); the first one present is used. The subprotocol form
//! is what a browser can send without putting the token in the URL:
//! `new WebSocket(url, ["bearer", token])` offers the two entries `bearer` and
//! the token, and the handshake answers with [`BEARER_PROTOCOL`] alone (a
//! browser fails a connection whose offered protocols get no answer, and the
//! answer must never repeat the token). It must not verify anything (see
//! `verify`) and must never log or copy the token anywhere but the caller.

use actix_web::http::header::{HeaderMap, AUTHORIZATION, COOKIE, SEC_WEBSOCKET_PROTOCOL};

/// The subprotocol that marks the next offered entry as the token, and the
/// one the server selects in its 101 response.
pub const BEARER_PROTOCOL: &str = "bearer";

/// Where the token was found, for logs and metrics (never the token itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Subprotocol,
    Query,
    Cookie,
}

impl TokenSource {
    pub fn label(self) -> &'static str {
        match self {
            TokenSource::Header => "header",
            TokenSource::Subprotocol => "subprotocol",
            TokenSource::Query => "query",
            TokenSource::Cookie => "cookie",
        }
    }
}

pub struct TokenLookup<'a> {
    pub query_param: &'a str,
    /// Empty: no cookie is read (cookie transport off).
    pub cookie: &'a str,
}

impl TokenLookup<'_> {
    pub fn find(&self, headers: &HeaderMap, query: &str) -> Option<(String, TokenSource)> {
        if let Some(token) = bearer_token(headers) {
            return Some((token.to_string(), TokenSource::Header));
        }
        if let Some(token) = subprotocol_token(headers) {
            return Some((token.to_string(), TokenSource::Subprotocol));
        }
        if let Some(token) = query_value(query, self.query_param) {
            return Some((token, TokenSource::Query));
        }
        if self.cookie.is_empty() {
            return None;
        }
        cookie_value(headers, self.cookie).map(|token| (token.to_string(), TokenSource::Cookie))
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The entry offered right after `bearer` in `Sec-WebSocket-Protocol`
/// (over all header lines, in order).
fn subprotocol_token(headers: &HeaderMap) -> Option<&str> {
    let mut entries = headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim);
    entries.find(|entry| entry.eq_ignore_ascii_case(BEARER_PROTOCOL))?;
    entries
        .next()
        .filter(|token| !token.is_empty() && !token.eq_ignore_ascii_case(BEARER_PROTOCOL))
}

/// Whether the client offered the `bearer` subprotocol, which the 101
/// answer then selects (subprotocol names compare exactly, RFC 6455 4.1).
pub fn offers_bearer_protocol(headers: &HeaderMap) -> bool {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|entry| entry.trim() == BEARER_PROTOCOL)
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (percent_decode(key)? == name)
            .then(|| percent_decode(value))
            .flatten()
            .filter(|value| !value.is_empty())
    })
}

fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (key, value) = pair.trim().split_once('=')?;
            let value = value.trim().trim_matches('"');
            (key.trim() == name && !value.is_empty()).then_some(value)
        })
}

/// Decodes `%XX` escapes and `+` as a space; `None` for broken escapes or
/// non-UTF-8 results, which no JWT contains.
fn percent_decode(input: &str) -> Option<String> {
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match byte {
            b'%' => {
                let hex = bytes.get(index + 1..index + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                index += 3;
            }
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            _ => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    const LOOKUP: TokenLookup<'static> = TokenLookup {
        query_param: "token",
        cookie: "access_token",
    };

    #[test]
    fn header_query_and_cookie_are_found() {
        let found = LOOKUP.find(&headers(&[("authorization", "Bearer abc.def")]), "");
        assert_eq!(found, Some(("abc.def".into(), TokenSource::Header)));
        let found = LOOKUP.find(&HeaderMap::new(), "a=1&token=x%2Ey&b");
        assert_eq!(found, Some(("x.y".into(), TokenSource::Query)));
        let found = LOOKUP.find(
            &headers(&[("cookie", "sessionid=s; access_token=\"c.d\"")]),
            "",
        );
        assert_eq!(found, Some(("c.d".into(), TokenSource::Cookie)));
    }

    #[test]
    fn no_cookie_is_read_unless_one_is_configured() {
        let lookup = TokenLookup {
            query_param: "token",
            cookie: "",
        };
        let cookie = headers(&[("cookie", "access_token=c.d; =e.f")]);
        assert_eq!(lookup.find(&cookie, ""), None);
    }

    #[test]
    fn subprotocol_bearer_form() {
        let found = LOOKUP.find(
            &headers(&[("sec-websocket-protocol", "bearer, h.p.s")]),
            "token=q.q.q",
        );
        assert_eq!(found, Some(("h.p.s".into(), TokenSource::Subprotocol)));
        let found = LOOKUP.find(
            &headers(&[
                ("sec-websocket-protocol", "chat, Bearer"),
                ("sec-websocket-protocol", "a.b.c"),
            ]),
            "",
        );
        assert_eq!(found, Some(("a.b.c".into(), TokenSource::Subprotocol)));
        let found = LOOKUP.find(
            &headers(&[
                ("authorization", "Bearer h.h.h"),
                ("sec-websocket-protocol", "bearer, s.s.s"),
            ]),
            "",
        );
        assert_eq!(found, Some(("h.h.h".into(), TokenSource::Header)));
        for offered in ["bearer", "bearer, ", "chat, a.b.c", "bearer, bearer"] {
            assert_eq!(
                LOOKUP.find(&headers(&[("sec-websocket-protocol", offered)]), ""),
                None,
                "{offered}"
            );
        }
    }

    #[test]
    fn absent_or_broken_values_find_nothing() {
        assert_eq!(LOOKUP.find(&HeaderMap::new(), "token=&x=%zz"), None);
        assert_eq!(LOOKUP.find(&HeaderMap::new(), "token=%e2%28"), None);
        assert_eq!(LOOKUP.find(&HeaderMap::new(), "token=%4"), None);
        assert_eq!(
            LOOKUP.find(&headers(&[("authorization", "Basic abc")]), ""),
            None
        );
    }
}
