//! Router: from one Redis payload to the outboxes of the sockets it addresses.
//!
//! Decodes the channels_redis payload once, renders the client frame once,
//! and pushes the same shared bytes to every local socket it addresses: the
//! channels a core-layer payload lists, or the local members of the group a
//! pub/sub message was published to.
//! Every message that is not delivered is counted with its reason; a bad
//! payload never stops the next one. It must not do I/O or wait: a full
//! outbox closes that socket instead of slowing the others. It does not
//! read the clock either: callers pass the time in (`ops::clock`).
//!
//! Payloads are read with the single-pass reader
//! ([`shared_proto::RouteView`]: no value tree, channel names borrowed from
//! the payload, the frame rendered from its bytes) and delivered to many
//! sockets a registry shard at a time.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use shared_proto::close::CloseCode;
use shared_proto::encryption::DecryptError;
use shared_proto::payload::{DecodeError, PayloadCodec};
use shared_proto::{Encryption, Message, NotAChannelName, RouteView};

use crate::ops::canary::Canary;
use crate::ops::metrics::{DropReason, Metrics};
use crate::relay::events::{Action, EventMapper};
use crate::relay::outbox::{CloseNote, MessageFrame, Outbox, Pushed, Wakeups};
use crate::relay::registry::{ConnId, Registry};

/// Below this many listed channels, delivering as they are read beats
/// collecting the ids for a shard-grouped delivery.
const GROUPED_ROUTING_MIN: usize = 32;

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

    /// Routes one core-layer payload, addressed by its `__asgi_channel__`,
    /// at `now` (Unix seconds: the publish lag, a Fernet token's age). The
    /// sockets it queued frames for are woken through `wakeups`.
    pub fn route_queued(&self, payload: &[u8], sent_at: f64, now: f64, wakeups: &mut Wakeups) {
        self.metrics.core_message();
        if sent_at > 0.0 && now >= sent_at {
            self.metrics.publish_lag.observe(now - sent_at);
        }
        let Some(body) = self.plaintext(payload, now) else {
            return;
        };
        let Some(view) = self.view(&body, payload.len(), now) else {
            return;
        };
        let channels = match view.channels() {
            Ok(channels) => channels,
            Err(error) => {
                self.metrics.dropped(DropReason::DecodeError);
                self.warn_rate_limited(now, || {
                    tracing::warn!(%error, "payload without a usable __asgi_channel__ skipped");
                });
                return;
            }
        };
        let Some(frame) = self.frame_of(self.events.frame(&view), channels.len(), now) else {
            return;
        };
        let frame = Routed::new(frame, Some(sent_at));
        if channels.len() < GROUPED_ROUTING_MIN {
            for channel in channels {
                self.deliver_to_channel(channel, &frame, wakeups);
            }
            return;
        }
        let mut conns = Vec::with_capacity(channels.len());
        let mut not_names = 0;
        let mut foreign = 0;
        for channel in channels {
            match channel.map(|name| self.registry.naming().conn_of(name)) {
                Ok(Some(conn)) => conns.push(conn),
                Ok(None) => foreign += 1,
                Err(NotAChannelName { .. }) => not_names += 1,
            }
        }
        self.count_drops(DropReason::DecodeError, not_names);
        self.count_drops(DropReason::ForeignChannel, foreign);
        self.deliver_many(&conns, &frame, wakeups);
    }

    fn deliver_to_channel(
        &self,
        channel: Result<&str, NotAChannelName>,
        frame: &Routed,
        wakeups: &mut Wakeups,
    ) {
        let Ok(channel) = channel else {
            self.metrics.dropped(DropReason::DecodeError);
            return;
        };
        match self.registry.naming().conn_of(channel) {
            Some(conn) => self.deliver(conn, frame, wakeups),
            None => self.metrics.dropped(DropReason::ForeignChannel),
        }
    }

    /// Routes one pub/sub-layer message, addressed by the group its channel
    /// names (`<prefix>__group__<group>`), to every local member, woken
    /// through `wakeups`.
    pub fn route_published(&self, channel: &[u8], payload: &[u8], now: f64, wakeups: &mut Wakeups) {
        self.metrics.pubsub_message();
        let group = std::str::from_utf8(channel)
            .ok()
            .and_then(|channel| channel.strip_prefix(self.pubsub_group_prefix.as_str()));
        let Some(group) = group else {
            self.metrics.dropped(DropReason::ForeignChannel);
            return;
        };
        let Some(body) = self.plaintext(payload, now) else {
            return;
        };
        let Some(view) = self.view(&body, payload.len(), now) else {
            return;
        };
        let members = self.registry.group_members(group);
        if members.is_empty() {
            self.metrics.dropped(DropReason::NoLocalSocket);
            return;
        }
        let Some(frame) = self.frame_of(self.events.frame(&view), members.len(), now) else {
            return;
        };
        self.deliver_many(&members, &Routed::new(frame, None), wakeups);
    }

    /// The positioned frame a replayed payload (read from a replay key, sent
    /// at `sent_at`) gives a recovering client: exactly what the live path
    /// would have queued for it. `None` for what has no frame (counted as
    /// the live path counts it) and for a `gateway.disconnect`, which is
    /// never replayed: it was meant for the sockets open at the time.
    pub(crate) fn replayed_frame(
        &self,
        payload: &[u8],
        sent_at: f64,
        now: f64,
    ) -> Option<(shared_proto::Position, bytestring::ByteString)> {
        let body = self.plaintext(payload, now)?;
        let view = self.view(&body, payload.len(), now)?;
        match self.frame_of(self.events.frame(&view), 1, now)? {
            Action::Frame(frame) => MessageFrame::new(frame, Some(sent_at)).into_positioned(),
            Action::Disconnect(..) => None,
        }
    }

    /// The payload the backend would write for `message`: serialized,
    /// encrypted if configured (stamped `now`), behind the random prefix.
    pub fn encode(&self, message: &Message, now: f64) -> Option<bytes::Bytes> {
        let mut payload = self.codec.encode(message, &mut rand::rng()).ok()?;
        if let Some(encryption) = &self.encryption {
            let body = payload.split_off(self.codec.random_prefix_length);
            payload.extend(encryption.encrypt(&body, now as u64));
        }
        Some(payload.into())
    }

    /// The plaintext body of a payload: prefix stripped, decrypted when the
    /// layer is encrypted (the only case that copies). Failures are counted
    /// as [`PayloadCodec::decode_with`]'s would be.
    fn plaintext<'a>(&self, payload: &'a [u8], now: f64) -> Option<Cow<'a, [u8]>> {
        let result =
            self.codec
                .strip_random_prefix(payload)
                .and_then(|body| match &self.encryption {
                    None => Ok(Cow::Borrowed(body)),
                    Some(encryption) => encryption
                        .decrypt(body, now as u64)
                        .map(Cow::Owned)
                        .map_err(DecodeError::from),
                });
        self.decoded(result, payload.len(), now)
    }

    /// Reads a plaintext body; a canary is taken here and never reaches
    /// sockets.
    fn view<'a>(&self, body: &'a [u8], payload_len: usize, now: f64) -> Option<RouteView<'a>> {
        let view = self.decoded(self.codec.route_view(body), payload_len, now)?;
        match &self.canary {
            Some(canary) if canary.observe(&view, now) => None,
            _ => Some(view),
        }
    }

    /// Counts and reports a decode failure (an expired token apart).
    fn decoded<T>(
        &self,
        result: Result<T, DecodeError>,
        payload_len: usize,
        now: f64,
    ) -> Option<T> {
        match result {
            Ok(decoded) => Some(decoded),
            Err(DecodeError::Decrypt(DecryptError::Expired { .. })) => {
                self.metrics.dropped(DropReason::Expired);
                None
            }
            Err(error) => {
                self.metrics.dropped(DropReason::DecodeError);
                self.warn_rate_limited(now, || {
                    tracing::warn!(%error, bytes = payload_len, "undecodable payload skipped");
                });
                None
            }
        }
    }

    fn frame_of(
        &self,
        rendered: Result<Action, DropReason>,
        recipients: usize,
        now: f64,
    ) -> Option<Action> {
        match rendered {
            Ok(frame) => Some(frame),
            Err(reason) => {
                self.metrics.dropped_many(reason, recipients as u64);
                if reason == DropReason::RenderError {
                    self.warn_rate_limited(now, || {
                        tracing::warn!("event cannot be rendered as JSON; dropped");
                    });
                }
                None
            }
        }
    }

    fn deliver(&self, conn: ConnId, frame: &Routed, wakeups: &mut Wakeups) {
        let outcome = self
            .registry
            .with_conn(conn, |outbox| push_or_close(outbox, frame, wakeups));
        match outcome {
            Some(Pushed::Queued) => {}
            Some(Pushed::Full) => self.metrics.dropped(DropReason::SlowConsumer),
            Some(Pushed::Closed) | None => self.metrics.dropped(DropReason::NoLocalSocket),
        }
    }

    /// [`Router::deliver`] for many sockets at once: one registry lock per
    /// shard, drops tallied and counted once per reason.
    fn deliver_many(&self, conns: &[ConnId], frame: &Routed, wakeups: &mut Wakeups) {
        let mut slow = 0;
        let mut closed = 0;
        let missing = self.registry.with_conns(conns, |outbox| {
            match push_or_close(outbox, frame, wakeups) {
                Pushed::Queued => {}
                Pushed::Full => slow += 1,
                Pushed::Closed => closed += 1,
            }
        });
        self.count_drops(DropReason::SlowConsumer, slow);
        self.count_drops(DropReason::NoLocalSocket, closed + missing);
    }

    /// Counts `count` drops; none leaves the metric untouched, so a reason
    /// that never happened does not appear as a zero-valued series.
    fn count_drops(&self, reason: DropReason, count: usize) {
        if count > 0 {
            self.metrics.dropped_many(reason, count as u64);
        }
    }

    /// At most one warning per second, so a flood of bad input cannot flood
    /// the logs; the metrics still count every one.
    fn warn_rate_limited(&self, now: f64, warn: impl FnOnce()) {
        let now = now as u64;
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

/// What one event does to the sockets it reaches, as routed: its shared
/// frame (with its position, for sockets that asked for positions), or a
/// close.
enum Routed {
    Message(MessageFrame),
    Disconnect(CloseCode, Arc<str>),
}

impl Routed {
    /// An event queued at `sent_at` (a core-layer payload's score, which
    /// with the frame makes its position); a pub/sub-layer event has none
    /// (that layer has no recovery).
    fn new(action: Action, sent_at: Option<f64>) -> Routed {
        match action {
            Action::Frame(frame) => Routed::Message(MessageFrame::new(frame, sent_at)),
            Action::Disconnect(code, reason) => Routed::Disconnect(code, reason),
        }
    }
}

/// Applies one event to one socket: queue the shared frame (a full outbox
/// closes the socket as too slow), or close it for the backend.
fn push_or_close(outbox: &Arc<Outbox>, routed: &Routed, wakeups: &mut Wakeups) -> Pushed {
    match routed {
        Routed::Message(message) => {
            let pushed = outbox.push_message(message, wakeups);
            if pushed == Pushed::Full {
                outbox.close(CloseCode::SlowConsumer);
            }
            pushed
        }
        Routed::Disconnect(code, reason) => {
            outbox.close_with(*code, CloseNote::Reason(reason.clone()));
            Pushed::Queued
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::clock::unix_now;
    use crate::ops::health::Health;
    use crate::relay::outbox::{Next, Outbox};
    use crate::relay::registry::ChannelNaming;
    use futures_util::FutureExt;
    use rmpv::Value;
    use shared_proto::SerializerFormat;
    use std::time::Duration;

    const SOCKETS: usize = 70;

    struct Setup {
        router: Router,
        outboxes: Vec<Arc<Outbox>>,
        metrics: Arc<Metrics>,
    }

    fn setup(format: SerializerFormat) -> Setup {
        let registry = Arc::new(Registry::new(ChannelNaming::with_process_id(
            "gw-t".into(),
            1,
            1,
        )));
        let group: Arc<str> = Arc::from("user_1");
        let outboxes: Vec<Arc<Outbox>> = (0..SOCKETS)
            .map(|index| {
                let outbox = Arc::new(Outbox::new(3));
                let groups = if index % 2 == 0 {
                    vec![group.clone()]
                } else {
                    Vec::new()
                };
                registry.register(outbox.clone(), &groups);
                outbox
            })
            .collect();
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new(Duration::from_secs(10), None));
        let canary = Arc::new(Canary::new("gw-t", health, metrics.clone()));
        let router = Router::new(
            registry,
            EventMapper::new(&["chat.message".to_owned()]).expect("valid types"),
            PayloadCodec::core_layer(format),
            None,
            metrics.clone(),
            "asgi",
            Some(canary),
        );
        Setup {
            router,
            outboxes,
            metrics,
        }
    }

    fn payload(format: SerializerFormat, pairs: Vec<(&str, Value)>) -> Vec<u8> {
        let message = Message::from_value(Value::Map(
            pairs
                .into_iter()
                .map(|(key, value)| (Value::from(key), value))
                .collect(),
        ))
        .unwrap();
        PayloadCodec::core_layer(format)
            .encode(&message, &mut rand::rng())
            .unwrap()
    }

    /// The channel of the `nth` socket registered (one lane: its id is the
    /// count above the lane bits).
    fn channel_name(nth: u64) -> String {
        format!(
            "specific.gw-t.0!{:x}",
            nth << crate::relay::registry::LANE_BITS
        )
    }

    fn channels(conns: impl IntoIterator<Item = u64>) -> Value {
        Value::Array(
            conns
                .into_iter()
                .map(|conn| Value::from(channel_name(conn)))
                .collect(),
        )
    }

    /// Every (socket, what it received) and every drop counter line.
    fn observe(setup: &Setup) -> (Vec<String>, Vec<String>) {
        let received = setup
            .outboxes
            .iter()
            .map(|outbox| {
                let mut batch = std::collections::VecDeque::new();
                match outbox.next(&mut batch).now_or_never() {
                    None => "nothing".to_owned(),
                    Some(Next::Frames { .. }) => format!("{:?}", Vec::from(batch)),
                    Some(Next::Close(code, _)) => format!("closed {code:?}"),
                }
            })
            .collect();
        let drops = setup
            .metrics
            .render()
            .lines()
            .filter(|line| line.starts_with("gateway_drops_total") || line.contains("canar"))
            // Round-trip times differ from run to run; their count does not.
            .filter(|line| {
                !line.starts_with('#') && !line.contains("_bucket") && !line.contains("_sum")
            })
            .map(str::to_owned)
            .collect();
        (received, drops)
    }

    #[test]
    fn routes_every_kind_of_payload_and_counts_what_it_drops() {
        for format in [SerializerFormat::Msgpack, SerializerFormat::Json] {
            let message = Value::Map(vec![(Value::from("t"), Value::from("é"))]);
            let notification = |conns: Value| {
                payload(
                    format,
                    vec![
                        ("type", Value::from("send_notification")),
                        ("message", message.clone()),
                        ("__asgi_channel__", conns),
                    ],
                )
            };
            let mut broadcast: Vec<Value> = match channels(1..=SOCKETS as u64) {
                Value::Array(items) => items,
                _ => unreachable!(),
            };
            // Foreign, unknown, malformed and repeated entries.
            broadcast.extend([
                Value::from("specific.other!1"),
                Value::from(channel_name(0xffff)),
                Value::from(7),
                Value::from(channel_name(3)),
                Value::from(channel_name(3)),
                Value::from(channel_name(3)),
            ]);
            let cases: Vec<Vec<u8>> = vec![
                notification(Value::from(channel_name(1))),
                notification(Value::Array(broadcast)),
                notification(channels([2, 4, 5])),
                payload(
                    format,
                    vec![
                        ("__asgi_channel__", channels(1..=40)),
                        ("type", Value::from("chat.message")),
                        ("x", Value::from(1.5)),
                    ],
                ),
                payload(
                    format,
                    vec![
                        ("type", Value::from("unknown")),
                        ("__asgi_channel__", channels(1..=40)),
                    ],
                ),
                payload(
                    format,
                    vec![
                        ("type", Value::from("send_notification")),
                        ("__asgi_channel__", channels(1..=40)),
                    ],
                ),
                payload(
                    format,
                    vec![
                        ("type", Value::from("gateway.canary")),
                        ("sent_at", Value::from(unix_now())),
                        ("__asgi_channel__", channels([1])),
                    ],
                ),
                payload(format, vec![("type", Value::from("send_notification"))]),
                payload(format, vec![("__asgi_channel__", Value::from(3))]),
                b"short".to_vec(),
                b"0123456789ab\xc1".to_vec(),
            ];
            let setup = setup(format);
            let route = |case: &[u8]| {
                setup
                    .router
                    .route_queued(case, 0.0, unix_now(), &mut Wakeups::new());
                receivers(&setup)
            };
            let all = |range: std::ops::Range<usize>| -> Vec<usize> {
                range.filter(|index| *index != 2).collect()
            };
            let first = route(&cases[0]);
            assert_eq!(first, vec![0], "{format}: one channel, one socket");
            // Every local channel; socket 2 is listed four times in all and
            // its outbox holds three: it is closed as too slow.
            assert_eq!(route(&cases[1]), all(0..SOCKETS), "{format}");
            assert_eq!(route(&cases[2]), vec![1, 3, 4], "{format}");
            assert_eq!(route(&cases[3]), all(0..40), "{format}: pass-through");
            for (index, case) in cases.iter().enumerate().skip(4) {
                assert_eq!(route(case), Vec::<usize>::new(), "{format} case {index}");
            }
            let published = notification(Value::Nil);
            let body = &published[PayloadCodec::CORE_LAYER_PREFIX_LENGTH..];
            let pubsub = Router {
                codec: PayloadCodec::pubsub_layer(format),
                ..setup_clone(&setup)
            };
            for (channel, body, expected) in [
                (
                    &b"asgi__group__user_1"[..],
                    body,
                    all(0..SOCKETS)
                        .into_iter()
                        .filter(|index| index % 2 == 0)
                        .collect(),
                ),
                (b"asgi__group__nobody", body, Vec::new()),
                (b"elsewhere", body, Vec::new()),
                (b"asgi__group__user_1", b"\x93", Vec::new()),
            ] {
                pubsub.route_published(channel, body, unix_now(), &mut Wakeups::new());
                assert_eq!(receivers(&setup), expected, "{format} published");
            }
            let (received, drops) = observe(&setup);
            assert_eq!(received[2], "closed SlowConsumer");
            for line in [
                "gateway_canaries_received_total 1",
                "gateway_drops_total{reason=\"decode_error\"} 6",
                "gateway_drops_total{reason=\"foreign_channel\"} 2",
                "gateway_drops_total{reason=\"no_local_socket\"} 4",
                "gateway_drops_total{reason=\"render_error\"} 40",
                "gateway_drops_total{reason=\"slow_consumer\"} 1",
                "gateway_drops_total{reason=\"unknown_type\"} 40",
            ] {
                assert!(
                    drops.contains(&line.to_owned()),
                    "{format}: {line} in {drops:?}"
                );
            }
        }
    }

    /// The sockets that received a frame since the last look, by index.
    fn receivers(setup: &Setup) -> Vec<usize> {
        let (received, _) = observe(setup);
        received
            .iter()
            .enumerate()
            .filter(|(_, what)| what.starts_with('['))
            .map(|(index, _)| index)
            .collect()
    }

    #[test]
    fn decrypts_fresh_payloads_and_counts_expired_ones() {
        let encryption = || Encryption::new(&["secret"], Some(60)).unwrap();
        let format = SerializerFormat::Msgpack;
        let setup = setup(format);
        let router = Router {
            encryption: Some(encryption()),
            ..setup_clone(&setup)
        };
        let message = Message::from_value(Value::Map(vec![
            (Value::from("type"), Value::from("send_notification")),
            (Value::from("message"), Value::from("hi")),
            (Value::from("__asgi_channel__"), channels(1..=40)),
        ]))
        .unwrap();
        let fresh = router.encode(&message, unix_now()).unwrap();
        let body = PayloadCodec::core_layer(format)
            .serialize(&message)
            .unwrap();
        let mut expired = b"0123456789ab".to_vec();
        expired.extend(encryption().encrypt(&body, unix_now() as u64 - 1_000));
        let mut plain = b"0123456789ab".to_vec();
        plain.extend(body);
        router.route_queued(&fresh, 0.0, unix_now(), &mut Wakeups::new());
        assert_eq!(receivers(&setup), (0..40).collect::<Vec<_>>());
        for case in [&expired, &plain] {
            router.route_queued(case, 0.0, unix_now(), &mut Wakeups::new());
            assert_eq!(receivers(&setup), Vec::<usize>::new());
        }
        let (_, drops) = observe(&setup);
        assert!(drops.contains(&"gateway_drops_total{reason=\"expired\"} 1".to_owned()));
        assert!(drops.contains(&"gateway_drops_total{reason=\"decode_error\"} 1".to_owned()));
    }

    /// A router sharing `setup`'s registry and metrics.
    fn setup_clone(setup: &Setup) -> Router {
        let router = &setup.router;
        Router {
            registry: router.registry.clone(),
            events: EventMapper::new(&["chat.message".to_owned()]).expect("valid types"),
            codec: router.codec,
            encryption: None,
            metrics: router.metrics.clone(),
            pubsub_group_prefix: router.pubsub_group_prefix.clone(),
            canary: router.canary.clone(),
            last_warning_secs: AtomicU64::new(0),
        }
    }
}
