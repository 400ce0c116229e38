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

use actix_http::RequestHead;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use shared_proto::close::CloseCode;
use shared_proto::frame::{parse_client_frame, ClientFrame};
use tracing::Instrument;

use crate::auth::credentials::{TokenLookup, BEARER_PROTOCOL};
use crate::auth::groups::{GroupError, GroupPolicy};
use crate::auth::session::{SessionAuth, SessionError};
use crate::auth::verify::{AuthError, Identity, TokenVerifier};
use crate::edge::drain;
use crate::edge::frames::Inbound;
use crate::edge::limits::{Admission, Limits};
use crate::edge::origin::{OriginPolicy, OriginVerdict};
use crate::edge::recovery::{Recovery, Since};
use crate::edge::socket::{self, close_reason, Holder, InboundBudget, Membership, SocketSettings};
use crate::edge::transport::{ActixWsTransport, Transport};
use crate::layer::Layer;
use crate::ops::health::Health;
use crate::ops::metrics::Refusal;
use crate::ops::metrics::{ConnectResult, Metrics};
use crate::relay::outbox::{CloseNote, Outbox};
use crate::relay::registry::Registry;

/// Everything a handshake needs, shared by all workers.
pub struct Gateway {
    pub verifier: Arc<TokenVerifier>,
    pub limits: Arc<Limits>,
    pub origins: OriginPolicy,
    pub token_query_param: String,
    pub token_cookie: String,
    /// Which groups a verified identity's socket joins.
    pub groups: Arc<GroupPolicy>,
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
    /// Replays what a reconnecting client missed (`layer.recovery`); without
    /// it `recover=` is ignored and frames stay the consumer's own.
    pub recovery: Option<Recovery>,
    /// The reconnect hint's upper bound for sockets closed by a drain
    /// outside its batches (`server.drain_reconnect_jitter`).
    pub drain_reconnect_jitter: Duration,
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

/// A handshake refused before any upgrade: its status and JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub status: StatusCode,
    pub error: &'static str,
    pub reason: &'static str,
}

impl Refused {
    fn new(status: StatusCode, error: &'static str, reason: &'static str) -> Refused {
        Refused {
            status,
            error,
            reason,
        }
    }

    fn unavailable() -> Refused {
        Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "notifications are unavailable right now; retry later",
        )
    }

    fn bad_handshake() -> Refused {
        Refused::new(
            StatusCode::BAD_REQUEST,
            "bad_handshake",
            "expected a WebSocket upgrade",
        )
    }

    pub(crate) fn not_found() -> Refused {
        Refused::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }

    pub(crate) fn body(&self) -> String {
        serde_json::json!({ "error": self.error, "reason": self.reason }).to_string()
    }

    /// The answer's status line and headers, for either driver.
    pub(crate) fn head(&self) -> actix_http::Response<()> {
        actix_http::Response::build(self.status)
            .insert_header(("Cache-Control", "no-store"))
            .content_type("application/json")
            .finish()
            .drop_body()
    }

    fn response(&self) -> HttpResponse {
        HttpResponse::from(self.head().set_body(self.body())).map_into_boxed_body()
    }
}

/// What a handshake request comes to, before anything is written back.
pub(crate) enum Verdict {
    Refuse(Refused),
    /// Upgrade, then serve as admitted.
    Upgrade(Admitted),
}

/// A handshake that may be upgraded, and what the socket needs after it.
pub(crate) enum Admitted {
    /// Authenticated and joined.
    Joined(Attached),
    /// No credentials: wait this long for `{"token": ...}` first, holding
    /// an anonymous share of the process's and the address's limits.
    AwaitingToken {
        admission: Admission,
        wait: Duration,
        peer: String,
        since: Option<Since>,
    },
}

impl Admitted {
    /// Serves the upgraded socket on a task of its own, whichever driver
    /// carries its frames.
    pub(crate) fn spawn<T: Transport + 'static>(self, transport: T, gateway: Arc<Gateway>) {
        match self {
            Admitted::Joined(attached) => attached.spawn(transport, &gateway),
            Admitted::AwaitingToken {
                admission,
                wait,
                peer,
                since,
            } => {
                actix_web::rt::spawn(async move {
                    let client = Client {
                        admission,
                        peer: &peer,
                        since,
                    };
                    serve_after_authentication(transport, &gateway, client, wait).await;
                });
            }
        }
    }
}

fn peer_ip(head: &RequestHead) -> IpAddr {
    head.peer_addr
        .map_or(IpAddr::from([0, 0, 0, 0]), |address| address.ip())
}

fn peer(head: &RequestHead) -> String {
    head.peer_addr
        .map_or_else(|| "unknown".to_string(), |address| address.ip().to_string())
}

/// The `/ws/notifications/` route for the actix-ws driver (with the direct
/// driver, upgrades never reach a route; plain requests still get their 400).
async fn notifications_socket(
    request: HttpRequest,
    body: web::Payload,
    gateway: web::Data<Gateway>,
) -> HttpResponse {
    let admitted = match decide(&gateway, request.head()).await {
        Verdict::Refuse(refused) => return refused.response(),
        Verdict::Upgrade(admitted) => admitted,
    };
    // Selecting `bearer` (never the token entry) answers a client that sent
    // its token as a subprotocol.
    match actix_ws::handle_with_protocols(&request, body, &[BEARER_PROTOCOL]) {
        Ok((response, session, messages)) => {
            let transport = ActixWsTransport::new(session, messages, gateway.max_inbound_frame);
            admitted.spawn(transport, gateway.into_inner());
            response
        }
        Err(_) => {
            gateway.metrics.connect(ConnectResult::BadHandshake);
            Refused::bad_handshake().response()
        }
    }
}

/// Judges a handshake: draining, origin, limits, credentials, then the
/// socket's groups and its join in Redis. Every refusal is counted here.
pub(crate) async fn decide(gateway: &Gateway, head: &RequestHead) -> Verdict {
    let metrics = &gateway.metrics;
    if gateway.health.is_draining() {
        metrics.connect(ConnectResult::Draining);
        return Verdict::Refuse(Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "server is shutting down",
        ));
    }
    // From here to the verdict the stop waits for this handshake, so if it
    // registers after the drain's list was taken it still gets its 1001.
    let _in_flight = gateway.health.handshake_started();

    // Before any token is looked at: with cookie auth the browser attaches
    // the user's cookie to a socket opened by any site, so only the origin
    // tells the user's own pages from a hijacking one.
    let verdict = gateway.origins.check(
        head.headers()
            .get_all(actix_web::http::header::ORIGIN)
            .map(|value| value.to_str().ok()),
    );
    if verdict != OriginVerdict::Allowed {
        metrics.connect(ConnectResult::ForbiddenOrigin);
        tracing::warn!(reason = verdict.label(), peer = %peer(head), "handshake refused: origin not allowed");
        return Verdict::Refuse(Refused::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            verdict.label(),
        ));
    }

    // Cheap refusals before any token work: the connect rate, and a client
    // address that already holds its share.
    let address = gateway.limits.client_address(peer_ip(head), head.headers());
    if let Err(why) = gateway.limits.precheck(address) {
        return Verdict::Refuse(Rejection::Limited(why).refuse(gateway, head));
    }

    let lookup = TokenLookup {
        query_param: &gateway.token_query_param,
        cookie: &gateway.token_cookie,
    };
    let query = head.uri.query().unwrap_or("");
    let since = gateway
        .recovery
        .as_ref()
        .and_then(|_| Since::from_query(query));
    let found = lookup.find(head.headers(), query);
    let cookie = head
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
                if actix_http::ws::verify_handshake(head).is_err() {
                    metrics.connect(ConnectResult::BadHandshake);
                    return Verdict::Refuse(Refused::bad_handshake());
                }
                // Upgraded before anyone is known: the socket still counts
                // against the process and its address until it ends.
                let admission = match gateway.limits.admit_anonymous(address) {
                    Ok(admission) => admission,
                    Err(why) => {
                        return Verdict::Refuse(Rejection::Limited(why).refuse(gateway, head))
                    }
                };
                return Verdict::Upgrade(Admitted::AwaitingToken {
                    admission,
                    wait,
                    peer: peer(head),
                    since,
                });
            }
            None => Err(Rejection::Unauthorized(AuthError::MissingToken)),
        },
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(rejection) => return Verdict::Refuse(rejection.refuse(gateway, head)),
    };
    if actix_http::ws::verify_handshake(head).is_err() {
        metrics.connect(ConnectResult::BadHandshake);
        tracing::debug!("not a WebSocket handshake");
        return Verdict::Refuse(Refused::bad_handshake());
    }

    // Joined before the 101 answer, like the Channels consumer's group_add
    // before accept(): a message sent the moment the socket opens is
    // already addressed to it.
    match attach(gateway, identity, Seat::Free(address), since).await {
        Ok(attached) => Verdict::Upgrade(Admitted::Joined(attached)),
        Err(rejection) => Verdict::Refuse(rejection.refuse(gateway, head)),
    }
}

/// The 101 answer to a verified handshake; selects the `bearer`
/// subprotocol when the client offered it (never the token entry).
pub(crate) fn switching_protocols(head: &RequestHead) -> actix_http::Response<()> {
    let mut response = actix_http::ws::handshake_response(head);
    if crate::auth::credentials::offers_bearer_protocol(head.headers()) {
        response.insert_header((
            actix_web::http::header::SEC_WEBSOCKET_PROTOCOL,
            BEARER_PROTOCOL,
        ));
    }
    response.finish().drop_body()
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

    /// Counts the rejection and gives the HTTP answer before an upgrade.
    fn refuse(&self, gateway: &Gateway, head: &RequestHead) -> Refused {
        self.count(gateway, &peer(head));
        match self {
            Rejection::Unauthorized(error) => {
                Refused::new(StatusCode::UNAUTHORIZED, "unauthorized", error.label())
            }
            Rejection::ForbiddenGroup => {
                Refused::new(StatusCode::FORBIDDEN, "forbidden", "group_not_allowed")
            }
            // 503 when this process is full (another pod may have room),
            // 429 for the limits a client ran into itself.
            Rejection::Limited(Refusal::ProcessFull) => Refused::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "limited",
                Refusal::ProcessFull.label(),
            ),
            Rejection::Limited(why) => {
                Refused::new(StatusCode::TOO_MANY_REQUESTS, "limited", why.label())
            }
            Rejection::Unavailable => Refused::unavailable(),
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
pub(crate) struct Attached {
    outbox: Arc<Outbox>,
    membership: Membership,
    holder: Holder,
    /// What a recovering socket is sent before anything else.
    preface: Vec<bytestring::ByteString>,
    span: tracing::Span,
}

impl Attached {
    /// Serves the socket on this task until it ends.
    pub(crate) async fn serve<T: Transport>(self, transport: T, gateway: &Gateway) {
        socket::serve(
            transport,
            self.outbox,
            self.membership,
            gateway.socket_settings.clone(),
            self.holder,
            self.preface,
        )
        .instrument(self.span)
        .await;
    }

    /// Serves the socket on a task of its own.
    fn spawn<T: Transport + 'static>(self, transport: T, gateway: &Gateway) {
        socket::spawn(
            transport,
            self.outbox,
            self.membership,
            gateway.socket_settings.clone(),
            self.holder,
            self.preface,
            self.span,
        );
    }
}

/// Where a verified socket's share of the limits comes from.
enum Seat {
    /// Nothing taken yet, from this client address.
    Free(IpAddr),
    /// The anonymous share a first-message socket held while it waited.
    Held(Admission),
}

impl Seat {
    fn take(self, limits: &Arc<Limits>, user: &str) -> Result<Admission, Refusal> {
        match self {
            Seat::Free(address) => limits.admit(user, address),
            Seat::Held(admission) => admission.identify(user),
        }
    }
}

/// Authorises a verified identity's groups, takes its share of the limits,
/// registers the socket and joins its groups in Redis; a socket asking for
/// recovery then gets what it missed ready to send (`recovery`).
async fn attach(
    gateway: &Gateway,
    identity: Identity,
    seat: Seat,
    since: Option<Since>,
) -> Result<Attached, Rejection> {
    let groups = gateway
        .groups
        .groups_for(&identity)
        .map_err(|error| match error {
            GroupError::InvalidUserId => Rejection::Unauthorized(AuthError::InvalidUserId),
            GroupError::NotAllowed => Rejection::ForbiddenGroup,
        })?;
    let admission = seat
        .take(&gateway.limits, &identity.user_id)
        .map_err(Rejection::Limited)?;
    // Without Redis no join can succeed: say so at once rather than after
    // `join_timeout`, and keep doomed writes out of the client's queue.
    if !gateway.health.redis_connected() {
        return Err(Rejection::Unavailable);
    }

    let outbox = Arc::new(Outbox::with_positions(
        gateway.outbound_queue,
        since.is_some(),
    ));
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
        // What was routed to it meanwhile will never be sent.
        drop(membership);
        crate::edge::socket::count_unsent(&gateway.metrics, outbox.take_unsent());
        return Err(Rejection::Unavailable);
    }
    // Read after the join (and `recovery::SETTLE_BEFORE_READ`): whatever
    // the read misses is published after it, so it reaches the socket live.
    let mut preface = Vec::new();
    if let (Some(since), Some(recovery)) = (since, &gateway.recovery) {
        let recovered = recovery
            .recover(&gateway.layer, &membership.groups, since)
            .instrument(span.clone())
            .await;
        if let Some(through) = recovered.replayed_through {
            outbox.replayed_through(through);
        }
        preface = recovered.preface;
    }
    gateway.metrics.connect(ConnectResult::Accepted);
    let group = membership.groups.first().map_or("", AsRef::as_ref);
    span.in_scope(|| tracing::info!(%group, "socket opened"));
    // Registered before the drain flag is read: a drain that took its list
    // of sockets before this one registered had set the flag already, so
    // no socket misses its 1001.
    if gateway.health.is_draining() {
        drain::close_one(&outbox, gateway.drain_reconnect_jitter);
    }
    Ok(Attached {
        outbox,
        membership,
        holder: Holder {
            user_id: identity.user_id,
            expires_at: identity.expires_at,
        },
        preface,
        span,
    })
}

/// Who is on the other end of a socket upgraded without credentials.
struct Client<'a> {
    admission: Admission,
    peer: &'a str,
    since: Option<Since>,
}

/// How the wait for a first-message token ended without one.
enum NoFirstToken {
    /// The client went away, said something else first, or was too late.
    Missing,
    /// The client sent more frames than its inbound budget allows.
    TooFast,
    /// The process started draining.
    Draining,
}

/// On a socket upgraded without credentials, waits up to `wait` for
/// `{"token": "..."}` as the first frame (so browsers can keep tokens out of
/// URLs), then serves it. The socket joins its groups only after that, so
/// nothing is delivered before the client has proved who it is.
async fn serve_after_authentication<T: Transport>(
    mut transport: T,
    gateway: &Gateway,
    client: Client<'_>,
    wait: Duration,
) {
    let token = tokio::select! {
        token = tokio::time::timeout(wait, first_token(&mut transport, &gateway.socket_settings)) => {
            token.unwrap_or(Err(NoFirstToken::Missing))
        }
        () = gateway.health.draining_started() => Err(NoFirstToken::Draining),
    };
    let attached = match token {
        Err(NoFirstToken::Missing) => Err(Rejection::Unauthorized(AuthError::MissingToken)),
        Err(NoFirstToken::TooFast) => Err(Rejection::Limited(Refusal::InboundRate)),
        Err(NoFirstToken::Draining) => {
            let note = CloseNote::RetryAfter(drain::retry_after(gateway.drain_reconnect_jitter));
            transport
                .close(Some(close_reason(CloseCode::GoingAway, &note)))
                .await;
            return;
        }
        Ok(token) => match gateway.verifier.verify_fetching(&token).await {
            Ok(identity) => {
                attach(
                    gateway,
                    identity,
                    Seat::Held(client.admission),
                    client.since,
                )
                .await
            }
            Err(error) => Err(Rejection::Unauthorized(error)),
        },
    };
    match attached {
        Ok(attached) => {
            if transport
                .send_text(r#"{"type": "authenticated"}"#)
                .await
                .is_ok()
            {
                attached.serve(transport, gateway).await;
            }
        }
        Err(rejection) => {
            rejection.count(gateway, client.peer);
            let close = close_reason(rejection.close_code(), &CloseNote::Standard);
            transport.close(Some(close)).await;
        }
    }
}

/// The token of the first `{"token": ...}` frame. Pings and pongs before
/// it are spent from the same inbound budget as on an open socket.
async fn first_token<T: Transport>(
    transport: &mut T,
    settings: &SocketSettings,
) -> Result<String, NoFirstToken> {
    let mut budget = InboundBudget::new(settings);
    loop {
        let message = transport.recv().await.ok_or(NoFirstToken::Missing)?;
        if !budget.spend(&message) {
            return Err(NoFirstToken::TooFast);
        }
        match message {
            Ok(Inbound::Text(text)) => {
                return match parse_client_frame(&text) {
                    Ok(ClientFrame::Auth { token }) => Ok(token),
                    _ => Err(NoFirstToken::Missing),
                }
            }
            Ok(Inbound::Ping(bytes)) => {
                transport
                    .pong(&bytes)
                    .await
                    .map_err(|_| NoFirstToken::Missing)?;
            }
            Ok(Inbound::Pong(_)) => {}
            _ => return Err(NoFirstToken::Missing),
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
