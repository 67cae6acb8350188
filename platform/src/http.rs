//! Serving HTTP with the limits every skuflow server keeps: a request's headers must arrive within
//! [`HEADER_TIMEOUT`] (a client that opens connections and sends nothing, or trickles its
//! headers, ties up nothing for long), and handlers read bodies with [`read_body`], bounded in
//! size and time.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio_util::sync::CancellationToken;

/// Longest wait for a request's headers (also between requests on a kept-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the request body did not arrive within {} s", BODY_TIMEOUT.as_secs())]
    Timeout,
    #[error("the request body is larger than {0} bytes or could not be read")]
    TooLarge(usize),
}

/// Reads a request body of at most `limit` bytes within [`BODY_TIMEOUT`].
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(BodyError::Timeout),
        Ok(Err(_)) => Err(BodyError::TooLarge(limit)),
        Ok(Ok(b)) => Ok(b),
    }
}

/// Serves `app` on `listener` (HTTP/1.1) until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, app: Router, shutdown: CancellationToken) {
    loop {
        let (stream, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: pause briefly.
                    tracing::debug!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let svc = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "HTTP connection ended.");
            }
        });
    }
}
