//! HTTP: the routes of the public and the admin listener.
//!
//! Owns the WebSocket handshake (check the origin, authenticate, join the
//! user's group in Redis, then upgrade, so nothing published after the
//! upgrade can be missed) and the plain HTTP answers of `/healthz`, `/readyz`
//! and `/metrics`. It must not log request URIs, query strings or
//! `Sec-WebSocket-Protocol` values: they may carry a token.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{CloseReason, Message, MessageStream, Session};
use shared_proto::close::CloseCode;
use shared_proto::frame::{parse_client_frame, ClientFrame};
use tracing::Instrument;

use crate::credentials::{TokenLookup, BEARER_PROTOCOL};
use crate::glob::glob_match;
use crate::health::Health;
use crate::jwtverify::{AuthError, Identity, TokenVerifier};
use crate::layer::Layer;
use crate::limits::{Limits, Refusal};
use crate::metrics::{ConnectResult, Metrics};
use crate::origin::{OriginPolicy, OriginVerdict};
use crate::outbox::Outbox;
use crate::registry::Registry;
use crate::session::{SessionAuth, SessionError};
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
    /// Asks the backend who a session cookie belongs to (`auth.session_url`).
    pub session: Option<SessionAuth>,
    /// With no token in the handshake, how long to wait for `{"token": ...}`
    /// as the first frame; `None` refuses such handshakes with 401.
    pub first_message_timeout: Option<Duration>,
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

fn peer_ip(request: &HttpRequest) -> IpAddr {
    request
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |address| address.ip())
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
        let rejection = Rejection::Limited(why);
        rejection.count(&gateway, &peer(&request));
        return rejection.response();
    }

    let lookup = TokenLookup {
        query_param: &gateway.token_query_param,
        cookie: &gateway.token_cookie,
    };
    let found = lookup.find(request.headers(), request.query_string());
    let cookie = request
        .headers()
        .get(actix_web::http::header::COOKIE)
        .and_then(|value| value.to_str().ok());
    let identity = match (found, &gateway.session, cookie) {
        (Some((token, _source)), _, _) => gateway
            .verifier
            .verify_fetching(&token)
            .await
            .map_err(Rejection::Unauthorized),
        // No token: a Django session cookie, when the backend is asked.
        (None, Some(session), Some(cookie)) => match session.identify(cookie).await {
            Ok(identity) => Ok(identity),
            Err(SessionError::NotLoggedIn) => Err(Rejection::Unauthorized(AuthError::NoSession)),
            Err(SessionError::Unavailable(reason)) => {
                tracing::warn!(%reason, "session check failed; refusing the socket");
                Err(Rejection::Unavailable)
            }
        },
        (None, _, _) => match gateway.first_message_timeout {
            Some(wait) => {
                return authenticate_in_band(request, body, gateway.clone(), address, wait)
            }
            None => Err(Rejection::Unauthorized(AuthError::MissingToken)),
        },
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(rejection) => {
            rejection.count(&gateway, &peer(&request));
            return rejection.response();
        }
    };

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

    // Joined before the 101 answer, like the Channels consumer's group_add
    // before accept(): a message sent the moment the socket opens is
    // already addressed to it.
    match attach(&gateway, identity, address).await {
        Ok(attached) => {
            attached.serve_in_background(session, messages, &gateway);
            response
        }
        Err(rejection) => {
            rejection.count(&gateway, &peer(&request));
            rejection.response()
        }
    }
}

/// Why a verified request could not become a socket.
enum Rejection {
    Unauthorized(AuthError),
    /// The token asks for a group no pattern allows.
    ForbiddenGroup,
    Limited(Refusal),
    /// Redis is down or did not take the join in time.
    Unavailable,
}

impl Rejection {
    fn count(&self, gateway: &Gateway, peer: &str) {
        let metrics = &gateway.metrics;
        match self {
            Rejection::Unauthorized(error) => {
                metrics.connect(ConnectResult::Unauthorized);
                metrics.auth_failure(error.label());
                tracing::warn!(reason = error.label(), %peer, "handshake refused: {error}");
            }
            Rejection::ForbiddenGroup => {
                metrics.connect(ConnectResult::ForbiddenGroup);
                tracing::warn!(%peer, "handshake refused: token asks for a group no pattern allows");
            }
            Rejection::Limited(why) => {
                metrics.connect(ConnectResult::Limited(*why));
                tracing::warn!(reason = why.label(), %peer, "handshake refused: limit reached");
            }
            Rejection::Unavailable => metrics.connect(ConnectResult::RedisUnavailable),
        }
    }

    /// The HTTP answer before an upgrade.
    fn response(&self) -> HttpResponse {
        match self {
            Rejection::Unauthorized(error) => {
                refusal(StatusCode::UNAUTHORIZED, "unauthorized", error.label())
            }
            Rejection::ForbiddenGroup => {
                refusal(StatusCode::FORBIDDEN, "forbidden", "group_not_allowed")
            }
            // 503 when this process is full (another pod may have room),
            // 429 for the limits a client ran into itself.
            Rejection::Limited(Refusal::ProcessFull) => refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "limited",
                Refusal::ProcessFull.label(),
            ),
            Rejection::Limited(why) => {
                refusal(StatusCode::TOO_MANY_REQUESTS, "limited", why.label())
            }
            Rejection::Unavailable => unavailable(),
        }
    }

    /// The close code after an upgrade (first-message authentication).
    fn close_code(&self) -> CloseCode {
        match self {
            Rejection::Unauthorized(_) => CloseCode::Unauthorized,
            Rejection::ForbiddenGroup => CloseCode::Forbidden,
            Rejection::Limited(_) => CloseCode::RateLimited,
            Rejection::Unavailable => CloseCode::InternalError,
        }
    }
}

/// A socket admitted, registered and joined in Redis, ready to serve.
struct Attached {
    outbox: Arc<Outbox>,
    membership: Membership,
    holder: Holder,
    span: tracing::Span,
}

impl Attached {
    fn serve_in_background(self, session: Session, messages: MessageStream, gateway: &Gateway) {
        socket::spawn(
            session,
            messages.max_frame_size(gateway.max_inbound_frame),
            self.outbox,
            self.membership,
            gateway.socket_settings.clone(),
            self.holder,
            self.span,
        );
    }
}

/// Authorises a verified identity's groups, takes its share of the limits,
/// registers the socket and joins its groups in Redis.
async fn attach(
    gateway: &Gateway,
    identity: Identity,
    address: IpAddr,
) -> Result<Attached, Rejection> {
    let group = gateway
        .user_group_template
        .replace("{user_id}", &identity.user_id);
    if !shared_proto::names::is_valid_group_name(&group) {
        return Err(Rejection::Unauthorized(AuthError::InvalidUserId));
    }
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
            return Err(Rejection::ForbiddenGroup);
        }
        if !groups.iter().any(|known| known.as_ref() == extra) {
            groups.push(Arc::from(extra.as_str()));
        }
    }
    let admission = gateway
        .limits
        .admit(&identity.user_id, address)
        .map_err(Rejection::Limited)?;
    // Without Redis no join can succeed: say so at once rather than after
    // `join_timeout`, and keep doomed writes out of the client's queue.
    if !gateway.health.redis_connected() {
        return Err(Rejection::Unavailable);
    }

    let outbox = Arc::new(Outbox::new(gateway.outbound_queue));
    let (conn, _transitions) = gateway.registry.register(outbox.clone(), &groups);
    gateway.metrics.sockets_open.inc();
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
        span.in_scope(|| tracing::warn!(%reason, "group join failed; refusing the socket"));
        return Err(Rejection::Unavailable);
    }
    gateway.metrics.connect(ConnectResult::Accepted);
    span.in_scope(|| tracing::info!(group = %group, "socket opened"));
    Ok(Attached {
        outbox,
        membership,
        holder: Holder {
            user_id: identity.user_id,
            expires_at: identity.expires_at,
        },
        span,
    })
}

/// Upgrades a handshake that carried no token and waits up to `wait` for
/// `{"token": "..."}` as the first frame, so browsers can keep tokens out of
/// URLs. The socket joins its groups only after that, so nothing is
/// delivered before the client has proved who it is.
fn authenticate_in_band(
    request: HttpRequest,
    body: web::Payload,
    gateway: web::Data<Gateway>,
    address: IpAddr,
    wait: Duration,
) -> HttpResponse {
    let (response, mut session, messages) =
        match actix_ws::handle_with_protocols(&request, body, &[BEARER_PROTOCOL]) {
            Ok(parts) => parts,
            Err(_) => {
                gateway.metrics.connect(ConnectResult::BadHandshake);
                return refusal(
                    StatusCode::BAD_REQUEST,
                    "bad_handshake",
                    "expected a WebSocket upgrade",
                );
            }
        };
    let peer = peer(&request);
    actix_web::rt::spawn(async move {
        let mut messages = messages.max_frame_size(gateway.max_inbound_frame);
        let token = tokio::time::timeout(wait, first_token(&mut session, &mut messages))
            .await
            .ok()
            .flatten();
        let attached = match token {
            None => Err(Rejection::Unauthorized(AuthError::MissingToken)),
            Some(token) => match gateway.verifier.verify_fetching(&token).await {
                Ok(identity) => attach(&gateway, identity, address).await,
                Err(error) => Err(Rejection::Unauthorized(error)),
            },
        };
        match attached {
            Ok(attached) => {
                if session.text(r#"{"type": "authenticated"}"#).await.is_ok() {
                    attached.serve_in_background(session, messages, &gateway);
                }
            }
            Err(rejection) => {
                rejection.count(&gateway, &peer);
                let code = rejection.close_code();
                let close = CloseReason {
                    code: actix_ws::CloseCode::Other(code.as_u16()),
                    description: Some(code.reason().to_string()),
                };
                let _ = session.close(Some(close)).await;
            }
        }
    });
    response
}

/// The token of the first `{"token": ...}` frame; `None` when the client
/// says anything else first or goes away.
async fn first_token(session: &mut Session, messages: &mut MessageStream) -> Option<String> {
    loop {
        match messages.recv().await? {
            Ok(Message::Text(text)) => {
                return match parse_client_frame(&text) {
                    Ok(ClientFrame::Auth { token }) => Some(token),
                    _ => None,
                }
            }
            Ok(Message::Ping(bytes)) => {
                session.pong(&bytes).await.ok()?;
            }
            Ok(Message::Pong(_) | Message::Nop) => {}
            _ => return None,
        }
    }
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
