//! Events: what a channels event becomes on the wire to the browser.
//!
//! `send_notification` becomes `{"message": …}`, byte for byte what the
//! replaced Channels consumer's `json.dumps` sent; configured pass-through
//! types become `{"type": …, …rest}`; anything else is refused with a reason.
//! The frame is rendered once per message and its bytes shared by every
//! socket; on the routing hot path straight from the payload bytes
//! ([`RouteView`]), elsewhere from a decoded [`Message`], with identical
//! results. It must not know about sockets or Redis.

use std::collections::HashSet;

use bytestring::ByteString;
use shared_proto::frame::{render_notification, render_passthrough};
use shared_proto::{Message, RouteView};

use crate::metrics::DropReason;

/// The event type the seed's consumer handles.
pub const NOTIFICATION_TYPE: &str = "send_notification";

pub struct EventMapper {
    passthrough: HashSet<String>,
}

impl EventMapper {
    pub fn new(passthrough_types: &[String]) -> EventMapper {
        EventMapper {
            passthrough: passthrough_types.iter().cloned().collect(),
        }
    }

    /// The text frame for `message`, or why there is none.
    pub fn frame(&self, message: &Message) -> Result<ByteString, DropReason> {
        let event_type = message.message_type().ok_or(DropReason::UnknownType)?;
        let mut out = String::with_capacity(64);
        if event_type == NOTIFICATION_TYPE {
            render_notification(message, &mut out).map_err(|_| DropReason::RenderError)?;
        } else if self.passthrough.contains(event_type) {
            render_passthrough(message, &mut out).map_err(|_| DropReason::RenderError)?;
        } else {
            return Err(DropReason::UnknownType);
        }
        Ok(ByteString::from(out))
    }

    /// [`EventMapper::frame`] for an event read by the single-pass reader.
    pub fn frame_view(&self, view: &RouteView<'_>) -> Result<ByteString, DropReason> {
        let event_type = view.message_type().ok_or(DropReason::UnknownType)?;
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
        Ok(ByteString::from(out))
    }
}
