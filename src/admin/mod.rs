//! The admin listener (`[proxy] admin_listen`): `/metrics` for Prometheus,
//! `/livez` and `/readyz` for Kubernetes probes, and `/`, a status page for
//! people. Read-only: nothing here changes klink; changes go through the
//! control socket.
//!
//! HTTP/1.1 from hyper: the admin port faces scrapers, probes and browsers,
//! whose requests klink should not parse by hand.

mod page;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::VirtualBroker;
use crate::control::audit::Audit;
use crate::error::{Error, Kind, Result};
use crate::metrics::scrape;
use crate::mirror::Mirrors;
use crate::route::RouteTable;
use crate::upstream::Cluster;

/// How long a cluster probe may take before the cluster counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Probes answered from the last result within this long: a scraper and a
/// prober asking together cost one probe.
const PROBE_REUSE: Duration = Duration::from_secs(1);

/// What the admin pages read.
pub struct Admin {
    pub routes: Arc<RouteTable>,
    pub mirrors: Arc<Mirrors>,
    pub audit: Arc<Audit>,
    pub clusters: Vec<Cluster>,
    pub brokers: Box<dyn Fn() -> Vec<VirtualBroker> + Send + Sync>,
    probed: tokio::sync::Mutex<Option<(Instant, Vec<Probe>)>>,
}

/// One cluster's last probe.
#[derive(Debug, Clone)]
pub struct Probe {
    pub cluster: Arc<str>,
    /// Why it is not reachable; `None` when it answered.
    pub failure: Option<String>,
}

impl Admin {
    pub fn new(
        routes: Arc<RouteTable>,
        mirrors: Arc<Mirrors>,
        audit: Arc<Audit>,
        clusters: Vec<Cluster>,
        brokers: Box<dyn Fn() -> Vec<VirtualBroker> + Send + Sync>,
    ) -> Admin {
        Admin {
            routes,
            mirrors,
            audit,
            clusters,
            brokers,
            probed: tokio::sync::Mutex::new(None),
        }
    }

    /// Asks every configured cluster for its brokers, side by side.
    pub async fn probe(&self) -> Vec<Probe> {
        let mut probed = self.probed.lock().await;
        if let Some((at, probes)) = &*probed
            && at.elapsed() < PROBE_REUSE
        {
            return probes.clone();
        }
        let probes = futures::future::join_all(self.clusters.iter().map(|c| async move {
            let failure = match tokio::time::timeout(PROBE_TIMEOUT, c.discover()).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
            };
            Probe {
                cluster: c.name.clone(),
                failure,
            }
        }))
        .await;
        *probed = Some((Instant::now(), probes.clone()));
        probes
    }

    async fn answer(&self, request: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        match request.uri().path() {
            "/livez" => text(StatusCode::OK, "ok\n"),
            "/readyz" => {
                let down: Vec<String> = self
                    .probe()
                    .await
                    .into_iter()
                    .filter_map(|p| p.failure.map(|f| format!("{}: {f}", p.cluster)))
                    .collect();
                if down.is_empty() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("not ready: {}\n", down.join("; ")),
                    )
                }
            }
            "/metrics" => {
                let probes = self.probe().await;
                let body = scrape::render(scrape::State {
                    routes: self.routes.clone(),
                    mirrors: self.mirrors.clone(),
                    clusters_up: probes
                        .iter()
                        .map(|p| (p.cluster.clone(), p.failure.is_none()))
                        .collect(),
                    virtual_brokers: (self.brokers)().len(),
                });
                with_type(
                    StatusCode::OK,
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                    body,
                )
            }
            "/" => {
                let probes = self.probe().await;
                with_type(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    page::render(self, &probes),
                )
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /, /metrics, /livez, /readyz\n",
            ),
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body.to_string())
}

fn with_type(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// Binds the admin listener (before klink says it is ready, so a bad
/// address is a startup error).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        Error::klink(
            Kind::Config,
            format!("admin_listen {addr}: cannot listen: {e}"),
        )
    })
}

/// Serves the admin pages until `shutdown`.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.answer(&request).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}
