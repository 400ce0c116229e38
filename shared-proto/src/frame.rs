//! The text frames exchanged with browsers: outbound event frames rendered
//! exactly as the Django consumer's `json.dumps` produced them, and the small
//! set of inbound frames a browser may send.
//!
//! This module owns the shape of those frames. It must not decide policy
//! (whether a token is valid, how large a frame may be, what to do after an
//! error): callers own that. Parsing never panics on arbitrary text.

use std::str::FromStr;

use serde_json::Value as JsonValue;

use crate::message::{Message, ASGI_CHANNEL_KEY, TYPE_KEY};
use crate::pyjson::{with_rollback, write_entry, write_value, RenderError};

/// The field the seed consumer forwards: it sends
/// `json.dumps({"message": event["message"]})`.
pub const NOTIFICATION_FIELD: &str = "message";

/// Appends the seed consumer's frame, `{"message": <event["message"]>}`,
/// byte-identical to Python's `json.dumps`. On error `out` is unchanged.
pub fn render_notification(message: &Message, out: &mut String) -> Result<(), RenderError> {
    let payload = message
        .get(NOTIFICATION_FIELD)
        .ok_or(RenderError::MissingField {
            field: NOTIFICATION_FIELD,
        })?;
    with_rollback(out, |out| {
        out.push_str("{\"message\": ");
        write_value(payload, out, 1)?;
        out.push('}');
        Ok(())
    })
}

/// Appends the whole event as a frame, `type` first and `__asgi_channel__`
/// left out: what `json.dumps({"type": m["type"], **rest})` gives in Python.
/// On error `out` is unchanged.
pub fn render_passthrough(message: &Message, out: &mut String) -> Result<(), RenderError> {
    let message_type = message
        .get(TYPE_KEY)
        .ok_or(RenderError::MissingField { field: TYPE_KEY })?;
    with_rollback(out, |out| {
        out.push_str("{\"type\": ");
        write_value(message_type, out, 1)?;
        for (key, value) in message.entries() {
            if matches!(key.as_str(), Some(TYPE_KEY | ASGI_CHANNEL_KEY)) {
                continue;
            }
            out.push_str(", ");
            write_entry(key, value, out, 1)?;
        }
        out.push('}');
        Ok(())
    })
}

/// A frame a browser may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    /// `{"token": "..."}`: the first message of a connection authenticates it.
    Auth {
        /// The bearer token, unverified.
        token: String,
    },
    /// `{"type": "refresh", "token": "..."}`: replace the token of a live
    /// connection before it expires.
    Refresh {
        /// The new bearer token, unverified.
        token: String,
    },
    /// `{"type": "ping"}`: application-level keepalive.
    Ping,
}

impl ClientFrame {
    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Auth { .. } => "auth",
            ClientFrame::Refresh { .. } => "refresh",
            ClientFrame::Ping => "ping",
        }
    }
}

/// How much of an unknown `type` is kept in the error, so a hostile client
/// cannot make the gateway log megabytes.
const MAX_REPORTED_TYPE_CHARS: usize = 64;

/// Why an inbound frame was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientFrameError {
    /// Not JSON at all.
    #[error("frame is not valid JSON (line {line}, column {column})")]
    Malformed {
        /// Line of the syntax error, 1-based.
        line: usize,
        /// Column of the syntax error, 1-based.
        column: usize,
    },
    /// Valid JSON, but not an object.
    #[error("frame is not a JSON object")]
    NotAnObject,
    /// `type` present but not a string.
    #[error("frame \"type\" is not a string")]
    TypeNotAString,
    /// `type` names no frame this gateway knows (truncated to 64 characters).
    #[error("unknown frame type {0:?}")]
    UnknownType(String),
    /// Neither a `type` nor a `token`.
    #[error("frame has neither \"type\" nor \"token\"")]
    MissingType,
    /// A frame that needs a token has none.
    #[error("frame has no \"token\"")]
    MissingToken,
    /// `token` present but not a non-empty string.
    #[error("frame \"token\" is not a non-empty string")]
    InvalidToken,
}

/// Parses one inbound text frame.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, ClientFrameError> {
    let parsed: JsonValue =
        serde_json::from_str(text).map_err(|error| ClientFrameError::Malformed {
            line: error.line(),
            column: error.column(),
        })?;
    let JsonValue::Object(mut fields) = parsed else {
        return Err(ClientFrameError::NotAnObject);
    };
    match fields.get(TYPE_KEY) {
        None if !fields.contains_key(TOKEN_FIELD) => Err(ClientFrameError::MissingType),
        None => Ok(ClientFrame::Auth {
            token: take_token(&mut fields)?,
        }),
        Some(JsonValue::String(kind)) => match kind.as_str() {
            "refresh" => Ok(ClientFrame::Refresh {
                token: take_token(&mut fields)?,
            }),
            "ping" => Ok(ClientFrame::Ping),
            other => Err(ClientFrameError::UnknownType(
                other.chars().take(MAX_REPORTED_TYPE_CHARS).collect(),
            )),
        },
        Some(_) => Err(ClientFrameError::TypeNotAString),
    }
}

const TOKEN_FIELD: &str = "token";

fn take_token(fields: &mut serde_json::Map<String, JsonValue>) -> Result<String, ClientFrameError> {
    match fields.remove(TOKEN_FIELD) {
        None => Err(ClientFrameError::MissingToken),
        Some(JsonValue::String(token)) if !token.is_empty() => Ok(token),
        Some(_) => Err(ClientFrameError::InvalidToken),
    }
}

impl FromStr for ClientFrame {
    type Err = ClientFrameError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_client_frame(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value;

    fn message(pairs: Vec<(&str, Value)>) -> Message {
        Message::from_value(Value::Map(
            pairs
                .into_iter()
                .map(|(key, value)| (Value::from(key), value))
                .collect(),
        ))
        .unwrap()
    }

    #[test]
    fn notification_wraps_the_message_field() {
        let event = message(vec![
            ("type", Value::from("send_notification")),
            (
                "message",
                Value::Map(vec![(Value::from("t"), Value::from("é"))]),
            ),
            (ASGI_CHANNEL_KEY, Value::from("specific.a!b")),
        ]);
        let mut out = String::new();
        render_notification(&event, &mut out).unwrap();
        assert_eq!(out, r#"{"message": {"t": "\u00e9"}}"#);
    }

    #[test]
    fn notification_requires_the_field() {
        let event = message(vec![("type", Value::from("x"))]);
        let mut out = String::from("kept");
        assert_eq!(
            render_notification(&event, &mut out),
            Err(RenderError::MissingField { field: "message" })
        );
        assert_eq!(out, "kept");
    }

    #[test]
    fn passthrough_puts_type_first_and_drops_the_channel() {
        let event = message(vec![
            ("a", Value::from(1)),
            (ASGI_CHANNEL_KEY, Value::Array(vec![Value::from("x!y")])),
            ("type", Value::from("chat.message")),
            ("b", Value::Nil),
        ]);
        let mut out = String::new();
        render_passthrough(&event, &mut out).unwrap();
        assert_eq!(out, r#"{"type": "chat.message", "a": 1, "b": null}"#);
    }

    #[test]
    fn client_frames() {
        assert_eq!(
            parse_client_frame(r#"{"token": "abc"}"#),
            Ok(ClientFrame::Auth {
                token: "abc".into()
            })
        );
        assert_eq!(
            parse_client_frame(r#"{"type": "refresh", "token": "t2"}"#),
            Ok(ClientFrame::Refresh { token: "t2".into() })
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        );
        assert_eq!(
            parse_client_frame(r#"{"type": "refresh"}"#),
            Err(ClientFrameError::MissingToken)
        );
        assert_eq!(
            parse_client_frame(r#"{"type": "nope"}"#),
            Err(ClientFrameError::UnknownType("nope".into()))
        );
        assert_eq!(
            parse_client_frame(r#"{"type": 1}"#),
            Err(ClientFrameError::TypeNotAString)
        );
        assert_eq!(
            parse_client_frame(r#"{"token": 5}"#),
            Err(ClientFrameError::InvalidToken)
        );
        assert_eq!(
            parse_client_frame(r#"{"token": ""}"#),
            Err(ClientFrameError::InvalidToken)
        );
        assert_eq!(parse_client_frame("[]"), Err(ClientFrameError::NotAnObject));
        assert_eq!(parse_client_frame("{}"), Err(ClientFrameError::MissingType));
        assert!(matches!(
            parse_client_frame("{"),
            Err(ClientFrameError::Malformed { .. })
        ));
        let long_type = format!(r#"{{"type": "{}"}}"#, "x".repeat(1000));
        match parse_client_frame(&long_type) {
            Err(ClientFrameError::UnknownType(kind)) => assert_eq!(kind.len(), 64),
            other => panic!("unexpected {other:?}"),
        }
    }
}
