//! Router: from one Redis payload to the outboxes of the sockets it addresses.
//!
//! Decodes the channels_redis payload once, renders the client frame once,
//! and pushes the same shared bytes to every local channel the message lists.
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
use shared_proto::Encryption;

use crate::events::EventMapper;
use crate::metrics::{DropReason, Metrics};
use crate::outbox::Pushed;
use crate::registry::Registry;

pub struct Router {
    registry: Arc<Registry>,
    events: EventMapper,
    codec: PayloadCodec,
    encryption: Option<Encryption>,
    metrics: Arc<Metrics>,
    last_warning_secs: AtomicU64,
}

impl Router {
    pub fn new(
        registry: Arc<Registry>,
        events: EventMapper,
        codec: PayloadCodec,
        encryption: Option<Encryption>,
        metrics: Arc<Metrics>,
    ) -> Router {
        Router {
            registry,
            events,
            codec,
            encryption,
            metrics,
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
        let message = match self
            .codec
            .decode_with(payload, self.encryption.as_ref(), now as u64)
        {
            Ok(message) => message,
            Err(DecodeError::Decrypt(DecryptError::Expired { .. })) => {
                self.metrics.dropped(DropReason::Expired);
                return;
            }
            Err(error) => {
                self.metrics.dropped(DropReason::DecodeError);
                self.warn_rate_limited(|| {
                    tracing::warn!(%error, bytes = payload.len(), "undecodable payload skipped");
                });
                return;
            }
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
        let frame = match self.events.frame(&message) {
            Ok(frame) => frame,
            Err(reason) => {
                self.metrics.dropped_many(reason, channels.len() as u64);
                if reason == DropReason::RenderError {
                    self.warn_rate_limited(|| {
                        tracing::warn!("event cannot be rendered as JSON; dropped");
                    });
                }
                return;
            }
        };
        for channel in channels.iter() {
            match channel {
                Ok(channel) => self.deliver(channel, &frame),
                Err(_) => self.metrics.dropped(DropReason::DecodeError),
            }
        }
    }

    fn deliver(&self, channel: &str, frame: &ByteString) {
        let outcome = self.registry.with_channel(channel, |outbox| {
            let pushed = outbox.push(frame.clone());
            if pushed == Pushed::Full {
                outbox.close(CloseCode::SlowConsumer);
            }
            pushed
        });
        match outcome {
            Some(Pushed::Queued) => {}
            Some(Pushed::Full) => self.metrics.dropped(DropReason::SlowConsumer),
            Some(Pushed::Closed) => self.metrics.dropped(DropReason::NoLocalSocket),
            None if self.registry.naming().conn_of(channel).is_some() => {
                self.metrics.dropped(DropReason::NoLocalSocket)
            }
            None => self.metrics.dropped(DropReason::ForeignChannel),
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
