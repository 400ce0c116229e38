//! The publishers: `--publishers` connections of the native core-layer
//! publisher sending a step's messages at its rate, each message carrying
//! its sequence number, publish timestamp, target user, step and publisher,
//! and counting what Redis refused for capacity. It only publishes: it must
//! not read the sockets or wait for deliveries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use rmpv::Value;
use tests::publisher::{notification, NativePublisher, PublisherConfig};

use crate::args::Args;
use crate::measure::{new_histogram, now_us};

/// The publisher's settings as Django's CHANNEL_LAYERS would give them.
pub(crate) fn publisher_config(args: &Args) -> Result<PublisherConfig> {
    let mut config = PublisherConfig {
        prefix: args.prefix.clone(),
        capacity: args.capacity,
        ..PublisherConfig::default()
    };
    for entry in &args.channel_capacity {
        let (glob, n) = entry
            .rsplit_once('=')
            .ok_or_else(|| anyhow!("--channel-capacity wants GLOB=N, got {entry:?}"))?;
        config
            .channel_capacity
            .push((glob.to_string(), n.parse().context("channel capacity")?));
    }
    Ok(config)
}

/// Most group_sends one publisher connection pipelines at once (a publisher
/// that fell behind catches up in batches this large).
const PUBLISH_BATCH_MAX: u64 = 2000;

/// What one step's publishing did.
pub(crate) struct PublishReport {
    pub(crate) published: u64,
    /// Sends refused by a full queue key of a consumer (the gateway's).
    pub(crate) over_capacity: u64,
    /// Sends refused by a full replay key (recovery's window): no socket
    /// misses those.
    pub(crate) replay_over_capacity: u64,
    pub(crate) secs: f64,
    /// How long each pipelined batch of group_sends took, from the publish
    /// timestamp its messages carry to the last reply (µs): a latency tail
    /// that is already here arose in the publisher or in Redis.
    pub(crate) batch_times: Histogram<u64>,
}

/// Publishes `plan` (target user, expected deliveries) messages of step `k`
/// at `rate`/s over `publishers` connections.
pub(crate) async fn publish_step(
    args: &Args,
    config: &PublisherConfig,
    k: usize,
    total: u64,
    rate: u64,
    target_of: Arc<dyn Fn(u64) -> u64 + Send + Sync>,
) -> Result<PublishReport> {
    let publishers = args.publishers.max(1) as u64;
    let started = Instant::now();
    let mut handles = Vec::new();
    for p in 0..publishers {
        let mut publisher = NativePublisher::connect(&args.redis, config.clone()).await?;
        let target_of = Arc::clone(&target_of);
        let mine = (0..total).filter(|seq| seq % publishers == p).count() as u64;
        let my_rate = (rate as f64 / publishers as f64).max(1.0);
        handles.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut over = 0u64;
            let mut replay_over = 0u64;
            let mut batch_times = new_histogram()?;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while sent < mine {
                tick.tick().await;
                let due = ((started.elapsed().as_secs_f64() * my_rate) as u64).min(mine);
                let n = due.saturating_sub(sent).min(PUBLISH_BATCH_MAX);
                if n == 0 {
                    continue;
                }
                let mut batch = Vec::with_capacity(n as usize);
                let ts = now_us();
                for j in sent..sent + n {
                    let seq = p + j * publishers;
                    let user = target_of(seq);
                    let body = Value::Map(vec![
                        (Value::from("seq"), Value::from(seq)),
                        (Value::from("ts"), Value::from(ts)),
                        (Value::from("u"), Value::from(user)),
                        (Value::from("k"), Value::from(k as u64)),
                        (Value::from("p"), Value::from(p)),
                    ]);
                    batch.push((format!("user_{user}"), notification(body)?));
                }
                for outcome in publisher.group_send_many(&batch).await? {
                    over += outcome.over_capacity - outcome.replay_over_capacity;
                    replay_over += outcome.replay_over_capacity;
                }
                batch_times.saturating_record(now_us().saturating_sub(ts).max(1));
                sent += n;
            }
            Ok::<_, anyhow::Error>((sent, over, replay_over, batch_times))
        }));
    }
    let mut report = PublishReport {
        published: 0,
        over_capacity: 0,
        replay_over_capacity: 0,
        secs: 0.0,
        batch_times: new_histogram()?,
    };
    for handle in handles {
        let (sent, dropped, replay_dropped, times) = handle.await.context("publisher task")??;
        report.published += sent;
        report.over_capacity += dropped;
        report.replay_over_capacity += replay_dropped;
        report
            .batch_times
            .add(&times)
            .context("merging batch times")?;
    }
    report.secs = started.elapsed().as_secs_f64();
    Ok(report)
}
