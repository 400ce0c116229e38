//! HTTP: the routes of the public and the admin listener.
//!
//! Owns the WebSocket handshake (check the origin, authenticate, join the
//! user's group in Redis, then upgrade, so nothing published after the
//! upgrade can be missed) and the plain HTTP answers of `/healthz`, `/readyz`
//! and `/metrics`. It must not log request URIs, query strings or
//! `Sec-WebSocket-Protocol` values: they may carry a token.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use tracing::Instrument;

use crate::credentials::{TokenLookup, BEARER_PROTOCOL};
use crate::glob::glob_match;
use crate::health::Health;
use crate::jwtverify::{AuthError, TokenVerifier};
use crate::layer::Layer;
use crate::limits::{Limits, Refusal};
use crate::metrics::{ConnectResult, Metrics};
use crate::origin::{OriginPolicy, OriginVerdict};
use crate::outbox::Outbox;
use crate::registry::Registry;
use crate::socket::{self, Holder, Membership, SocketSettings};

/// Everything a handshake needs, shared by all workers.
pub struct Gateway {
    pub verifier: Arc<TokenVerifier>,
    pub limits: Arc<Limits>,
    pub origins: OriginPolicy,
    pub token_query_param: String,
    pub token_cookie: String,
    pub user_group_template: String,
    pub allowed_groups: Vec<String>,
    pub registry: Arc<Registry>,
    pub layer: Arc<Layer>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
    pub socket_settings: Arc<SocketSettings>,
    pub outbound_queue: usize,
    pub max_inbound_frame: usize,
    pub join_timeout: Duration,
}

pub fn public_routes(config: &mut web::ServiceConfig) {
    config
        .route("/ws/notifications/", web::get().to(notifications_socket))
        .route("/ws/notifications", web::get().to(notifications_socket))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

pub fn admin_routes(config: &mut web::ServiceConfig) {
    config
        .route("/metrics", web::get().to(metrics))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

fn refusal(status: StatusCode, error: &str, reason: &str) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header(("Cache-Control", "no-store"))
        .json(serde_json::json!({ "error": error, "reason": reason }))
}

fn unavailable() -> HttpResponse {
    refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "notifications are unavailable right now; retry later",
    )
}

/// 503 when this process is full (another pod may have room), 429 for the
/// limits a client ran into itself.
fn limited(gateway: &Gateway, why: Refusal, request: &HttpRequest) -> HttpResponse {
    gateway.metrics.connect(ConnectResult::Limited(why));
    tracing::warn!(reason = why.label(), peer = %peer(request), "handshake refused: limit reached");
    let status = match why {
        Refusal::ProcessFull => StatusCode::SERVICE_UNAVAILABLE,
        Refusal::ConnectRate | Refusal::UserFull | Refusal::AddressFull => {
            StatusCode::TOO_MANY_REQUESTS
        }
    };
    refusal(status, "limited", why.label())
}

fn peer_ip(request: &HttpRequest) -> std::net::IpAddr {
    request
        .peer_addr()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |address| address.ip())
}

fn peer(request: &HttpRequest) -> String {
    request
        .peer_addr()
        .map_or_else(|| "unknown".to_string(), |address| address.ip().to_string())
}

async fn notifications_socket(
    request: HttpRequest,
    body: web::Payload,
    gateway: web::Data<Gateway>,
) -> HttpResponse {
    let metrics = &gateway.metrics;
    if gateway.health.is_draining() {
        metrics.connect(ConnectResult::Draining);
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "server is shutting down",
        );
    }

    // Before any token is looked at: with cookie auth the browser attaches
    // the user's cookie to a socket opened by any site, so only the origin
    // tells the user's own pages from a hijacking one.
    let verdict = gateway.origins.check(
        request
            .headers()
            .get_all(actix_web::http::header::ORIGIN)
            .map(|value| value.to_str().ok()),
    );
    if verdict != OriginVerdict::Allowed {
        metrics.connect(ConnectResult::ForbiddenOrigin);
        tracing::warn!(reason = verdict.label(), peer = %peer(&request), "handshake refused: origin not allowed");
        return refusal(StatusCode::FORBIDDEN, "forbidden", verdict.label());
    }

    // Cheap refusals before any token work: the connect rate, and a client
    // address that already holds its share.
    let address = gateway
        .limits
        .client_address(peer_ip(&request), request.headers());
    if let Err(why) = gateway.limits.precheck(address) {
        return limited(&gateway, why, &request);
    }

    let lookup = TokenLookup {
        query_param: &gateway.token_query_param,
        cookie: &gateway.token_cookie,
    };
    let identity = lookup
        .find(request.headers(), request.query_string())
        .ok_or(AuthError::MissingToken)
        .and_then(|(token, _source)| gateway.verifier.verify(&token));
    let group = identity.and_then(|identity| {
        let group = gateway
            .user_group_template
            .replace("{user_id}", &identity.user_id);
        if shared_proto::names::is_valid_group_name(&group) {
            Ok((identity, group))
        } else {
            Err(AuthError::InvalidUserId)
        }
    });
    let (identity, group) = match group {
        Ok(found) => found,
        Err(error) => {
            metrics.connect(ConnectResult::Unauthorized);
            metrics.auth_failure(error.label());
            tracing::warn!(reason = error.label(), peer = %peer(&request), "handshake refused: {error}");
            return refusal(StatusCode::UNAUTHORIZED, "unauthorized", error.label());
        }
    };

    let admission = match gateway.limits.admit(&identity.user_id, address) {
        Ok(admission) => admission,
        Err(why) => return limited(&gateway, why, &request),
    };

    // Without Redis no join can succeed: say so at once rather than after
    // `join_timeout`, and keep doomed writes out of the client's queue.
    if !gateway.health.redis_connected() {
        metrics.connect(ConnectResult::RedisUnavailable);
        return unavailable();
    }

    // Selecting `bearer` (never the token entry) answers a client that sent
    // its token as a subprotocol; others offered nothing we select.
    let (response, session, messages) =
        match actix_ws::handle_with_protocols(&request, body, &[BEARER_PROTOCOL]) {
            Ok(parts) => parts,
            Err(error) => {
                metrics.connect(ConnectResult::BadHandshake);
                tracing::debug!(%error, "not a WebSocket handshake");
                return refusal(
                    StatusCode::BAD_REQUEST,
                    "bad_handshake",
                    "expected a WebSocket upgrade",
                );
            }
        };

    // Extra groups only as granted by the token and allowed by a pattern.
    let mut groups: Vec<Arc<str>> = vec![Arc::from(group.as_str())];
    for extra in &identity.groups {
        let allowed = extra.len() < 100
            && shared_proto::names::is_valid_group_name(extra)
            && gateway
                .allowed_groups
                .iter()
                .any(|pattern| glob_match(pattern.as_bytes(), extra.as_bytes()));
        if !allowed {
            metrics.connect(ConnectResult::ForbiddenGroup);
            tracing::warn!(peer = %peer(&request), "handshake refused: token asks for a group no pattern allows");
            return refusal(StatusCode::FORBIDDEN, "forbidden", "group_not_allowed");
        }
        if !groups.iter().any(|known| known.as_ref() == extra) {
            groups.push(Arc::from(extra.as_str()));
        }
    }

    let outbox = Arc::new(Outbox::new(gateway.outbound_queue));
    let (conn, _transitions) = gateway.registry.register(outbox.clone(), &groups);
    metrics.sockets_open.inc();
    let channel = gateway.registry.naming().channel(conn);
    let membership = Membership {
        conn,
        channel: channel.clone(),
        groups,
        registry: gateway.registry.clone(),
        layer: gateway.layer.clone(),
        metrics: gateway.metrics.clone(),
        _admission: admission,
    };
    let span =
        tracing::info_span!("socket", conn = %format_args!("{conn:x}"), user = %identity.user_id);

    // Join before the upgrade completes, like the Channels consumer's
    // group_add before accept(): a message sent the moment the socket opens
    // is already addressed to it.
    let joined = tokio::time::timeout(
        gateway.join_timeout,
        gateway.layer.join(&membership.groups, &channel),
    )
    .instrument(span.clone())
    .await;
    if let Err(reason) = joined
        .map_err(|_| "timed out".to_string())
        .and_then(|joined| joined.map_err(|error| error.to_string()))
    {
        metrics.connect(ConnectResult::RedisUnavailable);
        span.in_scope(|| tracing::warn!(%reason, "group join failed; refusing the socket"));
        drop(membership);
        return unavailable();
    }

    metrics.connect(ConnectResult::Accepted);
    span.in_scope(|| tracing::info!(group = %group, "socket opened"));
    socket::spawn(
        session,
        messages.max_frame_size(gateway.max_inbound_frame),
        outbox,
        membership,
        gateway.socket_settings.clone(),
        Holder {
            user_id: identity.user_id,
            expires_at: identity.expires_at,
        },
        span,
    );
    response
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

async fn readyz(gateway: web::Data<Gateway>) -> HttpResponse {
    match gateway.health.readiness() {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
        Err(reason) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("not ready: {}\n", reason.label())),
    }
}

async fn metrics(gateway: web::Data<Gateway>) -> HttpResponse {
    // Gauges that are cheaper to read at scrape time than to keep current.
    gateway
        .metrics
        .groups_local
        .set(gateway.registry.group_count() as i64);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(gateway.metrics.render())
}
