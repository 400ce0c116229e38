//! `--mode handshake-storm`: what a reconnect storm of other clients does
//! to the delivery of sockets that stay. The connected fleet (one user) is
//! measured at `--broadcast-rate` for `--messages` twice: quiet, then while
//! `--storm-clients` other clients, with RS256 tokens the gateway verifies
//! with its public key, connect all at once (`--connect-concurrency` in
//! flight; on a thread of their own), are dropped and connect again, round
//! after round. It reports
//! both steps and the storm's handshakes per second. It must not touch the
//! measured sockets, and the storm ends with the second step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tests::publisher::PublisherConfig;

use crate::args::Args;
use crate::clients::{connect_fleet, ConnectReport, Connector, Fleet};
use crate::reader::Shared;
use crate::step::{measured_step, StepPlan};

/// The storm's users start here, far from the measured user's.
const STORM_USER_OFFSET: u64 = 10_000_000;

pub(crate) async fn handshake_storm(
    args: &Args,
    config: &PublisherConfig,
    shared: &Arc<Shared>,
    fleet: Fleet,
    connect: &ConnectReport,
) -> Result<serde_json::Value> {
    let base = args.user_base;
    let plan = |k: usize| StepPlan {
        k,
        messages: args.messages,
        rate: args.broadcast_rate,
        target_of: Arc::new(move |_| base),
        fan_out: connect.ok as u64,
    };
    let connector = Arc::new(Connector::new(args, storm_tokens(args)?, None)?);
    let (quiet, _, _) = measured_step(args, config, shared, plan(0)).await?;

    let stop = Arc::new(AtomicBool::new(false));
    // The storm runs on a thread and runtime of its own: the measured
    // sockets' readers must not wait in line behind its tasks, or the
    // load generator's own queue would show up as the gateway's latency.
    let (clients, concurrency) = (args.storm_clients, args.connect_concurrency);
    let storm = std::thread::Builder::new().name("storm".into()).spawn({
        let stop = Arc::clone(&stop);
        move || -> Result<serde_json::Value> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("the storm's runtime")?
                .block_on(run_storm(connector, clients, concurrency, stop))
        }
    })?;
    // The first round's handshakes in full swing before the step starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stormy = measured_step(args, config, shared, plan(1)).await;
    stop.store(true, Ordering::Relaxed);
    let storm = tokio::task::spawn_blocking(move || storm.join())
        .await
        .context("waiting for the storm thread")?
        .map_err(|_| anyhow::anyhow!("the storm thread panicked"))??;
    let (stormy, _, _) = stormy?;
    fleet.close().await;
    Ok(json!({
        "quiet": quiet,
        "during_storm": stormy,
        "storm_clients": args.storm_clients,
        "storm": storm,
    }))
}

/// RS256 tokens for `--storm-tokens` users, repeated for every client.
fn storm_tokens(args: &Args) -> Result<Vec<String>> {
    // `Args::check` already refused a handshake storm without the key.
    let path = args
        .storm_rsa_key
        .as_ref()
        .context("no --storm-rsa-key past Args::check")?;
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let key = EncodingKey::from_rsa_pem(&pem).context("--storm-rsa-key is no RSA private key")?;
    let header = Header::new(Algorithm::RS256);
    let distinct = (0..args.storm_tokens.max(1) as u64)
        .map(|i| {
            let user = args.user_base + STORM_USER_OFFSET + i;
            tests::tokens::mint_with(&header, &key, &tests::tokens::claims_for_user(user, 3600))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((0..args.storm_clients)
        .map(|i| distinct[i % distinct.len()].clone())
        .collect())
}

/// Rounds of `clients` handshakes, each round dropped as soon as it is
/// connected, until `stop`; the rounds, handshakes and their rate.
async fn run_storm(
    connector: Arc<Connector>,
    clients: usize,
    concurrency: usize,
    stop: Arc<AtomicBool>,
) -> Result<serde_json::Value> {
    // The storm's sockets receive nothing; their reader slots are their own.
    let shared = Arc::new(Shared::new(1, clients)?);
    let started = Instant::now();
    let (mut rounds, mut handshakes, mut failed) = (0u64, 0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        let (storm_fleet, report) = connect_fleet(
            Arc::clone(&connector),
            clients,
            |i| i as u64,
            concurrency,
            Arc::clone(&shared),
        )
        .await?;
        rounds += 1;
        handshakes += report.ok as u64;
        failed += report.failed as u64;
        storm_fleet.kill().await;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(json!({
        "rounds": rounds,
        "handshakes": handshakes,
        "failed": failed,
        "secs": secs,
        "handshakes_per_s": if secs > 0.0 { handshakes as f64 / secs } else { 0.0 },
    }))
}
