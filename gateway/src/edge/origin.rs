//! Origin allowlist: decides whether a handshake's `Origin` header may open a
//! socket, the defence against cross-site WebSocket hijacking (a page on
//! another site opening a socket that the browser authenticates with the
//! user's cookie).
//!
//! Owns the pattern syntax (`scheme://host[:port]` where `*` stands for one
//! or more characters other than `:` and `/`, so `https://*.example.com`
//! matches subdomains but never another host or port; the literal `null`
//! matches the opaque origin of sandboxed frames and `file:` pages only when
//! listed), the rule that an empty list allows every origin, and the
//! `missing_origin` policy. It does no I/O, must not look at credentials and
//! must not log: the caller logs and counts the refusal.

use crate::auth::glob::glob_match;
use crate::config::{AuthConfig, ConfigError, MissingOrigin};

/// Why an allowlist entry cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("`{0}` is not scheme://host[:port] (no path, no trailing slash)")]
    Shape(String),
    #[error("`{0}` has a `*` in its scheme")]
    WildScheme(String),
}

/// One allowlist entry, lower-cased (origins compare case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    lowered: String,
}

impl OriginPattern {
    pub fn parse(pattern: &str) -> Result<OriginPattern, PatternError> {
        let lowered = pattern.trim().to_ascii_lowercase();
        if lowered == "null" {
            return Ok(OriginPattern { lowered });
        }
        let shape = || PatternError::Shape(pattern.to_string());
        let (scheme, authority) = lowered.split_once("://").ok_or_else(shape)?;
        if scheme.contains('*') {
            return Err(PatternError::WildScheme(pattern.to_string()));
        }
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            || authority.is_empty()
            || authority.contains('/')
            || authority.contains('@')
            || authority.contains("**")
            || authority
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(shape());
        }
        Ok(OriginPattern { lowered })
    }

    /// Whether `origin` (the header value) matches this pattern.
    pub fn matches(&self, origin: &str) -> bool {
        origin.len() <= MAX_ORIGIN_LEN
            && glob_match(
                self.lowered.as_bytes(),
                origin.to_ascii_lowercase().as_bytes(),
            )
    }
}

/// Longest `Origin` value compared at all; real origins are far shorter.
const MAX_ORIGIN_LEN: usize = 1024;

/// What [`OriginPolicy::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginVerdict {
    Allowed,
    /// The header names an origin the allowlist does not hold.
    NotAllowed,
    /// No `Origin` header and `missing_origin = "deny"`.
    Missing,
    /// More than one `Origin` header, or one that is not visible ASCII.
    Malformed,
}

impl OriginVerdict {
    /// Log and response reason; fixed words, never the header's value.
    pub fn label(self) -> &'static str {
        match self {
            OriginVerdict::Allowed => "allowed",
            OriginVerdict::NotAllowed => "origin_not_allowed",
            OriginVerdict::Missing => "origin_missing",
            OriginVerdict::Malformed => "origin_malformed",
        }
    }
}

/// The configured allowlist and missing-origin rule.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    patterns: Vec<OriginPattern>,
    missing: MissingOrigin,
}

impl OriginPolicy {
    /// Refuses a pattern of `auth.allowed_origins` it cannot read, naming
    /// the setting.
    pub fn new(config: &AuthConfig) -> Result<OriginPolicy, ConfigError> {
        let patterns = config
            .allowed_origins
            .iter()
            .map(|pattern| OriginPattern::parse(pattern))
            .collect::<Result<_, _>>()
            .map_err(|error| ConfigError::Invalid {
                key: "auth.allowed_origins",
                reason: error.to_string(),
            })?;
        Ok(OriginPolicy {
            patterns,
            missing: config.missing_origin,
        })
    }

    /// Judges the values of the handshake's `Origin` headers (`None` for a
    /// value that is not visible ASCII).
    pub fn check<'a>(&self, mut origins: impl Iterator<Item = Option<&'a str>>) -> OriginVerdict {
        let origin = match (origins.next(), origins.next()) {
            (None, _) => {
                return match self.missing {
                    MissingOrigin::Allow => OriginVerdict::Allowed,
                    MissingOrigin::Deny => OriginVerdict::Missing,
                }
            }
            (Some(Some(origin)), None) => origin.trim(),
            _ => return OriginVerdict::Malformed,
        };
        if self.patterns.is_empty() || self.patterns.iter().any(|p| p.matches(origin)) {
            OriginVerdict::Allowed
        } else {
            OriginVerdict::NotAllowed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> OriginPattern {
        OriginPattern::parse(text).expect("valid pattern")
    }

    #[test]
    fn exact_and_wildcard_patterns() {
        let exact = pattern("https://App.Example.com");
        assert!(exact.matches("https://app.example.com"));
        assert!(!exact.matches("https://app.example.com:8443"));
        assert!(!exact.matches("http://app.example.com"));
        assert!(!exact.matches("https://app.example.com.evil.net"));

        let sub = pattern("https://*.example.com");
        assert!(sub.matches("https://a.example.com"));
        assert!(sub.matches("https://a.b.example.com"));
        assert!(
            !sub.matches("https://example.com"),
            "star needs a character"
        );
        assert!(!sub.matches("https://evil-example.com"));
        assert!(!sub.matches("https://evil.com/.example.com"));
        assert!(!sub.matches("https://a.example.com:444"));
        assert!(!sub.matches("https://evil.com:1.example.com"));
        assert!(!sub.matches("http://a.example.com"));

        let port = pattern("http://localhost:*");
        assert!(port.matches("http://localhost:3000"));
        assert!(!port.matches("http://localhost"));
        assert!(!port.matches("http://localhost:3000:1"));
        assert!(!port.matches("http://localhost.evil.net:80"));

        let star_middle = pattern("https://app-*.example.com");
        assert!(star_middle.matches("https://app-pr-12.example.com"));
        assert!(!star_middle.matches("https://app-.example.com"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in [
            "example.com",
            "https://example.com/",
            "https://example.com/ws",
            "*://example.com",
            "https://",
            "https://user@example.com",
            "https://**.example.com",
        ] {
            assert!(OriginPattern::parse(bad).is_err(), "{bad}");
        }
        assert!(pattern("null").matches("null"));
        assert!(!pattern("https://*.example.com").matches("null"));
    }

    fn policy(patterns: &[&str], missing: MissingOrigin) -> OriginPolicy {
        OriginPolicy::new(&AuthConfig {
            allowed_origins: patterns.iter().map(|p| p.to_string()).collect(),
            missing_origin: missing,
            ..AuthConfig::default()
        })
        .expect("policy")
    }

    #[test]
    fn policy_verdicts() {
        let open = policy(&[], MissingOrigin::Allow);
        assert_eq!(
            open.check([Some("https://any.where")].into_iter()),
            OriginVerdict::Allowed
        );
        assert_eq!(open.check(std::iter::empty()), OriginVerdict::Allowed);

        let strict = policy(&["https://*.example.com"], MissingOrigin::Deny);
        assert_eq!(
            strict.check([Some("https://app.example.com")].into_iter()),
            OriginVerdict::Allowed
        );
        assert_eq!(
            strict.check([Some("https://evil.net")].into_iter()),
            OriginVerdict::NotAllowed
        );
        assert_eq!(strict.check(std::iter::empty()), OriginVerdict::Missing);
        assert_eq!(strict.check([None].into_iter()), OriginVerdict::Malformed);
        assert_eq!(
            strict.check([Some("https://app.example.com"), Some("https://evil.net")].into_iter()),
            OriginVerdict::Malformed
        );
    }
}
