//! klink's error type: every error says where it came from and whether the
//! client may retry, because those two facts decide what a Kafka client is
//! told (a retriable error code, a closed connection, or nothing at all).

use std::fmt;
use std::sync::Arc;

/// Where an error started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Bytes or behaviour of a connected Kafka client.
    Client,
    /// An upstream cluster, named as in the config (`source`, `target`, ...).
    Upstream(Arc<str>),
    /// klink itself: its config, its state directory, its own bugs.
    Klink,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Client => f.write_str("client"),
            Origin::Upstream(name) => write!(f, "{name}"),
            Origin::Klink => f.write_str("klink"),
        }
    }
}

/// What went wrong, coarsely: enough to pick a Kafka error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A frame or message that does not follow the Kafka protocol.
    Protocol,
    /// An API key or version klink cannot handle.
    Unsupported,
    /// Connecting to, reading from or writing to a socket failed.
    Io,
    /// The peer closed the connection.
    Closed,
    /// Something took longer than klink allows.
    Timeout,
    /// Config or persisted state is unusable.
    Config,
    /// A cluster refused klink's login or TLS handshake.
    Auth,
}

#[derive(Debug, Clone)]
pub struct Error {
    pub origin: Origin,
    pub kind: Kind,
    /// Whether the client may retry the same request (after a metadata refresh).
    pub retriable: bool,
    pub context: String,
    /// Already logged where it happened (an upstream outage is logged when
    /// it starts, not once per request it fails): those who pass the error
    /// on log it at debug level.
    pub logged: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(origin: Origin, kind: Kind, retriable: bool, context: impl Into<String>) -> Self {
        Error {
            origin,
            kind,
            retriable,
            context: context.into(),
            logged: false,
        }
    }

    /// The same error, marked as logged where it happened.
    pub fn logged(mut self) -> Self {
        self.logged = true;
        self
    }

    pub fn client(kind: Kind, context: impl Into<String>) -> Self {
        Error::new(Origin::Client, kind, false, context)
    }

    pub fn upstream(cluster: &Arc<str>, kind: Kind, context: impl Into<String>) -> Self {
        // Upstream trouble is worth a retry: the client will refresh metadata
        // and try again, as it would with a broker that restarted.
        Error::new(Origin::Upstream(cluster.clone()), kind, true, context)
    }

    pub fn klink(kind: Kind, context: impl Into<String>) -> Self {
        Error::new(Origin::Klink, kind, false, context)
    }

    /// The Kafka error code a client is given when a request fails this way.
    pub fn kafka_code(&self) -> i16 {
        use kafka_protocol::ResponseError as E;
        let error = match (self.kind, self.retriable) {
            (Kind::Unsupported, _) => E::UnsupportedVersion,
            (Kind::Timeout, _) => E::RequestTimedOut,
            (_, true) => E::NotLeaderOrFollower,
            (Kind::Protocol, false) => E::CorruptMessage,
            _ => E::UnknownServerError,
        };
        error.code()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} error ({:?}{}): {}",
            self.origin,
            self.kind,
            if self.retriable { ", retriable" } else { "" },
            self.context
        )
    }
}

impl std::error::Error for Error {}

/// Logs an error at warn level, or at debug level when it was already
/// logged where it happened, so that one outage is not a line per request.
/// `warn_unless_logged!(error, fields..., "message")`.
#[macro_export]
macro_rules! warn_unless_logged {
    ($error:expr, $($rest:tt)+) => {
        if $error.logged {
            tracing::debug!($($rest)+)
        } else {
            tracing::warn!($($rest)+)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_origin_and_retry() {
        let cluster: Arc<str> = Arc::from("source");
        let e = Error::upstream(&cluster, Kind::Io, "connect 127.0.0.1:1 refused");
        assert_eq!(
            e.to_string(),
            "source error (Io, retriable): connect 127.0.0.1:1 refused"
        );
        assert_eq!(e.kafka_code(), 6); // NOT_LEADER_OR_FOLLOWER: refresh and retry
        let e = Error::client(Kind::Unsupported, "api key 999");
        assert_eq!(e.kafka_code(), 35);
        assert!(!e.retriable);
    }
}
