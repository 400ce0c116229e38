//! Canary: proof, end to end, that a message sent the way Django sends one
//! still reaches this process.
//!
//! Each process is the only member of a group of its own
//! (`gateway-canary.<process>`); its layer periodically sends a
//! `gateway.canary` event to that group through the same Redis path the
//! backend uses (group membership, queue key or pub/sub channel, receiver,
//! decoder). This module names the group, builds the event, and when one
//! comes back records the round trip and tells readiness. Lost memberships,
//! a dead receiver or a broken subscription all show up as canaries that stop
//! arriving — the silent-loss failure no health check of a connection can
//! see. It must not do I/O; layers send, the router hands canaries back.

use std::sync::Arc;

use rmpv::Value;
use shared_proto::{Message, RouteView};

use crate::ops::health::Health;
use crate::ops::metrics::Metrics;

/// The event type of a canary; never shown to clients.
pub const CANARY_TYPE: &str = "gateway.canary";
const SENT_AT: &str = "sent_at";

pub struct Canary {
    group: Arc<str>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl Canary {
    pub fn new(process_id: &str, health: Arc<Health>, metrics: Arc<Metrics>) -> Canary {
        Canary {
            group: Arc::from(format!("gateway-canary.{process_id}")),
            health,
            metrics,
        }
    }

    /// The group only this process's canary channel belongs to.
    pub fn group(&self) -> &Arc<str> {
        &self.group
    }

    /// A canary event stamped `now`, with the `__asgi_channel__` list a core
    /// layer group_send carries (empty for the pub/sub layer).
    pub fn event(&self, channels: &[String], now: f64) -> Option<Message> {
        let mut entries = vec![
            (Value::from("type"), Value::from(CANARY_TYPE)),
            (Value::from(SENT_AT), Value::from(now)),
        ];
        if !channels.is_empty() {
            entries.push((
                Value::from("__asgi_channel__"),
                Value::Array(channels.iter().map(|c| Value::from(c.as_str())).collect()),
            ));
        }
        Message::from_value(Value::Map(entries)).ok()
    }

    /// Whether the event `view` read is a canary; if so, records its round
    /// trip as of `now`. Only `type` and `sent_at` are looked at.
    pub fn observe(&self, view: &RouteView<'_>, now: f64) -> bool {
        if view.message_type() != Some(CANARY_TYPE) {
            return false;
        }
        self.record(
            view.field(SENT_AT).and_then(|sent_at| sent_at.as_f64()),
            now,
        );
        true
    }

    fn record(&self, sent_at: Option<f64>, now: f64) {
        if let Some(sent_at) = sent_at {
            let round_trip = now - sent_at;
            if round_trip >= 0.0 {
                self.metrics.canary_round_trip.observe(round_trip);
            }
        }
        self.metrics.canaries_received.inc();
        self.health.canary_beat();
    }
}
