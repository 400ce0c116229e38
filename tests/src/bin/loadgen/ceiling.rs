//! The Redis-alone ceiling (`--ceiling-members`, per-user without
//! sockets): group members of a made-up process in every user's group, and
//! a consumer popping that process's queue key as a gateway's receiver
//! would. It writes only that process's members and pops only its queue:
//! it must not touch another process's channels, and its task ends when it
//! is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::args::{single_redis_addr, Args};
use crate::measure::{latency_json, new_histogram, now_us};

/// Redis's side of delivery without a gateway, for the ceiling run: the
/// users' groups each hold one channel of a made-up process, and a task pops
/// that process's queue key the way the gateway's receiver does (a blocking
/// pop with a batched pop pipelined behind it) and counts what it popped.
pub(crate) struct CeilingConsumer {
    popped: Arc<AtomicU64>,
    /// Queue score (the send time) → pop, in µs: the wait in front of a
    /// gateway's receiver that Redis and the publisher cause by themselves.
    queue_lag: Arc<std::sync::Mutex<Histogram<u64>>>,
    task: JoinHandle<()>,
}

impl CeilingConsumer {
    const PROCESS: &'static str = "ceiling";
    const POP_BATCH: usize = 512;

    pub(crate) async fn start(args: &Args) -> Result<CeilingConsumer> {
        let addr = single_redis_addr(args, "--ceiling-members")?;
        let mut setup = tests::RespClient::connect(addr).await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_secs_f64())
            .unwrap_or(0.0)
            .to_string();
        let users: Vec<u64> = (0..args.ceiling_members).collect();
        for chunk in users.chunks(1000) {
            let joins: Vec<Vec<String>> = chunk
                .iter()
                .map(|&i| {
                    let group = format!("user_{}", args.user_base + i);
                    let channel =
                        shared_proto::names::specific_channel(Self::PROCESS, &i.to_string());
                    vec![
                        "ZADD".into(),
                        shared_proto::names::group_key(&args.prefix, &group),
                        now.clone(),
                        channel,
                    ]
                })
                .collect();
            for reply in setup.pipeline(&joins).await? {
                reply.check().context("ZADD of a ceiling member")?;
            }
        }
        let queue = shared_proto::names::queue_key(
            &args.prefix,
            &shared_proto::names::specific_channel(Self::PROCESS, ""),
        );
        let mut client = tests::RespClient::connect(addr).await?;
        let popped = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&popped);
        let queue_lag = Arc::new(std::sync::Mutex::new(new_histogram()?));
        let lags = Arc::clone(&queue_lag);
        let task = tokio::spawn(async move {
            loop {
                let Ok(popped) = client.pop_queue(&queue, Self::POP_BATCH).await else {
                    return;
                };
                let now = now_us();
                if let Ok(mut lags) = lags.lock() {
                    for (_member, score) in &popped {
                        let sent = std::str::from_utf8(score)
                            .ok()
                            .and_then(|text| text.parse::<f64>().ok());
                        if let Some(sent) = sent {
                            let sent_us = (sent * 1e6) as u64;
                            lags.saturating_record(now.saturating_sub(sent_us).max(1));
                        }
                    }
                }
                counter.fetch_add(popped.len() as u64, Ordering::Relaxed);
            }
        });
        Ok(CeilingConsumer {
            popped,
            queue_lag,
            task,
        })
    }

    /// The queue lag since the last call, as latency quantiles.
    pub(crate) fn take_queue_lag(&self) -> serde_json::Value {
        match self.queue_lag.lock() {
            Ok(mut lags) => {
                let json = latency_json(&lags);
                lags.reset();
                json
            }
            Err(_) => json!(null),
        }
    }

    pub(crate) fn popped(&self) -> u64 {
        self.popped.load(Ordering::Relaxed)
    }

    /// Waits (at most 10 s) until `count` payloads were popped in all.
    pub(crate) async fn wait_for(&self, count: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.popped() < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for CeilingConsumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
