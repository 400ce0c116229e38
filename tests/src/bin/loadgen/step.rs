//! A measured step: publishing a plan of messages and waiting for their
//! deliveries, or connecting every socket, reported with where the cores
//! went and, when asked, Redis' own account and the gateway's routing lag.
//! It sequences and reports a step; it must not decide which steps a mode
//! runs or when a ramp stops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use tests::publisher::PublisherConfig;

use crate::args::Args;
use crate::clients::{connect_fleet, ConnectReport, Connector, Fleet};
use crate::gateway_lag::{lag_quantiles, publish_lag_buckets};
use crate::measure::{latency_json, now_us, HICCUPS};
use crate::proc_stats::CpuSample;
use crate::publish::publish_step;
use crate::reader::{drain, wait_for_status, Shared};
use crate::redis_stats::{replay_key_sample, RedisStats};

/// What one measured step publishes: `messages` at `rate`, message `seq` to
/// the user `target_of(seq)`, each expected on `fan_out` sockets.
pub(crate) struct StepPlan {
    pub(crate) k: usize,
    pub(crate) messages: u64,
    pub(crate) rate: u64,
    pub(crate) target_of: Arc<dyn Fn(u64) -> u64 + Send + Sync>,
    pub(crate) fan_out: u64,
}

/// Publishes a step's messages, waits until each reached its sockets or the
/// drain time passed, and reports the step with where the cores went.
/// Returns the step's JSON, its loss and its p99 in ms.
pub(crate) async fn measured_step(
    args: &Args,
    config: &PublisherConfig,
    shared: &Shared,
    plan: StepPlan,
) -> Result<(serde_json::Value, u64, f64)> {
    let StepPlan {
        k,
        messages,
        rate,
        target_of,
        fan_out,
    } = plan;
    let started_us = now_us();
    if let Some(hiccups) = HICCUPS.get() {
        hiccups.reset();
    }
    let cpu = CpuSample::take(args);
    let lag_before = match args.gateway_admin {
        Some(admin) => publish_lag_buckets(admin).await,
        None => None,
    };
    let mut redis_before = match args.redis_stats {
        true => {
            let mut client = RedisStats::connect(args).await?;
            let before = RedisStats::take(&mut client).await?;
            Some((client, before))
        }
        false => None,
    };
    let publish = publish_step(args, config, k, messages, rate, target_of).await?;
    let (published, over, secs) = (publish.published, publish.over_capacity, publish.secs);
    let expected = published * fan_out;
    drain(
        shared,
        k,
        expected,
        Duration::from_secs_f64(args.drain_secs),
    )
    .await;
    let (mut json, lost, p99) = step_json(
        shared,
        &Published {
            k,
            target_rate: rate,
            published,
            over_capacity: over,
            replay_over_capacity: publish.replay_over_capacity,
            publish_secs: secs,
            expected,
            started_us,
        },
    )?;
    json["cpu"] = cpu.since(args, json["received"].as_u64().unwrap_or(0));
    if let Some(hiccups) = HICCUPS.get() {
        json["machine_hiccups"] = hiccups.since_reset();
    }
    json["publish_batch_time"] = latency_json(&publish.batch_times);
    if let Some((client, before)) = redis_before.as_mut() {
        // The publishers' connections are gone; let Redis free them.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = RedisStats::take(client).await?;
        json["redis"] = after.since(before, published, args.sockets.max(1) as u64);
        json["redis"]["replay_key_of_first_user"] = replay_key_sample(args).await?;
    }
    if let Some(admin) = args.gateway_admin {
        if let Some(after) = publish_lag_buckets(admin).await {
            json["gateway_routing_lag"] =
                lag_quantiles(lag_before.as_deref().unwrap_or(&[]), &after);
        }
    }
    Ok((json, lost, p99))
}

/// Connects `--sockets` sockets (socket i as `user_of(i)`) and reports the
/// connect as a step: its rate and the server's CPU per connect, with
/// recovery the status frames, with `--redis-stats` what the joins left in
/// Redis. Returns the fleet, its report and the connect's JSON.
pub(crate) async fn measured_connect(
    args: &Args,
    shared: &Arc<Shared>,
    connector: Arc<Connector>,
    user_of: impl Fn(usize) -> u64,
    recover: bool,
) -> Result<(Fleet, ConnectReport, serde_json::Value)> {
    let mut connect_redis = match args.redis_stats {
        true => {
            let mut client = RedisStats::connect(args).await?;
            let before = RedisStats::take(&mut client).await?;
            Some((client, before))
        }
        false => None,
    };
    let connect_cpu = CpuSample::take(args);
    let (fleet, connect) = connect_fleet(
        connector,
        args.sockets,
        user_of,
        args.connect_concurrency,
        Arc::clone(shared),
    )
    .await?;
    let mut json = connect.to_json();
    // Here "per delivery" reads "per connect": the handshake's server cost.
    json["cpu"] = connect_cpu.since(args, connect.ok as u64);
    if recover {
        // Each socket's status frame follows its handshake (after the
        // gateway's settle); wait for them so no step counts them.
        json["status_frames"] = json!(wait_for_status(shared, connect.ok as u64).await);
    }
    if let Some((client, before)) = connect_redis.as_mut() {
        // What the joins left in Redis: per socket, its group membership
        // (and with recovery, the group's replay member).
        let after = RedisStats::take(client).await?;
        json["redis"] = after.since(before, 0, connect.ok.max(1) as u64);
    }
    Ok((fleet, connect, json))
}

/// One step's publishing side, for [`step_json`].
struct Published {
    k: usize,
    target_rate: u64,
    published: u64,
    over_capacity: u64,
    replay_over_capacity: u64,
    publish_secs: f64,
    expected: u64,
    started_us: u64,
}

/// The step's result, its loss and its p99 in ms.
fn step_json(shared: &Shared, p: &Published) -> Result<(serde_json::Value, u64, f64)> {
    let step = &shared.steps[p.k];
    let received = step.received();
    let hist = step.merged()?;
    let last = step.last_recv_us();
    let span = last.saturating_sub(p.started_us) as f64 / 1e6;
    let lost = p.expected.saturating_sub(received);
    let p99_ms = if hist.is_empty() {
        f64::INFINITY
    } else {
        hist.value_at_quantile(0.99) as f64 / 1000.0
    };
    let achieved = if p.publish_secs > 0.0 {
        p.published as f64 / p.publish_secs
    } else {
        0.0
    };
    Ok((
        json!({
            "target_rate": p.target_rate,
            "published": p.published,
            "achieved_rate": achieved,
            "over_capacity": p.over_capacity,
            // Refused into a full replay key (recovery's window, not a
            // consumer): no socket misses these, so they explain no loss.
            "replay_over_capacity": p.replay_over_capacity,
            // Loss the sender's capacity drops do not explain (each drop is
            // one payload to one queue key; exact for one socket per user).
            "lost_beyond_over_capacity": lost.saturating_sub(p.over_capacity),
            "expected": p.expected,
            "received": received,
            "lost": lost,
            "duplicates": step.duplicates.load(Ordering::Relaxed),
            "out_of_order": step.out_of_order.load(Ordering::Relaxed),
            "misroutes": step.misroutes.load(Ordering::Relaxed),
            "deliveries_per_s": if span > 0.0 { received as f64 / span } else { 0.0 },
            "latency": latency_json(&hist),
        }),
        lost,
        p99_ms,
    ))
}
