//! Crashed gateway processes (core layer): a SIGKILLed process's
//! memberships, queue key and record are reaped by the others (or by its
//! own successor) while Django keeps publishing through the real
//! channels_redis; a paused process is left alone; a failed leave is
//! retried; and the presence snippet from docs/operations.md, run by
//! Python against the channel layer, follows crashes and reconnects.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tests::procs::repo_root;
use tests::{GatewayConfig, GatewayProcess, LayerDriver, RedisServer, Signal, WsClient};

/// Short enough for tests that run in seconds, long enough that a busy
/// test machine does not delay a heartbeat past it.
const TEST_LIVENESS: &str = r#"liveness_timeout = "5s""#;
const TEST_LIVENESS_TIMEOUT: Duration = Duration::from_secs(5);
/// What the gateway promises with its defaults: reaped within 30 s.
const REAP_DEADLINE: Duration = Duration::from_secs(30);
/// The group of the user every gateway holds a socket of.
const SHARED_USER: u32 = 100;

struct Cluster {
    redis: Vec<RedisServer>,
    gateways: Vec<Option<GatewayProcess>>,
    configs: Vec<GatewayConfig>,
    publisher: LayerDriver,
}

async fn cluster(host_count: usize, gateway_count: usize, liveness: Option<&str>) -> Cluster {
    let redis: Vec<RedisServer> = (0..host_count)
        .map(|_| RedisServer::start().expect("redis starts"))
        .collect();
    let urls: Vec<String> = redis.iter().map(RedisServer::url).collect();
    let mut gateways = Vec::new();
    let mut configs = Vec::new();
    for _ in 0..gateway_count {
        let mut config = GatewayConfig::new(&urls[0])
            .expect("config")
            .hosts(urls.clone());
        if let Some(line) = liveness {
            config = config.line("layer", line);
        }
        gateways.push(Some(start_gateway(&mut config).await));
        configs.push(config);
    }
    // Django with the same hosts in the same order.
    let hosts: Vec<&RedisServer> = redis.iter().collect();
    let publisher = layer_publisher("core", &hosts, json!({})).await;
    Cluster {
        redis,
        gateways,
        configs,
        publisher,
    }
}

impl Cluster {
    fn gateway(&self, index: usize) -> &GatewayProcess {
        self.gateways[index].as_ref().expect("gateway running")
    }

    async fn kill(&mut self, index: usize) -> Instant {
        let mut gateway = self.gateways[index].take().expect("gateway running");
        gateway.signal(Signal::Kill).expect("SIGKILL");
        let killed = Instant::now();
        gateway
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("killed gateway exits");
        killed
    }

    /// Every gateway channel in every group on every host, with its group.
    async fn memberships(&self) -> BTreeSet<(String, String)> {
        let mut found = BTreeSet::new();
        for redis in &self.redis {
            let keys = redis.cmd(&["KEYS", "asgi:group:*"]).await.expect("keys");
            for key in keys {
                for channel in redis
                    .cmd(&["ZRANGE", &key, "0", "-1"])
                    .await
                    .expect("zrange")
                {
                    found.insert((key.clone(), channel));
                }
            }
        }
        found
    }

    async fn key_exists_anywhere(&self, key: &str) -> bool {
        for redis in &self.redis {
            let exists = redis.cmd(&["EXISTS", key]).await.expect("exists");
            if exists.first().map(String::as_str) != Some("0") {
                return true;
            }
        }
        false
    }

    async fn listed_anywhere(&self, process: &str) -> bool {
        for redis in &self.redis {
            let listed = redis
                .cmd(&["SISMEMBER", "asgi:gw:processes", process])
                .await
                .expect("sismember");
            if listed.first().map(String::as_str) == Some("1") {
                return true;
            }
        }
        false
    }

    /// Payloads waiting in every queue key of `process` (its lanes, all on
    /// the host channels_redis picks for the first), and keys of its own
    /// left there (its merged key, spill slots and their list).
    async fn queue_length(&self, process: &str) -> i64 {
        let naming = gateway::relay::registry::ChannelNaming::with_process_id(
            process.to_string(),
            gateway::config::LayerConfig::default().queue_keys,
            self.redis.len(),
        );
        let mut total = 0;
        for non_local in naming.non_local_parts() {
            let host = shared_proto::shard::shard_index(non_local, self.redis.len());
            total += self.redis[host]
                .cmd_value(&["ZCARD", &format!("asgi{non_local}")])
                .await
                .expect("zcard")
                .as_int()
                .unwrap_or(0);
        }
        let home = naming.non_local_parts().first().map_or(0, |lane| {
            shared_proto::shard::shard_index(lane, self.redis.len())
        });
        for own in naming.own_parts() {
            total += self.redis[home]
                .cmd_value(&["EXISTS", &format!("asgi{own}")])
                .await
                .expect("exists")
                .as_int()
                .unwrap_or(0);
        }
        total
    }

    async fn metric_sum(&self, line_prefix: &str) -> f64 {
        let mut sum = 0.0;
        for gateway in self.gateways.iter().flatten() {
            sum += metric(gateway, line_prefix).await;
        }
        sum
    }
}

/// The process id a gateway logged at start (`gateway starting`).
fn process_id(gateway: &GatewayProcess) -> String {
    gateway
        .log_text()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|entry| Some(entry["process"].as_str()?.to_string()))
        .expect("the gateway logs its process id")
}

/// group_sends `{"message": "bg"}` to `group` every 100 ms until stopped,
/// from a second real channels_redis publisher.
struct BackgroundPublisher {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl BackgroundPublisher {
    async fn start(hosts: &[RedisServer], group: &str) -> BackgroundPublisher {
        let hosts: Vec<&RedisServer> = hosts.iter().collect();
        let mut publisher = layer_publisher("core", &hosts, json!({})).await;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let group = group.to_string();
        let task = tokio::spawn(async move {
            let mut sent = 0;
            while !stopped.load(Ordering::Relaxed) {
                publisher
                    .group_send(&group, notification(r#""bg""#))
                    .await
                    .expect("background group_send");
                sent += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sent
        });
        BackgroundPublisher { stop, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("background publisher")
    }
}

/// Reads frames until `expected` arrives (skipping the background ones).
async fn expect_frame_eventually(socket: &mut WsClient, expected: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = socket.recv_text(left).await.expect("frame");
        if frame == expected {
            return;
        }
        assert_eq!(
            frame, r#"{"message": "bg"}"#,
            "only background frames before"
        );
    }
}

async fn poll_until<F, Fut>(deadline: Instant, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<String>>,
{
    loop {
        let Some(missing) = check().await else {
            return;
        };
        assert!(Instant::now() < deadline, "{what}: still {missing}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// SIGKILLs the last of `gateway_count` gateways on `host_count` Redis
/// hosts while Django publishes, then checks the reap and the survivors.
async fn a_killed_process_is_reaped(host_count: usize, gateway_count: usize) {
    let mut cluster = cluster(host_count, gateway_count, Some(TEST_LIVENESS)).await;
    let victim = gateway_count - 1;
    let victim_process = process_id(cluster.gateway(victim));

    // One socket of the shared user on every gateway, and three users per
    // gateway of their own.
    let mut shared = Vec::new();
    for index in 0..gateway_count {
        shared.push(connect(cluster.gateway(index), SHARED_USER).await);
    }
    let mut own: Vec<(u32, usize, WsClient)> = Vec::new();
    for user in 1..=(3 * gateway_count as u32) {
        let index = user as usize % gateway_count;
        own.push((user, index, connect(cluster.gateway(index), user).await));
    }
    cluster
        .publisher
        .group_send(&format!("user_{SHARED_USER}"), notification(r#""all""#))
        .await
        .expect("group_send");
    for socket in &mut shared {
        expect_frame(socket, r#"{"message": "all"}"#).await;
    }

    let before = cluster.memberships().await;
    let victims: BTreeSet<_> = before
        .iter()
        .filter(|(_, channel)| channel.contains(&victim_process))
        .cloned()
        .collect();
    let survivors: BTreeSet<_> = before.difference(&victims).cloned().collect();
    assert!(
        victims.len() >= 4,
        "the victim holds memberships: {victims:?}"
    );
    assert!(cluster.listed_anywhere(&victim_process).await);

    let background =
        BackgroundPublisher::start(&cluster.redis, &format!("user_{SHARED_USER}")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killed = cluster.kill(victim).await;
    // Django keeps queueing for the dead process until it is reaped (its
    // liveness key lives at least two thirds of the timeout after the kill).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let queued_for_the_dead = cluster.queue_length(&victim_process).await;
    assert!(
        queued_for_the_dead >= 2,
        "payloads pile up for the dead process: {queued_for_the_dead}"
    );

    let record = format!("asgi:gw:joined:{victim_process}");
    poll_until(
        killed + REAP_DEADLINE,
        "the dead process is reaped",
        || async {
            let now = cluster.memberships().await;
            let left: Vec<_> = now.intersection(&victims).collect();
            if !left.is_empty() {
                return Some(format!("members {left:?}"));
            }
            // A group_send that read the group just before the reap may
            // queue one more payload; without the reap they pile up.
            let queued = cluster.queue_length(&victim_process).await;
            if queued > 1 {
                return Some(format!("{queued} payloads in its queue key"));
            }
            if cluster.key_exists_anywhere(&record).await {
                return Some("its record".into());
            }
            if cluster.listed_anywhere(&victim_process).await {
                return Some("listed as a process".into());
            }
            None
        },
    )
    .await;
    let sent = background.stop().await;
    assert!(sent > 10, "Django published throughout: {sent}");

    // Nothing of the survivors was touched, and they still receive.
    let after = cluster.memberships().await;
    let lost: Vec<_> = survivors.difference(&after).collect();
    assert!(lost.is_empty(), "survivors' memberships removed: {lost:?}");
    cluster
        .publisher
        .group_send(&format!("user_{SHARED_USER}"), notification(r#""after""#))
        .await
        .expect("group_send");
    for socket in shared.iter_mut().take(victim) {
        expect_frame_eventually(socket, r#"{"message": "after"}"#).await;
    }
    for (user, index, socket) in own.iter_mut().filter(|(_, index, _)| *index != victim) {
        cluster
            .publisher
            .group_send(
                &format!("user_{user}"),
                notification(&format!("\"to {index}\"")),
            )
            .await
            .expect("group_send");
        expect_frame(socket, &format!(r#"{{"message": "to {index}"}}"#)).await;
    }

    // The dead process's users reconnect to a survivor and receive again.
    let orphans: Vec<u32> = own
        .iter()
        .filter(|(_, index, _)| *index == victim)
        .map(|(user, _, _)| *user)
        .collect();
    for user in orphans {
        let mut socket = connect(cluster.gateway(0), user).await;
        cluster
            .publisher
            .group_send(&format!("user_{user}"), notification(r#""welcome back""#))
            .await
            .expect("group_send");
        expect_frame(&mut socket, r#"{"message": "welcome back"}"#).await;
    }

    assert_eq!(
        cluster.metric_sum("gateway_processes_reaped_total ").await,
        host_count as f64,
        "one reap per host"
    );
    assert_eq!(
        cluster
            .metric_sum("gateway_memberships_reaped_total ")
            .await,
        victims.len() as f64,
        "every membership of the dead process, each once"
    );
    // The gauge follows at the next reaper pass.
    let deadline = Instant::now() + WAIT;
    while metric(cluster.gateway(0), "gateway_processes_seen ").await != (gateway_count - 1) as f64
    {
        assert!(Instant::now() < deadline, "processes seen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn one_of_two_processes_killed_is_reaped_and_the_other_keeps_receiving() {
    a_killed_process_is_reaped(1, 2).await;
}

#[tokio::test]
async fn one_of_three_processes_killed_is_reaped_and_the_others_keep_receiving() {
    a_killed_process_is_reaped(1, 3).await;
}

#[tokio::test]
async fn a_killed_process_is_reaped_on_three_sharded_hosts() {
    a_killed_process_is_reaped(3, 3).await;
}

#[tokio::test]
async fn a_process_paused_for_5_seconds_is_not_reaped_with_the_default_timeout() {
    let mut cluster = cluster(1, 2, None).await;
    let mut paused_socket = connect(cluster.gateway(0), 1).await;
    let mut other_socket = connect(cluster.gateway(1), 2).await;
    let before = cluster.memberships().await;

    let paused = cluster.gateways[0].as_mut().expect("gateway");
    paused.signal(Signal::Stop).expect("SIGSTOP");
    tokio::time::sleep(Duration::from_secs(5)).await;
    paused.signal(Signal::Cont).expect("SIGCONT");
    // Let the other process's reaper look again after the pause.
    tokio::time::sleep(Duration::from_secs(6)).await;

    assert_eq!(cluster.memberships().await, before, "nothing was removed");
    assert_eq!(
        metric(cluster.gateway(1), "gateway_processes_reaped_total ").await,
        0.0
    );
    assert_eq!(
        metric(cluster.gateway(0), "gateway_liveness_lost_total ").await,
        0.0
    );
    assert_eq!(
        metric(cluster.gateway(1), "gateway_processes_seen ").await,
        2.0
    );
    for (user, socket) in [(1, &mut paused_socket), (2, &mut other_socket)] {
        cluster
            .publisher
            .group_send(&format!("user_{user}"), notification(r#""still here""#))
            .await
            .expect("group_send");
        expect_frame(socket, r#"{"message": "still here"}"#).await;
    }
}

#[tokio::test]
async fn a_process_stalled_past_its_timeout_is_reaped_and_re_adds_its_memberships() {
    let mut cluster = cluster(1, 2, Some(TEST_LIVENESS)).await;
    let stalled_process = process_id(cluster.gateway(0));
    let mut sockets = Vec::new();
    for user in 1..=3 {
        sockets.push(connect(cluster.gateway(0), user).await);
    }
    let before = cluster.memberships().await;
    let ours = |memberships: &BTreeSet<(String, String)>| -> BTreeSet<(String, String)> {
        memberships
            .iter()
            .filter(|(_, channel)| channel.contains(&stalled_process))
            .cloned()
            .collect()
    };
    let stalled_memberships = ours(&before);
    assert_eq!(stalled_memberships.len(), 4, "three users and the canary");

    let stalled = cluster.gateways[0].as_mut().expect("gateway");
    stalled.signal(Signal::Stop).expect("SIGSTOP");
    let deadline = Instant::now() + REAP_DEADLINE;
    while !ours(&cluster.memberships().await).is_empty() {
        assert!(Instant::now() < deadline, "the stalled process is reaped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stalled = cluster.gateways[0].as_mut().expect("gateway");
    stalled.signal(Signal::Cont).expect("SIGCONT");

    // Its next heartbeat finds its liveness key gone and re-adds everything.
    let deadline = Instant::now() + Duration::from_secs(10);
    while ours(&cluster.memberships().await) != stalled_memberships {
        assert!(Instant::now() < deadline, "memberships re-added");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(metric(cluster.gateway(0), "gateway_liveness_lost_total ").await >= 1.0);
    assert!(cluster.listed_anywhere(&stalled_process).await);
    for (user, socket) in (1..=3).zip(&mut sockets) {
        cluster
            .publisher
            .group_send(&format!("user_{user}"), notification(r#""back""#))
            .await
            .expect("group_send");
        expect_frame(socket, r#"{"message": "back"}"#).await;
    }
    // And it stays: the other process's reaper leaves it alone now.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(ours(&cluster.memberships().await), stalled_memberships);
}

#[tokio::test]
async fn a_process_restarted_alone_reaps_its_dead_predecessor() {
    let mut cluster = cluster(1, 1, Some(TEST_LIVENESS)).await;
    let predecessor = process_id(cluster.gateway(0));
    let mut sockets = Vec::new();
    for user in 1..=3 {
        sockets.push(connect(cluster.gateway(0), user).await);
    }
    cluster
        .publisher
        .group_send("user_1", notification("1"))
        .await
        .expect("group_send");
    expect_frame(&mut sockets[0], r#"{"message": 1}"#).await;
    let killed = cluster.kill(0).await;
    drop(sockets);
    // Django publishes into the dead process's queue key meanwhile.
    for user in 1..=3 {
        cluster
            .publisher
            .group_send(&format!("user_{user}"), notification(r#""lost""#))
            .await
            .expect("group_send");
    }
    assert!(cluster.queue_length(&predecessor).await >= 3);

    let mut config = cluster.configs[0].clone();
    config.repick_ports().expect("ports");
    cluster.gateways[0] = Some(start_gateway(&mut config).await);
    assert_ne!(
        process_id(cluster.gateway(0)),
        predecessor,
        "a new process id"
    );
    poll_until(
        killed + REAP_DEADLINE,
        "the predecessor is reaped",
        || async {
            let left: Vec<_> = cluster
                .memberships()
                .await
                .into_iter()
                .filter(|(_, channel)| channel.contains(&predecessor))
                .collect();
            if !left.is_empty() {
                return Some(format!("members {left:?}"));
            }
            if cluster.queue_length(&predecessor).await > 0 {
                return Some("its queue key".into());
            }
            if cluster.listed_anywhere(&predecessor).await {
                return Some("listed as a process".into());
            }
            None
        },
    )
    .await;
    assert_eq!(
        metric(cluster.gateway(0), "gateway_processes_reaped_total ").await,
        1.0
    );
    let mut socket = connect(cluster.gateway(0), 2).await;
    cluster
        .publisher
        .group_send("user_2", notification(r#""new process""#))
        .await
        .expect("group_send");
    expect_frame(&mut socket, r#"{"message": "new process"}"#).await;
}

/// The Python block under "### Presence from Django" in docs/operations.md.
fn documented_presence_snippet() -> String {
    let operations =
        std::fs::read_to_string(repo_root().join("docs/operations.md")).expect("operations.md");
    let section = operations
        .split("### Presence from Django")
        .nth(1)
        .expect("operations.md has the presence section");
    let code = section
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the presence section has a python block");
    code.to_string()
}

async fn presence(publisher: &mut LayerDriver, code: &str, user: u32) -> i64 {
    publisher
        .run_snippet(code, "open_sockets", json!([user]))
        .await
        .expect("the documented snippet runs")
        .as_i64()
        .expect("a count")
}

#[tokio::test]
async fn presence_from_python_counts_sockets_and_follows_a_crash_and_reconnects() {
    let code = documented_presence_snippet();
    let mut cluster = cluster(3, 2, Some(TEST_LIVENESS)).await;
    let victim = 1;
    // User 42: two sockets on the victim, one on the survivor; user 43:
    // one on the victim only; user 44: none. A Django consumer's channel in
    // user 42's group is not a gateway socket.
    let mut sockets = vec![connect(cluster.gateway(0), 42).await];
    let on_the_victim = vec![
        connect(cluster.gateway(victim), 42).await,
        connect(cluster.gateway(victim), 42).await,
        connect(cluster.gateway(victim), 43).await,
    ];
    let consumer = cluster.publisher.new_channel().await.expect("new_channel");
    cluster
        .publisher
        .group_add("user_42", &consumer)
        .await
        .expect("group_add");
    assert_eq!(presence(&mut cluster.publisher, &code, 42).await, 3);
    assert_eq!(presence(&mut cluster.publisher, &code, 43).await, 1);
    assert_eq!(presence(&mut cluster.publisher, &code, 44).await, 0);

    let killed = cluster.kill(victim).await;
    drop(on_the_victim);
    // Accurate within the liveness timeout, before any reap (the margin is
    // for the Python calls on a busy machine).
    let deadline = killed + TEST_LIVENESS_TIMEOUT + Duration::from_secs(2);
    loop {
        let (users_42, users_43) = (
            presence(&mut cluster.publisher, &code, 42).await,
            presence(&mut cluster.publisher, &code, 43).await,
        );
        if (users_42, users_43) == (1, 0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "presence after the crash: {users_42} and {users_43}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    for user in [42, 42, 43] {
        sockets.push(connect(cluster.gateway(0), user).await);
    }
    assert_eq!(presence(&mut cluster.publisher, &code, 42).await, 3);
    assert_eq!(presence(&mut cluster.publisher, &code, 43).await, 1);
}

#[tokio::test]
async fn a_leave_whose_write_failed_is_retried_until_written() {
    let cluster = cluster(1, 1, Some(TEST_LIVENESS)).await;
    let mut socket = connect(cluster.gateway(0), 9).await;
    let channel = group_members(&cluster.redis[0], "user_9")
        .await
        .pop()
        .expect("member");
    // Redis refuses the gateway's ZREM from now on (NOPERM).
    cluster.redis[0]
        .cmd(&["ACL", "SETUSER", "default", "-zrem"])
        .await
        .expect("acl");
    socket.close().await.expect("close");
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(cluster.gateway(0), "gateway_leaves_awaiting_retry ").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the failed leave waits for a retry"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        group_members(&cluster.redis[0], "user_9").await,
        vec![channel.clone()],
        "still a member while Redis refuses"
    );
    assert!(
        metric(
            cluster.gateway(0),
            "gateway_membership_write_failures_total "
        )
        .await
            >= 1.0
    );

    cluster.redis[0]
        .cmd(&["ACL", "SETUSER", "default", "+zrem"])
        .await
        .expect("acl");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !group_members(&cluster.redis[0], "user_9").await.is_empty() {
        assert!(Instant::now() < deadline, "the retried leave is written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric(cluster.gateway(0), "gateway_leaves_awaiting_retry ").await,
        0.0
    );
}

#[tokio::test]
async fn a_big_record_is_reaped_in_chunks_and_only_what_it_lists_is_removed() {
    const DEAD: &str = "gw-dead00000000000000000001";
    const LIVE: &str = "gw-11fe00000000000000000002";
    const MEMBERSHIPS: usize = 1_234;
    let redis = RedisServer::start().expect("redis starts");
    let mut client = redis.client().await.expect("client");
    // A dead process (no liveness key) that joined 1,234 channels to three
    // groups, with its queue key; a live process and a Django consumer in
    // the same groups.
    let mut commands: Vec<Vec<String>> = vec![
        vec![
            "SADD".into(),
            "asgi:gw:processes".into(),
            DEAD.into(),
            LIVE.into(),
        ],
        vec![
            "SET".into(),
            format!("asgi:gw:alive:{LIVE}"),
            "1".into(),
            "EX".into(),
            "600".into(),
        ],
        vec![
            "ZADD".into(),
            format!("asgispecific.{DEAD}!"),
            "1".into(),
            "payload".into(),
        ],
        vec![
            "SADD".into(),
            format!("asgi:gw:joined:{DEAD}"),
            format!("asgispecific.{DEAD}!"),
        ],
    ];
    for group in 0..3 {
        let key = format!("asgi:group:bulk_{group}");
        for other in [
            format!("specific.{LIVE}!1"),
            "specific.0123abcd!x".to_string(),
        ] {
            commands.push(vec!["ZADD".into(), key.clone(), "1".into(), other]);
        }
        commands.push(vec![
            "SADD".into(),
            format!("asgi:gw:joined:{LIVE}"),
            format!("{key} specific.{LIVE}!1"),
        ]);
    }
    for n in 0..MEMBERSHIPS {
        let key = format!("asgi:group:bulk_{}", n % 3);
        let channel = format!("specific.{DEAD}!{n:x}");
        commands.push(vec![
            "ZADD".into(),
            key.clone(),
            "1".into(),
            channel.clone(),
        ]);
        commands.push(vec![
            "SADD".into(),
            format!("asgi:gw:joined:{DEAD}"),
            format!("{key} {channel}"),
        ]);
    }
    for reply in client.pipeline(&commands).await.expect("pipeline") {
        reply.check().expect("setup command");
    }

    // No canary, so the only scripts run are the reaper's.
    let mut config = GatewayConfig::new(&redis.url())
        .expect("config")
        .line("layer", TEST_LIVENESS)
        .line("layer", r#"canary_interval = "0s""#);
    let gateway = start_gateway(&mut config).await;
    let deadline = Instant::now() + REAP_DEADLINE;
    while metric(&gateway, "gateway_processes_reaped_total ").await < 1.0 {
        assert!(Instant::now() < deadline, "the dead process is reaped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        metric(&gateway, "gateway_memberships_reaped_total ").await,
        MEMBERSHIPS as f64
    );
    for group in 0..3 {
        assert_eq!(
            group_members(&redis, &format!("bulk_{group}")).await,
            vec![
                "specific.0123abcd!x".to_string(),
                format!("specific.{LIVE}!1")
            ],
            "only the dead process's members are gone"
        );
    }
    let exists = |key: String| {
        let redis = &redis;
        async move { redis.cmd(&["EXISTS", &key]).await.expect("exists") == vec!["1"] }
    };
    assert!(
        !exists(format!("asgispecific.{DEAD}!")).await,
        "queue key deleted"
    );
    assert!(
        !exists(format!("asgi:gw:joined:{DEAD}")).await,
        "record deleted"
    );
    assert!(
        exists(format!("asgi:gw:joined:{LIVE}")).await,
        "live record kept"
    );
    let processes = redis
        .cmd(&["SMEMBERS", "asgi:gw:processes"])
        .await
        .expect("smembers");
    assert!(processes.contains(&LIVE.to_string()) && !processes.contains(&DEAD.to_string()));
    // 1,235 entries in chunks of 500: three script calls.
    let stats = redis
        .cmd(&["INFO", "commandstats"])
        .await
        .expect("commandstats")
        .join("\n");
    let evals: u64 = stats
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_eval:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0);
    assert_eq!(evals, 3, "reaped in chunks");
}

#[tokio::test]
async fn a_clean_stop_leaves_nothing_of_the_process_in_redis() {
    let mut cluster = cluster(1, 1, Some(TEST_LIVENESS)).await;
    let process = process_id(cluster.gateway(0));
    let mut socket = connect(cluster.gateway(0), 5).await;
    cluster
        .publisher
        .group_send("user_5", notification("5"))
        .await
        .expect("group_send");
    expect_frame(&mut socket, r#"{"message": 5}"#).await;
    assert!(cluster.listed_anywhere(&process).await);
    let mut gateway = cluster.gateways[0].take().expect("gateway");
    gateway.signal(Signal::Term).expect("SIGTERM");
    let status = gateway
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("exits");
    assert!(status.success(), "{status:?}");
    // Memberships, queue key, liveness key, record, processes set: gone.
    let left = cluster.redis[0].cmd(&["KEYS", "*"]).await.expect("keys");
    assert!(left.is_empty(), "left in Redis: {left:?}");
}
