//! Events: what a channels event becomes on the wire to the browser.
//!
//! `send_notification` becomes `{"message": …}`, byte for byte what the
//! replaced Channels consumer's `json.dumps` sent; configured pass-through
//! types become `{"type": …, …rest}`; `gateway.disconnect` closes the sockets
//! it reaches; anything else is refused with a reason.
//! The frame is rendered once per message, straight from the payload bytes
//! ([`RouteView`]), and its bytes shared by every socket. It must not know
//! about sockets or Redis.

use std::collections::HashSet;
use std::sync::Arc;

use bytestring::ByteString;
use shared_proto::close::CloseCode;
use shared_proto::RouteView;

use crate::config::ConfigError;
use crate::ops::metrics::DropReason;

/// The event type the seed's consumer handles.
pub const NOTIFICATION_TYPE: &str = "send_notification";

/// The event Django group_sends to close every socket of a group (logout,
/// password change, ban): `{"type": "gateway.disconnect", "code": 4006,
/// "reason": "…"}`; `code` and `reason` are optional.
pub const DISCONNECT_TYPE: &str = "gateway.disconnect";

/// What one event does to the sockets it reaches.
#[derive(Debug, Clone)]
pub enum Action {
    /// Send this frame (shared by every socket).
    Frame(ByteString),
    /// Close the socket with this code and reason.
    Disconnect(CloseCode, Arc<str>),
}

/// The close a `gateway.disconnect` asks for: one of the table's 4000-range
/// codes (else 4006), and its reason (else the table's).
fn disconnect(code: Option<f64>, reason: Option<&str>) -> Action {
    let code = code
        .filter(|code| code.fract() == 0.0 && (4000.0..5000.0).contains(code))
        .and_then(|code| CloseCode::from_u16(code as u16))
        .unwrap_or(CloseCode::DisconnectedByBackend);
    let reason = reason.unwrap_or(code.reason());
    Action::Disconnect(code, Arc::from(reason))
}

pub struct EventMapper {
    passthrough: HashSet<String>,
}

impl EventMapper {
    /// `passthrough_types` (`events.passthrough_types`) may not name
    /// `send_notification`, which is always relayed as `{"message": …}`.
    pub fn new(passthrough_types: &[String]) -> Result<EventMapper, ConfigError> {
        if passthrough_types
            .iter()
            .any(|name| name == NOTIFICATION_TYPE)
        {
            return Err(ConfigError::Invalid {
                key: "events.passthrough_types",
                reason: "send_notification is always relayed as {\"message\": ...}".into(),
            });
        }
        Ok(EventMapper {
            passthrough: passthrough_types.iter().cloned().collect(),
        })
    }

    /// The text frame for the event `view` read, or why there is none.
    pub fn frame(&self, view: &RouteView<'_>) -> Result<Action, DropReason> {
        let event_type = view.message_type().ok_or(DropReason::UnknownType)?;
        if event_type == DISCONNECT_TYPE {
            let code = view.field("code");
            let reason = view.field("reason");
            return Ok(disconnect(
                code.as_ref().and_then(|code| code.as_f64()),
                reason.as_ref().and_then(|reason| reason.as_str()),
            ));
        }
        // The renderer reserves for the value it writes; nothing to guess here.
        let mut out = String::new();
        if event_type == NOTIFICATION_TYPE {
            view.render_notification(&mut out)
                .map_err(|_| DropReason::RenderError)?;
        } else if self.passthrough.contains(event_type) {
            view.render_passthrough(&mut out)
                .map_err(|_| DropReason::RenderError)?;
        } else {
            return Err(DropReason::UnknownType);
        }
        Ok(Action::Frame(ByteString::from(out)))
    }
}
