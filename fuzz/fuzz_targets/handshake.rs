//! Fuzzes what the gateway reads from a WebSocket handshake before any token
//! is verified: token extraction (`gateway::auth::credentials::TokenLookup::find`,
//! header, `bearer` subprotocol, query, cookie), the Origin allowlist
//! (`gateway::edge::origin`, through the glob matcher) and the client address
//! behind trusted proxies (`gateway::edge::limits::Limits::client_address`).
//!
//! The input is text, one item a line, so seeds are readable: the first line
//! is the query string; `@peer ADDR` sets the peer address, `@allow PATTERN`
//! adds an Origin allowlist entry, `@proxy CIDR` a trusted proxy,
//! `@deny-missing` denies a missing Origin; every other line is a header,
//! `Name: value`. Invariants, besides "never panics": a token found is
//! non-empty and comes from where the source says; an Origin match respects
//! the pattern's fixed characters and segments; the verdict follows the
//! policy's rules; a client address is the one the documented walk over
//! every line of the proxy header gives (a reference written out here), the
//! peer or an untrusted entry, and only when the peer is a trusted proxy.
//! It must not do I/O.
#![no_main]

use actix_web::http::header::{
    HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, COOKIE, ORIGIN, SEC_WEBSOCKET_PROTOCOL,
};
use gateway::config::{AuthConfig, LimitsConfig, MissingOrigin};
use gateway::auth::credentials::{TokenLookup, TokenSource, BEARER_PROTOCOL};
use gateway::edge::limits::{parse_cidr, Limits};
use gateway::edge::origin::{OriginPattern, OriginPolicy, OriginVerdict};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

const PROXY_HEADER: &str = "x-forwarded-for";

struct Handshake {
    query: String,
    peer: IpAddr,
    allowed: Vec<String>,
    proxies: Vec<String>,
    missing: MissingOrigin,
    headers: HeaderMap,
}

fn parse(data: &[u8]) -> Option<Handshake> {
    let text = std::str::from_utf8(data).ok()?;
    let mut lines = text.split('\n');
    let mut handshake = Handshake {
        query: lines.next().unwrap_or_default().to_string(),
        peer: IpAddr::from([10, 0, 0, 1]),
        allowed: Vec::new(),
        proxies: vec!["10.0.0.0/8".into(), "fd00::/8".into()],
        missing: MissingOrigin::Allow,
        headers: HeaderMap::new(),
    };
    for line in lines {
        if let Some(address) = line.strip_prefix("@peer ") {
            handshake.peer = address.trim().parse().ok()?;
        } else if let Some(pattern) = line.strip_prefix("@allow ") {
            handshake.allowed.push(pattern.to_string());
        } else if let Some(cidr) = line.strip_prefix("@proxy ") {
            handshake.proxies.push(cidr.to_string());
        } else if line == "@deny-missing" {
            handshake.missing = MissingOrigin::Deny;
        } else if let Some((name, value)) = line.split_once(':') {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_bytes(value.trim_start().as_bytes()),
            ) else {
                continue;
            };
            handshake.headers.append(name, value);
        }
    }
    Some(handshake)
}

/// The visible-ASCII values of every header line called `name`.
fn values<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Vec<&'h str> {
    headers
        .get_all(name)
        .filter_map(|value| value.to_str().ok())
        .collect()
}

fn check_token(handshake: &Handshake) {
    let lookup = TokenLookup {
        query_param: "token",
        cookie: "access_token",
    };
    let Some((token, source)) = lookup.find(&handshake.headers, &handshake.query) else {
        return;
    };
    assert!(!token.is_empty(), "empty token from {}", source.label());
    let headers = &handshake.headers;
    let in_header = |name: &HeaderName| values(headers, name).iter().any(|v| v.contains(&token));
    match source {
        TokenSource::Header => {
            assert!(
                in_header(&AUTHORIZATION),
                "header token not in Authorization"
            );
            assert_eq!(token, token.trim(), "header token keeps whitespace");
        }
        TokenSource::Subprotocol => {
            assert!(
                in_header(&SEC_WEBSOCKET_PROTOCOL),
                "subprotocol token not offered"
            );
            assert!(!token.contains(','), "subprotocol token spans two entries");
            assert!(
                !token.eq_ignore_ascii_case(BEARER_PROTOCOL),
                "the marker itself taken as the token"
            );
        }
        TokenSource::Query => {
            assert!(
                handshake.query.contains('='),
                "query token from a query without a value"
            );
        }
        TokenSource::Cookie => {
            assert!(in_header(&COOKIE), "cookie token not in a Cookie header");
            assert!(!token.contains(';'), "cookie token spans two cookies");
        }
    }
}

/// `*` stands for one or more characters other than `:` and `/`, so a match
/// keeps every `:` and `/` of the pattern and adds none.
fn separators(text: &str) -> usize {
    text.bytes().filter(|b| matches!(b, b':' | b'/')).count()
}

fn check_origin(handshake: &Handshake) {
    let origins = values(&handshake.headers, &ORIGIN);
    for pattern_text in &handshake.allowed {
        let Ok(pattern) = OriginPattern::parse(pattern_text) else {
            continue;
        };
        let lowered = pattern_text.trim().to_ascii_lowercase();
        for origin in &origins {
            let origin = origin.trim();
            if !pattern.matches(origin) {
                continue;
            }
            let origin = origin.to_ascii_lowercase();
            assert!(origin.len() >= lowered.len(), "`*` matched nothing");
            assert_eq!(
                separators(&origin),
                separators(&lowered),
                "`*` crossed a segment"
            );
            if !lowered.contains('*') {
                assert_eq!(
                    origin, lowered,
                    "a pattern without `*` matched another origin"
                );
            }
        }
    }
    let config = AuthConfig {
        allowed_origins: handshake.allowed.clone(),
        missing_origin: handshake.missing,
        ..AuthConfig::default()
    };
    let Ok(policy) = OriginPolicy::new(&config) else {
        return;
    };
    let lines: Vec<Option<&str>> = handshake
        .headers
        .get_all(ORIGIN)
        .map(|value| value.to_str().ok())
        .collect();
    let verdict = policy.check(lines.iter().copied());
    let expected = match lines.as_slice() {
        [] if handshake.missing == MissingOrigin::Deny => OriginVerdict::Missing,
        [] => OriginVerdict::Allowed,
        [Some(origin)] => {
            let allowed = handshake.allowed.is_empty()
                || handshake.allowed.iter().any(|text| {
                    OriginPattern::parse(text).is_ok_and(|pattern| pattern.matches(origin.trim()))
                });
            if allowed {
                OriginVerdict::Allowed
            } else {
                OriginVerdict::NotAllowed
            }
        }
        _ => OriginVerdict::Malformed,
    };
    assert_eq!(verdict, expected, "origin verdict");
}

fn check_client_address(handshake: &Handshake) {
    // Limits::new refuses a list with an entry that is no CIDR, as the
    // configuration would: hand it the valid ones.
    let config = LimitsConfig {
        trusted_proxies: handshake
            .proxies
            .iter()
            .filter(|cidr| parse_cidr(cidr).is_ok())
            .cloned()
            .collect(),
        client_ip_header: PROXY_HEADER.into(),
        ..LimitsConfig::default()
    };
    let trusted: Vec<_> = handshake
        .proxies
        .iter()
        .filter_map(|cidr| parse_cidr(cidr).ok())
        .collect();
    let is_trusted = |address: &IpAddr| trusted.iter().any(|net| net.contains(address));
    let Ok(limits) = Limits::new(&config) else {
        panic!("Limits::new refused CIDRs parse_cidr accepts");
    };
    let address = limits.client_address(handshake.peer, &handshake.headers);
    assert_eq!(
        address,
        expected_client(handshake, &is_trusted),
        "the client address is not the documented walk's"
    );
    if address == handshake.peer {
        return;
    }
    assert!(
        is_trusted(&handshake.peer),
        "proxy header believed from an untrusted peer"
    );
    assert!(!is_trusted(&address), "a trusted proxy taken as the client");
}

/// The README's rule, spelled out as a reference: from a trusted peer, the
/// lines of the proxy header from last to first, each line's entries from
/// right to left; trusted entries are skipped, the first untrusted one is
/// the client, and an entry in none of the accepted forms (or a line that
/// is not visible ASCII) ends the walk at the peer.
fn expected_client(handshake: &Handshake, is_trusted: &dyn Fn(&IpAddr) -> bool) -> IpAddr {
    if !is_trusted(&handshake.peer) {
        return handshake.peer;
    }
    let name = HeaderName::from_static(PROXY_HEADER);
    let lines: Vec<&str> = handshake
        .headers
        .get_all(&name)
        .map(|value| value.to_str().unwrap_or(""))
        .collect();
    for line in lines.iter().rev() {
        for entry in line.split(',').rev() {
            match accepted_form(entry.trim()) {
                None => return handshake.peer,
                Some(address) if is_trusted(&address) => {}
                Some(address) => return address,
            }
        }
    }
    handshake.peer
}

/// `a.b.c.d`, `a.b.c.d:port`, an IPv6 address, `[v6]`, `[v6]:port`.
fn accepted_form(entry: &str) -> Option<IpAddr> {
    let port = |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u16>().is_ok();
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(address);
    }
    if let Some(inside) = entry.strip_prefix('[') {
        let end = inside.find(']')?;
        let after = &inside[end + 1..];
        if !after.is_empty() && !after.strip_prefix(':').is_some_and(port) {
            return None;
        }
        return inside[..end].parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let colon = entry.rfind(':')?;
    if !port(&entry[colon + 1..]) {
        return None;
    }
    entry[..colon].parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fuzz_target!(|data: &[u8]| {
    let Some(handshake) = parse(data) else {
        return;
    };
    check_token(&handshake);
    check_origin(&handshake);
    check_client_address(&handshake);
});
