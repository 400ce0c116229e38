//! `routebench`: a micro-benchmark of the gateway's receive-and-route path
//! (`Router::route_queued`: the single-pass `RouteView`, one frame, delivery
//! grouped by registry shard), in one process.
//!
//! Two payloads: (a) a typical ~200-byte notification addressed to one
//! channel, (b) a broadcast listing 10,000 channels (~350 KB). Each is routed
//! by a real `Router` into a real `Registry` of outboxes, and also read
//! without a router (decode + frame + channel ids), so the parsing share can
//! be told apart from delivery. The median round is printed as ns/message
//! and messages/s; `scripts/bench` takes the (a) read-only figure as the
//! speed of the machine's cores that day.
//!
//! It owns this measurement only: no sockets, no Redis, no files. No socket
//! task is attached to the outboxes, so a push wakes nobody: what is measured
//! is the router's own work, not the tasks it would wake. Run it in release:
//! `cargo run --release -p tests --bin routebench`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use futures_util::FutureExt;
use gateway::ops::clock::unix_now;
use gateway::ops::metrics::Metrics;
use gateway::relay::events::EventMapper;
use gateway::relay::outbox::{Outbox, Wakeups};
use gateway::relay::registry::{ChannelNaming, ConnId, Registry};
use gateway::relay::router::Router;
use rmpv::Value;
use shared_proto::{Message, PayloadCodec, SerializerFormat};

#[derive(Parser, Debug)]
#[command(about = "The receive-and-route path, in process: ns per message")]
struct Args {
    /// Rounds per scenario (the median is reported).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Notifications routed per round in scenario (a).
    #[arg(long, default_value_t = 100_000)]
    small_messages: usize,
    /// Broadcasts routed per round in scenario (b).
    #[arg(long, default_value_t = 20)]
    broadcasts: usize,
    /// Channels listed by the broadcast (all local sockets).
    #[arg(long, default_value_t = 10_000)]
    channels: usize,
}

/// Sockets the one-channel notifications are spread over between drains.
const SMALL_BATCH: usize = 1_000;

fn main() -> Result<()> {
    let args = Args::parse();
    let naming = ChannelNaming::with_process_id("gw-0123456789abcdef01234567".into(), 16, 1);
    let registry = Arc::new(Registry::new(naming.clone()));
    let sockets = args.channels.max(SMALL_BATCH);
    let outboxes: Vec<(ConnId, Arc<Outbox>)> = (0..sockets)
        .map(|_| {
            let outbox = Arc::new(Outbox::new(SMALL_BATCH));
            (registry.register(outbox.clone(), &[]).0, outbox)
        })
        .collect();
    let router = router(&registry);
    let codec = PayloadCodec::core_layer(SerializerFormat::Msgpack);

    let small: Vec<Vec<u8>> = outboxes
        .iter()
        .take(SMALL_BATCH)
        .map(|(conn, _)| encode(&codec, &notification(&[naming.channel(*conn)])))
        .collect::<Result<_>>()?;
    let broadcast_channels: Vec<String> = outboxes
        .iter()
        .take(args.channels)
        .map(|(conn, _)| naming.channel(*conn))
        .collect();
    let broadcast = encode(&codec, &notification(&broadcast_channels))?;
    let small_len = small.first().map_or(0, Vec::len);
    println!(
        "payloads: (a) {small_len} bytes, 1 channel; (b) {} bytes, {} channels; {} rounds, median",
        broadcast.len(),
        args.channels,
        args.rounds
    );

    let mut batch = std::collections::VecDeque::new();
    let mut drain = || {
        for (_, outbox) in &outboxes {
            let _ = black_box(outbox.next(&mut batch).now_or_never());
        }
    };

    // (a) one-channel notifications, routed in batches of SMALL_BATCH
    // distinct sockets, drained (untimed) between batches.
    let batches = args.small_messages.div_ceil(SMALL_BATCH);
    // Nothing waits on these outboxes: no wake-up is ever held.
    let mut wakeups = Wakeups::new();
    let mut small_route = Vec::new();
    let mut small_read = Vec::new();
    let mut big_route = Vec::new();
    let mut big_read = Vec::new();
    for _ in 0..args.rounds {
        let mut elapsed = Duration::ZERO;
        for _ in 0..batches {
            let start = Instant::now();
            for payload in &small {
                router.route_queued(payload, 0.0, unix_now(), &mut wakeups);
            }
            elapsed += start.elapsed();
            drain();
        }
        small_route.push(per_message(elapsed, batches * small.len()));

        let start = Instant::now();
        for _ in 0..batches {
            for payload in &small {
                read(&codec, &naming, payload);
            }
        }
        small_read.push(per_message(start.elapsed(), batches * small.len()));

        let mut elapsed = Duration::ZERO;
        for _ in 0..args.broadcasts {
            let start = Instant::now();
            router.route_queued(&broadcast, 0.0, unix_now(), &mut wakeups);
            elapsed += start.elapsed();
            drain();
        }
        big_route.push(per_message(elapsed, args.broadcasts));

        let start = Instant::now();
        for _ in 0..args.broadcasts {
            read(&codec, &naming, &broadcast);
        }
        big_read.push(per_message(start.elapsed(), args.broadcasts));
    }

    println!();
    println!("| scenario | ns/message | messages/s | deliveries/s |");
    println!("|---|---:|---:|---:|");
    let rows = [
        ("(a) route 1-channel notification", &mut small_route, 1),
        ("(a) read only (decode + frame + ids)", &mut small_read, 1),
        (
            "(b) route 10k-channel broadcast",
            &mut big_route,
            args.channels,
        ),
        (
            "(b) read only (decode + frame + ids)",
            &mut big_read,
            args.channels,
        ),
    ];
    for (scenario, samples, recipients) in rows {
        let ns = median(samples);
        let rate = 1e9 / ns;
        println!(
            "| {scenario} | {ns:.0} | {rate:.0} | {:.0} |",
            rate * recipients as f64
        );
    }
    Ok(())
}

fn router(registry: &Arc<Registry>) -> Router {
    Router::new(
        registry.clone(),
        EventMapper::new(&[]).expect("no pass-through types"),
        PayloadCodec::core_layer(SerializerFormat::Msgpack),
        None,
        Arc::new(Metrics::new()),
        "asgi",
        None,
    )
}

/// What the router's parsing amounts to, without the registry: decode,
/// render the frame, turn every channel into a connection id.
fn read(codec: &PayloadCodec, naming: &ChannelNaming, payload: &[u8]) {
    let mut frame = String::new();
    let mut ids = 0u64;
    let Ok(body) = codec.strip_random_prefix(payload) else {
        return;
    };
    let Ok(view) = codec.route_view(body) else {
        return;
    };
    let _ = view.render_notification(&mut frame);
    if let Ok(channels) = view.channels() {
        for name in channels.flatten() {
            ids = ids.wrapping_add(naming.conn_of(name).unwrap_or(0));
        }
    }
    black_box((frame, ids));
}

/// A notification as the backend's `group_send` writes it for this process:
/// a ~150-byte `message` and the listed channels.
fn notification(channels: &[String]) -> Result<Message> {
    let message = Value::Map(vec![
        (Value::from("id"), Value::from(184_467)),
        (Value::from("kind"), Value::from("comment")),
        (
            Value::from("title"),
            Value::from("Ana replied to your post"),
        ),
        (
            Value::from("body"),
            Value::from("Thanks, that fixed it — see the thread for details."),
        ),
        (Value::from("url"), Value::from("/posts/9921#c184467")),
        (Value::from("sent_at"), Value::F64(1_764_000_000.123_456)),
        (Value::from("read"), Value::Boolean(false)),
    ]);
    Message::from_value(Value::Map(vec![
        (Value::from("type"), Value::from("send_notification")),
        (Value::from("message"), message),
        (
            Value::from("__asgi_channel__"),
            Value::Array(channels.iter().map(|c| Value::from(c.as_str())).collect()),
        ),
    ]))
    .context("building the notification")
}

fn encode(codec: &PayloadCodec, message: &Result<Message>) -> Result<Vec<u8>> {
    let message = message
        .as_ref()
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    codec
        .encode(message, &mut rand::rng())
        .context("encoding the notification")
}

fn per_message(elapsed: Duration, messages: usize) -> f64 {
    elapsed.as_nanos() as f64 / messages.max(1) as f64
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}
