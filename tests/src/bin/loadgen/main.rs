//! `loadgen`: the benchmark load generator. It opens N authenticated
//! WebSockets to a gateway (or to the Daphne peer: anything serving
//! `/ws/notifications/?token=JWT`), spread over the source addresses
//! 127.0.0.2–127.0.0.250, publishes through the native core-layer publisher
//! (`tests::publisher`) and measures what arrives: connect rate, RSS per idle
//! socket of the server PIDs it is given, publish→receipt latency (hdrhistogram,
//! from the publish timestamp carried in each message), loss, duplicates and
//! misroutes, and the time a reconnect storm takes. It prints one JSON object.
//!
//! With `--recover` its sockets ask the gateway for recovery (`?recover=`,
//! `layer.recovery`): their frames come positioned and after a status frame,
//! which it reads too; `--mode recovery-storm` has every socket miss
//! messages and come back with its position at once. `--redis-stats` adds
//! Redis' own account of each step (commands by `INFO commandstats`,
//! `used_memory`): what a `group_send` costs Redis.
//!
//! It owns load and measurement only: it must not start or stop servers or
//! Redis (`scripts/bench` and the tests do), must target loopback only, and
//! every mode is bounded in sockets and time and ends by itself.
//!
//! This file parses the arguments, connects the sockets (every mode starts
//! so), hands them to the mode and adds the run's counters to the result,
//! which `tests::tool_result` writes. The rest has one module per concern:
//! `args`; the sockets, `clients` (connecting) and `reader` (receiving);
//! `publish`; `step` (one measured step); the modes, `modes` and
//! `recovery_storm` and `handshake_storm`; the Redis-alone `ceiling`; and
//! the measurements, `measure`, `proc_stats`, `redis_stats` and
//! `gateway_lag`.

/// The publisher builds and drops many short-lived buffers per message;
/// under glibc's allocator half of its time went to malloc and free (and
/// their consolidation of freed chunks), cores taken from the server under
/// test on a shared machine.
#[global_allocator]
static ALLOCATOR: gateway::ops::allocator::Jemalloc = gateway::ops::allocator::Jemalloc;

mod args;
mod ceiling;
mod clients;
mod gateway_lag;
mod handshake_storm;
mod measure;
mod modes;
mod proc_stats;
mod publish;
mod reader;
mod recovery_storm;
mod redis_stats;
mod step;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;

use args::{Args, Mode};
use clients::Connector;
use measure::{Hiccups, HICCUPS};
use proc_stats::vm_rss_kib;
use publish::publisher_config;
use reader::Shared;
use recovery_storm::recovery_storm;
use step::measured_connect;

async fn run(args: Args) -> Result<serde_json::Value> {
    if HICCUPS.get().is_none() {
        let _ = HICCUPS.set(Hiccups::start()?);
    }
    args.check()?;
    let fd_limit = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    if (args.sockets as u64) + 200 > fd_limit {
        bail!(
            "{} sockets need more than the fd limit {fd_limit}: use several loadgen processes",
            args.sockets
        );
    }
    let steps_needed = match args.mode {
        Mode::PerUser => args.rates.len().max(1),
        Mode::HandshakeStorm => 2,
        _ => 1,
    };
    let n = args.sockets;
    let shared = Arc::new(Shared::new(steps_needed, n)?);
    let base = args.user_base;
    let per_user = args.mode == Mode::PerUser;
    let storm_users = (n / args.sockets_per_user.max(1)).max(1);
    let storm = args.mode == Mode::RecoveryStorm;
    let user_of = move |i: usize| {
        if per_user {
            base + i as u64
        } else if storm {
            base + (i % storm_users) as u64
        } else {
            base
        }
    };
    let recover = args.recover || storm;
    let tokens = tests::tokens::try_mint_many(
        &args.secret,
        (0..n).map(|i| tests::tokens::claims_for_user(user_of(i), 3600)),
    )?;
    let connector = Arc::new(Connector::new(
        &args,
        tokens,
        recover.then(|| Arc::clone(&shared)),
    )?);
    let config = publisher_config(&args)?;
    let rss_before: Vec<(u32, Option<u64>)> = args
        .server_pid
        .iter()
        .map(|&p| (p, vm_rss_kib(p)))
        .collect();

    let mut out = json!({
        "mode": format!("{:?}", args.mode),
        "label": args.label,
        "sockets": n,
        "fd_limit": fd_limit,
        "target": args.target.to_string(),
        "recover": recover,
        "tls": args.tls_ca.is_some(),
    });
    let (fleet, connect, connect_json) =
        measured_connect(&args, &shared, Arc::clone(&connector), user_of, recover).await?;
    out["connect"] = connect_json;
    if let Some(path) = &args.ready_file {
        std::fs::write(path, b"").with_context(|| format!("writing {}", path.display()))?;
    }

    match args.mode {
        Mode::Idle => {
            modes::idle(
                &args,
                &config,
                &shared,
                fleet,
                &connect,
                &rss_before,
                &mut out,
            )
            .await?
        }
        Mode::PerUser => modes::per_user(&args, &config, &shared, fleet, &mut out).await?,
        Mode::Broadcast => {
            modes::broadcast(&args, &config, &shared, fleet, &connect, &mut out).await?
        }
        Mode::RecoveryStorm => {
            let users = storm_users;
            out["storm"] = recovery_storm(
                &args,
                &config,
                &shared,
                Arc::clone(&connector),
                fleet,
                users,
                user_of,
            )
            .await?;
        }
        Mode::HandshakeStorm => {
            out["storm"] =
                handshake_storm::handshake_storm(&args, &config, &shared, fleet, &connect).await?;
        }
        Mode::ReconnectStorm => {
            out["storm"] = modes::reconnect_storm(
                &args,
                &config,
                &shared,
                Arc::clone(&connector),
                fleet,
                &connect,
                user_of,
            )
            .await?;
        }
    }
    out["unexpected_closes"] = json!(shared.unexpected_closes.load(Ordering::Relaxed));
    out["bad_frames"] = json!(shared.bad_frames.load(Ordering::Relaxed));
    out["status_frames"] = json!(shared.status_frames.load(Ordering::Relaxed));
    out["position_regressions"] = json!(shared.position_regressions.load(Ordering::Relaxed));
    Ok(out)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let out_path = args.out.clone();
    // Like dropping the runtime: the sockets' tasks are cancelled at once.
    tests::tool_result::run("loadgen", out_path.as_deref(), Duration::ZERO, run(args))
}
