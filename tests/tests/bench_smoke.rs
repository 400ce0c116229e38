//! Keeps the benchmark harness from rotting: runs every `loadgen` mode at a
//! tiny scale (tens of sockets, seconds) against a debug gateway and its own
//! redis-server, and checks correctness only — every socket connects, nothing
//! is lost, duplicated or misrouted, no socket closes unexpectedly. No timing
//! is asserted; the numbers belong to `scripts/bench`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tests::gateway_bin;
use tests::procs::{free_port, repo_root, send_signal, Signal};
use tests::{python_bin, GatewayConfig, GatewayLauncher, GatewayProcess, RedisServer};

const SECRET: &str = "test-secret";
/// The per-user scenario at smoke scale: 30 sockets (one user each), two
/// one-second steps; the gateway and the bare relay both run it. A ramp
/// here never stops on latency (the benchmark's rule, p99 over 50 ms, is a
/// timing a loaded test machine can break at any scale): every step runs.
const PER_USER_SMOKE: [&str; 10] = [
    "--mode",
    "per-user",
    "--sockets",
    "30",
    "--rates",
    "50,200",
    "--step-secs",
    "1",
    "--stop-p99-ms",
    "1000000",
];
/// Upper bound on one loadgen run; it stops by itself well before.
const RUN_LIMIT: Duration = Duration::from_secs(120);

async fn stack() -> (RedisServer, GatewayProcess) {
    let redis = RedisServer::start().expect("redis starts");
    let mut config = GatewayConfig::new(&redis.url()).expect("config");
    let gateway = GatewayLauncher::new()
        .bin(gateway_bin!())
        .start_config(&mut config)
        .await
        .expect("gateway starts");
    (redis, gateway)
}

async fn loadgen(redis: &RedisServer, gateway: &GatewayProcess, extra: &[&str]) -> Value {
    loadgen_at(redis, gateway.listen_addr(), extra).await
}

async fn loadgen_at(redis: &RedisServer, target: &str, extra: &[&str]) -> Value {
    loadgen_with_capacity(redis, target, RAISED_CAPACITY, extra).await
}

/// The raised capacity the smoke runs publish with: the gateway's channels
/// get 10,000 entries per queue key.
const RAISED_CAPACITY: &[&str] = &["--channel-capacity", "specific.gw-*=10000"];

/// A run whose publisher's capacity settings are `capacity` (loadgen flags;
/// empty = Django's default of 100 for every channel).
async fn loadgen_with_capacity(
    redis: &RedisServer,
    target: &str,
    capacity: &[&str],
    extra: &[&str],
) -> Value {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"));
    cmd.args(["--target", target])
        .args(["--secret", SECRET])
        .args(["--redis", &redis.url()])
        .args(capacity)
        .args(["--connect-concurrency", "16"])
        .args(["--drain-secs", "5"])
        .args(extra)
        .env_remove("LOADGEN_SECRET")
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let output = tokio::time::timeout(RUN_LIMIT, cmd.output())
        .await
        .expect("loadgen ends by itself")
        .expect("loadgen runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "loadgen failed: {stderr}");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "loadgen printed no JSON ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// A run with no server under test (the Redis-alone ceiling, the bare
/// relay), on a redis-server of its own whose CPU it reports.
async fn loadgen_without_server(extra: &[&str]) -> Value {
    let redis = RedisServer::start().expect("redis starts");
    let redis_pid = redis.pid().to_string();
    let mut args = extra.to_vec();
    args.extend(["--redis-pid", redis_pid.as_str()]);
    loadgen_at(&redis, "127.0.0.1:1", &args).await
}

/// Waits until a server process just started accepts on `address`.
fn wait_for_listener(address: &str, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(address).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {address} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn assert_connected(result: &Value, sockets: u64) {
    assert_eq!(result["connect"]["ok"], sockets, "all connected: {result}");
    assert_eq!(result["connect"]["failed"], 0, "{result}");
    assert_eq!(result["unexpected_closes"], 0, "{result}");
    assert_eq!(result["bad_frames"], 0, "{result}");
}

fn assert_clean_step(step: &Value) {
    assert!(step["published"].as_u64().unwrap_or(0) > 0, "{step}");
    assert_eq!(step["over_capacity"], 0, "{step}");
    assert_eq!(step["lost"], 0, "{step}");
    assert_eq!(step["duplicates"], 0, "{step}");
    assert_eq!(step["misroutes"], 0, "{step}");
    assert_eq!(step["received"], step["expected"], "{step}");
    assert!(step["latency"]["count"].as_u64().unwrap_or(0) > 0, "{step}");
}

#[tokio::test]
async fn idle_mode_connects_samples_rss_and_probes_delivery() {
    let (redis, gateway) = stack().await;
    let pid = gateway.pid().to_string();
    let redis_pid = redis.pid().to_string();
    let result = loadgen(
        &redis,
        &gateway,
        &[
            "--mode",
            "idle",
            "--sockets",
            "40",
            "--hold-secs",
            "1",
            "--settle-secs",
            "0.5",
            "--server-pid",
            &pid,
            "--redis-pid",
            &redis_pid,
            "--probe",
        ],
    )
    .await;
    assert_connected(&result, 40);
    assert_eq!(result["still_open"], 40, "{result}");
    assert!(result["rss"][0]["after_kib"].as_u64().is_some(), "{result}");
    // One group_send to the sockets' user after the hold reaches all of them.
    assert_clean_step(&result["probe"]);
    assert_eq!(result["probe"]["received"], 40, "{result}");
}

#[tokio::test]
async fn per_user_mode_delivers_every_message_to_its_user_only() {
    let (redis, gateway) = stack().await;
    let mut args = PER_USER_SMOKE.to_vec();
    args.extend(["--gateway-admin", gateway.admin_addr()]);
    let result = loadgen(&redis, &gateway, &args).await;
    assert_connected(&result, 30);
    let steps = result["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{result}");
    for step in steps {
        assert_clean_step(step);
        // Each step numbers its messages from 0 again; order is per step.
        assert_eq!(step["out_of_order"], 0, "{step}");
        // The gateway's own queue → routing lag was read for the step.
        let routed = step["gateway_routing_lag"]["messages"].as_u64();
        assert!(
            routed.is_some_and(|n| n >= step["published"].as_u64().unwrap_or(0)),
            "{step}"
        );
    }
}

/// The per-user ramp at Django's default capacity (100 per queue key, no
/// `channel_capacity`), run through every step: whatever channels_redis'
/// sender dropped is counted per step, and nothing else is missing.
#[tokio::test]
async fn per_user_ramp_at_default_capacity_counts_the_senders_drops() {
    let (redis, gateway) = stack().await;
    let mut args = PER_USER_SMOKE.to_vec();
    args.extend(["--capacity", "100", "--ramp-through"]);
    let result = loadgen_with_capacity(&redis, gateway.listen_addr(), &[], &args).await;
    assert_connected(&result, 30);
    let steps = result["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "every step runs: {result}");
    for step in steps {
        assert!(step["published"].as_u64().unwrap_or(0) > 0, "{step}");
        let dropped = step["over_capacity"].as_u64().expect("drops counted");
        let received = step["received"].as_u64().unwrap_or(0);
        assert_eq!(
            received + dropped,
            step["expected"].as_u64().unwrap_or(0),
            "{step}"
        );
        assert_eq!(step["lost"].as_u64(), Some(dropped), "{step}");
        assert_eq!(step["lost_beyond_over_capacity"], 0, "{step}");
        assert_eq!(step["duplicates"], 0, "{step}");
        assert_eq!(step["misroutes"], 0, "{step}");
        assert_eq!(step["out_of_order"], 0, "{step}");
    }
}

#[tokio::test]
async fn broadcast_mode_reaches_every_socket_of_the_group() {
    let (redis, gateway) = stack().await;
    let pid = gateway.pid().to_string();
    let redis_pid = redis.pid().to_string();
    let result = loadgen(
        &redis,
        &gateway,
        &[
            "--mode",
            "broadcast",
            "--sockets",
            "25",
            "--messages",
            "20",
            "--broadcast-rate",
            "50",
            "--server-pid",
            &pid,
            "--redis-pid",
            &redis_pid,
        ],
    )
    .await;
    assert_connected(&result, 25);
    let step = &result["steps"][0];
    assert_clean_step(step);
    assert_eq!(step["expected"], 25 * 20, "{result}");
    // Where the cores went: every process's CPU time was read.
    for process in ["server_cpu_s", "redis_cpu_s", "loadgen_cpu_s"] {
        assert!(
            step["cpu"][process].as_f64().is_some(),
            "{process}: {result}"
        );
    }
}

#[tokio::test]
async fn reconnect_storm_mode_rejoins_and_delivers() {
    let (redis, gateway) = stack().await;
    let result = loadgen(
        &redis,
        &gateway,
        &["--mode", "reconnect-storm", "--sockets", "30"],
    )
    .await;
    assert_connected(&result, 30);
    let storm = &result["storm"];
    assert_eq!(storm["reconnect"]["ok"], 30, "{result}");
    assert_eq!(storm["reconnect"]["failed"], 0, "{result}");
    assert_clean_step(&storm["delivery"]);
    assert!(storm["message_reached_all_s"].is_number(), "{result}");
}

/// The Redis-alone ceiling: no gateway and no sockets, yet every group_send
/// finds a member and its payload is popped, so Redis does a delivery's work.
#[tokio::test]
async fn ceiling_run_pops_every_payload_without_a_gateway() {
    let result = loadgen_without_server(&[
        "--mode",
        "per-user",
        "--sockets",
        "0",
        "--ceiling-members",
        "20",
        "--rates",
        "100,300",
        "--step-secs",
        "1",
    ])
    .await;
    let steps = result["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{result}");
    for step in steps {
        assert!(step["published"].as_u64().unwrap_or(0) > 0, "{step}");
        assert_eq!(step["over_capacity"], 0, "{step}");
        assert_eq!(step["ceiling_popped"], step["published"], "{step}");
        assert!(step["cpu"]["redis_cpu_s"].as_f64().is_some(), "{step}");
        assert!(step["cpu"]["server_cpu_s"].is_null(), "no server: {step}");
    }
}

/// The bare relay (the benchmark's floor), a process of its own measured
/// like a server: it answers each socket once its join is written, and
/// pops, reads once and writes; SIGTERM stops it and it prints its counts.
#[tokio::test]
async fn bare_relay_run_delivers_every_message_to_its_user_only() {
    let redis = RedisServer::start().expect("redis starts");
    let port = free_port().expect("free port");
    let listen = format!("127.0.0.1:{port}");
    let relay = Command::new(env!("CARGO_BIN_EXE_bare-relay"))
        .args([
            "--listen",
            &listen,
            "--redis",
            &redis.url(),
            "--secret",
            SECRET,
        ])
        .env_remove("LOADGEN_SECRET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bare-relay starts");
    wait_for_listener(&listen, Duration::from_secs(20), "bare-relay");
    let relay_pid = relay.id().to_string();
    let redis_pid = redis.pid().to_string();
    let mut args = PER_USER_SMOKE.to_vec();
    args.extend(["--capacity", "1000", "--server-pid", &relay_pid]);
    args.extend(["--redis-pid", &redis_pid]);
    let result = loadgen_at(&redis, &listen, &args).await;
    send_signal(relay.id(), Signal::Term).expect("SIGTERM to bare-relay");
    let output = relay.wait_with_output().expect("bare-relay stops");
    assert!(
        output.status.success(),
        "bare-relay: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let counts: Value = serde_json::from_slice(&output.stdout).expect("counts as JSON");
    assert_connected(&result, 30);
    let steps = result["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 2, "{result}");
    let mut published = 0;
    for step in steps {
        assert_clean_step(step);
        assert_eq!(step["out_of_order"], 0, "{step}");
        assert!(step["cpu"]["server_cpu_s"].as_f64().is_some(), "{step}");
        published += step["published"].as_u64().unwrap_or(0);
    }
    assert_eq!(counts["joined"], 30, "{counts}");
    assert_eq!(counts["written"], published, "{counts}");
    assert_eq!(counts["dropped"], 0, "{counts}");
}

/// The Daphne peer of `scripts/bench`, started from the test venv.
struct DaphnePeer {
    child: Child,
    port: u16,
}

impl DaphnePeer {
    fn start(redis: &RedisServer) -> DaphnePeer {
        let port = free_port().expect("free port");
        let daphne = python_bin().with_file_name("daphne");
        let child = Command::new(daphne)
            .current_dir(repo_root().join("tests/bench/peer"))
            .env("PEER_REDIS_URL", redis.url())
            .env("PEER_JWT_SECRET", SECRET)
            .env("PEER_CAPACITY", "10000")
            .args(["-v", "0", "-b", "127.0.0.1", "-p", &port.to_string()])
            .arg("peer_project.asgi:application")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("daphne starts");
        wait_for_listener(
            &format!("127.0.0.1:{port}"),
            Duration::from_secs(30),
            "daphne",
        );
        DaphnePeer { child, port }
    }
}

impl Drop for DaphnePeer {
    fn drop(&mut self) {
        let _ = send_signal(self.child.id(), Signal::Term);
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The load generator's own WebSocket client works against the peer too, so
/// both stacks are measured by the same client.
#[tokio::test]
async fn the_load_generator_measures_the_daphne_peer_too() {
    let redis = RedisServer::start().expect("redis starts");
    let peer = DaphnePeer::start(&redis);
    let target = format!("127.0.0.1:{}", peer.port);
    let result = loadgen_at(
        &redis,
        &target,
        &[
            "--mode",
            "per-user",
            "--sockets",
            "10",
            "--rates",
            "20",
            "--step-secs",
            "1",
        ],
    )
    .await;
    assert_connected(&result, 10);
    assert_clean_step(&result["steps"][0]);
}

/// The soak scenario at smoke scale: two gateway processes on one Redis,
/// churning sockets, per-user and broadcast publishing, the second process
/// SIGKILLed and restarted after 8 s (and again at 16 s), samples every 2 s.
/// Only correctness: sockets on the surviving process lost nothing, the
/// sampler produced its rows, the killed process came back.
#[tokio::test]
async fn soak_run_churns_kills_restarts_and_loses_nothing_on_survivors() {
    let redis = RedisServer::start().expect("redis starts");
    let gateway = gateway_bin!();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_soak"));
    cmd.arg("--gateway-bin")
        .arg(&gateway)
        .args(["--redis", &redis.url()])
        .args(["--secret", SECRET])
        .args(["--processes", "2", "--duration-secs", "20"])
        .args(["--sockets", "40", "--churn-per-sec", "0.05"])
        .args(["--per-user-rate", "50", "--broadcast-every-secs", "0.5"])
        .args(["--kill-every-secs", "8", "--sample-every-secs", "2"])
        .args(["--warmup-secs", "0"])
        .env_remove("LOADGEN_SECRET")
        .kill_on_drop(true)
        .stdin(Stdio::null());
    let output = tokio::time::timeout(RUN_LIMIT, cmd.output())
        .await
        .expect("soak ends by itself")
        .expect("soak runs");
    assert!(
        output.status.success(),
        "soak failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&output.stdout).expect("soak prints JSON");

    let samples = result["samples"].as_array().expect("samples");
    let running = samples.iter().filter(|s| s["phase"] == "running").count();
    assert!(running >= 5, "a sample every 2 s: {result}");
    for sample in samples {
        let processes = sample["processes"].as_array().expect("processes");
        assert_eq!(processes.len(), 2, "{sample}");
        for process in processes {
            assert!(process["rss_kib"].as_u64().is_some(), "{sample}");
            assert!(process["fds"].as_u64().is_some(), "{sample}");
        }
        for field in [
            "redis_keys",
            "redis_used_memory_bytes",
            "group_members",
            "stale_members",
        ] {
            assert!(sample[field].as_u64().is_some(), "{field}: {sample}");
        }
    }
    assert_eq!(
        samples.last().map(|s| &s["phase"]),
        Some(&json!("after-close"))
    );

    // The second process was killed and came back as a new process.
    assert!(result["restarts"].as_u64().unwrap_or(0) >= 1, "{result}");
    for kill in result["kills"].as_array().expect("kills") {
        assert_eq!(kill["slot"], 1, "the first process is never killed: {kill}");
        assert_ne!(kill["old_pid"], kill["new_pid"], "{kill}");
        assert_ne!(kill["old_process_id"], kill["new_process_id"], "{kill}");
    }

    // Sockets on the surviving process lost nothing; the killed process's
    // sockets are counted apart (a kill may lose what was in flight).
    let surviving = &result["delivery"]["surviving"];
    assert!(surviving["expected"].as_u64().unwrap_or(0) > 0, "{result}");
    for field in [
        "lost",
        "duplicates",
        "misroutes",
        "unexpected_closes",
        "bad_frames",
    ] {
        assert_eq!(surviving[field], 0, "surviving {field}: {result}");
    }
    let killed = &result["delivery"]["killed"];
    assert!(killed["sockets"].as_u64().unwrap_or(0) > 0, "{result}");
    for field in ["duplicates", "misroutes", "bad_frames"] {
        assert_eq!(killed[field], 0, "killed {field}: {result}");
    }
    assert_eq!(result["connects"]["failed"], 0, "{result}");
    assert_eq!(result["sockets_left_open"], 0, "{result}");
    assert_eq!(result["sent"]["errors"], 0, "{result}");
    assert!(
        result["sent"]["broadcasts"].as_u64().unwrap_or(0) > 0,
        "{result}"
    );
}

/// The recovery stage of `scripts/bench` by itself (`BENCH_ONLY=recovery`),
/// at smoke scale with the debug binaries, merged into a copy of the
/// committed report: recovery on against off side by side (Redis' cost per
/// group_send and per user, the per-user ramp, the broadcast, idle RSS) and
/// a recovery storm at a capacity the missed messages fill (`recovered:
/// false`, by design) and at one they do not (`true`), every socket getting
/// each missed message exactly once either way. The report keeps every
/// other result and names the run the recovery figures come from.
/// Runs one stage of `scripts/bench` by itself (`BENCH_ONLY=<stage>`) at
/// smoke scale with the debug binaries, merged into a copy of the committed
/// report: returns the scratch docs folder, the committed report and the
/// merged one.
async fn run_bench_alone(
    stage: &str,
    knobs: &[(&str, &str)],
) -> (std::path::PathBuf, Value, Value) {
    let docs = tests::procs::scratch_dir(&format!("bench-{stage}")).expect("scratch dir");
    let committed: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("docs/benchmarks.json"))
            .expect("committed report"),
    )
    .expect("committed report is JSON");
    std::fs::copy(
        repo_root().join("docs/benchmarks.json"),
        docs.join("benchmarks.json"),
    )
    .expect("copy the report");
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(repo_root().join("scripts/bench"))
        .env("BENCH_ONLY", stage)
        .env("BENCH_ROUTEBENCH_BIN", "none")
        .envs(knobs.iter().copied())
        .env("BENCH_GATEWAY_BIN", gateway_bin!())
        .env("BENCH_LOADGEN_BIN", env!("CARGO_BIN_EXE_loadgen"))
        .env("BENCH_DOCS_DIR", &docs)
        .env_remove("LOADGEN_SECRET")
        .kill_on_drop(true)
        .stdin(Stdio::null());
    let child = cmd.spawn().expect("scripts/bench starts");
    let pid = child.id();
    let output =
        match tokio::time::timeout(Duration::from_secs(240), child.wait_with_output()).await {
            Ok(output) => output.expect("scripts/bench runs"),
            Err(_) => {
                // Its EXIT trap stops what it started.
                if let Some(pid) = pid {
                    let _ = send_signal(pid, Signal::Term);
                }
                panic!("scripts/bench BENCH_ONLY={stage} did not end within 240 s");
            }
        };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "scripts/bench failed: {stderr}");
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(docs.join("benchmarks.json")).expect("merged report"),
    )
    .expect("merged report is JSON");
    (docs, committed, report)
}

/// Checks a merged report: every committed result but the stage's (named
/// with `prefix`) is kept as it was, as is the meta, and the stage's run
/// (`run_key` in the meta) is named. Returns that run.
fn assert_merged<'a>(
    report: &'a Value,
    committed: &Value,
    prefix: &str,
    run_key: &str,
) -> &'a Value {
    let results = report["results"].as_object().expect("results");
    for (key, value) in committed["results"].as_object().expect("committed results") {
        if !key.starts_with(prefix) {
            assert_eq!(results.get(key), Some(value), "{key} kept as it was");
        }
    }
    assert_eq!(report["meta"]["machine"], committed["meta"]["machine"]);
    let run = &report["meta"][run_key];
    for field in ["date", "commit", "cpu speed", "took"] {
        assert!(run[field].is_string(), "{run_key} {field}: {run}");
    }
    run
}

/// The default-capacity ramps of `scripts/bench` by themselves
/// (`BENCH_ONLY=capacity`), twice at smoke scale, merged into a copy of the
/// committed report: every other result is kept, the run is named, each
/// ramp ran every step with nothing dropped or lost at this scale, and the
/// report shows both ramps.
#[tokio::test]
async fn capacity_stage_runs_alone_and_merges_into_the_report() {
    let (docs, committed, report) = run_bench_alone(
        "capacity",
        &[
            ("BENCH_CAPACITY_REPEATS", "2"),
            ("BENCH_PER_USER_SOCKETS", "20"),
            ("BENCH_RATES", "50,200"),
            ("BENCH_STEP_SECS", "1"),
        ],
    )
    .await;
    let results = report["results"].as_object().expect("results");
    let run = assert_merged(
        &report,
        &committed,
        "gateway-per-user-default-capacity",
        "capacity run",
    );
    for key in [
        "gateway-per-user-default-capacity",
        "gateway-per-user-default-capacity-r2",
    ] {
        let ramp = &results[key];
        assert_connected(ramp, 20);
        let steps = ramp["steps"].as_array().expect("steps");
        assert_eq!(steps.len(), 2, "{key}: every step, {ramp}");
        for step in steps {
            assert_clean_step(step);
            assert_eq!(step["over_capacity"], 0, "{key}: {step}");
        }
    }
    assert!(
        results
            .get("gateway-per-user-default-capacity-r3")
            .is_none(),
        "two ramps, as asked"
    );
    let markdown = std::fs::read_to_string(docs.join("benchmarks.md")).expect("benchmarks.md");
    assert!(
        markdown.contains("run by itself (`BENCH_ONLY=capacity`)"),
        "{markdown}"
    );
    assert!(
        markdown.contains(run["date"].as_str().unwrap_or_default()),
        "{markdown}"
    );
    assert!(
        markdown.contains("default 2: dropped by channels_redis"),
        "{markdown}"
    );
    let _ = std::fs::remove_dir_all(&docs);
}

#[tokio::test]
async fn recovery_stage_runs_alone_and_merges_into_the_report() {
    let (docs, committed, report) = run_bench_alone(
        "recovery",
        &[
            ("BENCH_RECOVERY_REPEATS", "1"),
            ("BENCH_RECOVERY_COST_USERS", "20"),
            ("BENCH_RECOVERY_COST_MESSAGES", "10"),
            ("BENCH_RECOVERY_COST_RATE", "200"),
            ("BENCH_RECOVERY_IDLE_SOCKETS", "20"),
            ("BENCH_PER_USER_SOCKETS", "20"),
            ("BENCH_RATES", "50,200"),
            ("BENCH_STEP_SECS", "1"),
            ("BENCH_BROADCAST_SOCKETS", "20"),
            ("BENCH_BROADCAST_MESSAGES", "10"),
            ("BENCH_BROADCAST_RATE", "50"),
            ("BENCH_RECOVERY_STORM_SOCKETS", "20"),
            ("BENCH_RECOVERY_STORM_SOCKETS_PER_USER", "4"),
            ("BENCH_RECOVERY_STORM_MESSAGES", "5"),
            ("BENCH_RECOVERY_STORM_RATE", "200"),
            ("BENCH_RECOVERY_STORM_CAPACITIES", "5 100"),
        ],
    )
    .await;
    let results = report["results"].as_object().expect("results");
    let run = assert_merged(&report, &committed, "recovery-", "recovery run");
    assert_eq!(run["only"], true, "{run}");
    for key in results.keys().filter(|key| key.starts_with("recovery-")) {
        assert!(
            results[key].get("error").is_none(),
            "{key}: {}",
            results[key]
        );
    }

    // Redis' cost: on writes one more payload per group_send, which stays.
    let cost = |mode: &str| results[&format!("recovery-{mode}-cost")]["steps"][0].clone();
    let (off, on) = (cost("off"), cost("on"));
    for step in [&off, &on] {
        assert_clean_step(step);
        let redis = &step["redis"];
        assert_eq!(redis["group_sends"], 200, "{redis}");
        for field in [
            "calls_per_group_send",
            "usec_per_group_send",
            "memory_bytes_per_group_send",
            "memory_bytes_per_user",
        ] {
            assert!(redis[field].is_number(), "{field}: {redis}");
        }
    }
    let zadds = |step: &Value| {
        step["redis"]["commands"]["zadd"]["calls"]
            .as_u64()
            .unwrap_or(0)
    };
    assert!(
        zadds(&on) >= zadds(&off) + 200,
        "a replay payload per send: {off} {on}"
    );
    assert_eq!(
        on["redis"]["replay_key_of_first_user"]["entries"], 10,
        "{on}"
    );
    assert!(off["redis"]["replay_key_of_first_user"].is_null(), "{off}");
    for mode in ["off", "on"] {
        let connect = &results[&format!("recovery-{mode}-cost")]["connect"];
        assert!(
            connect["redis"]["memory_bytes_per_user"].is_number(),
            "{connect}"
        );
    }

    // The ramp and the broadcast, both ways: nothing lost, duplicated or
    // misrouted; on, every socket read its status frame and positions grew.
    for mode in ["off", "on"] {
        let ramp = &results[&format!("recovery-{mode}-per-user")];
        assert_connected(ramp, 20);
        assert_eq!(ramp["position_regressions"], 0, "{ramp}");
        let statuses = if mode == "on" { 20 } else { 0 };
        assert_eq!(ramp["status_frames"], statuses, "{ramp}");
        for step in ramp["steps"].as_array().expect("steps") {
            assert_eq!(step["lost"], 0, "{step}");
            assert_eq!(step["duplicates"], 0, "{step}");
            assert_eq!(step["misroutes"], 0, "{step}");
            assert_eq!(step["replay_over_capacity"], 0, "{step}");
        }
        let broadcast = &results[&format!("recovery-{mode}-broadcast")];
        assert_connected(broadcast, 20);
        assert_clean_step(&broadcast["steps"][0]);
    }
    for name in ["off-idle", "on-idle", "on-recovering-idle"] {
        let idle = &results[&format!("recovery-{name}")];
        assert_connected(idle, 20);
        assert!(idle["rss"][0]["per_socket_kib"].is_number(), "{idle}");
    }

    // The storms: every socket came back, got its 5 missed messages exactly
    // once before its status frame; a full key (capacity 5) says false.
    for (capacity, recovered) in [(5, false), (100, true)] {
        let result = &results[&format!("recovery-storm-capacity-{capacity}")];
        assert_connected(result, 20);
        let storm = &result["storm"];
        assert_eq!(storm["users"], 5, "{storm}");
        assert_eq!(storm["missed_per_user"], 5, "{storm}");
        assert_eq!(storm["reconnect"]["ok"], 20, "{storm}");
        assert_eq!(storm["status_frames"], 20, "{storm}");
        assert_eq!(storm["received"], storm["expected"], "{storm}");
        assert_eq!(storm["expected"], 100, "{storm}");
        assert_eq!(storm["duplicates"], 0, "{storm}");
        assert_eq!(storm["sockets_complete"], 20, "{storm}");
        assert_eq!(storm["all_exactly_once"], true, "{storm}");
        assert_eq!(
            storm["missed_publish"]["replay_over_capacity"], 0,
            "{storm}"
        );
        assert!(storm["all_recovered_s"].is_number(), "{storm}");
        let (yes, no) = if recovered { (20, 0) } else { (0, 20) };
        assert_eq!(storm["recovered_true"], yes, "{storm}");
        assert_eq!(storm["recovered_false"], no, "{storm}");
        assert_eq!(storm["replayed_reported"], 100, "{storm}");
    }

    // The rendered report has the section, naming its run.
    let markdown = std::fs::read_to_string(docs.join("benchmarks.md")).expect("benchmarks.md");
    assert!(
        markdown.contains("## Recovery: what it costs, on against off"),
        "{markdown}"
    );
    let date = run["date"].as_str().unwrap_or_default();
    assert!(markdown.contains(date), "the run's date: {markdown}");
    assert!(markdown.contains("### The recovery storm"), "{markdown}");
    let _ = std::fs::remove_dir_all(&docs);
}

/// `--tls-ca`: the idle and broadcast modes over `wss://`, against a
/// gateway serving a certificate of the test CA.
#[tokio::test]
async fn idle_and_broadcast_modes_run_over_wss() {
    let dir = tests::procs::scratch_dir("smoke-wss").expect("dir");
    let (ca, cert, key) = tests::certs::test_ca_and_server_certificate(&dir, "smoke");
    let redis = RedisServer::start().expect("redis starts");
    let mut config = GatewayConfig::new(&redis.url())
        .expect("config")
        .tls(&cert, &key);
    let gateway = GatewayLauncher::new()
        .bin(gateway_bin!())
        .start_config(&mut config)
        .await
        .expect("gateway starts");
    let ca = ca.to_string_lossy().into_owned();
    let idle = loadgen(
        &redis,
        &gateway,
        &[
            "--mode",
            "idle",
            "--sockets",
            "20",
            "--hold-secs",
            "0.5",
            "--settle-secs",
            "0.5",
            "--tls-ca",
            &ca,
            "--probe",
        ],
    )
    .await;
    assert_connected(&idle, 20);
    assert_eq!(idle["tls"], true, "{idle}");
    assert_eq!(idle["probe"]["received"], 20, "{idle}");
    let broadcast = loadgen(
        &redis,
        &gateway,
        &[
            "--mode",
            "broadcast",
            "--sockets",
            "20",
            "--messages",
            "10",
            "--broadcast-rate",
            "50",
            "--tls-ca",
            &ca,
        ],
    )
    .await;
    assert_connected(&broadcast, 20);
    let step = &broadcast["steps"][0];
    assert_clean_step(step);
    assert_eq!(step["expected"], 20 * 10, "{broadcast}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The wss stage of `scripts/bench` by itself (`BENCH_ONLY=wss`), once at
/// smoke scale and with the A/B against an "older" binary (the same one
/// here), merged into a copy of the committed report: ws and wss runs
/// connect and deliver everything, the wss ones over TLS, the report shows
/// both tables, and no binary's path reaches it.
#[tokio::test]
async fn wss_stage_runs_alone_and_merges_into_the_report() {
    let old_bin = gateway_bin!().to_string_lossy().into_owned();
    let (docs, committed, report) = run_bench_alone(
        "wss",
        &[
            ("BENCH_WSS_REPEATS", "1"),
            ("BENCH_WSS_IDLE_SOCKETS", "20"),
            ("BENCH_WSS_BROADCAST_SOCKETS", "20"),
            ("BENCH_BROADCAST_MESSAGES", "10"),
            ("BENCH_BROADCAST_RATE", "50"),
            ("BENCH_WSS_OLD_GATEWAY_BIN", &old_bin),
            ("BENCH_WSS_OLD_LABEL", "the same build"),
        ],
    )
    .await;
    let results = report["results"].as_object().expect("results");
    let run = assert_merged(&report, &committed, "wss-", "wss run");
    assert_eq!(run["old gateway"], "the same build", "{run}");
    for (key, tls) in [
        ("wss-idle-ws-r1", false),
        ("wss-idle-wss-r1", true),
        ("wss-ab-old-idle-r1", true),
        ("wss-ab-new-idle-r1", true),
    ] {
        assert_connected(&results[key], 20);
        assert_eq!(results[key]["tls"], tls, "{key}");
    }
    for key in [
        "wss-broadcast-ws-r1",
        "wss-broadcast-wss-r1",
        "wss-ab-old-broadcast-r1",
        "wss-ab-new-broadcast-r1",
    ] {
        assert_connected(&results[key], 20);
        assert_clean_step(&results[key]["steps"][0]);
    }
    let markdown = std::fs::read_to_string(docs.join("benchmarks.md")).expect("benchmarks.md");
    for needle in [
        "## wss: TLS against plain WebSocket",
        "run by itself (`BENCH_ONLY=wss`)",
        "Before and after over wss: the same build",
    ] {
        assert!(markdown.contains(needle), "{needle}: {markdown}");
    }
    let written = std::fs::read_to_string(docs.join("benchmarks.json")).expect("report");
    assert!(!written.contains(&old_bin), "a binary's path in the report");
    let _ = std::fs::remove_dir_all(&docs);
}
