//! `--mode recovery-storm` after its first connect: every socket dropped
//! at once, the messages they miss published, every socket back at once
//! with its position, and an account of what each socket got (its status
//! frame, its replay, exactly once or not). It must not publish after the
//! reconnect: whatever arrives then is a duplicate or a late copy.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tests::publisher::PublisherConfig;

use crate::args::Args;
use crate::clients::{connect_fleet, Connector, Fleet};
use crate::measure::{latency_json, new_histogram, now_us};
use crate::publish::publish_step;
use crate::reader::{drain, wait_for_status, Shared};

/// The recovery storm after its first connect (`fleet`, every socket with
/// the position its status frame gave): drop every socket, publish
/// `--messages` to each user, reconnect all at once with their positions,
/// and account for what each socket got.
pub(crate) async fn recovery_storm(
    args: &Args,
    config: &PublisherConfig,
    shared: &Arc<Shared>,
    connector: Arc<Connector>,
    fleet: Fleet,
    users: usize,
    user_of: impl Fn(usize) -> u64,
) -> Result<serde_json::Value> {
    let dropped = fleet.tasks.len();
    fleet.kill().await;
    // The gateway sees the connections end and leaves their groups; a
    // message sent before it did still lands in the replay key.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = args.user_base;
    let users_u64 = users as u64;
    let target_of: Arc<dyn Fn(u64) -> u64 + Send + Sync> =
        Arc::new(move |seq| base + seq % users_u64);
    let missed = publish_step(
        args,
        config,
        0,
        users_u64 * args.messages,
        args.missed_rate,
        target_of,
    )
    .await?;
    let status_before = shared.status_frames.load(Ordering::Relaxed);
    let started = Instant::now();
    let started_us = now_us();
    let (fleet, again) = connect_fleet(
        connector,
        args.sockets,
        user_of,
        args.connect_concurrency,
        Arc::clone(shared),
    )
    .await?;
    let joined = started.elapsed();
    let statuses = wait_for_status(shared, status_before + again.ok as u64).await - status_before;
    // Nothing is published after the reconnect: whatever still arrives is a
    // duplicate or a late copy.
    let expected = missed.published / users_u64.max(1);
    drain(
        shared,
        0,
        expected * again.ok as u64,
        Duration::from_secs_f64(args.drain_secs.min(2.0)),
    )
    .await;
    // A second for any copy that should not come (live after replay).
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.close().await;
    let mut to_status = new_histogram()?;
    let (mut recovered, mut not_recovered, mut no_status) = (0u64, 0u64, 0u64);
    let (mut complete, mut missing, mut duplicated, mut after_status) = (0u64, 0u64, 0u64, 0u64);
    let mut replayed_reported = 0u64;
    let mut last_status_us = 0u64;
    for slot in &shared.sockets {
        let status_at = slot.status_at_us.load(Ordering::Relaxed);
        match slot.recovered.load(Ordering::Relaxed) {
            2 => recovered += 1,
            1 => not_recovered += 1,
            _ => no_status += 1,
        }
        if status_at > 0 {
            to_status.saturating_record(status_at.saturating_sub(started_us).max(1));
            last_status_us = last_status_us.max(status_at);
        }
        replayed_reported += slot.replayed.load(Ordering::Relaxed);
        let messages = slot.messages.load(Ordering::Relaxed);
        let before = slot.before_status.load(Ordering::Relaxed);
        let dups = slot.duplicates.load(Ordering::Relaxed);
        if messages < expected {
            missing += 1;
        }
        if dups > 0 {
            duplicated += 1;
        }
        if before < messages {
            after_status += 1;
        }
        if messages == expected && before == expected && dups == 0 && status_at > 0 {
            complete += 1;
        }
    }
    let step = &shared.steps[0];
    let all_s = (statuses >= again.ok as u64 && last_status_us > 0)
        .then(|| last_status_us.saturating_sub(started_us) as f64 / 1e6);
    Ok(json!({
        "sockets": args.sockets,
        "users": users,
        "sockets_per_user": args.sockets_per_user.max(1),
        "dropped": dropped,
        "missed_per_user": expected,
        "missed_publish": {
            "published": missed.published,
            "secs": missed.secs,
            "over_capacity": missed.over_capacity,
            "replay_over_capacity": missed.replay_over_capacity,
        },
        "reconnect": again.to_json(),
        "all_joined_s": joined.as_secs_f64(),
        "status_frames": statuses,
        "all_recovered_s": all_s,
        "to_status": latency_json(&to_status),
        "recovered_true": recovered,
        "recovered_false": not_recovered,
        "no_status": no_status,
        "replayed_reported": replayed_reported,
        "expected": expected * again.ok as u64,
        "received": step.received(),
        "duplicates": step.duplicates.load(Ordering::Relaxed),
        "misroutes": step.misroutes.load(Ordering::Relaxed),
        "out_of_order": step.out_of_order.load(Ordering::Relaxed),
        "sockets_complete": complete,
        "sockets_missing_messages": missing,
        "sockets_with_duplicates": duplicated,
        "sockets_with_messages_after_status": after_status,
        "all_exactly_once": complete == args.sockets as u64 && again.ok == args.sockets,
    }))
}
