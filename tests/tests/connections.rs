//! Every way a channels_redis deployment reaches Redis — TLS with a private
//! CA, a Unix socket, an ACL user with a password and a database index, and a
//! Sentinel-managed master that fails over — with the gateway and the real
//! Python library configured alike.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tests::procs::{free_port, scratch_dir};
use tests::{GatewayConfig, LayerDriver, RedisServer};

async fn python_publisher(hosts: Value) -> LayerDriver {
    LayerDriver::start("core", json!({ "hosts": hosts }))
        .await
        .expect("python channels_redis publisher starts")
}

fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// A private CA and a server certificate for 127.0.0.1, made with openssl.
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    tests::certs::test_ca_and_server_certificate(dir, "test")
}

/// Connects `user`, proves a group_send reaches the socket, and hands the
/// still-open socket back.
async fn delivers(
    gateway: &tests::GatewayProcess,
    publisher: &mut LayerDriver,
    user: u32,
) -> tests::WsClient {
    let mut socket = connect(gateway, user).await;
    publisher
        .group_send(
            &format!("user_{user}"),
            notification(r#""over this connection""#),
        )
        .await
        .expect("group_send");
    expect_frame(&mut socket, r#"{"message": "over this connection"}"#).await;
    socket
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let dir = scratch_dir("tls").expect("dir");
    let (ca, cert, key) = make_certificates(&dir);
    let tls_port = free_port().expect("port").to_string();
    let redis = RedisServer::start_with_args(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &cert.to_string_lossy(),
        "--tls-key-file",
        &key.to_string_lossy(),
        "--tls-ca-cert-file",
        &ca.to_string_lossy(),
        "--tls-auth-clients",
        "no",
    ])
    .expect("redis with TLS");
    let address = format!("rediss://127.0.0.1:{tls_port}");
    // Only the TLS port is given to the gateway and the publisher.
    let mut config = GatewayConfig::new(&redis.url()).expect("config").line(
        "layer",
        format!(
            "hosts = [{{ address = {}, ssl_ca_certs = {} }}]",
            toml_string(&address),
            toml_string(&ca.to_string_lossy())
        ),
    );
    config.hosts = Vec::new();
    let gateway = start_gateway(&mut config).await;
    let mut publisher = python_publisher(json!([
        { "address": address, "ssl_ca_certs": ca.to_string_lossy() }
    ]))
    .await;
    let _open = delivers(&gateway, &mut publisher, 1).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unix_socket_with_a_database_index() {
    let dir = scratch_dir("unix").expect("dir");
    let socket_path = dir.join("redis.sock");
    let redis = RedisServer::start_with_args(&[
        "--unixsocket",
        &socket_path.to_string_lossy(),
        "--unixsocketperm",
        "700",
    ])
    .expect("redis with a unix socket");
    let url = format!("unix://{}?db=2", socket_path.display());
    let mut config = GatewayConfig::new(&url).expect("config");
    let gateway = start_gateway(&mut config).await;
    let mut publisher = python_publisher(json!([url])).await;
    let _open = delivers(&gateway, &mut publisher, 2).await;
    let mut client = redis.client().await.expect("client");
    client.cmd(&["SELECT", "2"]).await.expect("select");
    let keys = client
        .cmd(&["KEYS", "asgi:group:user_2"])
        .await
        .expect("keys")
        .into_strings()
        .expect("strings");
    assert_eq!(keys, ["asgi:group:user_2"], "the membership is in db 2");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn acl_user_password_and_database_from_the_url() {
    let redis = RedisServer::start().expect("redis");
    redis
        .cmd(&[
            "ACL", "SETUSER", "gw", "on", ">gw-pass", "~*", "&*", "+@all",
        ])
        .await
        .expect("acl user");
    let url = format!("redis://gw:gw-pass@127.0.0.1:{}/3", redis.port());
    let mut config = GatewayConfig::new(&url).expect("config");
    let gateway = start_gateway(&mut config).await;
    let mut publisher = python_publisher(json!([url])).await;
    let _open = delivers(&gateway, &mut publisher, 3).await;
    let clients = redis
        .cmd(&["CLIENT", "LIST"])
        .await
        .expect("client list")
        .join("\n");
    let gateway_connections: Vec<&str> = clients
        .lines()
        .filter(|line| line.contains("user=gw "))
        .collect();
    assert!(
        gateway_connections.len() >= 2,
        "connections authenticate as gw: {clients}"
    );
    assert!(gateway_connections
        .iter()
        .all(|line| line.contains(" db=3 ")));
    assert!(
        !gateway.log_text().contains("gw-pass"),
        "the password never reaches the log"
    );
}

/// One `redis-server --sentinel` process, ended by PID on drop.
struct Sentinel {
    child: Child,
    port: u16,
}

impl Sentinel {
    fn start(dir: &Path, master_port: u16) -> Sentinel {
        let port = free_port().expect("port");
        let config = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir = dir.display()
            ),
        )
        .expect("sentinel config");
        let child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sentinel starts");
        Sentinel { child, port }
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn sentinel_failover_makes_it_unready_then_delivery_resumes() {
    let dir = scratch_dir("sentinel").expect("dir");
    let mut master = RedisServer::start().expect("master");
    let master_port = master.port().to_string();
    let replica =
        RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &master_port]).expect("replica");
    let sentinels: Vec<Sentinel> = (0..3)
        .map(|_| Sentinel::start(&dir, master.port()))
        .collect();
    let sentinel_pairs: Vec<(String, u16)> = sentinels
        .iter()
        .map(|sentinel| ("127.0.0.1".to_string(), sentinel.port))
        .collect();
    wait_until(
        "the replica is in sync",
        Duration::from_secs(10),
        || async {
            replica
                .cmd(&["INFO", "replication"])
                .await
                .map(|info| info.join("").contains("master_link_status:up"))
                .unwrap_or(false)
        },
    )
    .await;

    let sentinel_toml: Vec<String> = sentinel_pairs
        .iter()
        .map(|(host, port)| format!("[{}, {port}]", toml_string(host)))
        .collect();
    let mut config = GatewayConfig::new(&master.url()).expect("config").line(
        "layer",
        format!(
            "hosts = [{{ sentinels = [{}], master_name = \"mymaster\" }}]",
            sentinel_toml.join(", ")
        ),
    );
    config.hosts = Vec::new();
    let gateway = start_gateway(&mut config).await;
    let sentinel_host = json!([{ "sentinels": sentinel_pairs, "master_name": "mymaster" }]);
    let mut publisher = python_publisher(sentinel_host.clone()).await;
    let mut socket = connect(&gateway, 4).await;
    publisher
        .group_send("user_4", notification(r#""before failover""#))
        .await
        .expect("group_send");
    expect_frame(&mut socket, r#"{"message": "before failover"}"#).await;

    master.stop().expect("master killed");
    let killed = Instant::now();
    let unready = wait_ready(&gateway, false, Duration::from_secs(15)).await;
    let ready_again = wait_ready(&gateway, true, Duration::from_secs(30)).await;
    let mut publisher = python_publisher(sentinel_host).await;
    let mut attempt = 0;
    let resumed = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(40),
            "delivery resumes"
        );
        attempt += 1;
        let _ = publisher
            .group_send(
                "user_4",
                notification(&format!("\"after failover {attempt}\"")),
            )
            .await;
        if socket.recv_text(Duration::from_millis(200)).await.is_ok() {
            break killed.elapsed();
        }
    };
    eprintln!(
        "sentinel failover: unready {unready:?} after the master died, ready again {:?} later, \
         delivery resumed {resumed:?} after the kill",
        ready_again
    );
    assert!(
        socket.close_code().is_none(),
        "the client never reconnected"
    );
    let role = replica.cmd(&["ROLE"]).await.expect("role");
    assert_eq!(
        role.first().map(String::as_str),
        Some("master"),
        "the replica was promoted"
    );
    drop(sentinels);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_public_listener_serves_wss_with_its_own_certificate() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let dir = scratch_dir("wss").expect("dir");
    let (ca, cert, key) = make_certificates(&dir);
    let redis = RedisServer::start().expect("redis");
    let mut config = GatewayConfig::new(&redis.url())
        .expect("config")
        .tls(&cert, &key);
    let gateway = start_gateway(&mut config).await;
    let url = format!(
        "{}?token={}",
        gateway
            .ws_url("/ws/notifications/")
            .replacen("ws://", "wss://", 1),
        token(6)
    );
    // A real TLS client that trusts only the test CA: Python's ssl module.
    let client = r#"
import asyncio, ssl, sys, websockets
async def main():
    context = ssl.create_default_context(cafile=sys.argv[2])
    async with websockets.connect(sys.argv[1], ssl=context) as socket:
        print("connected", flush=True)
        print(await asyncio.wait_for(socket.recv(), 10), flush=True)
asyncio.run(main())
"#;
    let mut child = tokio::process::Command::new(tests::python_bin())
        .arg("-c")
        .arg(client)
        .arg(&url)
        .arg(&ca)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python client starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(15), lines.next_line())
        .await
        .expect("the client answers in time")
        .expect("read");
    assert_eq!(
        first.as_deref(),
        Some("connected"),
        "TLS handshake and upgrade"
    );
    let mut publisher = python_publisher(json!([redis.url()])).await;
    publisher
        .group_send("user_6", notification(r#""over wss""#))
        .await
        .expect("group_send");
    let frame = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("frame in time")
        .expect("read");
    assert_eq!(frame.as_deref(), Some(r#"{"message": "over wss"}"#));
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The public TLS listener speaks HTTP/1.1 only, on either driver: a client
/// offering h2 first in ALPN does not get it (the h2 0.3 that awc brings in
/// is never spoken there: docs/supply-chain.md), and wss still works.
#[tokio::test]
async fn no_client_can_pick_h2_on_the_tls_listener_of_either_driver() {
    let dir = scratch_dir("alpn").expect("dir");
    let (ca, cert, key) = make_certificates(&dir);
    let redis = RedisServer::start().expect("redis");
    let client = r#"
import socket, ssl, sys
context = ssl.create_default_context(cafile=sys.argv[2])
context.set_alpn_protocols(["h2", "http/1.1"])
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as raw:
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        print(tls.selected_alpn_protocol(), flush=True)
"#;
    for driver in ["direct", "actix-ws"] {
        let mut config = GatewayConfig::new(&redis.url())
            .expect("config")
            .line("server", format!("websocket_driver = \"{driver}\""))
            .tls(&cert, &key);
        let _gateway = start_gateway(&mut config).await;
        let port = config
            .listen
            .rsplit(':')
            .next()
            .and_then(|port| port.parse::<u16>().ok())
            .expect("the listener's port");
        let output = tokio::process::Command::new(tests::python_bin())
            .arg("-c")
            .arg(client)
            .arg(port.to_string())
            .arg(&ca)
            .output()
            .await
            .expect("python client runs");
        let selected = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert!(
            output.status.success(),
            "{driver}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_ne!(selected, "h2", "{driver}: h2 was negotiated");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
