//! Redis' own account of a step (`--redis-stats`): commands and their CPU
//! from `INFO commandstats`, `used_memory`, and the size of the first
//! user's replay key. It only reads (`INFO`, `ZCARD`, `MEMORY USAGE`): it
//! must not write to Redis, and it speaks to one `--redis` host only.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::json;

use crate::args::{single_redis_addr, Args};

/// Redis' own account at one moment (`--redis-stats`): calls and CPU µs
/// per command since it started (`INFO commandstats`: commands a script
/// runs count under their own names too) and `used_memory`.
pub(crate) struct RedisStats {
    commands: BTreeMap<String, (u64, u64)>,
    used_memory: u64,
}

impl RedisStats {
    /// A connection for [`RedisStats::take`], opened before the first
    /// sample so that its own memory is in every sample alike.
    pub(crate) async fn connect(args: &Args) -> Result<tests::RespClient> {
        tests::RespClient::connect(single_redis_addr(args, "--redis-stats")?).await
    }

    pub(crate) async fn take(client: &mut tests::RespClient) -> Result<RedisStats> {
        let info = |reply: tests::resp::RespValue| -> Result<String> {
            Ok(reply.check()?.into_strings()?.concat())
        };
        let commandstats = info(client.cmd(&["INFO", "commandstats"]).await?)?;
        let memory = info(client.cmd(&["INFO", "memory"]).await?)?;
        let mut commands = BTreeMap::new();
        for line in commandstats.lines() {
            let Some((name, fields)) = line
                .trim()
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |wanted: &str| {
                fields
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(wanted)?.strip_prefix('='))
                    .and_then(|value| value.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            commands.insert(name.to_string(), (field("calls"), field("usec")));
        }
        let used_memory = memory
            .lines()
            .find_map(|line| line.trim().strip_prefix("used_memory:"))
            .and_then(|value| value.parse().ok())
            .context("INFO memory has no used_memory")?;
        Ok(RedisStats {
            commands,
            used_memory,
        })
    }

    /// What Redis did from `before` to `self`, also per group_send and per
    /// user (`users` users held what was sent).
    pub(crate) fn since(
        &self,
        before: &RedisStats,
        group_sends: u64,
        users: u64,
    ) -> serde_json::Value {
        let mut commands = serde_json::Map::new();
        let (mut calls, mut usec) = (0u64, 0u64);
        for (name, &(after_calls, after_usec)) in &self.commands {
            let (was_calls, was_usec) = before.commands.get(name).copied().unwrap_or((0, 0));
            let (c, u) = (
                after_calls.saturating_sub(was_calls),
                after_usec.saturating_sub(was_usec),
            );
            // INFO itself is this measurement's own command.
            if c == 0 || name == "info" {
                continue;
            }
            calls += c;
            usec += u;
            commands.insert(name.clone(), json!({"calls": c, "usec": u}));
        }
        let memory = self.used_memory as i64 - before.used_memory as i64;
        let per = |value: f64, by: u64| {
            if by > 0 {
                json!(value / by as f64)
            } else {
                json!(null)
            }
        };
        json!({
            "group_sends": group_sends,
            "users": users,
            "commands": commands,
            "calls": calls,
            "usec": usec,
            "used_memory_before": before.used_memory,
            "used_memory_after": self.used_memory,
            "used_memory_delta": memory,
            "calls_per_group_send": per(calls as f64, group_sends),
            "usec_per_group_send": per(usec as f64, group_sends),
            "memory_bytes_per_group_send": per(memory as f64, group_sends),
            "memory_bytes_per_user": per(memory as f64, users),
        })
    }
}

/// Entries and `MEMORY USAGE` of the first user's replay key (recovery's
/// window of that user), or null where it has none.
pub(crate) async fn replay_key_sample(args: &Args) -> Result<serde_json::Value> {
    let mut client = tests::RespClient::connect(single_redis_addr(args, "--redis-stats")?).await?;
    let key = shared_proto::names::queue_key(
        &args.prefix,
        &shared_proto::names::replay_channel(&format!("user_{}", args.user_base), 1),
    );
    let entries = client
        .cmd(&["ZCARD", &key])
        .await?
        .check()?
        .as_int()
        .unwrap_or(0);
    if entries == 0 {
        return Ok(json!(null));
    }
    let bytes = client
        .cmd(&["MEMORY", "USAGE", &key, "SAMPLES", "0"])
        .await?
        .check()?
        .as_int();
    Ok(json!({"key": key, "entries": entries, "memory_usage_bytes": bytes}))
}
