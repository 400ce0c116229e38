//! Pub/sub layer: a re-subscription Redis refuses after a reconnect is
//! retried until it holds. Redis' ACLs make it fail deterministically:
//! `ACL SETUSER default resetchannels` closes every connection subscribed
//! to a channel (the gateway's subscriber reconnects) and refuses
//! `SUBSCRIBE` with NOPERM until `allchannels` gives the channels back.
//! Meanwhile the metrics and readiness show the gap; afterwards the gateway
//! has subscribed again by itself and the real channels_redis pub/sub layer's
//! messages arrive.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tests::GatewayProcess;

async fn subscriptions(gateway: &GatewayProcess, state: &str) -> f64 {
    metric(
        gateway,
        &format!("gateway_pubsub_subscriptions{{state=\"{state}\"}} "),
    )
    .await
}

/// Polls until `check` holds, within `limit`; shows the gateway's log if
/// it never does.
async fn eventually<F, Fut>(gateway: &GatewayProcess, what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        if Instant::now() >= deadline {
            let (_, metrics) = gateway.admin_get("/metrics").await.unwrap_or_default();
            panic!(
                "{what} within {limit:?}\n--- gateway log\n{}\n--- metrics\n{metrics}",
                gateway.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_refused_resubscription_is_retried_until_it_holds_and_delivery_resumes() {
    let mut stack = layer_stack("pubsub", |config| config).await;
    let mut socket = connect(&stack.gateway, 40).await;
    stack.notify("user_40", r#""before""#).await;
    expect_frame(&mut socket, r#"{"message": "before"}"#).await;
    // The user's group and the process's canary group.
    assert_eq!(subscriptions(&stack.gateway, "wanted").await, 2.0);
    assert_eq!(subscriptions(&stack.gateway, "held").await, 2.0);
    assert_eq!(subscriptions(&stack.gateway, "missing").await, 0.0);
    let failures_before = metric(
        &stack.gateway,
        "gateway_pubsub_subscription_failures_total ",
    )
    .await;

    stack
        .redis
        .cmd(&["ACL", "SETUSER", "default", "resetchannels"])
        .await
        .expect("ACL SETUSER");
    // Redis dropped the subscriber; it reconnects and is refused.
    eventually(&stack.gateway, "subscriptions missing", WAIT, || async {
        subscriptions(&stack.gateway, "missing").await == 2.0
    })
    .await;
    assert_eq!(subscriptions(&stack.gateway, "held").await, 0.0);
    eventually(
        &stack.gateway,
        "retries",
        Duration::from_secs(10),
        || async {
            metric(
                &stack.gateway,
                "gateway_pubsub_subscription_failures_total ",
            )
            .await
                >= failures_before + 3.0
        },
    )
    .await;
    eventually(
        &stack.gateway,
        "unready for the missing subscriptions",
        Duration::from_secs(10),
        || async {
            let (status, body) = stack.gateway.admin_get("/readyz").await.expect("readyz");
            status == 503 && body.contains("subscriptions_missing")
        },
    )
    .await;
    assert_eq!(
        redis_subscribers(&stack, "user_40").await,
        0,
        "Redis holds no subscription for the user"
    );

    stack
        .redis
        .cmd(&["ACL", "SETUSER", "default", "allchannels"])
        .await
        .expect("ACL SETUSER");
    let restored = Instant::now();
    eventually(
        &stack.gateway,
        "subscribed again",
        Duration::from_secs(10),
        || async {
            subscriptions(&stack.gateway, "held").await == 2.0
                && subscriptions(&stack.gateway, "missing").await == 0.0
        },
    )
    .await;
    assert_eq!(redis_subscribers(&stack, "user_40").await, 1);
    let took = wait_ready(&stack.gateway, true, Duration::from_secs(10)).await;
    eprintln!(
        "subscribed again and ready {:?} after SUBSCRIBE was allowed again",
        restored.elapsed().max(took)
    );

    let mut publisher = layer_publisher("pubsub", &[&stack.redis], json!({})).await;
    publisher
        .group_send("user_40", notification(r#""after""#))
        .await
        .expect("group_send");
    expect_frame(&mut socket, r#"{"message": "after"}"#).await;
    assert!(socket.close_code().is_none(), "the socket stayed open");
}

/// Subscribers Redis has for a user's group channel.
async fn redis_subscribers(stack: &Stack, user: &str) -> u64 {
    stack
        .redis
        .cmd(&["PUBSUB", "NUMSUB", &format!("asgi__group__{user}")])
        .await
        .expect("numsub")
        .get(1)
        .and_then(|count| count.parse().ok())
        .unwrap_or(0)
}
