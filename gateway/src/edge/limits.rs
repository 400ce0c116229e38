//! Limits: how many sockets this process, one user and one client address
//! may hold, how fast new sockets may arrive, and who the client address is.
//!
//! An admission is taken before the upgrade and released when the socket
//! ends (its guard lives as long as the socket); a socket upgraded to wait
//! for its first-message token holds an anonymous one (the process and its
//! address) and names its user once the token verified. Two connect rates,
//! on separate budgets: one per client address, spent before any token is
//! read, and one for the process, spent only by handshakes whose
//! credentials verified, so clients without a valid token cannot starve
//! the reconnects of users who have one. The client address is the
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
        TokenBucket::starting_at(rate, burst, Instant::now())
    }

    fn starting_at(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            refilled: now,
        }
    }

    /// Whether the bucket has refilled to its burst by `now`.
    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
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
    /// The process's budget for authenticated handshakes.
    connects: Option<Mutex<TokenBucket>>,
    /// Each client address's budget for handshakes of any kind.
    address_connects: Option<Mutex<AddressBuckets>>,
    counts: Mutex<Counts>,
}

/// One admitted socket's share of the limits; dropping it gives it back.
/// `user` is `None` while a first-message socket has not authenticated.
pub struct Admission {
    limits: Arc<Limits>,
    user: Option<Arc<str>>,
    address: IpAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(user) = &self.user {
            release(&mut counts.per_user, user);
        }
        release(&mut counts.per_address, &self.address);
    }
}

impl Admission {
    /// Names the user of an anonymous admission (the only kind there is
    /// before this) once its token verified: the process's connect budget
    /// and the per-user count apply now. On a refusal the admission is
    /// dropped (and given back).
    pub fn identify(mut self, user: &str) -> Result<Admission, Refusal> {
        let limits = self.limits.clone();
        limits.take_connect()?;
        let mut counts = limits.counts.lock();
        if over(
            counts.per_user.get(user).copied().unwrap_or(0),
            limits.config.max_sockets_per_user,
        ) {
            return Err(Refusal::UserFull);
        }
        let user: Arc<str> = Arc::from(user);
        *counts.per_user.entry(user.clone()).or_insert(0) += 1;
        self.user = Some(user);
        Ok(self)
    }
}

/// Per-address token buckets, kept while they are not full: a bucket that
/// has refilled to its burst says no more than a new one would, so it is
/// swept away, which bounds the table by the addresses seen in the last
/// `burst / rate` seconds.
struct AddressBuckets {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, TokenBucket>,
    swept: Instant,
}

/// Past this many addresses in one refill window the table stops growing
/// and new addresses pass unmetered: a client with that many addresses is
/// not held back by a per-address rate anyway, and nobody else is refused.
const MAX_TRACKED_ADDRESSES: usize = 100_000;

impl AddressBuckets {
    fn try_take(&mut self, address: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= 1024 && now.saturating_duration_since(self.swept).as_secs() >= 1 {
            self.swept = now;
            self.buckets.retain(|_, bucket| !bucket.is_full(now));
        }
        let key = rate_key(address);
        if let Some(bucket) = self.buckets.get_mut(&key) {
            return bucket.try_take(now);
        }
        if self.buckets.len() >= MAX_TRACKED_ADDRESSES {
            return true;
        }
        let mut bucket = TokenBucket::starting_at(self.rate, self.burst, now);
        let taken = bucket.try_take(now);
        self.buckets.insert(key, bucket);
        taken
    }
}

/// The key an address's connect rate is kept under: the address, or for
/// IPv6 its /64, the block one subscriber gets.
fn rate_key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(std::net::Ipv6Addr::from(bits))
        }
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
        let address_connects = (config.connect_rate_per_ip > 0.0).then(|| {
            Mutex::new(AddressBuckets {
                rate: config.connect_rate_per_ip,
                burst: config.connect_burst_per_ip.max(1.0),
                buckets: HashMap::new(),
                swept: Instant::now(),
            })
        });
        Ok(Limits {
            trusted_proxies,
            config: config.clone(),
            connects,
            address_connects,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// The cheap, token-free check that runs first: the address's connect
    /// rate and its socket count.
    pub fn precheck(&self, address: IpAddr) -> Result<(), Refusal> {
        if let Some(buckets) = &self.address_connects {
            if !buckets.lock().try_take(address, Instant::now()) {
                return Err(Refusal::AddressConnectRate);
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

    /// Spends one of the process's connects (authenticated handshakes only).
    fn take_connect(&self) -> Result<(), Refusal> {
        match &self.connects {
            Some(bucket) if !bucket.lock().try_take(Instant::now()) => Err(Refusal::ConnectRate),
            _ => Ok(()),
        }
    }

    /// Counts one more socket for `user` from `address`, whose credentials
    /// verified, unless a limit is reached.
    pub fn admit(self: &Arc<Self>, user: &str, address: IpAddr) -> Result<Admission, Refusal> {
        self.admit_anonymous(address)?.identify(user)
    }

    /// Counts one more socket from `address` whose user is not known yet
    /// (a first-message socket), unless the process or the address is full.
    pub fn admit_anonymous(self: &Arc<Self>, address: IpAddr) -> Result<Admission, Refusal> {
        let mut counts = self.counts.lock();
        if over(counts.total, self.config.max_sockets) {
            return Err(Refusal::ProcessFull);
        }
        if over(
            counts.per_address.get(&address).copied().unwrap_or(0),
            self.config.max_sockets_per_ip,
        ) {
            return Err(Refusal::AddressFull);
        }
        counts.total += 1;
        *counts.per_address.entry(address).or_insert(0) += 1;
        Ok(Admission {
            limits: self.clone(),
            user: None,
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
    fn an_anonymous_share_counts_and_names_its_user_once() {
        let limits = Arc::new(Limits::new(&config()).expect("valid limits"));
        let waiting = limits.admit_anonymous(ip("1.1.1.1")).expect("anonymous");
        let _other = limits
            .admit("1", ip("1.1.1.1"))
            .expect("second of the address");
        assert_eq!(limits.precheck(ip("1.1.1.1")), Err(Refusal::AddressFull));
        assert_eq!(
            limits.admit_anonymous(ip("1.1.1.1")).err(),
            Some(Refusal::AddressFull)
        );
        // Naming user 1 (who holds one socket) keeps the count at two.
        let named = waiting.identify("1").expect("user 1's second socket");
        assert_eq!(
            limits.admit("1", ip("2.2.2.2")).err(),
            Some(Refusal::UserFull)
        );
        let third = limits
            .admit("2", ip("2.2.2.2"))
            .expect("the process's third");
        assert_eq!(
            limits.admit_anonymous(ip("3.3.3.3")).err(),
            Some(Refusal::ProcessFull)
        );
        drop(named);
        drop(third);
        assert_eq!(limits.counts.lock().per_user.get("1").copied(), Some(1));
        assert_eq!(limits.counts.lock().total, 1);
        // A refused naming gives the anonymous share back.
        let _second_of_1 = limits.admit("1", ip("5.5.5.5")).expect("user 1's second");
        let waiting = limits.admit_anonymous(ip("4.4.4.4")).expect("room again");
        assert_eq!(waiting.identify("1").err(), Some(Refusal::UserFull));
        assert_eq!(limits.counts.lock().per_address.get(&ip("4.4.4.4")), None);
        assert_eq!(limits.counts.lock().total, 2);
    }

    #[test]
    fn the_process_connect_rate_is_spent_only_by_identified_sockets() {
        let limits = Arc::new(
            Limits::new(&LimitsConfig {
                connect_rate: 0.001,
                connect_burst: 1.0,
                ..LimitsConfig::default()
            })
            .expect("valid limits"),
        );
        for _ in 0..10 {
            assert_eq!(limits.precheck(ip("6.6.6.6")), Ok(()));
            drop(limits.admit_anonymous(ip("6.6.6.6")).expect("anonymous"));
        }
        let _first = limits.admit("1", ip("1.1.1.1")).expect("first connect");
        assert_eq!(
            limits.admit("2", ip("1.1.1.1")).err(),
            Some(Refusal::ConnectRate)
        );
    }

    #[test]
    fn address_buckets_are_per_address_per_ipv6_block_and_swept_when_full() {
        let start = Instant::now();
        let mut buckets = AddressBuckets {
            rate: 10.0,
            burst: 2.0,
            buckets: HashMap::new(),
            swept: start,
        };
        assert!(buckets.try_take(ip("1.1.1.1"), start));
        assert!(buckets.try_take(ip("1.1.1.1"), start));
        assert!(!buckets.try_take(ip("1.1.1.1"), start));
        assert!(buckets.try_take(ip("1.1.1.2"), start));
        assert!(buckets.try_take(ip("2001:db8::1"), start));
        assert!(buckets.try_take(ip("2001:db8::ffff"), start));
        assert!(!buckets.try_take(ip("2001:db8::2"), start), "one /64");
        assert!(buckets.try_take(ip("2001:db8:0:1::1"), start));
        // Many addresses later, the full buckets are swept away.
        for n in 0..2000u32 {
            let address = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            assert!(buckets.try_take(address, start));
        }
        let later = start + Duration::from_secs(2);
        assert!(buckets.try_take(ip("9.9.9.9"), later));
        assert_eq!(buckets.buckets.len(), 1, "only the new one is left");
        assert!(buckets.try_take(ip("1.1.1.1"), later), "refilled");
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
