//! Registry: which sockets this process holds, under which channel names, in
//! which groups.
//!
//! Owns connection ids, the mapping from a channels_redis channel name
//! (`specific.<process>!<conn>`) back to a socket's outbox, and the local view
//! of group membership that the layers re-add to Redis. Lookups are sharded so
//! connects, disconnects and routing never contend on one lock, and a delivery
//! to many sockets takes each shard's lock once, not once per socket. It must
//! not do I/O: layers and the router act on what it answers.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::outbox::Outbox;

pub type ConnId = u64;

const SHARDS: usize = 64;

/// One lock's worth of the socket table.
type SocketShard = RwLock<HashMap<ConnId, Arc<Outbox>>>;

/// Channel names of this process: `specific.<process-id>!<conn-id-hex>`.
///
/// The process id starts with `gw-`, which a Python `uuid4().hex` never
/// contains, so operators can target the gateway's queue keys with a
/// `channel_capacity` pattern such as `specific.gw-*`.
#[derive(Debug, Clone)]
pub struct ChannelNaming {
    process_id: String,
    non_local: String,
}

impl ChannelNaming {
    pub fn random() -> ChannelNaming {
        let process_id = format!("gw-{:024x}", rand::random::<u128>() >> 32);
        ChannelNaming::with_process_id(process_id)
    }

    pub fn with_process_id(process_id: String) -> ChannelNaming {
        let non_local = format!("specific.{process_id}!");
        ChannelNaming {
            process_id,
            non_local,
        }
    }

    pub fn process_id(&self) -> &str {
        &self.process_id
    }

    /// `specific.<process>!`: the part that names this process's queue key.
    pub fn non_local_part(&self) -> &str {
        &self.non_local
    }

    /// The non-local parts (`specific.<process>!`) of every queue key this
    /// process reads: the one place that says which queue keys it owns, so
    /// the liveness record (and a reaper after a crash) names exactly them.
    pub fn queue_non_local_parts(&self) -> &[String] {
        std::slice::from_ref(&self.non_local)
    }

    pub fn channel(&self, conn: ConnId) -> String {
        format!("{}{conn:x}", self.non_local)
    }

    /// The connection a channel name addresses, if it belongs to this process.
    ///
    /// Called once per listed channel on the routing hot path, so it is a
    /// prefix compare and a hex parse of the rest, allocating nothing.
    pub fn conn_of(&self, channel: &str) -> Option<ConnId> {
        let local = channel.strip_prefix(self.non_local.as_str())?;
        if local.is_empty() || local.len() > 16 {
            return None;
        }
        ConnId::from_str_radix(local, 16).ok()
    }
}

/// Groups whose local membership changed from none to some, or back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GroupTransitions {
    pub now_active: Vec<Arc<str>>,
    pub now_empty: Vec<Arc<str>>,
}

/// Below this many recipients, looking each one up is cheaper than grouping
/// them by shard first.
const GROUPED_DELIVERY_MIN: usize = 32;

fn shard_index(conn: ConnId) -> usize {
    // Connection ids are sequential, so the low bits spread evenly.
    (conn as usize) % SHARDS
}

pub struct Registry {
    naming: ChannelNaming,
    next_conn: AtomicU64,
    sockets: Box<[SocketShard]>,
    groups: Mutex<HashMap<Arc<str>, HashSet<ConnId>>>,
}

impl Registry {
    pub fn new(naming: ChannelNaming) -> Registry {
        Registry {
            naming,
            next_conn: AtomicU64::new(1),
            sockets: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            groups: Mutex::new(HashMap::new()),
        }
    }

    pub fn naming(&self) -> &ChannelNaming {
        &self.naming
    }

    fn shard(&self, conn: ConnId) -> &SocketShard {
        &self.sockets[shard_index(conn)]
    }

    /// Adds a socket and its groups; returns the groups that had no local
    /// member before (a pub/sub layer subscribes to those).
    pub fn register(&self, outbox: Arc<Outbox>, groups: &[Arc<str>]) -> (ConnId, GroupTransitions) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.shard(conn).write().insert(conn, outbox);
        let mut transitions = GroupTransitions::default();
        let mut local_groups = self.groups.lock();
        for group in groups {
            let members = local_groups.entry(group.clone()).or_default();
            if members.is_empty() {
                transitions.now_active.push(group.clone());
            }
            members.insert(conn);
        }
        (conn, transitions)
    }

    /// Removes a socket; returns the groups it leaves without a local member.
    pub fn unregister(&self, conn: ConnId, groups: &[Arc<str>]) -> GroupTransitions {
        self.shard(conn).write().remove(&conn);
        let mut transitions = GroupTransitions::default();
        let mut local_groups = self.groups.lock();
        for group in groups {
            if let Some(members) = local_groups.get_mut(group) {
                members.remove(&conn);
                if members.is_empty() {
                    local_groups.remove(group);
                    transitions.now_empty.push(group.clone());
                }
            }
        }
        transitions
    }

    /// Runs `deliver` on a socket's outbox without cloning it; `None` when
    /// no local socket has that id.
    pub fn with_conn<R>(&self, conn: ConnId, deliver: impl FnOnce(&Arc<Outbox>) -> R) -> Option<R> {
        self.shard(conn).read().get(&conn).map(deliver)
    }

    /// Groups with at least one local socket.
    pub fn group_count(&self) -> usize {
        self.groups.lock().len()
    }

    /// Runs `deliver` once per entry of `conns` (repeats included) on that
    /// socket's outbox, and returns how many entries have no local socket.
    ///
    /// Entries are grouped by shard first, so each shard's read lock is taken
    /// once for all its entries: a broadcast listing 10,000 local channels
    /// takes at most 64 locks instead of 10,000. Each lock is held only while
    /// its share of `deliver` calls runs, which push without waiting. The
    /// order in which sockets are served is not `conns`' order.
    pub fn with_conns(&self, conns: &[ConnId], mut deliver: impl FnMut(&Arc<Outbox>)) -> usize {
        let mut missing = 0;
        if conns.len() < GROUPED_DELIVERY_MIN {
            for conn in conns {
                if self.with_conn(*conn, &mut deliver).is_none() {
                    missing += 1;
                }
            }
            return missing;
        }
        // A counting sort by shard: two passes, one allocation.
        let mut ends = [0usize; SHARDS];
        for conn in conns {
            ends[shard_index(*conn)] += 1;
        }
        let mut next = [0usize; SHARDS];
        let mut total = 0;
        for (shard, count) in ends.iter_mut().enumerate() {
            next[shard] = total;
            total += *count;
            *count = total;
        }
        let mut grouped = vec![0; conns.len()];
        for conn in conns {
            let slot = &mut next[shard_index(*conn)];
            if let Some(entry) = grouped.get_mut(*slot) {
                *entry = *conn;
            }
            *slot += 1;
        }
        let mut start = 0;
        for (shard, end) in self.sockets.iter().zip(ends) {
            let Some(ids) = grouped.get(start..end) else {
                continue;
            };
            start = end;
            if ids.is_empty() {
                continue;
            }
            let table = shard.read();
            for conn in ids {
                match table.get(conn) {
                    Some(outbox) => deliver(outbox),
                    None => missing += 1,
                }
            }
        }
        missing
    }

    /// Whether any local socket is in `group`.
    pub fn has_group(&self, group: &str) -> bool {
        self.groups.lock().contains_key(group)
    }

    pub fn socket_count(&self) -> usize {
        self.sockets.iter().map(|shard| shard.read().len()).sum()
    }

    /// Every live (group, channel) membership, for re-adding to Redis.
    pub fn memberships(&self) -> Vec<(Arc<str>, Vec<String>)> {
        self.groups
            .lock()
            .iter()
            .map(|(group, members)| {
                let channels = members
                    .iter()
                    .map(|conn| self.naming.channel(*conn))
                    .collect();
                (group.clone(), channels)
            })
            .collect()
    }

    /// Local members of a group (pub/sub routing, backend disconnects).
    pub fn group_members(&self, group: &str) -> Vec<ConnId> {
        self.groups
            .lock()
            .get(group)
            .map(|members| members.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Every outbox, for closing them all at shutdown.
    pub fn all_outboxes(&self) -> Vec<Arc<Outbox>> {
        self.sockets
            .iter()
            .flat_map(|shard| shard.read().values().cloned().collect::<Vec<_>>())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip_and_foreign_names_do_not_match() {
        let naming = ChannelNaming::with_process_id("gw-abc".into());
        let channel = naming.channel(255);
        assert_eq!(channel, "specific.gw-abc!ff");
        assert!(shared_proto::names::is_valid_channel_name(&channel));
        assert_eq!(naming.conn_of(&channel), Some(255));
        assert_eq!(naming.conn_of("specific.gw-abd!ff"), None);
        assert_eq!(naming.conn_of("specific.gw-abc!"), None);
        assert_eq!(naming.conn_of("specific.gw-abc!zz"), None);
        assert_eq!(naming.conn_of("specific.gw-abc!11111111111111111"), None);
        let random = ChannelNaming::random();
        assert!(shared_proto::names::is_valid_channel_name(
            &random.channel(u64::MAX)
        ));
    }

    #[test]
    fn with_conns_serves_every_entry_once_per_mention() {
        let registry = Registry::new(ChannelNaming::with_process_id("gw-1".into()));
        let outboxes: Vec<(ConnId, Arc<Outbox>)> = (0..200)
            .map(|_| {
                let outbox = Arc::new(Outbox::new(8));
                (registry.register(outbox.clone(), &[]).0, outbox)
            })
            .collect();
        for size in [1, GROUPED_DELIVERY_MIN - 1, GROUPED_DELIVERY_MIN, 200] {
            let mut conns: Vec<ConnId> = outboxes.iter().take(size).map(|(c, _)| *c).collect();
            // A repeated id is served twice; unknown ids are counted.
            conns.push(conns[0]);
            conns.extend([0, 10_000, 10_001]);
            let mut served = 0;
            let missing = registry.with_conns(&conns, |outbox| {
                served += 1;
                outbox.push(
                    bytestring::ByteString::from_static("x"),
                    &mut crate::outbox::Wakeups::new(),
                );
            });
            assert_eq!((served, missing), (size + 1, 3), "size {size}");
        }
        let (first, first_outbox) = &outboxes[0];
        assert_eq!(first_outbox.len(), 8, "conn {first} got two per call");
        assert_eq!(outboxes[199].1.len(), 1);
        assert_eq!(outboxes[100].1.len(), 1);
        assert_eq!(outboxes[20].1.len(), 3);
    }

    #[test]
    fn group_transitions_track_first_and_last_member() {
        let registry = Registry::new(ChannelNaming::with_process_id("gw-1".into()));
        let group: Arc<str> = Arc::from("user_1");
        let (a, t) = registry.register(Arc::new(Outbox::new(1)), std::slice::from_ref(&group));
        assert_eq!(t.now_active, vec![group.clone()]);
        let (b, t) = registry.register(Arc::new(Outbox::new(1)), std::slice::from_ref(&group));
        assert!(t.now_active.is_empty());
        assert_eq!(registry.group_members("user_1").len(), 2);
        assert!(registry
            .unregister(a, std::slice::from_ref(&group))
            .now_empty
            .is_empty());
        assert_eq!(
            registry
                .unregister(b, std::slice::from_ref(&group))
                .now_empty,
            vec![group]
        );
        assert_eq!(registry.socket_count(), 0);
        assert!(registry.memberships().is_empty());
    }
}
