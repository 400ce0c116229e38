//! The modes that run on the connected fleet by measured steps: idle,
//! per-user, broadcast and the reconnect storm (the recovery storm, which
//! accounts for every socket, has a module of its own). Each writes its
//! keys into the result (the storm returns its `storm` object) and closes
//! the fleet it is given: it must not return with a socket left open.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tests::publisher::PublisherConfig;

use crate::args::Args;
use crate::ceiling::CeilingConsumer;
use crate::clients::{connect_fleet, ConnectReport, Connector, Fleet};
use crate::proc_stats::vm_rss_kib;
use crate::reader::Shared;
use crate::step::{measured_step, StepPlan};

/// Holds the sockets and reports the servers' RSS per socket (sampled
/// before the connect as `rss_before`), how many are still open after the
/// hold, and with `--probe` whether a message still reaches them all.
pub(crate) async fn idle(
    args: &Args,
    config: &PublisherConfig,
    shared: &Shared,
    fleet: Fleet,
    connect: &ConnectReport,
    rss_before: &[(u32, Option<u64>)],
    out: &mut serde_json::Value,
) -> Result<()> {
    let base = args.user_base;
    tokio::time::sleep(Duration::from_secs_f64(args.settle_secs)).await;
    let mut rss = Vec::new();
    for (pid, before) in rss_before {
        let after = vm_rss_kib(*pid);
        let per_socket = match (before, after) {
            (Some(b), Some(a)) if connect.ok > 0 => {
                Some((a as f64 - *b as f64) / connect.ok as f64)
            }
            _ => None,
        };
        rss.push(json!({"pid": pid, "before_kib": before, "after_kib": after,
                        "per_socket_kib": per_socket}));
    }
    out["rss"] = json!(rss);
    tokio::time::sleep(Duration::from_secs_f64(args.hold_secs)).await;
    out["still_open"] = json!(fleet.tasks.iter().filter(|t| !t.is_finished()).count());
    if args.probe {
        let target_of: Arc<dyn Fn(u64) -> u64 + Send + Sync> = Arc::new(move |_| base);
        let fan_out = connect.ok as u64;
        let plan = StepPlan {
            k: 0,
            messages: 1,
            rate: 1000,
            target_of,
            fan_out,
        };
        let (json, _, _) = measured_step(args, config, shared, plan).await?;
        out["probe"] = json;
    }
    fleet.close().await;
    Ok(())
}

/// One step per rate of `--rates`, each message to one user's socket,
/// until a step loses messages or its p99 passes `--stop-p99-ms` (unless
/// `--ramp-through`). Without sockets and with `--ceiling-members`, the
/// Redis-alone ceiling: a consumer pops what the gateway would have.
pub(crate) async fn per_user(
    args: &Args,
    config: &PublisherConfig,
    shared: &Shared,
    fleet: Fleet,
    out: &mut serde_json::Value,
) -> Result<()> {
    let base = args.user_base;
    let n = args.sockets;
    let mut steps = Vec::new();
    let ceiling = if n == 0 && args.ceiling_members > 0 {
        Some(CeilingConsumer::start(args).await?)
    } else {
        None
    };
    let count = match &ceiling {
        Some(_) => args.ceiling_members,
        None => n.max(1) as u64,
    };
    for (k, &rate) in args.rates.iter().enumerate() {
        let total = ((rate as f64) * args.step_secs).round().max(1.0) as u64;
        let target_of: Arc<dyn Fn(u64) -> u64 + Send + Sync> =
            Arc::new(move |seq| base + seq % count);
        // Without sockets (the Redis-alone ceiling) nothing is expected.
        let fan_out = u64::from(n > 0);
        let plan = StepPlan {
            k,
            messages: total,
            rate,
            target_of,
            fan_out,
        };
        let popped_before = ceiling.as_ref().map(CeilingConsumer::popped);
        let (mut json, lost, p99) = measured_step(args, config, shared, plan).await?;
        if let (Some(ceiling), Some(before)) = (&ceiling, popped_before) {
            ceiling.wait_for(before + total).await;
            json["ceiling_popped"] = json!(ceiling.popped() - before);
            json["ceiling_queue_lag"] = ceiling.take_queue_lag();
        }
        steps.push(json);
        if n > 0 && !args.ramp_through && (lost > 0 || p99 > args.stop_p99_ms) {
            out["stopped_at_rate"] = json!(rate);
            break;
        }
    }
    out["steps"] = json!(steps);
    fleet.close().await;
    Ok(())
}

/// One step of `--messages` at `--broadcast-rate`, every message to the one
/// user all the sockets share.
pub(crate) async fn broadcast(
    args: &Args,
    config: &PublisherConfig,
    shared: &Shared,
    fleet: Fleet,
    connect: &ConnectReport,
    out: &mut serde_json::Value,
) -> Result<()> {
    let base = args.user_base;
    let target_of: Arc<dyn Fn(u64) -> u64 + Send + Sync> = Arc::new(move |_| base);
    let plan = StepPlan {
        k: 0,
        messages: args.messages,
        rate: args.broadcast_rate,
        target_of,
        fan_out: connect.ok as u64,
    };
    let (json, _, _) = measured_step(args, config, shared, plan).await?;
    out["steps"] = json!([json]);
    fleet.close().await;
    Ok(())
}

/// Drops every socket at once, reconnects them all, and times until every
/// socket joined and until one message reached them all again.
pub(crate) async fn reconnect_storm(
    args: &Args,
    config: &PublisherConfig,
    shared: &Arc<Shared>,
    connector: Arc<Connector>,
    fleet: Fleet,
    connect: &ConnectReport,
    user_of: impl Fn(usize) -> u64,
) -> Result<serde_json::Value> {
    let base = args.user_base;
    let before = connect.ok;
    fleet.kill().await;
    let storm_started = Instant::now();
    let (fleet, again) = connect_fleet(
        connector,
        args.sockets,
        user_of,
        args.connect_concurrency,
        Arc::clone(shared),
    )
    .await?;
    let joined = storm_started.elapsed();
    let target_of: Arc<dyn Fn(u64) -> u64 + Send + Sync> = Arc::new(move |_| base);
    let plan = StepPlan {
        k: 0,
        messages: 1,
        rate: 1000,
        target_of,
        fan_out: again.ok as u64,
    };
    let (json, lost, _) = measured_step(args, config, shared, plan).await?;
    let reached_all = storm_started.elapsed();
    let storm = json!({
        "dropped": before,
        "reconnect": again.to_json(),
        "all_joined_s": joined.as_secs_f64(),
        "message_reached_all_s": if lost == 0 { json!(reached_all.as_secs_f64()) } else { json!(null) },
        "delivery": json,
    });
    fleet.close().await;
    Ok(storm)
}
