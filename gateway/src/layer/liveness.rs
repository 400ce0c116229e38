//! Liveness (core layer): each process's heartbeat in Redis, its record of
//! what it joined, and the reaper that removes what a dead process left.
//!
//! On every Redis host of `layer.hosts`, with the layer's prefix:
//! `<prefix>:gw:alive:<process>` is a string whose TTL (Redis' own clock)
//! is the liveness timeout, refreshed every third of it;
//! `<prefix>:gw:processes` is the set of process ids reapers look at;
//! `<prefix>:gw:joined:<process>` is the process's record: one entry
//! `<group key> <channel>` per membership whose group lives on that host,
//! and one entry `<queue key>` per queue key of the process there. The
//! membership writer (`layer::core`) keeps the record in step in its own
//! pipelines through [`record_entry`]; this module owns the key names, the
//! entry format, the heartbeat, the reap script, the reaper and a clean
//! stop's retirement (the same script run on the process itself, after it
//! deleted its liveness key). It must never remove
//! anything of a process whose liveness record exists (the script checks
//! inside Redis, atomically), and never scan a group: the record names
//! exactly what to remove.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use shared_proto::names;

use super::HostRing;
use crate::layer::redis::{Heartbeat, RedisError, RedisHost};
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;

/// Record entries one reap script call removes at most, so a big record
/// never blocks Redis in one long script.
const REAP_CHUNK: usize = 500;
/// A reaper pass runs at most this far apart (less with short timeouts).
const MAX_REAP_INTERVAL: Duration = Duration::from_secs(5);

/// Removes up to `ARGV[1]` entries of a dead process's record, unless its
/// liveness record exists (checked here, inside Redis, so a process that
/// came back is never touched). Replies `{-1, 0}` when the process is
/// alive, `{1, removed}` while entries remain, `{0, removed}` when this
/// call finished the reap (the record is gone and the process left the
/// processes set), `{2, removed}` when another reaper finished it. Entries that
/// are neither a group membership nor a queue key of the layer are dropped
/// untouched. With recovery, `ARGV[5]` names the idle set each group that
/// lost a membership goes into (`layer::replay`); empty otherwise.
const REAP_SCRIPT: &str = "\
if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, 0} end
local entries = redis.call('SPOP', KEYS[2], tonumber(ARGV[1]))
local removed = 0
local group_prefix, queue_prefix, idle = ARGV[3], ARGV[4], ARGV[5]
local idle_since = nil
if idle ~= '' then
  local now = redis.call('TIME')
  idle_since = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
end
for _, entry in ipairs(entries) do
  local space = string.find(entry, ' ', 1, true)
  if space then
    local key = string.sub(entry, 1, space - 1)
    if string.sub(key, 1, #group_prefix) == group_prefix then
      local gone = redis.call('ZREM', key, string.sub(entry, space + 1))
      removed = removed + gone
      if idle_since and gone == 1 then
        redis.call('ZADD', idle, idle_since, key)
      end
    end
  elseif string.sub(entry, 1, #queue_prefix) == queue_prefix then
    redis.call('DEL', entry)
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {1, removed} end
if redis.call('SREM', KEYS[3], ARGV[2]) == 1 then return {0, removed} end
return {2, removed}";

/// The liveness key names of one process, the same on every host.
#[derive(Debug, Clone)]
pub struct ProcessKeys {
    prefix: String,
    pub process_id: String,
    pub alive: String,
    pub record: String,
    pub processes: String,
    /// With recovery: the set of idle groups a reap adds to
    /// (`layer::replay`).
    pub replay_idle: Option<String>,
}

impl ProcessKeys {
    pub fn new(prefix: &str, process_id: &str) -> ProcessKeys {
        ProcessKeys {
            prefix: prefix.to_string(),
            process_id: process_id.to_string(),
            alive: alive_key(prefix, process_id),
            record: record_key(prefix, process_id),
            processes: format!("{prefix}:gw:processes"),
            replay_idle: None,
        }
    }
}

/// `<prefix>:gw:alive:<process>`; presence readers use the same name.
pub fn alive_key(prefix: &str, process_id: &str) -> String {
    format!("{prefix}:gw:alive:{process_id}")
}

fn record_key(prefix: &str, process_id: &str) -> String {
    format!("{prefix}:gw:joined:{process_id}")
}

/// The record's entry for one membership. Group keys and channel names
/// never contain a space (channels_redis' name rules), so the first space
/// splits them.
pub fn record_entry(group_key: &str, channel: &str) -> String {
    let mut entry = String::with_capacity(group_key.len() + 1 + channel.len());
    entry.push_str(group_key);
    entry.push(' ');
    entry.push_str(channel);
    entry
}

/// The gateway process a channel name belongs to: the text between
/// `specific.` and the first `.` or `!` after it, if it is a gateway's
/// (`gw-…`). Presence readers parse names the same way; the reaping
/// script does it in Lua, so here it only pins the format down in tests.
#[cfg(test)]
pub(crate) fn gateway_process_of(channel: &str) -> Option<&str> {
    let rest = channel.strip_prefix("specific.")?;
    let end = rest.find(['.', '!'])?;
    let process = &rest[..end];
    is_gateway_process_id(process).then_some(process)
}

/// `gw-` followed by hex digits: what `ChannelNaming` makes. Anything else
/// in a processes set is never used to build key names.
fn is_gateway_process_id(process: &str) -> bool {
    process
        .strip_prefix("gw-")
        .is_some_and(|hex| !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What the heartbeat and the reaper need besides the hosts.
pub struct LivenessSettings {
    pub keys: ProcessKeys,
    pub timeout: Duration,
    /// Seconds records and the processes set live after a write:
    /// `group_expiry`, so nothing outlives the memberships it describes,
    /// but at least two liveness timeouts, so heartbeats keep them.
    pub record_expiry: i64,
    /// Per host, in ring order, the record entries of this process's queue
    /// keys that live there.
    pub queue_entries: Vec<Vec<String>>,
}

impl LivenessSettings {
    pub fn new(
        hosts: &HostRing,
        prefix: &str,
        process_id: &str,
        (lanes, own): (&[String], &[String]),
        timeout: Duration,
        group_expiry: u64,
    ) -> LivenessSettings {
        // A lane lives where channels_redis places it; the process's own
        // keys live with its first lane, where its receiver's script made them.
        let mut queue_entries = vec![Vec::new(); hosts.len()];
        for part in lanes {
            if let Some(entries) = queue_entries.get_mut(hosts.index_for(part)) {
                entries.push(names::queue_key(prefix, part));
            }
        }
        let home = lanes.first().map_or(0, |lane| hosts.index_for(lane));
        if let Some(entries) = queue_entries.get_mut(home) {
            entries.extend(own.iter().map(|part| names::queue_key(prefix, part)));
        }
        LivenessSettings {
            keys: ProcessKeys::new(prefix, process_id),
            timeout,
            record_expiry: i64::try_from(group_expiry.max(timeout.as_secs() * 2))
                .unwrap_or(i64::MAX),
            queue_entries,
        }
    }

    /// With recovery, a reap also notes the groups it took a membership
    /// from as idle (`layer::replay`).
    pub fn with_replay_idle(mut self, idle_key: String) -> LivenessSettings {
        self.keys.replay_idle = Some(idle_key);
        self
    }

    /// Three beats per timeout: one late or lost beat is not a death.
    pub fn beat_interval(&self) -> Duration {
        self.timeout / 3
    }

    pub fn reap_interval(&self) -> Duration {
        (self.timeout / 3).min(MAX_REAP_INTERVAL)
    }
}

/// Refreshes this process's liveness record on every host. When a refresh
/// finds the record gone after it had been written (stalled past the
/// timeout and maybe reaped, or Redis lost it), asks the keeper to re-add
/// every membership at once.
pub async fn keep_alive(
    hosts: HostRing,
    settings: Arc<LivenessSettings>,
    needs_refresh: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    stop: Shutdown,
) {
    let keys = &settings.keys;
    let mut established = vec![false; hosts.len()];
    loop {
        let beats = hosts.hosts().iter().enumerate().map(|(index, host)| {
            let beat = Heartbeat {
                alive_key: &keys.alive,
                ttl: settings.timeout,
                processes_key: &keys.processes,
                process_id: &keys.process_id,
                record_key: &keys.record,
                record_entries: settings
                    .queue_entries
                    .get(index)
                    .map_or(&[][..], Vec::as_slice),
                record_expiry: settings.record_expiry,
            };
            async move { host.beat(&beat).await }
        });
        let outcomes = tokio::select! {
            _ = stop.triggered() => return,
            outcomes = join_all(beats) => outcomes,
        };
        for ((outcome, host), was_established) in outcomes
            .into_iter()
            .zip(hosts.hosts())
            .zip(established.iter_mut())
        {
            match outcome {
                Ok(true) => *was_established = true,
                Ok(false) => {
                    if *was_established {
                        metrics.liveness_lost.inc();
                        tracing::warn!(
                            host = host.label(),
                            "liveness record had expired (stalled or Redis lost it); \
                             re-adding memberships"
                        );
                        needs_refresh.store(true, Ordering::Relaxed);
                    }
                    *was_established = true;
                }
                Err(error) => tracing::debug!(%error, "liveness refresh failed"),
            }
        }
        tokio::select! {
            _ = stop.triggered() => return,
            _ = tokio::time::sleep(settings.beat_interval()) => {}
        }
    }
}

/// Every reap interval (jittered, so processes started together do not
/// reap in step), removes what processes without a liveness record left on
/// each host: their memberships, queue keys and records.
pub async fn reap_dead(
    hosts: HostRing,
    settings: Arc<LivenessSettings>,
    metrics: Arc<Metrics>,
    stop: Shutdown,
) {
    loop {
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        tokio::select! {
            _ = stop.triggered() => return,
            _ = tokio::time::sleep(settings.reap_interval().mul_f64(jitter)) => {}
        }
        let mut live = HashSet::new();
        for host in hosts.hosts() {
            if let Err(error) = reap_host(host, &settings.keys, &metrics, &mut live).await {
                tracing::debug!(%error, "reaping failed; next pass retries");
            }
        }
        metrics
            .processes_seen
            .set(i64::try_from(live.len()).unwrap_or(i64::MAX));
    }
}

/// One host: which processes it lists, which of them are alive, and a
/// reap of each dead one.
async fn reap_host(
    host: &RedisHost,
    keys: &ProcessKeys,
    metrics: &Metrics,
    live: &mut HashSet<String>,
) -> Result<(), RedisError> {
    let processes: Vec<String> = host
        .set_members(&keys.processes)
        .await?
        .into_iter()
        .filter(|process| is_gateway_process_id(process))
        .collect();
    let alive_keys: Vec<String> = processes
        .iter()
        .map(|process| alive_key(&keys.prefix, process))
        .collect();
    let alive = host.keys_exist(&alive_keys).await?;
    for ((process, alive_key), alive) in processes.into_iter().zip(alive_keys).zip(alive) {
        if alive || process == keys.process_id {
            live.insert(process);
            continue;
        }
        reap_process(host, keys, &process, alive_key, Some(metrics)).await?;
    }
    Ok(())
}

/// At a clean stop, after the process removed its memberships: deletes its
/// liveness key and reaps what is left of it (its queue keys, a leave that
/// could not be written, the record) with the same script, so nobody has
/// to wait for its timeout. Where that fails, the others reap it later.
pub async fn retire(hosts: &HostRing, settings: &LivenessSettings) {
    let keys = &settings.keys;
    join_all(hosts.hosts().iter().map(|host| async move {
        host.delete(vec![keys.alive.clone()]).await?;
        reap_process(host, keys, &keys.process_id, keys.alive.clone(), None).await
    }))
    .await
    .into_iter()
    .filter_map(Result::err)
    .for_each(
        |error| tracing::info!(%error, "retiring the liveness record failed; others reap it"),
    );
}

/// Runs the reap script on one dead process's record, a chunk per call,
/// until the record is gone or the process turns out to be alive.
async fn reap_process(
    host: &RedisHost,
    keys: &ProcessKeys,
    process: &str,
    alive_key: String,
    metrics: Option<&Metrics>,
) -> Result<(), RedisError> {
    let script_keys = vec![
        alive_key,
        record_key(&keys.prefix, process),
        keys.processes.clone(),
    ];
    let args = vec![
        REAP_CHUNK.to_string(),
        process.to_string(),
        names::group_key(&keys.prefix, ""),
        names::queue_key(&keys.prefix, "specific."),
        keys.replay_idle.clone().unwrap_or_default(),
    ];
    let mut removed_total = 0;
    loop {
        let reply = host
            .script_integers(REAP_SCRIPT, script_keys.clone(), args.clone())
            .await?;
        match reply.as_slice() {
            [-1, _] => {
                tracing::info!(
                    process,
                    host = host.label(),
                    "process came back; not reaped"
                );
                return Ok(());
            }
            [state, removed] => {
                let removed = u64::try_from(*removed).unwrap_or(0);
                removed_total += removed;
                if let Some(metrics) = metrics {
                    metrics.memberships_reaped.inc_by(removed);
                }
                if *state == 2 {
                    return Ok(());
                }
                if *state == 0 {
                    // Without metrics it is this process retiring itself.
                    if let Some(metrics) = metrics {
                        metrics.processes_reaped.inc();
                        tracing::info!(
                            process,
                            host = host.label(),
                            memberships = removed_total,
                            "reaped a dead gateway process"
                        );
                    }
                    return Ok(());
                }
            }
            _ => {
                return Err(RedisError::Reply {
                    host: host.label().to_string(),
                    what: "reap script reply is not [state, removed]",
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_ids_are_read_from_both_channel_forms() {
        let process = "gw-0123456789abcdef01234567";
        assert_eq!(
            gateway_process_of(&format!("specific.{process}!1f")),
            Some(process)
        );
        assert_eq!(
            gateway_process_of(&format!("specific.{process}.3!1f")),
            Some(process)
        );
        // Django consumers' channels and malformed names are not gateways'.
        assert_eq!(gateway_process_of("specific.0123abcd!x"), None);
        assert_eq!(gateway_process_of("specific.gw-!x"), None);
        assert_eq!(gateway_process_of("specific.gw-zz!x"), None);
        assert_eq!(gateway_process_of("gw-0123!x"), None);
        assert_eq!(gateway_process_of("specific.gw-0123"), None);
    }

    #[test]
    fn record_entries_split_at_the_first_space() {
        let entry = record_entry("asgi:group:user_7", "specific.gw-01!a");
        assert_eq!(
            entry.split_once(' '),
            Some(("asgi:group:user_7", "specific.gw-01!a"))
        );
    }

    #[test]
    fn the_reaper_looks_often_enough_to_meet_its_deadline() {
        let hosts = HostRing::from_config(&crate::config::LayerConfig::default()).expect("hosts");
        let settings = LivenessSettings::new(
            &hosts,
            "asgi",
            "gw-01",
            (
                &["specific.gw-01!".to_string()],
                &["specific.gw-01.merged0".to_string()],
            ),
            crate::config::DEFAULT_LIVENESS_TIMEOUT,
            86_400,
        );
        // Dead for the timeout, then found by a pass at most 1.25 reap
        // intervals later: within 30 s with the defaults.
        assert!(
            settings.timeout + settings.reap_interval().mul_f64(1.25) < Duration::from_secs(30)
        );
        assert_eq!(
            settings.queue_entries,
            vec![vec![
                "asgispecific.gw-01!".to_string(),
                "asgispecific.gw-01.merged0".to_string()
            ]]
        );
    }
}
