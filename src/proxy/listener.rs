use std::sync::Arc;
use std::time::Duration;

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

use super::ProxyContext;
use super::session::Session;
use crate::broker::VirtualBroker;

/// Pending connections the kernel queues per listener. The default (128)
/// overflows when a fleet of clients reconnects at once, and each overflow
/// costs a client a one-second SYN retry.
const BACKLOG: u32 = 4096;
/// How long a client may take over its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Binds a listening socket with a backlog sized for bursts of reconnects.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

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
                let Some(admitted) = ctx.connection_limit.admit() else {
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let session = Session::new(ctx.clone(), home.clone(), peer);
                let tls = ctx.client_tls.clone();
                ctx.tasks.spawn(async move {
                    match tls {
                        None => session.run(stream).await,
                        Some(acceptor) => {
                            let handshake =
                                tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream));
                            match handshake.await {
                                Ok(Ok(stream)) => session.run_tls(stream).await,
                                // A client without the CA, with no or a
                                // wrong certificate, or speaking plaintext:
                                // it gets nothing through.
                                Ok(Err(e)) => {
                                    tracing::info!(%peer, error = %e, "client TLS handshake failed")
                                }
                                Err(_) => tracing::info!(%peer, "client TLS handshake timed out"),
                            }
                        }
                    }
                    drop(admitted);
                });
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
