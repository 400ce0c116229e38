//! Replay channels: the Redis side of recovery (core layer, `layer.recovery`).
//!
//! Every group a socket of this process joins also gets the group's replay
//! channel (`gw.replay.<group>`, `shared_proto::replay_channel`) as a
//! member, in the same `ZADD`. Django's unchanged `group_send` then queues
//! each message of the group into that channel's key
//! (`<prefix>gw.replay.<group>`) as it does for any consumer, and nobody pops
//! it: channels_redis itself keeps the last `expiry` seconds of the group
//! there, at most `capacity` messages, and any gateway process can read them
//! back for a reconnecting client (`recovery`).
//!
//! The replay member is not in the process's record: it belongs to the
//! group, not to a process, and must outlive a crash. When a group loses its
//! last socket on a process (or a reaper removes a dead process's
//! membership), the group key goes into `<prefix>:gw:replay-idle` (on the
//! group's host) with the time; every process sweeps that set, and removes
//! a group's replay members once it has had no gateway socket for
//! [`IDLE_BEFORE_SWEEP`] times the window (`expiry`), so a client away for
//! less than the window finds its messages kept. This module owns those
//! names, the idle entries' format and the sweep; it must not render frames
//! or decide what a client missed.

use std::time::Duration;

use shared_proto::names;

use super::HostRing;
use crate::layer::redis::{RedisError, ReplaySnapshot};
use crate::ops::metrics::Metrics;
use crate::ops::shutdown::Shutdown;

/// How many windows a group stays idle before its replay member goes: one
/// window lets the messages a client missed age out of the key while it is
/// away; the second covers the key's own TTL (`expiry` after its last
/// write), so a replay member is never missing while its key still holds
/// anything a client could be told is complete.
pub const IDLE_BEFORE_SWEEP: u32 = 2;

/// How often each process sweeps the idle groups of every host.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Idle groups looked at per host per sweep call.
const SWEEP_CHUNK: usize = 500;

/// Channel names of gateway sockets begin so (`registry::ChannelNaming`);
/// a group holding one has a socket on some process.
const GATEWAY_CHANNEL_PREFIX: &str = "specific.gw-";

/// Replay member names begin so (`shared_proto::replay_channel`, both forms).
const REPLAY_MEMBER_PREFIX: &str = "gw.replay";

/// Removes the replay members of groups idle for long enough, unless a
/// gateway socket joined them since. KEYS[1] the idle set (group keys);
/// ARGV: how long a group must have been idle (seconds; Redis' clock is
/// read here), the chunk size, the gateway channel prefix, the replay
/// member prefix. Returns [looked at, removed].
const SWEEP_SCRIPT: &str = "\
local now = redis.call('TIME')
local horizon = tonumber(now[1]) + tonumber(now[2]) / 1000000 - tonumber(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', horizon, 'LIMIT', 0, tonumber(ARGV[2]))
local gateway, replay = ARGV[3], ARGV[4]
local removed = 0
for _, group_key in ipairs(due) do
  local live = false
  local replays = {}
  for _, member in ipairs(redis.call('ZRANGE', group_key, 0, -1)) do
    if string.sub(member, 1, #gateway) == gateway then
      live = true
      break
    end
    if string.sub(member, 1, #replay) == replay then
      replays[#replays + 1] = member
    end
  end
  if not live and #replays > 0 then
    removed = removed + redis.call('ZREM', group_key, unpack(replays))
  end
  redis.call('ZREM', KEYS[1], group_key)
end
return {#due, removed}
";

/// The replay member of `group` on a ring of `hosts` (it lands on the
/// first host, where a recovering gateway keeps its queue keys).
pub fn replay_member(group: &str, hosts: usize) -> String {
    names::replay_channel(group, hosts)
}

/// The key channels_redis queues a group's messages into for its replay
/// member: `<prefix>` and the channel, no separator (a channel without `!`
/// is its own non-local part).
pub fn replay_key(prefix: &str, group: &str, hosts: usize) -> String {
    names::queue_key(prefix, &names::replay_channel(group, hosts))
}

/// The set of group keys that lost their last socket on some process
/// (or whose process was reaped), scored by when.
pub fn idle_key(prefix: &str) -> String {
    format!("{prefix}:gw:replay-idle")
}

/// Reads the replay keys of `groups` for a recovering socket: every replay
/// key lives on the first host.
pub async fn read(
    hosts: &HostRing,
    prefix: &str,
    groups: &[std::sync::Arc<str>],
    from: Option<f64>,
    limit: usize,
) -> Result<ReplaySnapshot, RedisError> {
    let keys: Vec<String> = groups
        .iter()
        .map(|group| replay_key(prefix, group, hosts.len()))
        .collect();
    // Configuration refuses an empty ring; a read without a host must
    // still not pass for an empty window read at time zero.
    let host = hosts.host(0).ok_or(RedisError::NoHost)?;
    host.read_replay(&keys, from, limit).await
}

/// Every [`SWEEP_EVERY`], on every host, removes the replay members of
/// groups idle for [`IDLE_BEFORE_SWEEP`] windows.
pub async fn sweep_idle_groups(
    hosts: HostRing,
    prefix: String,
    window: Duration,
    metrics: std::sync::Arc<Metrics>,
    stop: Shutdown,
) {
    let idle = idle_key(&prefix);
    let horizon = (window * IDLE_BEFORE_SWEEP).as_secs_f64().to_string();
    loop {
        tokio::select! {
            _ = stop.triggered() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        for host in hosts.hosts() {
            // A full chunk means more may be due: go on with the next.
            loop {
                let swept = host
                    .script_integers(
                        SWEEP_SCRIPT,
                        vec![idle.clone()],
                        vec![
                            horizon.clone(),
                            SWEEP_CHUNK.to_string(),
                            GATEWAY_CHANNEL_PREFIX.to_string(),
                            REPLAY_MEMBER_PREFIX.to_string(),
                        ],
                    )
                    .await;
                match swept.as_deref() {
                    Ok([looked_at, removed]) => {
                        metrics
                            .replay_members_removed
                            .inc_by(u64::try_from(*removed).unwrap_or(0));
                        if usize::try_from(*looked_at).unwrap_or(0) < SWEEP_CHUNK {
                            break;
                        }
                    }
                    Ok(_) => break,
                    Err(error) => {
                        tracing::debug!(%error, "replay sweep failed; retried next pass");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(replay_key("asgi", "user_7", 1), "asgigw.replay.user_7");
        assert_eq!(replay_member("user_7", 1), "gw.replay.user_7");
        assert_eq!(idle_key("asgi"), "asgi:gw:replay-idle");
        for group in ["user_7", &"g".repeat(99)] {
            for hosts in 1..4 {
                assert!(replay_member(group, hosts).starts_with(REPLAY_MEMBER_PREFIX));
            }
        }
    }

    #[test]
    fn gateway_channels_carry_the_prefix_the_sweep_looks_for() {
        let naming = crate::relay::registry::ChannelNaming::random(4, 1);
        let channel = naming.channel(5 << crate::relay::registry::LANE_BITS);
        assert!(channel.starts_with(GATEWAY_CHANNEL_PREFIX), "{channel}");
    }
}
