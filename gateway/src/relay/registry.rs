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

use shared_proto::shard::shard_index;

use crate::relay::outbox::Outbox;

pub type ConnId = u64;

const SHARDS: usize = 64;

/// One lock's worth of the socket table.
type SocketShard = RwLock<HashMap<ConnId, Arc<Outbox>>>;

/// Channel names of this process: `specific.<process-id>.<lane>!<conn-id-hex>`.
///
/// channels_redis queues by the part up to `!`, so each lane is a queue key
/// of its own, and its sender's `capacity` (100 by default) holds per lane:
/// spreading sockets over several lanes gives a process that many times the
/// room for a burst without a setting in Django. A socket's lane follows
/// its first group (its user's), so every socket of one user shares one
/// key and a `group_send` to a user stays one payload in send order. Every
/// lane is chosen to live on the same Redis host, so one blocking pop
/// serves them all.
///
/// The process id starts with `gw-`, which a Python `uuid4().hex` never
/// contains, so operators can target the gateway's queue keys with a
/// `channel_capacity` pattern such as `specific.gw-*`.
#[derive(Debug, Clone)]
pub struct ChannelNaming {
    process_id: String,
    /// `specific.<process-id>.`: what every lane's name starts with.
    base: String,
    /// Each lane's label (what stands between `base` and `!`).
    labels: Vec<String>,
    /// Each lane's non-local part, `base` + label + `!`.
    non_locals: Vec<String>,
    /// The part naming the key the receiver merges the lanes into (no `!`:
    /// channels_redis never queues into it), on the lanes' host.
    merged: String,
    /// What the names of the spill slots start with (`<base>spill.`, then
    /// the slot's number from 1): keys the lanes are emptied into while the
    /// merged key still holds a backlog.
    spill_stem: String,
    /// The part naming the list of spill slots waiting, oldest last.
    spilled: String,
}

/// Spill slots a process has: while a backlog waits in the merged key, the
/// lanes are emptied into one of these whenever one fills up, so
/// channels_redis' per-key `capacity` holds this many times over again.
pub const SPILL_SLOTS: usize = 128;

/// Low bits of a connection id that hold its lane; the rest count.
pub(crate) const LANE_BITS: u32 = 8;
/// Lanes a connection id can name.
const MAX_LANES: usize = 1 << LANE_BITS;
const _: () = assert!(MAX_LANES >= crate::config::MAX_QUEUE_KEYS);

fn random_process_id() -> String {
    format!("gw-{:024x}", rand::random::<u128>() >> 32)
}

impl ChannelNaming {
    /// A fresh process id with `lanes` queue keys, all placed on one host
    /// of a ring of `hosts`.
    pub fn random(lanes: usize, hosts: usize) -> ChannelNaming {
        ChannelNaming::with_process_id(random_process_id(), lanes, hosts)
    }

    /// Like [`ChannelNaming::random`], with every queue key on the first
    /// host, where recovery keeps the replay keys: one clock reading of
    /// channels_redis then scores both copies of a message alike.
    pub fn random_on_first_host(lanes: usize, hosts: usize) -> ChannelNaming {
        ChannelNaming::placed(random_process_id(), lanes, hosts, Some(0))
    }

    pub fn with_process_id(process_id: String, lanes: usize, hosts: usize) -> ChannelNaming {
        ChannelNaming::placed(process_id, lanes, hosts, None)
    }

    /// Lanes on host `home`, or where the first lane's name lands.
    fn placed(
        process_id: String,
        lanes: usize,
        hosts: usize,
        home: Option<usize>,
    ) -> ChannelNaming {
        let lanes = lanes.clamp(1, MAX_LANES);
        let base = format!("specific.{process_id}.");
        let non_local = |label: &str| format!("{base}{label}!");
        // channels_redis places a queue key by its non-local part: keep the
        // labels whose key lands on the home host.
        let home = home.unwrap_or_else(|| shard_index(&non_local("0"), hosts.max(1)));
        let labels: Vec<String> = (0u32..)
            .map(|candidate| candidate.to_string())
            .filter(|label| shard_index(&non_local(label), hosts.max(1)) == home)
            .take(lanes)
            .collect();
        let non_locals = labels.iter().map(|label| non_local(label)).collect();
        // The process's own keys (no `!`: channels_redis never queues into
        // them), each named by the first candidate that lands on the home host.
        let first_on_home = |stem: &str| {
            (0u32..)
                .map(|candidate| format!("{base}{stem}{candidate}"))
                .find(|name| shard_index(name, hosts.max(1)) == home)
                .unwrap_or_else(|| format!("{base}{stem}"))
        };
        let merged = first_on_home("merged");
        let spilled = first_on_home("spilled");
        let spill_stem = format!("{base}spill.");
        ChannelNaming {
            process_id,
            base,
            labels,
            non_locals,
            merged,
            spill_stem,
            spilled,
        }
    }

    pub fn process_id(&self) -> &str {
        &self.process_id
    }

    /// `specific.<process>.<lane>!` for every lane: the parts that name this
    /// process's queue keys, all on one Redis host. The one place that says
    /// which queue keys the process owns, so its liveness record (and a
    /// reaper after a crash) names exactly them.
    pub fn non_local_parts(&self) -> &[String] {
        &self.non_locals
    }

    /// `specific.<process>.merged<n>`: names the key the receiver moves
    /// every lane's payloads into before popping them, on the lanes' host.
    pub fn merged_part(&self) -> &str {
        &self.merged
    }

    /// `specific.<process>.spill.`: the spill slots' names are this and
    /// the slot's number, 1 to [`SPILL_SLOTS`]. They live where the receiver's
    /// script creates them, on the lanes' host, whatever their crc32.
    pub fn spill_stem(&self) -> &str {
        &self.spill_stem
    }

    /// `specific.<process>.spilled<n>`: the list of spill slots that hold
    /// payloads, in the order they were filled.
    pub fn spilled_part(&self) -> &str {
        &self.spilled
    }

    /// Every key of the process but the lanes: the merged key, the spill
    /// slots and their list, all on the lanes' host; its liveness record
    /// names them too.
    pub fn own_parts(&self) -> impl Iterator<Item = String> + '_ {
        [self.merged.clone(), self.spilled.clone()]
            .into_iter()
            .chain((1..=SPILL_SLOTS).map(|slot| format!("{}{slot}", self.spill_stem)))
    }

    /// The lane for a socket whose first group is `group`.
    fn lane_for(&self, group: Option<&str>) -> u64 {
        // channels_redis' own crc32 placement spreads group names evenly.
        group.map_or(0, |group| shard_index(group, self.labels.len()) as u64)
    }

    fn lane_of(conn: ConnId) -> usize {
        (conn & (MAX_LANES as u64 - 1)) as usize
    }

    pub fn channel(&self, conn: ConnId) -> String {
        let lane = self
            .non_locals
            .get(Self::lane_of(conn))
            .unwrap_or(&self.non_locals[0]);
        format!("{lane}{conn:x}")
    }

    /// The connection a channel name addresses, if it belongs to this process.
    ///
    /// Called once per listed channel on the routing hot path, so it is two
    /// prefix compares and a hex parse, allocating nothing.
    pub fn conn_of(&self, channel: &str) -> Option<ConnId> {
        let rest = channel.strip_prefix(self.base.as_str())?;
        let (label, local) = rest.split_once('!')?;
        // Exactly the form `channel` writes (`{:x}`: lowercase, no sign, no
        // leading zero), so one connection has one name: `+ff`, `FF` and
        // `00ff` name none.
        let canonical = !local.is_empty()
            && local.len() <= 16
            && local
                .bytes()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
            && (local.len() == 1 || !local.starts_with('0'));
        if !canonical {
            return None;
        }
        let conn = ConnId::from_str_radix(local, 16).ok()?;
        let expected = self.labels.get(Self::lane_of(conn))?;
        (expected == label).then_some(conn)
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

fn socket_shard(conn: ConnId) -> usize {
    // Above the lane bits, connection ids are sequential, so their low
    // bits spread evenly.
    ((conn >> LANE_BITS) as usize) % SHARDS
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
        &self.sockets[socket_shard(conn)]
    }

    /// Adds a socket and its groups; returns the groups that had no local
    /// member before (a pub/sub layer subscribes to those).
    /// The socket's lane (queue key) follows its first group.
    pub fn register(&self, outbox: Arc<Outbox>, groups: &[Arc<str>]) -> (ConnId, GroupTransitions) {
        let count = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let lane = self.naming.lane_for(groups.first().map(AsRef::as_ref));
        let conn = (count << LANE_BITS) | lane;
        self.shard(conn).write().insert(conn, outbox);
        (conn, self.join_groups(conn, groups))
    }

    /// Removes a socket; returns the groups it leaves without a local member.
    pub fn unregister(&self, conn: ConnId, groups: &[Arc<str>]) -> GroupTransitions {
        self.shard(conn).write().remove(&conn);
        self.leave_groups(conn, groups)
    }

    /// Makes a registered socket a local member of more groups (a token
    /// refresh that grants them); returns the groups that had no local
    /// member before. Its lane stays the one its first group chose.
    pub fn join_groups(&self, conn: ConnId, groups: &[Arc<str>]) -> GroupTransitions {
        let mut transitions = GroupTransitions::default();
        let mut local_groups = self.groups.lock();
        for group in groups {
            let members = local_groups.entry(group.clone()).or_default();
            if members.is_empty() {
                transitions.now_active.push(group.clone());
            }
            members.insert(conn);
        }
        transitions
    }

    /// Takes a socket out of groups (it ends, or a refreshed token no
    /// longer grants them): from now on nothing routed by group reaches it
    /// through them. Returns the groups left without a local member.
    pub fn leave_groups(&self, conn: ConnId, groups: &[Arc<str>]) -> GroupTransitions {
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
            ends[socket_shard(*conn)] += 1;
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
            let slot = &mut next[socket_shard(*conn)];
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
    fn one_connection_has_one_channel_name() {
        let naming = ChannelNaming::with_process_id("gw-abc".into(), 1, 1);
        assert_eq!(naming.conn_of("specific.gw-abc.0!ff00"), Some(0xff00));
        for other in ["+ff00", "FF00", "Ff00", "0ff00", "00ff00", "-ff00", " ff00"] {
            assert_eq!(
                naming.conn_of(&format!("specific.gw-abc.0!{other}")),
                None,
                "{other}"
            );
        }
        assert_eq!(naming.conn_of("specific.gw-abc.0!0"), Some(0));
    }

    #[test]
    fn channel_names_round_trip_and_foreign_names_do_not_match() {
        let naming = ChannelNaming::with_process_id("gw-abc".into(), 1, 1);
        let channel = naming.channel(0xff00);
        assert_eq!(channel, "specific.gw-abc.0!ff00");
        assert!(shared_proto::names::is_valid_channel_name(&channel));
        assert_eq!(naming.conn_of(&channel), Some(0xff00));
        assert_eq!(naming.conn_of("specific.gw-abd.0!ff00"), None);
        assert_eq!(naming.conn_of("specific.gw-abc!ff00"), None);
        assert_eq!(naming.conn_of("specific.gw-abc.0!"), None);
        assert_eq!(naming.conn_of("specific.gw-abc.0!zz"), None);
        assert_eq!(naming.conn_of("specific.gw-abc.0!11111111111111111"), None);
        // The lane in the id and the lane in the name must agree.
        assert_eq!(naming.conn_of("specific.gw-abc.0!ff01"), None);
        assert_eq!(naming.conn_of("specific.gw-abc.1!ff00"), None);
        let random = ChannelNaming::random(crate::config::MAX_QUEUE_KEYS, 3);
        assert!(shared_proto::names::is_valid_channel_name(
            &random.channel(u64::MAX)
        ));
    }

    #[test]
    fn a_users_sockets_share_a_lane_and_every_lane_lives_on_one_host() {
        for hosts in [1, 2, 3, 7] {
            let naming = ChannelNaming::with_process_id("gw-abc".into(), 16, hosts);
            let parts = naming.non_local_parts();
            assert_eq!(parts.len(), 16);
            let home = shard_index(&parts[0], hosts);
            for part in parts {
                assert_eq!(shard_index(part, hosts), home, "{part} with {hosts} hosts");
                assert!(shared_proto::names::is_valid_channel_name(part));
            }
            for key in [naming.merged_part(), naming.spilled_part()] {
                assert_eq!(shard_index(key, hosts), home, "{key} with {hosts} hosts");
            }
            let own: Vec<String> = naming.own_parts().collect();
            assert_eq!(own.len(), 2 + SPILL_SLOTS);
            assert_eq!(own.iter().collect::<HashSet<_>>().len(), own.len());
            for key in own {
                assert!(!key.contains('!'), "channels_redis never queues into {key}");
                assert!(!parts.contains(&key));
            }
        }
        let registry = Registry::new(ChannelNaming::with_process_id("gw-abc".into(), 16, 1));
        let mut lanes_used = HashSet::new();
        for user in 0..64 {
            let group: Arc<str> = Arc::from(format!("user_{user}").as_str());
            let extra: Arc<str> = Arc::from("broadcast");
            let channels: Vec<String> = (0..3)
                .map(|_| {
                    let groups = [group.clone(), extra.clone()];
                    let (conn, _) = registry.register(Arc::new(Outbox::new(1)), &groups);
                    let channel = registry.naming().channel(conn);
                    assert_eq!(registry.naming().conn_of(&channel), Some(conn));
                    channel
                })
                .collect();
            let lane = shared_proto::names::non_local_part(&channels[0]).to_string();
            for channel in &channels {
                assert_eq!(shared_proto::names::non_local_part(channel), lane);
            }
            lanes_used.insert(lane);
        }
        assert!(
            lanes_used.len() > 8,
            "users spread over lanes: {lanes_used:?}"
        );
    }

    #[test]
    fn with_conns_serves_every_entry_once_per_mention() {
        let registry = Registry::new(ChannelNaming::with_process_id("gw-1".into(), 1, 1));
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
                    &mut crate::relay::outbox::Wakeups::new(),
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
        let registry = Registry::new(ChannelNaming::with_process_id("gw-1".into(), 1, 1));
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

    #[test]
    fn a_socket_joins_and_leaves_groups_while_registered_and_keeps_its_lane() {
        let registry = Registry::new(ChannelNaming::with_process_id("gw-1".into(), 16, 1));
        let user: Arc<str> = Arc::from("user_1");
        let (a, added): (Arc<str>, Arc<str>) = (Arc::from("list_a"), Arc::from("list_b"));
        let (conn, _) = registry.register(Arc::new(Outbox::new(1)), &[user.clone(), a.clone()]);
        let (other, _) = registry.register(Arc::new(Outbox::new(1)), std::slice::from_ref(&a));
        let channel = registry.naming().channel(conn);

        let joined = registry.join_groups(conn, std::slice::from_ref(&added));
        assert_eq!(joined.now_active, vec![added.clone()]);
        assert!(joined.now_empty.is_empty());
        assert_eq!(registry.group_members("list_b"), vec![conn]);
        let left = registry.leave_groups(conn, std::slice::from_ref(&a));
        assert!(
            left.now_empty.is_empty(),
            "another socket is still in list_a"
        );
        assert_eq!(registry.group_members("list_a"), vec![other]);
        assert_eq!(registry.group_members("user_1"), vec![conn]);
        assert_eq!(
            registry.naming().channel(conn),
            channel,
            "the lane (and channel name) never changes"
        );
        assert!(registry.with_conn(conn, |_| ()).is_some());

        // Its exit leaves exactly the groups it holds now.
        let ended = registry.unregister(conn, &[user.clone(), added.clone()]);
        assert_eq!(ended.now_empty, vec![user, added]);
        assert_eq!(registry.group_members("list_a"), vec![other]);
        assert_eq!(registry.group_count(), 1);
    }
}
