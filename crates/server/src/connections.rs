//! Accepting connections and serving them with hyper's HTTP/1 server.
//!
//! - hyper's `header_read_timeout` (with tokio's timer) closes a connection
//!   whose request headers have not all arrived within the header timeout;
//!   hyper restarts it whenever a keep-alive connection goes idle, so idle
//!   and silent connections are closed after it too.
//! - At most `max_connections` connections are open at once: hyper has no
//!   such setting, so a tokio semaphore permit is taken before each accept
//!   and held by the connection's task. At the cap, new connections wait in
//!   the kernel's backlog until one closes.
//! - On shutdown the listener closes and hyper-util's `GracefulShutdown`
//!   lets every connection finish its request in flight, then closes it.
//!
//! The body's timeout and size limit are per request (see `form` and the
//! router).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// How connections are limited (from [`crate::ServerConfig`]).
pub(crate) struct ConnectionLimits {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting and returns once every open connection has closed.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break, // never closed
            },
            _ = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    pause_after_accept_error(e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Small JSON answers should not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let connection = graceful.watch(builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        ));
        let metrics = metrics.clone();
        tokio::spawn(async move {
            metrics.connections_open.inc();
            if let Err(e) = connection.await {
                if e.is_timeout() {
                    metrics.header_timeouts.inc();
                }
            }
            metrics.connections_open.dec();
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// An error about one connection (the client gave up before we accepted)
/// needs no pause; anything else (out of file descriptors, …) is retried
/// after a second rather than spinning.
async fn pause_after_accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    eprintln!("splatforge-server: accept failed: {e}; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
