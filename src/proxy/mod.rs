//! The running proxy: listeners for the bootstrap address and every virtual
//! broker, one [`session`] per client connection, and graceful shutdown.
//!
//! Shutdown is data: one cancellation token tells every listener to stop
//! accepting and every session to stop reading; a task tracker tells `run`
//! when the last in-flight response has been written (or the grace ran out).

mod context;
mod limit;
mod listener;
mod session;
mod versions_cache;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use context::ProxyContext;

use crate::broker::BrokerRegistry;
use crate::config::Config;
use crate::error::{Error, Kind, Result};
use crate::route::{Catalog, RouteTable};
use crate::state::StateStore;
use crate::upstream::Cluster;

/// Runs klink until `shutdown` is cancelled, then drains in-flight requests
/// for at most `shutdown_grace_ms`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let listener = listener::bind(config.proxy.listen).map_err(|e| {
        Error::klink(
            Kind::Config,
            format!("cannot listen on {}: {e}", config.proxy.listen),
        )
    })?;
    run_with_listener(config, listener, shutdown).await
}

/// As [`run`], with the bootstrap listener already bound (tests bind port 0).
pub async fn run_with_listener(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let state = Arc::new(StateStore::open(&config.proxy.state_dir)?);
    let registry = BrokerRegistry::load(
        state.clone(),
        config.proxy.advertised_host.clone(),
        config.proxy.broker_ports_start,
    );
    let routes = Arc::new(RouteTable::load(&config, state.clone())?);
    let catalog = Catalog::load(state.clone());
    // Before any client: a retry from before a crash must meet its remap.
    let producers = Arc::new(crate::route::ProducerIds::open(&config.proxy.state_dir)?);
    let control = crate::control::bind(&config.proxy.control_socket).await?;
    let control_token = config
        .proxy
        .control_token()
        .map_err(|e| Error::klink(Kind::Config, format!("proxy.control_token_env: {e}")))?;
    let admin_listener = match config.proxy.admin_listen {
        Some(addr) => Some(crate::admin::bind(addr).await?),
        None => None,
    };
    let clusters: Vec<Cluster> = config
        .clusters
        .iter()
        .map(|(name, c)| {
            Cluster::new(name, c.bootstrap_addrs(), config.proxy.max_frame_bytes)
                .with_request_timeout(Duration::from_millis(
                    config.proxy.upstream_request_timeout_ms,
                ))
                .with_security(c.security())
        })
        .collect();
    let tasks = TaskTracker::new();
    let grace = Duration::from_millis(config.proxy.shutdown_grace_ms);
    let (new_listeners, mut listeners) = tokio::sync::mpsc::unbounded_channel();
    let upstream_versions = clusters.iter().map(|_| Default::default()).collect();
    let max_client_connections = config.proxy.max_client_connections;
    let client_tls = match &config.proxy.tls {
        None => None,
        Some(tls) => Some(
            crate::config::acceptor(tls)
                .map_err(|(key, e)| Error::klink(Kind::Config, format!("proxy.{key}: {e}")))?,
        ),
    };
    let client_logins = match &config.proxy.sasl {
        None => None,
        Some(sasl) => {
            let logins = session::login::ClientLogins::open(sasl)
                .map_err(|e| Error::klink(Kind::Config, format!("proxy.sasl: {e}")))?;
            if logins.offers(crate::sasl::Mechanism::Plain) && client_tls.is_none() {
                tracing::warn!(
                    "[proxy] sasl offers PLAIN without [proxy] tls: clients' passwords cross the network in the clear"
                );
            }
            tracing::info!(users = logins.users(), file = %sasl.users_file.display(), "clients must log in");
            Some(Arc::new(logins))
        }
    };
    let ctx = Arc::new(ProxyContext {
        config,
        registry,
        routes: routes.clone(),
        catalog: Arc::new(catalog),
        producers,
        forwarded: Arc::default(),
        fences: Arc::default(),
        readers: Arc::default(),
        transactions: Arc::default(),
        metadata_askers: clusters.iter().map(|_| Default::default()).collect(),
        clusters,
        upstream_versions,
        tasks: tasks.clone(),
        shutdown: shutdown.clone(),
        new_listeners,
        cluster_id: std::sync::OnceLock::new(),
        connection_limit: limit::ConnectionLimit::new(max_client_connections),
        client_tls,
        client_logins,
    });
    let spawner = ctx.clone();
    tasks.spawn(async move {
        loop {
            let (listener, broker) = tokio::select! {
                _ = spawner.shutdown.cancelled() => return,
                next = listeners.recv() => match next {
                    Some(next) => next,
                    None => return,
                },
            };
            spawner.tasks.spawn(listener::accept_loop(
                listener,
                spawner.clone(),
                Some(broker),
            ));
        }
    });

    // Virtual brokers clients may remember from before a restart listen
    // first, on the ports they had.
    for broker in ctx.registry.all() {
        ctx.listen_virtual(broker).await?;
    }
    let mirrors = crate::mirror::runner::spawn(
        &ctx.config,
        routes.clone(),
        state,
        ctx.forwarded.clone(),
        ctx.catalog.numbering.clone(),
        shutdown.clone(),
    );
    let cutover = Arc::new(crate::cutover::Cutover::new(
        ctx.config.clone(),
        routes.clone(),
        mirrors.clone(),
        ctx.catalog.numbering.clone(),
        crate::cutover::Traffic {
            forwarded: ctx.forwarded.clone(),
            fences: ctx.fences.clone(),
            readers: ctx.readers.clone(),
            transactions: ctx.transactions.clone(),
        },
    ));
    let audit = Arc::new(crate::control::audit::Audit::default());
    if let Some(admin_listener) = admin_listener {
        let brokers_of = ctx.clone();
        let admin = crate::admin::Admin::new(
            routes.clone(),
            mirrors.clone(),
            audit.clone(),
            ctx.clusters().to_vec(),
            Box::new(move || brokers_of.registry.all()),
        );
        tracing::info!(addr = ?admin_listener.local_addr().ok(), "admin listener: /metrics /livez /readyz /");
        tokio::spawn(crate::admin::serve(
            admin_listener,
            Arc::new(admin),
            shutdown.clone(),
        ));
    }
    tokio::spawn(crate::control::serve(
        control,
        routes,
        mirrors,
        cutover,
        audit,
        control_token,
        shutdown.clone(),
    ));
    let bootstrap = listener.local_addr().ok();
    tasks.spawn(listener::accept_loop(listener, ctx.clone(), None));
    for cluster in ctx.clusters() {
        if let Err(e) = ctx.discover(cluster).await {
            // Not fatal: a cluster may come up after klink does; sessions
            // retry discovery when they need it.
            crate::warn_unless_logged!(e, cluster = %cluster.name, error = %e, "cluster discovery failed");
        }
    }
    tracing::info!(
        ?bootstrap,
        brokers = ctx.registry.all().len(),
        max_client_connections = ctx.connection_limit.max(),
        "klink ready"
    );

    shutdown.cancelled().await;
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    tasks.close();
    if tokio::time::timeout(grace, tasks.wait()).await.is_err() {
        tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "in-flight requests did not finish in time"
        );
    }
    let _ = std::fs::remove_file(&ctx.config.proxy.control_socket);
    Ok(())
}
