//! A session's upstream connections, opened on first use, and how long an
//! upstream may rightly take to answer.

use bytes::Bytes;
use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::Decodable;

use super::{Session, Upstreams};
use crate::error::{Error, Kind, Result};
use crate::proxy::ProxyContext;
use crate::split::Destination;
use crate::upstream::UpstreamConn;

impl Session {
    /// The connection to `destination`, opened on first use.
    pub(super) async fn upstream(
        &self,
        upstreams: &mut Upstreams,
        destination: &Destination,
    ) -> Result<UpstreamConn> {
        if let Some(conn) = upstreams.get(destination)
            && !conn.is_closed()
        {
            return Ok(conn.clone());
        }
        let cluster = self.ctx.cluster(destination.cluster()).ok_or_else(|| {
            Error::klink(
                Kind::Config,
                format!("cluster {} is not configured", destination.cluster()),
            )
        })?;
        let conn = match destination {
            Destination::Any(_) => cluster.connect_any().await?,
            Destination::Broker { upstream_id, .. } => {
                let address = |ctx: &ProxyContext| {
                    let broker = ctx.registry.by_upstream(&cluster.name, *upstream_id)?;
                    ctx.registry.upstream_address(&broker)
                };
                let addr = match address(&self.ctx) {
                    Some(addr) => addr,
                    None => {
                        // Remembered from before a restart but not announced
                        // since: ask the cluster where it is now.
                        self.ctx.discover(cluster).await?;
                        address(&self.ctx).ok_or_else(|| {
                            Error::upstream(
                                &cluster.name,
                                Kind::Closed,
                                format!(
                                    "upstream broker {upstream_id} is no longer in the cluster"
                                ),
                            )
                        })?
                    }
                };
                cluster.connect_to(&addr).await?
            }
        };
        upstreams.insert(destination.clone(), conn.clone());
        Ok(conn)
    }
}

/// How much longer than the request timeout an upstream may rightly hold a
/// request: a JoinGroup waits for the whole group, up to its rebalance
/// timeout (v1+; the session timeout before).
pub(super) fn extra_wait(api: ApiKey, version: i16, payload: &Bytes) -> std::time::Duration {
    if api != ApiKey::JoinGroup {
        return std::time::Duration::ZERO;
    }
    let mut body = payload.clone();
    let decoded = kafka_protocol::messages::RequestHeader::decode(
        &mut body,
        api.request_header_version(version),
    )
    .and_then(|_| kafka_protocol::messages::JoinGroupRequest::decode(&mut body, version));
    let waits_ms = match decoded {
        Ok(join) if version >= 1 => join.rebalance_timeout_ms,
        Ok(join) => join.session_timeout_ms,
        Err(_) => 0,
    };
    std::time::Duration::from_millis(u64::try_from(waits_ms).unwrap_or(0))
}
