//! Accept loop on top of hyper so that a request can end with its connection closed
//! without an answer (fault injection), plus graceful shutdown.

use std::time::Duration;

use axum::Router;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// Response extension: close the connection instead of answering.
#[derive(Debug, Clone, Copy)]
pub struct DropConnection;

/// A response that makes the accept loop drop the connection.
pub fn drop_connection() -> Response {
    let mut r = Response::new(axum::body::Body::empty());
    r.extensions_mut().insert(DropConnection);
    r
}

#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for Dropped {}

/// Serves `router` on `listener` until `shutdown`; open connections then finish their
/// current request (up to 5 s).
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken, tracker: TaskTracker) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let router = router.clone();
                async move {
                    let resp = match router.oneshot(req).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    };
                    if resp.extensions().get::<DropConnection>().is_some() {
                        return Err(Dropped);
                    }
                    Ok(resp)
                }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().keep_alive(true).serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                }
            }
        });
    }
}
