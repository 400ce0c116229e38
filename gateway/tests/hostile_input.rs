//! Property tests standing in for fuzzing where the stable toolchain has no
//! cargo-fuzz: whatever a client puts in a handshake — headers, query
//! string, Origin, proxy header — the parsers answer without panicking, and
//! a token found is always a piece of what the client sent.

use std::net::IpAddr;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use gateway::auth::credentials::{TokenLookup, TokenSource};
use gateway::config::{AuthConfig, LimitsConfig, MissingOrigin};
use gateway::edge::limits::Limits;
use gateway::edge::origin::OriginPolicy;
use proptest::prelude::*;

fn headers(pairs: &[(&'static str, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            map.append(HeaderName::from_static(name), value);
        }
    }
    map
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn token_extraction_never_panics_and_only_returns_what_was_sent(
        authorization in proptest::collection::vec(any::<u8>(), 0..200),
        cookie in proptest::collection::vec(any::<u8>(), 0..200),
        protocol in proptest::collection::vec(any::<u8>(), 0..200),
        query in "\\PC{0,300}",
    ) {
        let map = headers(&[
            ("authorization", authorization.clone()),
            ("cookie", cookie.clone()),
            ("sec-websocket-protocol", protocol.clone()),
        ]);
        let lookup = TokenLookup { query_param: "token", cookie: "access_token" };
        if let Some((token, source)) = lookup.find(&map, &query) {
            prop_assert!(!token.is_empty());
            // Query values are percent-decoded; every other source hands
            // back a verbatim piece of a header.
            if source != TokenSource::Query {
                let sent = [authorization, cookie, protocol].concat();
                prop_assert!(String::from_utf8_lossy(&sent).contains(&token));
            }
        }
    }

    #[test]
    fn origin_checks_never_panic(origin in "\\PC{0,2000}", present in any::<bool>()) {
        let config = AuthConfig {
            allowed_origins: vec!["https://*.example.com".into(), "http://localhost:*".into()],
            missing_origin: MissingOrigin::Deny,
            ..AuthConfig::default()
        };
        let policy = OriginPolicy::new(&config).expect("valid patterns");
        let value = present.then_some(origin.as_str());
        let _ = policy.check(std::iter::once(value));
    }

    #[test]
    fn the_client_address_is_always_a_real_address(
        // One to three header lines (a proxy may append its own), of any
        // text or of address-like entries.
        lines in proptest::collection::vec(
            prop_oneof!["\\PC{0,100}", "(([0-9]{1,3}\\.){3}[0-9]{1,3}(:[0-9]{1,5})?(, )?){1,3}"],
            1..4,
        ),
        peer in any::<[u8; 4]>(),
    ) {
        let limits = Limits::new(&LimitsConfig {
            trusted_proxies: vec!["127.0.0.0/8".into()],
            ..LimitsConfig::default()
        })
        .expect("a valid CIDR");
        let pairs: Vec<(&'static str, Vec<u8>)> = lines
            .iter()
            .map(|line| ("x-forwarded-for", line.clone().into_bytes()))
            .collect();
        let map = headers(&pairs);
        let peer = IpAddr::from(peer);
        let address = limits.client_address(peer, &map);
        // An untrusted peer is never overridden by its own header.
        if !peer.is_loopback() {
            prop_assert_eq!(address, peer);
        }
        // What it believes is the peer or an address the last line, the
        // one the trusted peer wrote, names or reaches through our proxies.
        if address != peer {
            let written = lines.join(",");
            prop_assert!(written.contains(&address.to_string()), "{} from {:?}", address, lines);
            prop_assert!(!address.is_loopback());
        }
    }
}
