//! Router: from one Redis payload to the outboxes of the sockets it addresses.
//!
//! Decodes the channels_redis payload once, renders the client frame once,
//! and pushes the same shared bytes to every local socket it addresses: the
//! channels a core-layer payload lists, or the local members of the group a
//! pub/sub message was published to.
//! Every message that is not delivered is counted with its reason; a bad
//! payload never stops the next one. It must not do I/O or wait: a full
//! outbox closes that socket instead of slowing the others.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytestring::ByteString;
use shared_proto::close::CloseCode;
use shared_proto::encryption::DecryptError;
use shared_proto::payload::{DecodeError, PayloadCodec};
use shared_proto::{Encryption, Message};

use crate::canary::Canary;
use crate::events::EventMapper;
use crate::metrics::{DropReason, Metrics};
use crate::outbox::Pushed;
use crate::registry::{ConnId, Registry};

pub struct Router {
    registry: Arc<Registry>,
    events: EventMapper,
    codec: PayloadCodec,
    encryption: Option<Encryption>,
    metrics: Arc<Metrics>,
    /// `<prefix>__group__`: how pub/sub channel names begin.
    pubsub_group_prefix: String,
    canary: Option<Arc<Canary>>,
    last_warning_secs: AtomicU64,
}

impl Router {
    pub fn new(
        registry: Arc<Registry>,
        events: EventMapper,
        codec: PayloadCodec,
        encryption: Option<Encryption>,
        metrics: Arc<Metrics>,
        prefix: &str,
        canary: Option<Arc<Canary>>,
    ) -> Router {
        Router {
            registry,
            events,
            codec,
            encryption,
            metrics,
            pubsub_group_prefix: shared_proto::names::pubsub_group_channel(prefix, ""),
            canary,
            last_warning_secs: AtomicU64::new(0),
        }
    }

    /// Routes one core-layer payload, addressed by its `__asgi_channel__`.
    pub fn route_queued(&self, payload: &[u8], sent_at: f64) {
        self.metrics.redis_message("core");
        let now = unix_now();
        if sent_at > 0.0 && now >= sent_at {
            self.metrics.publish_lag.observe(now - sent_at);
        }
        let Some(message) = self.decode(payload, now) else {
            return;
        };
        let channels = match message.channels() {
            Ok(channels) => channels,
            Err(error) => {
                self.metrics.dropped(DropReason::DecodeError);
                self.warn_rate_limited(|| {
                    tracing::warn!(%error, "payload without a usable __asgi_channel__ skipped");
                });
                return;
            }
        };
        let Some(frame) = self.frame(&message, channels.len()) else {
            return;
        };
        for channel in channels.iter() {
            let Ok(channel) = channel else {
                self.metrics.dropped(DropReason::DecodeError);
                continue;
            };
            match self.registry.naming().conn_of(channel) {
                Some(conn) => self.deliver(conn, &frame),
                None => self.metrics.dropped(DropReason::ForeignChannel),
            }
        }
    }

    /// Routes one pub/sub-layer message, addressed by the group its channel
    /// names (`<prefix>__group__<group>`), to every local member.
    pub fn route_published(&self, channel: &[u8], payload: &[u8]) {
        self.metrics.redis_message("pubsub");
        let group = std::str::from_utf8(channel)
            .ok()
            .and_then(|channel| channel.strip_prefix(self.pubsub_group_prefix.as_str()));
        let Some(group) = group else {
            self.metrics.dropped(DropReason::ForeignChannel);
            return;
        };
        let Some(message) = self.decode(payload, unix_now()) else {
            return;
        };
        let members = self.registry.group_members(group);
        if members.is_empty() {
            self.metrics.dropped(DropReason::NoLocalSocket);
            return;
        }
        let Some(frame) = self.frame(&message, members.len()) else {
            return;
        };
        for conn in members {
            self.deliver(conn, &frame);
        }
    }

    /// The payload the backend would write for `message`: serialized,
    /// encrypted if configured, behind the random prefix.
    pub fn encode(&self, message: &Message) -> Option<bytes::Bytes> {
        let mut payload = self.codec.encode(message, &mut rand::rng()).ok()?;
        if let Some(encryption) = &self.encryption {
            let body = payload.split_off(self.codec.random_prefix_length);
            payload.extend(encryption.encrypt(&body, unix_now() as u64));
        }
        Some(payload.into())
    }

    /// Decodes a payload; a canary is taken here and never reaches sockets.
    fn decode(&self, payload: &[u8], now: f64) -> Option<Message> {
        let message = self.decode_any(payload, now)?;
        match &self.canary {
            Some(canary) if canary.observe(&message) => None,
            _ => Some(message),
        }
    }

    fn decode_any(&self, payload: &[u8], now: f64) -> Option<Message> {
        match self
            .codec
            .decode_with(payload, self.encryption.as_ref(), now as u64)
        {
            Ok(message) => Some(message),
            Err(DecodeError::Decrypt(DecryptError::Expired { .. })) => {
                self.metrics.dropped(DropReason::Expired);
                None
            }
            Err(error) => {
                self.metrics.dropped(DropReason::DecodeError);
                self.warn_rate_limited(|| {
                    tracing::warn!(%error, bytes = payload.len(), "undecodable payload skipped");
                });
                None
            }
        }
    }

    /// The shared frame for `message`, or `None` (counted once per
    /// recipient) when it has none.
    fn frame(&self, message: &Message, recipients: usize) -> Option<ByteString> {
        match self.events.frame(message) {
            Ok(frame) => Some(frame),
            Err(reason) => {
                self.metrics.dropped_many(reason, recipients as u64);
                if reason == DropReason::RenderError {
                    self.warn_rate_limited(|| {
                        tracing::warn!("event cannot be rendered as JSON; dropped");
                    });
                }
                None
            }
        }
    }

    fn deliver(&self, conn: ConnId, frame: &ByteString) {
        let outcome = self.registry.with_conn(conn, |outbox| {
            let pushed = outbox.push(frame.clone());
            if pushed == Pushed::Full {
                outbox.close(CloseCode::SlowConsumer);
            }
            pushed
        });
        match outcome {
            Some(Pushed::Queued) => {}
            Some(Pushed::Full) => self.metrics.dropped(DropReason::SlowConsumer),
            Some(Pushed::Closed) | None => self.metrics.dropped(DropReason::NoLocalSocket),
        }
    }

    /// At most one warning per second, so a flood of bad input cannot flood
    /// the logs; the metrics still count every one.
    fn warn_rate_limited(&self, warn: impl FnOnce()) {
        let now = unix_now() as u64;
        let last = self.last_warning_secs.load(Ordering::Relaxed);
        if now > last
            && self
                .last_warning_secs
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            warn();
        }
    }
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64())
        .unwrap_or(0.0)
}
