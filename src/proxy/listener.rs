use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::ProxyContext;
use super::session::Session;
use crate::broker::VirtualBroker;

/// Accepts client connections until shutdown. `home` is the virtual broker
/// this port stands for, or `None` for the bootstrap address.
pub async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    home: Option<VirtualBroker>,
) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let session = Session::new(ctx.clone(), home.clone(), peer);
                ctx.tasks.spawn(session.run(stream));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off rather than
                // spin, and keep serving the connections already open.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
