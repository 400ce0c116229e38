//! Limits: how many sockets this process, one user and one client address
//! may hold, how fast new sockets may arrive, and who the client address is.
//!
//! An admission is taken before the upgrade and released when the socket
//! ends (its guard lives as long as the socket). The client address is the
//! peer address, or the configured proxy header when — and only when — the
//! peer is a trusted proxy, so nobody can dodge the per-address limit by
//! sending the header themselves. It must not do I/O or know about tokens;
//! its buckets read only the monotonic clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use actix_web::http::header::HeaderMap;
use ipnet::IpNet;
use parking_lot::Mutex;

use crate::config::{ConfigError, LimitsConfig};
use crate::ops::metrics::Refusal;

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            refilled: Instant::now(),
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_user: HashMap<Arc<str>, usize>,
    per_address: HashMap<IpAddr, usize>,
}

pub struct Limits {
    config: LimitsConfig,
    trusted_proxies: Vec<IpNet>,
    connects: Option<Mutex<TokenBucket>>,
    counts: Mutex<Counts>,
}

/// One admitted socket's share of the limits; dropping it gives it back.
pub struct Admission {
    limits: Arc<Limits>,
    user: Arc<str>,
    address: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock();
        counts.total = counts.total.saturating_sub(1);
        release(&mut counts.per_user, &self.user);
        release(&mut counts.per_address, &self.address);
    }
}

fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: &K) {
    if let Some(count) = map.get_mut(key) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            map.remove(key);
        }
    }
}

/// 0 means "no limit" in every count setting.
fn over(count: usize, limit: usize) -> bool {
    limit != 0 && count >= limit
}

impl Limits {
    /// Refuses a `trusted_proxies` entry that is no CIDR, naming the
    /// setting (the rates' ranges are plain data, checked by `config`).
    pub fn new(config: &LimitsConfig) -> Result<Limits, ConfigError> {
        let trusted_proxies = config
            .trusted_proxies
            .iter()
            .map(|cidr| {
                parse_cidr(cidr).map_err(|reason| ConfigError::Invalid {
                    key: "limits.trusted_proxies",
                    reason,
                })
            })
            .collect::<Result<_, _>>()?;
        let connects = (config.connect_rate > 0.0).then(|| {
            Mutex::new(TokenBucket::new(
                config.connect_rate,
                config.connect_burst.max(1.0),
            ))
        });
        Ok(Limits {
            trusted_proxies,
            config: config.clone(),
            connects,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// The cheap, token-free check that runs first: the connect rate and
    /// the per-address count.
    pub fn precheck(&self, address: IpAddr) -> Result<(), Refusal> {
        if let Some(bucket) = &self.connects {
            if !bucket.lock().try_take(Instant::now()) {
                return Err(Refusal::ConnectRate);
            }
        }
        let counts = self.counts.lock();
        if over(
            counts.per_address.get(&address).copied().unwrap_or(0),
            self.config.max_sockets_per_ip,
        ) {
            return Err(Refusal::AddressFull);
        }
        Ok(())
    }

    /// Counts one more socket for `user` from `address`, unless a limit is
    /// reached.
    pub fn admit(self: &Arc<Self>, user: &str, address: IpAddr) -> Result<Admission, Refusal> {
        let mut counts = self.counts.lock();
        if over(counts.total, self.config.max_sockets) {
            return Err(Refusal::ProcessFull);
        }
        if over(
            counts.per_user.get(user).copied().unwrap_or(0),
            self.config.max_sockets_per_user,
        ) {
            return Err(Refusal::UserFull);
        }
        if over(
            counts.per_address.get(&address).copied().unwrap_or(0),
            self.config.max_sockets_per_ip,
        ) {
            return Err(Refusal::AddressFull);
        }
        let user: Arc<str> = Arc::from(user);
        counts.total += 1;
        *counts.per_user.entry(user.clone()).or_insert(0) += 1;
        *counts.per_address.entry(address).or_insert(0) += 1;
        Ok(Admission {
            limits: self.clone(),
            user,
            address,
        })
    }

    /// The client's address: the peer, or the right-most untrusted entry of
    /// the proxy header when the peer is a trusted proxy.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.is_trusted(peer) || self.config.client_ip_header.is_empty() {
            return peer;
        }
        // Every line of the header, in order, is one list (RFC 9110 §5.3):
        // a proxy that appends a line of its own (HAProxy's `option
        // forwardfor`) puts the address it saw last. Walk from that nearest
        // hop outwards over our own proxies; the first address not one of
        // them is the client. Entries further left can be forged, and so can
        // anything behind an entry that is not an address: the walk stops
        // there, and the client is then the last proxy we trust.
        let entries = headers
            .get_all(self.config.client_ip_header.as_str())
            .rev()
            .flat_map(|line| line.to_str().unwrap_or("").rsplit(','));
        for entry in entries {
            let Some(address) = forwarded_address(entry) else {
                return peer;
            };
            if !self.is_trusted(address) {
                return address;
            }
        }
        peer
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|network| network.contains(&address))
    }
}

/// One entry of a forwarding header, in the forms proxies write: an IPv4
/// or IPv6 address, an IPv4 address with a port (`192.0.2.1:443`), an IPv6
/// address in brackets with or without a port (`[2001:db8::1]:443`). Any
/// other text (a name, `unknown`, garbage) is not an address.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(address);
    }
    if let Some(bracketed) = entry.strip_prefix('[') {
        let (inside, rest) = bracketed.split_once(']')?;
        if !(rest.is_empty() || rest.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return inside.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (host, port) = entry.rsplit_once(':')?;
    if !is_port(port) {
        return None;
    }
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

fn is_port(text: &str) -> bool {
    text.bytes().all(|byte| byte.is_ascii_digit()) && text.parse::<u16>().is_ok()
}

/// A CIDR (`10.0.0.0/8`) or a single address (`10.0.0.1`).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{text}` is not an IP address or CIDR"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};
    use std::time::Duration;

    fn config() -> LimitsConfig {
        LimitsConfig {
            max_sockets: 3,
            max_sockets_per_user: 2,
            max_sockets_per_ip: 2,
            trusted_proxies: vec!["10.0.0.0/8".into()],
            ..LimitsConfig::default()
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn counts_are_enforced_and_given_back() {
        let limits = Arc::new(Limits::new(&config()).expect("valid limits"));
        let first = limits.admit("1", ip("1.1.1.1")).expect("first");
        let _second = limits.admit("1", ip("1.1.1.2")).expect("second of user 1");
        assert_eq!(
            limits.admit("1", ip("1.1.1.3")).err(),
            Some(Refusal::UserFull)
        );
        let _third = limits
            .admit("2", ip("1.1.1.1"))
            .expect("second of the address");
        assert_eq!(limits.precheck(ip("1.1.1.1")), Err(Refusal::AddressFull));
        assert_eq!(
            limits.admit("3", ip("9.9.9.9")).err(),
            Some(Refusal::ProcessFull)
        );
        drop(first);
        assert_eq!(limits.precheck(ip("1.1.1.1")), Ok(()));
        let _fourth = limits
            .admit("3", ip("9.9.9.9"))
            .expect("a freed slot is reused");
        assert_eq!(
            limits.admit("4", ip("8.8.8.8")).err(),
            Some(Refusal::ProcessFull)
        );
    }

    #[test]
    fn the_proxy_header_counts_only_from_trusted_proxies() {
        let limits = Limits::new(&config()).expect("valid limits");
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_static("6.6.6.6, 2.2.2.2, 10.1.1.1"),
        );
        assert_eq!(
            limits.client_address(ip("10.0.0.5"), &headers),
            ip("2.2.2.2")
        );
        assert_eq!(
            limits.client_address(ip("3.3.3.3"), &headers),
            ip("3.3.3.3")
        );
    }

    #[test]
    fn every_line_of_the_proxy_header_counts_in_order() {
        let limits = Limits::new(&config()).expect("valid limits");
        let mut headers = HeaderMap::new();
        let name = HeaderName::from_static("x-forwarded-for");
        // The client forged a first line; the proxy appended its own.
        headers.append(name.clone(), HeaderValue::from_static("1.1.1.1"));
        headers.append(name.clone(), HeaderValue::from_static("2.2.2.2"));
        assert_eq!(
            limits.client_address(ip("10.0.0.5"), &headers),
            ip("2.2.2.2")
        );
        // A proxy chain split over lines: our own hops are skipped.
        headers.append(name, HeaderValue::from_static("10.9.9.9"));
        assert_eq!(
            limits.client_address(ip("10.0.0.5"), &headers),
            ip("2.2.2.2")
        );
    }

    #[test]
    fn an_entry_that_is_no_address_ends_the_walk() {
        let limits = Limits::new(&config()).expect("valid limits");
        for (value, expected) in [
            ("6.6.6.6, not-an-address", "10.0.0.5"),
            ("6.6.6.6, unknown, 10.1.1.1", "10.0.0.5"),
            ("6.6.6.6, 2.2.2.2:443", "2.2.2.2"),
            ("6.6.6.6, [2001:db8::1]", "2001:db8::1"),
            ("6.6.6.6, [2001:db8::1]:8443", "2001:db8::1"),
            ("6.6.6.6, 2001:db8::2", "2001:db8::2"),
            ("6.6.6.6, [2001:db8::1]x", "10.0.0.5"),
            ("6.6.6.6, 2.2.2.2:99999999", "10.0.0.5"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_static(value),
            );
            assert_eq!(
                limits.client_address(ip("10.0.0.5"), &headers),
                ip(expected),
                "{value}"
            );
        }
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 2.0);
        assert!(bucket.try_take(start) && bucket.try_take(start));
        assert!(!bucket.try_take(start));
        assert!(bucket.try_take(start + Duration::from_millis(110)));
    }
}
