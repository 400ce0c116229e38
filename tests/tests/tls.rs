//! `wss://` end to end on the gateway's own TLS stream (`edge::tls`): events
//! published through the real channels_redis reach TLS clients on both
//! drivers and over TLS 1.2 as well as 1.3, frames larger than a TLS record
//! arrive whole, a client whose bytes trickle in (partial records) or that
//! stops reading is served, and bad TLS input (garbage, a half handshake, garbage after the upgrade)
//! closes that connection only: no panic, other sockets keep receiving.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::json;
use tests::lean_ws::{
    tls_client_config, tls_client_config_with, tls_connector, LeanStream, LeanWs,
};
use tests::procs::scratch_dir;
use tests::{GatewayConfig, GatewayProcess, LayerDriver, RedisServer};

struct WssStack {
    _redis: RedisServer,
    gateway: GatewayProcess,
    publisher: LayerDriver,
    ca: PathBuf,
    dir: PathBuf,
}

impl Drop for WssStack {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A gateway serving `wss://` with a certificate of the test CA, on
/// `driver`, and the real channels_redis publishing to its Redis.
async fn wss_stack(name: &str, driver: &str) -> WssStack {
    let dir = scratch_dir(name).expect("dir");
    let (ca, cert, key) = tests::certs::test_ca_and_server_certificate(&dir, "wss");
    let redis = RedisServer::start().expect("redis");
    let mut config = GatewayConfig::new(&redis.url())
        .expect("config")
        .line("server", format!("websocket_driver = \"{driver}\""))
        .tls(&cert, &key);
    let gateway = start_gateway(&mut config).await;
    let publisher = publisher_for(&redis, json!({})).await;
    WssStack {
        _redis: redis,
        gateway,
        publisher,
        ca,
        dir,
    }
}

impl WssStack {
    fn address(&self) -> SocketAddr {
        self.gateway
            .listen_addr()
            .parse()
            .expect("the listener's address")
    }

    /// A `wss://` socket of `user` (the load generator's lean client over
    /// tokio-rustls).
    async fn connect(&self, user: u32) -> LeanWs {
        let connector = tls_connector(&self.ca).expect("client TLS config");
        let stream = self.tls_stream(&connector).await;
        self.upgrade(stream, user).await
    }

    /// A TLS connection to the gateway made with `connector`, not upgraded.
    async fn tls_stream(&self, connector: &tokio_rustls::TlsConnector) -> LeanStream {
        let tcp = tokio::net::TcpStream::connect(self.address())
            .await
            .expect("tcp");
        LeanStream::tls(connector, "127.0.0.1", tcp)
            .await
            .expect("TLS handshake")
    }

    /// The WebSocket upgrade of `user` over `stream`.
    async fn upgrade(&self, stream: LeanStream, user: u32) -> LeanWs {
        LeanWs::handshake(
            stream,
            self.gateway.listen_addr(),
            &format!("/ws/notifications/?token={}", token(user)),
        )
        .await
        .expect("upgrade")
    }

    async fn notify(&mut self, user: u32, message: &str) {
        self.publisher
            .group_send(&format!("user_{user}"), notification(message))
            .await
            .expect("group_send");
    }

    /// The gateway is still running and never panicked.
    fn assert_unharmed(&mut self) {
        assert!(
            self.gateway.try_exit_status().is_none(),
            "the gateway is still running"
        );
        let log = self.gateway.log_text();
        assert!(!log.contains("panicked"), "no panic in the log:\n{log}");
    }
}

async fn next_text(socket: &mut LeanWs) -> String {
    let frame = tokio::time::timeout(WAIT, socket.next_text())
        .await
        .expect("a frame in time")
        .expect("read")
        .expect("the socket is open");
    String::from_utf8(frame.to_vec()).expect("utf-8")
}

/// A JSON string of `length` characters, different at every position.
fn long_text(length: usize, seed: usize) -> String {
    (0..length)
        .map(|i| char::from(b'a' + ((i * 7 + seed) % 26) as u8))
        .collect()
}

#[tokio::test]
async fn events_through_channels_redis_reach_wss_clients_on_both_drivers() {
    for driver in ["direct", "actix-ws"] {
        let mut stack = wss_stack("wss-both", driver).await;
        let mut socket = stack.connect(41).await;
        stack.notify(41, r#""over wss""#).await;
        assert_eq!(
            next_text(&mut socket).await,
            r#"{"message": "over wss"}"#,
            "{driver}"
        );
        // 200 KiB: a frame over more than a dozen TLS records.
        let text = long_text(200 * 1024, 3);
        stack.notify(41, &format!("\"{text}\"")).await;
        assert_eq!(
            next_text(&mut socket).await,
            format!(r#"{{"message": "{text}"}}"#),
            "{driver}: the large frame arrived whole"
        );
        socket.close().await.expect("clean close");
        stack.assert_unharmed();
    }
}

/// A client that speaks TLS 1.2 only gets its events as well.
#[tokio::test]
async fn a_tls_1_2_client_is_served() {
    let mut stack = wss_stack("wss-tls12", "direct").await;
    let config =
        tls_client_config_with(&stack.ca, &[&rustls::version::TLS12]).expect("TLS 1.2 config");
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = stack.tls_stream(&connector).await;
    let LeanStream::Tls(tls) = &stream else {
        panic!("a TLS stream");
    };
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let mut socket = stack.upgrade(stream, 47).await;
    stack.notify(47, r#""over TLS 1.2""#).await;
    assert_eq!(
        next_text(&mut socket).await,
        r#"{"message": "over TLS 1.2"}"#
    );
    stack.assert_unharmed();
}

/// A client that stops reading while a megabyte of events is published:
/// the gateway's writes wait for it, and once it reads again every frame
/// arrives whole and in order.
#[tokio::test]
async fn a_wss_client_that_stops_reading_gets_everything_once_it_reads() {
    let mut stack = wss_stack("wss-stall", "direct").await;
    let mut socket = stack.connect(42).await;
    let count = 40;
    let texts: Vec<String> = (0..count).map(|i| long_text(25 * 1024, i)).collect();
    for text in &texts {
        stack.notify(42, &format!("\"{text}\"")).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (index, text) in texts.iter().enumerate() {
        assert_eq!(
            next_text(&mut socket).await,
            format!(r#"{{"message": "{text}"}}"#),
            "frame {index}"
        );
    }
    stack.assert_unharmed();
}

/// A blocking TCP connection whose every write sends at most `chunk` bytes
/// and pauses: the gateway sees TLS records arrive in pieces.
struct Trickle {
    tcp: std::net::TcpStream,
    chunk: usize,
}

impl Read for Trickle {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.read(buffer)
    }
}

impl Write for Trickle {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let now = bytes.len().min(self.chunk);
        self.tcp.write_all(&bytes[..now])?;
        self.tcp.flush()?;
        std::thread::sleep(Duration::from_millis(1));
        Ok(now)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

type BlockingWss = rustls::StreamOwned<rustls::ClientConnection, Trickle>;

/// A blocking TLS client (rustls) whose writes trickle `chunk` bytes at a
/// time, upgraded to a WebSocket of `user`.
fn blocking_wss(address: SocketAddr, ca: &Path, user: u32, chunk: usize) -> BlockingWss {
    let config: Arc<rustls::ClientConfig> = tls_client_config(ca).expect("client TLS config");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(config, name).expect("client connection");
    let tcp = std::net::TcpStream::connect(address).expect("tcp");
    tcp.set_nodelay(true).expect("nodelay");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut stream = rustls::StreamOwned::new(conn, Trickle { tcp, chunk });
    let request = format!(
        "GET /ws/notifications/?token={} HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        token(user)
    );
    stream.write_all(request.as_bytes()).expect("request");
    stream.flush().expect("flush");
    let head = read_until(&mut stream, b"\r\n\r\n");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "upgraded: {head}");
    stream
}

/// Reads until `needle` has arrived; everything read up to it.
fn read_until(stream: &mut impl Read, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buffer = [0u8; 4096];
    while !got.windows(needle.len()).any(|window| window == needle) {
        let read = stream.read(&mut buffer).expect("read before the timeout");
        assert!(read > 0, "the connection ended before {needle:?}");
        got.extend_from_slice(&buffer[..read]);
    }
    got
}

/// Every TLS byte of the handshake, the upgrade request and a ping comes
/// in pieces of 3 bytes: the gateway keeps the partial records and serves
/// the socket as any other.
#[tokio::test]
async fn a_client_whose_records_arrive_in_pieces_is_served() {
    let mut stack = wss_stack("wss-trickle", "direct").await;
    let (address, ca) = (stack.address(), stack.ca.clone());
    let mut stream = tokio::task::spawn_blocking(move || blocking_wss(address, &ca, 43, 3))
        .await
        .expect("client thread");
    stack.notify(43, r#""in pieces""#).await;
    let stream = tokio::task::spawn_blocking(move || {
        read_until(&mut stream, br#"{"message": "in pieces"}"#);
        // A masked ping ("hi"), trickled too: the pong comes back.
        let mask = [1u8, 2, 3, 4];
        let ping = [0x89, 0x82, 1, 2, 3, 4, b'h' ^ mask[0], b'i' ^ mask[1]];
        stream.write_all(&ping).expect("ping");
        stream.flush().expect("flush");
        read_until(&mut stream, &[0x8a, 2, b'h', b'i']);
        stream
    })
    .await
    .expect("client thread");
    drop(stream);
    stack.assert_unharmed();
}

/// The gateway ended the connection (an end or a reset), rather than the
/// read timing out on a connection left open.
fn assert_closed(read: std::io::Result<usize>) {
    if let Err(error) = read {
        assert!(
            !matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the connection was left open: {error}"
        );
    }
}

/// Garbage instead of a ClientHello, a ClientHello cut short by the
/// client leaving, and garbage on the wire after a good handshake and
/// upgrade: each connection is closed, the gateway does not panic, and a
/// socket connected all along keeps receiving.
#[tokio::test]
async fn bad_tls_input_closes_only_its_own_connection() {
    let mut stack = wss_stack("wss-bad", "direct").await;
    let mut witness = stack.connect(44).await;
    let address = stack.address();
    let ca = stack.ca.clone();
    tokio::task::spawn_blocking(move || {
        // Not TLS at all: plain HTTP on the TLS port.
        let mut tcp = std::net::TcpStream::connect(address).expect("tcp");
        tcp.set_read_timeout(Some(WAIT)).expect("timeout");
        tcp.write_all(b"GET /ws/notifications/ HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("write");
        let mut rest = Vec::new();
        assert_closed(tcp.read_to_end(&mut rest));
        assert!(rest.len() < 64, "no HTTP answer on the TLS port: {rest:?}");

        // Half a ClientHello, then the client leaves.
        let config = tls_client_config(&ca).expect("client TLS config");
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
        let mut conn = rustls::ClientConnection::new(config, name).expect("client");
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).expect("client hello");
        let mut tcp = std::net::TcpStream::connect(address).expect("tcp");
        tcp.write_all(&hello[..hello.len() / 2]).expect("write");
        drop(tcp);

        // A good handshake and upgrade, then bytes that are no TLS record.
        let mut stream = blocking_wss(address, &ca, 45, 4096);
        stream
            .sock
            .tcp
            .write_all(&[0x17, 0x03, 0x03, 0x00, 0x20, 0xde, 0xad, 0xbe, 0xef])
            .expect("garbage");
        stream.sock.tcp.write_all(&[0u8; 64]).expect("garbage");
        let mut rest = Vec::new();
        assert_closed(stream.sock.tcp.read_to_end(&mut rest));
    })
    .await
    .expect("client thread");
    stack.notify(44, r#""still here""#).await;
    assert_eq!(
        next_text(&mut witness).await,
        r#"{"message": "still here"}"#
    );
    // New connections are still served.
    let mut fresh = stack.connect(46).await;
    stack.notify(46, r#""new""#).await;
    assert_eq!(next_text(&mut fresh).await, r#"{"message": "new"}"#);
    stack.assert_unharmed();
}
