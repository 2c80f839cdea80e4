use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};

use super::UpstreamConn;
use super::security::Security;
use crate::broker::UpstreamBroker;
use crate::error::{Error, Kind, Result};
use crate::versions::UpstreamVersions;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
const CLIENT_ID: &str = "klink";

/// One upstream cluster as klink itself talks to it.
#[derive(Clone)]
pub struct Cluster {
    pub name: Arc<str>,
    pub bootstrap: Vec<String>,
    max_frame_bytes: u32,
    request_timeout: Duration,
    /// TLS and login for every connection to it.
    security: Arc<Security>,
}

impl Cluster {
    pub fn new(name: &str, bootstrap: Vec<String>, max_frame_bytes: u32) -> Cluster {
        Cluster {
            name: Arc::from(name),
            bootstrap,
            max_frame_bytes,
            request_timeout: super::DEFAULT_REQUEST_TIMEOUT,
            security: Security::plaintext(),
        }
    }

    /// The cluster's TLS and login.
    pub fn with_security(mut self, security: Arc<Security>) -> Cluster {
        self.security = security;
        self
    }

    /// How long a request forwarded to this cluster may wait for its answer.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Cluster {
        self.request_timeout = timeout;
        self
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// Connects to one of the cluster's brokers.
    pub async fn connect_to(&self, addr: &str) -> Result<UpstreamConn> {
        UpstreamConn::connect_timed(
            self.name.clone(),
            addr,
            self.max_frame_bytes,
            self.request_timeout,
            &self.security,
        )
        .await
    }

    /// Connects to the first bootstrap broker that answers.
    pub async fn connect_any(&self) -> Result<UpstreamConn> {
        let mut last = None;
        for addr in &self.bootstrap {
            match self.connect_to(addr).await {
                Ok(conn) => return Ok(conn),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::upstream(&self.name, Kind::Io, "no bootstrap address")))
    }

    /// Asks the cluster for its brokers and its cluster id.
    pub async fn discover(&self) -> Result<(Vec<UpstreamBroker>, Option<String>)> {
        let conn = self.connect_any().await?;
        let request = MetadataRequest::default().with_topics(Some(Vec::new()));
        let response: MetadataResponse = self.call(&conn, request, 9).await?;
        let cluster_id = response.cluster_id.as_ref().map(|id| id.to_string());
        let brokers = UpstreamBroker::all_in(&response);
        Ok((brokers, cluster_id))
    }

    /// Asks the cluster which API versions it supports.
    pub async fn api_versions(&self) -> Result<UpstreamVersions> {
        let conn = self.connect_any().await?;
        let request = ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str(CLIENT_ID))
            .with_client_software_version(StrBytes::from_static_str(env!("CARGO_PKG_VERSION")));
        let response: ApiVersionsResponse = self.call(&conn, request.clone(), 3).await?;
        let response =
            if response.error_code == kafka_protocol::ResponseError::UnsupportedVersion.code() {
                self.call(&conn, request, 0).await?
            } else {
                response
            };
        if response.error_code != 0 {
            return Err(Error::upstream(
                &self.name,
                Kind::Protocol,
                format!("ApiVersions answered error {}", response.error_code),
            ));
        }
        Ok(UpstreamVersions::from_response(&response))
    }

    /// Sends one request klink built itself and decodes the answer.
    pub async fn call<R: Request>(
        &self,
        conn: &UpstreamConn,
        request: R,
        version: i16,
    ) -> Result<R::Response> {
        let api = ApiKey::try_from(R::KEY)
            .map_err(|_| Error::klink(Kind::Unsupported, format!("api key {}", R::KEY)))?;
        let fail = |what: &str, e: anyhow::Error| {
            Error::upstream(&self.name, Kind::Protocol, format!("{what} {api:?}: {e}"))
        };
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0; 4]);
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(1)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
            .encode(&mut buf, api.request_header_version(version))
            .map_err(|e| fail("encoding", e))?;
        request
            .encode(&mut buf, version)
            .map_err(|e| fail("encoding", e))?;
        let length = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&length.to_be_bytes());
        let reply = conn
            .send(buf.freeze(), true)
            .await?
            .ok_or_else(|| Error::klink(Kind::Protocol, "request without reply"))?;
        let frame = tokio::time::timeout(REQUEST_TIMEOUT, reply)
            .await
            .map_err(|_| Error::upstream(&self.name, Kind::Timeout, format!("{api:?} timed out")))?
            .map_err(|_| {
                Error::upstream(
                    &self.name,
                    Kind::Closed,
                    format!("{api:?}: connection closed"),
                )
            })??;
        let mut body = frame.payload();
        ResponseHeader::decode(&mut body, api.response_header_version(version))
            .map_err(|e| fail("decoding", e))?;
        R::Response::decode(&mut body, version).map_err(|e| fail("decoding", e))
    }
}
