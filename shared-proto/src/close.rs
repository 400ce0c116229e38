//! The WebSocket close codes the gateway sends, each with a short reason
//! string and the reconnect behaviour a client should follow.
//!
//! The table lives in one place, the `close_codes!` invocation below, from
//! which the enum, its lookups and [`CLOSE_CODES`] are all generated, so
//! client documentation can be produced from (or checked against)
//! [`CLOSE_CODES`]. This module must not decide when to close; the gateway
//! picks the code.

use std::fmt;

/// What a client should do after the server closed with a given code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReconnectAdvice {
    /// Do not reconnect automatically.
    Never,
    /// Reconnect only once a new (refreshed or re-issued) token is available.
    AfterNewToken,
    /// Reconnect after an exponential, randomized (jittered) backoff.
    Backoff,
    /// Reconnect after the delay the server hinted (fall back to backoff
    /// when no hint arrived).
    AfterHint,
}

impl ReconnectAdvice {
    /// Stable lower-case label for docs and client code generation.
    pub fn as_str(self) -> &'static str {
        match self {
            ReconnectAdvice::Never => "never",
            ReconnectAdvice::AfterNewToken => "after_new_token",
            ReconnectAdvice::Backoff => "backoff",
            ReconnectAdvice::AfterHint => "after_hint",
        }
    }
}

/// One row of the close-code table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseCodeInfo {
    /// The code.
    pub code: CloseCode,
    /// The variant name, e.g. `TokenExpired`.
    pub name: &'static str,
    /// The reason string sent in the close frame (at most 123 bytes, the
    /// WebSocket limit).
    pub reason: &'static str,
    /// What the client should do next.
    pub advice: ReconnectAdvice,
    /// One sentence for humans: when the server uses it and what to do.
    pub description: &'static str,
}

macro_rules! close_codes {
    ($($variant:ident = $code:literal, $advice:ident, $reason:literal, $description:literal;)+) => {
        /// A close code the gateway may send. See [`CLOSE_CODES`] for the table.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u16)]
        pub enum CloseCode {
            $(
                #[doc = $description]
                $variant = $code,
            )+
        }

        /// Every close code with its reason and reconnect advice, in code order.
        pub const CLOSE_CODES: &[CloseCodeInfo] = &[
            $(
                CloseCodeInfo {
                    code: CloseCode::$variant,
                    name: stringify!($variant),
                    reason: $reason,
                    advice: ReconnectAdvice::$advice,
                    description: $description,
                },
            )+
        ];

        impl CloseCode {
            /// The code sent on the wire.
            pub const fn as_u16(self) -> u16 {
                self as u16
            }

            /// The close code with this number, if the gateway defines it.
            pub const fn from_u16(code: u16) -> Option<Self> {
                match code {
                    $($code => Some(CloseCode::$variant),)+
                    _ => None,
                }
            }

            /// What a client should do after receiving this code.
            pub const fn reconnect_advice(self) -> ReconnectAdvice {
                match self {
                    $(CloseCode::$variant => ReconnectAdvice::$advice,)+
                }
            }

            /// The short reason string for the close frame.
            pub const fn reason(self) -> &'static str {
                match self {
                    $(CloseCode::$variant => $reason,)+
                }
            }

            /// The variant name, e.g. `TokenExpired`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(CloseCode::$variant => stringify!($variant),)+
                }
            }

            /// One sentence for humans.
            pub const fn description(self) -> &'static str {
                match self {
                    $(CloseCode::$variant => $description,)+
                }
            }
        }
    };
}

close_codes! {
    Normal = 1000, Never, "normal closure",
        "The connection finished normally; do not reconnect automatically.";
    GoingAway = 1001, AfterHint, "server shutting down",
        "The server is shutting down; reconnect after the delay its reason hints (`retry_after_ms=N`), else after a short randomized one.";
    ProtocolError = 1002, Never, "protocol error",
        "The client broke RFC 6455 (a bad frame, close frame or fragment sequence); fix the client.";
    UnsupportedData = 1003, Never, "binary frames are not supported",
        "The client sent a binary frame; only text frames are accepted. Fix the client.";
    InvalidPayload = 1007, Never, "invalid UTF-8",
        "The client sent text (or a close reason) that is not valid UTF-8; fix the client.";
    PolicyViolation = 1008, Never, "policy violation",
        "The client broke a protocol rule not covered by a more specific code; do not retry unchanged.";
    MessageTooBig = 1009, Never, "message too large",
        "The client sent a message larger than the server accepts; do not retry unchanged.";
    InternalError = 1011, Backoff, "internal error",
        "The server hit an unexpected error; reconnect with backoff.";
    Unauthorized = 4001, AfterNewToken, "invalid token",
        "The token was missing or invalid; reconnect only with a new token.";
    TokenExpired = 4002, AfterNewToken, "token expired",
        "The token expired; refresh it and reconnect immediately.";
    Forbidden = 4003, Never, "forbidden",
        "The token is valid but not allowed to connect; do not reconnect.";
    SlowConsumer = 4004, Backoff, "client too slow",
        "The client did not read fast enough and its buffer overflowed; reconnect with backoff.";
    PingTimeout = 4005, Backoff, "ping timeout",
        "The client stopped answering keepalives; reconnect with backoff.";
    DisconnectedByBackend = 4006, Never, "disconnected by backend",
        "The backend asked for this connection to be closed; do not reconnect automatically.";
    RateLimited = 4007, Backoff, "rate limited",
        "The client sent frames too often, or its token arrived (first message) over a connect rate or connection limit; reconnect with backoff.";
}

impl CloseCode {
    /// The full table row for this code.
    pub fn info(self) -> CloseCodeInfo {
        CloseCodeInfo {
            code: self,
            name: self.name(),
            reason: self.reason(),
            advice: self.reconnect_advice(),
            description: self.description(),
        }
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.as_u16()
    }
}

impl TryFrom<u16> for CloseCode {
    type Error = u16;

    /// Gives the number back when the gateway does not define it.
    fn try_from(code: u16) -> Result<Self, Self::Error> {
        CloseCode::from_u16(code).ok_or(code)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} {}", self.as_u16(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6455: the close payload is at most 125 bytes, two of them the code.
    const MAX_REASON_BYTES: usize = 123;

    #[test]
    fn table_is_consistent() {
        let mut previous = 0;
        for row in CLOSE_CODES {
            assert!(
                row.code.as_u16() > previous,
                "table out of order at {}",
                row.name
            );
            previous = row.code.as_u16();
            assert_eq!(CloseCode::from_u16(row.code.as_u16()), Some(row.code));
            assert_eq!(row.code.info(), *row);
            assert!(!row.reason.is_empty() && row.reason.len() <= MAX_REASON_BYTES);
            assert!(row.reason.is_ascii());
        }
        assert_eq!(CLOSE_CODES.len(), 15);
    }

    #[test]
    fn documented_codes_and_advice() {
        let expected = [
            (1000, ReconnectAdvice::Never),
            (1001, ReconnectAdvice::AfterHint),
            (1002, ReconnectAdvice::Never),
            (1003, ReconnectAdvice::Never),
            (1007, ReconnectAdvice::Never),
            (1008, ReconnectAdvice::Never),
            (1009, ReconnectAdvice::Never),
            (1011, ReconnectAdvice::Backoff),
            (4001, ReconnectAdvice::AfterNewToken),
            (4002, ReconnectAdvice::AfterNewToken),
            (4003, ReconnectAdvice::Never),
            (4004, ReconnectAdvice::Backoff),
            (4005, ReconnectAdvice::Backoff),
            (4006, ReconnectAdvice::Never),
            (4007, ReconnectAdvice::Backoff),
        ];
        for (code, advice) in expected {
            let close = CloseCode::try_from(code).unwrap();
            assert_eq!(close.reconnect_advice(), advice, "{close}");
        }
        assert_eq!(CloseCode::try_from(4999), Err(4999));
        assert_eq!(u16::from(CloseCode::TokenExpired), 4002);
    }
}
