//! Server: builds one gateway process from its configuration, runs it, and
//! stops it in order.
//!
//! Build ([`build`]): every concern checks its own settings as it is built
//! (token keys, origin patterns, limits, event types), so `check-config`,
//! `gen-token` and `serve` judge a setting once, in one place. Start: raise the open-files limit, wire registry, router and layer, bind
//! the public and admin listeners, then start the layer's receiver on a
//! thread of its own (`relay`, see `ops::runtime_thread`). Stop (SIGTERM / SIGINT): readiness goes
//! false and new sockets are refused at once, the listener stops accepting
//! after `drain_delay`, sockets are closed with 1001 in batches over
//! `drain_window` (see `drain`), this process's memberships are removed from
//! Redis, then the process exits 0 — all within `shutdown_timeout`. It owns
//! that order and nothing else.

use std::sync::Arc;
use std::time::Duration;

use actix_codec::Framed;
use actix_http::error::DispatchError;
use actix_http::{h1, HttpService, Request};
use actix_service::boxed::BoxServiceFactory;
use actix_service::{fn_service, map_config, ServiceFactoryExt};
use actix_web::dev::AppConfig;
use actix_web::rt::net::TcpStream;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use shared_proto::payload::{PayloadCodec, SerializerFormat};

use crate::auth::groups::GroupPolicy;
use crate::auth::session::SessionAuth;
use crate::auth::verify::TokenVerifier;
use crate::config::{Config, ConfigError, LayerBackend, SerializerFormatSetting, WebSocketDriver};
use crate::edge::drain::{self, DrainPlan};
use crate::edge::http::{admin_routes, public_routes, Gateway};
use crate::edge::limits::Limits;
use crate::edge::listener::{self, ConnectionOptions};
use crate::edge::origin::OriginPolicy;
use crate::edge::recovery::Recovery;
use crate::edge::socket::SocketSettings;
use crate::edge::tls::{self, TlsStream};
use crate::edge::upgrade::{take_over, Connection};
use crate::layer::core::{CoreLayer, CoreSettings, RECEIVE_BLOCK};
use crate::layer::pubsub::PubSubLayer;
use crate::layer::{CanarySending, HostRing, Layer};
use crate::ops::canary::Canary;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;
use crate::ops::runtime_thread::RuntimeThread;
use crate::ops::shutdown::termination_signal;
use crate::ops::thread_priority::{lower_current_thread, SOCKET_THREAD_NICE};
use crate::relay::events::EventMapper;
use crate::relay::outbox::Outbox;
use crate::relay::registry::{ChannelNaming, ConnId, Registry};
use crate::relay::router::Router;

/// What a configuration builds before anything runs or binds: each part
/// checked its own settings.
pub(crate) struct Built {
    verifier: Arc<TokenVerifier>,
    origins: OriginPolicy,
    limits: Arc<Limits>,
    events: EventMapper,
    groups: Arc<GroupPolicy>,
}

/// Builds every part whose settings can be judged before the process
/// runs; the first bad setting is the error, named by its key.
pub(crate) fn build(config: &Config) -> Result<Built, ConfigError> {
    config.require_serving_secrets()?;
    Ok(Built {
        verifier: Arc::new(TokenVerifier::new(&config.auth)?),
        origins: OriginPolicy::new(&config.auth)?,
        limits: Arc::new(Limits::new(&config.limits)?),
        events: EventMapper::new(&config.events.passthrough_types)?,
        groups: Arc::new(GroupPolicy::new(&config.auth)),
    })
}

/// Runs the gateway `built` from `config` until SIGTERM or SIGINT, then
/// stops it in order.
pub(crate) fn serve(config: Config, built: Built) -> anyhow::Result<()> {
    actix_web::rt::System::new().block_on(async move {
        let mut running = start(&config, built).await?;
        running.until(termination_signal()).await?;
        running.stop(&config).await;
        Ok(())
    })
}

fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open files limit"),
    }
}

/// Makes this process's canary channel a member of its canary group, like a
/// socket (so refreshes and re-subscriptions cover it), retrying until Redis
/// takes the join. Returns what to unregister at shutdown.
fn join_canary_group(
    canary: &Canary,
    registry: &Arc<Registry>,
    layer: &Arc<Layer>,
) -> (ConnId, Vec<Arc<str>>) {
    let groups = vec![canary.group().clone()];
    let (conn, _) = registry.register(Arc::new(Outbox::new(1)), &groups);
    let channel = registry.naming().channel(conn);
    let layer = layer.clone();
    let joining = groups.clone();
    actix_web::rt::spawn(async move {
        loop {
            let joined =
                tokio::time::timeout(Duration::from_secs(5), layer.join(&joining, &channel));
            if let Ok(Ok(())) = joined.await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    (conn, groups)
}

/// The public listening socket, with the options every connection inherits.
fn public_listener(config: &Config) -> anyhow::Result<std::net::TcpListener> {
    let options = ConnectionOptions {
        unacknowledged_limit: config.server.pong_timeout,
    };
    listener::bind(config.server.listen, options)
        .with_context(|| format!("server.listen: cannot bind {}", config.server.listen))
}

/// The public listener: HTTP/1.1 only, over TLS when configured (no ALPN
/// is offered, so no client can pick h2 there), on the socket workers.
/// What serves each connection depends on the driver ([`public_http1`]).
fn public_server(
    config: &Config,
    gateway: web::Data<Gateway>,
) -> anyhow::Result<actix_server::Server> {
    let request_timeout = config.server.handshake_timeout;
    let driver = config.server.websocket_driver;
    let mut builder = actix_server::Server::build()
        .disable_signals()
        .shutdown_timeout(config.server.shutdown_timeout.as_secs().max(1));
    builder = builder.workers(config.server.socket_workers());
    let listen = config.server.listen;
    let listener = public_listener(config)?;
    // actix-server may call the factories on this thread too (the main
    // thread, which must keep its priority) before the workers start.
    let builder_thread = std::thread::current().id();
    let builder = match (&config.server.tls_cert_file, &config.server.tls_key_file) {
        (Some(cert), Some(key)) => {
            let tls = Arc::new(tls::server_config(cert, key)?);
            // The whole handshake, slow or stalled clients included.
            let handshake_timeout = config.server.handshake_timeout;
            builder.listen("public", listener, move || {
                lower_socket_thread(builder_thread);
                let http1 = public_http1::<TlsStream>(driver, gateway.clone(), request_timeout);
                let tls = tls.clone();
                fn_service(move |tcp: TcpStream| {
                    let accepting = tls::accept(tcp, tls.clone());
                    async move {
                        match tokio::time::timeout(handshake_timeout, accepting).await {
                            Ok(Ok(stream)) => {
                                let peer = stream.peer_addr().ok();
                                Ok((stream, peer))
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%error, "TLS handshake failed");
                                Err(())
                            }
                            Err(_) => {
                                tracing::debug!("TLS handshake timed out");
                                Err(())
                            }
                        }
                    }
                })
                .and_then(http1.map_err(|_| ()))
            })
        }
        _ => builder.listen("public", listener, move || {
            lower_socket_thread(builder_thread);
            let http1 = public_http1::<TcpStream>(driver, gateway.clone(), request_timeout);
            fn_service(|stream: TcpStream| {
                let peer = stream.peer_addr().ok();
                std::future::ready(Ok::<_, ()>((stream, peer)))
            })
            .and_then(http1.map_err(|_| ()))
        }),
    }
    .with_context(|| format!("server.listen: cannot bind {listen}"))?;
    Ok(builder.run())
}

/// Called by the service factory, which actix-server runs on each socket
/// worker as it starts: the worker runs below the relay thread from then
/// on (`ops::thread_priority`).
fn lower_socket_thread(builder_thread: std::thread::ThreadId) {
    if std::thread::current().id() == builder_thread {
        return;
    }
    if let Err(error) = lower_current_thread(SOCKET_THREAD_NICE) {
        tracing::warn!(%error, "cannot lower the socket thread's priority; it keeps the process's");
    }
}

/// A connection on the public listener, with its peer address.
type PublicConnection<T> = (T, Option<std::net::SocketAddr>);

/// actix-http's HTTP/1 service for one public connection, serving the
/// actix-web app. With the direct driver the upgrade hook (`upgrade`) takes
/// WebSocket handshakes; with actix-ws the `/ws/notifications/` route does.
fn public_http1<T: Connection>(
    driver: WebSocketDriver,
    gateway: web::Data<Gateway>,
    request_timeout: Duration,
) -> BoxServiceFactory<(), PublicConnection<T>, (), DispatchError, ()> {
    let app = map_config(
        App::new()
            .app_data(gateway.clone())
            .configure(public_routes),
        |_| AppConfig::default(),
    );
    let http1 = HttpService::build().client_request_timeout(request_timeout);
    match driver {
        WebSocketDriver::ActixWs => actix_service::boxed::factory(http1.h1(app)),
        WebSocketDriver::Direct => actix_service::boxed::factory(
            http1
                .upgrade(fn_service(
                    move |(request, framed): (Request, Framed<T, h1::Codec>)| {
                        let gateway = gateway.clone().into_inner();
                        // Boxed: the dispatcher holds this future inline, and the
                        // connection's whole future is moved when its task is
                        // spawned; 2.6 KB less to copy per connect.
                        Box::pin(async move {
                            if let Err(error) = take_over(&gateway, request, framed).await {
                                tracing::debug!(%error, "client left during the handshake");
                            }
                            Ok::<(), actix_web::Error>(())
                        })
                    },
                ))
                .h1(app),
        ),
    }
}

/// What a started gateway holds until it stops.
struct Running {
    /// The thread the layer's receiver runs on; stopped once the layer has
    /// shut down, before the listeners.
    relay: RuntimeThread,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    layer: Arc<Layer>,
    canary_member: Option<(ConnId, Vec<Arc<str>>)>,
    public: actix_server::ServerHandle,
    admin: actix_server::ServerHandle,
    public_task: tokio::task::JoinHandle<std::io::Result<()>>,
    admin_task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Wires registry, router and layer, binds both listeners and starts
/// receiving.
async fn start(config: &Config, built: Built) -> anyhow::Result<Running> {
    raise_open_files_limit();
    let Built {
        verifier,
        origins,
        limits,
        events,
        groups,
    } = built;

    let metrics = Arc::new(Metrics::new());
    let canary_interval = config.layer.canary_interval;
    let canary_enabled = !canary_interval.is_zero();
    // A blocking pop returns at least every RECEIVE_BLOCK; three missed
    // round trips mean Redis or the receiver is stuck. Five missed canaries
    // (and never less than 3 s) mean messages are not coming through.
    let health = Arc::new(Health::new(
        RECEIVE_BLOCK * 3,
        canary_enabled.then(|| (canary_interval * 5).max(Duration::from_secs(3))),
    ));
    let naming = if config.layer.recovery {
        ChannelNaming::random_on_first_host(config.layer.queue_keys, config.layer.hosts.len())
    } else {
        ChannelNaming::random(config.layer.queue_keys, config.layer.hosts.len())
    };
    let registry = Arc::new(Registry::new(naming));
    let canary = canary_enabled.then(|| {
        Arc::new(Canary::new(
            registry.naming().process_id(),
            health.clone(),
            metrics.clone(),
        ))
    });
    let format = match config.layer.serializer_format {
        SerializerFormatSetting::Msgpack => SerializerFormat::Msgpack,
        SerializerFormatSetting::Json => SerializerFormat::Json,
    };
    let router = Arc::new(Router::new(
        registry.clone(),
        events,
        PayloadCodec::new(format, config.layer.payload_prefix_length()),
        config.layer.encryption(),
        metrics.clone(),
        &config.layer.prefix,
        canary.clone(),
    ));
    let recovery = config.layer.recovery.then(|| Recovery {
        router: router.clone(),
        window_secs: config.layer.expiry as f64,
        capacity: config.layer.capacity,
        read_timeout: config.server.join_timeout,
        metrics: metrics.clone(),
    });
    let canary_sending = canary.as_ref().map(|canary| CanarySending {
        canary: canary.clone(),
        router: router.clone(),
        interval: canary_interval,
    });
    let layer = match config.layer.backend {
        LayerBackend::Core => Layer::Core(CoreLayer::start(
            HostRing::from_config(&config.layer).context("layer.hosts")?,
            registry.clone(),
            router,
            health.clone(),
            metrics.clone(),
            CoreSettings {
                prefix: config.layer.prefix.clone(),
                expiry: config.layer.expiry,
                group_expiry: config.layer.group_expiry,
                refresh_interval: config.layer.membership_refresh_interval(),
                receive_batch: config.layer.receive_batch,
                canary: canary_sending.clone(),
                liveness_timeout: config.layer.liveness_timeout,
                recovery: config.layer.recovery,
                spill_at: usize::try_from(config.layer.capacity / 4)
                    .unwrap_or(usize::MAX)
                    .max(1),
            },
        )?),
        LayerBackend::Pubsub => Layer::Pubsub(
            PubSubLayer::start(
                &config.layer,
                registry.clone(),
                router,
                health.clone(),
                metrics.clone(),
                canary_sending,
            )
            .context("layer.hosts")?,
        ),
    };
    let layer = Arc::new(layer);
    let canary_member = canary
        .as_ref()
        .map(|canary| join_canary_group(canary, &registry, &layer));
    tracing::info!(
        process = registry.naming().process_id(),
        listen = %config.server.listen,
        admin_listen = %config.server.admin_listen,
        "gateway starting"
    );

    if let Some(remote) = verifier.remote_jwks() {
        // Readiness does not wait for the first fetch: every replica shares
        // the identity provider, so gating on it would turn its outage into
        // ours, while open sockets and other keys keep working. A failed
        // fetch is logged and counted (gateway_jwks_fetches_total).
        actix_web::rt::spawn(crate::auth::jwks_url::run(remote, metrics.clone()));
    }
    if verifier.uses_jwks_file() {
        let verifier = verifier.clone();
        let every = config.auth.jwks_refresh_interval;
        actix_web::rt::spawn(async move {
            // Checked often, read only once `every` has passed since the
            // last read (an unknown kid may have re-read it already).
            let mut ticks = tokio::time::interval(every.min(Duration::from_secs(10)));
            loop {
                ticks.tick().await;
                verifier.refresh_jwks(every);
            }
        });
    }
    let gateway = web::Data::new(Gateway {
        verifier: verifier.clone(),
        limits,
        origins,
        token_query_param: config.auth.token_query_param.clone(),
        token_cookie: config.auth.token_cookie.clone(),
        groups: groups.clone(),
        registry: registry.clone(),
        layer: layer.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        socket_settings: Arc::new(SocketSettings {
            ping_interval: config.server.ping_interval,
            pong_timeout: config.server.pong_timeout,
            inbound_rate: config.limits.inbound_rate,
            inbound_burst: config.limits.inbound_burst,
            verifier,
            leeway: config.auth.leeway,
            groups,
            join_timeout: config.server.join_timeout,
        }),
        outbound_queue: config.server.outbound_queue,
        max_inbound_frame: config.server.max_inbound_frame,
        join_timeout: config.server.join_timeout,
        first_message_timeout: config.auth.first_message_timeout,
        recovery,
        drain_reconnect_jitter: config.server.drain_reconnect_jitter,
        session: config.auth.session_url.clone().map(|url| {
            SessionAuth::new(
                url,
                config.auth.session_timeout,
                config.auth.session_cache_ttl,
            )
        }),
    });

    let public = public_server(config, gateway.clone())?;
    let admin_data = gateway.clone();
    let admin = HttpServer::new(move || {
        App::new()
            .app_data(admin_data.clone())
            .configure(admin_routes)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(config.server.admin_listen)
    .with_context(|| {
        format!(
            "server.admin_listen: cannot bind {}",
            config.server.admin_listen
        )
    })?
    .run();
    let public_handle = public.handle();
    let admin_handle = admin.handle();
    let public_task = actix_web::rt::spawn(public);
    let admin_task = actix_web::rt::spawn(admin);
    // The receiver has a thread of its own: what the socket threads do for
    // new connections never waits in line with routing.
    let relay = RuntimeThread::start("relay").context("cannot start the relay thread")?;
    layer.start_receiving(relay.handle());
    Ok(Running {
        relay,
        health,
        metrics,
        registry,
        layer,
        canary_member,
        public: public_handle,
        admin: admin_handle,
        public_task,
        admin_task,
    })
}

impl Running {
    /// Serves until `stop` fires (the caller passes the termination
    /// signal); a listener that stops by itself is an error.
    async fn until(
        &mut self,
        stop: impl std::future::Future<Output = &'static str>,
    ) -> anyhow::Result<()> {
        tokio::select! {
            signal = stop => tracing::info!(signal, "shutting down"),
            result = &mut self.public_task => anyhow::bail!("public listener stopped: {result:?}"),
            result = &mut self.admin_task => anyhow::bail!("admin listener stopped: {result:?}"),
        }
        Ok(())
    }

    /// Stops in order, within `server.shutdown_timeout`: readiness false and
    /// new sockets refused at once; the listener stays up for `drain_delay`
    /// so load balancers stop sending before it closes; the paced drain;
    /// memberships removed; listeners stopped.
    async fn stop(self, config: &Config) {
        let Running {
            relay,
            health,
            metrics,
            registry,
            layer,
            canary_member,
            public,
            admin,
            ..
        } = self;
        health.start_draining();
        metrics.draining.set(1);
        let stop_started = tokio::time::Instant::now();
        tokio::time::sleep(config.server.drain_delay).await;
        public.pause().await;
        if let Some((conn, groups)) = canary_member {
            registry.unregister(conn, &groups);
            layer.leave(&groups, registry.naming().channel(conn));
        }
        let open = drain::close_all(
            &registry,
            &DrainPlan {
                window: config.server.drain_window,
                reconnect_jitter: config.server.drain_reconnect_jitter,
            },
            &metrics,
        )
        .await;
        let deadline = stop_started + config.server.shutdown_timeout;
        // Handshakes already past the draining check finish (and are closed
        // with 1001 once registered) before the layer and listeners stop.
        while (registry.socket_count() > 0 || health.handshakes_in_flight() > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!(
            closed = open,
            left = registry.socket_count(),
            "sockets closed"
        );
        layer.shutdown().await;
        drop(relay);
        public.stop(false).await;
        admin.stop(false).await;
        tracing::info!("gateway stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every auth setting is refused by whichever part judges it (the
    /// configuration's own checks or the part `build` builds), naming it.
    #[test]
    fn auth_settings_name_their_key() {
        let cases = [
            ("auth.algorithms=[\"none\"]", "auth.algorithms"),
            ("auth.algorithms=[\"HS256\", \"XS1\"]", "auth.algorithms"),
            (
                "auth.allowed_origins=[\"example.com\"]",
                "auth.allowed_origins",
            ),
            ("auth.jwt_secret_env=\"A\"", "auth.jwt_secret"),
            ("auth.missing_origin=\"maybe\"", "missing_origin"),
            (
                "auth.jwks_reload_interval=\"10ms\"",
                "auth.jwks_reload_interval",
            ),
            ("auth.jwks_url=\"http://idp.example/jwks\"", "auth.jwks_url"),
            ("auth.jwks_url=\"idp.example/jwks\"", "auth.jwks_url"),
            (
                "auth.jwks_ca_file=\"/nonexistent.pem\"",
                "auth.jwks_ca_file",
            ),
            ("auth.jwks_fetch_timeout=\"1ms\"", "auth.jwks_fetch_timeout"),
        ];
        for (setting, key) in cases {
            let overrides = ["auth.jwt_secret=\"s\"".to_string(), setting.to_string()];
            let error = Config::load(None, &overrides)
                .and_then(|config| build(&config).map(drop))
                .unwrap_err();
            assert!(error.to_string().contains(key), "{setting}: {error}");
        }
        let config = Config::load(
            None,
            &[
                "auth.algorithms=[\"RS256\", \"PS256\"]".into(),
                "auth.allowed_origins=[\"https://*.example.com\"]".into(),
                "auth.missing_origin=\"deny\"".into(),
            ],
        )
        .expect("valid without a key");
        let error = build(&config).err().expect("no key");
        assert!(error.to_string().contains("auth.jwt_secret"), "{error}");
        let mut with_secret = config.clone();
        with_secret.auth.jwt_secret = crate::config::Secret::new("s");
        let error = build(&with_secret)
            .err()
            .expect("an HMAC key, no HS algorithm");
        assert!(
            error.to_string().contains("auth.jwt_secret"),
            "HMAC key, no HS: {error}"
        );
    }
}
