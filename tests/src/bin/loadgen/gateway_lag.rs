//! The gateway's own account of routing lag (`--gateway-admin`): its
//! `gateway_publish_lag_seconds` histogram read from the admin listener's
//! metrics before and after a step, and the quantiles of the difference.
//! It only reads the metrics page: it must not call any other admin
//! endpoint, and a gateway without one reads as no reading, not an error.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::net::TcpStream;

/// The gateway's cumulative `gateway_publish_lag_seconds` buckets
/// (upper bound in seconds, count), read from its admin listener.
pub(crate) async fn publish_lag_buckets(admin: SocketAddr) -> Option<Vec<(f64, u64)>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(admin))
        .await
        .ok()?
        .ok()?;
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {admin}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    let buckets: Vec<(f64, u64)> = body
        .lines()
        .filter_map(|line| line.strip_prefix("gateway_publish_lag_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (bound, count) = rest.split_once("\"} ")?;
            let bound = if bound == "+Inf" {
                f64::INFINITY
            } else {
                bound.parse().ok()?
            };
            Some((bound, count.trim().parse().ok()?))
        })
        .collect();
    (!buckets.is_empty()).then_some(buckets)
}

/// Quantiles of the routing lag between two bucket readings, as the upper
/// bound (ms) of the bucket each falls in.
pub(crate) fn lag_quantiles(before: &[(f64, u64)], after: &[(f64, u64)]) -> serde_json::Value {
    let deltas: Vec<(f64, u64)> = after
        .iter()
        .map(|&(bound, count)| {
            let earlier = before
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0, |(_, c)| *c);
            (bound, count.saturating_sub(earlier))
        })
        .collect();
    let total = deltas.last().map_or(0, |(_, count)| *count);
    let at = |quantile: f64| {
        let wanted = (quantile * total as f64).ceil() as u64;
        deltas
            .iter()
            .find(|(_, count)| *count >= wanted)
            .map(|(bound, _)| {
                if bound.is_finite() {
                    json!(bound * 1000.0)
                } else {
                    json!("inf")
                }
            })
    };
    json!({
        "messages": total,
        "p50_ms_at_most": at(0.50),
        "p99_ms_at_most": at(0.99),
        "p999_ms_at_most": at(0.999),
    })
}
