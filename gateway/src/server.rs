//! Server: builds one gateway process from its configuration, runs it, and
//! stops it in order.
//!
//! Start: raise the open-files limit, wire registry, router and layer, bind
//! the public and admin listeners. Stop (SIGTERM / SIGINT): readiness goes
//! false, the listener stops accepting, every socket is closed with 1001,
//! this process's memberships are removed from Redis, then the process exits
//! 0. It owns that order and nothing else.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use anyhow::Context;
use shared_proto::close::CloseCode;
use shared_proto::payload::{PayloadCodec, SerializerFormat};

use crate::config::{Config, LayerBackend, SerializerFormatSetting};
use crate::events::EventMapper;
use crate::health::Health;
use crate::http::{admin_routes, public_routes, Gateway};
use crate::jwtverify::TokenVerifier;
use crate::layer::core::{CoreLayer, CoreSettings, RECEIVE_BLOCK};
use crate::layer::pubsub::PubSubLayer;
use crate::layer::{HostRing, Layer};
use crate::metrics::Metrics;
use crate::registry::{ChannelNaming, Registry};
use crate::router::Router;
use crate::shutdown::termination_signal;
use crate::socket::SocketSettings;

/// The kernel's listen queue limit on the machines we measured.
const LISTEN_BACKLOG: u32 = 4096;

pub fn serve(config: Config) -> anyhow::Result<()> {
    actix_web::rt::System::new().block_on(run(config))
}

fn raise_open_files_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open files limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open files limit"),
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    raise_open_files_limit();

    let metrics = Arc::new(Metrics::new());
    // A blocking pop returns at least every RECEIVE_BLOCK; three missed
    // round trips mean Redis or the receiver is stuck.
    let health = Arc::new(Health::new(RECEIVE_BLOCK * 3));
    let registry = Arc::new(Registry::new(ChannelNaming::random()));
    let format = match config.layer.serializer_format {
        SerializerFormatSetting::Msgpack => SerializerFormat::Msgpack,
        SerializerFormatSetting::Json => SerializerFormat::Json,
    };
    let router = Arc::new(Router::new(
        registry.clone(),
        EventMapper::new(&config.events.passthrough_types),
        PayloadCodec::new(format, config.layer.payload_prefix_length()),
        config.layer.encryption(),
        metrics.clone(),
        &config.layer.prefix,
    ));
    let layer = match config.layer.backend {
        LayerBackend::Core => Layer::Core(CoreLayer::start(
            HostRing::from_config(&config.layer).context("layer.hosts")?,
            registry.clone(),
            router,
            health.clone(),
            metrics.clone(),
            CoreSettings {
                prefix: config.layer.prefix.clone(),
                group_expiry: config.layer.group_expiry,
                refresh_interval: config.layer.membership_refresh_interval(),
                receive_batch: config.layer.receive_batch,
            },
        )?),
        LayerBackend::Pubsub => Layer::Pubsub(
            PubSubLayer::start(
                &config.layer,
                registry.clone(),
                router,
                health.clone(),
                metrics.clone(),
            )
            .context("layer.hosts")?,
        ),
    };
    let layer = Arc::new(layer);
    tracing::info!(
        process = registry.naming().process_id(),
        listen = %config.server.listen,
        admin_listen = %config.server.admin_listen,
        "gateway starting"
    );

    let gateway = web::Data::new(Gateway {
        verifier: TokenVerifier::new(&config.auth).map_err(anyhow::Error::msg)?,
        token_query_param: config.auth.token_query_param.clone(),
        token_cookie: config.auth.token_cookie.clone(),
        user_group_template: config.auth.user_group_template.clone(),
        registry: registry.clone(),
        layer: layer.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        socket_settings: Arc::new(SocketSettings {
            ping_interval: config.server.ping_interval,
            pong_timeout: config.server.pong_timeout,
        }),
        outbound_queue: config.server.outbound_queue,
        max_inbound_frame: config.server.max_inbound_frame,
        join_timeout: config.server.join_timeout,
    });

    let unacknowledged_limit = config.server.pong_timeout;
    let public_data = gateway.clone();
    let mut public = HttpServer::new(move || {
        App::new()
            .app_data(public_data.clone())
            .configure(public_routes)
    })
    .on_connect(move |connection: &dyn Any, _| {
        // Bounds how long the kernel keeps data a vanished peer never
        // acknowledges, so dead clients free their memory.
        if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(unacknowledged_limit));
        }
    })
    .backlog(LISTEN_BACKLOG)
    .disable_signals()
    .shutdown_timeout(config.server.shutdown_timeout.as_secs().max(1));
    if config.server.workers > 0 {
        public = public.workers(config.server.workers);
    }
    let public = public
        .bind(config.server.listen)
        .with_context(|| format!("server.listen: cannot bind {}", config.server.listen))?
        .run();
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
    let mut public_task = actix_web::rt::spawn(public);
    let mut admin_task = actix_web::rt::spawn(admin);

    tokio::select! {
        signal = termination_signal() => tracing::info!(signal, "shutting down"),
        result = &mut public_task => anyhow::bail!("public listener stopped: {result:?}"),
        result = &mut admin_task => anyhow::bail!("admin listener stopped: {result:?}"),
    }

    health.start_draining();
    public_handle.pause().await;
    let open = registry.socket_count();
    for outbox in registry.all_outboxes() {
        outbox.close(CloseCode::GoingAway);
    }
    let deadline = tokio::time::Instant::now() + config.server.shutdown_timeout;
    while registry.socket_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(
        closed = open,
        left = registry.socket_count(),
        "sockets closed"
    );
    layer.shutdown().await;
    public_handle.stop(false).await;
    admin_handle.stop(false).await;
    tracing::info!("gateway stopped");
    Ok(())
}
