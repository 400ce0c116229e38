//! `routebench`: a micro-benchmark of the gateway's receive-and-route path,
//! the tree path (`RoutePath::Tree`: an `rmpv::Value` tree per payload, one
//! registry lookup per channel) against the single-pass path
//! (`RoutePath::SinglePass`), side by side in one process.
//!
//! Two payloads: (a) a typical ~200-byte notification addressed to one
//! channel, (b) a broadcast listing 10,000 channels (~350 KB). Each is routed
//! by a real `Router` into a real `Registry` of outboxes, and also read
//! without a router (decode + frame + channel ids), so the parsing share can
//! be told apart from delivery. Rounds alternate between the paths so a
//! shared machine's noise hits both alike; the median round is printed as
//! ns/message and messages/s.
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
use gateway::ops::metrics::Metrics;
use gateway::relay::events::EventMapper;
use gateway::relay::outbox::{Outbox, Wakeups};
use gateway::relay::registry::{ChannelNaming, ConnId, Registry};
use gateway::relay::router::{RoutePath, Router};
use rmpv::Value;
use shared_proto::{render_notification, Message, PayloadCodec, SerializerFormat};

#[derive(Parser, Debug)]
#[command(about = "Old (tree) vs new (single-pass) routing path, side by side")]
struct Args {
    /// Rounds per path and scenario (the median is reported).
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

const PATHS: [(RoutePath, &str); 2] = [(RoutePath::Tree, "old"), (RoutePath::SinglePass, "new")];
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
    let routers = PATHS.map(|(path, name)| (router(&registry, path), name));
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
    check_same_frames(&codec, &small, &broadcast)?;

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
    let mut small_route = [Vec::new(), Vec::new()];
    let mut small_read = [Vec::new(), Vec::new()];
    let mut big_route = [Vec::new(), Vec::new()];
    let mut big_read = [Vec::new(), Vec::new()];
    for _ in 0..args.rounds {
        for (index, (router, _)) in routers.iter().enumerate() {
            let mut elapsed = Duration::ZERO;
            for _ in 0..batches {
                let start = Instant::now();
                for payload in &small {
                    router.route_queued(payload, 0.0, &mut wakeups);
                }
                elapsed += start.elapsed();
                drain();
            }
            small_route[index].push(per_message(elapsed, batches * small.len()));

            let start = Instant::now();
            for _ in 0..batches {
                for payload in &small {
                    read(&codec, &naming, index, payload);
                }
            }
            small_read[index].push(per_message(start.elapsed(), batches * small.len()));

            let mut elapsed = Duration::ZERO;
            for _ in 0..args.broadcasts {
                let start = Instant::now();
                router.route_queued(&broadcast, 0.0, &mut wakeups);
                elapsed += start.elapsed();
                drain();
            }
            big_route[index].push(per_message(elapsed, args.broadcasts));

            let start = Instant::now();
            for _ in 0..args.broadcasts {
                read(&codec, &naming, index, &broadcast);
            }
            big_read[index].push(per_message(start.elapsed(), args.broadcasts));
        }
    }

    println!();
    println!("| scenario | path | ns/message | messages/s | deliveries/s | new ÷ old speed |");
    println!("|---|---|---:|---:|---:|---:|");
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
        let old = median(&mut samples[0]);
        let new = median(&mut samples[1]);
        for (index, (_, name)) in PATHS.iter().enumerate() {
            let ns = if index == 0 { old } else { new };
            let rate = 1e9 / ns;
            let speedup = if index == 0 {
                String::new()
            } else {
                format!("{:.2}×", old / new)
            };
            println!(
                "| {scenario} | {name} | {ns:.0} | {rate:.0} | {:.0} | {speedup} |",
                rate * recipients as f64
            );
        }
    }
    Ok(())
}

fn router(registry: &Arc<Registry>, path: RoutePath) -> Router {
    Router::new(
        registry.clone(),
        EventMapper::new(&[]),
        PayloadCodec::core_layer(SerializerFormat::Msgpack),
        None,
        Arc::new(Metrics::new()),
        "asgi",
        None,
    )
    .with_route_path(path)
}

/// What the router's parsing amounts to, without the registry: decode,
/// render the frame, turn every channel into a connection id.
fn read(codec: &PayloadCodec, naming: &ChannelNaming, path: usize, payload: &[u8]) {
    let mut frame = String::new();
    let mut ids = 0u64;
    if path == 0 {
        let Ok(message) = codec.decode(payload) else {
            return;
        };
        let _ = render_notification(&message, &mut frame);
        if let Ok(channels) = message.channels() {
            for name in channels.names() {
                ids = ids.wrapping_add(naming.conn_of(name).unwrap_or(0));
            }
        }
    } else {
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
    }
    black_box((frame, ids));
}

/// Both paths must render the same frame before their speed means anything.
fn check_same_frames(codec: &PayloadCodec, small: &[Vec<u8>], broadcast: &[u8]) -> Result<()> {
    for payload in small.iter().take(3).map(Vec::as_slice).chain([broadcast]) {
        let mut old = String::new();
        render_notification(&codec.decode(payload)?, &mut old)?;
        let mut new = String::new();
        codec
            .route_view(codec.strip_random_prefix(payload)?)?
            .render_notification(&mut new)?;
        anyhow::ensure!(old == new, "the paths render different frames");
    }
    Ok(())
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
