//! The receiver's pop against a real Redis: behind a backlog the lanes are
//! emptied into spill slots before any fills up (so channels_redis refuses
//! nothing while an old backlog is popped), every payload comes out exactly
//! once and in the order it arrived, a full ring of slots stops spilling
//! without losing anything, and nothing of the process is left in Redis
//! once everything is popped.

use std::time::{Duration, Instant};

use gateway::config::HostSetting;
use gateway::layer::redis::{ReceiveKeys, RedisHost};
use gateway::relay::registry::{ChannelNaming, SPILL_SLOTS};
use tests::RedisServer;

const PREFIX: &str = "asgi";
const EXPIRY: u64 = 60;

struct Queues {
    redis: RedisServer,
    host: RedisHost,
    keys: ReceiveKeys,
    /// Payloads added so far; each one's score and name is its number.
    added: u64,
}

impl Queues {
    async fn start(lanes: usize, spill_at: usize) -> Queues {
        let redis = RedisServer::start().expect("redis");
        let host = RedisHost::new(&HostSetting::Url(redis.url())).expect("host");
        host.start();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !host.is_connected() {
            assert!(Instant::now() < deadline, "never connected to Redis");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let naming = ChannelNaming::with_process_id("gw-spilltest".into(), lanes, 1);
        let key = |part: &str| format!("{PREFIX}{part}");
        let keys = ReceiveKeys {
            lanes: naming
                .non_local_parts()
                .iter()
                .map(|part| key(part))
                .collect(),
            merged: key(naming.merged_part()),
            spilled: key(naming.spilled_part()),
            spill_stem: key(naming.spill_stem()),
            spill_slots: SPILL_SLOTS,
            spill_at,
        };
        let queues = Queues {
            redis,
            host,
            keys,
            added: 0,
        };
        // The first pop on a fresh server finds the script missing, loads
        // it and takes nothing.
        let (nothing, _) = queues.pop(1).await;
        assert!(nothing.is_empty());
        queues
    }

    /// Adds `count` payloads, one lane after the other, as channels_redis
    /// would for as many users.
    async fn add(&mut self, count: u64) {
        for _ in 0..count {
            let lane = &self.keys.lanes[(self.added as usize) % self.keys.lanes.len()];
            let number = self.added.to_string();
            self.redis
                .cmd(&["ZADD", lane, &number, &number])
                .await
                .expect("zadd");
            self.added += 1;
        }
    }

    /// One non-blocking pop of at most `max`: the payloads' numbers and
    /// whether more wait.
    async fn pop(&self, max: usize) -> (Vec<u64>, bool) {
        let (payloads, more) = self
            .host
            .pop_queues(&self.keys, max, EXPIRY, None)
            .await
            .expect("pop");
        let numbers = payloads
            .iter()
            .map(|queued| {
                let text = std::str::from_utf8(&queued.payload).expect("utf-8");
                let number: u64 = text.parse().expect("a number");
                assert_eq!(queued.sent_at, number as f64, "the score is kept");
                number
            })
            .collect();
        (numbers, more)
    }

    async fn most_in_one_lane(&self) -> i64 {
        let mut most = 0;
        for lane in &self.keys.lanes {
            let held = self.redis.cmd_value(&["ZCARD", lane]).await.expect("zcard");
            most = most.max(held.as_int().unwrap_or(0));
        }
        most
    }

    async fn slots_waiting(&self) -> i64 {
        self.redis
            .cmd_value(&["LLEN", &self.keys.spilled])
            .await
            .expect("llen")
            .as_int()
            .unwrap_or(0)
    }

    /// Pops until nothing waits; returns every number popped.
    async fn drain(&self, max: usize, into: &mut Vec<u64>) {
        for _ in 0..10_000 {
            let (numbers, more) = self.pop(max).await;
            into.extend(numbers);
            if !more && self.most_in_one_lane().await == 0 {
                return;
            }
        }
        panic!("the queues never drained");
    }

    async fn assert_nothing_left(&self) {
        let mut keys: Vec<String> = self.keys.lanes.clone();
        keys.extend((1..=SPILL_SLOTS).map(|slot| format!("{}{slot}", self.keys.spill_stem)));
        keys.push(self.keys.merged.clone());
        keys.push(self.keys.spilled.clone());
        for key in &keys {
            let exists = self
                .redis
                .cmd_value(&["EXISTS", key])
                .await
                .expect("exists");
            assert_eq!(exists.as_int(), Some(0), "{key} is left in Redis");
        }
    }
}

fn assert_in_order_exactly_once(popped: &[u64], added: u64) {
    let expected: Vec<u64> = (0..added).collect();
    assert_eq!(popped.len() as u64, added, "every payload, once");
    assert_eq!(popped, expected.as_slice(), "in the order they came");
}

#[tokio::test]
async fn lanes_spill_behind_a_backlog_and_everything_comes_out_once_in_order() {
    let mut queues = Queues::start(4, 10).await;
    queues.add(100).await;
    let mut popped = Vec::new();
    // The first pop moves all 100 into the merged key and takes 20.
    let (numbers, more) = queues.pop(20).await;
    assert_eq!(numbers, (0..20).collect::<Vec<_>>());
    assert!(more);
    popped.extend(numbers);
    // 15 new payloads per lane behind a backlog of 80: spilled at once.
    queues.add(60).await;
    let (numbers, more) = queues.pop(20).await;
    popped.extend(numbers);
    assert!(more);
    assert_eq!(queues.slots_waiting().await, 1, "the lanes were spilled");
    assert_eq!(queues.most_in_one_lane().await, 0, "and emptied");
    // 2 per lane stay in the lanes: below the spill threshold.
    queues.add(8).await;
    let (numbers, _) = queues.pop(20).await;
    popped.extend(numbers);
    assert_eq!(queues.slots_waiting().await, 1);
    assert_eq!(queues.most_in_one_lane().await, 2);
    queues.drain(20, &mut popped).await;
    assert_in_order_exactly_once(&popped, queues.added);
    assert_eq!(queues.slots_waiting().await, 0);
    queues.assert_nothing_left().await;
}

#[tokio::test]
async fn a_full_ring_of_slots_stops_spilling_and_loses_nothing() {
    // A spill at every pop, and more added than popped: the ring of slots
    // fills, wraps around as the oldest are taken, and fills again.
    let mut queues = Queues::start(4, 1).await;
    let mut popped = Vec::new();
    let mut most_waiting = 0;
    for _ in 0..(SPILL_SLOTS * 3) {
        queues.add(9).await;
        let (numbers, _) = queues.pop(4).await;
        popped.extend(numbers);
        let waiting = queues.slots_waiting().await;
        assert!(waiting <= SPILL_SLOTS as i64, "{waiting} slots waiting");
        most_waiting = most_waiting.max(waiting);
    }
    assert_eq!(
        most_waiting, SPILL_SLOTS as i64,
        "the ring of slots filled up"
    );
    assert!(
        queues.most_in_one_lane().await > 1,
        "with a full ring, the lanes hold what comes next"
    );
    queues.drain(7, &mut popped).await;
    assert_in_order_exactly_once(&popped, queues.added);
    queues.assert_nothing_left().await;
}

#[tokio::test]
async fn a_slot_that_expired_is_skipped() {
    let mut queues = Queues::start(2, 2).await;
    queues.add(10).await;
    let mut popped = Vec::new();
    let (numbers, _) = queues.pop(2).await;
    popped.extend(numbers);
    queues.add(10).await;
    let (numbers, _) = queues.pop(2).await;
    popped.extend(numbers);
    assert_eq!(queues.slots_waiting().await, 1);
    // The slot expires (as a queue key does `expiry` after its last write)
    // while the list still names it: the payloads in it are stale, as
    // channels_redis would have found them, and the pops go on.
    let slot = format!("{}1", queues.keys.spill_stem);
    queues.redis.cmd(&["DEL", &slot]).await.expect("del");
    queues.add(4).await;
    queues.drain(3, &mut popped).await;
    let expected: Vec<u64> = (0..10).chain(20..24).collect();
    assert_eq!(popped, expected);
    queues.assert_nothing_left().await;
}
